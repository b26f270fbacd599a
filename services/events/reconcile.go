package events

// The reconciler closes the gaps Cyrus leaves (events-anchors §4.4):
// events are lost while we are down, when a datagram exceeds about 21 KB,
// and when our ring overflows. It logs into Cyrus IMAP as the admin on
// behalf of each account (SASL PLAIN with authzid, RFC 4616), lists the
// account's mailboxes with their status in one command (LIST-STATUS, RFC
// 5819) and compares them with what was last notified, emitting
// mailbox.changed (and mailbox.created/deleted/renamed) for differences.
//
// The promise: every mailbox of an account with subscribers whose
// (UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT, MESSAGES, UNSEEN) changed is
// reported at least once within Interval plus one sweep's duration, as
// long as Cyrus answers. A sweep slower than Interval is logged.
//
// Names. The comparison key is the mailbox name as the account sees it in
// its own IMAP session (INBOX, INBOX/Projects; Projects with altnamespace),
// decoded from modified UTF-7 to UTF-8: the same form the event parser
// maps Cyrus's admin-namespace URIs into (§4.2). When Cyrus offers
// LIST-METADATA the mailbox's uniqueid (the events' mailboxID) is read too
// and takes precedence, so a rename is reported as mailbox.renamed. (STATUS
// MAILBOXID, RFC 8474, returns garbage in Cyrus 3.6.1; see package imap.)
//
// Scope. Only the account's personal namespace is reconciled, and the
// events go to the account alone (Readers = [account]): the reconciler
// reads no ACLs. Other users' folders and shared folders that the account
// can see are skipped: their readers are decided by ACLs, and a gap in
// them is closed only for their owner (other users' folders, in the
// owner's pass) or not at all (shared folders, which have no owner).
//
// Subscriptions. With LIST-EXTENDED the listing also says which mailboxes
// the account subscribed to (RETURN (SUBSCRIBED), RFC 5258 §3.2); a change
// between two passes is a lost MailboxSubscribe/MailboxUnSubscribe and is
// reported as mailbox.subscription. A state first seen (or no longer said)
// is taken in silently.

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// CyrusEventReconcile is the CyrusEvent of the reconciler's events.
const CyrusEventReconcile = "reconcile"

// ReconcileConfig configures the reconciler.
type ReconcileConfig struct {
	Enabled bool `toml:"enabled"`
	// Interval is the period of the sweep over all accounts with
	// subscribers: the time within which every change is reported.
	Interval time.Duration `toml:"interval"`
	// DirtyDelay merges the marks of a burst (MarkDirty) into one pass.
	DirtyDelay time.Duration `toml:"dirty_delay"`
	// Sessions is how many IMAP sessions run at once. Cyrus forks a
	// process per connection: keep it small. Read by Run at start.
	Sessions int `toml:"sessions"`
	// AccountTimeout bounds one account: login, LIST, publish and save.
	AccountTimeout time.Duration `toml:"account_timeout"`
	// CommandTimeout bounds each IMAP command.
	CommandTimeout time.Duration `toml:"command_timeout"`
	// RetryMin and RetryMax bound the pause before an account that failed
	// is tried again; it doubles on each failure.
	RetryMin time.Duration `toml:"retry_min"`
	RetryMax time.Duration `toml:"retry_max"`
}

// DefaultReconcileConfig is the configuration without a reconcile section.
func DefaultReconcileConfig() ReconcileConfig {
	return ReconcileConfig{
		Enabled:        true,
		Interval:       time.Minute,
		DirtyDelay:     time.Second,
		Sessions:       2,
		AccountTimeout: 30 * time.Second,
		CommandTimeout: 10 * time.Second,
		RetryMin:       time.Second,
		RetryMax:       5 * time.Minute,
	}
}

// Validate returns every problem, each as "key: message" relative to the
// section, joined.
func (c ReconcileConfig) Validate() error {
	var errs []error
	for _, d := range []struct {
		key     string
		v, l, h time.Duration
	}{
		{"interval", c.Interval, time.Second, 24 * time.Hour},
		{"dirty_delay", c.DirtyDelay, 0, time.Minute},
		{"account_timeout", c.AccountTimeout, time.Second, time.Hour},
		{"command_timeout", c.CommandTimeout, 100 * time.Millisecond, 10 * time.Minute},
		{"retry_min", c.RetryMin, 10 * time.Millisecond, time.Hour},
		{"retry_max", c.RetryMax, 10 * time.Millisecond, 24 * time.Hour},
	} {
		if d.v < d.l || d.v > d.h {
			errs = append(errs, fmt.Errorf("%s: must be between %s and %s, got %s", d.key, d.l, d.h, d.v))
		}
	}
	if c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("retry_max: must not be below retry_min (%s), got %s", c.RetryMin, c.RetryMax))
	}
	if c.CommandTimeout > c.AccountTimeout {
		errs = append(errs, fmt.Errorf("command_timeout: must not exceed account_timeout (%s), got %s", c.AccountTimeout, c.CommandTimeout))
	}
	if c.Sessions < 1 || c.Sessions > 16 {
		errs = append(errs, fmt.Errorf("sessions: must be between 1 and 16, got %d", c.Sessions))
	}
	return errors.Join(errs...)
}

// ReconcileState is what was last notified for one mailbox of an account.
type ReconcileState struct {
	Mailbox       string // as the account sees it, UTF-8 ("INBOX", "INBOX/Projects")
	MailboxID     string // Cyrus's uniqueid; "" when the server did not say
	UIDValidity   uint32
	UIDNext       uint32
	Messages      uint32
	Unseen        uint32
	HighestModseq uint64
	// Subscribed is one of subUnknown, subNo, subYes.
	Subscribed uint8
}

// ReconcileState.Subscribed: whether the account had the mailbox
// subscribed (RFC 5258 \Subscribed), when the server said.
const (
	subUnknown uint8 = iota // rows from before the column, or no LIST-EXTENDED
	subNo
	subYes
)

// StateStore is the part of the store the reconciler uses.
type StateStore interface {
	// ReconcileAccounts returns the accounts the periodic sweep checks:
	// those with subscribers, as canonical addresses.
	ReconcileAccounts(ctx context.Context) ([]string, error)
	// LoadReconcileState returns the account's mailboxes as last
	// notified; none for an account never reconciled.
	LoadReconcileState(ctx context.Context, account string) ([]ReconcileState, error)
	// SaveReconcileState replaces all of the account's stored mailboxes
	// with states, at once.
	SaveReconcileState(ctx context.Context, account string, states []ReconcileState) error
}

// PublishFunc hands events on (outbox, SSE); the reconciler saves its
// state only after it returned nil.
type PublishFunc func(ctx context.Context, evs []Event) error

// ReconcileCyrus says how to reach Cyrus IMAP and as whom.
type ReconcileCyrus struct {
	Network, Addr string                 // "tcp" host:port or "unix" path
	Admin         string                 // in Cyrus's admins: may act for any user
	Password      func() (string, error) // the admin's secret, read at each login
}

// Reconciler runs the passes. MarkDirty and MarkAllDirty may be called
// from any goroutine.
type Reconciler struct {
	cfg     atomic.Pointer[ReconcileConfig]
	cy      ReconcileCyrus
	st      StateStore
	publish PublishFunc
	log     *slog.Logger
	now     func() time.Time
	// list reads an account's mailboxes from Cyrus; tests replace it.
	list func(ctx context.Context, cfg *ReconcileConfig, account string) (rcListing, error)

	mu      sync.Mutex
	dirty   map[string]time.Time // account -> when it is due
	queue   rcQueue              // dirty accounts by due time; stale entries skipped
	running map[string]bool
	retry   map[string]rcRetry
	sweepAt time.Time     // when the sweep next lists the accounts
	wake    chan struct{} // closed and replaced when the schedule changes
}

type rcRetry struct {
	next  time.Time
	delay time.Duration
}

// NewReconciler makes a reconciler; Run does the work.
func NewReconciler(cfg ReconcileConfig, cy ReconcileCyrus, st StateStore, publish PublishFunc, log *slog.Logger) *Reconciler {
	r := &Reconciler{
		cy: cy, st: st, publish: publish, log: log, now: time.Now,
		dirty: map[string]time.Time{}, running: map[string]bool{}, retry: map[string]rcRetry{},
		wake: make(chan struct{}),
	}
	r.list = r.listIMAP
	r.cfg.Store(&cfg)
	return r
}

// Reload takes new timings for the next passes (Sessions at the next Run).
func (r *Reconciler) Reload(cfg ReconcileConfig) { r.cfg.Store(&cfg) }

// MarkDirty asks for a pass over account soon (after DirtyDelay, or when
// its retry is due): events for it were dropped.
func (r *Reconciler) MarkDirty(account string) {
	cfg := r.cfg.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.markLocked(account, r.now().Add(cfg.DirtyDelay))
}

// MarkAllDirty asks for a sweep over all accounts with subscribers now:
// at start-up, and when a dropped event named no account.
func (r *Reconciler) MarkAllDirty() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepAt = time.Time{}
	r.broadcastLocked()
}

// Run reconciles until ctx ends: a sweep at once (events were lost while
// we were down), then every Interval, and each marked account.
func (r *Reconciler) Run(ctx context.Context) error {
	r.MarkAllDirty()
	var wg sync.WaitGroup
	for range r.cfg.Load().Sessions {
		wg.Go(func() { r.worker(ctx) })
	}
	r.sweeper(ctx)
	wg.Wait()
	return nil
}

// sweeper marks every account with subscribers due each Interval.
func (r *Reconciler) sweeper(ctx context.Context) {
	for {
		r.mu.Lock()
		at, wake := r.sweepAt, r.wake
		r.mu.Unlock()
		if wait := at.Sub(r.now()); wait > 0 {
			if !rcSleep(ctx, wait, wake) {
				return
			}
			continue
		}
		cfg := r.cfg.Load()
		accounts, err := r.st.ReconcileAccounts(ctx)
		if ctx.Err() != nil {
			return
		}
		now := r.now()
		r.mu.Lock()
		if err != nil {
			r.sweepAt = now.Add(cfg.RetryMin)
			r.mu.Unlock()
			r.log.Warn("reconcile sweep: listing accounts", "err", err)
			continue
		}
		behind := 0 // overdue marks from before, failing accounts aside
		for a, due := range r.dirty {
			if _, failing := r.retry[a]; !failing && due.Before(now) {
				behind++
			}
		}
		for _, a := range accounts {
			r.markLocked(a, now)
		}
		r.sweepAt = now.Add(cfg.Interval)
		r.mu.Unlock()
		if behind > 0 {
			// The previous sweep has not finished: the promise slips.
			r.log.Warn("reconcile sweep behind", "pending", behind, "interval", cfg.Interval)
		}
		r.log.Debug("reconcile sweep", "accounts", len(accounts))
	}
}

// worker reconciles due accounts one at a time.
func (r *Reconciler) worker(ctx context.Context) {
	for {
		account, ok := r.next(ctx)
		if !ok {
			return
		}
		cfg := r.cfg.Load()
		actx, cancel := context.WithTimeout(ctx, cfg.AccountTimeout)
		start := time.Now()
		evs, err := r.ReconcileAccount(actx, account)
		cancel()
		observeReconcile(start, len(evs), err)
		if err != nil && ctx.Err() == nil {
			r.log.Warn("reconcile failed; will retry", "account", account, "err", err)
		}
		r.finish(account, err, cfg)
	}
}

// next waits for a due account that no other worker has and takes it.
func (r *Reconciler) next(ctx context.Context) (string, bool) {
	for {
		r.mu.Lock()
		now, wait := r.now(), time.Duration(-1)
		for r.queue.Len() > 0 {
			top := r.queue[0]
			due, ok := r.dirty[top.account]
			if !ok || !due.Equal(top.due) || r.running[top.account] {
				heap.Pop(&r.queue) // stale; finish re-queues a running one
				continue
			}
			if top.due.After(now) {
				wait = top.due.Sub(now)
				break
			}
			heap.Pop(&r.queue)
			delete(r.dirty, top.account)
			r.running[top.account] = true
			r.mu.Unlock()
			return top.account, true
		}
		wake := r.wake
		r.mu.Unlock()
		if wait < 0 {
			wait = time.Hour // nothing queued: a mark or a sweep wakes us
		}
		if !rcSleep(ctx, wait, wake) {
			return "", false
		}
	}
}

// finish records an account's outcome: on failure it is due again after
// a pause that doubles up to RetryMax. A mark that came in meanwhile
// stands.
func (r *Reconciler) finish(account string, err error, cfg *ReconcileConfig) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.running, account)
	if err != nil {
		rt := r.retry[account]
		rt.delay = min(max(2*rt.delay, cfg.RetryMin), cfg.RetryMax)
		rt.next = r.now().Add(rt.delay)
		r.retry[account] = rt
		if due, ok := r.dirty[account]; !ok || due.Before(rt.next) {
			r.dirty[account] = rt.next
		}
	} else {
		delete(r.retry, account)
	}
	if due, ok := r.dirty[account]; ok {
		heap.Push(&r.queue, rcItem{due, account})
		r.broadcastLocked()
	}
}

// markLocked makes account due at due, or earlier if it already is, but
// not before a pending retry.
func (r *Reconciler) markLocked(account string, due time.Time) {
	if rt, ok := r.retry[account]; ok && rt.next.After(due) {
		due = rt.next
	}
	if old, ok := r.dirty[account]; ok && !old.After(due) {
		return
	}
	r.dirty[account] = due
	if !r.running[account] {
		heap.Push(&r.queue, rcItem{due, account})
	}
	r.broadcastLocked()
}

func (r *Reconciler) broadcastLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

// rcSleep waits for d, wake or ctx; false when ctx ended.
func rcSleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-t.C:
	}
	return true
}

// rcItem is a queued account.
type rcItem struct {
	due     time.Time
	account string
}

// rcQueue is a min-heap of rcItem by due time (container/heap).
type rcQueue []rcItem

func (q rcQueue) Len() int           { return len(q) }
func (q rcQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q rcQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *rcQueue) Push(x any)        { *q = append(*q, x.(rcItem)) }
func (q *rcQueue) Pop() any {
	old := *q
	it := old[len(old)-1]
	*q = old[:len(old)-1]
	return it
}
