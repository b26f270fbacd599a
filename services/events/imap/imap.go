// Package imap is a minimal IMAP client (RFC 3501, RFC 9051) for one job:
// logging into Cyrus as the admin on behalf of a user (SASL PLAIN with an
// authorisation identity, RFC 4616) and listing that user's mailboxes with
// their status in one round trip (LIST-STATUS, RFC 5819, over
// LIST-EXTENDED, RFC 5258), so the events reconciler can see which
// mailboxes changed; and, for the subjects-and-senders opt-in, reading new
// messages' envelopes read-only (EXAMINE, UID FETCH ENVELOPE; envelope.go).
//
// Every read is bounded in bytes (line, literal, responses per command;
// wire.go) and every command in time (Options.Timeout and the caller's
// context), so a misbehaving server costs at most a timeout and a few MiB.
// A Client runs one command at a time; its methods are serialised.
//
// Cyrus 3.6 behaviour this client is written against (real responses are
// in testdata/cyrus36-*.txt):
//   - the greeting carries [CAPABILITY ...] with SASL-IR and AUTH=PLAIN,
//     and the tagged OK of AUTHENTICATE carries the new capabilities;
//   - admins may authenticate for any user (PLAIN authzid), as timsieved;
//   - STATUS (MAILBOXID) (RFC 8474) returns garbage bytes in 3.6.1 unless
//     the mailbox is selected, so the mailbox's uniqueid is read through
//     LIST-METADATA (`RETURN (METADATA (/shared/vendor/cmu/cyrus-imapd/
//     uniqueid))`, draft-ietf-extra-imap-list-metadata) instead;
//   - mailbox names come as atoms or quoted strings in modified UTF-7
//     (RFC 3501 §5.1.3); they are decoded to UTF-8.
package imap

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// defaultTimeout applies when Options.Timeout is 0.
const defaultTimeout = 30 * time.Second

// Options configure Dial and NewClient.
type Options struct {
	// Timeout bounds the dial and each command's write and responses; 0
	// means 30s. The context passed to each method may shorten it.
	Timeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	return o
}

// Error is a NO, BAD or BYE from the server. Code is the response code's
// name without brackets ("AUTHENTICATIONFAILED", ...), Text the
// human-readable rest.
type Error struct {
	Kind, Code, Text string
}

// Error renders the response, with Text quoted so that control
// characters from the server cannot forge log lines.
func (e *Error) Error() string {
	s := e.Kind
	if e.Code != "" {
		s += " [" + e.Code + "]"
	}
	return s + " " + strconv.QuoteToGraphic(shorten(e.Text))
}

// Client is an IMAP session. Close may be called at any time, also to
// abort a command in progress.
type Client struct {
	mu     sync.Mutex // held for a whole command
	conn   net.Conn
	r      *reader
	opt    Options
	tag    int
	caps   []string // upper-cased; nil when unknown
	err    error    // sticky: the session ended (errBroken wrapping why)
	closed atomic.Bool
}

// Dial connects to an IMAP server ("tcp" host:port or "unix" path) and
// reads its greeting, which must be OK (PREAUTH is taken too; BYE is an
// *Error). ctx bounds the dial and the greeting.
func Dial(ctx context.Context, network, addr string, opt Options) (*Client, error) {
	opt = opt.withDefaults()
	d := net.Dialer{Timeout: opt.Timeout}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("imap: %w", err) // *net.OpError names the address
	}
	return NewClient(ctx, conn, opt)
}

// NewClient starts a session over conn as Dial does. On error conn is
// closed.
func NewClient(ctx context.Context, conn net.Conn, opt Options) (*Client, error) {
	c := &Client{conn: conn, r: newReader(conn), opt: opt.withDefaults()}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.greeting(ctx); err != nil {
		c.closeConn()
		return nil, fmt.Errorf("imap: greeting: %w", err)
	}
	return c, nil
}

// greeting reads `* OK|PREAUTH|BYE ...` (RFC 3501 §7.1).
func (c *Client) greeting(ctx context.Context) error {
	stop, err := c.deadline(ctx)
	if err != nil {
		return err
	}
	defer stop()
	resp, err := readResponse(c.r)
	if err != nil {
		return c.fail(c.ctxErr(ctx, err))
	}
	if resp.tag != "*" || resp.status == "" || resp.status == "NO" || resp.status == "BAD" {
		return c.fail(fmt.Errorf("%w: greeting %s %s", errSyntax, resp.tag, resp.status))
	}
	if resp.status == "BYE" {
		return c.fail(&Error{Kind: resp.status, Code: resp.code, Text: resp.text})
	}
	c.noteCaps(resp)
	return nil
}

// Capabilities returns the server's capabilities, upper-cased, asking
// with CAPABILITY when the server has not announced them.
func (c *Client) Capabilities(ctx context.Context) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensureCaps(ctx); err != nil {
		return nil, err
	}
	return slices.Clone(c.caps), nil
}

// Has reports whether the server announced capability name (case
// insensitive), asking with CAPABILITY when it has not announced any.
func (c *Client) Has(ctx context.Context, name string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensureCaps(ctx); err != nil {
		return false, err
	}
	return c.has(name), nil
}

func (c *Client) has(name string) bool {
	return slices.Contains(c.caps, strings.ToUpper(name))
}

// ensureCaps runs CAPABILITY (RFC 3501 §6.1.1) unless the capabilities
// are known.
func (c *Client) ensureCaps(ctx context.Context) error {
	if c.caps != nil {
		return nil
	}
	_, err := c.do(ctx, "CAPABILITY", []byte("CAPABILITY"), nil, nil)
	if err == nil && c.caps == nil {
		return c.fail(fmt.Errorf("imap: CAPABILITY: %w: no capabilities", errSyntax))
	}
	return err
}

// noteCaps takes capabilities from a [CAPABILITY ...] response code or a
// CAPABILITY response.
func (c *Client) noteCaps(resp *response) {
	var caps []string
	switch {
	case resp.code == "CAPABILITY":
		caps = resp.args
	case resp.name == "CAPABILITY":
		for _, v := range resp.fields {
			if v.kind == vAtom {
				caps = append(caps, v.s)
			}
		}
	default:
		return
	}
	c.caps = make([]string, len(caps))
	for i, s := range caps {
		c.caps[i] = strings.ToUpper(s)
	}
}

// AuthenticatePlain logs in with SASL PLAIN (RFC 4616): authcid proves
// itself with password and acts as authzid ("" = itself). The initial
// response goes with the command when the server offers SASL-IR (RFC
// 4959), else after the continuation. A NO is an *Error. Neither the
// password nor the encoded response ever appears in an error.
func (c *Client) AuthenticatePlain(ctx context.Context, authzid, authcid, password string) error {
	const op = "AUTHENTICATE PLAIN"
	if strings.ContainsRune(authzid+authcid+password, 0) || authcid == "" || password == "" {
		return fmt.Errorf("imap: %s: %w: empty authcid or password, or NUL in a field", op, errArg)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensureCaps(ctx); err != nil {
		return err
	}
	if !c.has("AUTH=PLAIN") {
		return fmt.Errorf("imap: %s: server does not offer it", op)
	}
	ir := base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + authcid + "\x00" + password))
	line := []byte("AUTHENTICATE PLAIN")
	sent := false
	if c.has("SASL-IR") {
		line, sent = append(line, " "+ir...), true
	}
	cont := func(string) []byte {
		if sent {
			return []byte("*") // RFC 3501 §6.2.2: cancels; PLAIN has no second step
		}
		sent = true
		return []byte(ir)
	}
	resp, err := c.do(ctx, op, line, nil, cont)
	if err != nil {
		return err
	}
	// RFC 3501 §6.2.2: capabilities may change after authentication.
	c.caps = nil
	c.noteCaps(resp)
	return nil
}

// Logout sends LOGOUT (RFC 3501 §6.1.3) and closes the connection.
func (c *Client) Logout(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.do(ctx, "LOGOUT", []byte("LOGOUT"), nil, nil)
	if c.err == nil {
		c.err = fmt.Errorf("%w: logged out", errBroken)
	}
	if cerr := c.closeConn(); err == nil {
		err = cerr
	}
	return err
}

// Close closes the connection without LOGOUT. Closing twice is harmless.
func (c *Client) Close() error { return c.closeConn() }

func (c *Client) closeConn() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.conn.Close()
}

// do sends one command and reads its responses up to the tagged one,
// passing data responses to data and answering continuation requests
// with cont (nil: a continuation is a protocol error). A tagged NO or BAD
// is an *Error; an untagged BYE followed by the end of the connection is
// an *Error too. Errors are wrapped with op, and end the session unless
// they are a NO or BAD.
func (c *Client) do(ctx context.Context, op string, cmd []byte, data func(*response) error, cont func(string) []byte) (*response, error) {
	if c.err != nil {
		return nil, fmt.Errorf("imap: %s: %w", op, c.err)
	}
	stop, err := c.deadline(ctx)
	if err != nil {
		return nil, fmt.Errorf("imap: %s: %w", op, err)
	}
	defer stop()
	c.tag++
	tag := "s" + strconv.Itoa(c.tag)
	line := append(append([]byte(tag+" "), cmd...), "\r\n"...)
	if _, err := c.conn.Write(line); err != nil {
		return nil, c.fail(fmt.Errorf("imap: %s: write: %w", op, c.ctxErr(ctx, err)))
	}
	c.r.reset()
	var bye *Error
	for n := 0; ; n++ {
		if n == maxResponses {
			return nil, c.fail(fmt.Errorf("imap: %s: %w: more than %d responses", op, errTooLong, maxResponses))
		}
		resp, err := readResponse(c.r)
		if err != nil {
			err = c.ctxErr(ctx, err)
			if bye != nil {
				err = fmt.Errorf("%w (after %w)", bye, err)
			}
			return nil, c.fail(fmt.Errorf("imap: %s: read: %w", op, err))
		}
		switch {
		case resp.tag == "+":
			if cont == nil {
				return nil, c.fail(fmt.Errorf("imap: %s: %w: unexpected continuation request", op, errSyntax))
			}
			if _, err := c.conn.Write(append(cont(resp.text), "\r\n"...)); err != nil {
				return nil, c.fail(fmt.Errorf("imap: %s: write: %w", op, c.ctxErr(ctx, err)))
			}
		case resp.tag == tag:
			c.noteCaps(resp)
			if resp.status != "OK" {
				return nil, fmt.Errorf("imap: %s: %w", op, &Error{Kind: resp.status, Code: resp.code, Text: resp.text})
			}
			return resp, nil
		case resp.tag != "*":
			return nil, c.fail(fmt.Errorf("imap: %s: %w: response tagged %q, want %q", op, errSyntax, resp.tag, tag))
		case resp.status == "BYE":
			// RFC 3501 §7.1.5: the server is closing; LOGOUT's tagged OK
			// still follows.
			bye = &Error{Kind: "BYE", Code: resp.code, Text: resp.text}
		case resp.status != "":
			c.noteCaps(resp) // untagged OK [CAPABILITY ...] and friends
			if data != nil && resp.status == "OK" && resp.code != "" {
				// OK [UIDVALIDITY n] and friends, for Examine; the other
				// commands' data functions skip them (name "").
				if err := data(resp); err != nil {
					return nil, c.fail(fmt.Errorf("imap: %s: %w", op, err))
				}
			}
		default:
			c.noteCaps(resp)
			if data != nil {
				if err := data(resp); err != nil {
					return nil, c.fail(fmt.Errorf("imap: %s: %w", op, err))
				}
			}
		}
	}
}

// deadline bounds the next writes and reads by the timeout and ctx; the
// returned stop must be called when the command is over.
func (c *Client) deadline(ctx context.Context) (func() bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d := time.Now().Add(c.opt.Timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	if err := c.conn.SetDeadline(d); err != nil {
		return nil, c.fail(fmt.Errorf("set deadline: %w", err))
	}
	// Cancelling ctx interrupts whatever read or write is under way.
	conn := c.conn
	return context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) }), nil
}

// ctxErr puts ctx's error in front of an I/O error it caused.
func (c *Client) ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

// fail ends the session: the stream is out of step or gone. It returns
// err for the caller to return.
func (c *Client) fail(err error) error {
	if c.err == nil {
		c.err = fmt.Errorf("%w: %w", errBroken, err)
		c.closeConn()
	}
	return err
}

// quote renders s as an IMAP quoted string (RFC 3501 §4.3). It refuses
// what a quoted string cannot hold; we only send ASCII names.
func quote(s string) (string, error) {
	for i := range len(s) {
		if s[i] < ' ' || s[i] >= 0x7f {
			return "", fmt.Errorf("%w: %q needs a literal", errArg, s)
		}
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`, nil
}
