// Package lab runs real mail peers for integration tests: a throwaway Cyrus
// IMAP 3.6 (master with imapd, lmtpd, timsieved and smmapd), Exim 4.96 and
// postfix's postmap. Each peer lives in its own short-named directory under
// os.TempDir, runs as a child of the test process and is stopped and removed
// at t.Cleanup.
//
// The files are ordinary Go files so that other packages' tests can import
// the package; its own tests carry the integration build tag. What the peers
// do and why the set-up looks the way it does is recorded in
// the shared reference cyrus-lab-facts.md ("facts" below).
//
// A missing peer skips the test, or fails it when SIDECAR_STRICT=1 (see
// Strict), so that the project's test command never passes by skipping.
package lab

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const (
	// maxSunPath bounds UNIX socket paths: sun_path holds 108 bytes and the
	// facts ask for less than 100.
	maxSunPath = 100
	// longestSockPath is the longest socket path inside a lab directory.
	longestSockPath = len("/cyrus/socket/smmapd")
)

// Strict reports whether a missing peer must fail the test rather than skip
// it (env SIDECAR_STRICT=1; the project's test command sets it).
func Strict() bool {
	return os.Getenv("SIDECAR_STRICT") == "1"
}

// Tool finds a peer program: $env if set, else name in PATH, else in the
// extra dirs (e.g. /usr/lib/cyrus/bin, /usr/sbin). A missing program skips
// the test, or fails it when Strict. An $env naming no executable file always
// fails: the caller asked for that program explicitly.
func Tool(t testing.TB, env, name string, dirs ...string) string {
	t.Helper()
	if env != "" {
		if p := os.Getenv(env); p != "" {
			if !isExecutable(p) {
				t.Fatalf("$%s=%q is not an executable file", env, p)
			}
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range dirs {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p
		}
	}
	hint := ""
	if env != "" {
		hint = " or set $" + env
	}
	missingPeer(t, "peer %s not found in PATH or %v (run .ci/install-peers%s)", name, dirs, hint)
	return ""
}

// RepoRoot finds the module root (the directory containing go.mod) from the
// working directory, which `go test` sets to the package directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// missingPeer skips the test, or fails it in strict mode.
func missingPeer(t testing.TB, format string, args ...any) {
	t.Helper()
	if Strict() {
		t.Fatalf("SIDECAR_STRICT=1: "+format, args...)
	}
	t.Skipf(format, args...)
}

// requireRoot skips or fails when the test does not run as root: Cyrus's
// master and Exim with -C must start as root (facts §2, §6).
func requireRoot(t testing.TB, peer string) {
	t.Helper()
	if os.Geteuid() != 0 {
		missingPeer(t, "%s must be started as root", peer)
	}
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// ids is a resolved user and group for chown.
type ids struct{ uid, gid int }

// lookupIDs resolves a system user and group; a missing one is a missing
// peer (the Debian packages create them).
func lookupIDs(t testing.TB, userName, groupName string) ids {
	t.Helper()
	u, err := user.Lookup(userName)
	if err != nil {
		missingPeer(t, "user %s: %v", userName, err)
	}
	g, err := user.LookupGroup(groupName)
	if err != nil {
		missingPeer(t, "group %s: %v", groupName, err)
	}
	uid, _ := strconv.Atoi(u.Uid) // numeric on POSIX systems
	gid, _ := strconv.Atoi(g.Gid)
	return ids{uid, gid}
}

// userLookup resolves a system user and its primary group.
func userLookup(name string) (ids, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return ids{}, err
	}
	uid, _ := strconv.Atoi(u.Uid) // numeric on POSIX systems
	gid, _ := strconv.Atoi(u.Gid)
	return ids{uid, gid}, nil
}

// newLabDir makes a short-named directory under os.TempDir (falling back to
// /tmp when that path is too long for UNIX sockets or not traversable by
// other users, such as cyrus), mode 0755, removed at cleanup.
func newLabDir(t testing.TB, prefix string) string {
	t.Helper()
	base := os.TempDir()
	if len(base)+len(prefix)+12+longestSockPath >= maxSunPath || !traversable(base) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, prefix)
	if err != nil {
		t.Fatalf("lab dir: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove lab dir: %v", err)
		}
	})
	// MkdirTemp makes 0700; peers running as their own users must enter it.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("lab dir: %v", err)
	}
	return dir
}

// traversable reports whether every directory from / down to dir can be
// entered by any user. The lab never changes the mode of directories it did
// not create.
func traversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// mkdirs creates each directory (relative to root) with mode and owner.
func mkdirs(t testing.TB, root string, mode os.FileMode, owner ids, rels ...string) {
	t.Helper()
	for _, rel := range rels {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(p, mode); err != nil {
			t.Fatalf("mkdir: %v", err)
		}
		// MkdirAll is subject to the umask; set the mode explicitly.
		if err := os.Chmod(p, mode); err != nil {
			t.Fatalf("chmod: %v", err)
		}
		if err := os.Chown(p, owner.uid, owner.gid); err != nil {
			t.Fatalf("chown: %v", err)
		}
	}
}

// writeFile writes a file or fails the test.
func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// freePorts returns n distinct free loopback TCP ports. The listeners are
// held until all are chosen so that one call never returns a port twice; a
// port may still be taken by someone else before the peer binds it, which
// the peer's readiness check then reports.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// tail returns the last n lines of a file, or a note why it cannot.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return lastLines(string(data), n)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// BuildSidecar builds the cyrus-sidecar binary from the repository into a
// temporary directory and returns its path: for tests and benchmarks that
// run `serve` or the admin commands as their own processes.
func BuildSidecar(t testing.TB) string {
	t.Helper()
	goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "cyrus-sidecar")
	build := exec.Command(goTool, "build", "-o", bin, ".")
	build.Dir = RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
