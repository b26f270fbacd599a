//go:build integration

package imap

// EXAMINE and UID FETCH ENVELOPE against real Cyrus 3.6: encoded-words,
// a group, a name needing a quoted string, and \Seen left alone. With
// -imap.capture FILE the server's bytes are written there (the source of
// testdata/cyrus36-envelope.txt).

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"cyrus-sidecar/e2e/lab"
)

var captureTo = flag.String("imap.capture", "", "write the server's bytes of TestEnvelopeCyrus to this file")

// teeConn records what the server sends.
type teeConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func TestEnvelopeCyrus(t *testing.T) {
	cy := lab.StartCyrus(t, lab.CyrusOptions{Users: map[string]string{"alice": "alice-pw"}})
	cy.CreateMailbox(t, "alice")
	msgs := []string{
		"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@outside.example>\r\n" +
			"To: Alice <alice@example.com>, undisclosed-recipients:;\r\n" +
			"Cc: Team: bob@example.com, \"Carol, C.\" <carol@example.com>;\r\n" +
			"Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?= and \"quotes\"\r\n" +
			"Date: Sun, 22 Nov 2026 02:34:52 +0100\r\n" +
			"Message-ID: <envelope.1@lab>\r\n\r\nbody\r\n",
		"From: plain@outside.example\r\nSubject: =?ISO-8859-1?Q?caf=E9?=\r\nMessage-ID: <envelope.2@lab>\r\n\r\nbody\r\n",
		"Subject: no sender\r\n\r\nbody\r\n",
	}
	for _, m := range msgs {
		for _, r := range cy.Deliver(t, "x@outside.example", []string{"alice"}, []byte(m)) {
			if !strings.HasPrefix(r, "250") {
				t.Fatalf("lmtp: %s", r)
			}
		}
	}
	conn, err := net.Dial("tcp", cy.IMAPAddr)
	if err != nil {
		t.Fatal(err)
	}
	tee := &teeConn{Conn: conn}
	c, err := NewClient(t.Context(), tee, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.AuthenticatePlain(t.Context(), "alice", cy.Admin, cy.AdminPassword); err != nil {
		t.Fatal(err)
	}
	uv, err := c.Examine(t.Context(), "INBOX")
	if err != nil || uv == 0 {
		t.Fatalf("Examine = %d, %v", uv, err)
	}
	envs, err := c.UIDFetchEnvelope(t.Context(), "1:4", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != 3 {
		t.Fatalf("got %d envelopes, want 3: %+v", len(envs), envs)
	}
	e := envs[0]
	if e.UID != 1 || e.Subject != `Grüße aus Köln and "quotes"` || e.MessageID != "<envelope.1@lab>" ||
		e.Date != "Sun, 22 Nov 2026 02:34:52 +0100" || len(e.From) != 1 || e.From[0].String() != "Jürgen Müller <juergen@outside.example>" {
		t.Errorf("envelope 1 = %+v", e)
	}
	var cc []string
	for _, a := range e.Cc {
		cc = append(cc, a.String())
	}
	if !slices.Equal(cc, []string{"bob@example.com", "Carol, C. <carol@example.com>"}) || len(e.To) != 1 {
		t.Errorf("envelope 1: to %v cc %q", e.To, cc)
	}
	if envs[1].Subject != "café" || envs[1].From[0].String() != "plain@outside.example" || envs[2].Subject != "no sender" {
		t.Errorf("envelopes 2, 3 = %+v", envs[1:])
	}
	// EXAMINE is read-only: FETCH ENVELOPE set no \Seen (RFC 3501 §6.3.2).
	if _, err := c.UIDFetchEnvelope(t.Context(), "999", 10); err != nil {
		t.Errorf("fetch of an absent UID: %v", err)
	}
	if err := c.Logout(t.Context()); err != nil {
		t.Error(err)
	}
	adm := lab.DialIMAP(t, cy.IMAPAddr)
	adm.Login(t, "alice", "alice-pw")
	r := adm.Cmd(t, "STATUS INBOX (UNSEEN)")
	if !r.OK() || len(r.Untagged) != 1 || !strings.Contains(r.Untagged[0].Text, "UNSEEN 3") {
		t.Errorf("STATUS after the fetch: %+v", r)
	}
	adm.Logout(t)
	if *captureTo != "" {
		tee.mu.Lock()
		defer tee.mu.Unlock()
		if err := os.WriteFile(*captureTo, tee.buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Println("captured", tee.buf.Len(), "bytes")
	}
}
