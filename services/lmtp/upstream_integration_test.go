//go:build integration

package lmtp

// The upstream client against real Cyrus 3.6 lmtpd (e2e/lab): verdicts,
// body fidelity, connection reuse, the live quota check, and the Cyrus
// behaviours the client works around.

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"cyrus-sidecar/e2e/lab"
)

// upstreamTestTimeout bounds each test's work against Cyrus.
const upstreamTestTimeout = 2 * time.Minute

// upstreamUsers have mailboxes in upstreamCyrus; full's is over quota.
var upstreamUsers = map[string]string{"alice": "alice-pw", "bob": "bob-pw", "full": "full-pw"}

// upstreamCyrus starts Cyrus with upstreamUsers' mailboxes (conf overrides
// imapd.conf) and returns it with an upstream to its LMTP socket.
func upstreamCyrus(t *testing.T, conf map[string]string) (*lab.Cyrus, *upstream, *wire) {
	t.Helper()
	c := lab.StartCyrus(t, lab.CyrusOptions{Users: upstreamUsers, Conf: conf})
	for u := range upstreamUsers {
		c.CreateMailbox(t, u)
	}
	// The message that crosses a 1 KiB quota is still taken; from then on
	// RCPT is refused (cyrus-lab-facts.md §4).
	c.SetQuota(t, "full", 1)
	filler := "Subject: filler\r\n\r\n" + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 20) // over 1 KiB, under 3000 bytes
	if r := c.Deliver(t, "x@outside.org", []string{"full@example.com"}, []byte(filler)); !strings.HasPrefix(r[0], "250 ") {
		t.Fatalf("filling full@example.com: %q", r[0])
	}
	cfg := testConfig(c.LMTPSocket)
	cfg.Hostname = "proxy.test"
	u, w := recordedUpstream(t, cfg)
	return c, u, w
}

func upstreamCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), upstreamTestTimeout)
	t.Cleanup(cancel)
	return ctx
}

// message is a complete message with the headers Cyrus would otherwise
// add (Date, Message-ID), so that what Cyrus stores ends with it exactly.
func message(subject, body string) string {
	return "From: sender@outside.org\r\nTo: alice@example.com\r\nSubject: " + subject + "\r\n" +
		"Date: Sun, 22 Nov 2026 05:00:00 +0000\r\nMessage-ID: <" + subject + "@outside.org>\r\n\r\n" + body
}

func TestUpstreamCyrusVerdicts(t *testing.T) {
	t.Parallel()
	c, u, _ := upstreamCyrus(t, nil)
	replies, err := u.deliver(upstreamCtx(t), Envelope{From: "sender@outside.org",
		Rcpts: []string{"alice@example.com", "nobody@example.com", "full@example.com"}},
		strings.NewReader(message("verdicts", "hello\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replies: %q", replyStrings(replies))
	want := []struct {
		code int
		ec   smtp.EnhancedCode
	}{{250, smtp.EnhancedCode{2, 1, 5}}, {550, smtp.EnhancedCode{5, 1, 1}}, {452, smtp.EnhancedCode{4, 2, 2}}}
	for i, w := range want {
		if replies[i].Code != w.code || replies[i].Enhanced != w.ec {
			t.Errorf("reply %d = %v, want %d %v", i, replies[i], w.code, w.ec)
		}
	}
	if n := len(replies[1].Lines); n != 3 {
		t.Errorf("550 has %d lines, want Cyrus's 3: %q", n, replies[1].Lines)
	}
	if msgs := c.Messages(t, "alice", upstreamUsers["alice"]); len(msgs) != 1 {
		t.Errorf("alice has %d messages, want 1", len(msgs))
	}
}

// TestUpstreamCyrusBody: lines ".", "..", ".x", a 7000-byte line, the
// longest line Cyrus reads whole ending in '.', and a final "." without
// CRLF come back over IMAP byte for byte.
func TestUpstreamCyrusBody(t *testing.T) {
	t.Parallel()
	c, u, _ := upstreamCyrus(t, nil)
	body := ".\r\n..\r\n.x\r\n...\r\n\r\n" + strings.Repeat("7", 7000) + "\r\n" +
		strings.Repeat("A", maxBodyLine-1) + ".\r\n" + "." + strings.Repeat("B", maxBodyLine-2) + "\r\nlast\r\n."
	msg := message("body", body)
	replies, err := u.deliver(upstreamCtx(t), Envelope{From: "sender@outside.org", Rcpts: []string{"alice@example.com"}},
		strings.NewReader(msg))
	if err != nil || replies[0].Code != 250 {
		t.Fatalf("deliver = %q, %v", replyStrings(replies), err)
	}
	msgs := c.Messages(t, "alice", upstreamUsers["alice"])
	if len(msgs) != 1 {
		t.Fatalf("alice has %d messages, want 1", len(msgs))
	}
	got, want := string(msgs[0]), msg+"\r\n"
	if !strings.HasSuffix(got, want) {
		t.Fatalf("Cyrus stored %d bytes that do not end with the %d sent (plus the final CRLF); stored:\n%.2000q", len(got), len(want), got)
	}
	// Cyrus only puts its trace fields in front.
	for line := range strings.Lines(strings.TrimSuffix(got, want)) {
		if name, _, _ := strings.Cut(line, ":"); !slices.Contains([]string{"Return-Path", "Received", "X-Cyrus-Session-Id", "X-Sieve"}, name) &&
			!strings.HasPrefix(line, "\t") {
			t.Errorf("Cyrus added %q", line)
		}
	}
}

// TestUpstreamCyrusReuse: two transactions on one connection.
func TestUpstreamCyrusReuse(t *testing.T) {
	t.Parallel()
	c, u, w := upstreamCyrus(t, nil)
	ctx := upstreamCtx(t)
	for _, subject := range []string{"one", "two"} {
		replies, err := u.deliver(ctx, Envelope{From: "sender@outside.org", Rcpts: []string{"bob@example.com"}},
			strings.NewReader(message(subject, "text\r\n")))
		if err != nil || replies[0].Code != 250 {
			t.Fatalf("deliver %s = %q, %v", subject, replyStrings(replies), err)
		}
	}
	if w.dialCount() != 1 {
		t.Errorf("%d connections, want 1", w.dialCount())
	}
	if msgs := c.Messages(t, "bob", upstreamUsers["bob"]); len(msgs) != 2 {
		t.Errorf("bob has %d messages, want 2", len(msgs))
	}
}

// TestUpstreamCyrusCheck: the live quota check against lmtpd.
func TestUpstreamCyrusCheck(t *testing.T) {
	t.Parallel()
	_, u, w := upstreamCyrus(t, nil)
	ctx := upstreamCtx(t)
	for _, tt := range []struct {
		rcpt string
		size int64
		code int
		ec   smtp.EnhancedCode
	}{
		{"full@example.com", 0, 452, smtp.EnhancedCode{4, 2, 2}},
		{"full@example.com", 5000, 452, smtp.EnhancedCode{4, 2, 2}},
		{"alice@example.com", 5000, 250, smtp.EnhancedCode{2, 1, 5}},
		{"alice@example.com", 0, 250, smtp.EnhancedCode{2, 1, 5}},
		{"nobody@example.com", 0, 550, smtp.EnhancedCode{5, 1, 1}},
	} {
		r, err := u.check(ctx, tt.rcpt, tt.size)
		if err != nil || r.Code != tt.code || r.Enhanced != tt.ec {
			t.Errorf("check(%s, %d) = %v, %v; want %d %v", tt.rcpt, tt.size, r, err, tt.code, tt.ec)
		}
	}
	if w.dialCount() != 1 {
		t.Errorf("%d connections, want 1: each check ends with RSET", w.dialCount())
	}
}

// TestUpstreamCyrusLongLine shows why maxBodyLine exists: Cyrus 3.6 reads
// a body line in pieces of 8189 bytes and takes ".\r\n" at the start of a
// piece as the end of the data, so what follows runs as LMTP commands.
// The client refuses such a body and Cyrus stores nothing.
func TestUpstreamCyrusLongLine(t *testing.T) {
	t.Parallel()
	c, u, _ := upstreamCyrus(t, nil)
	smuggle := message("long", strings.Repeat("A", 8189)+".\r\nRSET\r\n")

	conn, err := net.DialTimeout("unix", c.LMTPSocket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second)) // fresh conn
	r := bufio.NewReader(conn)
	read := func() Reply {
		t.Helper()
		rep, err := readReply(r)
		if err != nil {
			t.Fatalf("raw lmtp: %v", err)
		}
		return rep
	}
	read()
	conn.Write([]byte("LHLO raw.test\r\n"))
	read()
	conn.Write([]byte("MAIL FROM:<sender@outside.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"))
	read()
	read()
	if rep := read(); rep.Code != 354 {
		t.Fatalf("DATA: %v", rep)
	}
	conn.Write([]byte(smuggle + ".\r\n"))
	// One reply for the recipient, then the RSET's reply: proof that it
	// ran as a command; then the "." line is a bad command.
	got := []string{read().String(), read().String(), read().String()}
	t.Logf("Cyrus after the long line: %q", got)
	if !strings.HasPrefix(got[0], "250 2.1.5") || !strings.HasPrefix(got[1], "250 2.0.0 Ok") || !strings.HasPrefix(got[2], "500") {
		t.Errorf("Cyrus no longer ends the data at an 8189-byte boundary (got %q): maxBodyLine may be relaxed", got)
	}
	if msgs := c.Messages(t, "bob", upstreamUsers["bob"]); len(msgs) != 1 || strings.Contains(string(msgs[0]), "RSET") {
		t.Errorf("bob's messages: %d, want 1 cut short", len(msgs))
	}

	replies, err := u.deliver(upstreamCtx(t), Envelope{From: "sender@outside.org", Rcpts: []string{"bob@example.com"}},
		strings.NewReader(smuggle))
	if !errors.Is(err, errBodyLineTooLong) || replies[0].Code != 0 {
		t.Errorf("deliver = %q, %v; want no verdict and errBodyLineTooLong", replyStrings(replies), err)
	}
	if msgs := c.Messages(t, "bob", upstreamUsers["bob"]); len(msgs) != 1 {
		t.Errorf("bob has %d messages after the refused delivery, want still 1", len(msgs))
	}
}

// TestUpstreamCyrusOversize: with maxmessagesize, LHLO carries SIZE; a
// body over it gets one 552 5.2.3 from Cyrus for all recipients (not one
// each); a MAIL SIZE= over it is refused while RCPT and DATA are still
// accepted. Both leave the connection unusable, and nothing is stored.
func TestUpstreamCyrusOversize(t *testing.T) {
	t.Parallel()
	c, u, w := upstreamCyrus(t, map[string]string{"maxmessagesize": "3000"})
	ctx := upstreamCtx(t)
	if n, err := u.size(ctx); err != nil || n != 3000 {
		t.Errorf("size = %d, %v; want 3000", n, err)
	}
	rcpts := []string{"alice@example.com", "bob@example.com"}
	big := message("big", strings.Repeat(strings.Repeat("B", 70)+"\r\n", 60))
	replies, err := u.deliver(ctx, Envelope{From: "sender@outside.org", Rcpts: rcpts}, strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("body over maxmessagesize: %q", replyStrings(replies))
	for i, r := range replies {
		if r.Code != 552 || r.Enhanced != (smtp.EnhancedCode{5, 2, 3}) {
			t.Errorf("reply %d = %v, want 552 5.2.3", i, r)
		}
	}
	replies, err = u.deliver(ctx, Envelope{From: "sender@outside.org", MailParams: []string{"SIZE=5000"}, Rcpts: rcpts},
		strings.NewReader(big))
	if err != nil || replies[0].Code != 552 || replies[1].Code != 552 {
		t.Errorf("MAIL SIZE=5000: %q, %v; want 552 each", replyStrings(replies), err)
	}
	if r, err := u.check(ctx, "alice@example.com", 5000); err != nil || r.Code != 552 {
		t.Errorf("check with SIZE=5000 = %v, %v; want 552", r, err)
	}
	replies, err = u.deliver(ctx, Envelope{From: "sender@outside.org", Rcpts: rcpts}, strings.NewReader(message("small", "hi\r\n")))
	if err != nil || replies[0].Code != 250 || replies[1].Code != 250 {
		t.Errorf("small message afterwards: %q, %v", replyStrings(replies), err)
	}
	if n := w.dialCount(); n != 3 {
		t.Errorf("%d connections, want 3 (closed after each 552 with Cyrus out of step)", n)
	}
	if msgs := c.Messages(t, "alice", upstreamUsers["alice"]); len(msgs) != 1 {
		t.Errorf("alice has %d messages, want only the small one", len(msgs))
	}
}

// TestUpstreamCyrusStale: lmtpd processes that have gone away (here
// killed) leave a pooled connection closed; the next delivery is retried
// once on a new connection and arrives.
func TestUpstreamCyrusStale(t *testing.T) {
	t.Parallel()
	c, u, w := upstreamCyrus(t, nil)
	ctx := upstreamCtx(t)
	env := Envelope{From: "sender@outside.org", Rcpts: []string{"alice@example.com"}}
	if _, err := u.deliver(ctx, env, strings.NewReader(message("before", "x\r\n"))); err != nil {
		t.Fatal(err)
	}
	pids := lmtpdPIDs(t, c)
	if len(pids) == 0 {
		t.Fatal("no lmtpd process under master")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); slices.ContainsFunc(pids, processAlive); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("lmtpd %v still running 10s after SIGTERM", pids)
		}
	}
	replies, err := u.deliver(ctx, env, strings.NewReader(message("after", "y\r\n")))
	if err != nil || replies[0].Code != 250 {
		t.Fatalf("after lmtpd exited: %q, %v", replyStrings(replies), err)
	}
	if w.dialCount() != 2 {
		t.Errorf("%d connections, want 2", w.dialCount())
	}
	if msgs := c.Messages(t, "alice", upstreamUsers["alice"]); len(msgs) != 2 {
		t.Errorf("alice has %d messages, want 2", len(msgs))
	}
}

// lmtpdPIDs lists the live lmtpd processes whose parent is c's master.
func lmtpdPIDs(t *testing.T, c *lab.Cyrus) []int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.Dir, "run/master.pid"))
	if err != nil {
		t.Fatal(err)
	}
	master, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("master.pid: %v", err)
	}
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range stats {
		comm, state, ppid, ok := procStat(f)
		if ok && comm == "lmtpd" && state != "Z" && ppid == master {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f))) // the glob makes it numeric
			pids = append(pids, pid)
		}
	}
	return pids
}

// procStat reads "pid (comm) state ppid ..." (comm may hold spaces).
func procStat(path string) (comm, state string, ppid int, ok bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", "", 0, false // gone meanwhile
	}
	s := string(data)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", "", 0, false
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 2 {
		return "", "", 0, false
	}
	ppid, err = strconv.Atoi(fields[1])
	return s[open+1 : end], fields[0], ppid, err == nil
}

func processAlive(pid int) bool {
	_, state, _, ok := procStat("/proc/" + strconv.Itoa(pid) + "/stat")
	return ok && state != "Z"
}
