// Package socketmap answers Sendmail/Postfix socketmap lookups (netstrings,
// "<len>:<map> <key>," answered "<len>:<STATUS> <data>,") from the store, for
// persistent and pipelined clients (Postfix, sendmail) and for the
// write-then-half-close style of Exim's ${readsocket}, on the same listener.
package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/store"
)

// Config is the [socketmap] section.
type Config struct {
	Enabled      bool          `toml:"enabled"`
	Listen       []string      `toml:"listen"`
	SocketMode   string        `toml:"socket_mode"`
	SocketGroup  string        `toml:"socket_group"`
	MaxConns     int           `toml:"max_connections"`
	IdleTimeout  time.Duration `toml:"idle_timeout"`
	ReadTimeout  time.Duration `toml:"read_timeout"`
	WriteTimeout time.Duration `toml:"write_timeout"`
	CacheEntries int           `toml:"cache_entries"`
	// QuotaCheck is Cyrus smmapd's address ("unix:/run/cyrus/socket/smmapd"):
	// when set, the mailbox map asks it about users the store accepts and
	// relays its over-quota answer (TEMP Over quota). "" = no check.
	QuotaCheck   string        `toml:"quota_check"`
	QuotaTimeout time.Duration `toml:"quota_timeout"`
	Maps         MapNames      `toml:"maps"`
}

// MapNames are the names clients use for each map (the part of the request
// before the space). "" turns a map off.
type MapNames struct {
	Mailbox     string `toml:"mailbox"`
	Domain      string `toml:"domain"`
	Alias       string `toml:"alias"`
	SenderLogin string `toml:"sender_login"`
}

// DefaultConfig listens on socketmap.sock in runtimeDir.
func DefaultConfig(runtimeDir string) Config {
	return Config{
		Enabled:      true,
		Listen:       []string{"unix:" + runtimeDir + "/socketmap.sock"},
		SocketMode:   "0666",
		MaxConns:     512,
		IdleTimeout:  30 * time.Second, // Postfix closes idle ones after 10 s itself
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		CacheEntries: 100_000,
		QuotaTimeout: 2 * time.Second,
		Maps:         MapNames{Mailbox: "mailbox", Domain: "domain", Alias: "alias", SenderLogin: "sender_login"},
	}
}

// Validate returns every problem, each as "key: message" relative to the
// section, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Enabled && len(c.Listen) == 0 {
		bad("listen", "must name at least one address when enabled")
	}
	for _, a := range c.Listen {
		if msg := listen.CheckListen(a); msg != "" {
			bad("listen", "%s", msg)
		}
	}
	if _, err := listen.Mode(c.SocketMode); err != nil {
		bad("socket_mode", "%v", err)
	}
	if c.MaxConns < 1 || c.MaxConns > 100_000 {
		bad("max_connections", "must be between 1 and 100000, got %d", c.MaxConns)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"idle_timeout", c.IdleTimeout}, {"read_timeout", c.ReadTimeout}, {"write_timeout", c.WriteTimeout}} {
		if d.v < 100*time.Millisecond || d.v > time.Hour {
			bad(d.key, "must be between 100ms and 1h, got %s", d.v)
		}
	}
	if c.QuotaCheck != "" {
		if msg := listen.Check(c.QuotaCheck); msg != "" {
			bad("quota_check", "%s", msg)
		}
	}
	if c.QuotaTimeout < 100*time.Millisecond || c.QuotaTimeout > time.Minute {
		bad("quota_timeout", "must be between 100ms and 1m, got %s", c.QuotaTimeout)
	}
	if c.CacheEntries < 0 {
		bad("cache_entries", "must be 0 (no cache) or more, got %d", c.CacheEntries)
	}
	seen := map[string]string{}
	for _, m := range []struct{ key, name string }{{"maps.mailbox", c.Maps.Mailbox}, {"maps.domain", c.Maps.Domain},
		{"maps.alias", c.Maps.Alias}, {"maps.sender_login", c.Maps.SenderLogin}} {
		if m.name == "" {
			continue
		}
		if strings.ContainsAny(m.name, " ,:") || len(m.name) > 64 {
			bad(m.key, "must be a word without spaces, ',' or ':', got %q", m.name)
		}
		if other, dup := seen[m.name]; dup {
			bad(m.key, "%q is already the name of %s", m.name, other)
		}
		seen[m.name] = m.key
	}
	return errors.Join(errs...)
}

// Store is the part of the store the responder reads.
type Store interface {
	Generation(ctx context.Context) (int64, error)
	Resolve(ctx context.Context, c store.Canon, a store.Address) (store.Resolution, error)
	Domain(ctx context.Context, name string) (store.Domain, error)
}

// Service is the socketmap responder.
type Service struct {
	cfg   atomic.Pointer[Config]
	st    Store
	canon store.Canon
	log   *slog.Logger
	lns   []net.Listener
	slots chan struct{} // one per open connection
	cache cache
	quota atomic.Pointer[quotaChecker] // nil: no quota check
}

// New makes the responder; Listen binds it.
func New(cfg Config, st Store, canon store.Canon, log *slog.Logger) *Service {
	s := &Service{st: st, canon: canon, log: log, slots: make(chan struct{}, cfg.MaxConns)}
	s.cfg.Store(&cfg)
	s.quota.Store(newQuotaChecker(cfg.QuotaCheck, cfg.QuotaTimeout))
	return s
}

// UseListeners makes the service serve on sockets opened by someone else
// (systemd's socket activation) instead of binding its own; call it
// before Listen.
func (s *Service) UseListeners(lns []net.Listener) { s.lns = lns }

// Listen binds every configured address, unless UseListeners gave it
// sockets.
func (s *Service) Listen() error {
	if s.lns != nil {
		return nil
	}
	cfg := s.cfg.Load()
	lns, err := listen.ListenAll(cfg.Listen, cfg.SocketMode, cfg.SocketGroup, s.log)
	s.lns = lns
	return err
}

// Reload takes new limits, timeouts and map names; listen addresses and the
// connection limit need a restart.
func (s *Service) Reload(cfg Config) {
	old := s.cfg.Load()
	if strings.Join(old.Listen, " ") != strings.Join(cfg.Listen, " ") || old.MaxConns != cfg.MaxConns ||
		old.SocketMode != cfg.SocketMode || old.SocketGroup != cfg.SocketGroup {
		s.log.Warn("restart required for socketmap listen addresses, socket mode/group and max_connections")
		cfg.Listen, cfg.MaxConns, cfg.SocketMode, cfg.SocketGroup = old.Listen, old.MaxConns, old.SocketMode, old.SocketGroup
	}
	if old.QuotaCheck != cfg.QuotaCheck || old.QuotaTimeout != cfg.QuotaTimeout {
		s.quota.Swap(newQuotaChecker(cfg.QuotaCheck, cfg.QuotaTimeout)).close()
	}
	s.cfg.Store(&cfg)
}

// Run serves until ctx is cancelled, then lets connections finish the
// request they are in within grace and closes the rest. It returns nil:
// accept errors are retried, not fatal.
func (s *Service) Run(ctx context.Context, grace func() time.Duration) error {
	srv := &listen.Server{Name: "socketmap", Log: s.log, Slots: s.slots,
		// A well-formed "try later" at once, never a hang (the client
		// reads one reply to its one request).
		Busy:   func(c net.Conn) { c.Write(appendNetstring(nil, "TEMP too many connections")) },
		Handle: s.serveConn,
	}
	var wg sync.WaitGroup
	for _, ln := range s.lns {
		wg.Go(func() { srv.Serve(ctx, ln, grace) })
	}
	wg.Wait()
	s.quota.Load().close()
	return nil
}

// serveConn answers requests in order until EOF, an idle timeout, a
// framing error or shutdown: exactly one reply per request, plus one PERM
// for bad framing before closing.
func (s *Service) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	// Shutdown wakes a connection that waits for its next request.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	br := bufio.NewReader(c)
	bw := bufio.NewWriter(c)
	pending := false // a request was read and not yet answered
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic serving a request", "panic", p, "stack", string(debug.Stack()))
			if pending { // our trouble: try later, never a silent drop
				c.SetWriteDeadline(time.Now().Add(time.Second))
				bw.Write(appendNetstring(nil, "TEMP internal error"))
				bw.Flush()
			}
		}
	}()
	// Whatever way the loop ends, replies already written reach the client.
	defer func() {
		if bw.Buffered() > 0 {
			c.SetWriteDeadline(time.Now().Add(s.cfg.Load().WriteTimeout))
			bw.Flush()
		}
	}()
	// A request that has begun is answered properly even during the
	// shutdown drain (not "store unavailable"); each lookup has its own
	// timeout, and the drain's grace with its close-all is the hard stop.
	answerCtx := context.WithoutCancel(ctx)
	var out []byte
	var dl deadlines
	// One clock read per request (a vDSO call costs 50-100 ns on these
	// VMs, and five of them showed as 3.5 % of the CPU at 64 connections):
	// now is when the last request arrived, which the deadline checks and
	// the metrics share; the read check after an answer is microseconds
	// late at most.
	now := time.Now()
	for {
		cfg := s.cfg.Load()
		dl.read(c, cfg.IdleTimeout, now)
		// Checked after the deadline is set: a shutdown that came before
		// is seen here, one that comes after resets the deadline to now.
		if ctx.Err() != nil {
			return
		}
		if _, err := br.Peek(1); err != nil {
			return // EOF, idle timeout or shutdown: nothing half-read
		}
		cfg = s.cfg.Load() // a reload during the wait applies to this request
		if !bufferedRequest(br) {
			// The rest of the request is still on its way: it gets
			// read_timeout, not the idle time (slow-drip clients).
			dl.readOnce(c, cfg.ReadTimeout)
			if ctx.Err() != nil {
				return // shutdown came between the wait and the deadline
			}
		}
		req, err := readNetstring(br, MaxRequest)
		if err != nil {
			if errors.Is(err, errSyntax) || errors.Is(err, errTooLarge) {
				// Out of step: answer once, then close (as smmapd and
				// postsrsd do), never guess where the next request starts.
				badFraming.Inc()
				s.log.Warn("bad request framing", "err", err, "remote", c.RemoteAddr().String())
				bw.Write(appendNetstring(out[:0], "PERM bad netstring framing"))
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
				s.log.Debug("read request", "err", err)
			}
			return
		}
		pending = true
		now = time.Now()
		status, data := s.answer(answerCtx, cfg, req)
		observe(cfg, req, status, now)
		out = appendNetstring(out[:0], status, " ", data)
		// bufio writes through by itself once a batch of replies fills
		// its buffer: the write deadline must be current before any Write.
		dl.write(c, cfg.WriteTimeout, now)
		bw.Write(out)
		pending = false
		// A pipelined batch gets one write; but before any read that could
		// wait for the client, the client must have its answers.
		if !bufferedRequest(br) {
			dl.write(c, cfg.WriteTimeout, now)
			if err := bw.Flush(); err != nil {
				s.log.Debug("write reply", "err", err)
				return
			}
		}
	}
}

// bufferedRequest reports whether br already holds the whole next
// netstring (or a framing error, which reading reports without waiting),
// so that reading it cannot block.
func bufferedRequest(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	for i, c := range b {
		switch {
		case c == ':':
			if i == 0 {
				return true // no length: a framing error
			}
			n, err := strconv.Atoi(string(b[:i]))
			return err != nil || n > MaxRequest || len(b) >= i+n+2
		case c < '0' || c > '9' || i > 5:
			return true // a framing error
		}
	}
	return false
}

// deadlines sets a connection's deadlines lazily: a deadline is renewed only
// once less than half of its span is left, so a busy connection makes one
// SetDeadline call per half-span instead of several per request (they
// showed as 5 % of CPU in the benchmark). A wait is therefore cut off after
// between half and all of its timeout.
type deadlines struct {
	readUntil, writeUntil time.Time
	readSpan, writeSpan   time.Duration
}

func (d *deadlines) read(c net.Conn, span time.Duration, now time.Time) {
	if span != d.readSpan || d.readUntil.Sub(now) < span/2 {
		d.readUntil, d.readSpan = now.Add(span), span
		c.SetReadDeadline(d.readUntil)
	}
}

// readOnce sets a read deadline for one wait; the next read renews.
func (d *deadlines) readOnce(c net.Conn, span time.Duration) {
	d.readUntil, d.readSpan = time.Now().Add(span), 0
	c.SetReadDeadline(d.readUntil)
}

func (d *deadlines) write(c net.Conn, span time.Duration, now time.Time) {
	if span != d.writeSpan || d.writeUntil.Sub(now) < span/2 {
		d.writeUntil, d.writeSpan = now.Add(span), span
		c.SetWriteDeadline(d.writeUntil)
	}
}
