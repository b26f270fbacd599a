package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"cyrus-sidecar/services/listen"
)

// maxIdleQuotaConns is how many connections to smmapd are kept open between
// lookups. smmapd serves one connection per process (prefork), so a few
// are plenty and cost Cyrus little.
const maxIdleQuotaConns = 4

// maxQuotaConns bounds connections to smmapd at once: each is a Cyrus
// process (prefork), so a burst of lookups must not fork Cyrus to its limit.
const maxQuotaConns = 8

// quotaChecker asks Cyrus smmapd about a mailbox, for the one thing the
// store cannot know: whether it is over quota. smmapd keeps connections open
// for further requests (cyrus-lab-facts.md §7), so ours are reused.
type quotaChecker struct {
	addr    string
	timeout time.Duration
	idle    chan *quotaConn
	slots   chan struct{}
	closed  atomic.Bool // after a reload: connections coming back are closed
}

type quotaConn struct {
	net.Conn
	r *bufio.Reader
}

func newQuotaChecker(addr string, timeout time.Duration) *quotaChecker {
	if addr == "" {
		return nil
	}
	return &quotaChecker{addr: addr, timeout: timeout, idle: make(chan *quotaConn, maxIdleQuotaConns),
		slots: make(chan struct{}, maxQuotaConns)}
}

// check returns smmapd's status and text for a canonical user address.
// err means smmapd could not be asked (down, timeout, garbage). A kept
// connection may have been closed by smmapd meanwhile (after 360 s idle, at
// its use limit, when Cyrus reloads): that failure is retried once on a new
// connection, as Postfix's socketmap client does; a timeout is not.
func (q *quotaChecker) check(ctx context.Context, address string) (status, data string, err error) {
	start := time.Now()
	defer func() { listen.ObserveCyrus("socketmap", "quota", start, err) }()
	t := time.NewTimer(q.timeout)
	select {
	case q.slots <- struct{}{}:
		t.Stop()
	case <-t.C:
		return "", "", errors.New("quota check: all smmapd connections busy")
	}
	defer func() { <-q.slots }()
	c, pooled, err := q.conn(ctx)
	if err != nil {
		return "", "", err
	}
	status, data, err = q.ask(ctx, c, address)
	if err != nil && pooled && !errors.Is(err, os.ErrDeadlineExceeded) {
		if c, _, err = q.dial(ctx); err != nil {
			return "", "", err
		}
		status, data, err = q.ask(ctx, c, address)
	}
	return status, data, err
}

// ask sends one request on c and keeps c for later if it worked.
func (q *quotaChecker) ask(ctx context.Context, c *quotaConn, address string) (status, data string, err error) {
	deadline := time.Now().Add(q.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	// smmapd ignores the map name; any word will do.
	if _, err := c.Write(appendNetstring(nil, "cyrus ", address)); err != nil {
		c.Close()
		return "", "", fmt.Errorf("quota check: %w", err)
	}
	reply, err := readNetstring(c.r, MaxReply)
	if err != nil {
		c.Close()
		return "", "", fmt.Errorf("quota check: %w", err)
	}
	status, data, _ = strings.Cut(string(reply), " ")
	if q.closed.Load() {
		c.Close()
		return status, data, nil
	}
	select {
	case q.idle <- c:
	default:
		c.Close()
	}
	return status, data, nil
}

// conn takes a kept connection (pooled) or dials a new one.
func (q *quotaChecker) conn(ctx context.Context) (c *quotaConn, pooled bool, err error) {
	select {
	case c := <-q.idle:
		return c, true, nil
	default:
	}
	return q.dial(ctx)
}

func (q *quotaChecker) dial(ctx context.Context) (*quotaConn, bool, error) {
	network, addr := listen.Split(q.addr)
	d := net.Dialer{Timeout: q.timeout}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, false, fmt.Errorf("quota check: %w", err)
	}
	return &quotaConn{Conn: c, r: bufio.NewReader(c)}, false, nil
}

// close drops the idle connections.
func (q *quotaChecker) close() {
	if q == nil {
		return
	}
	q.closed.Store(true)
	for {
		select {
		case c := <-q.idle:
			c.Close()
		default:
			return
		}
	}
}
