//go:build integration

package lmtp

// Faults and smuggling against real Cyrus 3.6 (e2e/lab). The proxy is
// driven with raw LMTP (exact bytes: bare CR and LF, unstuffed dots, exact
// BDAT chunks); Cyrus is reached directly or through faultRelay, which cuts,
// stalls or slows the connection; mailboxes are read back over IMAP. The
// promise under test (docs/lmtp.md): nothing is answered 250 before Cyrus
// stored the message, Cyrus never holds part of a message, and nothing a
// client sends as message content reaches Cyrus as a command.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/store"
)

const (
	// faultIO bounds every read and write on the test's own connections.
	faultIO = 10 * time.Second
	// faultSender is outside every organisation: deliveries carry
	// "X-Sidecar-Sender-Relation: external".
	faultSender = "sender@outside.example"
	// faultGrace is labProxy's shutdown grace.
	faultGrace = 3 * time.Second
)

func TestFaultCyrusSocketMissing(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	p := faultProxy(t, st, c, "unix:"+filepath.Join(t.TempDir(), "no-such-socket"), nil)
	before := faultUIDNext(t, cy)
	deferred, failed := metricDelta(recipients.WithLabelValues("deferred")), metricDelta(cyrusRequest("deliver", "error"))
	cl := faultDial(t, p, true)
	rcpts := []string{"alice@example.com", "carol@partner.org"}
	for _, mode := range []string{"DATA", "BDAT"} {
		cl.expect("RSET\r\n", "250")
		cl.envelope(rcpts...)
		got := cl.message(mode, faultMsg("socket missing "+mode, "hello\r\n"), len(rcpts))
		for i, r := range got {
			if !strings.HasPrefix(r, "451 4.4.") || !strings.Contains(r, "<"+rcpts[i]+">") {
				t.Errorf("%s, Cyrus socket missing: reply %d = %q, want 451 4.4.x for %s", mode, i+1, r, rcpts[i])
			}
		}
	}
	faultUnchanged(t, cy, before, "Cyrus socket missing")
	// Each message: two recipients deferred; a transaction per recipient
	// (one_rcpt_per_transaction), each failing to reach Cyrus.
	if n := deferred(); n != 4 {
		t.Errorf("recipients_total{result=\"deferred\"} went up by %v, want 4", n)
	}
	if n := failed(); n != 4 {
		t.Errorf("cyrus_requests_total{service=\"lmtp\",op=\"deliver\",result=\"error\"} went up by %v, want 4", n)
	}
}

func TestFaultCyrusDiesMidData(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	rcpts := []string{"alice@example.com", "carol@partner.org"}
	for _, one := range []bool{true, false} {
		t.Run(fmt.Sprintf("one_recipient_per_transaction=%v", one), func(t *testing.T) {
			r := faultStartRelay(t, cy.LMTPSocket, faultRelayOpts{cutAfterBody: 64 << 10})
			p := faultProxy(t, st, c, "unix:"+r.sock, func(cfg *Config) { cfg.OneRecipient = one })
			before := faultUIDNext(t, cy)
			cl := faultDial(t, p, true)
			cl.envelope(rcpts...)
			got := cl.message("DATA", faultMsg("cut mid-body", faultFiller(1<<20)), len(rcpts))
			for i, rep := range got {
				if !strings.HasPrefix(rep, "451 4.4.") {
					t.Errorf("Cyrus gone after 64 KiB of the body: reply %d = %q, want 451 4.4.x", i+1, rep)
				}
			}
			// One Cyrus transaction per recipient, or one for both.
			wantCuts := int32(1)
			if one {
				wantCuts = int32(len(rcpts))
			}
			if n := r.cuts.Load(); n != wantCuts {
				t.Errorf("the relay cut %d transactions, want %d", n, wantCuts)
			}
			faultUnchanged(t, cy, before, "Cyrus gone mid-body")
		})
	}

	// Cyrus stored the message for all three and the connection broke
	// after the first verdict came back: that verdict is relayed, the
	// others are unknown and deferred (RFC 2033 §4.2; a retry duplicates,
	// which is allowed, a loss is not).
	t.Run("cut after the first of three verdicts", func(t *testing.T) {
		r := faultStartRelay(t, cy.LMTPSocket, faultRelayOpts{cutAfterFinals: 1})
		p := faultProxy(t, st, c, "unix:"+r.sock, func(cfg *Config) { cfg.OneRecipient = false })
		three := []string{"alice@example.com", "carol@partner.org", "alice+x@example.com"}
		aliceBefore, carolBefore := len(faultMessages(t, cy, "alice")), len(faultMessages(t, cy, "carol@partner.org"))
		cl := faultDial(t, p, true)
		cl.envelope(three...)
		msg := faultMsg("three verdicts", "hello\r\n")
		got := cl.message("DATA", msg, len(three))
		if !strings.HasPrefix(got[0], "250 2.1.5 <alice@example.com>") {
			t.Errorf("first recipient: %q, want Cyrus's 250 2.1.5", got[0])
		}
		for i, rep := range got[1:] {
			if !strings.HasPrefix(rep, "451 4.4.") {
				t.Errorf("recipient %d, no verdict from Cyrus: %q, want 451 4.4.x", i+2, rep)
			}
		}
		if n := r.cuts.Load(); n != 1 {
			t.Errorf("the relay cut %d times, want 1", n)
		}
		// Whatever Cyrus kept is the whole message.
		for _, m := range faultMessages(t, cy, "alice")[aliceBefore:] {
			faultStored(t, m, msg)
		}
		for _, m := range faultMessages(t, cy, "carol@partner.org")[carolBefore:] {
			faultStored(t, m, msg)
		}
	})
}

func TestFaultCyrusStalls(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)

	t.Run("after the final dot", func(t *testing.T) {
		r := faultStartRelay(t, cy.LMTPSocket, faultRelayOpts{swallowFinals: true})
		p := faultProxy(t, st, c, "unix:"+r.sock, func(cfg *Config) { cfg.CyrusFinalTimeout = time.Second })
		before := len(faultMessages(t, cy, "alice"))
		cl := faultDial(t, p, true)
		cl.envelope("alice@example.com")
		msg := faultMsg("stall after the dot", "hello\r\n")
		start := time.Now()
		got := cl.message("DATA", msg, 1)
		if d := time.Since(start); !strings.HasPrefix(got[0], "451 4.4.") || d > 5*time.Second {
			t.Errorf("Cyrus silent after the dot: %q after %v, want 451 4.4.x within 5s", got[0], d.Round(time.Millisecond))
		}
		// Cyrus had the dot, so it may well have stored it: a duplicate
		// after the retry, never a part.
		for _, m := range faultMessages(t, cy, "alice")[before:] {
			faultStored(t, m, msg)
		}
	})

	t.Run("at MAIL", func(t *testing.T) {
		r := faultStartRelay(t, cy.LMTPSocket, faultRelayOpts{swallowAfterMail: true})
		p := faultProxy(t, st, c, "unix:"+r.sock, func(cfg *Config) { cfg.CyrusCommandTimeout = time.Second })
		before := faultUIDNext(t, cy)
		cl := faultDial(t, p, true)
		cl.envelope("alice@example.com")
		start := time.Now()
		got := cl.message("DATA", faultMsg("stall at MAIL", "hello\r\n"), 1)
		if d := time.Since(start); !strings.HasPrefix(got[0], "451 4.4.") || d > 5*time.Second {
			t.Errorf("Cyrus silent after MAIL: %q after %v, want 451 4.4.x within 5s", got[0], d.Round(time.Millisecond))
		}
		if r.mails.Load() == 0 {
			t.Error("the relay saw no MAIL: the stall was never exercised")
		}
		faultUnchanged(t, cy, before, "Cyrus silent after MAIL")
	})
}

// faultStore is the real store while ok, and a real store that has been
// closed while broken, so that lookups fail inside the store's own code as
// in socketmap's tests. A switch rather than a real lock: in WAL mode
// SQLite lets readers through a writer's lock, and locking_mode=EXCLUSIVE
// would cost the 5 s busy_timeout on every lookup.
type faultStore struct {
	ok, closed *store.Store
	broken     atomic.Bool
}

func (f *faultStore) cur() *store.Store {
	if f.broken.Load() {
		return f.closed
	}
	return f.ok
}

func (f *faultStore) Generation(ctx context.Context) (int64, error) { return f.cur().Generation(ctx) }
func (f *faultStore) Resolve(ctx context.Context, c store.Canon, a store.Address) (store.Resolution, error) {
	return f.cur().Resolve(ctx, c, a)
}
func (f *faultStore) Domain(ctx context.Context, name string) (store.Domain, error) {
	return f.cur().Domain(ctx, name)
}

func TestFaultStoreTrouble(t *testing.T) {
	st, c := labStore(t)
	closed, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "closed.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	fs := &faultStore{ok: st, closed: closed}
	cy := labCyrus(t)
	p := faultProxy(t, fs, c, "unix:"+cy.LMTPSocket, nil)
	before := faultUIDNext(t, cy)
	cl := faultDial(t, p, true)

	cl.expect("MAIL FROM:<"+faultSender+">\r\n", "250")
	cl.expect("RCPT TO:<alice@example.com>\r\n", "250") // now in the cache
	fs.broken.Store(true)
	// Cached, uncached and unknown names alike: a temporary failure,
	// never a 5xx (Exim caches negative callouts for hours).
	for _, rcpt := range []string{"alice@example.com", "carol@partner.org", "nobody@example.com"} {
		cl.expect("RCPT TO:<"+rcpt+">\r\n", "451 4.3.0")
	}
	fs.broken.Store(false)
	cl.expect("RCPT TO:<carol@partner.org>\r\n", "250")
	cl.expect("RCPT TO:<nobody@example.com>\r\n", "550 5.1.1")

	// Trouble between RCPT and the end of the message (the sender's
	// relation is looked up then): every recipient deferred.
	fs.broken.Store(true)
	got := cl.message("DATA", faultMsg("store trouble", "hello\r\n"), 2)
	for i, r := range got {
		if !strings.HasPrefix(r, "451 4.3.0") {
			t.Errorf("store failing at the end of DATA: reply %d = %q, want 451 4.3.0", i+1, r)
		}
	}
	fs.broken.Store(false)
	faultUnchanged(t, cy, before, "store failing")

	cl.envelope("alice@example.com")
	msg := faultMsg("after store trouble", "hello\r\n")
	if got := cl.message("BDAT", msg, 1); !strings.HasPrefix(got[0], "250 2.1.5") {
		t.Errorf("after recovery: %q, want 250 2.1.5", got[0])
	}
	if msgs := faultMessages(t, cy, "alice"); len(msgs) != 1 {
		t.Errorf("alice has %d messages after recovery, want 1", len(msgs))
	} else {
		faultStored(t, msgs[0], msg)
	}
}

// faultCase is one message of the smuggling corpus.
type faultCase struct {
	name     string
	msg      string // as the client sends it; DATA's end marker follows
	split    int    // the fake end (or bare line end) starts here: BDAT chunks break inside it
	bdatOnly bool   // the bytes hold DATA's real end marker
}

// faultCorpus builds the corpus with fresh Message-IDs. Each fake end is
// followed by a transaction for full (over quota, hence IGNOREQUOTA) and
// alice: had Cyrus taken it as commands, full's mailbox would move and
// alice would have two new messages.
func faultCorpus() []faultCase {
	payload := func() string {
		return "MAIL FROM:<x@y>\r\nRCPT TO:<full@example.com> IGNOREQUOTA\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n" +
			"Subject: smuggled\r\nMessage-ID: <" + rand.Text() + "@smuggled.test>\r\n\r\nsmuggled body\r\n"
	}
	inBody := func(name, fake string) faultCase {
		prefix := faultMsg("smuggling: "+name, "first line")
		return faultCase{name: name, msg: prefix + fake + payload(), split: len(prefix)}
	}
	inHeader := func(name, bare, fake string) faultCase {
		prefix := "From: " + faultSender + "\r\nTo: alice@example.com\r\nSubject: x"
		rest := "Bcc: full@example.com\r\n" + faultIDs() + "\r\nfirst line" + fake + payload()
		return faultCase{name: name, msg: prefix + bare + rest, split: len(prefix)}
	}
	dotLine := inBody("dot line", "\r\n.\r\n")
	dotLine.bdatOnly = true
	return []faultCase{
		inBody("LF dot LF", "\n.\n"),
		inBody("LF dot CRLF", "\n.\r\n"),
		inBody("CRLF dot LF", "\r\n.\n"),
		inBody("CRLF CR dot CRLF", "\r\n\r.\r\n"),
		inBody("CR dot CRLF", "\r.\r\n"),
		inBody("dot CR runs", "\r\n.\r.\r.\r\n"),
		// Over DATA go-smtp drops this dot and CR as one (faultFrontDATA):
		// strict mode never sees the bare CR, and delivers the rest.
		inBody("dot CR at a line start", "\r\n.\r"),
		inBody("dot CR CRLF", "\r\n.\r\r\n"),
		inHeader("bare CR in a header", "\r", "\r\n\r.\r\n"),
		inHeader("bare LF in a header", "\n", "\n.\n"),
		dotLine,
	}
}

func TestSmugglingCorpus(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	faultPayloadIsLive(t, cy)
	for _, endings := range []string{"strict", "lenient"} {
		p := faultProxy(t, st, c, "unix:"+cy.LMTPSocket, func(cfg *Config) { cfg.LineEndings = endings })
		for _, mode := range []string{"DATA", "BDAT"} {
			t.Run(endings+"/"+mode, func(t *testing.T) {
				conn := faultDial(t, p, true) // one connection for the whole corpus
				seen := faultTally{
					alice: len(faultMessages(t, cy, "alice")),
					carol: len(faultMessages(t, cy, "carol@partner.org")),
					full:  faultUIDNext(t, cy, "full")["full"],
				}
				for _, tc := range faultCorpus() {
					if tc.bdatOnly && mode == "DATA" {
						continue
					}
					t.Run(tc.name, func(t *testing.T) {
						faultSmuggle(t, cy, conn.on(t), &seen, mode, endings == "lenient", tc)
					})
				}
			})
		}
	}
}

// faultTally is what the corpus has left in Cyrus so far: alice's and
// carol's message counts, full's UIDNEXT (which must never move).
type faultTally struct{ alice, carol, full int }

// faultSmuggle sends one corpus message to alice and carol, then a normal
// message on the same connection, and checks what Cyrus stored.
func faultSmuggle(t *testing.T, cy *lab.Cyrus, cl *faultClient, seen *faultTally, mode string, lenient bool, tc faultCase) {

	// What the proxy is handed, and what it should make of it.
	front := tc.msg
	wire := tc.msg + ".\r\n"
	if mode == "DATA" {
		var n int
		if front, n = faultFrontDATA(wire); n != len(wire) {
			t.Fatalf("the case holds an end of DATA at byte %d", n)
		}
	}
	want, bareCR := faultNormalise(front, lenient)
	refused := bareCR && !lenient

	rcpts := []string{"alice@example.com", "carol@partner.org"}
	cl.expect("RSET\r\n", "250")
	cl.envelope(rcpts...)
	var got []string
	if mode == "DATA" {
		got = cl.data(wire, len(rcpts))
	} else {
		i := tc.split
		got = cl.bdat(len(rcpts), tc.msg[:i+1], tc.msg[i+1:i+3], tc.msg[i+3:], "")
	}
	for i, r := range got {
		if refused && !strings.HasPrefix(r, "554 5.6.0") || !refused && !strings.HasPrefix(r, "250 2.1.5") {
			t.Errorf("reply %d = %q; want %s", i+1, r, map[bool]string{true: "554 5.6.0 (bare CR)", false: "250 2.1.5"}[refused])
		}
	}

	// The connection goes on: the next transaction is delivered.
	normal := faultMsg("after "+tc.name, "normal\r\n")
	cl.envelope("alice@example.com")
	if r := cl.message(mode, normal, 1); !strings.HasPrefix(r[0], "250 2.1.5") {
		t.Errorf("next transaction on the connection: %q, want 250 2.1.5", r[0])
	}

	// Exactly one transaction per recipient in Cyrus, the whole message.
	wantNew := 1
	if refused {
		wantNew = 0
	}
	if full := faultUIDNext(t, cy, "full")["full"]; full != seen.full {
		t.Errorf("full's mailbox moved (UIDNEXT %d -> %d): the payload ran as commands in Cyrus", seen.full, full)
		seen.full = full
	}
	alice, carol := faultMessages(t, cy, "alice"), faultMessages(t, cy, "carol@partner.org")
	newAlice, newCarol := alice[seen.alice:], carol[seen.carol:]
	seen.alice, seen.carol = len(alice), len(carol)
	if len(newAlice) != wantNew+1 || len(newCarol) != wantNew {
		t.Fatalf("new messages: alice %d, carol %d; want %d and %d", len(newAlice), len(newCarol), wantNew+1, wantNew)
	}
	if wantNew == 1 {
		faultStored(t, newAlice[0], want)
		faultStored(t, newCarol[0], want)
	}
	faultStored(t, newAlice[len(newAlice)-1], normal)
}

// faultPayloadIsLive shows that the corpus's payload, were it ever read as
// commands by Cyrus, would change full's mailbox: the check above can fail.
func faultPayloadIsLive(t *testing.T, cy *lab.Cyrus) {
	t.Helper()
	before := faultUIDNext(t, cy, "full")["full"]
	conn, err := net.DialTimeout("unix", cy.LMTPSocket, faultIO)
	if err != nil {
		t.Fatal(err)
	}
	cl := &faultClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	defer conn.Close()
	cl.expect("", "220")
	cl.expect("LHLO control\r\n", "250")
	cl.send("MAIL FROM:<x@y>\r\nRCPT TO:<full@example.com> IGNOREQUOTA\r\nDATA\r\nSubject: control\r\nMessage-ID: <" +
		rand.Text() + "@smuggled.test>\r\n\r\nsmuggled body\r\n.\r\n")
	for _, want := range []string{"250", "250", "354", "250"} {
		cl.expect("", want)
	}
	if after := faultUIDNext(t, cy, "full")["full"]; after != before+1 {
		t.Fatalf("the payload sent to Cyrus directly: full's UIDNEXT %d -> %d, want +1", before, after)
	}
}

func TestSmugglingDotStuffing(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	p := faultProxy(t, st, c, "unix:"+cy.LMTPSocket, nil)
	cl := faultDial(t, p, true)
	// At 32 KiB the proxy's reads of the spooled body break (bodyChunk),
	// and so do the BDAT chunks sent here: a dot that starts a line there,
	// and a CRLF split there, must keep their meaning across the break.
	for _, tc := range []struct {
		name     string
		body     func(head string) string // the message, given its header section
		chunks   []int                    // BDAT chunk boundaries
		bdatOnly bool                     // the message does not end in CRLF
	}{
		{name: "dot lines", body: func(h string) string { return h + ".\r\n..\r\n.x\r\n .\r\n...\r\nend\r\n" }, chunks: []int{1, -11, -10, -9}},
		{name: "dot as the last line", body: func(h string) string { return h + "text\r\n.\r\n" }, chunks: []int{-3}},
		{name: "dot at the end without CRLF", body: func(h string) string { return h + "text\r\n." }, chunks: []int{-1}, bdatOnly: true},
		{name: "dot at a read break", body: func(h string) string { return faultPad(h, bodyChunk) + ".\r\n.x\r\nend\r\n" }, chunks: []int{bodyChunk}},
		{name: "CRLF split at a read break", body: func(h string) string { return faultPad(h, bodyChunk+1) + ".\r\nend\r\n" }, chunks: []int{bodyChunk}},
	} {
		for _, mode := range []string{"DATA", "BDAT"} {
			if tc.bdatOnly && mode == "DATA" {
				continue
			}
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				cl := cl.on(t)
				msg := tc.body(faultMsg("dots: "+tc.name, ""))
				want := msg
				if !strings.HasSuffix(msg, "\r\n") {
					want += "\r\n"
				}
				before := len(faultMessages(t, cy, "alice"))
				cl.envelope("alice@example.com")
				var got []string
				if mode == "DATA" {
					got = cl.data(faultWire(msg), 1)
				} else {
					got = cl.bdat(1, faultChunks(msg, tc.chunks...)...)
				}
				if !strings.HasPrefix(got[0], "250 2.1.5") {
					t.Fatalf("reply %q, want 250 2.1.5", got[0])
				}
				msgs := faultMessages(t, cy, "alice")[before:]
				if len(msgs) != 1 {
					t.Fatalf("%d new messages, want 1", len(msgs))
				}
				faultStored(t, msgs[0], want)
			})
		}
	}
}

func TestSmugglingLongLines(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	p := faultProxy(t, st, c, "unix:"+cy.LMTPSocket, nil) // max_line_length 8000, CRLF included
	line := func(n int, tail string) string { return strings.Repeat("A", n) + tail }
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"2001 bytes", line(2001, "\r\n"), true}, // over go-smtp's default 2000
		{"7998 bytes, the limit", line(7998, "\r\n"), true},
		{"7990 A then dot", line(7990, ".\r\n"), true},
		{"7990 A then dot dot X", line(7990, "..X\r\n"), true},
		{"7999 bytes", line(7999, "\r\n"), false},
		{"8001 bytes", line(8001, "\r\n"), false},
	} {
		for _, mode := range []string{"DATA", "BDAT"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				msg := faultMsg("long line "+tc.name, "before\r\n"+tc.body+"after\r\n")
				rcpts := []string{"alice@example.com", "carol@partner.org"}
				uids := faultUIDNext(t, cy)
				aliceBefore := len(faultMessages(t, cy, "alice"))
				cl := faultDial(t, p, true)
				cl.envelope(rcpts...)
				got := cl.message(mode, msg, len(rcpts))
				if tc.ok {
					for i, r := range got {
						if !strings.HasPrefix(r, "250 2.1.5") {
							t.Errorf("reply %d = %q, want 250 2.1.5", i+1, r)
						}
					}
					msgs := faultMessages(t, cy, "alice")[aliceBefore:]
					if len(msgs) != 1 {
						t.Fatalf("%d new messages for alice, want 1", len(msgs))
					}
					faultStored(t, msgs[0], msg)
					return
				}
				for i, r := range got {
					if !strings.HasPrefix(r, "554 5.6.0") {
						t.Errorf("reply %d = %q, want 554 5.6.0", i+1, r)
					}
				}
				faultUnchanged(t, cy, uids, "over-long line")
				// Usable, or closed cleanly (go-smtp closes after a DATA
				// line over its own limit): never out of step.
				usable := cl.usable()
				if !usable && mode == "BDAT" {
					t.Error("connection closed after a BDAT line over the limit, want it usable")
				}
				t.Logf("connection usable afterwards: %v", usable)
			})
		}
	}
}

func TestFaultInboundAbort(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	// A transparent relay counts the MAIL commands Cyrus gets.
	r := faultStartRelay(t, cy.LMTPSocket, faultRelayOpts{})
	p := faultProxy(t, st, c, "unix:"+r.sock, func(cfg *Config) {
		cfg.DataTimeout = time.Second
		cfg.MinDataRate = 1 << 30 // the whole message within DataTimeout
	})
	big := faultMsg("aborted", faultFiller(200<<10))
	for _, tc := range []struct {
		name string
		send func(cl *faultClient)
	}{
		{"DATA, client gone mid-message", func(cl *faultClient) {
			cl.expect("DATA\r\n", "354")
			cl.send(big[:100<<10])
		}},
		{"BDAT, client gone mid-chunk", func(cl *faultClient) {
			cl.send(fmt.Sprintf("BDAT %d\r\n%s", len(big), big[:100<<10]))
		}},
		{"BDAT LAST, client gone mid-chunk", func(cl *faultClient) {
			cl.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(big), big[:100<<10]))
		}},
		{"BDAT, client gone between chunks", func(cl *faultClient) {
			cl.send(fmt.Sprintf("BDAT %d\r\n%s", 100<<10, big[:100<<10]))
			cl.expect("", "250")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uids := faultUIDNext(t, cy)
			aliceBefore := len(faultMessages(t, cy, "alice"))
			mails := r.mails.Load()
			cl := faultDial(t, p, true)
			cl.envelope("alice@example.com")
			tc.send(cl)
			cl.hangUp()
			if n := r.mails.Load() - mails; n != 0 {
				t.Errorf("Cyrus got %d MAIL commands after the client went away mid-message, want 0", n)
			}
			faultUnchanged(t, cy, uids, tc.name)
			for _, m := range faultMessages(t, cy, "alice")[aliceBefore:] {
				t.Errorf("Cyrus stored %d bytes of a %d-byte message, its end %q", len(m), len(big), m[max(0, len(m)-40):])
			}
		})
	}

	t.Run("RSET between BDAT chunks", func(t *testing.T) {
		before := len(faultMessages(t, cy, "alice"))
		mails := r.mails.Load()
		cl := faultDial(t, p, true)
		cl.envelope("alice@example.com")
		cl.send("BDAT 10\r\nSubject: x")
		cl.expect("", "250")
		// RSET mid-BDAT ends the connection (session.Reset: go-smtp
		// would race between the aborted and the next BDAT); the aborted
		// part reaches nobody, and a new connection works.
		cl.expect("RSET\r\n", "421 4.5.0")
		if n := r.mails.Load() - mails; n != 0 {
			t.Errorf("Cyrus got %d MAIL commands for the aborted BDAT, want 0", n)
		}
		cl.conn.Close()
		cl = faultDial(t, p, true)
		cl.envelope("alice@example.com")
		msg := faultMsg("after RSET", "hello\r\n")
		if got := cl.message("BDAT", msg, 1); !strings.HasPrefix(got[0], "250 2.1.5") {
			t.Errorf("transaction after RSET: %q, want 250 2.1.5", got[0])
		}
		if n := r.mails.Load() - mails; n != 1 {
			t.Errorf("Cyrus got %d MAIL commands, want 1 (the transaction after RSET)", n)
		}
		msgs := faultMessages(t, cy, "alice")[before:]
		if len(msgs) != 1 {
			t.Fatalf("%d new messages, want 1", len(msgs))
		}
		faultStored(t, msgs[0], msg)
		cl.conn.Close()
	})

	// The client stalls past data_timeout, then sends the rest, which
	// holds a transaction: it is message content, and must never run as
	// commands, whatever the proxy answered.
	for _, mode := range []string{"DATA", "BDAT"} {
		t.Run("timeout/"+mode, func(t *testing.T) {
			uids := faultUIDNext(t, cy)
			mails := r.mails.Load()
			cl := faultDial(t, p, true)
			cl.envelope("alice@example.com")
			first := faultMsg("timeout "+mode, "first part\r\n")
			rest := "RSET\r\nMAIL FROM:<x@y>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
			if mode == "DATA" {
				cl.expect("DATA\r\n", "354")
				cl.send(first)
			} else {
				cl.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(first)+len(rest), first))
			}
			start := time.Now()
			rep, err := cl.readWithin(5 * time.Second)
			switch {
			case err == nil && (strings.HasPrefix(rep, "451 ") || strings.HasPrefix(rep, "421 ")):
			case err != nil && faultIsClosed(err):
				rep = "connection closed"
			default:
				t.Errorf("stalled past data_timeout (1s): %q, %v after %v; want 451, or 421 and a close",
					rep, err, time.Since(start).Round(time.Millisecond))
			}
			t.Logf("stalled past data_timeout: %q after %v", rep, time.Since(start).Round(time.Millisecond))
			var later []string
			if cl.write(rest) == nil {
				for {
					rep, err := cl.readWithin(2 * time.Second)
					if err != nil {
						break
					}
					later = append(later, rep)
				}
			}
			cl.hangUp()
			if n := r.mails.Load() - mails; n != 0 {
				t.Errorf("Cyrus got %d MAIL commands; the rest of the message ran as commands (replies %q)", n, later)
			} else if len(later) > 0 {
				t.Errorf("the rest of the message was answered as commands: %q", later)
			}
			faultUnchanged(t, cy, uids, "timeout")
		})
	}
}

func TestFaultShutdownMidDelivery(t *testing.T) {
	st, c := labStore(t)
	cy := labCyrus(t)
	// The relay lets the body through at about 200 KiB/s.
	const pace = 20 * time.Millisecond
	for _, tc := range []struct {
		name string
		size int
	}{
		{"finishes within the grace", 150 << 10},
		{"too slow for the grace", 2 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := faultStartRelay(t, cy.LMTPSocket, faultRelayOpts{pace: pace})
			p := faultProxy(t, st, c, "unix:"+r.sock, nil)
			before := faultUIDNext(t, cy)
			aliceBefore := len(faultMessages(t, cy, "alice"))
			idle := faultDial(t, p, true)    // between transactions
			silent := faultDial(t, p, false) // not even LHLO
			cl := faultDial(t, p, true)
			cl.envelope("alice@example.com")
			msg := faultMsg("shutdown "+tc.name, faultFiller(tc.size))
			cl.expect("DATA\r\n", "354")
			cl.send(faultWire(msg))
			select {
			case <-r.bodySeen:
			case <-time.After(faultIO):
				t.Fatal("the delivery never reached Cyrus")
			}

			// What serve does on SIGTERM.
			start := time.Now()
			stopped := make(chan struct{})
			go func() { p.stop(); close(stopped) }()
			// The idle connections are watched meanwhile.
			type closing struct {
				name   string
				closed bool
				at     time.Duration
			}
			idled := make(chan closing, 2)
			for name, ic := range map[string]*faultClient{"idle after LHLO": idle, "idle before LHLO": silent} {
				go func() {
					closed := ic.closedWithin(faultGrace + time.Second)
					idled <- closing{name, closed, time.Since(start)}
				}()
			}
			defer func() {
				for range 2 {
					ic := <-idled
					if !ic.closed || ic.at > time.Second {
						t.Errorf("%s connection at shutdown: closed %v, %v after the cancel; want closed within 1s",
							ic.name, ic.closed, ic.at.Round(time.Millisecond))
					}
				}
			}()

			rep, err := cl.readWithin(faultIO)
			at := time.Since(start)
			msgs := faultMessages(t, cy, "alice")[aliceBefore:]
			switch {
			case err == nil && strings.HasPrefix(rep, "250 "):
				t.Logf("delivered, 250 after %v", at.Round(time.Millisecond))
				if len(msgs) != 1 {
					t.Fatalf("250 with %d new messages, want 1", len(msgs))
				}
				faultStored(t, msgs[0], msg)
				// Its transaction over, the session ends now.
				ended := time.Now()
				if closed := cl.closedWithin(faultGrace + time.Second); !closed || time.Since(ended) > time.Second {
					t.Errorf("after its transaction, during shutdown: closed %v, %v after the 250; want closed within 1s",
						closed, time.Since(ended).Round(time.Millisecond))
				}
			case err == nil && strings.HasPrefix(rep, "4"), err != nil && faultIsClosed(err):
				t.Logf("deferred (%q, %v) after %v", rep, err, at.Round(time.Millisecond))
			default:
				t.Errorf("at shutdown: %q, %v", rep, err)
			}
			select {
			case <-stopped:
			case <-time.After(time.Until(start.Add(faultGrace + 2*time.Second))):
				t.Errorf("Run still busy %v after the cancel (grace %v): the Cyrus transaction was not ended", time.Since(start).Round(time.Millisecond), faultGrace)
				r.cut() // let Run return: Cyrus loses the connection before the dot
				<-stopped
			}
			t.Logf("Run returned %v after the cancel", time.Since(start).Round(time.Millisecond))
			if !(err == nil && strings.HasPrefix(rep, "250 ")) {
				faultUnchanged(t, cy, before, "deferred at shutdown")
			}
		})
	}
}

// faultProxy is labProxy with short timeouts, so that a proxy gone wrong
// fails a test in seconds rather than minutes; mod applies after them.
func faultProxy(t testing.TB, st Store, c store.Canon, cyrusLMTP string, mod func(*Config)) *proxy {
	t.Helper()
	return labProxy(t, st, c, cyrusLMTP, func(cfg *Config) {
		cfg.CommandTimeout, cfg.DataTimeout = faultIO, faultIO
		cfg.CyrusCommandTimeout, cfg.CyrusFinalTimeout = 5*time.Second, 5*time.Second
		if mod != nil {
			mod(cfg)
		}
	})
}

// faultClient is a raw LMTP client: it writes exactly the bytes it is
// given, and reads replies as they come.
type faultClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

// faultDial connects to the proxy, reads the greeting and, with hello,
// sends LHLO. The connection is closed at cleanup.
func faultDial(t testing.TB, p *proxy, hello bool) *faultClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.Addr, faultIO)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &faultClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.expect("", "220 ")
	if hello {
		c.expect("LHLO client.example\r\n", "250")
	}
	return c
}

// on returns the client reporting to t (a subtest's), on the same
// connection.
func (c *faultClient) on(t testing.TB) *faultClient {
	d := *c
	d.t = t
	return &d
}

func (c *faultClient) write(s string) error {
	c.conn.SetWriteDeadline(time.Now().Add(faultIO))
	_, err := io.WriteString(c.conn, s)
	return err
}

func (c *faultClient) send(s string) {
	c.t.Helper()
	if err := c.write(s); err != nil {
		c.t.Fatalf("send %.40q: %v", s, err)
	}
}

// readWithin reads one reply, its lines joined by "\n", waiting at most d.
func (c *faultClient) readWithin(d time.Duration) (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(d))
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return strings.Join(append(lines, line), "\n"), err
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n"), nil
		}
	}
}

// expect sends cmd, if any, and wants a reply starting with want.
func (c *faultClient) expect(cmd, want string) string {
	c.t.Helper()
	if cmd != "" {
		c.send(cmd)
	}
	r, err := c.readWithin(faultIO)
	if err != nil || !strings.HasPrefix(r, want) {
		c.t.Fatalf("%.60q: reply %q, %v; want %q", cmd, r, err, want)
	}
	return r
}

// replies reads one reply per recipient (RFC 2033 §4.2).
func (c *faultClient) replies(n int) []string {
	c.t.Helper()
	out := make([]string, n)
	for i := range out {
		r, err := c.readWithin(faultIO)
		if err != nil {
			c.t.Fatalf("reply %d of %d: %q, %v", i+1, n, r, err)
		}
		out[i] = r
	}
	return out
}

// envelope sends MAIL FROM:<faultSender> and the RCPTs, each wanting 250.
func (c *faultClient) envelope(rcpts ...string) {
	c.t.Helper()
	c.expect("MAIL FROM:<"+faultSender+">\r\n", "250")
	for _, r := range rcpts {
		c.expect("RCPT TO:<"+r+">\r\n", "250")
	}
}

// data sends DATA, then wire as it is (the caller stuffs and ends it, or
// not).
func (c *faultClient) data(wire string, n int) []string {
	c.t.Helper()
	c.expect("DATA\r\n", "354")
	c.send(wire)
	return c.replies(n)
}

// bdat sends each chunk with its exact size, the last with LAST.
func (c *faultClient) bdat(n int, chunks ...string) []string {
	c.t.Helper()
	for _, ch := range chunks[:len(chunks)-1] {
		c.send(fmt.Sprintf("BDAT %d\r\n%s", len(ch), ch))
		c.expect("", "250")
	}
	last := chunks[len(chunks)-1]
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(last), last))
	return c.replies(n)
}

// message sends a well-formed msg the way a compliant client does: DATA
// stuffed and ended, or BDAT in one chunk.
func (c *faultClient) message(mode, msg string, n int) []string {
	c.t.Helper()
	if mode == "DATA" {
		return c.data(faultWire(msg), n)
	}
	return c.bdat(n, msg)
}

// usable reports whether the connection still takes commands; false if the
// proxy closes it (after a last reply such as go-smtp's "500 5.4.0 Too long
// line"). Out of step or silent fails the test.
func (c *faultClient) usable() bool {
	c.t.Helper()
	if c.write("NOOP\r\n") != nil {
		return false
	}
	for {
		r, err := c.readWithin(faultIO)
		switch {
		case err != nil && faultIsClosed(err):
			return false
		case err != nil:
			c.t.Fatalf("connection neither usable nor closed: %v", err)
		case strings.HasPrefix(r, "250"):
			return true
		case strings.HasPrefix(r, "421") || strings.HasPrefix(r, "500"):
			// a last word before the close
		default:
			c.t.Fatalf("connection out of step: %q after NOOP", r)
		}
	}
}

// hangUp is the client going away: it stops sending (the proxy reads
// EOF, as after a close) and waits for the proxy to close its side, which
// go-smtp does once the session, and any LMTPData it ran, is over. Still
// reading lets the test wait for that instead of guessing.
func (c *faultClient) hangUp() {
	c.t.Helper()
	if c.conn.(*net.TCPConn).CloseWrite() != nil {
		return // the proxy has closed already
	}
	if !c.closedWithin(faultIO) {
		c.t.Fatalf("the proxy kept the connection %v after the client stopped sending", faultIO)
	}
}

// closedWithin reads until the proxy closes the connection, at most d, and
// says whether it did.
func (c *faultClient) closedWithin(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if _, err := c.readWithin(time.Until(deadline)); err != nil {
			return faultIsClosed(err)
		}
	}
}

func faultIsClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// faultMsg is a message to alice with a fresh Message-ID (Cyrus drops a
// second delivery of one it has seen) and a Date (Cyrus adds one where
// there is none).
func faultMsg(subject, body string) string {
	return "From: " + faultSender + "\r\nTo: alice@example.com\r\nSubject: " + subject +
		"\r\n" + faultIDs() + "\r\n" + body
}

// faultIDs are the Message-ID and Date fields, each with its CRLF.
func faultIDs() string {
	return "Message-ID: <" + rand.Text() + "@faults.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
}

// faultFiller is about n bytes of 72-byte CRLF lines.
func faultFiller(n int) string {
	line := strings.Repeat("0123456789", 7) + "\r\n"
	return strings.Repeat(line, max(1, n/len(line)))
}

// faultPad appends CRLF lines to s up to exactly n bytes.
func faultPad(s string, n int) string {
	var b strings.Builder
	b.WriteString(s)
	for r := n - b.Len(); r > 0; r = n - b.Len() {
		k := min(r, 74) // bytes of this line with its CRLF
		if r-k == 1 {
			k-- // never leave one byte: no line is that short
		}
		b.WriteString(strings.Repeat("p", k-2) + "\r\n")
	}
	return b.String()
}

// faultChunks cuts msg at the given offsets, negative ones from the end.
func faultChunks(msg string, at ...int) []string {
	var out []string
	prev := 0
	for _, i := range at {
		if i < 0 {
			i += len(msg)
		}
		out = append(out, msg[prev:i])
		prev = i
	}
	return append(out, msg[prev:])
}

// faultWire is msg as a compliant client sends it after DATA: a dot
// doubled at each line start, a final CRLF, the end marker (RFC 5321
// §4.5.2).
func faultWire(msg string) string {
	var b strings.Builder
	for line := range strings.Lines(msg) {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	if msg != "" && !strings.HasSuffix(msg, "\r\n") {
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.String()
}

// faultFrontDATA is what the proxy's front half (go-smtp v0.25.1's
// dataReader, after net/textproto's) hands LMTPData for wire sent after
// DATA, and how many bytes of wire make up the message with its end
// marker. A dot at the start of a line is removed, and so is a CR right
// after it; only CRLF starts a line.
func faultFrontDATA(wire string) (string, int) {
	const (
		beginLine = iota
		dot
		dotCR
		cr
		data
	)
	var out []byte
	state := beginLine
	for i := 0; i < len(wire); i++ {
		c := wire[i]
		switch state {
		case beginLine:
			switch c {
			case '.':
				state = dot
				continue
			case '\r':
				state = cr
			default:
				state = data
			}
		case dot:
			if c == '\r' {
				state = dotCR
				continue
			}
			state = data
		case dotCR:
			if c == '\n' {
				return string(out), i + 1
			}
			state = data
		case cr:
			state = data
			if c == '\n' {
				state = beginLine
			}
		case data:
			if c == '\r' {
				state = cr
			}
		}
		out = append(out, c)
	}
	return string(out), len(wire)
}

// faultNormalise is the message the proxy should hand Cyrus: CRLF kept, a
// bare LF made CRLF, a bare CR dropped (reported: strict refuses it), and a
// CRLF after a last line without one.
func faultNormalise(s string, lenient bool) (string, bool) {
	var b strings.Builder
	bareCR := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\r' && i+1 < len(s) && s[i+1] == '\n':
			b.WriteString("\r\n")
			i++
		case c == '\r':
			bareCR = true
		case c == '\n':
			b.WriteString("\r\n")
		default:
			b.WriteByte(c)
		}
	}
	out := b.String()
	if out != "" && !strings.HasSuffix(out, "\r\n") {
		out += "\r\n"
	}
	return out, bareCR
}

// faultMessages returns user's INBOX, oldest first.
func faultMessages(t testing.TB, cy *lab.Cyrus, user string) [][]byte {
	t.Helper()
	return cy.Messages(t, user, labUsers[user])
}

// faultStored checks that got is what Cyrus stores for a delivery of want:
// the fields Cyrus puts on top, the proxy's relation field, then want byte
// for byte.
func faultStored(t testing.TB, got []byte, want string) {
	t.Helper()
	trace, rest, ok := strings.Cut(string(got), "X-Sidecar-Sender-Relation: external\r\n")
	if !ok || rest != want {
		t.Errorf("stored message differs:\n got %s\nwant %s", faultShort(string(got)), faultShort(want))
		return
	}
	for line := range strings.Lines(trace) {
		name, _, _ := strings.Cut(line, ":")
		switch {
		case line[0] == ' ' || line[0] == '\t':
		case name == "Return-Path" || name == "Received" || name == "X-Cyrus-Session-Id" || name == "X-Sieve":
		default:
			t.Errorf("stored message has %q above the relation field", line)
		}
	}
}

// faultShort quotes s, eliding the middle of a long one.
func faultShort(s string) string {
	if len(s) <= 800 {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%q ...(%d bytes)... %q", s[:400], len(s)-800, s[len(s)-400:])
}

// faultUIDNext returns the users' (default: every lab user's) INBOX
// UIDNEXT (RFC 3501 §6.3.10), asked as the user (the admin may not read
// it): it moves with every message Cyrus stores, even one removed since.
func faultUIDNext(t testing.TB, cy *lab.Cyrus, users ...string) map[string]int {
	t.Helper()
	if len(users) == 0 {
		for u := range labUsers {
			users = append(users, u)
		}
	}
	m := make(map[string]int)
	for _, u := range users {
		cl := lab.DialIMAP(t, cy.IMAPAddr)
		cl.Login(t, u, labUsers[u])
		r := cl.Cmd(t, "STATUS INBOX (UIDNEXT)")
		cl.Close()
		for _, x := range r.Untagged {
			if _, v, ok := strings.Cut(x.Text, "(UIDNEXT "); ok {
				m[u], _ = strconv.Atoi(strings.TrimSuffix(v, ")"))
			}
		}
		if !r.OK() || m[u] == 0 {
			t.Fatalf("imap STATUS %s: %s %v", u, r, r.Untagged)
		}
	}
	return m
}

// faultUnchanged fails unless every lab mailbox's UIDNEXT is as before.
func faultUnchanged(t testing.TB, cy *lab.Cyrus, before map[string]int, what string) {
	t.Helper()
	after := faultUIDNext(t, cy)
	for u, n := range before {
		if after[u] != n {
			t.Errorf("%s: Cyrus stored something for %s (UIDNEXT %d -> %d)", what, u, n, after[u])
		}
	}
}

// faultRelayOpts is how faultRelay misbehaves; the zero value forwards
// everything as it comes.
type faultRelayOpts struct {
	cutAfterBody     int64         // close both sides once this many body bytes reached Cyrus
	cutAfterFinals   int           // close both sides once this many replies to the final dot reached the proxy
	swallowFinals    bool          // keep Cyrus's replies to the final dot from the proxy
	swallowAfterMail bool          // keep every reply from the proxy once it sent MAIL
	pace             time.Duration // pause after every 4 KiB of body
}

// faultRelay stands between the proxy and Cyrus lmtpd: the proxy takes its
// UNIX socket for Cyrus's, and each connection is forwarded to the real
// one. It follows the transaction in the traffic: the body starts after
// Cyrus's 354 and ends with the proxy's CRLF.CRLF (every other dot is
// stuffed), and the replies after it are the verdicts.
type faultRelay struct {
	sock, target string
	opts         faultRelayOpts
	ln           net.Listener
	wg           sync.WaitGroup
	mu           sync.Mutex
	conns        map[net.Conn]struct{}
	mails        atomic.Int32 // MAIL commands the proxy sent
	cuts         atomic.Int32 // connections the relay cut on its own
	bodyOnce     sync.Once
	bodySeen     chan struct{} // closed at the first body byte
}

func faultStartRelay(t testing.TB, target string, opts faultRelayOpts) *faultRelay {
	t.Helper()
	r := &faultRelay{sock: filepath.Join(t.TempDir(), "relay.sock"), target: target, opts: opts,
		conns: make(map[net.Conn]struct{}), bodySeen: make(chan struct{})}
	ln, err := net.Listen("unix", r.sock)
	if err != nil {
		t.Fatal(err)
	}
	r.ln = ln
	r.wg.Go(r.accept)
	t.Cleanup(func() {
		ln.Close()
		r.cut()
		r.wg.Wait()
	})
	return r
}

func (r *faultRelay) accept() {
	for {
		down, err := r.ln.Accept()
		if err != nil {
			return // closed at cleanup
		}
		up, err := net.DialTimeout("unix", r.target, faultIO)
		if err != nil {
			down.Close()
			continue
		}
		r.mu.Lock()
		r.conns[down], r.conns[up] = struct{}{}, struct{}{}
		r.mu.Unlock()
		rc := &faultRelayConn{r: r, down: down, up: up}
		r.wg.Go(rc.toCyrus)
		r.wg.Go(rc.toProxy)
	}
}

// cut closes every connection, as lmtpd dying would.
func (r *faultRelay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
}

// Where a relayed connection is in its transaction.
const (
	relayCommands = iota
	relayBody
	relayVerdicts
)

type faultRelayConn struct {
	r        *faultRelay
	down, up net.Conn
	mu       sync.Mutex
	phase    int
	body     int64
	tail     string // the last 5 body bytes
	line     []byte // command line so far
	mailSent bool
	finals   int
}

func (rc *faultRelayConn) close(cut bool) {
	if cut {
		rc.r.cuts.Add(1)
	}
	rc.down.Close()
	rc.up.Close()
}

// toCyrus forwards what the proxy sends.
func (rc *faultRelayConn) toCyrus() {
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.down.Read(buf)
		if n > 0 && !rc.forward(buf[:n]) {
			return
		}
		if err != nil {
			rc.close(false)
			return
		}
	}
}

// forward passes bytes from the proxy on; false once the connection is
// gone.
func (rc *faultRelayConn) forward(p []byte) bool {
	o := rc.r.opts
	rc.mu.Lock()
	if rc.phase == relayVerdicts {
		rc.phase = relayCommands // the next transaction
	}
	phase := rc.phase
	if phase == relayCommands {
		for _, b := range p {
			rc.line = append(rc.line, b)
			if b == '\n' {
				if bytes.HasPrefix(bytes.ToUpper(rc.line), []byte("MAIL FROM:")) {
					rc.r.mails.Add(1)
					rc.mailSent = true
				}
				rc.line = rc.line[:0]
			}
		}
	}
	rc.mu.Unlock()
	if phase == relayCommands {
		_, err := rc.up.Write(p)
		return err == nil
	}
	rc.r.bodyOnce.Do(func() { close(rc.r.bodySeen) })
	for len(p) > 0 {
		piece := p
		if o.pace > 0 {
			piece = p[:min(len(p), 4<<10)]
		}
		p = p[len(piece):]
		rc.mu.Lock()
		sent := rc.body
		rc.body += int64(len(piece))
		rc.tail = (rc.tail + string(piece[max(0, len(piece)-5):]))
		rc.tail = rc.tail[max(0, len(rc.tail)-5):]
		if rc.tail == "\r\n.\r\n" {
			rc.phase, rc.finals = relayVerdicts, 0
		}
		rc.mu.Unlock()
		if o.cutAfterBody > 0 && sent+int64(len(piece)) >= o.cutAfterBody {
			rc.up.Write(piece[:o.cutAfterBody-sent])
			rc.close(true)
			return false
		}
		if _, err := rc.up.Write(piece); err != nil {
			return false
		}
		if o.pace > 0 {
			time.Sleep(o.pace)
		}
	}
	return true
}

// toProxy forwards Cyrus's replies, line by line.
func (rc *faultRelayConn) toProxy() {
	o := rc.r.opts
	br := bufio.NewReader(rc.up)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			rc.mu.Lock()
			pass := !(o.swallowAfterMail && rc.mailSent)
			cut := false
			if rc.phase == relayVerdicts {
				pass = pass && !o.swallowFinals
				if len(line) < 4 || line[3] != '-' {
					rc.finals++
					cut = o.cutAfterFinals > 0 && rc.finals == o.cutAfterFinals
				}
			}
			if bytes.HasPrefix(line, []byte("354")) {
				rc.phase, rc.body, rc.tail = relayBody, 0, "\r\n"
			}
			rc.mu.Unlock()
			if pass {
				if _, werr := rc.down.Write(line); werr != nil {
					rc.close(false)
					return
				}
			}
			if cut {
				rc.close(true)
				return
			}
		}
		if err != nil {
			rc.close(false)
			return
		}
	}
}
