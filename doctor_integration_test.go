//go:build integration

package main

// `cyrus-sidecar doctor` run as its own process against real Cyrus 3.6
// (e2e/lab) and a real `serve`: healthy, then broken one way at a time,
// each failure with the fix it prints.

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"cyrus-sidecar/e2e/lab"
)

// doctorLab is Cyrus, whose saslauthd is a running serve, and the files a
// doctor run needs. Everything lives under dir, which user cyrus (and, for
// one case, nobody) can traverse.
type doctorLab struct {
	dir, bin, cfgText string
	cy                *lab.Cyrus
	serve             *daemon
	saslSock          string
	smSock            string
	store             string
}

func startDoctorLab(t *testing.T) *doctorLab {
	t.Helper()
	// t.TempDir is 0700: Cyrus, running as cyrus, must reach the saslauthd
	// socket through it.
	dir, err := os.MkdirTemp("/tmp", "dr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l := &doctorLab{dir: dir, saslSock: filepath.Join(dir, "run/saslauthd/mux"),
		smSock: filepath.Join(dir, "run/socketmap.sock"), store: filepath.Join(dir, "store.db")}
	// The binary in a directory nobody may enter (the unreadable-store case
	// runs it as nobody).
	l.bin = filepath.Join(dir, "cyrus-sidecar")
	data, err := os.ReadFile(buildBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.bin, data, 0o755); err != nil {
		t.Fatal(err)
	}

	adminPW := rand.Text()
	l.cy = lab.StartCyrus(t, lab.CyrusOptions{SASLSocket: l.saslSock, AdminPassword: adminPW})
	secret := filepath.Join(dir, "admin.secret")
	if err := os.WriteFile(secret, []byte(adminPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freeTCPPort(t)
	l.cfgText = fmt.Sprintf(`[store]
path = %q
[log]
format = "json"
[cyrus]
default_domain = "example.com"
lmtp = "unix:%s"
imap = %q
managesieve = %q
admin_user = "admin"
admin_password_file = %q
[saslauthd]
listen = "unix:%s"
[lmtp]
listen = ["127.0.0.1:%d"]
[socketmap]
listen = ["unix:%s"]
`, l.store, l.cy.LMTPSocket, l.cy.IMAPAddr, l.cy.SieveAddr, secret, l.saslSock, port, l.smSock)
	cfg := l.config(t, "config.toml", "", "")

	for _, args := range [][]string{
		{"org", "add", "Acme"},
		{"domain", "add", "example.com", "-org", "Acme"},
		{"user", "add", "admin@example.com", "-password-stdin"},
		{"user", "add", "alice@example.com", "-password-stdin"},
	} {
		pw := adminPW
		if args[2] == "alice@example.com" {
			pw = "alice-pw"
		}
		if _, errOut, err := runCLI(t, cfg, pw+"\n", args...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, errOut)
		}
	}
	l.startServe(t, cfg)
	// Through serve's saslauthd: the admin logs in to Cyrus.
	l.cy.CreateMailbox(t, "alice")
	return l
}

// config writes the lab's configuration to name, with the text replace
// (if not "") replaced by with, and returns its path.
func (l *doctorLab) config(t *testing.T, name, replace, with string) string {
	t.Helper()
	text := l.cfgText
	if replace != "" {
		if !strings.Contains(text, replace) {
			t.Fatalf("config has no %q", replace)
		}
		text = strings.Replace(text, replace, with, 1)
	}
	p := filepath.Join(l.dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (l *doctorLab) startServe(t *testing.T, cfg string) {
	t.Helper()
	d := &daemon{logs: make(chan map[string]any, 100)}
	cmd := exec.Command(l.bin, "serve", "-config", cfg)
	cmd.Dir = l.dir
	cmd.Env = filteredEnv()
	d.run(t, cmd)
	d.waitLog(t, "ready")
	// Keep reading its log, so that serve never blocks on a full pipe.
	go func() {
		for range d.logs {
		}
	}()
	l.serve = d
}

func (l *doctorLab) stopServe(t *testing.T) {
	t.Helper()
	l.serve.cmd.Process.Signal(syscall.SIGTERM)
	if err := l.serve.cmd.Wait(); err != nil {
		t.Errorf("serve exit after SIGTERM: %v", err)
	}
}

// doctor runs `doctor` with the configuration and Cyrus's imapd.conf and
// returns its output and exit status. cred, if set, runs it as that user.
func (l *doctorLab) doctor(t *testing.T, cfg string, cred *syscall.Credential) (string, int) {
	t.Helper()
	cmd := exec.Command(l.bin, "doctor", "-config", cfg, "-imapd-conf", l.cy.ConfPath)
	cmd.Dir = l.dir
	cmd.Env = filteredEnv()
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("doctor: %v", err)
	}
	t.Logf("doctor output:\n%s", out)
	return string(out), cmd.ProcessState.ExitCode()
}

// reportLines splits doctor's output into check lines ("STATUS NAME DETAIL")
// with their fix lines.
type reportLine struct {
	status, name, detail string
	fixes                []string
}

func parseReport(t *testing.T, out string) []reportLine {
	t.Helper()
	var lines []reportLine
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		s := sc.Text()
		if fix, ok := strings.CutPrefix(s, "      fix: "); ok {
			if len(lines) == 0 {
				t.Fatalf("fix line before any check: %q", s)
			}
			lines[len(lines)-1].fixes = append(lines[len(lines)-1].fixes, fix)
			continue
		}
		f := strings.Fields(s)
		if len(f) < 3 || (f[0] != statusOK && f[0] != statusWarn && f[0] != statusFail) {
			continue // the summary, the blank line, stderr
		}
		_, detail, _ := strings.Cut(strings.TrimSpace(s[len(f[0]):]), f[1])
		lines = append(lines, reportLine{status: f[0], name: f[1], detail: strings.TrimSpace(detail)})
	}
	return lines
}

// wantFail asserts a FAIL line for name whose detail contains detail and
// whose fixes include one containing fix.
func wantFail(t *testing.T, lines []reportLine, name, detail, fix string) {
	t.Helper()
	for _, l := range lines {
		if l.name != name || l.status != statusFail || !strings.Contains(l.detail, detail) {
			continue
		}
		for _, f := range l.fixes {
			if strings.Contains(f, fix) {
				return
			}
		}
		t.Errorf("FAIL %s %q: no fix containing %q in %q", name, l.detail, fix, l.fixes)
		return
	}
	t.Errorf("no FAIL line %s containing %q", name, detail)
}

func TestDoctorRealCyrus(t *testing.T) {
	l := startDoctorLab(t)
	cfg := filepath.Join(l.dir, "config.toml")

	t.Run("healthy", func(t *testing.T) {
		out, code := l.doctor(t, cfg, nil)
		if code != 0 {
			t.Errorf("exit status %d, want 0", code)
		}
		lines := parseReport(t, out)
		for _, ln := range lines {
			if ln.status != statusOK {
				t.Errorf("%s %s: %s", ln.status, ln.name, ln.detail)
			}
		}
		// The documented example has the same checks in the same order.
		var got, want []string
		for _, ln := range lines {
			got = append(got, ln.status+" "+ln.name)
		}
		for _, ln := range parseReport(t, lab.DocSnippet(t, "docs/operations.md", "doctor-healthy")) {
			want = append(want, ln.status+" "+ln.name)
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("checks differ from docs/operations.md's doctor-healthy example:\ngot:\n%s\nwant:\n%s",
				strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		for _, detail := range []string{"LITERAL+ yes", "AUTH=PLAIN", "vacation, date, relational", "acting for alice@example.com"} {
			if !strings.Contains(out, detail) {
				t.Errorf("healthy report lacks %q", detail)
			}
		}
	})

	t.Run("cyrus lmtp socket wrong", func(t *testing.T) {
		wrong := filepath.Join(l.dir, "nope/lmtp")
		c := l.config(t, "lmtp.toml", "lmtp = \"unix:"+l.cy.LMTPSocket+"\"", "lmtp = \"unix:"+wrong+"\"")
		out, code := l.doctor(t, c, nil)
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		wantFail(t, parseReport(t, out), "cyrus.lmtp", "no such file or directory",
			`cyrus.conf SERVICES: lmtpunix cmd="lmtpd" listen="`+wrong+`" prefork=0`)
	})

	t.Run("wrong admin password", func(t *testing.T) {
		bad := filepath.Join(l.dir, "wrong.secret")
		if err := os.WriteFile(bad, []byte("not-the-password\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c := l.config(t, "pw.toml", filepath.Join(l.dir, "admin.secret"), bad)
		out, code := l.doctor(t, c, nil)
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		lines := parseReport(t, out)
		wantFail(t, lines, "cyrus.admin.secret", "the store refuses it for admin@example.com: wrong password",
			"cyrus-sidecar user passwd admin@example.com -password-stdin < "+bad)
		wantFail(t, lines, "cyrus.admin", "Cyrus refused the password of admin", "imapd.conf: sasl_saslauthd_path: "+l.saslSock)
	})

	t.Run("admin not in admins", func(t *testing.T) {
		// Cyrus reads imapd.conf in each new service process (prefork=0),
		// so the change applies to the next connection.
		orig, err := os.ReadFile(l.cy.ConfPath)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(l.cy.ConfPath, orig, 0o644) })
		if !strings.Contains(string(orig), "\nadmins: admin\n") {
			t.Fatalf("imapd.conf has no admins: admin line")
		}
		edited := strings.Replace(string(orig), "\nadmins: admin\n", "\nadmins: someone\n", 1)
		if err := os.WriteFile(l.cy.ConfPath, []byte(edited), 0o644); err != nil {
			t.Fatal(err)
		}
		out, code := l.doctor(t, cfg, nil)
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		lines := parseReport(t, out)
		wantFail(t, lines, "imapd.admins", "admin is not in admins", "imapd.conf: admins: someone admin")
		wantFail(t, lines, "cyrus.admin", "may not act for alice@example.com", "imapd.conf: admins: someone admin")
	})

	t.Run("saslauthd socket closed to cyrus", func(t *testing.T) {
		if err := os.Chmod(l.saslSock, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(l.saslSock, 0o666) })
		out, code := l.doctor(t, cfg, nil)
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		lines := parseReport(t, out)
		wantFail(t, lines, "saslauthd.cyrus", "user cyrus cannot connect to "+l.saslSock, "chgrp mail "+l.saslSock+" && chmod 0660 "+l.saslSock)
		wantFail(t, lines, "saslauthd.cyrus", "rw-------", `config: [saslauthd] socket_mode = "0660"  socket_group = "mail"`)
	})

	t.Run("store unreadable", func(t *testing.T) {
		nobody, err := user.Lookup("nobody")
		if err != nil {
			t.Skipf("no user nobody: %v", err)
		}
		uid, _ := strconv.Atoi(nobody.Uid)
		gid, _ := strconv.Atoi(nobody.Gid)
		if err := os.Chmod(l.store, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(l.store, 0o640) })
		out, code := l.doctor(t, cfg, &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)})
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		wantFail(t, parseReport(t, out), "store", "permission denied", "run doctor as the user serve runs as")
	})

	// Last: it stops serve.
	t.Run("serve not running", func(t *testing.T) {
		l.stopServe(t)
		out, code := l.doctor(t, cfg, nil)
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		lines := parseReport(t, out)
		for _, name := range []string{"saslauthd.serve", "lmtp.serve", "socketmap.serve"} {
			wantFail(t, lines, name, "serve is not running", "systemctl start cyrus-sidecar")
		}
	})
}

// freeTCPPort returns a loopback port that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
