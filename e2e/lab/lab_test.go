//go:build integration

package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const aliceMsg = "From: x@outside.org\nTo: alice@example.com\nSubject: lab round trip\n" +
	"Date: Mon, 02 Jan 2006 15:04:05 +0000\nMessage-ID: <rt1@outside.org>\n\nhello\n.dot line\n"

// traceHeaders are what lmtpd puts on top of a message that already has
// Date and Message-ID (it adds those too when they are missing).
var traceHeaders = []string{"Return-Path:", "Received:", "X-Cyrus-Session-Id:", "X-Sieve:"}

func startAlice(t *testing.T) *Cyrus {
	t.Helper()
	c := StartCyrus(t, CyrusOptions{Users: map[string]string{"alice@example.com": "secret"}})
	c.CreateMailbox(t, "alice@example.com")
	return c
}

// checkStored fails unless stored is want (CRLF line ends) under lmtpd's
// trace headers only.
func checkStored(t *testing.T, stored []byte, want string) {
	t.Helper()
	w := []byte(strings.ReplaceAll(want, "\n", "\r\n"))
	if !bytes.HasSuffix(stored, w) {
		t.Fatalf("stored message %q; want it to end with %q", stored, w)
	}
	for line := range strings.Lines(string(stored[:len(stored)-len(w)])) {
		if line[0] == ' ' || line[0] == '\t' {
			continue // folded header
		}
		if !slices.ContainsFunc(traceHeaders, func(h string) bool { return strings.HasPrefix(line, h) }) {
			t.Errorf("stored message has unexpected header line %q above the original", line)
		}
	}
}

func TestCyrusRoundTrip(t *testing.T) {
	c := startAlice(t)
	replies := c.Deliver(t, "x@outside.org", []string{"alice@example.com", "nobody@example.com"}, []byte(aliceMsg))
	if len(replies) != 2 || !strings.HasPrefix(replies[0], "250 ") || !strings.HasPrefix(replies[1], "550 ") {
		t.Fatalf("LMTP replies = %q; want 250 for alice, 550 for nobody", replies)
	}
	got := c.Messages(t, "alice@example.com", "secret")
	if len(got) != 1 {
		t.Fatalf("alice has %d messages; want 1", len(got))
	}
	checkStored(t, got[0], aliceMsg)

	// Cyrus sends the default domain as an empty realm (facts §3).
	want := SASLRequest{Login: "alice", Service: "imap", Realm: "", OK: true}
	if reqs := c.SASLRequests(); !slices.Contains(reqs, want) {
		t.Errorf("responder saw %+v; want %+v among them", reqs, want)
	}
}

func TestEximCallout(t *testing.T) {
	c := startAlice(t)
	_, port, _ := net.SplitHostPort(c.LMTPAddr)
	e := NewExim(t, EximOptions{Conf: EximCalloutConfig, Macros: map[string]string{"LMTP_PORT": port}})
	out := e.BHC(t, "EHLO client.example\r\nMAIL FROM:<s@outside.org>\r\n"+
		"RCPT TO:<alice@example.com>\r\nRCPT TO:<nobody@example.com>\r\nQUIT\r\n")
	// greeting, EHLO, MAIL, RCPT alice, RCPT nobody, QUIT
	r := SMTPReplies(out)
	if len(r) != 6 || !strings.HasPrefix(r[3], "250 ") || !strings.HasPrefix(r[4], "550") ||
		!strings.Contains(r[4], "5.1.1 User unknown") {
		t.Fatalf("replies %q; want RCPT alice 250, nobody 550 from Cyrus\nexim output:\n%s", r, out)
	}
}

func TestEximDaemonDelivers(t *testing.T) {
	swaks := Tool(t, "SIDECAR_SWAKS", "swaks")
	c := startAlice(t)
	_, port, _ := net.SplitHostPort(c.LMTPAddr)
	e := NewExim(t, EximOptions{Conf: EximCalloutConfig, Macros: map[string]string{"LMTP_PORT": port}})
	e.StartDaemon(t)

	body := "via exim\n"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, swaks, "--server", "127.0.0.1:"+strconv.Itoa(e.Port),
		"--helo", "client.example", "--from", "s@outside.org", "--to", "alice@example.com",
		"--header", "Subject: through exim", "--body", body).CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}

	// Exim delivers after it has accepted the message, asynchronously.
	deadline := time.Now().Add(20 * time.Second)
	for {
		msgs := c.Messages(t, "alice@example.com", "secret")
		if len(msgs) == 1 {
			if !bytes.Contains(msgs[0], []byte("Subject: through exim\r\n")) ||
				!bytes.Contains(msgs[0], []byte("\r\n\r\nvia exim\r\n")) {
				t.Fatalf("stored message %q; want swaks's subject and body", msgs[0])
			}
			break
		}
		if len(msgs) > 1 || time.Now().After(deadline) {
			t.Fatalf("alice has %d messages; want 1\nswaks:\n%s\nexim mainlog:\n%s", len(msgs), out, e.MainLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Exim logs the delivery after Cyrus's reply, so possibly after the
	// message is already readable over IMAP.
	waitFor(t, 10*time.Second, func() bool {
		return strings.Contains(e.MainLog(), "=> alice@example.com R=cyrus_lmtp T=cyrus_ltcp")
	}, "exim mainlog has no LMTP delivery line:\n"+e.MainLog())
}

func TestPostmapTexthash(t *testing.T) {
	p := NewPostmap(t)
	table := p.WriteTable(t, "virtual", "alice@example.com alice\nbob@example.com bob carol\n")
	if out, errOut, rc := p.Query(t, "alice@example.com", "texthash:"+table); rc != 0 || out != "alice\n" {
		t.Errorf("Query(alice) = %q, %q, rc %d; want \"alice\\n\", rc 0", out, errOut, rc)
	}
	if out, errOut, rc := p.Query(t, "nobody@example.com", "texthash:"+table); rc != 1 || out != "" {
		t.Errorf("Query(nobody) = %q, %q, rc %d; want no output, rc 1", out, errOut, rc)
	}
	out, errOut, rc := p.QueryBatch(t, []string{"alice@example.com", "nobody@example.com", "bob@example.com"}, "texthash:"+table)
	if want := "alice@example.com\talice\nbob@example.com\tbob carol\n"; rc != 0 || out != want {
		t.Errorf("QueryBatch = %q, %q, rc %d; want %q, rc 0", out, errOut, rc, want)
	}
}

// TestCyrusQuota: with a 1 KiB quota the message that crosses it is still
// taken; after that RCPT gets 452 (facts §4), and GETQUOTAROOT shows it.
func TestCyrusQuota(t *testing.T) {
	c := startAlice(t)
	c.SetQuota(t, "alice@example.com", 1)
	big := []byte("Subject: big\n\n" + strings.Repeat(strings.Repeat("x", 63)+"\n", 40))
	for i, want := range []string{"250 ", "452 4.2.2 Over quota"} {
		if r := c.Deliver(t, "x@outside.org", []string{"alice@example.com"}, big); !strings.HasPrefix(r[0], want) {
			t.Fatalf("delivery %d: %q; want %q", i+1, r[0], want)
		}
	}
	r := c.AdminIMAP(t).Cmd(t, "GETQUOTAROOT "+IMAPQuote(c.Mailbox("alice")))
	if !r.OK() || len(r.Untagged) != 2 || !strings.HasSuffix(r.Untagged[1].Text, " 1)") {
		t.Fatalf("GETQUOTAROOT: %s %+v; want usage and limit 1", r, r.Untagged)
	}
}

// TestCaptureSendmail plays Cyrus's side of "sendmail -bs" against the
// capture program (a vacation reply, dot-stuffed line included).
func TestCaptureSendmail(t *testing.T) {
	c := &Cyrus{Dir: t.TempDir()}
	if err := os.Mkdir(filepath.Join(c.Dir, "sendmail"), 0o755); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(c.Dir, "sendmail.sh")
	if err := os.WriteFile(prog, []byte(captureSendmail(filepath.Join(c.Dir, "sendmail"))), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), prog, "-bs")
	cmd.Stdin = strings.NewReader("EHLO localhost\r\nMAIL FROM:<> SIZE=40\r\nRCPT TO:<s@outside.org>\r\n" +
		"DATA\r\nSubject: Away\r\n\r\nback soon\r\n..dot\r\n.\r\nQUIT\r\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("capture sendmail: %v\n%s", err, out)
	}
	if want := "220 lab capture ESMTP\r\n250 lab capture\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n" +
		"354 go ahead\r\n250 2.0.0 stored\r\n221 2.0.0 bye\r\n"; string(out) != want {
		t.Errorf("dialogue %q; want %q", out, want)
	}
	sent := c.SentMail(t)
	want := SentMail{From: "", To: []string{"s@outside.org"}, Data: []byte("Subject: Away\r\n\r\nback soon\r\n.dot\r\n")}
	if len(sent) != 1 || sent[0].From != want.From || !slices.Equal(sent[0].To, want.To) || !bytes.Equal(sent[0].Data, want.Data) {
		t.Errorf("SentMail = %+v; want [%+v]", sent, want)
	}
}

// TestCyrusVacationReply installs a vacation script over ManageSieve and
// checks that Cyrus's reply reaches the lab's capture sendmail.
func TestCyrusVacationReply(t *testing.T) {
	c := startAlice(t)
	script := "require [\"vacation\"];\r\nvacation :days 1 :subject \"Away\" :addresses [\"alice@example.com\"] \"back soon\";\r\n"
	conn, err := net.Dial("tcp", c.SieveAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	// RFC 5804: each command ends with a line starting OK, NO or BYE.
	cmd := func(line string) {
		t.Helper()
		if line != "" {
			fmt.Fprintf(conn, "%s\r\n", line)
		}
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("managesieve after %.20q: %v", line, err)
			}
			if strings.HasPrefix(l, "OK") {
				return
			}
			if strings.HasPrefix(l, "NO") || strings.HasPrefix(l, "BYE") {
				t.Fatalf("managesieve %.20q: %s", line, l)
			}
		}
	}
	cmd("") // capabilities
	cmd(`AUTHENTICATE "PLAIN" "` + base64.StdEncoding.EncodeToString([]byte("\x00alice@example.com\x00secret")) + `"`)
	cmd(fmt.Sprintf("PUTSCRIPT \"vacation\" {%d+}\r\n%s", len(script), script))
	cmd(`SETACTIVE "vacation"`)

	msg := "From: s@outside.org\nTo: alice@example.com\nSubject: hello\nMessage-ID: <v1@outside.org>\n\nhi\n"
	if rep := c.Deliver(t, "s@outside.org", []string{"alice@example.com"}, []byte(msg)); !strings.HasPrefix(rep[0], "250 ") {
		t.Fatalf("LMTP reply %q; want 250", rep[0])
	}
	var sent []SentMail
	waitFor(t, 10*time.Second, func() bool { sent = c.SentMail(t); return len(sent) > 0 }, "no vacation reply captured")
	if len(sent) != 1 || sent[0].From != "" || !slices.Equal(sent[0].To, []string{"s@outside.org"}) ||
		!bytes.Contains(sent[0].Data, []byte("Subject: Away\r\n")) {
		t.Fatalf("captured %+v; want one null-sender reply to s@outside.org with subject Away", sent)
	}
	if want := (SASLRequest{Login: "alice", Service: "sieve", Realm: "", OK: true}); !slices.Contains(c.SASLRequests(), want) {
		t.Errorf("responder saw %+v; want %+v among them", c.SASLRequests(), want)
	}
}

// TestCyrusParallel runs two labs at once: each has its own ports, sockets
// and responder, and each gets its own syslog lines whichever lab serves
// /dev/log. Both stay up until both have checked, so that no line falls into
// a takeover gap. Then Stop takes each down before cleanup.
func TestCyrusParallel(t *testing.T) {
	var working sync.WaitGroup
	working.Add(2)
	for _, user := range []string{"bob@example.com", "carol@other.org"} {
		t.Run(user, func(t *testing.T) {
			t.Parallel()
			var once sync.Once
			done := func() { once.Do(working.Done) }
			defer done() // also when the subtest fails early

			c := StartCyrus(t, CyrusOptions{Users: map[string]string{user: "pw-" + user}})
			c.CreateMailbox(t, user)
			if r := c.Deliver(t, "x@outside.org", []string{user}, []byte(aliceMsg)); !strings.HasPrefix(r[0], "250 ") {
				t.Fatalf("LMTP reply %q; want 250", r[0])
			}
			if n := len(c.Messages(t, user, "pw-"+user)); n != 1 {
				t.Fatalf("%s has %d messages; want 1", user, n)
			}
			local, _, _ := strings.Cut(user, "@")
			waitFor(t, 5*time.Second, func() bool {
				return strings.Contains(c.syslog.lines(), "login: localhost [127.0.0.1] "+local)
			}, "lab syslog has no login line for "+user)
			done()
			working.Wait()

			c.Stop(t)
			if _, err := dialIMAP(c.IMAPAddr, time.Second); err == nil {
				t.Errorf("IMAP still answers after Stop")
			}
		})
	}
}

// TestCyrusStopQueuedConnection stops Cyrus while a connection waits on
// smmapd's socket, which makes 3.6.1's master spin in shutdown; Stop must
// still end it quickly and leave no process behind.
func TestCyrusStopQueuedConnection(t *testing.T) {
	c := StartCyrus(t, CyrusOptions{})
	// The probe's smmapd takes the first connection; the second waits for
	// a new smmapd, which SIGTERM kills before it accepts.
	for range 2 {
		conn, err := net.Dial("unix", c.SmmapSocket)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
	}
	start := time.Now()
	c.Stop(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Stop took %v", d)
	}
	if m := groupMembers(c.master.cmd.Process.Pid); len(m) > 0 {
		t.Errorf("processes left: %s", describe(m))
	}
}

// TestSyslogTakeover checks that a lab's lines reach it through the lab
// that serves /dev/log, and that when that lab stops, another running lab
// takes over.
func TestSyslogTakeover(t *testing.T) {
	requireRoot(t, "a /dev/log catcher")
	if c, err := net.Dial("unixgram", devLog); err == nil {
		c.Close()
		t.Skip("/dev/log is served by someone else; no takeover to observe")
	}
	dirA, dirB := newLabDir(t, "cl"), newLabDir(t, "cl")
	a := startSyslog(t, dirA)
	t.Cleanup(a.stop)
	b := startSyslog(t, dirB)
	t.Cleanup(b.stop)
	if !a.serving() {
		t.Skip("another test process serves /dev/log now")
	}
	if b.serving() {
		t.Fatalf("both labs serve %s", devLog)
	}
	send := func(msg string) func() bool {
		return func() bool {
			// glibc's format; a new datagram per try, as nothing may
			// serve /dev/log for a moment during the takeover.
			if c, err := net.Dial("unixgram", devLog); err == nil {
				fmt.Fprintf(c, "<14>%s %s/test[1]: %s", time.Now().Format(time.Stamp), filepath.Base(dirB), msg)
				c.Close()
			}
			return strings.Contains(b.lines(), msg)
		}
	}
	waitFor(t, 5*time.Second, send("routed by a"), "lab b did not get its line from lab a")
	a.stop()
	waitFor(t, 5*time.Second, send("after takeover"), "lab b did not get its line after lab a stopped")
	if !b.serving() {
		t.Errorf("lab b does not serve %s after lab a stopped", devLog)
	}
	ino := inode(devLog)
	b.stop()
	if ino != 0 && inode(devLog) == ino {
		t.Errorf("%s left behind by the lab that created it", devLog)
	}
}

// waitFor polls cond every 50 ms until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serving reports whether this lab serves /dev/log.
func (s *syslogCatcher) serving() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}
