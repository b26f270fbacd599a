//go:build integration

package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGuideBackupRestore runs docs/operations.md's backup and restore
// snippets: a backup while serve answers logins, then a password change and
// a deleted user, then (serve stopped, as the page says) the restore; after
// it real testsaslauthd logs in with the old password and as the deleted
// user again, and the new password fails.
func TestGuideBackupRestore(t *testing.T) {
	e := newGuideEnv(t, "example.com")
	mustRun(t, e.cfg, "alice old pw\n", "user", "add", "alice", "-password-stdin")
	mustRun(t, e.cfg, "bob pw\n", "user", "add", "bob", "-password-stdin")
	d := e.serveDaemon(t)
	if got := e.saslCheck(t, "alice", "alice old pw", ""); got != "OK" {
		t.Fatalf("alice before the backup: %s, want OK", got)
	}

	backups := filepath.Join(e.dir, "backups")
	host := []string{ // what the page's commands name on a real host, and here
		"sudo -u cyrus-sidecar ", "",
		"-o cyrus-sidecar -g cyrus-sidecar ", "",
		" -config /etc/cyrus-sidecar/config.toml", "",
		"/var/backups/cyrus-sidecar", backups,
		"sudo ", "",
	}
	out := e.runDoc(t, "docs/operations.md", "backup", host...)
	m := regexp.MustCompile(`wrote (\S+) \([0-9.]+ KiB, checked\): 1 organisations, 1 domains, 2 users, 0 aliases, 0 app passwords, 0 vacations, [0-9]+ audit entries\n`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("backup printed %q", out)
	}
	file := m[1]
	if ok, _ := filepath.Match(filepath.Join(backups, "store-????-??-??.db"), file); !ok {
		t.Errorf("backup wrote %s, want %s/store-DATE.db", file, backups)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, %v; want mode 0600", fi, err)
	}
	// The same name again is refused, and says how to go on.
	if _, _, err := runCLI(t, e.cfg, "", "backup", file); err == nil || !strings.Contains(err.Error(), "-replace") {
		t.Errorf("second backup to %s: %v; want a refusal naming -replace", file, err)
	}

	// After the backup: a new password for alice, bob deleted.
	mustRun(t, e.cfg, "alice new pw\n", "user", "passwd", "alice", "-password-stdin")
	mustRun(t, e.cfg, "", "user", "del", "bob")
	if got := e.saslCheck(t, "alice", "alice old pw", ""); got != "NO" {
		t.Fatalf("alice's old password after passwd: %s, want NO", got)
	}
	if got := e.saslCheck(t, "bob", "bob pw", ""); got != "NO" {
		t.Fatalf("bob after del: %s, want NO", got)
	}

	// The page: stop the service, restore, start it.
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
	e.runDoc(t, "docs/operations.md", "restore",
		"/var/backups/cyrus-sidecar/store-2026-11-22.db", file,
		"/var/lib/cyrus-sidecar", e.dir,
		"-o cyrus-sidecar -g cyrus-sidecar ", "",
		"sudo ", "")
	if fi, err := os.Stat(filepath.Join(e.dir, "store.db")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("restored store: %v, %v; want mode 0640", fi, err)
	}
	if aside, _ := filepath.Glob(filepath.Join(e.dir, "before-restore-*", "store.db")); len(aside) != 1 {
		t.Errorf("the replaced store was not kept aside: %v", aside)
	}
	os.Remove(filepath.Join(e.dir, "notify.sock")) // the first serve's, still bound
	e.serveDaemon(t)
	for _, c := range []struct{ user, pw, want string }{
		{"alice", "alice old pw", "OK"},
		{"alice", "alice new pw", "NO"},
		{"bob", "bob pw", "OK"},
	} {
		if got := e.saslCheck(t, c.user, c.pw, ""); got != c.want {
			t.Errorf("after the restore, %s with %q: %s, want %s", c.user, c.pw, got, c.want)
		}
	}
}

// TestAuthLogRealLogins: what real testsaslauthd's attempts leave in the
// audit, read back with auth log as docs/saslauthd.md shows it.
func TestAuthLogRealLogins(t *testing.T) {
	e := newGuideEnv(t, "example.com")
	mustRun(t, e.cfg, "alice pw\n", "user", "add", "alice", "-password-stdin")
	e.serve(t)
	for _, c := range []struct{ user, pw, want string }{
		{"alice", "wrong", "NO"},
		{"alice", "alice pw", "OK"},
		{"bob", "x", "NO"},
	} {
		if got := e.saslCheck(t, c.user, c.pw, ""); got != c.want {
			t.Fatalf("%s: %s, want %s", c.user, got, c.want)
		}
	}
	// The responder writes the audit in batches (at most 200 ms apart).
	var out string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out = mustRun(t, e.cfg, "", "auth", "log")
		if strings.Count(out, "\n") == 4 {
			break
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("auth log after three attempts:\n%s", out)
	}
	for i, want := range [][]string{ // newest first
		{"bob@example.com", "imap", "fail", "unknown user"},
		{"alice@example.com", "imap", "ok", "ok"},
		{"alice@example.com", "imap", "fail", "wrong password"},
	} {
		if f := strings.Fields(lines[i+1]); len(f) < 7 || !slices.Equal(f[2:4], want[:2]) || f[4] != want[2] || strings.Join(f[5:len(f)-1], " ") != want[3] {
			t.Errorf("entry %d: %q, want %v", i, lines[i+1], want)
		}
	}
	if out := mustRun(t, e.cfg, "", "auth", "log", "-failed", "alice"); !strings.Contains(out, "wrong password") || strings.Contains(out, " ok ") {
		t.Errorf("auth log -failed alice:\n%s", out)
	}
}
