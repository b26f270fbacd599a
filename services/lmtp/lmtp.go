// Package lmtp is the LMTP callout and delivery proxy (RFC 2033): Exim
// verifies recipients and delivers over loopback TCP; RCPT is answered from
// the store, and accepted messages go on to Cyrus lmtpd's UNIX socket, whose
// per-recipient verdicts are relayed. Nothing is ever answered 250 before
// Cyrus said 250 for that recipient.
package lmtp

import (
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
	cfg      atomic.Pointer[Config]
	st       Store
	canon    store.Canon
	log      *slog.Logger
	up       *upstream
	cyrus    string       // [cyrus] lmtp, as configured
	limit    atomic.Int64 // message size limit in force: ours, lowered by Cyrus's SIZE
	lns      []net.Listener
	slots    chan struct{}
	srv      *smtp.Server
	cache    cache
	sessions sessions
	draining atomic.Bool
	hard     context.Context // cancelled when the drain's grace is over
	cancel   context.CancelFunc
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
	s.limit.Store(cfg.MaxSize)
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

// Listen binds every configured address and learns Cyrus's SIZE if Cyrus
// answers now; a Cyrus that is down does not stop us from starting (mail
// then waits in Exim's queue with a 451).
func (s *Service) Listen() error {
	cfg := s.cfg.Load()
	mode, err := listen.Mode(cfg.SocketMode)
	if err != nil {
		return err
	}
	for _, a := range cfg.Listen {
		ln, err := listen.Listen(a, listen.Options{Mode: mode, Group: cfg.SocketGroup})
		if err != nil {
			for _, l := range s.lns {
				l.Close()
			}
			return err
		}
		s.lns = append(s.lns, ln)
		s.log.Info("listening", "addr", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(cfg.CyrusConnectTimeout, 2*time.Second))
	defer cancel()
	if n, err := s.up.size(ctx); err != nil {
		s.log.Warn("Cyrus lmtpd does not answer yet; deliveries will be deferred until it does", "cyrus", s.cyrus, "err", err)
	} else {
		s.lowerLimit(n)
	}
	s.srv = s.newServer(cfg)
	return nil
}

// lowerLimit takes Cyrus's SIZE (its maxmessagesize; 0 = none) into the
// limit: a message Cyrus would refuse with 552 is refused at MAIL instead.
func (s *Service) lowerLimit(cyrusSize int64) {
	if cyrusSize > 0 && cyrusSize < s.cfg.Load().MaxSize {
		s.limit.Store(cyrusSize)
	}
}

// newServer configures go-smtp. Its own timeouts and limits are outer
// bounds; ours, applied per session, are the ones that answer.
func (s *Service) newServer(cfg *Config) *smtp.Server {
	srv := smtp.NewServer(backend{s})
	srv.LMTP = true
	srv.Domain = cfg.Hostname
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxMessageBytes = s.limit.Load() // what LHLO announces as SIZE
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
	s.cfg.Store(&cfg)
	s.limit.Store(min(cfg.MaxSize, s.limit.Load()))
	s.up.setConfig(upstreamCfg(cfg, s.cyrus))
}

// Run serves until ctx is cancelled, then lets transactions finish within
// grace and closes the rest (a client whose connection is closed before our
// reply keeps its message queued: never a loss).
func (s *Service) Run(ctx context.Context, grace func() time.Duration) error {
	feed := newFeedListener(s.lns[0].Addr())
	srv := &listen.Server{Log: s.log, Slots: s.slots,
		// RFC 5321 §3.8: 421 and close; never a 5xx greeting, which
		// Exim would cache against the domain.
		Busy: func(c net.Conn) { c.Write([]byte("421 4.3.2 Too many connections, try again later\r\n")) },
		Handle: func(ctx context.Context, c net.Conn) {
			fc := &frontConn{Conn: c, done: make(chan struct{})}
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
		s.sessions.wakeIdle()
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
	ss := &session{s: b.s, conn: c.Conn(), cfg: b.s.cfg.Load()}
	b.s.sessions.add(ss)
	return ss, nil
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
	done    chan struct{}
	once    sync.Once
	checked bool
	first   []byte
}

func (c *frontConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

func (c *frontConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.checked && n > 0 {
		c.first = append(c.first, p[:n]...)
		if verdict := firstLine(c.first); verdict != 0 {
			c.checked, c.first = true, nil
			if verdict < 0 {
				c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
				c.Conn.Write([]byte("221 2.7.0 Not an LMTP client, closing\r\n"))
				c.Conn.Close()
				return 0, fmt.Errorf("lmtp: not an LMTP client: %w", net.ErrClosed)
			}
		}
	}
	return n, err
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
