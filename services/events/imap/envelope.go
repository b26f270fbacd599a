package imap

// Reading messages' envelopes for the events' subjects-and-senders opt-in
// (events-anchors §4.2): EXAMINE (read-only: FETCH ENVELOPE never sets
// \Seen there, RFC 3501 §6.3.2) and UID FETCH (UID ENVELOPE).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding/htmlindex"
)

// Bounds on what one envelope may hold; the rest is cut off. Each
// FETCH response is also bounded by maxTokens and maxLine (wire.go).
const (
	// maxEnvelopeText bounds a decoded subject, name, date or Message-ID
	// (RFC 5322 §2.1.1: lines of at most 998 octets).
	maxEnvelopeText = 998
	// maxEnvelopeAddrs bounds each address list.
	maxEnvelopeAddrs = 100
)

// Address is one mailbox of an envelope address list (RFC 3501 §7.4.2
// address: name, adl, mailbox, host), the name decoded.
type Address struct {
	Name, Mailbox, Host string
}

// String renders the address as `Name <mailbox@host>`, or `mailbox@host`
// without a name.
func (a Address) String() string {
	addr := a.Mailbox
	if a.Host != "" {
		addr += "@" + a.Host
	}
	if a.Name == "" {
		return addr
	}
	return a.Name + " <" + addr + ">"
}

// Envelope is a message's ENVELOPE (RFC 3501 §7.4.2) with its UID.
// Subject and names are decoded from RFC 2047 encoded-words to UTF-8;
// Date and MessageID are as in the header.
type Envelope struct {
	UID       uint32
	Date      string
	Subject   string
	From      []Address
	Sender    []Address
	ReplyTo   []Address
	To        []Address
	Cc        []Address
	Bcc       []Address
	InReplyTo string
	MessageID string
}

// Examine opens mailbox (UTF-8, encoded to modified UTF-7 here) read-only
// with EXAMINE (RFC 3501 §6.3.2) and returns its UIDVALIDITY, 0 when the
// server sent none.
func (c *Client) Examine(ctx context.Context, mailbox string) (uint32, error) {
	const op = "EXAMINE"
	name, err := quote(EncodeName(mailbox))
	if err != nil {
		return 0, fmt.Errorf("imap: %s: %w", op, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var uv uint32
	_, err = c.do(ctx, op, []byte("EXAMINE "+name), func(resp *response) error {
		// RFC 3501 §6.3.1: "* OK [UIDVALIDITY n]".
		if resp.status == "OK" && resp.code == "UIDVALIDITY" && len(resp.args) == 1 {
			n, err := strconv.ParseUint(resp.args[0], 10, 32)
			if err != nil {
				return fmt.Errorf("%w: UIDVALIDITY %q", errSyntax, shorten(resp.args[0]))
			}
			uv = uint32(n)
		}
		return nil
	}, nil)
	return uv, err
}

// UIDFetchEnvelope runs UID FETCH uidSet (UID ENVELOPE) (RFC 3501
// §6.4.8) in the selected mailbox and returns at most max envelopes, in
// the server's order; UIDs that no longer exist are simply absent.
// uidSet is an IMAP sequence set of UIDs ("5", "3:7,9").
func (c *Client) UIDFetchEnvelope(ctx context.Context, uidSet string, max int) ([]Envelope, error) {
	const op = "UID FETCH"
	if uidSet == "" || len(uidSet) > 1000 || strings.Trim(uidSet, "0123456789:,*") != "" {
		return nil, fmt.Errorf("imap: %s: %w: uid set %q", op, errArg, shorten(uidSet))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.r.fetch = true
	defer func() { c.r.fetch = false }()
	var out []Envelope
	_, err := c.do(ctx, op, []byte("UID FETCH "+uidSet+" (UID ENVELOPE)"), func(resp *response) error {
		if resp.name != "FETCH" || len(out) >= max {
			return nil
		}
		env, ok, err := parseFetchEnvelope(resp.fields)
		if err != nil {
			return err
		}
		if ok { // RFC 3501 §7: unsolicited FETCH (flags) has no ENVELOPE
			out = append(out, env)
		}
		return nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// parseFetchEnvelope reads `(UID n ENVELOPE (...) ...)`, the fields of
// "* seq FETCH". ok is false when either item is missing.
func parseFetchEnvelope(f []value) (env Envelope, ok bool, err error) {
	if len(f) != 1 || f[0].kind != vList || len(f[0].list)%2 != 0 {
		return Envelope{}, false, fmt.Errorf("%w: FETCH data is not a list of pairs", errSyntax)
	}
	var hasUID, hasEnv bool
	items := f[0].list
	for i := 0; i < len(items); i += 2 {
		if items[i].kind != vAtom {
			return Envelope{}, false, fmt.Errorf("%w: FETCH item name", errSyntax)
		}
		switch strings.ToUpper(items[i].s) {
		case "UID":
			n, err := number(items[i+1], 32)
			if err != nil || n == 0 {
				return Envelope{}, false, fmt.Errorf("%w: FETCH UID", errSyntax)
			}
			env.UID, hasUID = uint32(n), true
		case "ENVELOPE":
			uid := env.UID
			if env, err = parseEnvelope(items[i+1]); err != nil {
				return Envelope{}, false, err
			}
			env.UID, hasEnv = uid, true
		}
	}
	return env, hasUID && hasEnv, nil
}

// parseEnvelope reads RFC 3501 envelope: "(" env-date SP env-subject SP
// env-from SP env-sender SP env-reply-to SP env-to SP env-cc SP env-bcc
// SP env-in-reply-to SP env-message-id ")".
func parseEnvelope(v value) (Envelope, error) {
	if v.kind != vList || len(v.list) != 10 {
		return Envelope{}, fmt.Errorf("%w: ENVELOPE is not a list of 10", errSyntax)
	}
	var env Envelope
	var err error
	l := v.list
	for i, p := range []*string{&env.Date, &env.Subject, 8: &env.InReplyTo, 9: &env.MessageID} {
		if p == nil {
			continue
		}
		if *p, err = nstring(l[i]); err != nil {
			return Envelope{}, fmt.Errorf("ENVELOPE field %d: %w", i+1, err)
		}
		*p = clean(*p)
	}
	env.Subject = clean(decodeWords(env.Subject))
	for i, p := range []*[]Address{2: &env.From, &env.Sender, &env.ReplyTo, &env.To, &env.Cc, &env.Bcc} {
		if p == nil {
			continue
		}
		if *p, err = parseAddresses(l[i]); err != nil {
			return Envelope{}, fmt.Errorf("ENVELOPE field %d: %w", i+1, err)
		}
	}
	return env, nil
}

// parseAddresses reads "(" 1*address ")" / nil. Group syntax (RFC 3501
// §7.4.2: a group starts with a NIL host and a mailbox holding the group
// name, and ends with NIL mailbox and host) is tolerated: the markers are
// dropped, the members kept.
func parseAddresses(v value) ([]Address, error) {
	if v.kind == vNil {
		return nil, nil
	}
	if v.kind != vList {
		return nil, fmt.Errorf("%w: address list", errSyntax)
	}
	var out []Address
	for _, a := range v.list {
		if a.kind != vList || len(a.list) != 4 {
			return nil, fmt.Errorf("%w: address is not a list of 4", errSyntax)
		}
		var f [4]string
		for i := range f {
			s, err := nstring(a.list[i])
			if err != nil {
				return nil, fmt.Errorf("address: %w", err)
			}
			f[i] = s
		}
		if a.list[3].kind == vNil { // a group marker
			continue
		}
		if len(out) < maxEnvelopeAddrs {
			out = append(out, Address{Name: clean(decodeWords(f[0])), Mailbox: clean(f[2]), Host: clean(f[3])})
		}
	}
	return out, nil
}

// nstring reads nstring: a string, NIL as "". Atoms are taken too (some
// servers send numbers or dates unquoted).
func nstring(v value) (string, error) {
	switch v.kind {
	case vNil:
		return "", nil
	case vString, vAtom:
		return v.s, nil
	}
	return "", fmt.Errorf("%w: list where a string belongs", errSyntax)
}

// wordDecoder decodes RFC 2047 encoded-words in any charset the WHATWG
// index knows (the one browsers and mail clients agree on).
var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, r io.Reader) (io.Reader, error) {
	enc, err := htmlindex.Get(charset)
	if err != nil {
		return nil, err
	}
	return enc.NewDecoder().Reader(r), nil
}}

// decodeWords decodes RFC 2047 encoded-words; text it cannot decode is
// kept as it came.
func decodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	d, err := wordDecoder.DecodeHeader(s)
	if err != nil {
		return s
	}
	return d
}

// clean makes server text safe to pass on: valid UTF-8, no control
// characters (a folded header's CRLF becomes a space), at most
// maxEnvelopeText bytes.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxEnvelopeText {
		cut := maxEnvelopeText
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// IsNo reports whether err is a NO from the server (the command failed,
// the session is still usable): for EXAMINE, a mailbox that no longer
// exists or may not be read.
func IsNo(err error) bool {
	e, ok := errors.AsType[*Error](err)
	return ok && e.Kind == "NO"
}
