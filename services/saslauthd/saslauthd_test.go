package saslauthd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// fastHasher keeps tests quick: argon2id at its smallest allowed cost.
func fastHasher(t testing.TB) *password.Hasher {
	t.Helper()
	h, err := password.New(password.Params{Time: 1, MemoryKiB: 8192, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// env is a store with alice (secret, all services), bob (disabled) and
// carol@other.org (imap only), and a running responder.
type env struct {
	st    *store.Store
	canon store.Canon
	svc   *Service
	sock  string
	keys  TokenKeys
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "s.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c, _ := store.NewCanon("example.com", "+")
	h := fastHasher(t)
	st.AddOrg(ctx, "Acme")
	st.AddDomain(ctx, "example.com", "Acme")
	st.AddOrg(ctx, "Other")
	st.AddDomain(ctx, "other.org", "Other")
	add := func(addr, pw string, services []string) {
		a, _ := c.Address(addr)
		hash, err := h.Hash(pw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.AddUser(ctx, store.NewUser{Address: a, PasswordHash: store.Secret(hash), Services: services}); err != nil {
			t.Fatal(err)
		}
	}
	add("alice@example.com", "secret", nil)
	add("bob@example.com", "secret", nil)
	add("carol@other.org", "secret", []string{"imap"})
	bob, _ := c.Address("bob@example.com")
	st.SetDisabled(ctx, bob, true)

	sock := filepath.Join(t.TempDir(), "mux")
	cfg := DefaultConfig("")
	cfg.Listen = "unix:" + sock
	cfg.FailDelay, cfg.FailDelayMax = 10*time.Millisecond, 40*time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	keys := TokenKeys{"web": []byte(strings.Repeat("k", 32))}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	s := New(cfg, keys, st, c, h, log)
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
	return &env{st: st, canon: c, svc: s, sock: sock, keys: keys}
}

// ask sends one request the way libsasl does (one connection, one write)
// and returns the reply string.
func (e *env) ask(t testing.TB, fields ...string) string {
	t.Helper()
	c, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(encode(fields...)); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%q: %v", fields[0], err)
	}
	if len(reply) < 2 || int(reply[0])<<8|int(reply[1]) != len(reply)-2 {
		t.Fatalf("%q: malformed reply %q", fields[0], reply)
	}
	return string(reply[2:])
}

func TestDecisions(t *testing.T) {
	e := newEnv(t, nil)
	tok, err := IssueToken(e.keys, "web", "alice@example.com", "imap", 5*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                      string
		login, pw, service, realm string
		want                      string
	}{
		{"default domain, empty realm", "alice", "secret", "imap", "", "OK"},
		{"user@domain login", "alice@example.com", "secret", "imap", "", "OK"},
		{"realm", "carol", "secret", "imap", "other.org", "OK"},
		{"wrong password", "alice", "wrong", "imap", "", "NO"},
		{"unknown user", "nobody", "secret", "imap", "", "NO"},
		{"disabled user", "bob", "secret", "imap", "", "NO"},
		{"service not allowed", "carol", "secret", "pop", "other.org", "NO"},
		{"service case", "alice", "secret", "HTTP", "", "OK"},
		{"malformed login", "al ice", "secret", "imap", "", "NO"},
		{"token", "alice", tok, "imap", "", "OK"},
		{"token other service", "alice", tok, "sieve", "", "NO"},
		{"token other user", "carol", tok, "imap", "other.org", "NO"},
	}
	for _, tt := range tests {
		if got := e.ask(t, tt.login, tt.pw, tt.service, tt.realm); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestRevocation: a password change and a disable take effect on the very
// next request, with the cache on.
func TestRevocation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	alice, _ := e.canon.Address("alice")
	for range 3 { // the second and third are cache hits
		if got := e.ask(t, "alice", "secret", "imap", ""); got != "OK" {
			t.Fatalf("before: %q", got)
		}
	}
	h, _ := fastHasher(t).Hash("new")
	if err := e.st.SetPassword(ctx, alice, store.Secret(h)); err != nil {
		t.Fatal(err)
	}
	if got := e.ask(t, "alice", "secret", "imap", ""); got != "NO" {
		t.Errorf("old password after the change: %q", got)
	}
	if got := e.ask(t, "alice", "new", "imap", ""); got != "OK" {
		t.Errorf("new password: %q", got)
	}
	e.st.SetDisabled(ctx, alice, true)
	if got := e.ask(t, "alice", "new", "imap", ""); got != "NO" {
		t.Errorf("after disable: %q", got)
	}
}

func TestAppPasswords(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	alice, _ := e.canon.Address("alice")
	plain, hash, err := store.GenerateAppPassword()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AddAppPassword(ctx, alice, "phone", hash, []string{"imap"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := e.ask(t, "alice", plain, "imap", ""); got != "OK" {
		t.Errorf("app password for imap: %q", got)
	}
	if got := e.ask(t, "alice", plain, "sieve", ""); got != "NO" {
		t.Errorf("app password outside its services: %q", got)
	}
	if got := e.ask(t, "alice", "secret", "sieve", ""); got != "OK" {
		t.Errorf("the real password still works: %q", got)
	}
	if err := e.st.DeleteAppPassword(ctx, alice, "phone"); err != nil {
		t.Fatal(err)
	}
	if got := e.ask(t, "alice", plain, "imap", ""); got != "NO" {
		t.Errorf("deleted app password: %q", got)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, nil)
	dial := func() net.Conn {
		c, err := net.Dial("unix", e.sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(15 * time.Second))
		return c
	}
	answer := func(in []byte) string {
		c := dial()
		defer c.Close()
		c.Write(in)
		c.(*net.UnixConn).CloseWrite()
		b, _ := io.ReadAll(c)
		return string(b)
	}
	for _, tt := range []struct {
		name string
		in   []byte
		want string
	}{
		{"oversized length", append([]byte{0x01, 0x01}, make([]byte, 257)...), "\x00\x02NO"},
		{"NUL in a field", encode("al\x00ice", "secret", "imap", ""), "\x00\x02NO"},
		{"empty password", encode("alice", "", "imap", ""), "\x00\x02NO"},
		{"truncated", encode("alice", "secret", "imap", "")[:9], ""},
		{"missing fields", encode("alice", "secret"), ""},
		{"five fields", encode("alice", "secret", "imap", "", "192.0.2.1;4711"), "\x00\x02OK"},
	} {
		if got := answer(tt.in); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
	// Field by field, as Exim's saslauthd condition writes.
	c := dial()
	for _, f := range []string{"alice", "secret", "imap", ""} {
		c.Write(encode(f))
		time.Sleep(20 * time.Millisecond)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "\x00\x02OK" {
		t.Errorf("field by field: %q, %v", b, err)
	}
	c.Close()
}

// TestSilentClientBounded: a client that connects and sends nothing is
// dropped after request_timeout and holds nothing else up.
func TestSilentClientBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.RequestTimeout = 300 * time.Millisecond
		c.VerifyQueueWait = 100 * time.Millisecond
		c.FailDelayMax = 200 * time.Millisecond
	})
	c, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := e.ask(t, "alice", "secret", "imap", ""); got != "OK" {
		t.Errorf("while a silent client waits: %q", got)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	b, _ := io.ReadAll(c)
	if len(b) != 0 || time.Since(start) > 3*time.Second {
		t.Errorf("silent client: got %q after %v", b, time.Since(start))
	}
}

// TestManyConnections: 1,000 concurrent clients all get an answer.
func TestManyConnections(t *testing.T) {
	e := newEnv(t, nil)
	e.ask(t, "alice", "secret", "imap", "") // warm the cache
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := range 1000 {
		wg.Go(func() {
			c, err := net.Dial("unix", e.sock)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			pw := "secret"
			if i%10 == 0 {
				pw = "wrong"
			}
			c.Write(encode("alice", pw, "imap", ""))
			b, err := io.ReadAll(c)
			if err != nil || (string(b) != "\x00\x02OK" && string(b) != "\x00\x02NO") {
				errs <- fmt.Errorf("client %d: %q, %v", i, b, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestFailureDelay: repeated failures for a login slow its answers down,
// up to the cap, and a success clears them.
func TestFailureDelay(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.FailDelay, c.FailDelayMax = 50*time.Millisecond, 200*time.Millisecond })
	for range 4 {
		e.ask(t, "alice", "wrong", "imap", "")
	}
	start := time.Now()
	e.ask(t, "alice", "wrong", "imap", "")
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("fifth failure answered after %v, want the capped delay", d)
	}
	if got := e.ask(t, "alice", "secret", "imap", ""); got != "OK" {
		t.Fatalf("right password after failures: %q (never a lockout)", got)
	}
	start = time.Now()
	e.ask(t, "alice", "secret", "imap", "")
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("after a success the delay stays: %v", d)
	}
}

// TestAudit: every attempt lands in the store's audit, without passwords.
func TestAudit(t *testing.T) {
	e := newEnv(t, nil)
	e.ask(t, "alice", "secret", "imap", "")
	e.ask(t, "alice", "wrong-secret-xyz", "sieve", "")
	deadline := time.Now().Add(5 * time.Second)
	for {
		es, err := e.st.Logins(context.Background(), "alice@example.com", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 2 {
			if es[0].Result != store.ResultFail || es[0].Reason != reasonPassword || es[1].Result != store.ResultOK {
				t.Errorf("audit: %+v", es)
			}
			for _, ev := range es {
				if strings.Contains(fmt.Sprint(ev), "wrong-secret") {
					t.Errorf("audit holds the password: %+v", ev)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit has %d records after 5s", len(es))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRehash(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	// An imported SHA512-crypt hash (openssl passwd -6 -salt saltsalt secret).
	carol, _ := e.canon.Address("carol@other.org")
	old := store.Secret("$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1")
	if ok, _ := password.Verify(old.Reveal(), "secret"); !ok {
		t.Fatal("test vector does not verify")
	}
	e.st.SetPassword(ctx, carol, old)
	if got := e.ask(t, "carol", "secret", "imap", "other.org"); got != "OK" {
		t.Fatalf("imported hash: %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		u, _ := e.st.User(ctx, carol)
		if strings.HasPrefix(u.PasswordHash.Reveal(), "$argon2id$") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hash not upgraded: %s", u.PasswordHash.Reveal()[:3])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := e.ask(t, "carol", "secret", "imap", "other.org"); got != "OK" {
		t.Errorf("after rehash: %q", got)
	}
}

// TestTokenHonoursServices: a token replaces the password, not the user's
// service restrictions.
func TestTokenHonoursServices(t *testing.T) {
	e := newEnv(t, nil)
	tok, err := IssueToken(e.keys, "web", "carol@other.org", "pop", 5*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := e.ask(t, "carol", tok, "pop", "other.org"); got != "NO" {
		t.Errorf("token for a service carol may not use: %q", got)
	}
	r := e.svc.Authenticate(context.Background(), "alice", "", "imap", "sct1.garbage")
	if r.OK || r.Reason != reasonTokenBad {
		t.Errorf("malformed token: %+v", r)
	}
}

// TestLimiterFlood: filling the failure table with junk logins does not
// wipe the brake of a login under attack.
func TestLimiterFlood(t *testing.T) {
	l := newLimiter(time.Second, 8*time.Second, time.Hour)
	now := time.Now()
	for range 5 {
		l.fail("victim", now)
	}
	for i := range maxTracked + 1000 {
		l.fail(fmt.Sprint("junk", i), now)
	}
	if d := l.delay("victim", now); d != 8*time.Second {
		t.Errorf("victim's delay after a flood: %v, want 8s", d)
	}
	if len(l.fails) > maxTracked {
		t.Errorf("table grew to %d", len(l.fails))
	}
}

// TestReload: a reload applies policy (alias logins) and token keys from
// the next request, and keeps what needs a restart (the socket).
func TestReload(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	al, _ := e.canon.Address("al@example.com")
	alice, _ := e.canon.Address("alice@example.com")
	if _, err := e.st.AddAlias(ctx, al, []store.Address{alice}); err != nil {
		t.Fatal(err)
	}
	tok, err := IssueToken(TokenKeys{"new": []byte(strings.Repeat("n", 32))}, "new", "alice@example.com", "imap", 5*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := e.ask(t, "al", "secret", "imap", ""); got != "NO" {
		t.Fatalf("alias login before the reload: %q", got)
	}
	if got := e.ask(t, "alice", tok, "imap", ""); got != "NO" {
		t.Fatalf("token of an unknown issuer before the reload: %q", got)
	}
	cfg := *e.svc.cfg.Load()
	cfg.AllowAliasLogin = true
	cfg.Listen = "unix:" + filepath.Join(t.TempDir(), "elsewhere")
	e.svc.Reload(cfg, TokenKeys{"new": []byte(strings.Repeat("n", 32))})
	if got := e.ask(t, "al", "secret", "imap", ""); got != "OK" {
		t.Errorf("alias login after a reload that allows it: %q", got)
	}
	if got := e.ask(t, "alice", tok, "imap", ""); got != "OK" {
		t.Errorf("token of the reloaded issuer: %q", got)
	}
	if l := e.svc.cfg.Load().Listen; l != "unix:"+e.sock {
		t.Errorf("listen changed by a reload to %q; it needs a restart", l)
	}
}
