package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/store"
)

// Delivery (reference/events-anchors.md §4.4): every published event is
// logged under each account allowed to see it (for Server-Sent Events with
// resume) and queued as a webhook for each consumer whose scope covers it,
// both in one SQLite transaction; then it is pushed to the open streams.
// From there on, on our side, nothing is lost: webhooks are retried until
// acknowledged or replaced by a resync, and streams resume from the log.

// webhookBatch is how many due webhooks the worker reads at a time.
const webhookBatch = 100

// DeliveryConfig tunes webhook and Server-Sent Events delivery.
type DeliveryConfig struct {
	// Webhooks. Timeout bounds one attempt (Standard Webhooks suggests 15
	// to 30 s). Attempts back off exponentially with jitter from RetryMin
	// to RetryMax; a (consumer, mailbox) whose oldest webhook is still
	// undelivered after MaxAge has its backlog replaced by one resync.
	WebhookTimeout     time.Duration `toml:"webhook_timeout"`
	WebhookConcurrency int           `toml:"webhook_concurrency"`  // attempts in flight
	WebhookPerConsumer int           `toml:"webhook_per_consumer"` // of which for one consumer
	RetryMin           time.Duration `toml:"retry_min"`
	RetryMax           time.Duration `toml:"retry_max"`
	MaxAge             time.Duration `toml:"max_age"`
	// Poll is how often the outbox is checked for retries that came due;
	// new events are sent at once.
	Poll time.Duration `toml:"poll"`

	// Server-Sent Events. Retention is how long the per-account log is
	// kept for resuming, pruned every PruneInterval.
	Retention     time.Duration `toml:"retention"`
	PruneInterval time.Duration `toml:"prune_interval"`
	// TokenService is the service single sign-on tokens must be minted
	// for to open a stream (and which users must be allowed).
	TokenService string        `toml:"token_service"`
	TicketTTL    time.Duration `toml:"ticket_ttl"`
	MaxTickets   int           `toml:"max_tickets"` // outstanding, all users
	// MaxStreams bounds open streams in all, MaxStreamsPerUser per account.
	MaxStreams        int `toml:"max_streams"`
	MaxStreamsPerUser int `toml:"max_streams_per_user"`
	// StreamBuffer is how many events may wait for one slow stream before
	// it is disconnected (it resumes with Last-Event-ID).
	StreamBuffer int           `toml:"stream_buffer"`
	Ping         time.Duration `toml:"ping"`
	WriteTimeout time.Duration `toml:"write_timeout"` // one write to a stream
}

// DefaultDeliveryConfig is the configuration with no keys set.
func DefaultDeliveryConfig() DeliveryConfig {
	return DeliveryConfig{
		WebhookTimeout:     15 * time.Second,
		WebhookConcurrency: 16,
		WebhookPerConsumer: 4,
		RetryMin:           5 * time.Second,
		RetryMax:           time.Hour,
		MaxAge:             24 * time.Hour,
		Poll:               time.Second,
		Retention:          24 * time.Hour,
		PruneInterval:      10 * time.Minute,
		TokenService:       "events",
		TicketTTL:          time.Minute,
		MaxTickets:         10000,
		MaxStreams:         1000,
		MaxStreamsPerUser:  8,
		StreamBuffer:       256,
		Ping:               25 * time.Second,
		WriteTimeout:       10 * time.Second,
	}
}

// Validate returns every problem, each as "key: message", joined.
func (c DeliveryConfig) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	for _, d := range []struct {
		key     string
		v, l, h time.Duration
	}{
		{"webhook_timeout", c.WebhookTimeout, time.Second, 5 * time.Minute},
		{"retry_min", c.RetryMin, 10 * time.Millisecond, time.Hour},
		{"retry_max", c.RetryMax, 10 * time.Millisecond, 7 * 24 * time.Hour},
		{"max_age", c.MaxAge, time.Minute, 30 * 24 * time.Hour},
		{"poll", c.Poll, 10 * time.Millisecond, time.Minute},
		{"retention", c.Retention, time.Minute, 30 * 24 * time.Hour},
		{"prune_interval", c.PruneInterval, time.Second, 24 * time.Hour},
		{"ticket_ttl", c.TicketTTL, time.Second, 10 * time.Minute},
		{"ping", c.Ping, time.Second, 10 * time.Minute},
		{"write_timeout", c.WriteTimeout, 100 * time.Millisecond, 5 * time.Minute},
	} {
		if d.v < d.l || d.v > d.h {
			bad(d.key, "must be between %s and %s, got %s", d.l, d.h, d.v)
		}
	}
	if c.RetryMax < c.RetryMin {
		bad("retry_max", "must not be below retry_min (%s), got %s", c.RetryMin, c.RetryMax)
	}
	for _, n := range []struct {
		key     string
		v, l, h int
	}{
		{"webhook_concurrency", c.WebhookConcurrency, 1, 1024},
		{"webhook_per_consumer", c.WebhookPerConsumer, 1, 1024},
		{"max_tickets", c.MaxTickets, 1, 1 << 20},
		{"max_streams", c.MaxStreams, 1, 1 << 20},
		{"max_streams_per_user", c.MaxStreamsPerUser, 1, 1024},
		{"stream_buffer", c.StreamBuffer, 1, 1 << 16},
	} {
		if n.v < n.l || n.v > n.h {
			bad(n.key, "must be between %d and %d, got %d", n.l, n.h, n.v)
		}
	}
	if c.TokenService == "" || len(c.TokenService) > 32 || strings.Trim(c.TokenService, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
		bad("token_service", "must be 1 to 32 characters a-z, 0-9, '.', '_' or '-', got %q", c.TokenService)
	}
	return errors.Join(errs...)
}

// Store is the part of the store delivery uses.
type Store interface {
	Generation(ctx context.Context) (int64, error)
	Consumers(ctx context.Context) ([]store.Consumer, error)
	RecordEvents(ctx context.Context, evs []store.NewAccountEvent, hooks []store.NewWebhook) ([]int64, error)
	AccountEventsAfter(ctx context.Context, account string, after int64, limit int) (store.AccountEventPage, error)
	PruneEvents(ctx context.Context, before time.Time) (int64, error)
	DueWebhooks(ctx context.Context, now time.Time, limit int) ([]store.Webhook, error)
	NextWebhook(ctx context.Context, consumerID int64, mailbox string, after int64, now time.Time) (store.Webhook, bool, error)
	MarkDelivered(ctx context.Context, acks ...store.Ack) error
	MarkFailed(ctx context.Context, a store.Ack, next time.Time, reason string) error
	ReplaceWebhookBacklog(ctx context.Context, consumerID int64, mailbox string, payload []byte) (string, int64, error)
	DisableConsumer(ctx context.Context, id int64, url string, since time.Time, reason string) (bool, error)
	User(ctx context.Context, a store.Address) (store.User, error)
}

// Dispatcher delivers published events: Publish records and pushes them,
// Run sends the webhooks and prunes the log, Handler serves the streams.
type Dispatcher struct {
	cfg    atomic.Pointer[DeliveryConfig]
	st     Store
	log    *slog.Logger
	client *http.Client
	now    func() time.Time // tests move the clock
	hub    *hub
	wake   chan struct{} // a webhook was enqueued
	m      metrics

	pubMu sync.Mutex // Publish: log order is fan-out order, per account
	cache consumerCache
	// fetchEnv reads envelopes for opted-in consumers; nil: none can be.
	fetchEnv envelopeFetcher
}

// consumerCache holds the consumers for one store generation.
type consumerCache struct {
	gen  int64
	list []scopedConsumer
}

type scopedConsumer struct {
	id       int64
	scope    map[string]bool
	envelope bool // opted in to subjects and senders
}

// NewDispatcher returns a Dispatcher; cfg must be valid.
func NewDispatcher(cfg DeliveryConfig, st Store, log *slog.Logger) *Dispatcher {
	d := &Dispatcher{st: st, log: log, now: time.Now, wake: make(chan struct{}, 1), m: newMetrics()}
	d.cfg.Store(&cfg)
	d.hub = newHub()
	d.hub.kicked = d.m.kicked.Inc
	d.client = &http.Client{
		// Standard Webhooks: a redirect is a failure; the admin updates
		// the URL instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   true,
		},
	}
	return d
}

// Reload applies a new configuration to the next attempt, ticket and
// stream; open streams keep their limits.
func (d *Dispatcher) Reload(cfg DeliveryConfig) { d.cfg.Store(&cfg) }

func (d *Dispatcher) config() *DeliveryConfig { return d.cfg.Load() }

// Publish records events and pushes them to the open streams. Each event
// is logged under every account in its Readers (none: no stream sees it)
// and queued for every enabled consumer whose scope holds the domain of its
// Account or of one of its Readers. An error means nothing was recorded:
// the caller should have the affected mailboxes reconciled.
//
// Consumers that opted in to subjects and senders get a message.added
// with Envelopes, fetched from Cyrus first (bounded; envelope.go); no one
// else does, and a batch without such an event never waits for IMAP.
func (d *Dispatcher) Publish(ctx context.Context, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	consumers, err := d.consumers(ctx)
	if err != nil {
		return fmt.Errorf("publish events: %w", err)
	}
	enriched := d.envelopes(ctx, evs, consumers)
	var logged []store.NewAccountEvent
	var hooks []store.NewWebhook
	var types []string
	for i, ev := range evs {
		if ev.Time.IsZero() {
			ev.Time = d.now().UTC()
		}
		ev.Envelopes, ev.EnvelopeError = nil, "" // only ever from enriched
		data, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("publish events: %w", err)
		}
		readers := slices.Compact(slices.Sorted(slices.Values(ev.Readers)))
		for _, r := range readers {
			if r != "" {
				logged = append(logged, store.NewAccountEvent{Account: r, At: ev.Time, Event: data})
				types = append(types, ev.Type)
			}
		}
		var body, envBody []byte
		for _, c := range consumers {
			if !inScope(c.scope, ev.Account, readers) {
				continue
			}
			if c.envelope && enriched != nil && enriched[i] != nil {
				if envBody == nil {
					eev := ev
					eev.Envelopes, eev.EnvelopeError = enriched[i].envs, enriched[i].code
					if envBody, err = marshalWebhook(eev); err != nil {
						return fmt.Errorf("publish events: %w", err)
					}
				}
				hooks = append(hooks, store.NewWebhook{ConsumerID: c.id, Mailbox: mailboxKey(ev), Payload: envBody})
				continue
			}
			if body == nil {
				if body, err = webhookBody(ev.Type, ev.Time, data); err != nil {
					return fmt.Errorf("publish events: %w", err)
				}
			}
			hooks = append(hooks, store.NewWebhook{ConsumerID: c.id, Mailbox: mailboxKey(ev), Payload: body})
		}
	}
	seqs, err := d.st.RecordEvents(ctx, logged, hooks)
	if err != nil {
		return fmt.Errorf("publish events: %w", err)
	}
	d.m.published.Add(float64(len(evs)))
	for i, e := range logged {
		d.hub.send(e.Account, streamEvent{seq: seqs[i], typ: types[i], data: e.Event})
	}
	if len(hooks) > 0 {
		select {
		case d.wake <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	return nil
}

// consumers returns the enabled consumers with their scopes, read again
// only when the store's generation moved (consumer or domain changes).
func (d *Dispatcher) consumers(ctx context.Context) ([]scopedConsumer, error) {
	gen, err := d.st.Generation(ctx)
	if err != nil {
		return nil, err
	}
	if gen == d.cache.gen && gen != 0 {
		return d.cache.list, nil
	}
	cs, err := d.st.Consumers(ctx)
	if err != nil {
		return nil, err
	}
	var list []scopedConsumer
	for _, c := range cs {
		if !c.Enabled {
			continue
		}
		sc := scopedConsumer{id: c.ID, scope: make(map[string]bool, len(c.Scope)), envelope: c.Envelope}
		for _, dom := range c.Scope {
			sc.scope[dom] = true
		}
		list = append(list, sc)
	}
	d.cache = consumerCache{gen: gen, list: list}
	return list, nil
}

// marshalWebhook renders ev as a webhook body.
func marshalWebhook(ev Event) ([]byte, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	return webhookBody(ev.Type, ev.Time, data)
}

// inScope reports whether the domain of account or of any reader is in
// scope.
func inScope(scope map[string]bool, account string, readers []string) bool {
	if scope[domainOf(account)] {
		return true
	}
	return slices.ContainsFunc(readers, func(r string) bool { return scope[domainOf(r)] })
}

func domainOf(a string) string {
	if i := strings.LastIndexByte(a, '@'); i >= 0 {
		return a[i+1:]
	}
	return ""
}

// mailboxKey orders webhooks: by Cyrus's mailbox id, which survives a
// rename, else by owner and name.
func mailboxKey(ev Event) string {
	if ev.MailboxID != "" {
		return "id:" + ev.MailboxID
	}
	return "name:" + ev.Account + "\x00" + ev.Mailbox
}

// Run sends webhooks and prunes the event log until ctx is cancelled, then
// waits for the attempts in flight (cancelled with ctx: their webhooks are
// sent again later, with the same id) and closes every open stream.
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.hub.closeAll()
	var wg sync.WaitGroup
	wg.Go(func() { d.runWebhooks(ctx) })
	wg.Go(func() { d.runPrune(ctx) })
	wg.Wait()
	return nil
}

func (d *Dispatcher) runPrune(ctx context.Context) {
	for {
		cfg := d.config()
		n, err := d.st.PruneEvents(ctx, d.now().Add(-cfg.Retention))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			d.log.Warn("event log prune failed", "err", err)
		case n > 0:
			d.log.Info("event log pruned", "removed", n, "retention", cfg.Retention.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(cfg.PruneInterval):
		}
	}
}

// metrics are the delivery's Prometheus collectors.
type metrics struct {
	published prometheus.Counter
	attempts  *prometheus.CounterVec
	resyncs   prometheus.Counter
	disabled  prometheus.Counter
	streams   prometheus.Gauge
	kicked    prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{Namespace: listen.Namespace, Subsystem: "events", Name: "published_total",
			Help: "Events recorded for delivery."}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: listen.Namespace, Subsystem: "events", Name: "webhook_attempts_total",
			Help: "Webhook attempts by result: ok (2xx), failed (other status or network error)."}, []string{"result"}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: listen.Namespace, Subsystem: "events", Name: "webhook_resyncs_total",
			Help: "Backlogs of one consumer and mailbox replaced by a resync after max_age."}),
		disabled: prometheus.NewCounter(prometheus.CounterOpts{Namespace: listen.Namespace, Subsystem: "events", Name: "consumers_disabled_total",
			Help: "Consumers disabled because their endpoint answered 410 Gone."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: listen.Namespace, Subsystem: "events", Name: "streams_open",
			Help: "Open Server-Sent Events streams."}),
		kicked: prometheus.NewCounter(prometheus.CounterOpts{Namespace: listen.Namespace, Subsystem: "events", Name: "streams_dropped_total",
			Help: "Streams disconnected because the client did not keep up (it resumes with Last-Event-ID)."}),
	}
}

// Collectors returns the delivery's metrics for the /metrics page.
func (d *Dispatcher) Collectors() []prometheus.Collector {
	return []prometheus.Collector{d.m.published, d.m.attempts, d.m.resyncs, d.m.disabled, d.m.streams, d.m.kicked}
}
