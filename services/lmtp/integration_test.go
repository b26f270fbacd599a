//go:build integration

package lmtp

// Real peers against the proxy: Exim 4.96 (callouts with exim -bhc, a daemon
// delivering with BDAT) in front, Cyrus 3.6 lmtpd behind, mail read back
// over IMAP. The Exim configuration is cut out of docs/lmtp.md, so the
// documentation and the tests cannot drift apart.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/store"
)

// labUsers are the Cyrus users with mailboxes, and their IMAP passwords.
var labUsers = map[string]string{"alice": "alice-pw", "full": "full-pw", "carol@partner.org": "carol-pw"}

// labStore is a real store with the directory every test here uses:
//
//	example.com (Acme): alice, full, bob (disabled), ghost (no Cyrus mailbox);
//	  sales -> alice, full; team -> alice, friend@outside.org
//	partner.org (Acme): carol
//	notours.org is in Exim's local_domains but not in the store
func labStore(t testing.TB) (*store.Store, store.Canon) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "s.db"), store.Options{})
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
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err = st.AddOrg(ctx, "Acme")
	must(err)
	for _, d := range []string{"example.com", "partner.org"} {
		_, err = st.AddDomain(ctx, d, "Acme")
		must(err)
	}
	for _, u := range []string{"alice@example.com", "full@example.com", "bob@example.com", "ghost@example.com", "carol@partner.org"} {
		_, err := st.AddUser(ctx, store.NewUser{Address: a(u)})
		must(err)
	}
	must(st.SetDisabled(ctx, a("bob@example.com"), true))
	_, err = st.AddAlias(ctx, a("sales@example.com"), []store.Address{a("alice@example.com"), a("full@example.com")})
	must(err)
	_, err = st.AddAlias(ctx, a("team@example.com"), []store.Address{a("alice@example.com"), a("friend@outside.org")})
	must(err)
	return st, c
}

// labCyrus starts Cyrus with mailboxes for labUsers; full is over its
// quota (a 1 KiB quota and a message already in).
func labCyrus(t testing.TB) *lab.Cyrus {
	t.Helper()
	cy := lab.StartCyrus(t, lab.CyrusOptions{Users: labUsers})
	for u := range labUsers {
		cy.CreateMailbox(t, u)
	}
	cy.SetQuota(t, "full", 1)
	filler := "Subject: filler\r\n\r\n" + strings.Repeat("x", 4096) + "\r\n"
	if r := cy.Deliver(t, "", []string{"full@example.com"}, []byte(filler)); !strings.HasPrefix(r[0], "250") {
		t.Fatalf("filling full's mailbox: %v", r)
	}
	return cy
}

// proxy is a running proxy on a loopback port.
type proxy struct {
	*Service
	Addr string
	Port int
	stop func()
}

// labProxy runs the proxy toward cyrusLMTP ("unix:PATH") until the test
// ends (or stop).
func labProxy(t testing.TB, st Store, c store.Canon, cyrusLMTP string, mod func(*Config)) *proxy {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = []string{freeAddr(t)}
	cfg.Hostname = "sidecar.lab.localhost"
	cfg.CyrusConnectTimeout, cfg.CyrusWait = 2*time.Second, 2*time.Second
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	s := New(cfg, cyrusLMTP, st, c, log)
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func() time.Duration { return 3 * time.Second }) }()
	var once sync.Once
	p := &proxy{Service: s, Addr: s.lns[0].Addr().String()}
	p.Port = s.lns[0].Addr().(*net.TCPAddr).Port
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

// freeAddr returns a loopback address with a port free a moment ago (the
// configuration refuses port 0).
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// eximConf is the lab's Exim configuration around the snippets from
// docs/lmtp.md; acl replaces the documented verify line when not "".
func eximConf(t testing.TB, acl string) string {
	t.Helper()
	doc := "docs/lmtp.md"
	if acl == "" {
		acl = lab.DocSnippet(t, doc, "exim-acl")
	}
	return lab.DocSnippet(t, doc, "exim-main") + `
primary_hostname = exim.lab.localhost
qualify_domain = example.com
domainlist local_domains = example.com : partner.org : notours.org
acl_smtp_rcpt = acl_check_rcpt
tls_advertise_hosts =

begin acl

acl_check_rcpt:
  deny    message = relay not permitted
          !domains = +local_domains
` + acl + `
  accept

begin routers

` + lab.DocSnippet(t, doc, "exim-router") + `

begin transports

` + lab.DocSnippet(t, doc, "exim-transport") + "\n"
}

func newExim(t testing.TB, p *proxy, acl string) *lab.Exim {
	t.Helper()
	return lab.NewExim(t, lab.EximOptions{Conf: eximConf(t, acl),
		Macros: map[string]string{"SIDECAR_LMTP_PORT": strconv.Itoa(p.Port)}})
}

// callout runs one SMTP session through exim -bhc and returns the reply
// to its RCPT.
func callout(t testing.TB, e *lab.Exim, rcpt string) string {
	t.Helper()
	out := e.BHC(t, "EHLO client.example\r\nMAIL FROM:<someone@sender.example>\r\nRCPT TO:<"+rcpt+">\r\nQUIT\r\n")
	replies := lab.SMTPReplies(out)
	// greeting, EHLO, MAIL, RCPT, QUIT
	if len(replies) < 4 {
		t.Fatalf("exim -bhc for %s: %d replies\n%s", rcpt, len(replies), out)
	}
	return replies[3]
}

func TestEximCallouts(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	// Callouts are answered from the store: the proxy points at a Cyrus
	// socket that does not exist, and still answers.
	p := labProxy(t, st, c, "unix:"+filepath.Join(t.TempDir(), "no-such-socket"), nil)
	e := newExim(t, p, "")
	for _, tc := range []struct{ rcpt, want string }{
		{"alice@example.com", "250 "},
		{"ALICE@Example.COM", "250 "},
		{"alice+folder@example.com", "250 "},
		{"sales@example.com", "250 "},
		{"carol@partner.org", "250 "},
		{"nobody@example.com", "550 5.1.1"},
		{"x7q2rand0m@example.com", "550 5.1.1"},
		{"bob@example.com", "550 5.2.1"},
		{"someone@notours.org", "550 5.7.1"},
	} {
		got := callout(t, e, tc.rcpt)
		if strings.HasPrefix(tc.want, "250") {
			if !strings.HasPrefix(got, "250") {
				t.Errorf("callout %s: %q, want 250", tc.rcpt, got)
			}
			continue
		}
		// Exim: "550-Callout verification failed:\n550 550 5.1.1 <...> User unknown"
		if !strings.HasPrefix(got, "550") || !strings.Contains(got, tc.want) {
			t.Errorf("callout %s: %q, want 550 with %q", tc.rcpt, got, tc.want)
		}
	}
	_ = cy
}

func TestEximCalloutsCheckQuota(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	p := labProxy(t, st, c, "unix:"+cy.LMTPSocket, func(c *Config) { c.CheckQuota = true })
	withDeferOK := newExim(t, p, "")
	strictACL := strings.Replace(lab.DocSnippet(t, "docs/lmtp.md", "exim-acl"), ",defer_ok", "", 1)
	if strictACL == lab.DocSnippet(t, "docs/lmtp.md", "exim-acl") {
		t.Fatal("the documented ACL has no defer_ok to remove")
	}
	strict := newExim(t, p, strictACL)

	if got := callout(t, strict, "alice@example.com"); !strings.HasPrefix(got, "250") {
		t.Errorf("alice with check_quota: %q", got)
	}
	// Over quota: Cyrus's 452 4.2.2 reaches Exim, which defers; with
	// defer_ok it accepts.
	if got := callout(t, strict, "full@example.com"); !strings.HasPrefix(got, "451") {
		t.Errorf("over-quota callout without defer_ok: %q, want 451", got)
	}
	if got := callout(t, withDeferOK, "full@example.com"); !strings.HasPrefix(got, "250") {
		t.Errorf("over-quota callout with defer_ok: %q, want 250", got)
	}
	if got := callout(t, strict, "nobody@example.com"); !strings.HasPrefix(got, "550") {
		t.Errorf("unknown with check_quota: %q", got)
	}
	// Cyrus down: every recipient is deferred, accepted with defer_ok.
	cy.Stop(t)
	if got := callout(t, strict, "alice@example.com"); !strings.HasPrefix(got, "451") {
		t.Errorf("Cyrus down, without defer_ok: %q, want 451", got)
	}
	if got := callout(t, withDeferOK, "alice@example.com"); !strings.HasPrefix(got, "250") {
		t.Errorf("Cyrus down, with defer_ok: %q, want 250", got)
	}
}

// submit sends one message to Exim's daemon over SMTP.
func submit(t testing.TB, port int, from string, rcpts []string, msg string) {
	t.Helper()
	cl, err := smtp.Dial(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range rcpts {
		if err := cl.Rcpt(r, nil); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := cl.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Quit(); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until Exim's main log has every one of the lines.
func waitLog(t testing.TB, e *lab.Exim, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		log := e.MainLog()
		missing := ""
		for _, p := range parts {
			if !strings.Contains(log, p) {
				missing = p
				break
			}
		}
		if missing == "" {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("exim mainlog has no %q after 30s:\n%s", missing, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestEximDeliversThroughProxy(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	p := labProxy(t, st, c, "unix:"+cy.LMTPSocket, nil)
	e := newExim(t, p, "")
	e.StartDaemon(t)
	delivered, deliveredOK := metricDelta(recipients.WithLabelValues("delivered")), metricDelta(cyrusRequest("deliver", "ok"))

	// A body that needs dot-stuffing, a long line (over go-smtp's default
	// 2000, within Exim's 998? no: Exim wraps nothing, so keep it at 998),
	// 8-bit text, and a forged relation header that must not survive.
	body := "Line one\r\n.\r\n..two dots\r\n.x\r\n" + strings.Repeat("L", 990) + "\r\nGr\u00fc\u00dfe \U0001F600\r\nend\r\n"
	msg := "From: Sender <sender@outside.example>\r\nTo: alice@example.com\r\nSubject: through the proxy\r\n" +
		"X-Sidecar-Sender-Relation: internal\r\nMessage-ID: <proxy-1@outside.example>\r\n\r\n" + body
	submit(t, e.Port, "sender@outside.example", []string{"alice@example.com"}, msg)
	waitLog(t, e, "=> alice@example.com R=cyrus_sidecar T=cyrus_sidecar_lmtp")
	msgs := cy.Messages(t, "alice", labUsers["alice"])
	if len(msgs) != 1 {
		t.Fatalf("alice has %d messages, want 1", len(msgs))
	}
	got := string(msgs[0])
	head, gotBody, ok := strings.Cut(got, "\r\n\r\n")
	if !ok || gotBody != body {
		t.Errorf("body changed on the way:\ngot  %q\nwant %q", gotBody, body)
	}
	// Ours, once, above Exim's Received (Cyrus adds its own trace above).
	if n := strings.Count(head, "X-Sidecar-Sender-Relation:"); n != 1 ||
		!strings.Contains(head, "\r\nX-Sidecar-Sender-Relation: external\r\nReceived: from [127.0.0.1] (helo=client.example)") {
		t.Errorf("relation header: want exactly one, ours, saying external, above Exim's Received; headers:\n%s", head)
	}
	// The metrics saw it: one recipient delivered, one Cyrus round trip.
	if n := delivered(); n != 1 {
		t.Errorf("recipients_total{result=\"delivered\"} went up by %v, want 1", n)
	}
	if n := deliveredOK(); n != 1 {
		t.Errorf("cyrus_requests_total{service=\"lmtp\",op=\"deliver\",result=\"ok\"} went up by %v, want 1", n)
	}
	// Exim's delivery line carries "K" when the message went with BDAT.
	if !strings.Contains(e.MainLog(), "[127.0.0.1] K C=\"250 2.1.5 <alice@example.com>") {
		t.Errorf("exim did not deliver with BDAT (no K flag):\n%s", e.MainLog())
	}
}

func TestEximMixedVerdicts(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	p := labProxy(t, st, c, "unix:"+cy.LMTPSocket, nil)
	e := newExim(t, p, "")
	e.StartDaemon(t)

	// alice: Cyrus 250. full: over quota, Cyrus 452 (Exim defers).
	// ghost: the store knows it, Cyrus has no mailbox: 550 (Exim bounces).
	msg := "From: sender@outside.example\r\nSubject: mixed\r\nMessage-ID: <mixed-1@outside.example>\r\n\r\nhello\r\n"
	submit(t, e.Port, "sender@outside.example", []string{"alice@example.com", "full@example.com", "ghost@example.com"}, msg)
	log := waitLog(t, e, "=> alice@example.com", "full@example.com", "ghost@example.com")
	for _, want := range []string{
		`=> alice@example.com R=cyrus_sidecar T=cyrus_sidecar_lmtp`,
		`452 4.2.2`,
		`** ghost@example.com`,
		`550`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("exim mainlog lacks %q:\n%s", want, log)
		}
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "full@example.com") && strings.Contains(line, "=> ") {
			t.Errorf("over-quota recipient delivered: %s", line)
		}
	}
	if n := len(cy.Messages(t, "alice", labUsers["alice"])); n != 1 {
		t.Errorf("alice has %d messages, want 1", n)
	}
	fmt.Fprint(io.Discard, log)
}
