package managesieve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// errNoTLS: RequireTLS, and the server does not offer STARTTLS.
var errNoTLS = errors.New("server does not offer STARTTLS")

// Client is a ManageSieve session. Its methods are serialised; Close may
// be called at any time, also to abort a command in progress.
type Client struct {
	mu     sync.Mutex // held for a whole command
	conn   net.Conn   // the TLS connection after STARTTLS
	r      *reader
	opt    Options
	caps   Capabilities
	err    error // sticky: the session ended (errBroken wrapping why)
	closed atomic.Bool
}

// Dial connects to a ManageSieve server, reads its capabilities and, when
// opt.TLSConfig is set and the server offers it, does STARTTLS. ctx bounds
// all of that; after Dial returns, each command is bounded by
// opt.Timeout.
func Dial(ctx context.Context, network, addr string, opt Options) (*Client, error) {
	opt = opt.withDefaults()
	d := net.Dialer{Timeout: opt.Timeout}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err // *net.OpError names the operation and address
	}
	if cfg := opt.TLSConfig; cfg != nil && cfg.ServerName == "" {
		// Verify the name we dialled, as net/smtp does.
		if host, _, err := net.SplitHostPort(addr); err == nil {
			cfg = cfg.Clone()
			cfg.ServerName = host
			opt.TLSConfig = cfg
		}
	}
	return newClient(ctx, conn, opt)
}

// NewClient starts a session over conn as Dial does, with no context. On
// error conn is closed. For STARTTLS, opt.TLSConfig must name the server
// (ServerName), as there is no address to take it from.
func NewClient(conn net.Conn, opt Options) (*Client, error) {
	return newClient(context.Background(), conn, opt.withDefaults())
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	return o
}

func newClient(ctx context.Context, conn net.Conn, opt Options) (*Client, error) {
	c := &Client{conn: conn, r: newReader(conn), opt: opt}
	if err := c.start(ctx); err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		// The read deadline we set from ctx's may fire just before ctx's
		// own timer does.
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return nil, fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		return nil, err
	}
	return c, nil
}

// start reads the greeting and does STARTTLS.
func (c *Client) start(ctx context.Context) error {
	if c.opt.RequireTLS && c.opt.TLSConfig == nil {
		return fmt.Errorf("%w: RequireTLS without TLSConfig", errArg)
	}
	// Cancelling ctx interrupts whatever read or write is under way. The
	// TCP connection's deadline also stops a TLS connection over it.
	raw := c.conn
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	// RFC 5804 §1.7: the server greets with its capabilities.
	if err := c.readCapabilities(ctx, "greeting", nil); err != nil {
		return err
	}
	if c.opt.TLSConfig == nil {
		return nil
	}
	if !c.caps.StartTLS {
		if c.opt.RequireTLS {
			return errNoTLS
		}
		return nil
	}
	if _, err := c.do(ctx, "STARTTLS", []byte("STARTTLS\r\n")); err != nil {
		return err
	}
	// Bytes the server sent after OK but before the handshake would be
	// read as if they came over TLS: an injection (cf. CVE-2011-0411).
	if c.r.br.Buffered() > 0 {
		return c.fail(fmt.Errorf("STARTTLS: %w: data after OK, before the TLS handshake", errSyntax))
	}
	tc := tls.Client(c.conn, c.opt.TLSConfig)
	if err := c.deadline(ctx); err != nil {
		return err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return c.fail(fmt.Errorf("STARTTLS handshake: %w", err))
	}
	c.conn, c.r = tc, newReader(tc)
	// RFC 5804 §2.2: after the handshake the server sends its capabilities
	// again, and the client must forget the old ones.
	return c.readCapabilities(ctx, "capabilities after STARTTLS", nil)
}

// readCapabilities reads a capability response into c.caps; with cmd set
// it sends cmd first.
func (c *Client) readCapabilities(ctx context.Context, op string, cmd []byte) error {
	resp, err := c.do(ctx, op, cmd)
	if err != nil {
		return err
	}
	caps, err := parseCapabilities(resp.data)
	if err != nil {
		return c.fail(fmt.Errorf("%s: %w", op, err))
	}
	c.caps = caps
	return nil
}

// Capabilities returns a copy of the server's latest capabilities.
func (c *Client) Capabilities() Capabilities {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.caps.clone()
}

// cmd runs one command under the lock with a fresh timeout.
func (c *Client) cmd(op string, line []byte) (*response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.do(context.Background(), op, line)
}

// do writes line (if any) and reads the reply. A NO is an *Error; a BYE
// is an *Error too and ends the session; an I/O or syntax failure ends it
// as well. Errors are wrapped with op.
func (c *Client) do(ctx context.Context, op string, line []byte) (*response, error) {
	if err := c.send(ctx, op, line); err != nil {
		return nil, err
	}
	resp, err := c.recv(op)
	if err != nil {
		return nil, err
	}
	return resp, c.check(op, resp)
}

// send sets the deadline and writes line, if any.
func (c *Client) send(ctx context.Context, op string, line []byte) error {
	if c.err != nil {
		return fmt.Errorf("%s: %w", op, c.err)
	}
	if err := c.deadline(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if len(line) > 0 {
		if _, err := c.conn.Write(line); err != nil {
			return c.fail(fmt.Errorf("%s: write: %w", op, err))
		}
	}
	return nil
}

// recv reads one reply as it is, NO and BYE included.
func (c *Client) recv(op string) (*response, error) {
	if c.err != nil {
		return nil, fmt.Errorf("%s: %w", op, c.err)
	}
	resp, err := readResponse(c.r)
	if err != nil {
		return nil, c.fail(fmt.Errorf("%s: read reply: %w", op, err))
	}
	return resp, nil
}

// check turns a NO or BYE into an error wrapped with op.
func (c *Client) check(op string, resp *response) error {
	err := resp.err()
	if err == nil {
		return nil
	}
	err = fmt.Errorf("%s: %w", op, err)
	if resp.kind == "BYE" {
		// RFC 5804 §1.3: BYE means the server is closing the connection.
		c.fail(err)
	}
	return err
}

// deadline bounds the next write and read by the timeout and ctx.
func (c *Client) deadline(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := time.Now().Add(c.opt.Timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	if err := c.conn.SetDeadline(d); err != nil {
		return c.fail(fmt.Errorf("set deadline: %w", err))
	}
	// A cancel between the check above and SetDeadline would be undone by
	// it; look again.
	if ctx.Err() != nil {
		c.conn.SetDeadline(time.Unix(1, 0))
	}
	return nil
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

// Logout sends LOGOUT (RFC 5804 §2.3) and closes the connection. It
// returns the server's refusal or the failure that ended the session
// earlier, if any. Prefer it to Close: timsieved 3.6.1 crashes when an
// authenticated client just hangs up (see the package doc).
func (c *Client) Logout() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.do(context.Background(), "LOGOUT", []byte("LOGOUT\r\n"))
	if c.err == nil {
		c.err = fmt.Errorf("%w: logged out", errBroken)
	}
	if cerr := c.closeConn(); err == nil {
		err = cerr
	}
	return err
}

// Close closes the connection without LOGOUT. Closing twice is harmless.
func (c *Client) Close() error {
	return c.closeConn()
}

func (c *Client) closeConn() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.conn.Close()
}
