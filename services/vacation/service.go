// Package vacation keeps Cyrus's Sieve scripts in step with the
// out-of-office settings in the store: it renders one script per user (a
// different reply inside and outside the user's organisation) and installs
// it over ManageSieve (RFC 5804) as the admin on the user's behalf, next to
// the user's own filters, never in place of them.
package vacation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"cyrus-sidecar/store"
)

// Store is the part of the store the service uses.
type Store interface {
	Generation(ctx context.Context) (int64, error)
	Vacations(ctx context.Context) ([]store.Vacation, error)
	AddressesOf(ctx context.Context, c store.Canon, a store.Address) ([]string, error)
	OrgDomains(ctx context.Context, a store.Address) ([]string, error)
	SieveStates(ctx context.Context) ([]store.SieveState, error)
	SetSieveState(ctx context.Context, st store.SieveState) error
	DeleteSieveState(ctx context.Context, address string) error
}

// Cyrus says how to reach timsieved and as whom.
type Cyrus struct {
	Network, Addr string
	Admin         string                 // in Cyrus's admins: may act for any user
	Password      func() (string, error) // the admin's secret, read at each connection (a rotated file applies at once)
	Relation      string                 // the LMTP proxy's sender-relation header; "" = envelope fallback
}

// Service is the reconciler.
type Service struct {
	cfg   atomic.Pointer[Config]
	cy    Cyrus
	st    Store
	canon store.Canon
	log   *slog.Logger
	now   func() time.Time

	mu    sync.Mutex
	exts  []string         // the SIEVE capability last announced
	retry map[string]retry // per address, after a failure
}

type retry struct {
	next  time.Time
	delay time.Duration
}

// New makes the service; Run does the work.
func New(cfg Config, cy Cyrus, st Store, canon store.Canon, log *slog.Logger) *Service {
	s := &Service{cy: cy, st: st, canon: canon, log: log, now: time.Now, retry: map[string]retry{}}
	s.cfg.Store(&cfg)
	return s
}

// Listen has nothing to bind: the service only connects out.
func (s *Service) Listen() error { return nil }

// Reload takes new names, policy and timings for the next pass.
func (s *Service) Reload(cfg Config) { s.cfg.Store(&cfg) }

// Run reconciles until ctx ends: at once, after every store change (seen
// within poll, the CLI's changes included), every interval, when an end date
// passes, and when a failed address is due again.
func (s *Service) Run(ctx context.Context) error {
	var lastGen int64 = -1
	var nextFull, nextEvent time.Time
	for {
		cfg := s.cfg.Load()
		now := s.now()
		gen, err := s.st.Generation(ctx)
		if err != nil {
			s.log.Warn("store unavailable", "err", err)
		} else if gen != lastGen || !now.Before(nextFull) || (!nextEvent.IsZero() && !now.Before(nextEvent)) {
			start := time.Now()
			nextEvent = s.pass(ctx, cfg)
			passes.Inc()
			passLatency.Observe(time.Since(start).Seconds())
			lastGen, nextFull = gen, now.Add(cfg.Interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.Poll):
		}
	}
}

// job is one address to bring in step.
type job struct {
	address string
	want    *store.Vacation // nil: remove what we installed
	state   store.SieveState
}

// pass compares the store with what was installed and fixes the
// differences; it returns when it next has something to do by the clock
// (an end date, a retry), zero for nothing.
func (s *Service) pass(ctx context.Context, cfg *Config) time.Time {
	vacs, err := s.st.Vacations(ctx)
	if err != nil {
		s.log.Warn("reading vacations", "err", err)
		return s.now().Add(time.Second)
	}
	states, err := s.st.SieveStates(ctx)
	if err != nil {
		s.log.Warn("reading sieve state", "err", err)
		return s.now().Add(time.Second)
	}
	byAddr := make(map[string]store.SieveState, len(states))
	for _, st := range states {
		byAddr[st.Address] = st
	}
	now := s.now()
	var next time.Time
	soonest := func(t time.Time) {
		if !t.IsZero() && t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	var jobs []job
	seen := map[string]bool{}
	for i := range vacs {
		v := &vacs[i]
		seen[v.Address] = true
		st := byAddr[v.Address]
		if active(v, now) {
			soonest(v.End)
			// Idempotent: nothing to do when what we installed last was
			// rendered from these very settings.
			// ("report" keeps its note in LastError: not a failure.)
			if st.ScriptHash != "" && (st.LastError == "" || st.Mode == "report") && st.ScriptHash == s.settingsHash(ctx, cfg, v) {
				continue
			}
			jobs = append(jobs, job{v.Address, v, st})
		} else if installed(st) {
			jobs = append(jobs, job{v.Address, nil, st})
		}
	}
	for _, st := range states {
		if !seen[st.Address] && installed(st) {
			jobs = append(jobs, job{st.Address, nil, st}) // the user or its settings are gone
		}
	}
	jobs = s.due(jobs, now, soonest)
	s.runJobs(ctx, cfg, jobs)
	s.mu.Lock()
	for _, r := range s.retry {
		soonest(r.next)
	}
	s.mu.Unlock()
	return next
}

// active reports whether a vacation should be installed now. A scheduled
// one is installed before its start: the script's own date test holds the
// replies back until then.
func active(v *store.Vacation, now time.Time) bool {
	return v.State != "off" && (v.End.IsZero() || now.Before(v.End))
}

func installed(st store.SieveState) bool { return st.ScriptHash != "" || st.Mode != "" }

// due drops jobs whose retry time has not come.
func (s *Service) due(jobs []job, now time.Time, soonest func(time.Time)) []job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := jobs[:0]
	for _, j := range jobs {
		if r, ok := s.retry[j.address]; ok && now.Before(r.next) {
			soonest(r.next)
			continue
		}
		out = append(out, j)
	}
	return out
}

// runJobs works through the jobs with cfg.Workers ManageSieve sessions.
func (s *Service) runJobs(ctx context.Context, cfg *Config, jobs []job) {
	work := make(chan job)
	var wg sync.WaitGroup
	for range min(cfg.Workers, len(jobs)) {
		wg.Go(func() {
			for j := range work {
				s.apply(ctx, cfg, j)
			}
		})
	}
	for _, j := range jobs {
		select {
		case work <- j:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
}

// settingsHash identifies what would be installed for v: the script as
// rendered with the extensions last seen, and the policy and names that
// decide how it is activated.
func (s *Service) settingsHash(ctx context.Context, cfg *Config, v *store.Vacation) string {
	script, err := s.render(ctx, v, s.extensions())
	if err != nil {
		return "" // never equal: the job runs and reports the error
	}
	return scriptHash(cfg, script)
}

func scriptHash(cfg *Config, script string) string {
	h := sha256.New()
	h.Write([]byte(cfg.Policy + "\x00" + cfg.ScriptName + "\x00" + cfg.WrapperName + "\x00" + script))
	return hex.EncodeToString(h.Sum(nil))
}

func (s *Service) extensions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exts == nil {
		return DefaultExtensions
	}
	return s.exts
}

// failed records a failure and schedules the next attempt, doubling the
// pause up to retry_max.
func (s *Service) failed(cfg *Config, address string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.retry[address]
	r.delay = min(max(2*r.delay, time.Second), cfg.RetryMax)
	r.next = s.now().Add(r.delay)
	s.retry[address] = r
}

func (s *Service) succeeded(address string) {
	s.mu.Lock()
	delete(s.retry, address)
	s.mu.Unlock()
}
