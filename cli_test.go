package main

import (
	"bytes"
	"cyrus-sidecar/store"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testEnv is a config file pointing at a fresh store in a temp dir.
func testEnv(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	body := "[store]\npath = \"" + filepath.Join(dir, "store.db") + "\"\n[cyrus]\ndefault_domain = \"example.com\"\n" +
		"[password]\ntime = 1\nmemory_kib = 8192\n" // fast hashes for tests
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// run runs one command in-process and returns stdout, stderr and the error.
func runCLI(t *testing.T, cfg, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	// The file comes through the environment, so that tests of "--" can
	// put anything last.
	getenv := func(k string) string {
		if k == "CYRUS_SIDECAR_CONFIG" {
			return cfg
		}
		return ""
	}
	err := realMain(args, stdio{strings.NewReader(stdin), &out, &errOut}, getenv)
	return out.String(), errOut.String(), err
}

func mustRun(t *testing.T, cfg, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := runCLI(t, cfg, stdin, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestCLIRoundTrip(t *testing.T) {
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	// Flags after positional arguments, as admins type them.
	mustRun(t, cfg, "", "domain", "add", "Example.COM", "-org", "acme")
	mustRun(t, cfg, "s3cret\n", "user", "add", "Alice@Example.com", "-password-stdin", "-name", "Alice Liddell")
	mustRun(t, cfg, "", "user", "add", "-no-password", "bob", "-services", "imap,sieve")

	var users []struct {
		Address     string   `json:"address"`
		Org         string   `json:"organisation"`
		Disabled    bool     `json:"disabled"`
		HasPassword bool     `json:"has_password"`
		Services    []string `json:"services"`
		Hash        string   `json:"password_hash"`
	}
	list := func() {
		t.Helper()
		users = nil
		if err := json.Unmarshal([]byte(mustRun(t, cfg, "", "user", "list", "-json")), &users); err != nil {
			t.Fatal(err)
		}
	}
	list()
	if len(users) != 2 || users[0].Address != "alice@example.com" || users[0].Org != "Acme" || !users[0].HasPassword ||
		users[1].Address != "bob@example.com" || users[1].HasPassword || strings.Join(users[1].Services, ",") != "imap,sieve" {
		t.Fatalf("user list -json = %+v", users)
	}
	if users[0].Hash != "" {
		t.Errorf("user list -json leaks the password hash")
	}

	mustRun(t, cfg, "", "user", "disable", "alice")
	if list(); !users[0].Disabled {
		t.Errorf("after disable: %+v", users[0])
	}
	mustRun(t, cfg, "", "user", "enable", "alice@example.com")
	if list(); users[0].Disabled {
		t.Errorf("after enable: %+v", users[0])
	}
	mustRun(t, cfg, "", "alias", "add", "sales@example.com", "alice", "bob@example.com")
	if out := mustRun(t, cfg, "", "alias", "list"); !strings.Contains(out, "sales@example.com  alice@example.com, bob@example.com") {
		t.Errorf("alias list:\n%s", out)
	}
	_, errOut, err := runCLI(t, cfg, "", "user", "del", "alice")
	if err != nil || !strings.Contains(errOut, "sales@example.com") {
		t.Errorf("user del: %v, stderr %q; want a warning naming the alias", err, errOut)
	}
	if list(); len(users) != 1 {
		t.Errorf("after del: %+v", users)
	}
	out := mustRun(t, cfg, "", "domain", "list")
	if !strings.Contains(out, "example.com  Acme          1      1") {
		t.Errorf("domain list:\n%s", out)
	}
	if out := mustRun(t, cfg, "", "org", "list", "-json"); !strings.Contains(out, `"domains": 1`) {
		t.Errorf("org list -json:\n%s", out)
	}
}

func TestCLIPasswordChange(t *testing.T) {
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "one\n", "user", "add", "alice", "-password-stdin")
	h1 := storedHash(t, cfg, "alice@example.com")
	mustRun(t, cfg, "two\r\n", "user", "passwd", "alice", "-password-stdin")
	h2 := storedHash(t, cfg, "alice@example.com")
	if h1 == h2 || !strings.HasPrefix(h2, "$argon2id$v=19$m=8192,t=1,p=1$") {
		t.Errorf("hash after passwd = %q (was %q)", h2, h1)
	}
}

// TestCLIErrors: every refusal exits non-zero with a message an admin can act on.
func TestCLIErrors(t *testing.T) {
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "pw\n", "user", "add", "alice", "-password-stdin")
	tests := []struct {
		name    string
		stdin   string
		args    []string
		usage   bool   // exit status 2
		message string // part of the error
	}{
		{"unknown organisation", "", []string{"domain", "add", "other.org", "-org", "Nope"}, false, `organisation "Nope": not found; create it with: cyrus-sidecar org add "Nope"`},
		{"duplicate domain", "", []string{"domain", "add", "EXAMPLE.com", "-org", "Acme"}, false, `domain example.com (organisation "Acme"): already exists`},
		{"duplicate organisation", "", []string{"org", "add", "acme"}, false, `organisation "acme": already exists`},
		{"domain not hosted", "pw\n", []string{"user", "add", "bob@other.org", "-password-stdin"}, false, "domain other.org is not hosted here; add it first: cyrus-sidecar domain add other.org -org NAME"},
		{"malformed address", "pw\n", []string{"user", "add", "bob smith@example.com", "-password-stdin"}, false, `"bob smith@example.com" is not a valid address`},
		{"malformed domain", "", []string{"domain", "add", "exa mple.com", "-org", "Acme"}, false, `"exa mple.com" is not a valid domain`},
		{"duplicate user", "pw\n", []string{"user", "add", "ALICE@example.com", "-password-stdin"}, false, "user alice@example.com already exists"},
		{"user with detail", "pw\n", []string{"user", "add", "bob+x@example.com", "-password-stdin"}, false, "cannot contain the detail separator"},
		{"empty password", "\n", []string{"user", "add", "carol", "-password-stdin"}, false, "empty password on stdin"},
		{"no terminal", "", []string{"user", "add", "carol"}, true, "pipe it in with -password-stdin"},
		{"unknown user", "", []string{"user", "disable", "nobody"}, false, "user nobody@example.com: not found"},
		{"domain in use", "", []string{"domain", "del", "example.com"}, false, "has 1 user(s) and 0 alias(es)"},
		{"org in use", "", []string{"org", "del", "Acme"}, false, "owns 1 domain(s)"},
		{"alias over user", "", []string{"alias", "add", "alice", "bob"}, false, "alice@example.com is a user"},
		{"missing -org", "", []string{"domain", "add", "x.org"}, true, "-org NAME is required"},
		{"missing argument", "", []string{"org", "add"}, true, "expected one organisation name"},
		{"unknown flag", "", []string{"org", "list", "-frob"}, true, "flag provided but not defined: -frob"},
		{"unknown subcommand", "", []string{"user", "frob"}, true, `unknown subcommand "frob"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCLI(t, cfg, tt.stdin, tt.args...)
			if err == nil {
				t.Fatalf("%s succeeded", strings.Join(tt.args, " "))
			}
			if _, isUsage := errors.AsType[usageError](err); isUsage != tt.usage {
				t.Errorf("usage error = %v, want %v (%v)", isUsage, tt.usage, err)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not contain %q", err, tt.message)
			}
		})
	}
}

func TestCLIDomainSetAndWarnings(t *testing.T) {
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "org", "add", "Other")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "", "domain", "set", "example.com", "-org", "Other")
	if out := mustRun(t, cfg, "", "domain", "list"); !strings.Contains(out, "example.com  Other") {
		t.Errorf("after domain set -org:\n%s", out)
	}
	if _, _, err := runCLI(t, cfg, "", "domain", "set", "example.com", "-org", "Nope"); err == nil ||
		!strings.Contains(err.Error(), `create it with: cyrus-sidecar org add "Nope"`) {
		t.Errorf("domain set -org Nope: %v", err)
	}
	if _, _, err := runCLI(t, cfg, "", "domain", "set", "nothere.org", "-org", "Acme"); err == nil ||
		!strings.Contains(err.Error(), "domain nothere.org: not found") {
		t.Errorf("domain set of an unknown domain: %v", err)
	}
	mustRun(t, cfg, "", "user", "add", "alice", "-no-password")
	_, errOut, err := runCLI(t, cfg, "", "alias", "add", "sales", "alice", "typo@example.com", "friend@outside.org")
	if err != nil || !strings.Contains(errOut, "typo@example.com is neither a user nor an alias") || strings.Contains(errOut, "alice@") ||
		strings.Contains(errOut, "outside.org") {
		t.Errorf("alias add with a typo: %v, stderr %q", err, errOut)
	}
	if _, _, err := runCLI(t, cfg, "", "user", "set", "alice", "-services", ""); err == nil {
		t.Errorf("user set -services \"\" was accepted")
	}
	for _, name := range []string{"anyone", "Anonymous@example.com"} {
		if _, _, err := runCLI(t, cfg, "", "user", "add", name, "-no-password"); err == nil || !strings.Contains(err.Error(), "reserved by Cyrus") {
			t.Errorf("user add %s: %v", name, err)
		}
	}
	// "--" ends the flags: a display name may start with '-'.
	mustRun(t, cfg, "", "user", "set", "alice", "-name", "x", "--")
	if _, _, err := runCLI(t, cfg, "", "user", "set", "--", "alice", "-name", "x"); err == nil {
		t.Errorf("user set -- alice -name x: flags after -- were taken as flags")
	}
	if _, _, err := runCLI(t, cfg, "", "org", "add", "--", "-dash"); err != nil {
		t.Errorf("org add -- -dash: %v", err)
	}
	if out := mustRun(t, cfg, "", "org", "list"); !strings.Contains(out, "-dash") {
		t.Errorf("org named -dash missing:\n%s", out)
	}
}

func TestParseInterleaved(t *testing.T) {
	for _, tt := range []struct {
		args []string
		pos  string
		org  string
	}{
		{[]string{"example.com", "-org", "Acme"}, "example.com", "Acme"},
		{[]string{"-org", "Acme", "example.com"}, "example.com", "Acme"},
		{[]string{"a", "-org=Acme", "b"}, "a b", "Acme"},
		{[]string{"-org", "Acme", "--", "-x", "-org"}, "-x -org", "Acme"},
		{[]string{"a", "--", "b"}, "a b", ""},
	} {
		c := newCommand("t", "", stdio{nil, io.Discard, io.Discard}, noEnv)
		org := c.fs.String("org", "", "")
		pos, err := c.parse(tt.args)
		if err != nil || strings.Join(pos, " ") != tt.pos || *org != tt.org {
			t.Errorf("parse(%q) = %q, -org %q, %v; want %q, %q", tt.args, pos, *org, err, tt.pos, tt.org)
		}
	}
}

func TestCLIBadConfig(t *testing.T) {
	_, _, err := runCLI(t, "testdata/config/bad/relative-paths.toml", "", "org", "list")
	if err == nil || !strings.Contains(err.Error(), "store.path: must be an absolute path") {
		t.Errorf("org list with a bad config: %v", err)
	}
	if _, _, err := runCLI(t, "config.example.toml", "", "check-config"); err != nil {
		t.Errorf("check-config config.example.toml: %v", err)
	}
}

// TestExitStatus runs the real binary: 1 for a refusal, 2 for a usage error.
func TestExitStatus(t *testing.T) {
	bin := buildBinary(t)
	cfg := testEnv(t)
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"org", "list"}, 1}, // no store yet: not created by a read
		{[]string{"org", "add", "Acme"}, 0},
		{[]string{"org", "list"}, 0},
		{[]string{"org", "list", "-h"}, 0},
		{[]string{"org", "del", "Nope"}, 1},
		{[]string{"org"}, 2},
		{[]string{"frob"}, 2},
		{[]string{"check-config", "-config", "testdata/config/bad/unknown-key.toml"}, 1},
	} {
		args := tt.args
		if !strings.Contains(strings.Join(args, " "), "-config") {
			args = append(args, "-config", cfg)
		}
		cmd := exec.Command(bin, args...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != tt.code {
			t.Errorf("%s: exit %d, want %d\n%s", strings.Join(args, " "), code, tt.code, out)
		}
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// buildBinary builds cyrus-sidecar once per test run (with -race when the
// tests run with it, so the binary is checked too).
func buildBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sidecar-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "cyrus-sidecar")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("go build: %v", binErr)
	}
	return binPath
}

func storedHash(t *testing.T, cfg, address string) string {
	t.Helper()
	c := newCommand("test", "", stdio{}, noEnv)
	*c.config = cfg
	if err := c.open(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	defer c.close()
	a, err := c.canon.Address(address)
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.st.User(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	return u.PasswordHash.Reveal()
}

// TestCLIAuthLog: auth log reads the audit newest first, filters by the
// canonical login, result, service and age, quotes what a client sent
// when a terminal would act on it, and checks its flags.
func TestCLIAuthLog(t *testing.T) {
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	st, err := store.Open(t.Context(), filepath.Join(filepath.Dir(cfg), "store.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	err = st.RecordLogins(t.Context(), []store.LoginEvent{
		{At: now.Add(-3 * time.Hour), Login: "alice@example.com", Service: "imap", Result: store.ResultOK, Reason: "ok", Client: "192.0.2.1;1000"},
		{At: now.Add(-time.Minute), Login: "alice@example.com", Service: "sieve", Result: store.ResultFail, Reason: "wrong password", Client: "192.0.2.2;2000"},
		{At: now, Login: "bob@example.com", Service: "imap", Result: store.ResultFail, Reason: "unknown user"},
		{At: now, Login: "evil\x1b[2J", Service: "imap", Result: store.ResultFail, Reason: "malformed login"},
		{At: now, Login: "mallory\u202egpj.exe", Service: "imap", Result: store.ResultFail, Reason: "malformed login"},
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, cfg, "", "auth", "log")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[5], "192.0.2.1;1000") {
		t.Errorf("auth log: want a header and 5 entries, oldest last:\n%s", out)
	}
	if strings.Contains(out, "\x1b") || !strings.Contains(out, `"evil\x1b[2J"`) {
		t.Errorf("auth log printed a client's escape sequence unquoted:\n%q", out)
	}
	if strings.Contains(out, "\u202e") || !strings.Contains(out, `"mallory\u202egpj.exe"`) {
		t.Errorf("auth log printed a client's bidi override unquoted:\n%q", out)
	}
	for _, c := range []struct {
		args      []string
		want, not []string
	}{
		{[]string{"Alice"}, []string{"wrong password", "192.0.2.1"}, []string{"bob@"}}, // canonicalised, as the responder records
		{[]string{"-failed"}, []string{"wrong password", "unknown user"}, []string{"192.0.2.1"}},
		{[]string{"-service", "sieve"}, []string{"wrong password"}, []string{"unknown user"}},
		{[]string{"-since", "1h"}, []string{"wrong password", "unknown user"}, []string{"192.0.2.1"}},
		{[]string{"-n", "1", "alice@example.com"}, []string{"wrong password"}, []string{"192.0.2.1"}},
		{[]string{"carol"}, []string{"TIME"}, []string{"example.com"}},
		{[]string{"-client", "192.0.2.2"}, []string{"wrong password"}, []string{"192.0.2.1", "unknown user"}}, // IP alone: any port
		{[]string{"-client", "192.0.2.2;2000"}, []string{"wrong password"}, []string{"192.0.2.1"}},
		{[]string{"-client", "192.0.2"}, []string{"TIME"}, []string{"192.0.2"}}, // no prefix match beyond the IP
	} {
		out := mustRun(t, cfg, "", append([]string{"auth", "log"}, c.args...)...)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("auth log %v lacks %q:\n%s", c.args, w, out)
			}
		}
		for _, w := range c.not {
			if strings.Contains(out, w) {
				t.Errorf("auth log %v has %q:\n%s", c.args, w, out)
			}
		}
	}
	var es []store.LoginEvent
	if err := json.Unmarshal([]byte(mustRun(t, cfg, "", "auth", "log", "-json", "-failed", "bob")), &es); err != nil || len(es) != 1 || es[0].Reason != "unknown user" {
		t.Errorf("auth log -json -failed bob: %+v, %v", es, err)
	}
	if out := mustRun(t, cfg, "", "auth", "log", "-json", "nobody"); strings.TrimSpace(out) != "[]" {
		t.Errorf("auth log -json for no entries: %q, want []", out)
	}
	for _, bad := range [][]string{{"-n", "0"}, {"-since", "-1h"}, {"a", "b"}} {
		if _, _, err := runCLI(t, cfg, "", append([]string{"auth", "log"}, bad...)...); err == nil {
			t.Errorf("auth log %v: no error", bad)
		}
	}

	// user show carries the newest success and failure.
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "", "user", "add", "alice", "-no-password")
	mustRun(t, cfg, "", "user", "add", "carol", "-no-password")
	out = mustRun(t, cfg, "", "user", "show", "alice")
	okAt, failAt := now.Add(-3*time.Hour).Format("2006-01-02 15:04:05Z"), now.Add(-time.Minute).Format("2006-01-02 15:04:05Z")
	for _, w := range []string{"last login    " + okAt + " imap from 192.0.2.1;1000", "last failure  " + failAt + " sieve: wrong password from 192.0.2.2;2000"} {
		if !strings.Contains(out, w) {
			t.Errorf("user show alice lacks %q:\n%s", w, out)
		}
	}
	if out := mustRun(t, cfg, "", "user", "show", "carol"); !strings.Contains(out, "last login    -") || !strings.Contains(out, "last failure  -") {
		t.Errorf("user show carol (never logged in):\n%s", out)
	}
	var shown struct {
		Address     string
		LastLogin   *store.LoginEvent `json:"last_login"`
		LastFailure *store.LoginEvent `json:"last_failure"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, cfg, "", "user", "show", "alice", "-json")), &shown); err != nil ||
		shown.Address != "alice@example.com" || shown.LastLogin == nil || shown.LastLogin.Client != "192.0.2.1;1000" ||
		shown.LastFailure == nil || shown.LastFailure.Reason != "wrong password" {
		t.Errorf("user show -json: %+v, %v", shown, err)
	}
}
