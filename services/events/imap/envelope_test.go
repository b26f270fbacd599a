package imap

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// cyrus36Envelope is a real Cyrus 3.6.1 session (TestEnvelopeCyrus with
// -imap.capture): AUTHENTICATE, EXAMINE INBOX, UID FETCH 1:4 (UID
// ENVELOPE), UID FETCH 999, LOGOUT. The first subject came as a literal.
const cyrus36Envelope = "cyrus36-envelope.txt"

// fetchLine reads one FETCH response and parses its envelope.
func fetchLine(in string) (Envelope, bool, error) {
	r := newReader(bufio.NewReader(strings.NewReader(in)))
	r.fetch = true
	resp, err := readResponse(r)
	if err != nil {
		return Envelope{}, false, err
	}
	if resp.name != "FETCH" {
		return Envelope{}, false, errSyntax
	}
	return parseFetchEnvelope(resp.fields)
}

func addrs(as []Address) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, "; ")
}

func TestParseFetchEnvelope(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", cyrus36Envelope))
	if err != nil {
		t.Fatal(err)
	}
	// The capture's FETCH responses, the first with its literal.
	real := regexp.MustCompile(`(?s)\* \d+ FETCH .*?\)\)\r\n`).FindAllString(string(data), -1)
	if len(real) != 3 {
		t.Fatalf("capture has %d FETCH responses", len(real))
	}
	tests := []struct {
		name, in                                    string
		uid                                         uint32
		subject, from, to, cc, date, msgid, replyTo string
		ok                                          bool
		wantErr                                     error
	}{
		{name: "cyrus literal, encoded-words, groups", in: real[0], uid: 1, ok: true,
			subject: `Grüße aus Köln and "quotes"`, from: "Jürgen Müller <juergen@outside.example>",
			replyTo: "Jürgen Müller <juergen@outside.example>",
			to:      "Alice <alice@example.com>", cc: "bob@example.com; Carol, C. <carol@example.com>",
			date: "Sun, 22 Nov 2026 02:34:52 +0100", msgid: "<envelope.1@lab>"},
		{name: "cyrus latin-1", in: real[1], uid: 2, ok: true, subject: "café", from: "plain@outside.example",
			replyTo: "plain@outside.example", date: "Sun, 22 Nov 2026 08:16:08 +0000", msgid: "<envelope.2@lab>"},
		{name: "cyrus all NIL", in: real[2], uid: 3, ok: true, subject: "no sender",
			date: "Sun, 22 Nov 2026 08:16:08 +0000", msgid: "<cmu-lmtpd-23499-1795335368-0@cyruslab.localhost>"},
		{name: "envelope before uid", in: "* 1 FETCH (ENVELOPE (NIL \"s\" NIL NIL NIL NIL NIL NIL NIL NIL) UID 7)\r\n", uid: 7, ok: true, subject: "s"},
		{name: "flags only", in: "* 1 FETCH (FLAGS (\\Seen))\r\n"},
		{name: "bad encoded word kept", in: "* 1 FETCH (UID 2 ENVELOPE (NIL \"=?x-nope?Q?a?=\" NIL NIL NIL NIL NIL NIL NIL NIL))\r\n",
			uid: 2, ok: true, subject: "=?x-nope?Q?a?="},
		{name: "control bytes", in: "* 1 FETCH (UID 2 ENVELOPE (NIL {5}\r\na\tb\x01c NIL NIL NIL NIL NIL NIL NIL NIL))\r\n",
			uid: 2, ok: true, subject: "a b c"},
		{name: "nine fields", in: "* 1 FETCH (UID 2 ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n", wantErr: errSyntax},
		{name: "short address", in: "* 1 FETCH (UID 2 ENVELOPE (NIL NIL ((NIL NIL \"a\")) NIL NIL NIL NIL NIL NIL NIL))\r\n", wantErr: errSyntax},
		{name: "list as subject", in: "* 1 FETCH (UID 2 ENVELOPE (NIL () NIL NIL NIL NIL NIL NIL NIL NIL))\r\n", wantErr: errSyntax},
		{name: "odd items", in: "* 1 FETCH (UID)\r\n", wantErr: errSyntax},
		{name: "uid zero", in: "* 1 FETCH (UID 0)\r\n", wantErr: errSyntax},
		{name: "unbalanced", in: "* 1 FETCH (UID 1 ENVELOPE (NIL\r\n", wantErr: errSyntax},
		{name: "eof in literal", in: "* 1 FETCH (UID 1 ENVELOPE (NIL {50}\r\nabc", wantErr: errors.ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, ok, err := fetchLine(tt.in)
			if tt.wantErr != nil {
				if err == nil || (tt.wantErr != errors.ErrUnsupported && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || ok != tt.ok {
				t.Fatalf("ok %v, err %v; want %v", ok, err, tt.ok)
			}
			if !ok {
				return
			}
			got := []string{env.Subject, addrs(env.From), addrs(env.ReplyTo), addrs(env.To), addrs(env.Cc), env.Date, env.MessageID}
			want := []string{tt.subject, tt.from, tt.replyTo, tt.to, tt.cc, tt.date, tt.msgid}
			if env.UID != tt.uid || !slices.Equal(got, want) {
				t.Errorf("uid %d %q\nwant uid %d %q", env.UID, got, tt.uid, want)
			}
		})
	}
}

// TestEnvelopeSession replays the capture: EXAMINE's UIDVALIDITY from the
// untagged OK, the fetch and an empty fetch.
func TestEnvelopeSession(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", cyrus36Envelope))
	if err != nil {
		t.Fatal(err)
	}
	// Split into the greeting and the answers to s1..s5 (a literal's line
	// may start with anything, so tags are matched exactly).
	lines := strings.SplitAfter(string(data), "\r\n")
	greeting, answers := lines[0], map[string]string{}
	tagged := regexp.MustCompile(`^s\d+ `)
	var cur strings.Builder
	for _, l := range lines[1:] {
		cur.WriteString(l)
		if m := tagged.FindString(l); m != "" {
			answers[strings.TrimSpace(m)] = strings.ReplaceAll(cur.String(), m, "TAG ")
			cur.Reset()
		}
	}
	_, conn := startFake(t, greeting, func(tag, cmd string) string {
		switch {
		case strings.HasPrefix(cmd, "AUTHENTICATE PLAIN "):
			return answers["s1"]
		case cmd == `EXAMINE "INBOX"`:
			return answers["s2"]
		case cmd == "UID FETCH 1:4 (UID ENVELOPE)":
			return answers["s3"]
		case cmd == "UID FETCH 999 (UID ENVELOPE)":
			return answers["s4"]
		case cmd == "LOGOUT":
			return answers["s5"]
		}
		return "TAG BAD unexpected\r\n"
	})
	ctx := t.Context()
	c, err := NewClient(ctx, conn, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AuthenticatePlain(ctx, "alice", "admin", "pw"); err != nil {
		t.Fatal(err)
	}
	if uv, err := c.Examine(ctx, "INBOX"); err != nil || uv != 1795335369 {
		t.Errorf("Examine = %d, %v", uv, err)
	}
	envs, err := c.UIDFetchEnvelope(ctx, "1:4", 2)
	if err != nil || len(envs) != 2 || envs[0].UID != 1 || envs[1].Subject != "café" {
		t.Errorf("UIDFetchEnvelope(max 2) = %+v, %v", envs, err)
	}
	if envs, err := c.UIDFetchEnvelope(ctx, "999", 10); err != nil || len(envs) != 0 {
		t.Errorf("UIDFetchEnvelope(999) = %+v, %v", envs, err)
	}
	if _, err := c.UIDFetchEnvelope(ctx, "1 (BODY[])", 10); !errors.Is(err, errArg) {
		t.Errorf("UIDFetchEnvelope with an injected item: %v, want errArg", err)
	}
	if err := c.Logout(ctx); err != nil {
		t.Error(err)
	}
}

func FuzzParseFetchEnvelope(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("testdata", cyrus36Envelope)); err == nil {
		for _, m := range regexp.MustCompile(`(?s)\* \d+ FETCH .*?\)\)\r\n`).FindAllString(string(data), -1) {
			f.Add([]byte(m))
		}
	}
	f.Add([]byte("* 1 FETCH (UID 2 ENVELOPE (NIL {5}\r\na\tb\x01c NIL NIL NIL NIL NIL NIL NIL NIL))\r\n"))
	f.Add([]byte("* 1 FETCH (UID 2 ENVELOPE (NIL \"=?utf-8?q?=C3?=\" ((NIL NIL \"g\" NIL)(\"=?gb2312?B?xOO6ww==?=\" NIL \"a\" \"b\")(NIL NIL NIL NIL)) NIL NIL NIL NIL NIL NIL NIL))\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		env, ok, err := fetchLine(string(in))
		if err != nil || !ok {
			return
		}
		// Property: what is passed on is clean, bounded text.
		for _, s := range []string{env.Subject, env.Date, env.MessageID, addrs(env.From), addrs(env.Cc)} {
			if strings.ContainsAny(s, "\r\n\x00") || !isValid(s) {
				t.Fatalf("unclean text %q from %q", s, in)
			}
		}
		if len(env.Subject) > maxEnvelopeText || len(env.From) > maxEnvelopeAddrs {
			t.Fatalf("over the bounds: %d bytes, %d addresses", len(env.Subject), len(env.From))
		}
	})
}

func isValid(s string) bool { return bytes.Equal([]byte(strings.ToValidUTF8(s, "\uFFFD")), []byte(s)) }
