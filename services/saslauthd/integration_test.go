//go:build integration

package saslauthd

// Real peers against the responder (issue 3, "Done when: Real peers"):
// sasl2-bin's testsaslauthd, the cyrus-sidecar CLI changing the store from
// another process while the responder's cache is warm, and a real Cyrus 3.6
// (imapd and timsieved, sasl_pwcheck_method: saslauthd) pointed at our
// socket. What Cyrus sends is in the shared reference cyrus-lab-facts.md
// ("facts" below), section 3.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/store"
)

// realEnv is a responder that peers in other processes reach: its socket
// and its store live in a short directory under /tmp that the cyrus user can
// enter (t.TempDir is 0700), and the store's path is known so that the CLI
// can open the same file.
//
//	example.com: alice (secret, every service), bob (secret, disabled)
//	other.org:   carol (secret, imap only)
type realEnv struct {
	dir, sock, storePath string
	st                   *store.Store
	canon                store.Canon
	keys                 TokenKeys // issuer "web"
	log                  *lockedBuffer
}

// lockedBuffer collects the responder's log lines for inspection.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startReal(t *testing.T) *realEnv {
	t.Helper()
	ctx := t.Context()
	dir, err := os.MkdirTemp("/tmp", "sait")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) }) // registered first, runs last
	// Facts §2: Cyrus runs as user cyrus and must reach the socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &realEnv{dir: dir, sock: filepath.Join(dir, "mux"), storePath: filepath.Join(dir, "store.db"),
		log: &lockedBuffer{}}
	if e.st, err = store.Open(ctx, e.storePath, store.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.st.Close() })
	if e.canon, err = store.NewCanon("example.com", "+"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct{ org, domain string }{{"Acme", "example.com"}, {"Other", "other.org"}} {
		if _, err := e.st.AddOrg(ctx, d.org); err != nil {
			t.Fatal(err)
		}
		if _, err := e.st.AddDomain(ctx, d.domain, d.org); err != nil {
			t.Fatal(err)
		}
	}
	e.addUser(t, "alice@example.com", "secret", nil)
	e.addUser(t, "bob@example.com", "secret", nil)
	e.addUser(t, "carol@other.org", "secret", []string{"imap"})
	if err := e.st.SetDisabled(ctx, e.addr(t, "bob@example.com"), true); err != nil {
		t.Fatal(err)
	}
	e.keys = TokenKeys{"web": randomTokenKey(t)}

	cfg := DefaultConfig("")
	cfg.Listen = "unix:" + e.sock // socket_mode stays the default 0666
	// The growing failure delay has its own unit test; here it would only
	// make the many deliberate failures slow.
	cfg.FailDelay, cfg.FailDelayMax = 10*time.Millisecond, 40*time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var w io.Writer = e.log
	if testing.Verbose() {
		w = io.MultiWriter(e.log, os.Stderr)
	}
	s := New(cfg, e.keys, e.st, e.canon, fastHasher(t), slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx, 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return e
}

func (e *realEnv) addr(t *testing.T, s string) store.Address {
	t.Helper()
	a, err := e.canon.Address(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// addUser adds a user with a password; services nil means all.
func (e *realEnv) addUser(t *testing.T, addr, pw string, services []string) {
	t.Helper()
	hash, err := fastHasher(t).Hash(pw)
	if err != nil {
		t.Fatal(err)
	}
	nu := store.NewUser{Address: e.addr(t, addr), PasswordHash: store.Secret(hash), Services: services}
	if _, err := e.st.AddUser(t.Context(), nu); err != nil {
		t.Fatal(err)
	}
}

// audit waits until the audit holds n records (it is written in batches,
// off the request path) and returns them oldest first.
func (e *realEnv) audit(t *testing.T, n int) []store.LoginEvent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		es, err := e.st.Logins(t.Context(), "", n+10)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) >= n || time.Now().After(deadline) {
			if len(es) != n {
				t.Fatalf("audit has %d records, want %d: %+v", len(es), n, es)
			}
			slices.Reverse(es) // Logins is newest first
			return es
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func randomTokenKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, minTokenKeyLen)
	rand.Read(k) // never fails
	return k
}

// testsaslauthd runs sasl2-bin's client once and returns OK or NO, from the
// line it prints (facts §3). An empty realm omits -r, as an admin would.
func testsaslauthd(t *testing.T, bin, sock, user, pw, realm, service string) string {
	t.Helper()
	args := []string{"-u", user, "-p", pw, "-s", service, "-f", sock}
	if realm != "" {
		args = append(args, "-r", realm)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	line := strings.TrimSpace(string(out))
	switch {
	case err == nil && line == `0: OK "Success."`:
		return "OK"
	case line == `0: NO "authentication failed"`:
		return "NO" // whatever the exit status
	}
	// The password is not repeated: it may be a token.
	t.Fatalf("testsaslauthd -u %s -r %q -s %s: %q, %v", user, realm, service, out, err)
	return ""
}

// TestTestsaslauthd: every credential kind, OK and NO, through the real
// client, and each NO for the reason the case is about (the audit says why;
// the socket only says NO).
func TestTestsaslauthd(t *testing.T) {
	bin := lab.Tool(t, "SIDECAR_TESTSASLAUTHD", "testsaslauthd", "/usr/sbin")
	e := startReal(t)
	ctx := t.Context()
	now := time.Now()
	alice := e.addr(t, "alice@example.com")

	app, hash, err := store.GenerateAppPassword()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AddAppPassword(ctx, alice, "phone", hash, []string{"imap"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	oldApp, oldHash, err := store.GenerateAppPassword()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AddAppPassword(ctx, alice, "old-phone", oldHash, nil, now.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	issue := func(keys TokenKeys, issuer, user, service string, ttl time.Duration, at time.Time) string {
		t.Helper()
		tok, err := IssueToken(keys, issuer, user, service, ttl, at)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tokIMAP := issue(e.keys, "web", "alice@example.com", "imap", 5*time.Minute, now)
	// Expired an hour ago, well past the allowed clock skew.
	tokExpired := issue(e.keys, "web", "alice@example.com", "imap", time.Minute, now.Add(-time.Hour))
	tokSieve := issue(e.keys, "web", "alice@example.com", "sieve", 5*time.Minute, now)
	tokForged := issue(TokenKeys{"web": randomTokenKey(t)}, "web", "alice@example.com", "imap", 5*time.Minute, now)
	tokIssuer := issue(TokenKeys{"intranet": randomTokenKey(t)}, "intranet", "alice@example.com", "imap", 5*time.Minute, now)

	const ok, fail = store.ResultOK, store.ResultFail
	const wrongPW = "not-the-password" // unlike any reason text, for the leak check
	tests := []struct {
		name                     string
		user, pw, realm, service string
		want                     string
		auditLogin, result, why  string
	}{
		{"default domain, no realm", "alice", "secret", "", "imap", "OK", "alice@example.com", ok, reasonOK},
		{"user@domain, no realm", "alice@example.com", "secret", "", "imap", "OK", "alice@example.com", ok, reasonOK},
		{"user@other domain, no realm", "carol@other.org", "secret", "", "imap", "OK", "carol@other.org", ok, reasonOK},
		{"user + realm", "carol", "secret", "other.org", "imap", "OK", "carol@other.org", ok, reasonOK},
		{"user + default domain as realm", "alice", "secret", "example.com", "sieve", "OK", "alice@example.com", ok, reasonOK},
		{"wrong password", "alice", wrongPW, "", "imap", "NO", "alice@example.com", fail, reasonPassword},
		{"unknown user", "nobody", "secret", "", "imap", "NO", "nobody@example.com", fail, reasonUnknown},
		{"disabled user", "bob", "secret", "", "imap", "NO", "bob@example.com", fail, reasonDisabled},
		{"service not allowed", "carol", "secret", "other.org", "pop", "NO", "carol@other.org", fail, reasonService},
		{"app password in its services", "alice", app, "", "imap", "OK", "alice@example.com", ok, reasonOK},
		{"app password outside its services", "alice", app, "", "sieve", "NO", "alice@example.com", fail, reasonAppService},
		{"app password expired", "alice", oldApp, "", "imap", "NO", "alice@example.com", fail, reasonAppExpired},
		{"token", "alice", tokIMAP, "", "imap", "OK", "alice@example.com", ok, reasonOK},
		{"token, user@domain", "alice@example.com", tokSieve, "", "sieve", "OK", "alice@example.com", ok, reasonOK},
		{"token expired", "alice", tokExpired, "", "imap", "NO", "alice@example.com", fail, reasonTokenExpired},
		{"token for another service", "alice", tokSieve, "", "imap", "NO", "alice@example.com", fail, reasonTokenInvalid},
		{"token for another user", "carol", tokIMAP, "other.org", "imap", "NO", "carol@other.org", fail, reasonTokenInvalid},
		{"token signed with another key", "alice", tokForged, "", "imap", "NO", "alice@example.com", fail, reasonTokenInvalid},
		{"token of an unknown issuer", "alice", tokIssuer, "", "imap", "NO", "alice@example.com", fail, reasonTokenIssuer},
	}
	for _, tt := range tests {
		if got := testsaslauthd(t, bin, e.sock, tt.user, tt.pw, tt.realm, tt.service); got != tt.want {
			t.Errorf("%s: testsaslauthd says %s, want %s", tt.name, got, tt.want)
		}
	}
	// One request per run, answered in order: the audit lines up with the
	// table.
	for i, ev := range e.audit(t, len(tests)) {
		tt := tests[i]
		if ev.Login != tt.auditLogin || ev.Service != tt.service || ev.Result != tt.result || ev.Reason != tt.why {
			t.Errorf("%s: audit %s %s %s %q, want %s %s %s %q", tt.name,
				ev.Login, ev.Service, ev.Result, ev.Reason, tt.auditLogin, tt.service, tt.result, tt.why)
		}
		for _, secret := range []string{"secret", wrongPW, app, oldApp, tokIMAP, tokSieve, tokExpired, tokForged} {
			if strings.Contains(fmt.Sprintf("%+v", ev), secret) {
				t.Errorf("%s: audit record %+v holds a credential", tt.name, ev)
			}
		}
	}
}

// TestCLIRevocation: a password change and a disable made by the CLI in
// another process are refused on the very next login, although the
// responder's cache holds the old password.
func TestCLIRevocation(t *testing.T) {
	sasl := lab.Tool(t, "SIDECAR_TESTSASLAUTHD", "testsaslauthd", "/usr/sbin")
	cli := lab.BuildSidecar(t)
	e := startReal(t)
	cfg := filepath.Join(t.TempDir(), "config.toml")
	// The smallest argon2id cost, as the responder's own users have: the
	// responder verifies whatever parameters a hash carries.
	conf := fmt.Sprintf("[store]\npath = %s\n\n[cyrus]\ndefault_domain = \"example.com\"\n\n"+
		"[password]\ntime = 1\nmemory_kib = 8192\nthreads = 1\n", strconv.Quote(e.storePath))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), cli, append(args, "-config", cfg)...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Dir = t.TempDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cyrus-sidecar %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	login := func(pw, want, when string) {
		t.Helper()
		if got := testsaslauthd(t, sasl, e.sock, "alice", pw, "", "imap"); got != want {
			t.Fatalf("%s: %s, want %s", when, got, want)
		}
	}
	cacheHits := func() int {
		return strings.Count(e.log.String(), `msg="auth ok" user=alice@example.com service=imap via=cache`)
	}

	login("secret", "OK", "first login")
	login("secret", "OK", "second login")
	if cacheHits() != 1 {
		t.Fatalf("the second login was not a cache hit; responder log:\n%s", e.log)
	}
	run("changed-secret\n", "user", "passwd", "alice@example.com", "-password-stdin")
	login("secret", "NO", "old password, next login after `user passwd`")
	login("changed-secret", "OK", "new password")
	login("changed-secret", "OK", "new password again")
	if cacheHits() != 2 {
		t.Fatalf("the new password is not cached; responder log:\n%s", e.log)
	}
	run("", "user", "disable", "alice@example.com")
	login("changed-secret", "NO", "next login after `user disable`")

	want := []string{reasonOK, reasonOK, reasonPassword, reasonOK, reasonOK, reasonDisabled}
	var got []string
	for _, ev := range e.audit(t, len(want)) {
		got = append(got, ev.Reason)
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit reasons %q, want %q", got, want)
	}
}

// saslPlain is a SASL PLAIN response (RFC 4616), in base64 as IMAP and
// ManageSieve carry it.
func saslPlain(authz, authc, pw string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + authc + "\x00" + pw))
}

// TestCyrus: a real Cyrus imapd and timsieved authenticate through the
// responder: LOGIN and AUTHENTICATE PLAIN, ManageSieve, the admin's proxy
// login, app passwords and tokens, and the failures. Each failed login costs
// about 3 s in Cyrus (facts §3), so the failures run at once.
func TestCyrus(t *testing.T) {
	e := startReal(t)
	ctx := t.Context()
	adminPW := rand.Text()
	e.addUser(t, "admin@example.com", adminPW, nil)
	app, hash, err := store.GenerateAppPassword()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AddAppPassword(ctx, e.addr(t, "alice@example.com"), "mail-app", hash, []string{"imap"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	tokIMAP, err := IssueToken(e.keys, "web", "alice@example.com", "imap", 5*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tokSieve, err := IssueToken(e.keys, "web", "alice@example.com", "sieve", 5*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	c := lab.StartCyrus(t, lab.CyrusOptions{SASLSocket: e.sock, AdminPassword: adminPW})
	c.CreateMailbox(t, "alice@example.com") // the admin's LOGIN, through us

	// Successes, one connection each. SELECT INBOX shows whose session it
	// is: the admin has no INBOX and may not select alice's (facts §2).
	q := lab.IMAPQuote
	for _, tt := range []struct{ name, cmd string }{
		{"LOGIN user@domain", "LOGIN " + q("alice@example.com") + " " + q("secret")},
		{"LOGIN bare user", "LOGIN alice " + q("secret")},
		{"AUTHENTICATE PLAIN", "AUTHENTICATE PLAIN " + saslPlain("", "alice@example.com", "secret")},
		{"admin's proxy login", "AUTHENTICATE PLAIN " + saslPlain("alice@example.com", "admin", adminPW)},
		{"LOGIN app password", "LOGIN " + q("alice@example.com") + " " + q(app)},
		{"LOGIN token (webmail single sign-on)", "LOGIN " + q("alice@example.com") + " " + q(tokIMAP)},
	} {
		cl := lab.DialIMAP(t, c.IMAPAddr)
		if r := cl.Cmd(t, tt.cmd); !r.OK() {
			t.Errorf("%s: %s", tt.name, r)
		} else if r := cl.Cmd(t, "SELECT INBOX"); !r.OK() {
			t.Errorf("%s: SELECT INBOX: %s (not alice's session?)", tt.name, r)
		}
		cl.Logout(t)
	}
	// The control: in the admin's own session SELECT INBOX fails.
	cl := c.AdminIMAP(t)
	if r := cl.Cmd(t, "SELECT INBOX"); r.OK() {
		t.Errorf("admin's own session: SELECT INBOX is OK, so it proves nothing about the proxy login")
	}
	cl.Logout(t)
	// Another domain: Cyrus sends login carol, realm other.org (facts §3).
	cl = lab.DialIMAP(t, c.IMAPAddr)
	if r := cl.Cmd(t, "LOGIN "+q("Carol@Other.ORG")+" "+q("secret")); !r.OK() {
		t.Errorf("LOGIN Carol@Other.ORG: %s", r)
	}
	cl.Logout(t)
	for _, tt := range []struct{ name, resp string }{
		{"managesieve PLAIN", saslPlain("", "alice@example.com", "secret")},
		{"managesieve admin's proxy login", saslPlain("alice@example.com", "admin", adminPW)},
		{"managesieve token", saslPlain("", "alice@example.com", tokSieve)},
	} {
		if l, err := lab.SieveAuth(c.SieveAddr, tt.resp); err != nil || !strings.HasPrefix(l, "OK") {
			t.Errorf("%s: %q, %v", tt.name, l, err)
		}
	}

	// Failures, all at once. Connections are opened here: DialIMAP fails
	// the test, which only the test goroutine may do.
	failures := []struct{ name, cmd string }{
		{"LOGIN wrong password", "LOGIN " + q("alice@example.com") + " " + q("wrong")},
		{"AUTHENTICATE PLAIN wrong password", "AUTHENTICATE PLAIN " + saslPlain("", "alice@example.com", "wrong")},
		{"LOGIN disabled user", "LOGIN " + q("bob@example.com") + " " + q("secret")},
		{"LOGIN token for sieve", "LOGIN " + q("alice@example.com") + " " + q(tokSieve)},
	}
	conns := make([]*lab.IMAPClient, len(failures))
	for i := range failures {
		conns[i] = lab.DialIMAP(t, c.IMAPAddr)
	}
	replies := make([]*lab.IMAPReply, len(failures))
	errs := make([]error, len(failures))
	var sieveLine string
	var sieveErr error
	var wg sync.WaitGroup
	start := time.Now()
	for i, f := range failures {
		wg.Go(func() { replies[i], errs[i] = conns[i].Do(f.cmd) })
	}
	wg.Go(func() { sieveLine, sieveErr = lab.SieveAuth(c.SieveAddr, saslPlain("", "alice@example.com", "wrong")) })
	wg.Wait()
	for i, f := range failures {
		if errs[i] != nil || replies[i].Status != "NO" {
			t.Errorf("%s: %v, %v; want NO", f.name, replies[i], errs[i])
		}
	}
	if sieveErr != nil || !strings.HasPrefix(sieveLine, "NO") {
		t.Errorf("managesieve wrong password: %q, %v; want NO", sieveLine, sieveErr)
	}
	t.Logf("%d failed logins took %v together", len(failures)+1, time.Since(start).Round(time.Millisecond))

	// What the responder saw: one request per authentication, the login
	// canonical (alice/"" is alice@example.com, carol/other.org is
	// carol@other.org), the service as Cyrus names it, and for the proxy
	// logins the admin only (facts §3: the authentication id).
	type rec struct{ login, service, result, reason string }
	okRec := func(login, service string) rec { return rec{login, service, store.ResultOK, reasonOK} }
	want := []rec{
		okRec("admin@example.com", "imap"), // CreateMailbox
		okRec("alice@example.com", "imap"), okRec("alice@example.com", "imap"), okRec("alice@example.com", "imap"),
		okRec("admin@example.com", "imap"),                                     // proxy
		okRec("alice@example.com", "imap"), okRec("alice@example.com", "imap"), // app password, token
		okRec("admin@example.com", "imap"), // the SELECT control
		okRec("carol@other.org", "imap"),
		okRec("alice@example.com", "sieve"),
		okRec("admin@example.com", "sieve"), // proxy
		okRec("alice@example.com", "sieve"), // token
		{"alice@example.com", "imap", store.ResultFail, reasonPassword},
		{"alice@example.com", "imap", store.ResultFail, reasonPassword},
		{"bob@example.com", "imap", store.ResultFail, reasonDisabled},
		{"alice@example.com", "imap", store.ResultFail, reasonTokenInvalid},
		{"alice@example.com", "sieve", store.ResultFail, reasonPassword},
	}
	var got []rec
	for _, ev := range e.audit(t, len(want)) {
		got = append(got, rec{ev.Login, ev.Service, ev.Result, ev.Reason})
	}
	// The failures ran concurrently: compare as multisets.
	cmp := func(a, b rec) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) }
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	if !slices.Equal(got, want) {
		t.Errorf("audit:\n got %v\nwant %v", got, want)
	}
}
