//go:build integration

package main

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const (
	debName   = "cyrus-sidecar"
	debBinary = "/usr/sbin/cyrus-sidecar"
	debConfig = "/etc/cyrus-sidecar/config.toml"
	debState  = "/var/lib/cyrus-sidecar"
	// debMarker says this test installed the package (and whether it
	// created the user), so that a later run may purge what a failed one
	// left; a package installed without it is someone's real one.
	debMarker = "/var/tmp/cyrus-sidecar-deb-test"
)

// debFile is what one installed path must be.
type debFile struct {
	path         string
	mode         fs.FileMode // permission bits and fs.ModeDir
	owner, group string
}

// TestDebPackage: `make deb` builds a package that `dpkg -i` installs on
// this machine with its files, modes, owners and system user, a safe-mode
// configuration the service user can read and check, and nothing started;
// `doctor` runs; remove keeps the configuration and the store, purge takes
// them. The machine is left as found, also when the test fails.
func TestDebPackage(t *testing.T) {
	strict := os.Getenv("SIDECAR_STRICT") != ""
	need := func(why string) {
		t.Helper()
		if strict {
			t.Fatalf("SIDECAR_STRICT=1: %s", why)
		}
		t.Skip(why)
	}
	if os.Geteuid() != 0 {
		need("installing a package needs root")
	}
	for _, tool := range []string{"dpkg", "dpkg-deb", "dpkg-query", "make", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			need(err.Error())
		}
	}
	debPreflight(t, need)

	_, err := user.Lookup(debName)
	userExisted := err == nil
	marker := "installed\n"
	if !userExisted {
		marker = "user-created\n"
	}
	if err := os.WriteFile(debMarker, []byte(marker), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { debUndo(t, !userExisted) })

	pkg := debBuild(t)
	debCheckArchive(t, pkg)

	out := debRun(t, "dpkg", "-i", pkg)
	if !strings.Contains(out, "not enabled and not started") {
		t.Errorf("dpkg -i did not say how to enable the service:\n%s", out)
	}
	debCheckInstalled(t)
	debCheckNotStarted(t)

	u, err := user.Lookup(debName)
	if err != nil {
		t.Fatalf("no system user after install: %v", err)
	}
	if u.HomeDir != debState {
		t.Errorf("user %s home %q, want %s", debName, u.HomeDir, debState)
	}
	if _, err := user.LookupGroup(debName); err != nil {
		t.Errorf("no group %s: %v", debName, err)
	}

	// The configuration in safe mode, as the service reads it: through its
	// group, as its user.
	cfg, err := os.ReadFile(debConfig)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(cfg, []byte("SAFE MODE")) {
		t.Errorf("%s does not start by explaining safe mode:\n%.400s", debConfig, cfg)
	}
	out, err = debAsUser(t, u, debBinary, "check-config", "-config", debConfig)
	if err != nil {
		t.Fatalf("check-config as %s: %v\n%s", debName, err, out)
	}
	for _, want := range []string{`lmtp\s+disabled`, `vacation\s+disabled`, `saslauthd\s+unix:/run/cyrus-sidecar/saslauthd/mux`, `config\s+` + debConfig} {
		if !matchLine(out, want) {
			t.Errorf("check-config: no line matching %q in\n%s", want, out)
		}
	}

	// The version go build stamped: the commit the package was built from.
	out = debRun(t, debBinary, "version")
	head := strings.TrimSpace(debRun(t, "git", "rev-parse", "HEAD"))
	if !strings.Contains(out, head[:12]) {
		t.Errorf("version %q does not name commit %s", out, head[:12])
	}

	// doctor as the service user: no Cyrus is set up for it here, so it may
	// find failures (exit status 1), but it runs its checks and the
	// configuration's passes.
	out, err = debAsUser(t, u, debBinary, "doctor", "-config", debConfig)
	t.Logf("doctor as %s: %v\n%s", debName, err, out)
	if ee, ok := errors.AsType[*exec.ExitError](err); err != nil && (!ok || ee.ExitCode() != 1) {
		t.Errorf("doctor: %v (want exit status 0 or 1)\n%s", err, out)
	}
	// "ok    config                /etc/...: valid; services ...".
	if !matchLine(out, `^ok\s+config\s+`+regexp.QuoteMeta(debConfig)+`: valid`) {
		t.Errorf("doctor: no passed config check in\n%s", out)
	}
	if !matchLine(out, `^[0-9]+ ok, [0-9]+ warnings?, [0-9]+ failed$`) {
		t.Errorf("doctor: no summary line in\n%s", out)
	}

	// An admin command as the service user creates the store, owned by it.
	if out, err := debAsUser(t, u, debBinary, "org", "add", "Acme", "-config", debConfig); err != nil {
		t.Fatalf("org add as %s: %v\n%s", debName, err, out)
	}
	debCheckFiles(t, debFile{filepath.Join(debState, "store.db"), 0o640, debName, debName})

	// Reinstalling (an upgrade to the same version) keeps an edited
	// configuration and puts nothing back to root.
	edited := append(cfg, "\n# edited by TestDebPackage\n"...)
	if err := os.WriteFile(debConfig, edited, 0o640); err != nil {
		t.Fatal(err)
	}
	debRun(t, "dpkg", "-i", "--force-confold", pkg)
	if got, _ := os.ReadFile(debConfig); !bytes.Equal(got, edited) {
		t.Errorf("reinstall replaced the edited %s", debConfig)
	}
	debCheckInstalled(t)
	debCheckNotStarted(t)

	// remove: the program goes, the configuration and the store stay.
	debRun(t, "dpkg", "--remove", debName)
	debCheckGone(t, debBinary, "/lib/systemd/system/cyrus-sidecar.service", "/usr/share/doc/cyrus-sidecar")
	debCheckFiles(t,
		debFile{debConfig, 0o640, "root", debName},
		debFile{filepath.Join(debState, "store.db"), 0o640, debName, debName})

	// purge: nothing of the package is left.
	debRun(t, "dpkg", "--purge", debName)
	debCheckGone(t, "/etc/cyrus-sidecar", debState, "/usr/lib/sysusers.d/cyrus-sidecar.conf", "/usr/lib/tmpfiles.d/cyrus-sidecar.conf")
	if st := debStatus(t); st != "" {
		t.Errorf("after purge dpkg still knows the package: %q", st)
	}
}

// debPreflight purges a package a failed earlier run of this test left
// installed; a package this test did not install stops it.
func debPreflight(t *testing.T, need func(string)) {
	t.Helper()
	if debStatus(t) == "" {
		return
	}
	m, err := os.ReadFile(debMarker)
	if err != nil {
		need("cyrus-sidecar is installed on this machine and not by this test; it is left alone")
	}
	t.Logf("purging the package an earlier run left installed")
	debUndo(t, string(m) == "user-created\n")
}

// debUndo purges the package, and removes the user and group when this
// test created them (postrm keeps system users, as Debian does).
func debUndo(t *testing.T, removeUser bool) {
	t.Helper()
	if out, err := exec.Command("dpkg", "--purge", debName).CombinedOutput(); err != nil {
		t.Errorf("cleanup: dpkg --purge: %v\n%s", err, out)
		return
	}
	if removeUser {
		if _, err := user.Lookup(debName); err == nil {
			if out, err := exec.Command("userdel", debName).CombinedOutput(); err != nil {
				t.Errorf("cleanup: userdel: %v\n%s", err, out)
			}
		}
		if _, err := user.LookupGroup(debName); err == nil {
			if out, err := exec.Command("groupdel", debName).CombinedOutput(); err != nil {
				t.Errorf("cleanup: groupdel: %v\n%s", err, out)
			}
		}
	}
	os.Remove(debMarker)
}

// debStatus is dpkg's status of the package, "" when dpkg knows nothing of it.
func debStatus(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Abbrev}", debName).Output()
	if err != nil {
		return "" // dpkg-query: no packages found matching cyrus-sidecar
	}
	s := strings.TrimSpace(string(out))
	if s == "un" {
		return ""
	}
	return s
}

// debBuild runs `make deb` and returns the package, the last line it printed.
func debBuild(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("make", "--no-print-directory", "deb")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make deb: %v\n%s%s", err, out, stderr.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	pkg := lines[len(lines)-1]
	if !strings.HasPrefix(filepath.Base(pkg), "cyrus-sidecar_") || !strings.HasSuffix(pkg, ".deb") {
		t.Fatalf("make deb printed no package path:\n%s%s", out, stderr.Bytes())
	}
	if _, err := os.Stat(pkg); err != nil {
		t.Fatal(err)
	}
	return pkg
}

// debCheckArchive reads the package as dpkg-deb shows it: control fields,
// conffiles and the file list with modes and owners.
func debCheckArchive(t *testing.T, pkg string) {
	t.Helper()
	info := debRun(t, "dpkg-deb", "--info", pkg)
	arch := strings.TrimSpace(debRun(t, "dpkg", "--print-architecture"))
	for _, want := range []string{`^ Package: cyrus-sidecar$`, `^ Architecture: ` + arch + `$`, `^ Version: [0-9][A-Za-z0-9.+~]*$`,
		`^ Maintainer: .+`, `^ Installed-Size: [0-9]+$`, `^ Description: .+`, `\bpostinst\b`, `\bprerm\b`, `\bpostrm\b`, `\bconffiles\b`} {
		if !matchLine(info, want) {
			t.Errorf("dpkg-deb --info: no line matching %q in\n%s", want, info)
		}
	}
	if conf := debRun(t, "dpkg-deb", "--info", pkg, "conffiles"); strings.TrimSpace(conf) != debConfig {
		t.Errorf("conffiles = %q, want %s", conf, debConfig)
	}
	if base := filepath.Base(pkg); !strings.HasSuffix(base, "_"+arch+".deb") {
		t.Errorf("package name %s does not end in _%s.deb", base, arch)
	}

	// "-rwxr-xr-x root/root 123 2025-01-01 00:00 ./usr/sbin/cyrus-sidecar"
	contents := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(debRun(t, "dpkg-deb", "--contents", pkg)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 6 {
			contents[strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")] = f[0] + " " + f[1]
		}
	}
	for path, want := range map[string]string{
		debBinary: "-rwxr-xr-x root/root",
		"/lib/systemd/system/cyrus-sidecar.service":          "-rw-r--r-- root/root",
		"/lib/systemd/system/cyrus-sidecar-saslauthd.socket": "-rw-r--r-- root/root",
		"/lib/systemd/system/cyrus-sidecar-lmtp.socket":      "-rw-r--r-- root/root",
		"/lib/systemd/system/cyrus-sidecar-socketmap.socket": "-rw-r--r-- root/root",
		"/lib/systemd/system/cyrus-sidecar-events.socket":    "-rw-r--r-- root/root",
		"/lib/systemd/system/cyrus-sidecar-backup.service":   "-rw-r--r-- root/root",
		"/lib/systemd/system/cyrus-sidecar-backup.timer":     "-rw-r--r-- root/root",
		"/usr/lib/sysusers.d/cyrus-sidecar.conf":             "-rw-r--r-- root/root",
		"/usr/lib/tmpfiles.d/cyrus-sidecar.conf":             "-rw-r--r-- root/root",
		"/etc/cyrus-sidecar":                                 "drwxr-x--- root/root",
		debConfig:                                            "-rw-r----- root/root",
		"/usr/share/doc/cyrus-sidecar/README.md":             "-rw-r--r-- root/root",
		"/usr/share/doc/cyrus-sidecar/operations.md":         "-rw-r--r-- root/root",
		"/usr/share/doc/cyrus-sidecar/package.md":            "-rw-r--r-- root/root",
		"/usr/share/doc/cyrus-sidecar/config.example.toml":   "-rw-r--r-- root/root",
		"/usr/share/doc/cyrus-sidecar/README.Debian":         "-rw-r--r-- root/root",
		"/usr/share/doc/cyrus-sidecar/copyright":             "-rw-r--r-- root/root",
	} {
		if got := contents[path]; got != want {
			t.Errorf("dpkg-deb --contents: %s is %q, want %q", path, got, want)
		}
	}
	for path := range contents {
		if strings.HasPrefix(path, debState) || strings.HasPrefix(path, "/run") {
			t.Errorf("dpkg-deb --contents: %s is shipped; postinst makes it", path)
		}
	}
}

// debCheckInstalled checks the installed files, their modes and owners,
// and that the unit starts the installed binary on the installed config.
func debCheckInstalled(t *testing.T) {
	t.Helper()
	debCheckFiles(t,
		debFile{debBinary, 0o755, "root", "root"},
		debFile{"/etc/cyrus-sidecar", fs.ModeDir | 0o750, "root", debName},
		debFile{debConfig, 0o640, "root", debName},
		debFile{debState, fs.ModeDir | 0o750, debName, debName},
		debFile{"/lib/systemd/system/cyrus-sidecar.service", 0o644, "root", "root"},
		debFile{"/lib/systemd/system/cyrus-sidecar-saslauthd.socket", 0o644, "root", "root"},
		debFile{"/usr/lib/sysusers.d/cyrus-sidecar.conf", 0o644, "root", "root"},
		debFile{"/usr/lib/tmpfiles.d/cyrus-sidecar.conf", 0o644, "root", "root"},
		debFile{"/usr/share/doc/cyrus-sidecar/operations.md", 0o644, "root", "root"},
	)
	unit, err := os.ReadFile("/lib/systemd/system/cyrus-sidecar.service")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(unit, []byte("\nExecStart="+debBinary+" serve -config "+debConfig+"\n")) {
		t.Errorf("the installed unit does not run %s on %s", debBinary, debConfig)
	}
	if !bytes.Contains(unit, []byte("Documentation=file:///usr/share/doc/cyrus-sidecar/operations.md")) {
		t.Errorf("the installed unit's Documentation= is not the installed operations.md")
	}
}

func debCheckFiles(t *testing.T, files ...debFile) {
	t.Helper()
	for _, f := range files {
		fi, err := os.Lstat(f.path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if got := fi.Mode() & (fs.ModeType | fs.ModePerm); got != f.mode {
			t.Errorf("%s: mode %s, want %s", f.path, got, f.mode)
		}
		st := fi.Sys().(*syscall.Stat_t)
		owner, group := idName(st.Uid, false), idName(st.Gid, true)
		if owner != f.owner || group != f.group {
			t.Errorf("%s: owned by %s:%s, want %s:%s", f.path, owner, group, f.owner, f.group)
		}
	}
}

// idName is the name of a numeric user or group id, else the number.
func idName(id uint32, isGroup bool) string {
	s := strconv.FormatUint(uint64(id), 10)
	if isGroup {
		if g, err := user.LookupGroupId(s); err == nil {
			return g.Name
		}
	} else if u, err := user.LookupId(s); err == nil {
		return u.Username
	}
	return s
}

func debCheckGone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
}

// debCheckNotStarted: installing started no cyrus-sidecar, and under
// systemd enabled none of its units.
func debCheckNotStarted(t *testing.T) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && strings.TrimSuffix(exe, " (deleted)") == debBinary {
			t.Errorf("a cyrus-sidecar is running after install: %s", filepath.Dir(p))
		}
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return // no systemd: the process check above is all there is
	}
	for _, u := range []string{"cyrus-sidecar.service", "cyrus-sidecar-saslauthd.socket", "cyrus-sidecar-lmtp.socket", "cyrus-sidecar-socketmap.socket",
		"cyrus-sidecar-events.socket", "cyrus-sidecar-backup.timer"} {
		active, _ := exec.Command("systemctl", "is-active", u).Output()
		enabled, _ := exec.Command("systemctl", "is-enabled", u).Output()
		if a, e := strings.TrimSpace(string(active)), strings.TrimSpace(string(enabled)); a == "active" || e == "enabled" {
			t.Errorf("%s is %s and %s after install", u, a, e)
		}
	}
}

// debRun runs a command as root and returns its combined output.
func debRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(filteredEnv(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// debAsUser runs a command as u with only u's own group, in /, and
// returns its combined output.
func debAsUser(t *testing.T, u *user.User, name string, args ...string) (string, error) {
	t.Helper()
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + u.HomeDir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// matchLine reports whether a line of out matches the regular expression.
func matchLine(out, expr string) bool {
	re := regexp.MustCompile(expr)
	for line := range strings.SplitSeq(out, "\n") {
		if re.MatchString(line) {
			return true
		}
	}
	return false
}
