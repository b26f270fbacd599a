// Package managesieve is a small ManageSieve client (RFC 5804) for
// installing Sieve scripts into Cyrus timsieved. The vacation service uses
// it as the Cyrus admin acting for a user: SASL PLAIN with the user as
// authorisation identity (RFC 4616), which timsieved allows to accounts in
// admins (mysasl_proxy_policy).
//
// A Client runs one command at a time; its methods may be called from
// several goroutines, they are serialised. Every command's write and reply
// are bounded by Options.Timeout, every line and literal by the limits in
// wire.go, so a misbehaving server costs at most a timeout and a few MiB.
//
// Cyrus 3.6 behaviour this client is written against (timsieved/lex.c,
// actions.c; observed replies are recorded in integration_test.go):
//   - timsieved's lexer refuses octets above 0x7F inside quoted strings, so
//     strings that are not plain ASCII always go as literals {N+}, which
//     RFC 5804 §1.6 allows everywhere a string is allowed;
//   - it accepts only non-synchronising literals from clients ({N+});
//   - it lists script names as "name" without escaping, so a name holding
//     '"' or '\' makes LISTSCRIPTS unparsable; we refuse such names;
//   - it keeps a non-ASCII name as a MIME encoded-word
//     ("=?UTF-8?Q?Urlaub-=C3=BC?=") and knows the script only by that form
//     afterwards, so callers should use ASCII names;
//   - 3.6.1/3.6.2 die of SIGSEGV when an authenticated client closes
//     without LOGOUT (cyrus-imapd#4537, fixed in 3.6.3): end sessions with
//     Logout, not Close.
package managesieve

import (
	"crypto/tls"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// defaultTimeout applies when Options.Timeout is 0.
const defaultTimeout = 30 * time.Second

// Options configure Dial and NewClient.
type Options struct {
	// Timeout bounds the dial and each command's write and reply; 0 means
	// 30s.
	Timeout time.Duration
	// TLSConfig is used for STARTTLS when the server offers it; nil means
	// no STARTTLS (loopback). Dial fills in ServerName from the address
	// when it is empty.
	TLSConfig *tls.Config
	// RequireTLS makes Dial and NewClient fail when the server does not
	// offer STARTTLS. It needs TLSConfig.
	RequireTLS bool
}

// Capabilities are what the server announced in its capability response
// (RFC 5804 §1.7), after STARTTLS and authentication when those happened.
type Capabilities struct {
	Implementation string
	SASL           []string // SASL mechanisms
	Sieve          []string // Sieve extensions, as announced ("fileinto", "vacation", "date", ...)
	StartTLS       bool
	MaxRedirects   int
	Notify         []string // enotify methods ("mailto")
	Language       string
	Version        string // "1.0" for an RFC 5804 server; "" for a pre-RFC one
	Owner          string // the user the session acts for; only after AUTHENTICATE
	// Raw holds every capability line: upper-cased name -> value ("" when
	// the line has none).
	Raw map[string]string
}

// HasExtension reports whether the server announced the Sieve extension
// name in SIEVE. The comparison is exact: it is the string a script must
// give to require (RFC 5228 §3.2).
func (c Capabilities) HasExtension(name string) bool {
	return slices.Contains(c.Sieve, name)
}

// clone returns a deep copy, so callers cannot change the client's copy.
func (c Capabilities) clone() Capabilities {
	c.SASL = slices.Clone(c.SASL)
	c.Sieve = slices.Clone(c.Sieve)
	c.Notify = slices.Clone(c.Notify)
	c.Raw = maps.Clone(c.Raw)
	return c
}

// Script is one line of LISTSCRIPTS.
type Script struct {
	Name   string
	Active bool
}

// Error is a NO or BYE reply, verbatim. Code is the response code without
// its brackets: the code's name upper-cased ("QUOTA/MAXSCRIPTS",
// "NONEXISTENT", "ACTIVE", "ALREADYEXISTS", "WARNINGS", ...), followed by
// its arguments re-encoded when it has some (`REFERRAL "sieve://host"`,
// `SASL "..."`). Msg is the human-readable text (quoted string or literal,
// decoded); "" when the server sent none.
type Error struct {
	Kind string // "NO" or "BYE"
	Code string
	Msg  string
}

// Error renders the reply as the server sent it, with Msg quoted so that
// control characters from the server cannot forge log lines.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind)
	if e.Code != "" {
		// Code is printable ASCII plus Go-quoted arguments (renderCode).
		b.WriteString(" (" + e.Code + ")")
	}
	if e.Msg != "" || e.Code == "" {
		b.WriteString(" " + strconv.QuoteToGraphic(e.Msg))
	}
	return b.String()
}

// parseCapabilities reads the data lines of a capability response
// (RFC 5804 §1.7): single-capability = capa-name [SP string] CRLF.
func parseCapabilities(data [][]token) (Capabilities, error) {
	c := Capabilities{Raw: make(map[string]string, len(data))}
	for _, line := range data {
		if len(line) > 2 || line[0].kind != tString || (len(line) == 2 && line[1].kind != tString) {
			return Capabilities{}, fmt.Errorf("%w: capability line %s", errSyntax, describe(line))
		}
		name, value := strings.ToUpper(line[0].val), ""
		if len(line) == 2 {
			value = line[1].val
		}
		c.Raw[name] = value
		switch name {
		case "IMPLEMENTATION":
			c.Implementation = value
		case "SASL":
			c.SASL = strings.Fields(value)
		case "SIEVE":
			c.Sieve = strings.Fields(value)
		case "STARTTLS":
			c.StartTLS = true
		case "MAXREDIRECTS":
			// A malformed number leaves 0 ("unknown") rather than failing
			// the session over a limit we only report; Raw keeps the text.
			n, err := strconv.Atoi(value)
			if err == nil && n >= 0 {
				c.MaxRedirects = n
			}
		case "NOTIFY":
			c.Notify = strings.Fields(value)
		case "LANGUAGE":
			c.Language = value
		case "VERSION":
			c.Version = value
		case "OWNER":
			c.Owner = value
		}
	}
	return c, nil
}
