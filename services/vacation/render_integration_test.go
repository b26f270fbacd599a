//go:build integration

package vacation

// Render against real Cyrus 3.6 (e2e/lab): the scripts compile in
// timsieved (CHECKSCRIPT) and sievec, DefaultExtensions is what timsieved
// announces, and installed for alice they answer mail as promised. Cyrus
// sends a vacation reply through the lab's capture sendmail before lmtpd
// answers the delivery (imap/lmtp_sieve.c send_response runs inside the
// Sieve run), so the replies are there when Deliver returns: the tests
// check positive cases right away, which is what makes "no reply" checks
// trustworthy.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
)

const (
	labAlice         = "alice@example.com"
	labAlicePassword = "alice-secret"
	labAlias         = "al@example.com"
	// sieveTimeout bounds each ManageSieve command and each sievec run.
	sieveTimeout = 30 * time.Second
	// labScript is the name our script is installed under for alice.
	labScript = "cyrus-sidecar-vacation"
	// randomInputs is how many random inputs go through Cyrus's compiler.
	randomInputs = 200
)

// startRenderCyrus starts a lab Cyrus with alice. carddav turns on
// httpmodules: carddav, without which Cyrus announces "extlists" but
// refuses to compile a script that requires it (sieve/interp.c).
func startRenderCyrus(t *testing.T, carddav bool) *lab.Cyrus {
	t.Helper()
	opts := lab.CyrusOptions{Users: map[string]string{labAlice: labAlicePassword}}
	if carddav {
		opts.Conf = map[string]string{"httpmodules": "carddav"}
	}
	c := lab.StartCyrus(t, opts)
	c.CreateMailbox(t, labAlice)
	return c
}

func TestRenderCyrus(t *testing.T) {
	c := startRenderCyrus(t, true)
	s := dialRenderSieve(t, c.SieveAddr, labAlice, labAlicePassword)

	t.Run("DefaultExtensions", func(t *testing.T) {
		if got := strings.Fields(s.capa["SIEVE"]); !slices.Equal(got, DefaultExtensions) {
			t.Errorf("timsieved announces SIEVE %q;\nDefaultExtensions is %q", got, DefaultExtensions)
		}
	})

	t.Run("golden cases compile", func(t *testing.T) {
		for _, tc := range renderCases() {
			script, err := Render(tc.in)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if msg := s.check(t, script); msg != "" {
				t.Errorf("%s: CHECKSCRIPT: %s\n%s", tc.name, msg, script)
			}
			if out, err := sievec(t, c, script); err != nil {
				t.Errorf("%s: sievec: %v\n%s", tc.name, err, out)
			}
		}
	})

	t.Run("random inputs compile", func(t *testing.T) {
		seed := uint64(time.Now().UnixNano())
		t.Logf("seed %d", seed)
		rng := rand.New(rand.NewPCG(seed, seed))
		for i := range randomInputs {
			in := randomInput(rng, renderBaseInput())
			script, err := Render(in)
			if err != nil {
				t.Fatalf("input %d: %v (subject %q, texts %q, %q)", i, err, in.Subject, in.InternalText, in.ExternalText)
			}
			checkRoundTrip(t, in, script)
			if msg := s.check(t, script); msg != "" {
				t.Fatalf("input %d: CHECKSCRIPT: %s\n%s", i, msg, script)
			}
			if out, err := sievec(t, c, script); err != nil {
				t.Fatalf("input %d: sievec: %v\n%s\n%s", i, err, out, script)
			}
		}
	})

	t.Run("size limit", func(t *testing.T) {
		script := scriptOfSize(t, maxScriptSize)
		if msg := s.check(t, script); msg != "" {
			t.Errorf("CHECKSCRIPT of %d bytes: %s", len(script), msg)
		}
	})

	// Cyrus clamps the interval when it compiles (sieve.y build_vacation):
	// to sieve_vacation_min_response (3d) and _max_response (90d).
	t.Run("days clamped by Cyrus", func(t *testing.T) {
		for _, tc := range []struct{ days, seconds int }{
			{0, 7 * 86400}, {1, MinDays * 86400}, {MinDays, MinDays * 86400}, {30, 30 * 86400}, {1000, 90 * 86400},
		} {
			in := renderBaseInput()
			in.Days, in.Audience = tc.days, "none"
			script, err := Render(in)
			if err != nil {
				t.Fatal(err)
			}
			dump := sieved(t, c, script)
			if want := fmt.Sprintf("SECONDS(%d)", tc.seconds); !strings.Contains(dump, want) {
				t.Errorf(":days %d: bytecode lacks %s:\n%s", tc.days, want, dump)
			}
		}
	})

	rl := &renderLab{c: c, s: s}
	t.Run("replies", rl.testReplies)

	// One byte more, which Render refuses, Cyrus refuses too. Its lexer
	// gives up mid-literal and the connection is out of step after that,
	// so this comes last (timsieved serialises a user's sessions: a second
	// one would wait for this one to end).
	t.Run("one byte over the limit", func(t *testing.T) {
		script := scriptOfSize(t, maxScriptSize) + "#"
		msg := s.check(t, script)
		if msg == "" {
			t.Fatalf("CHECKSCRIPT of %d bytes: OK; want NO (sieve_maxscriptsize)", len(script))
		}
		t.Logf("Cyrus on %d bytes: %s", len(script), msg)
	})
}

// scriptOfSize renders a script of exactly size bytes by growing the
// internal text.
func scriptOfSize(t *testing.T, size int) string {
	t.Helper()
	in := renderBaseInput()
	in.InternalText = "x"
	small, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	in.InternalText = strings.Repeat("x", 1+size-len(small))
	script, err := Render(in)
	if err != nil || len(script) != size {
		t.Fatalf("Render: %d bytes, %v; want %d", len(script), err, size)
	}
	return script
}

// TestRenderCyrusKnownNeedsCardDAV records a Cyrus quirk: without
// httpmodules: carddav, timsieved still announces "extlists" but refuses
// a script requiring it, so the audience "known" cannot be installed.
func TestRenderCyrusKnownNeedsCardDAV(t *testing.T) {
	c := startRenderCyrus(t, false)
	s := dialRenderSieve(t, c.SieveAddr, labAlice, labAlicePassword)
	if !slices.Contains(strings.Fields(s.capa["SIEVE"]), "extlists") {
		t.Fatalf("SIEVE capability %q lacks extlists", s.capa["SIEVE"])
	}
	in := renderBaseInput()
	in.Audience = "known"
	script, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	msg := s.check(t, script)
	if !strings.Contains(msg, `Unsupported feature(s) in "require": "extlists"`) {
		t.Errorf("CHECKSCRIPT without carddav: %q; want the unsupported-extlists error", msg)
	}
	in.Audience = "all"
	if script, err = Render(in); err != nil {
		t.Fatal(err)
	}
	if msg := s.check(t, script); msg != "" {
		t.Errorf("CHECKSCRIPT (audience all) without carddav: %s", msg)
	}
}

// renderLab installs scripts for alice and delivers mail to her.
type renderLab struct {
	c      *lab.Cyrus
	s      *renderSieve
	active bool
	n      int
}

// install renders in and makes it alice's active script.
func (l *renderLab) install(t *testing.T, in Input) {
	t.Helper()
	script, err := Render(in)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	if msg := l.s.put(t, labScript, script); msg != "" {
		t.Fatalf("PUTSCRIPT: %s\n%s", msg, script)
	}
	if !l.active {
		if _, msg := l.s.do(t, `SETACTIVE "`+labScript+`"`); msg != "" {
			t.Fatalf("SETACTIVE: %s", msg)
		}
		l.active = true
	}
}

// labMsg is a message to alice.
type labMsg struct {
	sender   string // envelope sender, and From: unless from is set
	from     string
	to       string // To:, default alice
	relation string // the relation header's value, "" = none
	extra    string // more header lines, each ending CRLF
}

// deliver delivers m to alice's mailbox and returns the replies Cyrus
// sent its sender for it.
func (l *renderLab) deliver(t *testing.T, m labMsg) []renderReply {
	t.Helper()
	l.n++
	from, to := cmp.Or(m.from, m.sender), cmp.Or(m.to, labAlice)
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: test %d\r\nMessage-ID: <render-%d@lab.test>\r\n", from, to, l.n, l.n)
	b.WriteString("Date: " + time.Now().UTC().Format(time.RFC1123Z) + "\r\n")
	if m.relation != "" {
		b.WriteString(testRelationHeader + ": " + m.relation + "\r\n")
	}
	b.WriteString(m.extra)
	b.WriteString("\r\nHello Alice.\r\n")
	before := len(l.c.SentMail(t))
	if r := l.c.Deliver(t, m.sender, []string{labAlice}, []byte(b.String())); !strings.HasPrefix(r[0], "250 ") {
		t.Fatalf("LMTP reply %q; want 250", r[0])
	}
	var replies []renderReply
	for _, sent := range l.c.SentMail(t)[before:] { // oldest first
		if slices.Equal(sent.To, []string{m.sender}) {
			replies = append(replies, decodeReply(t, sent))
		}
	}
	return replies
}

// expect delivers m and checks that its sender got exactly one reply
// (never a second), with the text want and in's subject; want "" means
// no reply.
func (l *renderLab) expect(t *testing.T, in Input, m labMsg, want string) renderReply {
	t.Helper()
	replies := l.deliver(t, m)
	if want == "" {
		if len(replies) != 0 {
			t.Errorf("%s got %d replies; want none: %q", m.sender, len(replies), replies[0].body)
		}
		return renderReply{}
	}
	if len(replies) != 1 {
		t.Fatalf("%s got %d replies; want 1", m.sender, len(replies))
	}
	r := replies[0]
	// Cyrus sends the text as it is and adds a line end.
	if body := wantText(want) + "\r\n"; r.body != body {
		t.Errorf("reply to %s: body\n%q\nwant\n%q", m.sender, r.body, body)
	}
	// Without :subject Cyrus answers "Auto: " and the message's subject.
	wantSubject := in.Subject
	if in.Subject == "" {
		wantSubject = fmt.Sprintf("Auto: test %d", l.n)
	}
	if r.subject != wantSubject {
		t.Errorf("reply to %s: subject %q; want %q", m.sender, r.subject, wantSubject)
	}
	if r.autoSubmitted != "auto-replied (vacation)" {
		t.Errorf("reply to %s: Auto-Submitted %q", m.sender, r.autoSubmitted)
	}
	return r
}

func (l *renderLab) testReplies(t *testing.T) {
	now := time.Now().UTC()
	open := func(period string) Input {
		in := renderBaseInput()
		in.Start, in.End = now.Add(-time.Hour), now.Add(time.Hour)
		in.Addresses = []string{labAlice, labAlias}
		in.Period = period
		in.Subject = trickySubject
		in.InternalText = trickyText
		in.ExternalText = "External: \"; discard; \"\r\n.\r\n${from} ${hex:41}\nGrüße 🏖️\n"
		return in
	}
	internal := func(sender string) labMsg { return labMsg{sender: sender, relation: "internal"} }
	external := func(sender string) labMsg { return labMsg{sender: sender, relation: "external"} }

	t.Run("internal and external", func(t *testing.T) {
		in := open("p1")
		l.install(t, in)
		r := l.expect(t, in, internal("colleague@example.com"), in.InternalText)
		if r.from != labAlice {
			t.Errorf("reply From %q; want %s", r.from, labAlice)
		}
		t.Logf("reply Content-Transfer-Encoding %q, Content-Type %q", r.cte, r.contentType)
		l.expect(t, in, internal("colleague@example.com"), "") // once per sender
		l.expect(t, in, external("customer@outside.org"), in.ExternalText)
		l.expect(t, in, labMsg{sender: "unmarked@outside.org"}, in.ExternalText) // no header: external
		for _, extra := range []string{"List-Id: <news.outside.org>", "Auto-Submitted: auto-generated", "Precedence: bulk"} {
			m := external("list-" + strings.ToLower(extra[:4]) + "@outside.org")
			m.extra = extra + "\r\n"
			l.expect(t, in, m, "")
		}
		// To: an alias listed in :addresses; Cyrus answers from that alias.
		m := external("aliasuser@outside.org")
		m.to = labAlias
		if r := l.expect(t, in, m, in.ExternalText); r.from != labAlias {
			t.Errorf("reply From %q; want %s", r.from, labAlias)
		}
		// alice only in the envelope (Bcc): RFC 5230 §4.5, Cyrus answers
		// only when To, Cc, Bcc or Resent-* names one of her addresses.
		m = external("bcc-only@outside.org")
		m.to = "bob@example.com"
		l.expect(t, in, m, "")
		m = external("bcc-header@outside.org")
		m.to, m.extra = "bob@example.com", "Bcc: <"+labAlice+">\r\n"
		l.expect(t, in, m, in.ExternalText)
		m = external("unlisted@outside.org") // an address not in :addresses
		m.to = "alice.other@example.com"
		l.expect(t, in, m, "")
	})

	t.Run("handle per period", func(t *testing.T) {
		in := open("p2")
		l.install(t, in)
		l.expect(t, in, internal("again@example.com"), in.InternalText)
		in.InternalText = "Edited text, same absence.\n" // :handle keeps tracking
		l.install(t, in)
		l.expect(t, in, internal("again@example.com"), "")
		in.Period = "p3" // a new absence: a new reply
		l.install(t, in)
		l.expect(t, in, internal("again@example.com"), in.InternalText)
		// The audiences are tracked apart: the same sender once external.
		l.expect(t, in, external("again@example.com"), in.ExternalText)
	})

	t.Run("audience none", func(t *testing.T) {
		in := open("p4")
		in.Audience = "none"
		l.install(t, in)
		l.expect(t, in, external("stranger@outside.org"), "")
		l.expect(t, in, labMsg{sender: "stranger@outside.org"}, "")
		l.expect(t, in, internal("teammate@example.com"), in.InternalText)
	})

	t.Run("audience known", func(t *testing.T) {
		// Nobody is in alice's address book (the lab runs no CardDAV
		// server), so only internal senders get a reply.
		in := open("p5")
		in.Audience = "known"
		l.install(t, in)
		l.expect(t, in, external("unknown@outside.org"), "")
		l.expect(t, in, internal("mate@example.com"), in.InternalText)
	})

	t.Run("window closed", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			start, end time.Time
		}{
			{"past", now.Add(-2 * time.Hour), now.Add(-time.Hour)},
			{"future", now.Add(time.Hour), time.Time{}},
			{"ended", time.Time{}, now.Add(-time.Minute)},
		} {
			in := open("p6-" + tc.name)
			in.Start, in.End = tc.start, tc.end
			l.install(t, in)
			l.expect(t, in, internal(tc.name+"-in@example.com"), "")
			l.expect(t, in, external(tc.name+"-out@outside.org"), "")
		}
		in := open("p6-on") // the same with state "on": replies
		in.State = "on"
		l.install(t, in)
		l.expect(t, in, internal("on-in@example.com"), in.InternalText)
	})

	t.Run("envelope fallback", func(t *testing.T) {
		in := open("p7")
		in.RelationHeader = ""
		l.install(t, in)
		l.expect(t, in, labMsg{sender: "partner@example.org"}, in.InternalText) // an org domain
		// From: claims a colleague, and even the relation header says
		// internal: without the header in the script, the envelope decides.
		l.expect(t, in, labMsg{sender: "forger@outside.org", from: "boss@example.com", relation: "internal"}, in.ExternalText)
	})

	t.Run(":from", func(t *testing.T) {
		in := open("p8")
		in.From = "alice.away@example.com"
		l.install(t, in)
		if r := l.expect(t, in, external("fromtest@outside.org"), in.ExternalText); r.from != in.From {
			t.Errorf("reply From %q; want %s", r.from, in.From)
		}
	})

	t.Run("no subject", func(t *testing.T) {
		in := open("p10")
		in.Subject = ""
		l.install(t, in)
		l.expect(t, in, external("nosubject@outside.org"), in.ExternalText)
		// Cyrus folds a long ASCII subject at its spaces.
		in.Subject = strings.TrimSpace(strings.Repeat("Away  until July, ", 14))
		l.install(t, in)
		l.expect(t, in, external("longsubject@outside.org"), in.ExternalText)
	})

	t.Run("random texts", func(t *testing.T) {
		seed := uint64(time.Now().UnixNano())
		t.Logf("seed %d", seed)
		rng := rand.New(rand.NewPCG(seed, seed))
		for i := range 5 {
			in := randomInput(rng, open(fmt.Sprintf("p9-%d", i)))
			l.install(t, in)
			l.expect(t, in, internal(fmt.Sprintf("random%d@example.com", i)), in.InternalText)
			l.expect(t, in, external(fmt.Sprintf("random%d@outside.org", i)), in.ExternalText)
		}
	})
}

// renderReply is a decoded vacation reply.
type renderReply struct {
	from, subject, autoSubmitted, cte, contentType, body string
}

// decodeReply parses what Cyrus sent: RFC 2047 subject, body decoded by
// its Content-Transfer-Encoding (Cyrus 3.6 sends 8bit; the others are
// decoded should that change).
func decodeReply(t *testing.T, m lab.SentMail) renderReply {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatalf("reply does not parse: %v\n%s", err, m.Data)
	}
	raw := unfoldedHeader(m.Data, "Subject")
	subject, err := new(mime.WordDecoder).DecodeHeader(raw)
	if err != nil {
		t.Fatalf("reply subject %q: %v", raw, err)
	}
	from, err := mail.ParseAddress(msg.Header.Get("From"))
	if err != nil {
		t.Fatalf("reply From %q: %v", msg.Header.Get("From"), err)
	}
	r := renderReply{from: from.Address, subject: subject, autoSubmitted: msg.Header.Get("Auto-Submitted"),
		cte: msg.Header.Get("Content-Transfer-Encoding"), contentType: msg.Header.Get("Content-Type")}
	body := msg.Body
	switch strings.ToLower(r.cte) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body)
	case "", "7bit", "8bit", "binary":
	default:
		t.Fatalf("reply Content-Transfer-Encoding %q", r.cte)
	}
	b, err := io.ReadAll(body) // our own lab's file, already in memory
	if err != nil {
		t.Fatalf("reply body: %v", err)
	}
	if _, params, err := mime.ParseMediaType(r.contentType); err != nil || !strings.EqualFold(params["charset"], "utf-8") {
		t.Errorf("reply Content-Type %q; want text/plain in UTF-8", r.contentType)
	}
	r.body = string(b)
	return r
}

// unfoldedHeader returns a header field of a message as RFC 5322 §2.2.3
// unfolds it (only the CRLFs go; net/textproto also squeezes the space
// around them) without the one space Cyrus writes after the colon.
func unfoldedHeader(data []byte, name string) string {
	head, _, _ := bytes.Cut(data, []byte("\r\n\r\n"))
	unfolded := strings.NewReplacer("\r\n ", " ", "\r\n\t", "\t").Replace(string(head))
	for line := range strings.SplitSeq(unfolded, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimPrefix(v, " ")
		}
	}
	return ""
}

// randomInput gives base random texts and subject made of what breaks
// generators: quotes, backslashes, dots, ${}, CR/LF mixtures, Unicode.
func randomInput(rng *rand.Rand, base Input) Input {
	pieces := []string{"\"", "\\", "\\\"", ".", "..", "\r\n", "\n", "\r", "\r\n.\r\n", "\n.\n", "${from}",
		"${hex:41}", "${unicode:263A}", "text:", ";", "}", "{", "#", "/*", " ", "\t", "é", "e\u0301", "日本語",
		"שלום", "🏖️", "👍🏽", "discard;", "redirect \"x@y\";", "word", "Alice", "0"}
	gen := func(n int, lineEnds bool) string {
		var b strings.Builder
		for range 1 + rng.IntN(n) {
			p := pieces[rng.IntN(len(pieces))]
			if !lineEnds && strings.ContainsAny(p, "\r\n\t") {
				continue
			}
			b.WriteString(p)
		}
		return b.String()
	}
	in := base
	in.Subject = gen(12, false)
	in.InternalText = gen(60, true) + "x" // never blank
	in.ExternalText = "y" + gen(60, true)
	return in
}

// renderSieve is a minimal ManageSieve client (RFC 5804), enough for
// CHECKSCRIPT, PUTSCRIPT and SETACTIVE as alice.
type renderSieve struct {
	conn net.Conn
	r    *bufio.Reader
	capa map[string]string // capability from the greeting, e.g. "SIEVE"
}

var sieveLiteral = regexp.MustCompile(`\{(\d+)\+?\}$`)

func dialRenderSieve(t *testing.T, addr, user, password string) *renderSieve {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, sieveTimeout)
	if err != nil {
		t.Fatal(err)
	}
	s := &renderSieve{conn: conn, r: bufio.NewReader(conn), capa: map[string]string{}}
	t.Cleanup(func() {
		// LOGOUT first: timsieved 3.6.1 crashes (SIGSEGV) when a logged-in
		// client just goes away. Errors do not matter any more.
		_ = conn.SetDeadline(time.Now().Add(sieveTimeout))
		_, _ = io.WriteString(conn, "LOGOUT\r\n")
		_, _ = s.r.ReadString('\n')
		conn.Close()
	})
	lines, msg := s.do(t, "")
	if msg != "" {
		t.Fatalf("managesieve greeting: %s", msg)
	}
	for _, l := range lines {
		// "NAME" "value" or "NAME"
		if f := strings.SplitN(l, `" "`, 2); len(f) == 2 {
			s.capa[strings.Trim(f[0], `"`)] = strings.Trim(f[1], `"`)
		}
	}
	auth := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
	if _, msg := s.do(t, `AUTHENTICATE "PLAIN" "`+auth+`"`); msg != "" {
		t.Fatalf("managesieve AUTHENTICATE as %s: %s", user, msg)
	}
	return s
}

// check runs CHECKSCRIPT and returns "" for OK, else the server's answer.
func (s *renderSieve) check(t *testing.T, script string) string {
	t.Helper()
	_, msg := s.do(t, fmt.Sprintf("CHECKSCRIPT {%d+}\r\n%s", len(script), script))
	return msg
}

// put runs PUTSCRIPT and returns "" for OK, else the server's answer.
func (s *renderSieve) put(t *testing.T, name, script string) string {
	t.Helper()
	_, msg := s.do(t, fmt.Sprintf("PUTSCRIPT %q {%d+}\r\n%s", name, len(script), script))
	return msg
}

// do sends cmd ("" only reads, for the greeting) and reads the response:
// the lines before the status, and "" for OK or the NO/BYE line with its
// literal.
func (s *renderSieve) do(t *testing.T, cmd string) (lines []string, msg string) {
	t.Helper()
	if err := s.conn.SetDeadline(time.Now().Add(sieveTimeout)); err != nil {
		t.Fatal(err)
	}
	if cmd != "" {
		if _, err := io.WriteString(s.conn, cmd+"\r\n"); err != nil {
			t.Fatalf("managesieve %.30q: %v", cmd, err)
		}
	}
	for {
		line, err := s.readLine()
		if err != nil {
			t.Fatalf("managesieve after %.30q: %v", cmd, err)
		}
		switch {
		case strings.HasPrefix(line, "OK"):
			return lines, ""
		case strings.HasPrefix(line, "NO"), strings.HasPrefix(line, "BYE"):
			return lines, line
		}
		lines = append(lines, line)
	}
}

// readLine reads one response line, with any literals ({n}) inlined.
func (s *renderSieve) readLine() (string, error) {
	var b strings.Builder
	for {
		l, err := s.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		l = strings.TrimSuffix(l, "\r\n")
		m := sieveLiteral.FindStringSubmatch(l)
		if m == nil {
			b.WriteString(l)
			return b.String(), nil
		}
		n, err := strconv.Atoi(m[1])
		if err != nil || n > 1<<20 {
			return "", fmt.Errorf("literal size %q", m[1])
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(s.r, buf); err != nil {
			return "", err
		}
		b.WriteString(l[:len(l)-len(m[0])])
		b.Write(buf)
	}
}

// sievec compiles script with Cyrus's sievec as the cyrus user (the lab's
// configuration directory belongs to it) and returns its output.
func sievec(t *testing.T, c *lab.Cyrus, script string) ([]byte, error) {
	t.Helper()
	out, err := runAsCyrus(t, c, script, "sievec", "-C", c.ConfPath, "-", filepath.Join(bcDir(t, c), "out.bc"))
	return out, err
}

// sieved compiles script with sievec and dumps the bytecode with sieved.
func sieved(t *testing.T, c *lab.Cyrus, script string) string {
	t.Helper()
	if out, err := sievec(t, c, script); err != nil {
		t.Fatalf("sievec: %v\n%s", err, out)
	}
	out, err := runAsCyrus(t, c, "", "sieved", filepath.Join(bcDir(t, c), "out.bc"))
	if err != nil {
		t.Fatalf("sieved: %v\n%s", err, out)
	}
	return string(out)
}

// bcDir is a directory in the lab the cyrus user can write to.
func bcDir(t *testing.T, c *lab.Cyrus) string {
	t.Helper()
	dir := filepath.Join(c.Dir, "render-bc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	uid, gid := cyrusUser(t)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return dir
}

func runAsCyrus(t *testing.T, c *lab.Cyrus, stdin, name string, args ...string) ([]byte, error) {
	t.Helper()
	bin := lab.Tool(t, "", name, "/usr/lib/cyrus/bin")
	uid, gid := cyrusUser(t)
	ctx, cancel := context.WithTimeout(t.Context(), sieveTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = c.Dir
	cmd.Stdin = strings.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	return cmd.CombinedOutput()
}

func cyrusUser(t *testing.T) (int, int) {
	t.Helper()
	u, err := user.Lookup("cyrus")
	if err != nil {
		t.Fatalf("user cyrus: %v", err)
	}
	g, err := user.LookupGroup("mail")
	if err != nil {
		t.Fatalf("group mail: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid) // numeric on POSIX
	gid, _ := strconv.Atoi(g.Gid)
	return uid, gid
}
