package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/store"
)

// Config is [events].
type Config struct {
	Enabled   bool            `toml:"enabled"`
	Ingest    IngestConfig    `toml:"ingest"`
	Namespace ParseOptions    `toml:"namespace"`
	Coalesce  CoalesceConfig  `toml:"coalesce"`
	Delivery  DeliveryConfig  `toml:"delivery"`
	Reconcile ReconcileConfig `toml:"reconcile"`
}

// DefaultConfig is the service off, with every part at its default.
func DefaultConfig(runtimeDir string) Config {
	return Config{
		Ingest:    DefaultIngestConfig(runtimeDir),
		Namespace: DefaultParseOptions(),
		Coalesce:  DefaultCoalesceConfig(),
		Delivery:  DefaultDeliveryConfig(),
		Reconcile: DefaultReconcileConfig(),
	}
}

// Validate returns every problem as "key: message", keys relative to
// [events].
func (c Config) Validate() error {
	var errs []error
	for _, part := range []struct {
		prefix string
		err    error
	}{
		{"ingest.", c.Ingest.Validate()}, {"namespace.", c.Namespace.Validate()}, {"coalesce.", c.Coalesce.Validate()},
		{"delivery.", c.Delivery.Validate()}, {"reconcile.", c.Reconcile.Validate()},
	} {
		if part.err == nil {
			continue
		}
		for _, e := range unjoin(part.err) {
			errs = append(errs, errors.New(part.prefix+e.Error()))
		}
	}
	return errors.Join(errs...)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// publishBatch and publishEvery bound one Publish transaction: events come
// in bursts (a delivery is two, a bulk STORE hundreds), and one
// transaction per event would make the store the bottleneck.
const (
	publishBatch = 256
	publishEvery = 20 * time.Millisecond
	// publishQueue sits between the parser and the store; when it is full
	// the parser waits and the ring in front of it (never Cyrus) fills.
	publishQueue = 4096
)

// Service is the events bridge: ingest from Cyrus, delivery to webhooks
// and streams, and the reconciler.
type Service struct {
	cfg    atomic.Pointer[Config]
	log    *slog.Logger
	in     *Ingest
	parser *Parser
	co     *Coalescer
	disp   *Dispatcher
	rec    *Reconciler
	st     *store.Store
	canon  store.Canon
	verify TokenVerifier
	conn   *net.UnixConn // from systemd, when passed
	queue  chan Event
	once   sync.Once
	h      http.Handler
}

// New makes the service; Listen binds it. cy is how the reconciler reaches
// Cyrus IMAP; verify checks single sign-on tokens for the event streams.
func New(cfg Config, cy ReconcileCyrus, st *store.Store, canon store.Canon, verify TokenVerifier, log *slog.Logger) (*Service, error) {
	uid, err := LookupUID(cfg.Ingest.CyrusUser)
	if err != nil {
		return nil, fmt.Errorf("events: ingest.cyrus_user: %w", err)
	}
	in, err := NewIngest(cfg.Ingest, uid, log)
	if err != nil {
		return nil, err
	}
	p, err := NewParser(canon, cfg.Namespace)
	if err != nil {
		return nil, err
	}
	s := &Service{log: log, in: in, parser: p, co: NewCoalescer(cfg.Coalesce), st: st, canon: canon,
		verify: verify, queue: make(chan Event, publishQueue)}
	s.cfg.Store(&cfg)
	s.disp = NewDispatcher(cfg.Delivery, st, log)
	s.disp.UseCyrusForEnvelopes(cy) // for consumers that opted in to subjects and senders
	s.rec = NewReconciler(cfg.Reconcile, cy, stateStore{st: st, streams: s.disp.hub.accounts}, s.disp.Publish, log)
	return s, nil
}

// UsePacketConns takes the notify socket from systemd (ListenDatagram=).
func (s *Service) UsePacketConns(pcs []net.PacketConn) error {
	if len(pcs) != 1 {
		return fmt.Errorf("events: %d datagram sockets passed, want one", len(pcs))
	}
	c, ok := pcs[0].(*net.UnixConn)
	if !ok {
		return fmt.Errorf("events: the passed socket is not a UNIX datagram socket")
	}
	s.conn = c
	return nil
}

// Listen binds the notify socket, unless systemd passed it.
func (s *Service) Listen() error {
	if s.conn != nil {
		return s.in.UseConn(s.conn)
	}
	return s.in.Listen()
}

// Routes mounts the event streams on the HTTP listener.
func (s *Service) Routes(mux *http.ServeMux) {
	h := s.handler()
	mux.Handle("/events", h)
	mux.Handle("/events/", h)
}

func (s *Service) handler() http.Handler {
	s.once.Do(func() { s.h = s.disp.Handler(s.canon, s.verify) })
	return s.h
}

// Run ingests, publishes, delivers and reconciles until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 8) // more than the goroutines below: none blocks on its report
	run := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	run("ingest", s.in.Run)
	run("parse", func(ctx context.Context) error {
		return s.in.Pump(ctx, s.parser, s.co, func(ev Event) {
			select {
			case s.queue <- ev:
			case <-ctx.Done():
			}
		})
	})
	run("publish", s.publish)
	run("deliver", s.disp.Run)
	if s.cfg.Load().Reconcile.Enabled {
		run("reconcile", s.rec.Run)
		run("dirty", s.watchDirty)
	}
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	wg.Wait()
	s.in.Close()
	return err
}

// publish hands parsed events to the dispatcher in batches. A batch the
// store could not take is not lost: its accounts are reconciled.
func (s *Service) publish(ctx context.Context) error {
	batch := make([]Event, 0, publishBatch)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := s.disp.Publish(pctx, batch); err != nil {
			s.log.Warn("events not recorded; their accounts will be reconciled", "events", len(batch), "err", err)
			for _, ev := range batch {
				for _, a := range ev.Readers {
					s.rec.MarkDirty(a)
				}
			}
		}
		clear(batch)
		batch = batch[:0]
	}
	tick := time.NewTicker(publishEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// What was parsed before the stop is still recorded.
			for {
				select {
				case ev := <-s.queue:
					batch = append(batch, ev)
					if len(batch) == publishBatch {
						flush()
					}
					continue
				default:
				}
				break
			}
			flush()
			return nil
		case ev := <-s.queue:
			batch = append(batch, ev)
			if len(batch) == publishBatch {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// watchDirty passes the accounts whose events the ingest dropped (ring
// overflow, unreadable datagrams) to the reconciler.
func (s *Service) watchDirty(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		d := s.in.TakeDirty(s.parser)
		if d.All {
			s.rec.MarkAllDirty()
		}
		for _, a := range d.Accounts {
			s.rec.MarkDirty(a)
		}
	}
}

// Reload applies delivery, coalescing and reconcile timings; the socket,
// the ring and the namespace need a restart.
func (s *Service) Reload(cfg Config) {
	old := s.cfg.Load()
	if old.Ingest != cfg.Ingest || !sameParse(old.Namespace, cfg.Namespace) || old.Coalesce != cfg.Coalesce {
		s.log.Warn("restart required for events ingest, namespace and coalesce settings")
		cfg.Ingest, cfg.Namespace, cfg.Coalesce = old.Ingest, old.Namespace, old.Coalesce
	}
	s.disp.Reload(cfg.Delivery)
	s.rec.Reload(cfg.Reconcile)
	s.cfg.Store(&cfg)
}

func sameParse(a, b ParseOptions) bool {
	return a.AltNamespace == b.AltNamespace && a.HierarchySep == b.HierarchySep &&
		a.DeletedPrefix == b.DeletedPrefix && slices.Equal(a.MailboxTypes, b.MailboxTypes)
}

// Collectors are the service's metrics.
func (s *Service) Collectors() []prometheus.Collector {
	return slices.Concat(s.in.Collectors(), s.disp.Collectors(), s.rec.Collectors())
}

// stateStore adapts the store to the reconciler: accounts in a webhook
// consumer's scope and those with an open stream are swept.
type stateStore struct {
	st      *store.Store
	streams func() []string
}

func (a stateStore) ReconcileAccounts(ctx context.Context) ([]string, error) {
	scoped, err := a.st.ScopedAccounts(ctx)
	if err != nil {
		return nil, err
	}
	out := append(scoped, a.streams()...)
	slices.Sort(out)
	return slices.Compact(out), nil
}

func (a stateStore) LoadReconcileState(ctx context.Context, account string) ([]ReconcileState, error) {
	ms, err := a.st.MailboxStates(ctx, account)
	if err != nil {
		return nil, err
	}
	out := make([]ReconcileState, len(ms))
	for i, m := range ms {
		out[i] = ReconcileState(m)
	}
	return out, nil
}

func (a stateStore) SaveReconcileState(ctx context.Context, account string, states []ReconcileState) error {
	ms := make([]store.MailboxState, len(states))
	for i, s := range states {
		ms[i] = store.MailboxState(s)
	}
	return a.st.SetMailboxStates(ctx, account, ms)
}
