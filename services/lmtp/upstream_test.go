package lmtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"
)

// fakeDeadline bounds every fake session, so that no test can hang.
const fakeDeadline = 10 * time.Second

// cyrusCaps is Cyrus 3.6's LHLO reply on its UNIX socket.
var cyrusCaps = []string{"250-fake.test", "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-PIPELINING",
	"250-SIZE", "250-AUTH EXTERNAL", "250-IGNOREQUOTA", "250 Ok SESSIONID=<fake-1>"}

// cyrusUnknown is Cyrus's reply to RCPT for a mailbox that does not exist.
const cyrusUnknown = "550-Mailbox unknown.  Either there is no mailbox associated with this\r\n" +
	"550-name or you do not have authorization to see it.\r\n550 5.1.1 User unknown"

// fakeLMTP is an in-process lmtpd stand-in on a UNIX socket: connection i
// runs scripts[i] (the last script for any further ones) and records
// every byte it receives.
type fakeLMTP struct {
	t        *testing.T
	sock     string
	ln       net.Listener
	scripts  []func(*fakeSession)
	wg       sync.WaitGroup
	mu       sync.Mutex
	sessions []*fakeSession
}

// fakeSession is one connection to the fake.
type fakeSession struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	done chan struct{} // closed when the script has returned

	mu     sync.Mutex
	got    bytes.Buffer // every byte received
	bodies []string     // each message received, stuffed, without the final "."
	eof    bool         // the client closed the connection
}

func newFake(t *testing.T, scripts ...func(*fakeSession)) *fakeLMTP {
	t.Helper()
	f := &fakeLMTP{t: t, sock: filepath.Join(t.TempDir(), "lmtp"), scripts: scripts}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	f.wg.Go(f.accept)
	t.Cleanup(f.close)
	return f
}

func (f *fakeLMTP) accept() {
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		_ = conn.SetDeadline(time.Now().Add(fakeDeadline)) // fresh conn
		s := &fakeSession{t: f.t, conn: conn, done: make(chan struct{})}
		s.r = bufio.NewReader(recordingReader{s})
		f.mu.Lock()
		script := f.scripts[min(len(f.sessions), len(f.scripts)-1)]
		f.sessions = append(f.sessions, s)
		f.mu.Unlock()
		f.wg.Go(func() {
			defer close(s.done)
			defer conn.Close()
			script(s)
		})
	}
}

// close stops the fake: the listener, then every connection, and waits.
func (f *fakeLMTP) close() {
	f.ln.Close()
	f.mu.Lock()
	for _, s := range f.sessions {
		s.conn.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// session returns connection i, waiting up to fakeDeadline for it.
func (f *fakeLMTP) session(i int) *fakeSession {
	f.t.Helper()
	for deadline := time.Now().Add(fakeDeadline); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		f.mu.Lock()
		n := len(f.sessions)
		f.mu.Unlock()
		if n > i {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.sessions[i]
		}
	}
	f.t.Fatalf("fake lmtpd: no connection %d", i)
	return nil
}

func (f *fakeLMTP) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

type recordingReader struct{ s *fakeSession }

func (r recordingReader) Read(p []byte) (int, error) {
	n, err := r.s.conn.Read(p)
	r.s.mu.Lock()
	r.s.got.Write(p[:n])
	if errors.Is(err, io.EOF) {
		r.s.eof = true
	}
	r.s.mu.Unlock()
	return n, err
}

// wait waits for the script to end.
func (s *fakeSession) wait() {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(fakeDeadline):
		s.t.Fatal("fake lmtpd session did not end")
	}
}

// received is everything the session has read so far.
func (s *fakeSession) received() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got.String()
}

func (s *fakeSession) closedByClient() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof
}

// send writes replies (each may hold CRLF-joined lines) in one write.
func (s *fakeSession) send(replies ...string) {
	_, _ = io.WriteString(s.conn, strings.Join(replies, "\r\n")+"\r\n") // a failure shows in the client's result
}

// line reads one command line without CRLF; false at EOF or error.
func (s *fakeSession) line() (string, bool) {
	l, err := s.r.ReadString('\n')
	if err != nil {
		return "", false
	}
	return strings.TrimSuffix(l, "\r\n"), true
}

// expect reads a line and reports one that does not start with prefix.
func (s *fakeSession) expect(prefix string) string {
	l, ok := s.line()
	if !ok || !strings.HasPrefix(l, prefix) {
		s.t.Errorf("fake lmtpd: got %q (ok %v), want %q...", l, ok, prefix)
	}
	return l
}

// hello greets and answers LHLO with caps (cyrusCaps when none).
func (s *fakeSession) hello(caps ...string) {
	s.helloWith("220 fake.test LMTP ready", caps...)
}

func (s *fakeSession) helloWith(greeting string, caps ...string) {
	if caps == nil {
		caps = cyrusCaps
	}
	s.send(greeting)
	s.expect("LHLO proxy.test")
	s.send(strings.Join(caps, "\r\n"))
}

// body reads a message up to its "." line; false if the connection ended
// first.
func (s *fakeSession) body() (string, bool) {
	var b strings.Builder
	for {
		l, err := s.r.ReadString('\n')
		if err != nil {
			return b.String(), false
		}
		if l == ".\r\n" {
			s.mu.Lock()
			s.bodies = append(s.bodies, b.String())
			s.mu.Unlock()
			return b.String(), true
		}
		b.WriteString(l)
	}
}

// drain reads until the client closes the connection.
func (s *fakeSession) drain() {
	_, _ = io.Copy(io.Discard, s.r) // ends at EOF or the session deadline
}

// fakeOpts make lmtpd's behaviour; zero fields act as Cyrus does for a
// known mailbox.
type fakeOpts struct {
	greeting   string // "" = a one-line 220
	caps       []string
	mail       string                          // MAIL reply
	rcpt       func(addr string) string        // RCPT reply
	final      func(k int, addr string) string // reply for the k-th accepted RCPT after the body
	closeAfter int                             // close after this many messages (0: never)
}

// lmtpd is a fake speaking LMTP the way Cyrus's lmtpengine.c does.
func lmtpd(o fakeOpts) func(*fakeSession) {
	return func(s *fakeSession) {
		s.helloWith(cmp(o.greeting, "220 fake.test LMTP ready"), o.caps...)
		lmtpdLoop(o)(s)
	}
}

// lmtpdLoop is lmtpd after LHLO.
func lmtpdLoop(o fakeOpts) func(*fakeSession) {
	return func(s *fakeSession) {
		var accepted []string
		mailOK, messages := false, 0
		for {
			l, ok := s.line()
			if !ok {
				return
			}
			verb, _, _ := strings.Cut(strings.ToUpper(l), " ")
			switch verb {
			case "MAIL":
				r := cmp(o.mail, "250 2.1.0 ok")
				mailOK = strings.HasPrefix(r, "2")
				s.send(r)
			case "RCPT":
				if !mailOK {
					s.send("503 5.5.1 Need MAIL command")
					continue
				}
				addr := between(l, "<", ">")
				r := "250 2.1.5 ok"
				if o.rcpt != nil {
					r = o.rcpt(addr)
				}
				if strings.HasPrefix(r, "2") {
					accepted = append(accepted, addr)
				}
				s.send(r)
			case "DATA":
				if len(accepted) == 0 {
					s.send("503 5.5.1 No recipients")
					continue
				}
				s.send("354 go ahead")
				if _, ok := s.body(); !ok {
					return
				}
				var finals []string
				for k, a := range accepted {
					r := "250 2.1.5 Success SESSIONID=<fake-2>"
					if o.final != nil {
						r = o.final(k, a)
					}
					finals = append(finals, r)
				}
				s.send(finals...)
				accepted, mailOK = nil, false
				if messages++; messages == o.closeAfter {
					return
				}
			case "RSET":
				accepted, mailOK = nil, false
				s.send("250 2.0.0 Ok SESSIONID=<fake-3>")
			case "QUIT":
				s.send("221 2.0.0 bye")
				return
			default:
				s.send("500 5.5.2 Syntax error")
			}
		}
	}
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func between(s, open, close string) string {
	_, rest, _ := strings.Cut(s, open)
	v, _, _ := strings.Cut(rest, close)
	return v
}

// wire records the client's side: dials and each write, in order.
type wire struct {
	mu     sync.Mutex
	dials  int
	writes []string
}

type wireConn struct {
	net.Conn
	w *wire
}

func (c wireConn) Write(p []byte) (int, error) {
	c.w.mu.Lock()
	c.w.writes = append(c.w.writes, string(p))
	c.w.mu.Unlock()
	return c.Conn.Write(p)
}

func (w *wire) dialCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dials
}

// writeWith returns the client's write that contains s.
func (w *wire) writeWith(s string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.writes {
		if strings.Contains(p, s) {
			return p
		}
	}
	return ""
}

func testConfig(sock string) upstreamConfig {
	return upstreamConfig{Network: "unix", Addr: sock, Hostname: "proxy.test",
		ConnectTimeout: 5 * time.Second, CommandTimeout: 5 * time.Second, FinalTimeout: 5 * time.Second,
		MaxConns: 4, WaitTimeout: 5 * time.Second, IdleTimeout: time.Minute}
}

// newTestUpstream is an upstream to f whose connections are recorded.
func newTestUpstream(t *testing.T, f *fakeLMTP, mod func(*upstreamConfig)) (*upstream, *wire) {
	t.Helper()
	cfg := testConfig(f.sock)
	if mod != nil {
		mod(&cfg)
	}
	return recordedUpstream(t, cfg)
}

// recordedUpstream is an upstream whose dials and writes are recorded,
// closed at cleanup.
func recordedUpstream(t testing.TB, cfg upstreamConfig) (*upstream, *wire) {
	u := newUpstream(cfg)
	w := &wire{}
	var d net.Dialer
	u.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		w.mu.Lock()
		w.dials++
		w.mu.Unlock()
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return wireConn{c, w}, nil
	}
	t.Cleanup(func() { u.Close() })
	return u, w
}

func replyStrings(rs []Reply) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}

func checkReplies(t *testing.T, got []Reply, want ...string) {
	t.Helper()
	if g := replyStrings(got); !slices.Equal(g, want) {
		t.Errorf("replies:\n got %q\nwant %q", g, want)
	}
}

const testMsg = "Subject: test\r\n\r\n.\r\n..\r\n.x\r\nend\r\n"

func env(rcpts ...string) Envelope {
	return Envelope{From: "sender@example.org", MailParams: []string{"BODY=8BITMIME"}, Rcpts: rcpts}
}

// TestUpstreamPipelined: MAIL, every RCPT and DATA leave in one write, and
// the client does not wait for a reply in between: this fake answers
// nothing until DATA has arrived.
func TestUpstreamPipelined(t *testing.T) {
	f := newFake(t, func(s *fakeSession) {
		s.hello()
		for _, want := range []string{"MAIL FROM:<sender@example.org> BODY=8BITMIME",
			"RCPT TO:<a@example.com> IGNOREQUOTA", "RCPT TO:<b@example.com> IGNOREQUOTA", "DATA"} {
			if l := s.expect(want); l != want {
				s.t.Errorf("fake lmtpd: got %q, want %q", l, want)
			}
		}
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "250 2.1.5 ok", "354 go ahead")
		s.body()
		s.send("250 2.1.5 Success SESSIONID=<a>", "250 2.1.5 Success SESSIONID=<b>")
		s.drain()
	})
	u, w := newTestUpstream(t, f, nil)
	e := env("a@example.com", "b@example.com")
	e.RcptParams = []string{"IGNOREQUOTA"}
	replies, err := u.deliver(t.Context(), e, strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	checkReplies(t, replies, "250 2.1.5 Success SESSIONID=<a>", "250 2.1.5 Success SESSIONID=<b>")
	envelope := "MAIL FROM:<sender@example.org> BODY=8BITMIME\r\nRCPT TO:<a@example.com> IGNOREQUOTA\r\n" +
		"RCPT TO:<b@example.com> IGNOREQUOTA\r\nDATA\r\n"
	if got := w.writeWith("MAIL FROM"); got != envelope {
		t.Errorf("the write with MAIL = %q, want the whole envelope %q", got, envelope)
	}
	u.Close()
	s := f.session(0)
	s.wait()
	if want := "Subject: test\r\n\r\n..\r\n...\r\n..x\r\nend\r\n"; len(s.bodies) != 1 || s.bodies[0] != want {
		t.Errorf("fake received bodies %q, want [%q]", s.bodies, want)
	}
}

// TestUpstreamLockStep: without PIPELINING each command waits for its
// reply (nothing more is buffered when the fake reads one), and DATA is not
// sent when no RCPT was accepted.
func TestUpstreamLockStep(t *testing.T) {
	noPipelining := []string{"250-fake.test", "250-8BITMIME", "250 ENHANCEDSTATUSCODES"}
	script := func(s *fakeSession) {
		s.hello(noPipelining...)
		for {
			l, ok := s.line()
			if !ok {
				return
			}
			if s.r.Buffered() != 0 {
				s.t.Errorf("fake lmtpd: more sent after %q before its reply", l)
			}
			switch {
			case strings.HasPrefix(l, "RCPT TO:<nobody"):
				s.send(cyrusUnknown)
			case strings.HasPrefix(l, "DATA"):
				s.send("354 go ahead")
				s.body()
				s.send("250 2.1.5 Success")
			case strings.HasPrefix(l, "QUIT"):
				return
			default:
				s.send("250 2.0.0 ok")
			}
		}
	}
	f := newFake(t, script)
	u, w := newTestUpstream(t, f, nil)
	replies, err := u.deliver(t.Context(), env("a@example.com", "nobody@example.com"), strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	checkReplies(t, replies, "250 2.1.5 Success",
		"550 5.1.1 Mailbox unknown.  Either there is no mailbox associated with this name or you do not have authorization to see it. User unknown")
	replies, err = u.deliver(t.Context(), env("nobody@example.com"), strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	if replies[0].Code != 550 {
		t.Errorf("reply = %v, want 550", replies[0])
	}
	r, err := u.check(t.Context(), "a@example.com", 10)
	if err != nil || r.Code != 250 {
		t.Errorf("check = %v, %v; want 250", r, err)
	}
	u.Close()
	f.session(0).wait()
	got := f.session(0).received()
	if n := strings.Count(got, "DATA\r\n"); n != 1 {
		t.Errorf("DATA sent %d times, want once (not without an accepted RCPT):\n%s", n, got)
	}
	if w.dialCount() != 1 {
		t.Errorf("%d connections, want 1", w.dialCount())
	}
}

// TestUpstreamVerdicts: per-recipient replies, multi-line ones included,
// come back in RCPT order with their enhanced codes, whether Cyrus gave
// them at RCPT or after the body; a duplicate RCPT gets its own reply.
func TestUpstreamVerdicts(t *testing.T) {
	finals := map[string]string{
		"over@example.com":    "452 4.2.2 Over quota SESSIONID=<q>",
		"perm@example.com":    "552 5.2.2 Over quota SESSIONID=<p>",
		"invalid@example.com": "554 5.6.0 Message contains invalid header",
	}
	f := newFake(t, lmtpd(fakeOpts{
		greeting: "220-fake.test\r\n220-second line\r\n220 ready",
		rcpt: func(a string) string {
			if a == "nobody@example.com" {
				return cyrusUnknown
			}
			return "250 2.1.5 ok"
		},
		final: func(k int, a string) string {
			return cmp(finals[a], fmt.Sprintf("250 2.1.5 Success %d", k))
		},
	}))
	u, _ := newTestUpstream(t, f, nil)
	replies, err := u.deliver(t.Context(), env("a@example.com", "over@example.com", "nobody@example.com",
		"perm@example.com", "invalid@example.com", "a@example.com"), strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	checkReplies(t, replies,
		"250 2.1.5 Success 0",
		"452 4.2.2 Over quota SESSIONID=<q>",
		"550 5.1.1 Mailbox unknown.  Either there is no mailbox associated with this name or you do not have authorization to see it. User unknown",
		"552 5.2.2 Over quota SESSIONID=<p>",
		"554 5.6.0 Message contains invalid header",
		"250 2.1.5 Success 4")
	want := Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Lines: []string{
		"Mailbox unknown.  Either there is no mailbox associated with this",
		"name or you do not have authorization to see it.", "User unknown"}}
	if !reflect.DeepEqual(replies[2], want) {
		t.Errorf("unknown mailbox reply = %#v, want %#v", replies[2], want)
	}
	u.Close()
	f.session(0).wait()
	if n := strings.Count(f.session(0).received(), "RCPT TO:<a@example.com>"); n != 2 {
		t.Errorf("duplicate RCPT sent %d times, want 2", n)
	}
}

// TestUpstreamMailRefused: every recipient gets the MAIL reply, nothing of
// the body is sent, and the connection is RSET and reused.
func TestUpstreamMailRefused(t *testing.T) {
	f := newFake(t, lmtpd(fakeOpts{mail: "451 4.3.0 System I/O error"}))
	u, w := newTestUpstream(t, f, nil)
	for range 2 {
		replies, err := u.deliver(t.Context(), env("a@example.com", "b@example.com"), strings.NewReader(testMsg))
		if err != nil {
			t.Fatal(err)
		}
		checkReplies(t, replies, "451 4.3.0 System I/O error", "451 4.3.0 System I/O error")
	}
	u.Close()
	s := f.session(0)
	s.wait()
	if got := s.received(); strings.Contains(got, "Subject") || strings.Count(got, "RSET\r\n") != 2 {
		t.Errorf("fake received %q; want two RSETs and no body", got)
	}
	if w.dialCount() != 1 {
		t.Errorf("%d connections, want 1", w.dialCount())
	}
}

// TestUpstreamMailRefusedDataAccepted: Cyrus refuses MAIL for its SIZE=
// but keeps the sender, so the pipelined RCPT and DATA are accepted; the
// client must not send a body: it closes the connection.
func TestUpstreamMailRefusedDataAccepted(t *testing.T) {
	f := newFake(t, func(s *fakeSession) {
		s.hello()
		s.expect("MAIL")
		s.expect("RCPT")
		s.expect("DATA")
		s.send("552 5.2.3 Message SIZE exceeds fixed maximum message size (3000)", "250 2.1.5 ok", "354 go ahead")
		s.drain()
	}, lmtpd(fakeOpts{}))
	u, w := newTestUpstream(t, f, nil)
	e := env("a@example.com")
	e.MailParams = []string{"SIZE=5000"}
	replies, err := u.deliver(t.Context(), e, strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	checkReplies(t, replies, "552 5.2.3 Message SIZE exceeds fixed maximum message size (3000)")
	s := f.session(0)
	s.wait()
	if got := s.received(); !strings.HasSuffix(got, "DATA\r\n") || !s.closedByClient() {
		t.Errorf("fake received %q (closed by client: %v); want nothing after DATA, then the close", got, s.closedByClient())
	}
	if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
		t.Fatal(err)
	}
	if w.dialCount() != 2 {
		t.Errorf("%d connections, want 2 (the first closed)", w.dialCount())
	}
}

// TestUpstreamNoRcptAccepted: DATA fails, no body is sent, the connection
// is RSET and reused.
func TestUpstreamNoRcptAccepted(t *testing.T) {
	f := newFake(t, lmtpd(fakeOpts{rcpt: func(a string) string {
		if a == "full@example.com" {
			return "452 4.2.2 Over quota SESSIONID=<q>"
		}
		return cyrusUnknown
	}}))
	u, w := newTestUpstream(t, f, nil)
	replies, err := u.deliver(t.Context(), env("nobody@example.com", "full@example.com"), strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	if replies[0].Code != 550 || replies[1].String() != "452 4.2.2 Over quota SESSIONID=<q>" {
		t.Errorf("replies %q", replyStrings(replies))
	}
	if r, err := u.check(t.Context(), "full@example.com", 0); err != nil || r.Code != 452 {
		t.Errorf("check on the same connection = %v, %v", r, err)
	}
	u.Close()
	s := f.session(0)
	s.wait()
	if got := s.received(); strings.Contains(got, "Subject") || !strings.Contains(got, "DATA\r\nRSET\r\n") {
		t.Errorf("fake received %q; want RSET after the refused DATA and no body", got)
	}
	if w.dialCount() != 1 {
		t.Errorf("%d connections, want 1", w.dialCount())
	}
}

// TestUpstreamDropAfterTwoFinals: the two verdicts that came are kept, the
// third recipient has none, and there is an error.
func TestUpstreamDropAfterTwoFinals(t *testing.T) {
	f := newFake(t, func(s *fakeSession) {
		s.hello()
		for range 5 {
			s.line()
		}
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "250 2.1.5 ok", "250 2.1.5 ok", "354 go ahead")
		s.body()
		s.send("250 2.1.5 Success", "452 4.2.2 Over quota")
	})
	u, _ := newTestUpstream(t, f, nil)
	replies, err := u.deliver(t.Context(), env("a@example.com", "b@example.com", "c@example.com"), strings.NewReader(testMsg))
	if err == nil || !strings.Contains(err.Error(), "reply 3 of 3 (RCPT TO:<c@example.com>)") {
		t.Errorf("error = %v, want one naming the third reply", err)
	}
	checkReplies(t, replies, "250 2.1.5 Success", "452 4.2.2 Over quota", "no reply")
}

// TestUpstreamDropMidBody: lmtpd goes away while the body is sent, on a
// reused connection: no verdict for anyone, no retry (354 was seen).
func TestUpstreamDropMidBody(t *testing.T) {
	f := newFake(t, func(s *fakeSession) {
		lmtpd(fakeOpts{closeAfter: 1})(s)
		s.expect("MAIL")
		s.expect("RCPT")
		s.expect("RCPT")
		s.expect("DATA")
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "250 2.1.5 ok", "354 go ahead")
		io.CopyN(io.Discard, s.r, 100)
	}, lmtpd(fakeOpts{}))
	u, w := newTestUpstream(t, f, nil)
	if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
		t.Fatal(err)
	}
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 4096)
	replies, err := u.deliver(t.Context(), env("a@example.com", "b@example.com"), strings.NewReader(big))
	if err == nil {
		t.Error("no error after the connection dropped mid-body")
	}
	checkReplies(t, replies, "no reply", "no reply")
	if w.dialCount() != 1 || f.count() != 1 {
		t.Errorf("%d dials, %d connections; want 1: no retry after 354", w.dialCount(), f.count())
	}
}

// TestUpstreamOversize: Cyrus answers a body over its maxmessagesize with
// one 552 5.2.3 however many recipients there are, and keeps the
// transaction: every recipient gets it, without waiting for more, and the
// connection is not reused.
func TestUpstreamOversize(t *testing.T) {
	const tooBig = "552 5.2.3 Message size (4697) exceeds fixed maximum message size (3000)"
	f := newFake(t, func(s *fakeSession) {
		s.hello()
		for range 4 {
			s.line()
		}
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "250 2.1.5 ok", "354 go ahead")
		s.body()
		s.send(tooBig)
		s.drain()
	}, lmtpd(fakeOpts{}))
	u, w := newTestUpstream(t, f, func(c *upstreamConfig) { c.FinalTimeout = time.Minute })
	start := time.Now()
	replies, err := u.deliver(t.Context(), env("a@example.com", "b@example.com"), strings.NewReader(testMsg))
	if err != nil || time.Since(start) > 5*time.Second {
		t.Errorf("error %v after %v", err, time.Since(start))
	}
	checkReplies(t, replies, tooBig, tooBig)
	f.session(0).wait()
	if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil || w.dialCount() != 2 {
		t.Errorf("next delivery: %v after %d dials; want a new connection", err, w.dialCount())
	}
}

// TestUpstreamFinalTimeout: lmtpd stalls after the dot: FinalTimeout ends
// the wait, nobody has a verdict, the connection is closed.
func TestUpstreamFinalTimeout(t *testing.T) {
	f := newFake(t, func(s *fakeSession) {
		s.hello()
		for range 3 {
			s.line()
		}
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead")
		s.body()
		s.drain()
	})
	u, _ := newTestUpstream(t, f, func(c *upstreamConfig) { c.FinalTimeout = 200 * time.Millisecond })
	start := time.Now()
	replies, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("error = %v, want a timeout", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 3*time.Second {
		t.Errorf("took %v, want about FinalTimeout", d)
	}
	checkReplies(t, replies, "no reply")
	s := f.session(0)
	s.wait()
	if !s.closedByClient() {
		t.Error("connection not closed after the timeout")
	}
}

// TestUpstreamBodyRefused: a failing body reader, a bare CR or an over-long
// line: the connection is closed and lmtpd never sees the end of data.
func TestUpstreamBodyRefused(t *testing.T) {
	boom := errors.New("spool file unreadable")
	tests := []struct {
		name    string
		body    io.Reader
		wantErr error
	}{
		{"reader error", io.MultiReader(strings.NewReader("Subject: x\r\n\r\nhello\r\n"), iotest.ErrReader(boom)), boom},
		{"bare CR", strings.NewReader("Subject: x\r\n\r\nhi\r\n\r.\r\nRSET\r\n"), errBareLineEnding},
		{"bare LF", strings.NewReader("Subject: x\r\n\r\nhi\n.\nRSET\r\n"), errBareLineEnding},
		{"long line", strings.NewReader("Subject: x\r\n\r\n" + strings.Repeat("A", 8189) + ".\r\nRSET\r\n"), errBodyLineTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(s *fakeSession) {
				s.hello()
				for range 3 {
					s.line()
				}
				s.send("250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead")
				if _, ok := s.body(); ok {
					s.t.Error("fake lmtpd received the end of data")
				}
			})
			u, _ := newTestUpstream(t, f, nil)
			replies, err := u.deliver(t.Context(), env("a@example.com"), tt.body)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			checkReplies(t, replies, "no reply")
			s := f.session(0)
			s.wait()
			if !s.closedByClient() || strings.Contains(s.received(), "\r\n.\r\n") {
				t.Errorf("fake received %q, closed by client %v", s.received(), s.closedByClient())
			}
		})
	}
}

// TestUpstreamReuse: two transactions on one connection, no RSET between.
func TestUpstreamReuse(t *testing.T) {
	f := newFake(t, lmtpd(fakeOpts{}))
	u, w := newTestUpstream(t, f, nil)
	for i := range 2 {
		replies, err := u.deliver(t.Context(), env(fmt.Sprintf("u%d@example.com", i)), strings.NewReader(testMsg))
		if err != nil || replies[0].Code != 250 {
			t.Fatalf("delivery %d: %q, %v", i, replyStrings(replies), err)
		}
	}
	u.Close()
	s := f.session(0)
	s.wait()
	got := s.received()
	if w.dialCount() != 1 || len(s.bodies) != 2 || strings.Contains(got, "RSET") || !strings.HasSuffix(got, "QUIT\r\n") {
		t.Errorf("%d dials, %d bodies; fake received %q", w.dialCount(), len(s.bodies), got)
	}
}

// TestUpstreamStale: a pooled connection lmtpd has closed is replaced once,
// as long as no byte of a reply came on it.
func TestUpstreamStale(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		f := newFake(t, lmtpd(fakeOpts{closeAfter: 1}), lmtpd(fakeOpts{}))
		u, w := newTestUpstream(t, f, nil)
		if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
			t.Fatal(err)
		}
		f.session(0).wait() // lmtpd has exited
		replies, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg))
		if err != nil || replies[0].Code != 250 {
			t.Fatalf("after lmtpd closed the pooled connection: %q, %v", replyStrings(replies), err)
		}
		if w.dialCount() != 2 {
			t.Errorf("%d dials, want 2", w.dialCount())
		}
	})
	t.Run("half a reply", func(t *testing.T) {
		f := newFake(t, func(s *fakeSession) {
			lmtpd(fakeOpts{closeAfter: 1})(s)
			s.line()
			s.conn.Write([]byte("25"))
		}, lmtpd(fakeOpts{}))
		u, w := newTestUpstream(t, f, nil)
		if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
			t.Fatal(err)
		}
		replies, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg))
		if !errors.Is(err, io.ErrUnexpectedEOF) || replies[0].Code != 0 || w.dialCount() != 1 {
			t.Errorf("= %q, %v after %d dials; want no reply, unexpected EOF, no retry", replyStrings(replies), err, w.dialCount())
		}
	})
}

// TestUpstreamIdleTimeout: a connection idle longer than IdleTimeout is
// closed (with QUIT), not reused.
func TestUpstreamIdleTimeout(t *testing.T) {
	f := newFake(t, lmtpd(fakeOpts{}))
	u, w := newTestUpstream(t, f, func(c *upstreamConfig) { c.IdleTimeout = time.Minute })
	now := time.Now()
	u.now = func() time.Time { return now }
	for _, wait := range []time.Duration{0, 30 * time.Second, 61 * time.Second} {
		now = now.Add(wait)
		if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
			t.Fatal(err)
		}
	}
	if w.dialCount() != 2 {
		t.Errorf("%d dials, want 2 (reused after 30s, not after 61s)", w.dialCount())
	}
	s := f.session(0)
	s.wait()
	if !strings.HasSuffix(s.received(), "QUIT\r\n") {
		t.Errorf("expired connection got %q, want QUIT last", s.received())
	}
}

// TestUpstreamBusy: with MaxConns busy a caller waits WaitTimeout, then
// gets errBusy; or its ctx ends the wait. A freed slot is taken.
func TestUpstreamBusy(t *testing.T) {
	inBody, release := make(chan struct{}), make(chan struct{})
	f := newFake(t, func(s *fakeSession) {
		s.hello()
		for range 3 {
			s.line()
		}
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead")
		s.body()
		close(inBody)
		<-release
		s.send("250 2.1.5 Success")
		lmtpdLoop(fakeOpts{})(s)
	}, lmtpd(fakeOpts{})) // a second connection would be a failure, counted below
	u, w := newTestUpstream(t, f, func(c *upstreamConfig) {
		c.MaxConns, c.WaitTimeout = 1, 200*time.Millisecond
	})
	first := make(chan error, 1)
	go func() {
		_, err := u.deliver(context.Background(), env("a@example.com"), strings.NewReader(testMsg))
		first <- err
	}()
	<-inBody
	start := time.Now()
	if _, err := u.deliver(t.Context(), env("b@example.com"), strings.NewReader(testMsg)); !errors.Is(err, errBusy) {
		t.Errorf("error = %v, want errBusy", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 3*time.Second {
		t.Errorf("errBusy after %v, want after WaitTimeout", d)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := u.check(ctx, "b@example.com", 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("check error = %v, want the ctx deadline", err)
	}
	// A waiter gets the slot when the first delivery ends.
	u.setConfig(func() upstreamConfig { c := testConfig(f.sock); c.MaxConns = 1; return c }())
	go func() {
		time.Sleep(50 * time.Millisecond)
		close(release)
	}()
	if r, err := u.check(t.Context(), "b@example.com", 0); err != nil || r.Code != 250 {
		t.Errorf("check after the slot freed = %v, %v", r, err)
	}
	if err := <-first; err != nil {
		t.Errorf("first delivery: %v", err)
	}
	if w.dialCount() != 1 {
		t.Errorf("%d dials, want 1", w.dialCount())
	}
}

// TestUpstreamCancel: cancelling ctx while waiting for the verdicts, or
// while the body is being read, closes the connection at once and never
// sends the end of data.
func TestUpstreamCancel(t *testing.T) {
	script := func(s *fakeSession) {
		s.hello()
		for range 3 {
			s.line()
		}
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead")
		if _, ok := s.body(); ok {
			s.drain() // stall: no verdicts
		}
	}
	t.Run("verdicts", func(t *testing.T) {
		f := newFake(t, script)
		u, _ := newTestUpstream(t, f, nil) // FinalTimeout 5s
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		replies, err := u.deliver(ctx, env("a@example.com"), strings.NewReader(testMsg))
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Errorf("error = %v after %v, want the ctx deadline at once", err, time.Since(start))
		}
		checkReplies(t, replies, "no reply")
		s := f.session(0)
		s.wait()
		if !s.closedByClient() {
			t.Error("connection not closed")
		}
	})
	t.Run("body", func(t *testing.T) {
		f := newFake(t, script)
		u, _ := newTestUpstream(t, f, nil)
		ctx, cancel := context.WithCancel(t.Context())
		body := io.MultiReader(strings.NewReader("Subject: x\r\n\r\n"),
			readerFunc(func(p []byte) (int, error) {
				cancel()
				<-ctx.Done()
				return copy(p, "rest of the body\r\n"), io.EOF
			}))
		replies, err := u.deliver(ctx, env("a@example.com"), body)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want context.Canceled", err)
		}
		checkReplies(t, replies, "no reply")
		s := f.session(0)
		s.wait()
		if got := s.received(); strings.Contains(got, "\r\n.\r\n") {
			t.Errorf("fake received the end of data: %q", got)
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestUpstreamCheck: MAIL FROM:<> [SIZE=], RCPT, RSET in one write; the
// RCPT reply is the answer, or MAIL's if MAIL was refused; the connection
// stays usable.
func TestUpstreamCheck(t *testing.T) {
	f := newFake(t, lmtpd(fakeOpts{rcpt: func(a string) string {
		if a == "full@example.com" {
			return "452 4.2.2 Over quota SESSIONID=<q>"
		}
		return "250 2.1.5 ok"
	}}))
	u, w := newTestUpstream(t, f, nil)
	tests := []struct {
		rcpt  string
		size  int64
		write string
		want  string
	}{
		{"full@example.com", 1234, "MAIL FROM:<> SIZE=1234\r\nRCPT TO:<full@example.com>\r\nRSET\r\n", "452 4.2.2 Over quota SESSIONID=<q>"},
		{"a@example.com", 0, "MAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nRSET\r\n", "250 2.1.5 ok"},
	}
	for _, tt := range tests {
		r, err := u.check(t.Context(), tt.rcpt, tt.size)
		if err != nil || r.String() != tt.want {
			t.Errorf("check(%s, %d) = %v, %v; want %s", tt.rcpt, tt.size, r, err, tt.want)
		}
		if got := w.writeWith("RCPT TO:<" + tt.rcpt); got != tt.write {
			t.Errorf("check(%s) wrote %q, want %q in one write", tt.rcpt, got, tt.write)
		}
	}
	if w.dialCount() != 1 {
		t.Errorf("%d dials, want 1", w.dialCount())
	}

	refused := newFake(t, lmtpd(fakeOpts{mail: "552 5.2.3 Message SIZE exceeds fixed maximum message size (3000)"}))
	u2, _ := newTestUpstream(t, refused, nil)
	if r, err := u2.check(t.Context(), "a@example.com", 5000); err != nil || r.Code != 552 {
		t.Errorf("check with MAIL refused = %v, %v; want the 552", r, err)
	}
}

// TestUpstreamSize: SIZE from LHLO, 0 for Cyrus's bare "SIZE".
func TestUpstreamSize(t *testing.T) {
	for _, tt := range []struct {
		cap  string
		want int64
	}{{"250-SIZE 3000", 3000}, {"250-SIZE", 0}, {"250-size 77", 77}, {"250-SIZE x", 0}} {
		f := newFake(t, lmtpd(fakeOpts{caps: []string{"250-fake.test", tt.cap, "250 PIPELINING"}}))
		u, w := newTestUpstream(t, f, nil)
		for range 2 {
			if n, err := u.size(t.Context()); err != nil || n != tt.want {
				t.Errorf("%s: size = %d, %v; want %d", tt.cap, n, err, tt.want)
			}
		}
		if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
			t.Fatal(err)
		}
		if w.dialCount() != 1 {
			t.Errorf("%s: %d dials, want 1 (size's connection is reused)", tt.cap, w.dialCount())
		}
	}
}

// TestUpstreamConnectErrors: failures while connecting give no verdicts
// and free their slot.
func TestUpstreamConnectErrors(t *testing.T) {
	tests := []struct {
		name   string
		script func(*fakeSession)
		want   string
	}{
		{"greeting refused", func(s *fakeSession) { s.send("421 4.3.2 shutting down") }, "greeting: 421 4.3.2 shutting down"},
		{"LHLO refused", func(s *fakeSession) {
			s.send("220 ok")
			s.line()
			s.send("500 5.5.2 Syntax error")
		}, "LHLO: 500 5.5.2 Syntax error"},
		{"closed at once", func(*fakeSession) {}, "greeting: EOF"},
		{"garbage", func(s *fakeSession) { s.send("HTTP/1.1 400 Bad Request") }, "malformed LMTP reply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.script)
			u, _ := newTestUpstream(t, f, func(c *upstreamConfig) { c.MaxConns, c.WaitTimeout = 1, time.Millisecond })
			for range 2 { // the second must not find the slot taken
				replies, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg))
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error = %v, want %q", err, tt.want)
				}
				checkReplies(t, replies, "no reply")
			}
		})
	}
	t.Run("no socket", func(t *testing.T) {
		u := newUpstream(testConfig(filepath.Join(t.TempDir(), "none")))
		defer u.Close()
		if _, err := u.size(t.Context()); err == nil || !strings.Contains(err.Error(), "lmtp upstream: connect") {
			t.Errorf("error = %v, want a connect error", err)
		}
	})
}

// TestUpstreamReplyLimits: an over-long or endless reply is a protocol
// error and costs the connection.
func TestUpstreamReplyLimits(t *testing.T) {
	for _, tt := range []struct {
		name, reply string
	}{
		{"long line", "250 " + strings.Repeat("x", maxReplyLine)},
		{"many lines", strings.Repeat("250-x\r\n", maxReplyLines) + "250 x"},
		{"codes differ", "250-x\r\n251 y"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, lmtpd(fakeOpts{mail: tt.reply}), lmtpd(fakeOpts{}))
			u, w := newTestUpstream(t, f, nil)
			replies, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg))
			if !errors.Is(err, errReplyTooLong) && !errors.Is(err, errReplySyntax) {
				t.Errorf("error = %v, want a protocol error", err)
			}
			checkReplies(t, replies, "no reply")
			if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
				t.Fatal(err)
			}
			if w.dialCount() != 2 {
				t.Errorf("%d dials, want 2 (not reused after the violation)", w.dialCount())
			}
		})
	}
}

// TestUpstreamEnvelopeInjection: CR, LF or angle brackets in an address or
// parameter are refused before anything is sent.
func TestUpstreamEnvelopeInjection(t *testing.T) {
	f := newFake(t, lmtpd(fakeOpts{}))
	u, w := newTestUpstream(t, f, nil)
	for _, e := range []Envelope{
		{From: "a@b>\r\nRCPT TO:<victim@example.com", Rcpts: []string{"x@example.com"}},
		{Rcpts: []string{"x@example.com>\r\nDATA"}},
		{Rcpts: []string{"x@example.com\n"}},
		{MailParams: []string{"SIZE=1 AUTH=<>"}, Rcpts: []string{"x@example.com"}},
		{RcptParams: []string{"NOTIFY=NEVER\r\n"}, Rcpts: []string{"x@example.com"}},
		{},
	} {
		if _, err := u.deliver(t.Context(), e, strings.NewReader(testMsg)); err == nil {
			t.Errorf("deliver(%q) succeeded", e)
		}
	}
	if _, err := u.check(t.Context(), "x@example.com>\r\nDATA", 0); !errors.Is(err, errEnvelopeSyntax) {
		t.Errorf("check error = %v, want errEnvelopeSyntax", err)
	}
	if w.dialCount() != 0 {
		t.Errorf("%d dials, want none", w.dialCount())
	}
}

// TestUpstreamSetConfig: a new address is used for new connections; idle
// ones to the old address are not reused. Close fails later calls.
func TestUpstreamSetConfig(t *testing.T) {
	f1, f2 := newFake(t, lmtpd(fakeOpts{})), newFake(t, lmtpd(fakeOpts{}))
	u, _ := newTestUpstream(t, f1, nil)
	if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
		t.Fatal(err)
	}
	u.setConfig(testConfig(f2.sock))
	if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); err != nil {
		t.Fatal(err)
	}
	if f2.count() != 1 {
		t.Errorf("new address got %d connections, want 1", f2.count())
	}
	f1.session(0).wait() // the old idle connection was closed
	u.Close()
	if _, err := u.deliver(t.Context(), env("a@example.com"), strings.NewReader(testMsg)); !errors.Is(err, errUpstreamClosed) {
		t.Errorf("after Close: %v, want errUpstreamClosed", err)
	}
}

func TestReadReply(t *testing.T) {
	ec := func(a, b, c int) smtp.EnhancedCode { return smtp.EnhancedCode{a, b, c} }
	none := smtp.EnhancedCodeNotSet
	tests := []struct {
		name, in string
		want     Reply
		wantErr  error
	}{
		{"simple", "250 2.1.5 ok\r\n", Reply{250, ec(2, 1, 5), []string{"ok"}}, nil},
		{"no enhanced", "250 Ok SESSIONID=<x>\r\n", Reply{250, none, []string{"Ok SESSIONID=<x>"}}, nil},
		{"code only", "250\r\n", Reply{250, none, []string{""}}, nil},
		{"enhanced only", "250 2.0.0\r\n", Reply{250, ec(2, 0, 0), []string{""}}, nil},
		{"LF only", "354 go ahead\n", Reply{354, none, []string{"go ahead"}}, nil},
		{"multi-line", cyrusUnknown + "\r\n", Reply{550, ec(5, 1, 1), []string{
			"Mailbox unknown.  Either there is no mailbox associated with this",
			"name or you do not have authorization to see it.", "User unknown"}}, nil},
		{"empty continuation", "250-\r\n250 x\r\n", Reply{250, none, []string{"", "x"}}, nil},
		{"class mismatch", "250 5.1.1 odd\r\n", Reply{250, none, []string{"5.1.1 odd"}}, nil},
		{"class 3", "354 3.0.0 go\r\n", Reply{354, none, []string{"3.0.0 go"}}, nil},
		{"long subject", "452 4.2222.2 x\r\n", Reply{452, none, []string{"4.2222.2 x"}}, nil},
		{"three-digit parts", "554 5.123.456 x\r\n", Reply{554, ec(5, 123, 456), []string{"x"}}, nil},
		{"no space after", "250 2.1.5x\r\n", Reply{250, none, []string{"2.1.5x"}}, nil},
		{"two spaces", "250 2.1.5  x\r\n", Reply{250, ec(2, 1, 5), []string{" x"}}, nil},
		{"enhanced on first line only", "250-2.1.5 a\r\n250 b\r\n", Reply{250, none, []string{"2.1.5 a", "b"}}, nil},
		{"clean eof", "", Reply{}, io.EOF},
		{"eof in line", "250 ok", Reply{}, io.ErrUnexpectedEOF},
		{"eof after continuation", "250-ok\r\n", Reply{}, io.ErrUnexpectedEOF},
		{"short", "25\r\n", Reply{}, errReplySyntax},
		{"letters", "abc ok\r\n", Reply{}, errReplySyntax},
		{"code 1xx", "199 x\r\n", Reply{}, errReplySyntax},
		{"code 6xx", "600 x\r\n", Reply{}, errReplySyntax},
		{"bad separator", "250+ok\r\n", Reply{}, errReplySyntax},
		{"codes differ", "250-a\r\n550 b\r\n", Reply{}, errReplySyntax},
		{"bare CR in text", "250 a\rb\r\n", Reply{}, errReplySyntax},
		{"NUL in text", "250 a\x00b\r\n", Reply{}, errReplySyntax},
		{"line at limit", "250 " + strings.Repeat("x", maxReplyLine-6) + "\r\n",
			Reply{250, none, []string{strings.Repeat("x", maxReplyLine-6)}}, nil},
		{"line over limit", "250 " + strings.Repeat("x", maxReplyLine-5) + "\r\n", Reply{}, errReplyTooLong},
		{"endless line", strings.Repeat("x", 100000), Reply{}, errReplyTooLong},
		{"lines at limit", strings.Repeat("250-x\r\n", maxReplyLines-1) + "250 y\r\n",
			Reply{250, none, append(slices.Repeat([]string{"x"}, maxReplyLines-1), "y")}, nil},
		{"too many lines", strings.Repeat("250-x\r\n", maxReplyLines) + "250 y\r\n", Reply{}, errReplyTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readReply(bufio.NewReader(strings.NewReader(tt.in)))
			if !errors.Is(err, tt.wantErr) || !reflect.DeepEqual(got, tt.want) && tt.wantErr == nil {
				t.Errorf("readReply(%.50q) = %#v, %v; want %#v, %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// wireReply renders r as lmtpd would send it.
func wireReply(r Reply) string {
	var b strings.Builder
	for i, l := range r.Lines {
		sep := "-"
		if i == len(r.Lines)-1 {
			sep = " "
			if r.Enhanced != smtp.EnhancedCodeNotSet {
				l = fmt.Sprintf("%d.%d.%d %s", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], l)
			}
		}
		fmt.Fprintf(&b, "%d%s%s\r\n", r.Code, sep, l)
	}
	return b.String()
}

// FuzzReply: readReply never panics or accepts more than the limits, and
// what it accepts renders back to the same reply.
func FuzzReply(f *testing.F) {
	for _, s := range []string{"250 2.1.5 ok\r\n", cyrusUnknown + "\r\n", "250\r\n", "250-\r\n250 x\r\n",
		"452 4.2.2 Over quota SESSIONID=<x>\r\n", "250 2.1.5x\n", "250 a\rb\r\n", "25",
		strings.Join(cyrusCaps, "\r\n") + "\r\n", strings.Repeat("250-x\r\n", maxReplyLines) + "250 y\r\n",
		"250 " + strings.Repeat("x", maxReplyLine)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		r, err := readReply(br)
		if err != nil {
			if r.Code != 0 || r.Lines != nil {
				t.Fatalf("readReply(%q) = %#v with error %v", in, r, err)
			}
			return
		}
		consumed := len(in) - br.Buffered()
		if len(r.Lines) > maxReplyLines || consumed > maxReplyLines*maxReplyLine {
			t.Fatalf("readReply(%q) accepted %d lines, %d bytes", in, len(r.Lines), consumed)
		}
		for _, l := range r.Lines {
			if len(l) > maxReplyLine || strings.ContainsAny(l, "\r\n") {
				t.Fatalf("readReply(%q): line %q", in, l)
			}
		}
		again, err := readReply(bufio.NewReader(strings.NewReader(wireReply(r))))
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("readReply(%q) = %#v; rendered %q reads as %#v, %v", in, r, wireReply(r), again, err)
		}
	})
}

func TestReplyForms(t *testing.T) {
	r := Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Lines: []string{"Mailbox unknown.", "", "User unknown"}}
	if got, want := r.String(), "550 5.1.1 Mailbox unknown. User unknown"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	want := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "Mailbox unknown.\n\nUser unknown"}
	if got := r.SMTPError(); !reflect.DeepEqual(got, want) {
		t.Errorf("SMTPError() = %#v, want %#v", got, want)
	}
	plain := Reply{Code: 250, Enhanced: smtp.EnhancedCodeNotSet, Lines: []string{"Ok"}}
	if got := plain.String(); got != "250 Ok" {
		t.Errorf("String() = %q, want \"250 Ok\"", got)
	}
	// No verdict must never read as success or as a permanent failure.
	if e := (Reply{}).SMTPError(); e.Code != 451 || (Reply{}).String() != "no reply" {
		t.Errorf("zero Reply: SMTPError %v, String %q", e, Reply{}.String())
	}
}
