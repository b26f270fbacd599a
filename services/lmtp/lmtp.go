// Package lmtp is the LMTP callout and delivery proxy (RFC 2033): Exim
// verifies recipients and delivers over loopback TCP; RCPT is answered from
// the store, and accepted messages go on to Cyrus lmtpd's UNIX socket, whose
// per-recipient verdicts are relayed. Nothing is ever answered 250 before
// Cyrus said 250 for that recipient.
package lmtp

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/store"
)

// Store is the part of the store the proxy reads.
type Store interface {
	Generation(ctx context.Context) (int64, error)
	Resolve(ctx context.Context, c store.Canon, a store.Address) (store.Resolution, error)
	Domain(ctx context.Context, name string) (store.Domain, error)
}

// Service is the LMTP proxy.
type Service struct {
	cfg       atomic.Pointer[Config]
	st        Store
	canon     store.Canon
	log       *slog.Logger
	up        *upstream
	cyrus     string       // [cyrus] lmtp, as configured
	cyrusSize atomic.Int64 // Cyrus's SIZE (maxmessagesize) when known, else 0
	announced int64        // the SIZE our LHLO announces (go-smtp enforces it too)
	lns       []net.Listener
	slots     chan struct{}
	srv       *smtp.Server
	cache     cache
	conns     conns
	draining  atomic.Bool
	hard      context.Context // cancelled when the drain's grace is over
	cancel    context.CancelFunc
}

// New makes the proxy; cyrusLMTP is [cyrus] lmtp ("unix:/path" or
// "host:port"). Listen binds it.
func New(cfg Config, cyrusLMTP string, st Store, canon store.Canon, log *slog.Logger) *Service {
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
		if cfg.Hostname == "" {
			cfg.Hostname = "localhost"
		}
	}
	s := &Service{st: st, canon: canon, log: log, cyrus: cyrusLMTP, slots: make(chan struct{}, cfg.MaxConns)}
	s.cfg.Store(&cfg)
	s.announced = cfg.MaxSize
	s.up = newUpstream(upstreamCfg(cfg, cyrusLMTP))
	s.hard, s.cancel = context.WithCancel(context.Background())
	return s
}

func upstreamCfg(cfg Config, cyrusLMTP string) upstreamConfig {
	network, addr := listen.Split(cyrusLMTP)
	return upstreamConfig{
		Network: network, Addr: addr, Hostname: cfg.Hostname,
		ConnectTimeout: cfg.CyrusConnectTimeout, CommandTimeout: cfg.CyrusCommandTimeout,
		FinalTimeout: cfg.CyrusFinalTimeout, MaxConns: cfg.CyrusConns, WaitTimeout: cfg.CyrusWait,
		// lmtpd exits after 60 to 119 s idle (master's -T): reuse well
		// within that rather than meet a closed socket.
		IdleTimeout: 30 * time.Second,
	}
}

// UseListeners makes the service serve on sockets opened by someone else
// (systemd's socket activation) instead of binding its own; call it
// before Listen.
func (s *Service) UseListeners(lns []net.Listener) { s.lns = lns }

// Listen binds every configured address (unless UseListeners gave it
// sockets) and learns Cyrus's SIZE if Cyrus answers now; a Cyrus that is
// down does not stop us from starting (mail then waits in Exim's queue
// with a 451).
func (s *Service) Listen() error {
	cfg := s.cfg.Load()
	if s.lns == nil {
		lns, err := listen.ListenAll(cfg.Listen, cfg.SocketMode, cfg.SocketGroup, s.log)
		if err != nil {
			return err
		}
		s.lns = lns
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(cfg.CyrusConnectTimeout, 2*time.Second))
	defer cancel()
	if n, err := s.up.size(ctx); err != nil {
		s.log.Warn("Cyrus lmtpd does not answer yet; deliveries will be deferred until it does", "cyrus", s.cyrus, "err", err)
	} else {
		s.cyrusSize.Store(n)
	}
	s.announced = s.limit()
	s.srv = s.newServer(cfg)
	return nil
}

// limit is the message size limit in force: max_message_size, lowered by
// Cyrus's SIZE (its maxmessagesize, so that a message Cyrus would refuse
// with 552 is refused at MAIL instead) and by what our LHLO announced.
func (s *Service) limit() int64 {
	n := s.cfg.Load().MaxSize
	if c := s.cyrusSize.Load(); c > 0 {
		n = min(n, c)
	}
	if s.announced > 0 {
		n = min(n, s.announced)
	}
	return n
}

// newServer configures go-smtp. Its own timeouts and limits are outer
// bounds; ours, applied per session, are the ones that answer.
func (s *Service) newServer(cfg *Config) *smtp.Server {
	srv := smtp.NewServer(backend{s})
	srv.LMTP = true
	srv.Domain = cfg.Hostname
	srv.MaxRecipients = cfg.MaxRecipients
	// What LHLO announces as SIZE. go-smtp's DATA reader refuses a message
	// of exactly this many bytes (it fails the read after the last byte,
	// before the final dot), hence one more; the body check holds the
	// exact limit.
	srv.MaxMessageBytes = s.announced + 1
	srv.MaxLineLength = cfg.MaxLine + 2  // the body check answers first, cleanly
	srv.ReadTimeout = cfg.CommandTimeout // each command line; DATA has its own
	srv.WriteTimeout = cfg.CommandTimeout
	srv.ErrorLog = slogLogger{s.log}
	return srv
}

// Reload takes new limits, timeouts and policies; listen addresses, the
// connection limit and what LHLO announces need a restart.
func (s *Service) Reload(cfg Config) {
	old := s.cfg.Load()
	if cfg.Hostname == "" {
		cfg.Hostname = old.Hostname
	}
	if strings.Join(old.Listen, " ") != strings.Join(cfg.Listen, " ") || old.MaxConns != cfg.MaxConns ||
		old.SocketMode != cfg.SocketMode || old.SocketGroup != cfg.SocketGroup || old.Hostname != cfg.Hostname ||
		old.MaxRecipients != cfg.MaxRecipients || old.MaxLine != cfg.MaxLine || old.CommandTimeout != cfg.CommandTimeout {
		s.log.Warn("restart required for lmtp listen addresses, socket mode/group, hostname, max_connections, max_recipients, max_line_length and command_timeout")
		cfg.Listen, cfg.MaxConns, cfg.SocketMode, cfg.SocketGroup, cfg.Hostname = old.Listen, old.MaxConns, old.SocketMode, old.SocketGroup, old.Hostname
		cfg.MaxRecipients, cfg.MaxLine, cfg.CommandTimeout = old.MaxRecipients, old.MaxLine, old.CommandTimeout
	}
	if cfg.MaxSize > s.announced {
		s.log.Warn("restart required to raise max_message_size above the SIZE already announced", "announced", s.announced)
	}
	s.cfg.Store(&cfg)
	s.up.setConfig(upstreamCfg(cfg, s.cyrus))
}

// Run serves until ctx is cancelled, then lets transactions finish within
// grace and closes the rest (a client whose connection is closed before our
// reply keeps its message queued: never a loss).
func (s *Service) Run(ctx context.Context, grace func() time.Duration) error {
	feed := newFeedListener(s.lns[0].Addr())
	srv := &listen.Server{Name: "lmtp", Log: s.log, Slots: s.slots,
		// RFC 5321 §3.8: 421 and close; never a 5xx greeting, which
		// Exim would cache against the domain.
		Busy: func(c net.Conn) { c.Write([]byte("421 4.3.2 Too many connections, try again later\r\n")) },
		Handle: func(ctx context.Context, c net.Conn) {
			fc := &frontConn{Conn: c, s: s, done: make(chan struct{})}
			s.conns.add(fc)
			defer s.conns.remove(fc)
			if !feed.push(ctx, fc) {
				return
			}
			<-fc.done // go-smtp closes it when the session ends
		},
	}
	// Shutdown: sessions between transactions end now; the others after
	// their transaction (session.idle), within the grace.
	stop := context.AfterFunc(ctx, func() {
		s.draining.Store(true)
		s.conns.wakeIdle()
		// listen.Server closes the client connections when the grace is
		// over, but waits for their sessions, and a session waits for its
		// delivery to Cyrus: end those deliveries then (without the dot;
		// the client, cut off, keeps its message).
		time.AfterFunc(grace(), s.cancel)
	})
	defer stop()
	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(feed) }()
	var wg sync.WaitGroup
	for _, ln := range s.lns {
		wg.Go(func() { srv.Serve(ctx, ln, grace) })
	}
	wg.Wait()
	s.cancel() // upstream transactions still running end now, without the dot
	feed.Close()
	<-served
	s.up.Close()
	return nil
}

// backend makes a session per connection.
type backend struct{ s *Service }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	fc, _ := c.Conn().(*frontConn)
	return &session{s: b.s, conn: c.Conn(), fc: fc, cfg: b.s.cfg.Load()}, nil
}

// slogLogger gives go-smtp our logger (it reports panics and accept
// errors through it).
type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) {
	l.log.Error("smtp", "msg", fmt.Sprintf(format, v...))
}
func (l slogLogger) Println(v ...any) { l.log.Error("smtp", "msg", fmt.Sprint(v...)) }

// feedListener hands go-smtp the connections listen.Server accepted, so
// that the shared accept loop (limit, refusal, drain) serves LMTP too.
type feedListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newFeedListener(addr net.Addr) *feedListener {
	return &feedListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (f *feedListener) push(ctx context.Context, c net.Conn) bool {
	select {
	case f.conns <- c:
		return true
	case <-f.closed:
	case <-ctx.Done():
	}
	c.Close()
	return false
}

func (f *feedListener) Accept() (net.Conn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.closed:
		return nil, net.ErrClosed
	}
}

func (f *feedListener) Close() error   { f.once.Do(func() { close(f.closed) }); return nil }
func (f *feedListener) Addr() net.Addr { return f.addr }

// frontConn is a client connection: it tells Handle when go-smtp is done
// with it, and closes at once on a first line that is not LMTP (an HTTP
// request smuggled at the port, say), before go-smtp answers anything.
type frontConn struct {
	net.Conn
	s    *Service
	done chan struct{}
	once sync.Once
	busy atomic.Bool // in a transaction: the drain lets it finish
	// broken is set once a read failed (EOF included): whatever go-smtp
	// passed on as message data may be short. Its BDAT copies a chunk with
	// io.Copy over an io.LimitReader, which takes a client's EOF mid-chunk
	// for the end of the chunk, and a LAST chunk cut short for a message.
	broken  atomic.Bool
	checked bool
	first   []byte
	pending []byte // continuation lines of a reply not yet written
}

// Write sends a multi-line reply in one write: go-smtp flushes every line
// of it (LHLO's seven, Cyrus's three-line 550), and each write is a system
// call and, without TCP_NODELAY at the peer's side, a delayed ACK
// (cyrus-lab-facts §6). A line "NNN-..." (RFC 5321 §4.2.1) is held until
// the reply's last line comes.
func (c *frontConn) Write(p []byte) (int, error) {
	if isContinuation(p) && len(c.pending)+len(p) <= 64<<10 {
		c.pending = append(c.pending, p...)
		return len(p), nil
	}
	if len(c.pending) == 0 {
		return c.Conn.Write(p)
	}
	buf := append(c.pending, p...)
	c.pending = c.pending[:0]
	if _, err := c.Conn.Write(buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// isContinuation reports whether p is whole reply lines, the last of them
// "NNN-text".
func isContinuation(p []byte) bool {
	n := len(p)
	if n < 6 || p[n-2] != '\r' || p[n-1] != '\n' {
		return false
	}
	start := 0
	if i := bytes.LastIndexByte(p[:n-2], '\n'); i >= 0 {
		start = i + 1
	}
	line := p[start:]
	return len(line) >= 6 && line[3] == '-' && isDigit(line[0]) && isDigit(line[1]) && isDigit(line[2])
}

func (c *frontConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// Read ends the connection on a timeout, and between transactions once the
// drain has begun. go-smtp would go on: bufio's ReadLine hands it the part
// of a line that came before the timeout as a whole command, and after a
// DATA or BDAT timeout it would read the rest of the message as commands
// (smuggling into Cyrus's pre-authorised session). RFC 5321 §4.5.3.2: the
// server closes on a timeout, saying 421 first.
func (c *frontConn) Read(p []byte) (int, error) {
	if c.s.draining.Load() && !c.busy.Load() {
		return 0, c.end("421 4.3.2 Service shutting down, try again later")
	}
	n, err := c.Conn.Read(p)
	if err != nil {
		c.broken.Store(true)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		if c.s.draining.Load() && !c.busy.Load() {
			return 0, c.end("421 4.3.2 Service shutting down, try again later")
		}
		return 0, c.end("421 4.4.2 Timeout, closing connection")
	}
	if !c.checked && n > 0 {
		c.first = append(c.first, p[:n]...)
		if verdict := firstLine(c.first); verdict != 0 {
			c.checked, c.first = true, nil
			if verdict < 0 {
				return 0, c.end("221 2.7.0 Not an LMTP client, closing")
			}
		}
	}
	return n, err
}

// end says a last line and closes; go-smtp sees a closed connection and
// stops without another word. Only the goroutine in Read writes then: go-smtp
// writes replies from the same goroutine that reads.
func (c *frontConn) end(line string) error {
	c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.Conn.Write([]byte(line + "\r\n"))
	c.Conn.Close()
	return fmt.Errorf("lmtp: %s: %w", line, net.ErrClosed)
}

// firstLine judges a client's first command as far as it has arrived: +1
// fine, -1 not LMTP, 0 undecided. LMTP clients start with LHLO (RFC 2033
// §4.1); QUIT, NOOP and RSET are harmless, and HELO/EHLO get go-smtp's
// answer. Anything else, an HTTP method or a header line above all, is
// refused as Postfix's smtpd_forbidden_commands does.
func firstLine(b []byte) int {
	word := b
	for i, c := range b {
		if c == ' ' || c == '\r' || c == '\n' {
			word = b[:i]
			break
		}
		if i >= 4 {
			word = b[:5]
			break
		}
	}
	if len(word) < 4 && len(word) == len(b) {
		// Still arriving: decide on what is there.
		for _, c := range word {
			if !isLetter(c) {
				return -1
			}
		}
		return 0
	}
	switch strings.ToUpper(string(word)) {
	case "LHLO", "QUIT", "NOOP", "RSET", "HELO", "EHLO":
		return 1
	}
	return -1
}

func isLetter(c byte) bool { return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' }
