package saslauthd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// Audit batching: attempts are written in one transaction per batch, off
// the request path; a full queue drops records (counted and logged) rather
// than slow down logins.
const (
	auditQueue = 4096
	auditBatch = 256
	auditEvery = 200 * time.Millisecond
)

// Service is the saslauthd-protocol responder.
type Service struct {
	cfg   atomic.Pointer[Config]
	keys  atomic.Pointer[TokenKeys]
	st    Store
	log   *slog.Logger
	lns   []net.Listener // from Listen or UseListeners
	slots chan struct{}
	au    *authenticator
	lim   *limiter
	// readers holds request readers (*bufio.Reader of maxRequest bytes): a
	// fresh one per connection was a 4 KiB allocation each.
	readers sync.Pool
	// The audit queue is a slice under a mutex, not a channel: a send to
	// the writer's channel woke it (and often an idle OS thread) on every
	// login. The writer now wakes per batch (auditWake) or per auditEvery.
	auditMu   sync.Mutex
	auditBuf  []store.LoginEvent
	auditWake chan struct{} // capacity 1: "a batch is waiting"
	// dropped counts audit records lost to a full queue.
	dropped   atomic.Int64
	rehashes  sync.WaitGroup
	rehashing sync.Map // address -> struct{}: one rehash per user at a time
}

// New makes the responder; Listen binds it. keys are the loaded token keys
// (LoadTokenKeys of cfg.TokenKeys).
func New(cfg Config, keys TokenKeys, st Store, canon store.Canon, hasher *password.Hasher, log *slog.Logger) *Service {
	s := &Service{st: st, log: log, slots: make(chan struct{}, cfg.MaxConns),
		lim:       newLimiter(cfg.FailDelay, cfg.FailDelayMax, cfg.FailWindow),
		auditWake: make(chan struct{}, 1)}
	s.readers.New = func() any { return bufio.NewReaderSize(nil, maxRequest) }
	s.cfg.Store(&cfg)
	s.keys.Store(&keys)
	s.au = &authenticator{
		st: st, canon: canon, hasher: hasher,
		cache:   newVerifyCache(cfg.CacheEntries),
		workers: make(chan struct{}, cfg.VerifyWorkers),
		cfg:     s.cfg.Load,
		keys:    func() TokenKeys { return *s.keys.Load() },
		now:     time.Now,
	}
	s.au.rehash = s.rehash
	return s
}

// UseListeners makes the service serve on sockets opened by someone else
// (systemd's socket activation) instead of binding its own; call it
// before Listen.
func (s *Service) UseListeners(lns []net.Listener) { s.lns = lns }

// Listen binds the socket, unless UseListeners gave it some.
func (s *Service) Listen() error {
	if s.lns != nil {
		return nil
	}
	cfg := s.cfg.Load()
	mode, err := listen.Mode(cfg.SocketMode)
	if err != nil {
		return err
	}
	ln, err := listen.Listen(cfg.Listen, listen.Options{Mode: mode, Group: cfg.SocketGroup})
	if err != nil {
		return err
	}
	s.lns = []net.Listener{ln}
	s.log.Info("listening", "addr", cfg.Listen)
	return nil
}

// Reload takes new limits, delays and token keys; the socket, the
// connection limit, the worker count and the cache size need a restart.
func (s *Service) Reload(cfg Config, keys TokenKeys) {
	old := s.cfg.Load()
	if old.Listen != cfg.Listen || old.SocketMode != cfg.SocketMode || old.SocketGroup != cfg.SocketGroup ||
		old.MaxConns != cfg.MaxConns || old.VerifyWorkers != cfg.VerifyWorkers || old.CacheEntries != cfg.CacheEntries {
		s.log.Warn("restart required for saslauthd listen, socket mode/group, max_connections, verify_workers and cache_entries")
		cfg.Listen, cfg.SocketMode, cfg.SocketGroup = old.Listen, old.SocketMode, old.SocketGroup
		cfg.MaxConns, cfg.VerifyWorkers, cfg.CacheEntries = old.MaxConns, old.VerifyWorkers, old.CacheEntries
	}
	s.lim.set(cfg.FailDelay, cfg.FailDelayMax, cfg.FailWindow)
	s.keys.Store(&keys)
	s.cfg.Store(&cfg)
}

// Authenticate is the decision without the wire, for `auth test`.
func (s *Service) Authenticate(ctx context.Context, login, realm, service, pw string) Result {
	return s.au.Authenticate(ctx, login, realm, service, pw)
}

// Run serves until ctx is cancelled; requests in progress finish within
// grace. The audit writer drains last.
func (s *Service) Run(ctx context.Context, grace time.Duration) error {
	var auditDone sync.WaitGroup
	auditCtx, auditCancel := context.WithCancel(context.Background())
	auditDone.Go(func() { s.writeAudit(auditCtx) })
	srv := &listen.Server{Name: "saslauthd", Log: s.log, Slots: s.slots,
		// A fast NO, never a hang: Cyrus's client waits forever.
		Busy:   func(c net.Conn) { writeReply(c, false, "") },
		Handle: s.serveConn,
	}
	var wg sync.WaitGroup
	for _, ln := range s.lns {
		wg.Go(func() { srv.Serve(ctx, ln, func() time.Duration { return grace }) })
	}
	wg.Wait()
	s.rehashes.Wait() // each is bounded by its own 30 s context
	auditCancel()
	auditDone.Wait()
	return nil
}

// serveConn answers the one request of a connection, as saslauthd does
// (Cyrus opens a connection per authentication), and always answers a
// well-formed request: Cyrus's client has no timeout of its own.
func (s *Service) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	cfg := s.cfg.Load()
	deadline := time.Now().Add(cfg.RequestTimeout)
	c.SetDeadline(deadline)
	answered := false
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic serving a request", "panic", p)
			if !answered {
				writeReply(c, false, "")
			}
		}
	}()
	br := s.readers.Get().(*bufio.Reader)
	br.Reset(c)
	defer func() { br.Reset(nil); s.readers.Put(br) }()
	more := func() bool {
		if cfg.FifthFieldWait <= 0 {
			return false
		}
		// Newer libsasl sends a fifth field, the client address; an older
		// client sends four and waits. Wait briefly for a fifth, then
		// answer (see readRequest).
		wait := time.Now().Add(cfg.FifthFieldWait)
		if wait.After(deadline) {
			wait = deadline
		}
		c.SetReadDeadline(wait)
		_, err := br.Peek(1)
		c.SetReadDeadline(deadline)
		return err == nil
	}
	req, err := readRequest(br, more)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, os.ErrDeadlineExceeded):
		return // nothing whole to answer
	case err != nil:
		// Too long, NUL, empty login or password: the request was whole
		// but can never succeed. Answer like the reference server.
		s.log.Warn("bad request", "err", err)
		results[resultMalformed].n.Inc()
		answered = true
		writeReply(c, false, "")
		return
	}
	res := s.authenticate(ctx, req)
	answered = true
	// The request's deadline covered reading and deciding; the answer gets
	// a moment of its own, so a slow decision still reaches the client.
	// When at least that moment is left anyway (the common case), the
	// deadline already set bounds the write and is left alone.
	if now := time.Now(); deadline.Sub(now) < time.Second {
		c.SetWriteDeadline(now.Add(time.Second))
	}
	if err := writeReply(c, res.OK, ""); err != nil {
		s.log.Debug("write reply", "err", err)
	}
}

// authenticate adds the failure delay, the log line and the audit to the
// decision.
func (s *Service) authenticate(ctx context.Context, req Request) Result {
	start := s.au.now()
	// Canonicalised once, here: failures count per canonical login, so
	// that "Alice" and "ALICE" are one account to the brake, as they are to
	// Cyrus, and the decision takes the same address.
	a, canonErr := s.au.canon.Login(req.Login, req.Realm)
	var user, key string
	if canonErr == nil {
		user = a.String()
		key = user
	} else {
		key = req.Login + "\x00" + req.Realm
	}
	if req.ClientAddr != "" {
		key += "\x00" + req.ClientAddr
	}
	if d := s.lim.delay(key, start); d > 0 {
		delays.Inc()
		brake(ctx, d)
	}
	res := Result{Reason: reasonMalformed}
	if canonErr == nil {
		res = s.au.decideAs(ctx, a, user, req.Service, req.Password, start)
	}
	if res.OK {
		s.lim.success(key)
	} else if res.Reason != reasonOverloaded && res.Reason != reasonStore {
		s.lim.fail(key, time.Now())
	}
	observe(resultOf(res), start)
	login := res.User
	if login == "" {
		login = req.Login
	}
	result := store.ResultFail
	if res.OK {
		result = store.ResultOK
		// Successes are in the audit; a log line each would cost more
		// than a cached login itself. Failures are logged (fail2ban).
		if s.log.Enabled(ctx, slog.LevelDebug) { // the arguments alone cost four allocations
			s.logResult(ctx, slog.LevelDebug, "auth ok", login, req.Service, "via", res.Via, start)
		}
	} else {
		s.logResult(ctx, slog.LevelInfo, "auth rejected", login, req.Service, "reason", res.Reason, start)
	}
	s.record(store.LoginEvent{At: start, Login: login, Service: req.Service, Result: result,
		Reason: res.Reason, Client: req.ClientAddr})
	return res
}

// brake waits out a failure delay, or until ctx ends.
//
//go:noinline
func brake(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// logResult logs a decision. It is a function of its own so that its
// arguments take no room in authenticate's frame, which every request's
// goroutine stack must hold.
//
//go:noinline
func (s *Service) logResult(ctx context.Context, level slog.Level, msg, login, service, k, v string, start time.Time) {
	s.log.Log(ctx, level, msg, "user", login, "service", service, k, v, "dur", time.Since(start))
}

// record queues an audit record for writeAudit: an append under a mutex,
// and a wake-up of the writer only when a batch is full. A full queue
// drops the record (counted, and logged by the writer).
func (s *Service) record(e store.LoginEvent) {
	s.auditMu.Lock()
	if len(s.auditBuf) >= auditQueue {
		s.auditMu.Unlock()
		s.dropped.Add(1)
		auditDropped.Inc()
		return
	}
	s.auditBuf = append(s.auditBuf, e)
	full := len(s.auditBuf) == auditBatch
	s.auditMu.Unlock()
	if full {
		select {
		case s.auditWake <- struct{}{}:
		default: // already signalled
		}
	}
}

// writeAudit batches audit records into the store until ctx ends, then
// writes what is left.
func (s *Service) writeAudit(ctx context.Context) {
	var batch []store.LoginEvent
	tick := time.NewTicker(auditEvery)
	defer tick.Stop()
	flush := func() {
		// Swap buffers: records queued while this batch is written go to
		// the one just written.
		s.auditMu.Lock()
		batch, s.auditBuf = s.auditBuf, batch[:0]
		s.auditMu.Unlock()
		if len(batch) == 0 {
			return
		}
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.st.RecordLogins(wctx, batch); err != nil {
			s.log.Warn("audit write failed", "records", len(batch), "err", err)
		}
		clear(batch) // drop the strings before the buffer is reused
		if n := s.dropped.Swap(0); n > 0 {
			s.log.Warn("audit records dropped: queue full", "records", n)
		}
	}
	for {
		select {
		case <-s.auditWake:
			flush()
		case <-tick.C:
			flush()
		case <-ctx.Done():
			flush()
			return
		}
	}
}

// rehash replaces a user's hash with one in the current scheme, off the
// request path but inside a verify slot (it costs a full hash).
func (s *Service) rehash(a store.Address, old store.Secret, pw string) {
	if _, busy := s.rehashing.LoadOrStore(a.String(), struct{}{}); busy {
		return
	}
	s.rehashes.Go(func() {
		defer s.rehashing.Delete(a.String())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if !s.au.acquire(ctx) {
			return // busy: the next login tries again
		}
		defer s.au.release()
		h, err := s.au.hasher.Hash(pw)
		var done bool
		if err == nil {
			done, err = s.st.ReplacePasswordHash(ctx, a, old, store.Secret(h))
		}
		switch {
		case err != nil:
			s.log.Warn("rehash failed", "user", a.String(), "err", err)
		case done:
			s.log.Info("password rehashed to the current scheme", "user", a.String())
		}
	})
}
