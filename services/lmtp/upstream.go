package lmtp

// The client half of the proxy: a small LMTP client (RFC 2033) for Cyrus
// lmtpd with a bounded pool of connections. Not go-smtp's client: its
// DotWriter goes byte by byte and passes bare CR through, and it keys the
// per-recipient replies by address, so duplicate RCPTs collapse.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

const (
	// maxReplyLine and maxReplyLines bound one reply from Cyrus. RFC 5321
	// §4.5.3.1.5 allows 512 bytes a line; Cyrus's longest is its 3-line
	// 550 "Mailbox unknown" and Sieve reject texts.
	maxReplyLine  = 4096
	maxReplyLines = 100
	// writeBuffer is each connection's write buffer: the pipelined
	// envelope goes out in one write when it fits (RFC 2920 §3.1), and the
	// body in writes this large.
	writeBuffer = 32 << 10
	// quitTimeout bounds the courtesy QUIT on an idle connection we close.
	quitTimeout = 100 * time.Millisecond
)

// Defaults for zero fields of upstreamConfig (the service's config
// validation normally fills them).
const (
	defaultConnectTimeout = 10 * time.Second
	defaultCommandTimeout = 2 * time.Minute
	defaultFinalTimeout   = 8 * time.Minute // below Exim's 10 min final_timeout
	defaultMaxConns       = 10
	defaultWaitTimeout    = 20 * time.Second
	defaultIdleTimeout    = 30 * time.Second
)

var (
	// errBusy: every connection slot stayed busy for WaitTimeout.
	errBusy = errors.New("lmtp upstream: all Cyrus connections busy")
	// errUpstreamClosed: Close was called.
	errUpstreamClosed = errors.New("lmtp upstream: closed")
	// errReplySyntax: a reply line is not "NNN-text" / "NNN text".
	errReplySyntax = errors.New("malformed LMTP reply")
	// errReplyTooLong: a reply over maxReplyLine or maxReplyLines.
	errReplyTooLong = errors.New("LMTP reply over limit")
	// errEnvelopeSyntax: an address or parameter would break the command
	// line (CR, LF, other controls, angle brackets).
	errEnvelopeSyntax = errors.New("envelope field not allowed in an LMTP command")
)

// upstreamConfig: how to reach Cyrus.
type upstreamConfig struct {
	Network, Addr  string        // "unix", "/path/lmtp" or "tcp", "127.0.0.1:24"
	Hostname       string        // our LHLO argument
	ConnectTimeout time.Duration // dial + greeting + LHLO
	CommandTimeout time.Duration // each command reply (MAIL, RCPT, DATA 354, RSET), and each write of the body
	FinalTimeout   time.Duration // from the end of the body to the last per-recipient reply
	MaxConns       int           // open connections in all (busy + idle); Cyrus's lmtpd maxchild is 20 on Debian
	WaitTimeout    time.Duration // longest wait for a free connection slot when MaxConns are busy; then errBusy
	IdleTimeout    time.Duration // idle pooled connections older than this are closed instead of reused
}

// withDefaults fills zero fields, so that no read is ever without a deadline.
func (c upstreamConfig) withDefaults() upstreamConfig {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ConnectTimeout, defaultConnectTimeout)
	def(&c.CommandTimeout, defaultCommandTimeout)
	def(&c.FinalTimeout, defaultFinalTimeout)
	def(&c.WaitTimeout, defaultWaitTimeout)
	def(&c.IdleTimeout, defaultIdleTimeout)
	if c.MaxConns <= 0 {
		c.MaxConns = defaultMaxConns
	}
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	return c
}

// upstream is a pool of LMTP connections to Cyrus. Idle connections are
// always between transactions: one that stopped before the body was
// accepted is RSET before it goes back (RFC 5321 §4.1.1.5; Cyrus keeps
// MAIL after a refused DATA and even after a refused MAIL with parameters,
// and answers the next MAIL "503 5.5.1 Nested MAIL command").
type upstream struct {
	// dial and now are net.Dialer.DialContext and time.Now; tests
	// replace them to count writes and to age idle connections.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	now  func() time.Time

	mu       sync.Mutex
	cfg      upstreamConfig
	idle     []*lmtpConn   // most recently used last
	open     int           // busy + idle + being dialled
	freed    chan struct{} // closed (and replaced) when a slot or an idle connection frees up
	closed   bool
	cyrusMax int64 // SIZE from the last LHLO; valid once haveSize
	haveSize bool
}

// lmtpConn is one connection to lmtpd.
type lmtpConn struct {
	nc         net.Conn
	in         *countingReader
	r          *bufio.Reader
	dw         *deadlineWriter
	w          *bufio.Writer
	network    string
	addr       string
	pipelining bool
	pooled     bool      // came from the idle pool: Cyrus may have closed it meanwhile
	idleSince  time.Time // when it went back to the pool
}

// Reply is one LMTP reply, as Cyrus sent it.
type Reply struct {
	Code     int               // 0 = no verdict (connection failed before this reply)
	Enhanced smtp.EnhancedCode // from the last line; smtp.EnhancedCodeNotSet if none
	Lines    []string          // text of each line after "NNN-"/"NNN ", with the enhanced code removed from the last line
}

// Envelope is one transaction toward Cyrus.
type Envelope struct {
	From       string   // reverse path without <>, "" = null sender
	MailParams []string // already-sanitised ESMTP params, e.g. "BODY=8BITMIME", "AUTH=<a@b>", "SIZE=123"
	Rcpts      []string // forward paths without <>; duplicates allowed (each gets its own reply)
	RcptParams []string // params appended to every RCPT (e.g. "IGNOREQUOTA"); usually nil
}

// newUpstream makes a pool; it connects on first use.
func newUpstream(cfg upstreamConfig) *upstream {
	var d net.Dialer
	return &upstream{dial: d.DialContext, now: time.Now, cfg: cfg.withDefaults(), freed: make(chan struct{})}
}

// Close closes the idle connections; busy ones are closed when their
// transaction ends. Later calls fail with errUpstreamClosed.
func (u *upstream) Close() error {
	u.mu.Lock()
	u.closed = true
	idle := u.idle
	u.idle = nil
	u.open -= len(idle)
	u.wake()
	u.mu.Unlock()
	for _, c := range idle {
		c.quit()
	}
	return nil
}

// setConfig takes new timeouts and limits at once. A new Network/Addr is
// used for new connections; idle ones to the old address are closed
// instead of reused.
func (u *upstream) setConfig(cfg upstreamConfig) {
	u.mu.Lock()
	u.cfg = cfg.withDefaults()
	u.wake() // MaxConns may have grown
	u.mu.Unlock()
}

func (u *upstream) config() upstreamConfig {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.cfg
}

// deliver runs MAIL, RCPT..., DATA, the dot-stuffed body, "." and returns
// exactly len(env.Rcpts) replies in RCPT order, plus an error describing any
// failure (for logging). replies[i].Code==0 means Cyrus gave no verdict for
// i; err is nil exactly when every recipient has a verdict.
//
// A reused connection that turns out closed by Cyrus (lmtpd exits when
// idle) before the first reply is replaced once: nothing was accepted on
// it. Once Cyrus said 354 there is no retry, and on any failure in the
// body the connection is closed without the final dot (RFC 5321 §4.1.1.4:
// only the dot commits the message).
func (u *upstream) deliver(ctx context.Context, env Envelope, body io.Reader) (replies []Reply, err error) {
	start := time.Now()
	defer func() { observeCyrus("deliver", start, err) }()
	replies = make([]Reply, len(env.Rcpts))
	if len(env.Rcpts) == 0 {
		return replies, errors.New("lmtp upstream: no recipients")
	}
	if err := env.check(); err != nil {
		return replies, fmt.Errorf("lmtp upstream: %w", err)
	}
	for attempt := 1; ; attempt++ {
		t, err := u.begin(ctx, env, replies, attempt > 1)
		if err != nil {
			return replies, err
		}
		stop := context.AfterFunc(ctx, func() { t.c.nc.Close() }) // aborts any read or write: never the dot
		err = t.run(body)
		if err = u.end(ctx, t, stop, err); t.stale && attempt == 1 {
			clear(replies)
			continue
		}
		return replies, err
	}
}

// check asks Cyrus whether it would accept rcpt now (live quota check):
// MAIL FROM:<> [SIZE=n if size>0], RCPT TO:<rcpt>, RSET, pipelined in one
// write. It returns the RCPT reply, or the MAIL reply if MAIL was refused
// (such as 552 5.2.3 for a size over Cyrus's maxmessagesize). err is nil
// exactly when the reply has a Code.
func (u *upstream) check(ctx context.Context, rcpt string, size int64) (_ Reply, err error) {
	start := time.Now()
	defer func() { observeCyrus("check", start, err) }()
	env := Envelope{Rcpts: []string{rcpt}}
	if size > 0 {
		env.MailParams = []string{"SIZE=" + strconv.FormatInt(size, 10)}
	}
	if err := env.check(); err != nil {
		return Reply{}, fmt.Errorf("lmtp upstream: %w", err)
	}
	replies := make([]Reply, 1)
	for attempt := 1; ; attempt++ {
		t, err := u.begin(ctx, env, replies, attempt > 1)
		if err != nil {
			return Reply{}, err
		}
		stop := context.AfterFunc(ctx, func() { t.c.nc.Close() })
		err = t.check()
		if err = u.end(ctx, t, stop, err); t.stale && attempt == 1 {
			replies[0] = Reply{}
			continue
		}
		return replies[0], err
	}
}

// begin takes a connection for a transaction.
func (u *upstream) begin(ctx context.Context, env Envelope, replies []Reply, fresh bool) (*transaction, error) {
	c, err := u.acquire(ctx, fresh)
	if err != nil {
		return nil, err
	}
	cfg := u.config()
	c.dw.timeout = cfg.CommandTimeout
	return &transaction{ctx: ctx, cfg: cfg, c: c, env: env, replies: replies, start: c.in.n}, nil
}

// end gives the connection back (to the pool if it is clean and ctx did
// not close it) and adds the cause to an error ctx caused. A stale
// transaction is retried only if ctx is still live.
func (u *upstream) end(ctx context.Context, t *transaction, stop func() bool, err error) error {
	live := stop()
	u.release(t.c, live && err == nil && t.clean)
	if !live {
		t.stale = false
		if err != nil {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
	}
	return err
}

// poolStats is what the metrics show of the pool.
type poolStats struct{ open, idle int }

func (u *upstream) stats() poolStats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return poolStats{u.open, len(u.idle)}
}

// size returns the SIZE Cyrus announced in its LHLO reply (0 = none),
// connecting if no connection was made yet.
func (u *upstream) size(ctx context.Context) (int64, error) {
	u.mu.Lock()
	n, ok := u.cyrusMax, u.haveSize
	u.mu.Unlock()
	if ok {
		return n, nil
	}
	c, err := u.acquire(ctx, false)
	if err != nil {
		return 0, err
	}
	u.release(c, true)
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.cyrusMax, nil
}

// acquire returns an idle connection or a new one, waiting at most
// WaitTimeout (and ctx) for a slot when MaxConns are open. fresh skips the
// idle connections and closes them: one of them was just found closed by
// Cyrus, and those idle as long are likely closed too (a Cyrus restart
// closes them all).
func (u *upstream) acquire(ctx context.Context, fresh bool) (*lmtpConn, error) {
	var timeout <-chan time.Time
	for {
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			return nil, errUpstreamClosed
		}
		cfg := u.cfg
		c, drop := u.takeIdle(cfg, fresh)
		reserved := c == nil && u.open < cfg.MaxConns
		if reserved {
			u.open++
		}
		freed := u.freed
		u.mu.Unlock()
		for _, d := range drop {
			d.quit()
		}
		switch {
		case c != nil:
			return c, nil
		case reserved:
			c, err := u.connect(ctx, cfg)
			if err != nil {
				u.release(nil, false)
				return nil, err
			}
			return c, nil
		}
		if timeout == nil {
			t := time.NewTimer(cfg.WaitTimeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-freed:
		case <-timeout:
			return nil, fmt.Errorf("%w (%d open, waited %v)", errBusy, cfg.MaxConns, cfg.WaitTimeout)
		case <-ctx.Done():
			return nil, fmt.Errorf("lmtp upstream: wait for a connection: %w", context.Cause(ctx))
		}
	}
}

// takeIdle pops the most recently used idle connection after prune.
// u.mu is held.
func (u *upstream) takeIdle(cfg upstreamConfig, fresh bool) (*lmtpConn, []*lmtpConn) {
	drop := u.prune(cfg, fresh)
	n := len(u.idle)
	if n == 0 {
		return nil, drop
	}
	c := u.idle[n-1]
	u.idle[n-1] = nil
	u.idle = u.idle[:n-1]
	c.pooled = true
	return c, drop
}

// prune removes the idle connections idle longer than IdleTimeout or to
// another address than cfg's (or all of them) and returns them for
// closing outside u.mu. u.mu is held.
func (u *upstream) prune(cfg upstreamConfig, all bool) []*lmtpConn {
	var drop []*lmtpConn
	keep := u.idle[:0]
	now := u.now()
	for _, c := range u.idle {
		if all || now.Sub(c.idleSince) > cfg.IdleTimeout || c.network != cfg.Network || c.addr != cfg.Addr {
			drop = append(drop, c)
			continue
		}
		keep = append(keep, c)
	}
	clear(u.idle[len(keep):])
	u.idle = keep
	u.open -= len(drop)
	if len(drop) > 0 {
		u.wake()
	}
	return drop
}

// release ends a use of c (nil: a slot whose dial failed). A clean c goes
// back to the pool, unless the pool is closed or over MaxConns after a
// reload; any other is closed at once.
func (u *upstream) release(c *lmtpConn, clean bool) {
	u.mu.Lock()
	cfg := u.cfg
	drop := u.prune(cfg, false)
	keep := c != nil && clean && !u.closed && u.open <= cfg.MaxConns && c.network == cfg.Network && c.addr == cfg.Addr
	if keep {
		c.idleSince = u.now()
		u.idle = append(u.idle, c)
	} else {
		u.open--
	}
	u.wake()
	u.mu.Unlock()
	for _, d := range drop {
		d.quit()
	}
	switch {
	case c == nil || keep:
	case clean:
		c.quit()
	default:
		c.nc.Close() // mid-transaction: Cyrus drops it (no dot was sent)
	}
}

// wake tells waiting acquires that something changed. u.mu is held.
func (u *upstream) wake() {
	close(u.freed)
	u.freed = make(chan struct{})
}

// connect dials Cyrus, reads its greeting and sends LHLO, all within
// ConnectTimeout (RFC 2033 §4.1).
func (u *upstream) connect(ctx context.Context, cfg upstreamConfig) (*lmtpConn, error) {
	if strings.ContainsFunc(cfg.Hostname, badCommandRune) || strings.Contains(cfg.Hostname, " ") {
		return nil, fmt.Errorf("lmtp upstream: LHLO %q: %w", cfg.Hostname, errEnvelopeSyntax)
	}
	deadline := time.Now().Add(cfg.ConnectTimeout)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	nc, err := u.dial(dctx, cfg.Network, cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("lmtp upstream: connect: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	in := &countingReader{r: nc}
	dw := &deadlineWriter{nc: nc, timeout: cfg.ConnectTimeout}
	c := &lmtpConn{nc: nc, in: in, r: bufio.NewReader(in), dw: dw, w: bufio.NewWriterSize(dw, writeBuffer),
		network: cfg.Network, addr: cfg.Addr}
	size, err := c.hello(deadline, cfg.Hostname)
	if !stop() && err == nil {
		err = context.Cause(ctx)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("lmtp upstream: connect to %s: %w", cfg.Addr, err)
	}
	u.mu.Lock()
	u.cyrusMax, u.haveSize = size, true
	u.mu.Unlock()
	return c, nil
}

// hello reads the greeting, sends LHLO and reads the capabilities: it
// returns SIZE (0 when Cyrus gives none or no number, as 3.6 does without
// maxmessagesize) and notes PIPELINING.
func (c *lmtpConn) hello(deadline time.Time, hostname string) (int64, error) {
	if err := c.nc.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	greeting, err := readReply(c.r)
	if err != nil {
		return 0, fmt.Errorf("greeting: %w", err)
	}
	if greeting.Code != 220 {
		return 0, fmt.Errorf("greeting: %s", greeting)
	}
	if _, err := c.w.WriteString("LHLO " + hostname + "\r\n"); err != nil {
		return 0, fmt.Errorf("LHLO: %w", err)
	}
	if err := c.w.Flush(); err != nil {
		return 0, fmt.Errorf("LHLO: %w", err)
	}
	caps, err := readReply(c.r)
	if err != nil {
		return 0, fmt.Errorf("LHLO: %w", err)
	}
	if caps.Code != 250 {
		return 0, fmt.Errorf("LHLO: %s", caps)
	}
	var size int64
	// RFC 5321 §4.1.1.1: the first line names the server, each further
	// line is a keyword (case-insensitive) and its parameters.
	for _, line := range caps.Lines[1:] {
		kw, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(kw) {
		case "PIPELINING":
			c.pipelining = true
		case "SIZE": // RFC 1870 §4: "SIZE" alone or "SIZE <max>"
			if n, err := strconv.ParseInt(arg, 10, 64); err == nil && n > 0 {
				size = n
			}
		}
	}
	return size, nil
}

// quit sends QUIT, as a courtesy, and closes c.
func (c *lmtpConn) quit() {
	// Best effort: the connection goes either way, and the 221 is not
	// waited for.
	_ = c.nc.SetWriteDeadline(time.Now().Add(quitTimeout))
	_, _ = io.WriteString(c.nc, "QUIT\r\n")
	c.nc.Close()
}

// ctxReader fails a read that ends after ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if cerr := context.Cause(r.ctx); cerr != nil {
		return 0, cerr
	}
	return n, err
}

// countingReader counts the bytes read from the connection.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// deadlineWriter gives each write to the connection timeout to complete,
// so that a body write that makes no progress fails instead of hanging.
type deadlineWriter struct {
	nc      net.Conn
	timeout time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if err := d.nc.SetWriteDeadline(time.Now().Add(d.timeout)); err != nil {
		return 0, err
	}
	return d.nc.Write(p)
}
