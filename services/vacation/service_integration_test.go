//go:build integration

package vacation

// The whole out-of-office path against real Cyrus 3.6: settings in the
// store, the reconciler installing over ManageSieve as the admin, mail
// delivered through our LMTP proxy (which stamps the sender relation), and
// Cyrus's replies captured from its sendmail.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/services/lmtp"
	"cyrus-sidecar/services/vacation/managesieve"
	"cyrus-sidecar/store"
)

var e2eUsers = map[string]string{"alice": "alice-pw", "bob": "bob-pw"}

// e2e is a lab: Cyrus, the store, our LMTP proxy and the reconciler.
type e2e struct {
	cy    *lab.Cyrus
	st    *store.Store
	path  string // the store's file, for the CLI
	canon store.Canon
	lmtp  string // the proxy's address
	svc   *Service
}

func newE2E(t testing.TB, sieveAddr func(cy *lab.Cyrus) string, mod func(*Config)) *e2e {
	t.Helper()
	ctx := context.Background()
	cy := lab.StartCyrus(t, lab.CyrusOptions{Users: e2eUsers})
	for u := range e2eUsers {
		cy.CreateMailbox(t, u)
	}
	path := filepath.Join(t.TempDir(), "s.db")
	st, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c, err := store.NewCanon("example.com", "+")
	if err != nil {
		t.Fatal(err)
	}
	a := func(s string) store.Address {
		x, err := c.Exact(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.AddOrg(ctx, "Acme"))
	must(st.AddDomain(ctx, "example.com", "Acme"))
	must(st.AddUser(ctx, store.NewUser{Address: a("alice@example.com")}))
	must(st.AddUser(ctx, store.NewUser{Address: a("bob@example.com")}))
	must(st.AddAlias(ctx, a("sales@example.com"), []store.Address{a("alice@example.com")}))

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	// The LMTP proxy in front of Cyrus, stamping the sender relation.
	lcfg := lmtp.DefaultConfig()
	lcfg.Listen = []string{freeAddr(t)}
	lcfg.Hostname = "sidecar.lab.localhost"
	proxy := lmtp.New(lcfg, "unix:"+cy.LMTPSocket, st, c, log.With("service", "lmtp"))
	if err := proxy.Listen(); err != nil {
		t.Fatal(err)
	}
	runService(t, func(ctx context.Context) error { return proxy.Run(ctx, func() time.Duration { return time.Second }) })

	cfg := DefaultConfig()
	cfg.Poll, cfg.Workers, cfg.Timeout, cfg.RetryMax = 50*time.Millisecond, 2, 10*time.Second, time.Second
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	addr := cy.SieveAddr
	if sieveAddr != nil {
		addr = sieveAddr(cy)
	}
	svc := New(cfg, Cyrus{Network: "tcp", Addr: addr, Admin: cy.Admin, Relation: lcfg.RelationHeader,
		Password: func() (string, error) { return cy.AdminPassword, nil }}, st, c, log.With("service", "vacation"))
	runService(t, svc.Run)
	return &e2e{cy: cy, st: st, path: path, canon: c, lmtp: lcfg.Listen[0], svc: svc}
}

// runService runs fn until the test ends.
func runService(t testing.TB, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { fn(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("service did not stop within 10s")
		}
	})
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// send delivers one message through the proxy and wants 250.
func (e *e2e) send(t *testing.T, from, rcpt, headers, body string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.lmtp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	cl := smtp.NewClientLMTP(conn)
	defer cl.Close()
	if err := cl.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	if err := cl.Rcpt(rcpt, nil); err != nil {
		t.Fatal(err)
	}
	w, err := cl.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, headers+"\r\n"+body)
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		t.Fatalf("delivery from %s to %s: %v", from, rcpt, err)
	}
}

var msgID atomic.Int64

func headers(from, to, subject string, extra ...string) string {
	h := "From: " + from + "\r\nTo: " + to + "\r\nSubject: " + subject + "\r\nMessage-ID: <m" +
		time.Now().Format("150405.000000") + "-" + string(rune('a'+msgID.Add(1)%26)) + "@test>\r\n"
	for _, x := range extra {
		h += x + "\r\n"
	}
	return h
}

// sieve opens a ManageSieve session as user.
func (e *e2e) sieve(t testing.TB, user string) *managesieve.Client {
	t.Helper()
	cl, err := managesieve.Dial(context.Background(), "tcp", e.cy.SieveAddr, managesieve.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.AuthenticatePlain("", user+"@example.com", e2eUsers[user]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Logout() })
	return cl
}

// waitState waits for the reconciler's record of address to satisfy ok.
func (e *e2e) waitState(t testing.TB, address string, ok func(store.SieveState) bool) store.SieveState {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := e.st.SieveState(context.Background(), address)
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("sieve state of %s not as wanted within 20s: %+v (%v)", address, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replies returns the vacation replies Cyrus sent to rcpt so far.
func (e *e2e) replies(t *testing.T, rcpt string) []lab.SentMail {
	var out []lab.SentMail
	for _, m := range e.cy.SentMail(t) {
		if len(m.To) == 1 && m.To[0] == rcpt {
			out = append(out, m)
		}
	}
	return out
}

// waitReplies waits until rcpt has n replies, then a little longer to see
// that no more come.
func (e *e2e) waitReplies(t *testing.T, rcpt string, n int) []lab.SentMail {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(e.replies(t, rcpt)) < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	got := e.replies(t, rcpt)
	if len(got) != n {
		t.Fatalf("%d replies to %s, want %d", len(got), rcpt, n)
	}
	return got
}

func replyBody(m lab.SentMail) string {
	_, body, _ := bytes.Cut(m.Data, []byte("\r\n\r\n"))
	return string(body)
}

const mine = "require [\"fileinto\"];\r\n# alice's own filter\r\nif header :contains \"subject\" \"spam\" {\r\n  discard;\r\n}\r\n"

func TestVacationEndToEnd(t *testing.T) {
	e := newE2E(t, nil, nil)
	ctx := context.Background()
	alice, _ := e.canon.Address("alice@example.com")

	// Alice has her own active filter.
	sv := e.sieve(t, "alice")
	if err := sv.PutScript("mine", mine); err != nil {
		t.Fatal(err)
	}
	if err := sv.SetActive("mine"); err != nil {
		t.Fatal(err)
	}
	sv.Logout()

	start := time.Now()
	if err := e.st.SetVacation(ctx, alice, store.Vacation{State: "on", Subject: "Away until Monday",
		InternalText: "Internal: ask Bob.", ExternalText: "External: I am away.", Audience: "all", Days: 3}); err != nil {
		t.Fatal(err)
	}
	st := e.waitState(t, "alice@example.com", func(s store.SieveState) bool { return s.ScriptHash != "" })
	t.Logf("store edit to active in Cyrus: %v", time.Since(start))
	if st.Mode != "include" || st.PrevActive != "mine" || st.LastError != "" {
		t.Errorf("sieve state %+v, want mode include over mine", st)
	}
	sv = e.sieve(t, "alice")
	scripts, err := sv.ListScripts()
	if err != nil {
		t.Fatal(err)
	}
	if activeScript(scripts) != "mine" || len(scripts) != 2 {
		t.Errorf("scripts %+v: want mine still active, plus ours", scripts)
	}

	// Inside and outside get their own text; once each.
	e.send(t, "bob@example.com", "alice@example.com", headers("bob@example.com", "alice@example.com", "lunch?"), "hi\r\n")
	e.send(t, "x@outside.example", "alice@example.com", headers("x@outside.example", "alice@example.com", "offer"), "hi\r\n")
	e.send(t, "x@outside.example", "alice@example.com", headers("x@outside.example", "alice@example.com", "offer 2"), "hi\r\n")
	if r := e.waitReplies(t, "bob@example.com", 1); !strings.Contains(replyBody(r[0]), "Internal: ask Bob.") {
		t.Errorf("internal reply: %q", r[0].Data)
	}
	if r := e.waitReplies(t, "x@outside.example", 1); !strings.Contains(replyBody(r[0]), "External: I am away.") ||
		strings.Contains(replyBody(r[0]), "Internal") {
		t.Errorf("external reply: %q", r[0].Data)
	}
	// A forged "internal" from outside is replaced by the proxy's stamp.
	e.send(t, "y@outside.example", "alice@example.com",
		headers("y@outside.example", "alice@example.com", "trust me", "X-Sidecar-Sender-Relation: internal"), "hi\r\n")
	if r := e.waitReplies(t, "y@outside.example", 1); !strings.Contains(replyBody(r[0]), "External") {
		t.Errorf("forged internal header got %q", r[0].Data)
	}
	// To an alias: answered. Mailing lists and automatic mail: not.
	e.send(t, "z@outside.example", "sales@example.com", headers("z@outside.example", "sales@example.com", "quote"), "hi\r\n")
	e.waitReplies(t, "z@outside.example", 1)
	e.send(t, "list@outside.example", "alice@example.com",
		headers("list@outside.example", "alice@example.com", "news", "List-Id: <news.outside.example>"), "hi\r\n")
	e.send(t, "robot@outside.example", "alice@example.com",
		headers("robot@outside.example", "alice@example.com", "report", "Auto-Submitted: auto-generated"), "hi\r\n")
	e.waitReplies(t, "list@outside.example", 0)
	e.waitReplies(t, "robot@outside.example", 0)
	// Her own filter still works while the vacation is on.
	before := len(e.cy.Messages(t, "alice", e2eUsers["alice"]))
	e.send(t, "s@outside.example", "alice@example.com", headers("s@outside.example", "alice@example.com", "spam spam"), "buy\r\n")
	if n := len(e.cy.Messages(t, "alice", e2eUsers["alice"])); n != before {
		t.Errorf("alice's discard rule did not run while the vacation is on (%d -> %d messages)", before, n)
	}

	// Off: her script is back byte for byte, still active; ours is gone.
	if err := e.st.VacationOff(ctx, alice); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "alice@example.com", func(s store.SieveState) bool { return s.ScriptHash == "" && s.Mode == "" })
	sv = e.sieve(t, "alice")
	scripts, err = sv.ListScripts()
	if err != nil {
		t.Fatal(err)
	}
	if activeScript(scripts) != "mine" || len(scripts) != 1 {
		t.Errorf("after off: scripts %+v, want only mine, active", scripts)
	}
	if got, err := sv.GetScript("mine"); err != nil || got != mine {
		t.Errorf("after off: mine = %q, %v; want it as she wrote it", got, err)
	}
	e.send(t, "late@outside.example", "alice@example.com", headers("late@outside.example", "alice@example.com", "hello"), "hi\r\n")
	e.waitReplies(t, "late@outside.example", 0)
	before = len(e.cy.Messages(t, "alice", e2eUsers["alice"]))
	e.send(t, "s@outside.example", "alice@example.com", headers("s@outside.example", "alice@example.com", "spam again"), "buy\r\n")
	if n := len(e.cy.Messages(t, "alice", e2eUsers["alice"])); n != before {
		t.Errorf("alice's discard rule lost after the vacation (%d -> %d messages)", before, n)
	}
}

// TestVacationWrapperAndWindow: a user without a script gets our wrapper;
// a window in the future answers nobody; ending it removes everything.
func TestVacationWrapperAndWindow(t *testing.T) {
	e := newE2E(t, nil, nil)
	ctx := context.Background()
	bob, _ := e.canon.Address("bob@example.com")
	future := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)
	if err := e.st.SetVacation(ctx, bob, store.Vacation{State: "scheduled", Start: future, End: future.Add(48 * time.Hour),
		Subject: "Away", InternalText: "in", ExternalText: "out", Audience: "all", Days: 3}); err != nil {
		t.Fatal(err)
	}
	st := e.waitState(t, "bob@example.com", func(s store.SieveState) bool { return s.ScriptHash != "" })
	if st.Mode != "wrapper" || st.PrevActive != "" {
		t.Errorf("state %+v, want our wrapper", st)
	}
	sv := e.sieve(t, "bob")
	scripts, _ := sv.ListScripts()
	if activeScript(scripts) != "cyrus-sidecar" {
		t.Errorf("scripts %+v, want the wrapper active", scripts)
	}
	e.send(t, "x@outside.example", "bob@example.com", headers("x@outside.example", "bob@example.com", "hi"), "hi\r\n")
	e.waitReplies(t, "x@outside.example", 0) // before the start: nobody

	if err := e.st.VacationOff(ctx, bob); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "bob@example.com", func(s store.SieveState) bool { return s.ScriptHash == "" && s.Mode == "" })
	sv = e.sieve(t, "bob")
	if scripts, _ := sv.ListScripts(); len(scripts) != 0 {
		t.Errorf("after off: %+v, want no scripts at all (as before)", scripts)
	}
}

// flakyProxy forwards TCP to a target while up; while down it refuses.
type flakyProxy struct {
	ln     net.Listener
	target string
	up     atomic.Bool
	wg     sync.WaitGroup
}

func newFlakyProxy(t *testing.T, target string) *flakyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{ln: ln, target: target}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !p.up.Load() {
				c.Close()
				continue
			}
			p.wg.Go(func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, u)
			})
		}
	})
	t.Cleanup(func() { ln.Close() })
	return p
}

// TestVacationCyrusDown: set while Cyrus's ManageSieve refuses; the loop
// retries and installs once it answers, exactly once.
func TestVacationCyrusDown(t *testing.T) {
	var p *flakyProxy
	e := newE2E(t, func(cy *lab.Cyrus) string {
		p = newFlakyProxy(t, cy.SieveAddr)
		return p.ln.Addr().String()
	}, nil)
	ctx := context.Background()
	bob, _ := e.canon.Address("bob@example.com")
	if err := e.st.SetVacation(ctx, bob, store.Vacation{State: "on", Subject: "Away", InternalText: "in",
		ExternalText: "out", Audience: "all", Days: 3}); err != nil {
		t.Fatal(err)
	}
	st := e.waitState(t, "bob@example.com", func(s store.SieveState) bool { return s.LastError != "" })
	t.Logf("while down: %s", st.LastError)
	if st.ScriptHash != "" {
		t.Errorf("installed while Cyrus refused: %+v", st)
	}
	time.Sleep(1500 * time.Millisecond) // a few retries
	p.up.Store(true)
	st = e.waitState(t, "bob@example.com", func(s store.SieveState) bool { return s.ScriptHash != "" && s.LastError == "" })
	sv := e.sieve(t, "bob")
	scripts, err := sv.ListScripts()
	if err != nil || len(scripts) != 2 || activeScript(scripts) != "cyrus-sidecar" {
		t.Errorf("after recovery: %+v, %v; want our script and the active wrapper, once", scripts, err)
	}
	e.send(t, "x@outside.example", "bob@example.com", headers("x@outside.example", "bob@example.com", "hi"), "hi\r\n")
	e.waitReplies(t, "x@outside.example", 1)
}

// TestVacationScriptLimit: with Cyrus's five scripts reached (four of the
// user's and ours), a text change still gets in: Cyrus refuses even a
// replacement then, so ours is deleted and stored again.
func TestVacationScriptLimit(t *testing.T) {
	e := newE2E(t, nil, nil)
	ctx := context.Background()
	alice, _ := e.canon.Address("alice@example.com")
	sv := e.sieve(t, "alice")
	for i := 1; i <= 4; i++ {
		if err := sv.PutScript(fmt.Sprintf("s%d", i), "keep;\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	if err := sv.SetActive("s1"); err != nil {
		t.Fatal(err)
	}
	sv.Logout()
	v := store.Vacation{State: "on", Subject: "Away", InternalText: "first text", ExternalText: "out", Audience: "all", Days: 3}
	if err := e.st.SetVacation(ctx, alice, v); err != nil {
		t.Fatal(err)
	}
	first := e.waitState(t, "alice@example.com", func(s store.SieveState) bool { return s.ScriptHash != "" })
	v.InternalText = "second text"
	if err := e.st.SetVacation(ctx, alice, v); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "alice@example.com", func(s store.SieveState) bool {
		return s.ScriptHash != "" && s.ScriptHash != first.ScriptHash && s.LastError == ""
	})
	sv = e.sieve(t, "alice")
	got, err := sv.GetScript("cyrus-sidecar-vacation")
	if err != nil || !strings.Contains(got, "second text") {
		t.Errorf("our script after the change: %v\n%s", err, got)
	}
	scripts, _ := sv.ListScripts()
	if len(scripts) != 5 || activeScript(scripts) != "s1" {
		t.Errorf("scripts %+v: want the user's four (s1 active) and ours", scripts)
	}
	sv.Logout()
	if err := e.st.VacationOff(ctx, alice); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "alice@example.com", func(s store.SieveState) bool { return s.ScriptHash == "" && s.Mode == "" && s.LastError == "" })
	sv = e.sieve(t, "alice")
	scripts, _ = sv.ListScripts()
	if got, err := sv.GetScript("s1"); err != nil || got != "keep;\r\n" || len(scripts) != 4 || activeScript(scripts) != "s1" {
		t.Errorf("after off: s1 = %q (%v), scripts %+v; want s1 as written, active, and the four only", got, err, scripts)
	}
}

// TestVacationEnds: at the end date the script's own window stops the
// replies, and the reconciler removes everything without being told.
func TestVacationEnds(t *testing.T) {
	e := newE2E(t, nil, nil)
	ctx := context.Background()
	bob, _ := e.canon.Address("bob@example.com")
	end := time.Now().Add(3 * time.Second).UTC().Truncate(time.Second).Add(time.Second)
	if err := e.st.SetVacation(ctx, bob, store.Vacation{State: "scheduled", End: end, Subject: "Away",
		InternalText: "in", ExternalText: "out", Audience: "all", Days: 3}); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "bob@example.com", func(s store.SieveState) bool { return s.ScriptHash != "" })
	e.send(t, "early@outside.example", "bob@example.com", headers("early@outside.example", "bob@example.com", "hi"), "hi\r\n")
	e.waitReplies(t, "early@outside.example", 1)
	// Cyrus's clock is time(2), which lags the one Go reads by up to a
	// tick: a message a few µs past the end could still see the second
	// before it.
	time.Sleep(time.Until(end) + 100*time.Millisecond)
	e.send(t, "late@outside.example", "bob@example.com", headers("late@outside.example", "bob@example.com", "hi"), "hi\r\n")
	e.waitReplies(t, "late@outside.example", 0)
	e.waitState(t, "bob@example.com", func(s store.SieveState) bool { return s.ScriptHash == "" && s.Mode == "" })
	sv := e.sieve(t, "bob")
	if scripts, _ := sv.ListScripts(); len(scripts) != 0 {
		t.Errorf("after the end date: %+v, want nothing of ours left", scripts)
	}
}

// TestVacationPolicies: "wrap" activates our wrapper including the user's
// script and gives it back afterwards; "report" activates nothing and says
// so; and a pass with nothing changed uploads nothing.
func TestVacationPolicies(t *testing.T) {
	for _, policy := range []string{"wrap", "report"} {
		t.Run(policy, func(t *testing.T) {
			e := newE2E(t, nil, func(c *Config) { c.Policy = policy })
			ctx := context.Background()
			alice, _ := e.canon.Address("alice@example.com")
			sv := e.sieve(t, "alice")
			if err := sv.PutScript("mine", mine); err != nil {
				t.Fatal(err)
			}
			if err := sv.SetActive("mine"); err != nil {
				t.Fatal(err)
			}
			sv.Logout()
			if err := e.st.SetVacation(ctx, alice, store.Vacation{State: "on", Subject: "Away", InternalText: "in",
				ExternalText: "out text", Audience: "all", Days: 3}); err != nil {
				t.Fatal(err)
			}
			st := e.waitState(t, "alice@example.com", func(s store.SieveState) bool { return s.ScriptHash != "" })
			sv = e.sieve(t, "alice")
			scripts, _ := sv.ListScripts()
			if got, _ := sv.GetScript("mine"); got != mine {
				t.Errorf("the user's script was changed: %q", got)
			}
			sv.Logout()
			e.send(t, "x@outside.example", "alice@example.com", headers("x@outside.example", "alice@example.com", "hi"), "hi\r\n")
			if policy == "wrap" {
				if st.Mode != "wrapper" || st.PrevActive != "mine" || activeScript(scripts) != "cyrus-sidecar" {
					t.Errorf("wrap: state %+v, scripts %+v", st, scripts)
				}
				if r := e.waitReplies(t, "x@outside.example", 1); !strings.Contains(replyBody(r[0]), "out text") {
					t.Errorf("wrap: reply %q", r[0].Data)
				}
			} else {
				if st.Mode != "report" || !strings.Contains(st.LastError, "policy is \"report\"") || activeScript(scripts) != "mine" {
					t.Errorf("report: state %+v, scripts %+v", st, scripts)
				}
				e.waitReplies(t, "x@outside.example", 0)
			}
			// Idempotent: store changes that do not touch alice's
			// vacation make passes, and none uploads anything again.
			{
				for i := range 3 {
					a, _ := e.canon.Address(fmt.Sprintf("other%d-%s@example.com", i, policy))
					if _, err := e.st.AddUser(ctx, store.NewUser{Address: a}); err != nil {
						t.Fatal(err)
					}
					time.Sleep(150 * time.Millisecond) // > poll: a pass each
				}
				if again, _ := e.st.SieveState(ctx, "alice@example.com"); !again.InstalledAt.Equal(st.InstalledAt) {
					t.Errorf("reinstalled with nothing changed: %v then %v", st.InstalledAt, again.InstalledAt)
				}
			}
			if err := e.st.VacationOff(ctx, alice); err != nil {
				t.Fatal(err)
			}
			e.waitState(t, "alice@example.com", func(s store.SieveState) bool { return s.ScriptHash == "" && s.Mode == "" })
			sv = e.sieve(t, "alice")
			scripts, _ = sv.ListScripts()
			if got, _ := sv.GetScript("mine"); got != mine || len(scripts) != 1 || activeScript(scripts) != "mine" {
				t.Errorf("after off: mine %q, scripts %+v; want mine alone, active, unchanged", got, scripts)
			}
		})
	}
}
