package imap

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer plays an IMAP server over a pipe: it sends greeting, then for
// each command line calls handle with the tag and the command (without
// tag) and writes what it returns, "TAG" replaced by the tag. A handle
// returning "+..." as the first line gets the client's next line as cmd on
// the following call, with tag "".
type fakeServer struct {
	mu    sync.Mutex
	lines []string // what the client sent
}

func (f *fakeServer) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func startFake(t *testing.T, greeting string, handle func(tag, cmd string) string) (*fakeServer, net.Conn) {
	t.Helper()
	client, server := net.Pipe()
	f := &fakeServer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer server.Close()
		w := bufio.NewWriter(server)
		w.WriteString(greeting)
		if w.Flush() != nil {
			return
		}
		br := bufio.NewReader(server)
		lastTag := ""
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\r\n")
			f.mu.Lock()
			f.lines = append(f.lines, line)
			f.mu.Unlock()
			tag, cmd, ok := strings.Cut(line, " ")
			if !ok || strings.HasPrefix(lastTag, "+") {
				tag, cmd = strings.TrimPrefix(lastTag, "+"), line
			}
			out := handle(tag, cmd)
			if out == "" {
				continue
			}
			lastTag = ""
			if strings.HasPrefix(out, "+") {
				lastTag = "+" + tag
			}
			w.WriteString(strings.ReplaceAll(out, "TAG", tag))
			if w.Flush() != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { client.Close(); <-done })
	return f, client
}

const cyrusGreeting = "* OK [CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN AUTH=LOGIN SASL-IR] cyruslab.localhost Cyrus IMAP 3.6.1 server ready\r\n"

func TestSessionAgainstCyrusTranscript(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "cyrus36-no.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// Split the capture into greeting and the answers to t1..t4.
	lines := strings.SplitAfter(string(data), "\r\n")
	greeting, answers := lines[0], map[string]string{}
	var cur strings.Builder
	for _, l := range lines[1:] {
		cur.WriteString(l)
		if tag, _, _ := strings.Cut(l, " "); tag != "*" && tag != "" {
			answers[tag] = strings.ReplaceAll(cur.String(), tag+" ", "TAG ")
			cur.Reset()
		}
	}
	f, conn := startFake(t, greeting, func(tag, cmd string) string {
		switch {
		case strings.HasPrefix(cmd, "AUTHENTICATE PLAIN "):
			return answers["t1"]
		case cmd == "NAMESPACE":
			return answers["t2"]
		case strings.HasPrefix(cmd, "LIST "):
			return answers["t3"]
		case cmd == "LOGOUT":
			return answers["t4"]
		}
		return "TAG BAD unexpected\r\n"
	})
	ctx := t.Context()
	c, err := NewClient(ctx, conn, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AuthenticatePlain(ctx, "alice@example.com", "admin", "s3cret"); err != nil {
		t.Fatal(err)
	}
	for _, capa := range []string{"LIST-STATUS", "list-metadata", "NAMESPACE"} {
		if ok, err := c.Has(ctx, capa); !ok || err != nil {
			t.Errorf("Has(%s) = %v, %v after AUTHENTICATE", capa, ok, err)
		}
	}
	ns, err := c.Namespace(ctx)
	if err != nil || len(ns.Personal) != 1 || ns.Personal[0].Prefix != "INBOX/" || ns.Other[0].Prefix != "user/" {
		t.Errorf("Namespace = %+v, %v", ns, err)
	}
	boxes, err := c.List(ctx, ListOptions{Pattern: "*", Status: StatusMessages | StatusUIDNext | StatusUIDValidity | StatusUnseen | StatusHighestModseq, Metadata: []string{UniqueIDEntry}})
	if err != nil || len(boxes) != 6 || boxes[1].Name != "INBOX/Müll Ordner" || boxes[1].Status == nil {
		t.Errorf("List = %+v, %v", boxes, err)
	}
	if err := c.Logout(ctx); err != nil {
		t.Errorf("Logout: %v", err)
	}
	sent := f.got()
	ir := base64.StdEncoding.EncodeToString([]byte("alice@example.com\x00admin\x00s3cret"))
	want := []string{
		"s1 AUTHENTICATE PLAIN " + ir, "s2 NAMESPACE",
		`s3 LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ) METADATA ("/shared/vendor/cmu/cyrus-imapd/uniqueid"))`,
		"s4 LOGOUT",
	}
	if strings.Join(sent, "\n") != strings.Join(want, "\n") {
		t.Errorf("client sent\n%s\nwant\n%s", strings.Join(sent, "\n"), strings.Join(want, "\n"))
	}
	if _, err := c.List(ctx, ListOptions{Pattern: "*"}); !errors.Is(err, errBroken) {
		t.Errorf("List after Logout: %v; want errBroken", err)
	}
}

// Without SASL-IR the response goes after the continuation; without a
// capability in the greeting, CAPABILITY is asked first.
func TestAuthenticateContinuation(t *testing.T) {
	f, conn := startFake(t, "* OK hi\r\n", func(tag, cmd string) string {
		switch {
		case cmd == "CAPABILITY":
			return "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nTAG OK done\r\n"
		case cmd == "AUTHENTICATE PLAIN":
			return "+ \r\n"
		case cmd == base64.StdEncoding.EncodeToString([]byte("bob\x00admin\x00pw")):
			return "TAG OK welcome\r\n"
		}
		return "TAG BAD unexpected\r\n"
	})
	ctx := t.Context()
	c, err := NewClient(ctx, conn, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AuthenticatePlain(ctx, "bob", "admin", "pw"); err != nil {
		t.Fatal(err)
	}
	ir := base64.StdEncoding.EncodeToString([]byte("bob\x00admin\x00pw"))
	want := "s1 CAPABILITY\ns2 AUTHENTICATE PLAIN\n" + ir
	if got := strings.Join(f.got(), "\n"); got != want {
		t.Errorf("sent %q; want %q", got, want)
	}
}

func TestAuthenticateRefused(t *testing.T) {
	_, conn := startFake(t, cyrusGreeting, func(tag, cmd string) string {
		return "TAG NO [AUTHENTICATIONFAILED] Login failed: authentication failure\r\n"
	})
	ctx := t.Context()
	c, err := NewClient(ctx, conn, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = c.AuthenticatePlain(ctx, "alice", "admin", "topsecret")
	ierr, ok := errors.AsType[*Error](err)
	if !ok || ierr.Kind != "NO" || ierr.Code != "AUTHENTICATIONFAILED" {
		t.Fatalf("err = %v; want NO [AUTHENTICATIONFAILED]", err)
	}
	if strings.Contains(err.Error(), "topsecret") || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString([]byte("alice\x00admin\x00topsecret"))) {
		t.Errorf("error leaks the password: %v", err)
	}
	// A NO leaves the session usable.
	if _, err := c.Has(ctx, "SASL-IR"); err != nil {
		t.Errorf("after NO: %v", err)
	}
}

func TestGreetingRefusals(t *testing.T) {
	for _, g := range []string{"* BYE too many connections\r\n", "* NO go away\r\n", "s1 OK hi\r\n", "garbage\r\n"} {
		_, conn := startFake(t, g, func(string, string) string { return "" })
		if _, err := NewClient(t.Context(), conn, Options{Timeout: 5 * time.Second}); err == nil {
			t.Errorf("greeting %q accepted", g)
		}
	}
	_, conn := startFake(t, "* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n", func(string, string) string { return "" })
	if _, err := NewClient(t.Context(), conn, Options{Timeout: 5 * time.Second}); err != nil {
		t.Errorf("PREAUTH refused: %v", err)
	}
}

// A silent server costs one timeout; a cancelled context ends the wait.
func TestTimeouts(t *testing.T) {
	_, conn := startFake(t, "", func(string, string) string { return "" })
	start := time.Now()
	_, err := NewClient(t.Context(), conn, Options{Timeout: 200 * time.Millisecond})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("silent greeting: %v after %v", err, time.Since(start))
	}

	_, conn = startFake(t, cyrusGreeting, func(string, string) string { return "" })
	c, err := NewClient(t.Context(), conn, Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start = time.Now()
	_, err = c.List(ctx, ListOptions{Pattern: "*"})
	if !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled LIST: %v after %v", err, time.Since(start))
	}
}

func TestBYEThenClose(t *testing.T) {
	_, conn := startFake(t, cyrusGreeting, func(tag, cmd string) string {
		return "* BYE Fatal error: shutting down\r\n"
	})
	c, err := NewClient(t.Context(), conn, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// The fake keeps the pipe open: the read ends at the timeout and
	// names the BYE.
	_, err = c.List(t.Context(), ListOptions{Pattern: "*"})
	if ierr, ok := errors.AsType[*Error](err); !ok || ierr.Kind != "BYE" {
		t.Fatalf("err = %v; want the BYE", err)
	}
}

func TestListRefusesArguments(t *testing.T) {
	_, conn := startFake(t, cyrusGreeting, func(string, string) string { return "" })
	c, err := NewClient(t.Context(), conn, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []ListOptions{{Pattern: "ä"}, {Pattern: "*", Metadata: []string{"/a\r\n"}}, {Reference: "\x00"}} {
		if _, err := c.List(t.Context(), o); !errors.Is(err, errArg) {
			t.Errorf("List(%+v) = %v; want errArg", o, err)
		}
	}
	if err := c.AuthenticatePlain(t.Context(), "a\x00", "admin", "pw"); !errors.Is(err, errArg) {
		t.Errorf("NUL in authzid: %v", err)
	}
}

func TestTooManyResponses(t *testing.T) {
	_, conn := startFake(t, cyrusGreeting, func(tag, cmd string) string {
		return strings.Repeat("* 1 EXISTS\r\n", maxResponses) + "TAG OK\r\n"
	})
	c, err := NewClient(t.Context(), conn, Options{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(t.Context(), ListOptions{Pattern: "*"}); !errors.Is(err, errTooLong) {
		t.Fatalf("err = %v; want errTooLong", err)
	}
}

// TestListSubscribed: RETURN (SUBSCRIBED ...) as RFC 5258 §3.2 spells it,
// and the \Subscribed attribute read back, Cyrus 3.6's answer shape.
func TestListSubscribed(t *testing.T) {
	f, conn := startFake(t, cyrusGreeting, func(tag, cmd string) string {
		if strings.HasPrefix(cmd, "LIST ") {
			return `* LIST (\HasNoChildren \Subscribed) "/" INBOX` + "\r\n" +
				`* STATUS INBOX (MESSAGES 2)` + "\r\n" +
				`* LIST (\HasNoChildren) "/" INBOX/Trash` + "\r\n" +
				`* STATUS INBOX/Trash (MESSAGES 0)` + "\r\n" +
				tag + " OK Completed\r\n"
		}
		return tag + " BAD unexpected\r\n"
	})
	c, err := NewClient(t.Context(), conn, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	boxes, err := c.List(t.Context(), ListOptions{Pattern: "*", Status: StatusMessages, Subscribed: true})
	if err != nil || len(boxes) != 2 || !boxes[0].HasAttr(`\subscribed`) || boxes[1].HasAttr(`\Subscribed`) || boxes[0].Status == nil {
		t.Fatalf("List = %+v, %v", boxes, err)
	}
	if sent := f.got(); len(sent) != 1 || sent[0] != `s1 LIST "" "*" RETURN (SUBSCRIBED STATUS (MESSAGES))` {
		t.Errorf("client sent %q", sent)
	}
}
