package events

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cyrus-sidecar/services/events/imap"
)

func rcState(name, id string, uv, next, msgs, unseen uint32, modseq uint64) ReconcileState {
	return ReconcileState{Mailbox: name, MailboxID: id, UIDValidity: uv, UIDNext: next, Messages: msgs, Unseen: unseen, HighestModseq: modseq}
}

// withSub is s with its subscription state.
func withSub(s ReconcileState, sub uint8) ReconcileState {
	s.Subscribed = sub
	return s
}

// rcSummary renders the parts of events a test checks.
func rcSummary(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(e.Type + " " + e.Mailbox)
		if e.OldMailbox != "" {
			b.WriteString(" from " + e.OldMailbox)
		}
		if e.Type == TypeMailboxChanged {
			b.WriteString(" " + strconv.FormatUint(e.FromModseq, 10) + "->" + strconv.FormatUint(e.Modseq, 10))
		}
		if e.Subscribed != nil {
			b.WriteString(" subscribed=" + strconv.FormatBool(*e.Subscribed))
		}
		b.WriteString("; ")
	}
	return b.String()
}

func TestReconcileDiff(t *testing.T) {
	inbox := rcState("INBOX", "i1", 7, 5, 4, 1, 10)
	proj := rcState("INBOX/Projects", "p1", 7, 1, 0, 0, 1)
	tests := []struct {
		name    string
		prev    []ReconcileState
		cur     rcListing
		want    string
		wantLen int // states kept
	}{
		{"baseline", nil, rcListing{states: []ReconcileState{proj, inbox}},
			"mailbox.changed INBOX 0->10; mailbox.changed INBOX/Projects 0->1; ", 2},
		{"nothing changed", []ReconcileState{inbox, proj}, rcListing{states: []ReconcileState{proj, inbox}}, "", 2},
		{"new mail", []ReconcileState{inbox, proj}, rcListing{states: []ReconcileState{rcState("INBOX", "i1", 7, 6, 5, 2, 11), proj}},
			"mailbox.changed INBOX 10->11; ", 2},
		{"only unseen differs", []ReconcileState{inbox}, rcListing{states: []ReconcileState{rcState("INBOX", "i1", 7, 5, 4, 0, 10)}},
			"mailbox.changed INBOX 10->10; ", 1},
		{"uidvalidity changed", []ReconcileState{inbox}, rcListing{states: []ReconcileState{rcState("INBOX", "i1", 8, 1, 0, 0, 3)}},
			"mailbox.changed INBOX 0->3; ", 1},
		{"created and deleted", []ReconcileState{inbox, proj}, rcListing{states: []ReconcileState{inbox, rcState("INBOX/New", "n1", 9, 1, 0, 0, 1)}},
			"mailbox.created INBOX/New; mailbox.deleted INBOX/Projects; ", 2},
		{"renamed", []ReconcileState{inbox, proj}, rcListing{states: []ReconcileState{inbox, rcState("INBOX/Work", "p1", 7, 1, 0, 0, 1)}},
			"mailbox.renamed INBOX/Work from INBOX/Projects; ", 2},
		{"renamed and changed", []ReconcileState{inbox, proj}, rcListing{states: []ReconcileState{inbox, rcState("INBOX/Work", "p1", 7, 2, 1, 1, 2)}},
			"mailbox.renamed INBOX/Work from INBOX/Projects; mailbox.changed INBOX/Work 1->2; ", 2},
		{"same name new id", []ReconcileState{inbox, proj}, rcListing{states: []ReconcileState{inbox, rcState("INBOX/Projects", "p2", 9, 1, 0, 0, 1)}},
			"mailbox.created INBOX/Projects; mailbox.deleted INBOX/Projects; ", 2},
		{"id learnt later", []ReconcileState{rcState("INBOX", "", 7, 5, 4, 1, 10)}, rcListing{states: []ReconcileState{inbox}}, "", 1},
		{"no status kept", []ReconcileState{inbox, proj}, rcListing{states: []ReconcileState{inbox}, unknown: []string{"INBOX/Projects"}}, "", 2},
		{"all gone", []ReconcileState{inbox}, rcListing{}, "mailbox.deleted INBOX; ", 0},
		// Subscriptions: a change between two known states is reported.
		{"subscribed", []ReconcileState{withSub(inbox, subNo)}, rcListing{states: []ReconcileState{withSub(inbox, subYes)}},
			"mailbox.subscription INBOX subscribed=true; ", 1},
		{"unsubscribed and changed", []ReconcileState{withSub(proj, subYes)}, rcListing{states: []ReconcileState{withSub(rcState("INBOX/Projects", "p1", 7, 2, 1, 1, 2), subNo)}},
			"mailbox.changed INBOX/Projects 1->2; mailbox.subscription INBOX/Projects subscribed=false; ", 1},
		{"subscription first known", []ReconcileState{inbox}, rcListing{states: []ReconcileState{withSub(inbox, subYes)}}, "", 1},
		{"subscription no longer said", []ReconcileState{withSub(inbox, subYes)}, rcListing{states: []ReconcileState{inbox}}, "", 1},
		{"subscription unchanged", []ReconcileState{withSub(inbox, subYes)}, rcListing{states: []ReconcileState{withSub(inbox, subYes)}}, "", 1},
	}
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, next := rcDiff("alice@example.com", tt.prev, tt.cur, now)
			if got := rcSummary(evs); got != tt.want {
				t.Errorf("events %q; want %q", got, tt.want)
			}
			if len(next) != tt.wantLen {
				t.Errorf("next state %+v; want %d mailboxes", next, tt.wantLen)
			}
			for _, e := range evs {
				if e.Account != "alice@example.com" || e.CyrusEvent != CyrusEventReconcile || len(e.Readers) != 1 || e.Readers[0] != e.Account || !e.Time.Equal(now) {
					t.Errorf("event %+v", e)
				}
				if e.Type != TypeMailboxDeleted && e.Type != TypeMailboxSubscription && (e.Messages == nil || e.Unseen == nil || e.UIDNext == 0) {
					t.Errorf("event without counts: %+v", e)
				}
			}
		})
	}
}

func TestReconcilePersonal(t *testing.T) {
	plain := imap.Namespaces{Personal: []imap.Namespace{{Prefix: "INBOX/", Delim: "/"}},
		Other: []imap.Namespace{{Prefix: "user/", Delim: "/"}}, Shared: []imap.Namespace{{Prefix: "", Delim: "/"}}}
	alt := imap.Namespaces{Personal: []imap.Namespace{{Prefix: "", Delim: "/"}},
		Other: []imap.Namespace{{Prefix: "Other Users/", Delim: "/"}}, Shared: []imap.Namespace{{Prefix: "Shared Folders/", Delim: "/"}}}
	tests := []struct {
		ns   imap.Namespaces
		name string
		want bool
	}{
		{plain, "INBOX", true}, {plain, "INBOX/Projects", true}, {plain, "user/bob/Shared", false},
		{plain, "shared", false}, {plain, "shared/team", false},
		{alt, "INBOX", true}, {alt, "Projects", true}, {alt, "Shared Folders/shared/team", false},
		{alt, "Shared Folders", false}, {alt, "Other Users/bob", false},
		{imap.Namespaces{}, "anything", true},
	}
	for _, tt := range tests {
		if got := rcPersonal(tt.name, tt.ns); got != tt.want {
			t.Errorf("rcPersonal(%q, %v) = %v; want %v", tt.name, tt.ns, got, tt.want)
		}
	}
}

func TestReconcileConfigValidate(t *testing.T) {
	if err := DefaultReconcileConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c := DefaultReconcileConfig()
	c.Interval, c.Sessions, c.RetryMax, c.CommandTimeout = 0, 0, time.Millisecond*20, time.Hour
	err := c.Validate()
	for _, key := range []string{"interval:", "sessions:", "retry_max:", "command_timeout:"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Validate() = %v; want a %s error", err, key)
		}
	}
}

// rcFakeCyrus stands in for listIMAP: per account a listing or an error,
// counting passes and concurrent sessions.
type rcFakeCyrus struct {
	mu       sync.Mutex
	listings map[string]rcListing
	fail     map[string]error
	passes   map[string]int
	active   atomic.Int32
	maxSeen  atomic.Int32
	delay    time.Duration
}

func (f *rcFakeCyrus) list(ctx context.Context, _ *ReconcileConfig, account string) (rcListing, error) {
	n := f.active.Add(1)
	defer f.active.Add(-1)
	for {
		m := f.maxSeen.Load()
		if n <= m || f.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.passes[account]++
	if err := f.fail[account]; err != nil {
		return rcListing{}, err
	}
	return f.listings[account], nil
}

func (f *rcFakeCyrus) set(account string, l rcListing, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listings[account], f.fail[account] = l, err
}

func (f *rcFakeCyrus) count(account string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.passes[account]
}

// rcPublished collects what the reconciler publishes; failing makes publish
// fail.
type rcPublished struct {
	mu      sync.Mutex
	evs     []Event
	failing bool
}

func (p *rcPublished) publish(_ context.Context, evs []Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failing {
		return errors.New("outbox full")
	}
	p.evs = append(p.evs, evs...)
	return nil
}

func (p *rcPublished) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.evs)
}

func (p *rcPublished) take() []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	evs := p.evs
	p.evs = nil
	return evs
}

func rcNewTest(t *testing.T, cfg ReconcileConfig) (*Reconciler, *rcFakeCyrus, *MemStateStore, *rcPublished) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st := &MemStateStore{}
	pub := &rcPublished{}
	f := &rcFakeCyrus{listings: map[string]rcListing{}, fail: map[string]error{}, passes: map[string]int{}}
	r := NewReconciler(cfg, ReconcileCyrus{}, st, pub.publish, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.list = f.list
	return r, f, st, pub
}

// State is saved only after publish succeeded: a failed publish is
// reported again.
func TestReconcileAccountAtLeastOnce(t *testing.T) {
	r, f, st, pub := rcNewTest(t, DefaultReconcileConfig())
	ctx := t.Context()
	f.set("a@x", rcListing{states: []ReconcileState{rcState("INBOX", "i", 1, 1, 0, 0, 1)}}, nil)
	if evs, err := r.ReconcileAccount(ctx, "a@x"); err != nil || len(evs) != 1 {
		t.Fatalf("baseline: %v, %v", evs, err)
	}
	pub.take()
	f.set("a@x", rcListing{states: []ReconcileState{rcState("INBOX", "i", 1, 2, 1, 1, 2)}}, nil)
	pub.failing = true
	if _, err := r.ReconcileAccount(ctx, "a@x"); err == nil {
		t.Fatal("publish failure not reported")
	}
	if saved, _ := st.LoadReconcileState(ctx, "a@x"); saved[0].HighestModseq != 1 {
		t.Fatalf("state saved despite failed publish: %+v", saved)
	}
	pub.failing = false
	evs, err := r.ReconcileAccount(ctx, "a@x")
	if err != nil || rcSummary(evs) != "mailbox.changed INBOX 1->2; " {
		t.Fatalf("after failure: %q, %v", rcSummary(evs), err)
	}
	saves := st.Saves()
	if evs, err := r.ReconcileAccount(ctx, "a@x"); err != nil || len(evs) != 0 || st.Saves() != saves {
		t.Fatalf("unchanged pass: %v, %v, %d saves", evs, err, st.Saves()-saves)
	}
}

func rcWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func rcRun(t *testing.T, r *Reconciler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

// Start-up sweeps every account with subscribers; MarkDirty reconciles
// one soon; failures retry with backoff; never more sessions than
// configured.
func TestReconcileRun(t *testing.T) {
	cfg := DefaultReconcileConfig()
	cfg.Interval, cfg.DirtyDelay, cfg.RetryMin, cfg.RetryMax = time.Hour, 10*time.Millisecond, 20*time.Millisecond, 80*time.Millisecond
	r, f, st, pub := rcNewTest(t, cfg)
	f.delay = 5 * time.Millisecond
	var accounts []string
	for _, a := range []string{"a@x", "b@x", "c@x", "d@x", "e@x"} {
		accounts = append(accounts, a)
		f.set(a, rcListing{states: []ReconcileState{rcState("INBOX", a, 1, 1, 0, 0, 1)}}, nil)
	}
	f.set("bad@x", rcListing{}, errors.New("imap: connection refused"))
	st.SetAccounts(append(accounts, "bad@x")...)
	rcRun(t, r)

	rcWaitFor(t, "start-up sweep", func() bool { return pub.count() >= 5 && f.count("bad@x") >= 3 })
	if m := f.maxSeen.Load(); m > int32(cfg.Sessions) {
		t.Errorf("%d sessions at once; want at most %d", m, cfg.Sessions)
	}
	for _, a := range accounts {
		if n := f.count(a); n != 1 {
			t.Errorf("%s reconciled %d times at start-up; want 1", a, n)
		}
	}
	// Backoff: 20, 40, 80, 80 ms... not a busy loop.
	time.Sleep(300 * time.Millisecond)
	if n := f.count("bad@x"); n > 10 {
		t.Errorf("failing account tried %d times in ~0.4s", n)
	}

	pub.take()
	f.set("c@x", rcListing{states: []ReconcileState{rcState("INBOX", "c@x", 1, 2, 1, 1, 5)}}, nil)
	r.MarkDirty("c@x")
	r.MarkDirty("c@x") // merged
	rcWaitFor(t, "dirty pass", func() bool { return f.count("c@x") == 2 })
	rcWaitFor(t, "publish", func() bool { return pub.count() == 1 })
	if got := rcSummary(pub.take()); got != "mailbox.changed INBOX 1->5; " {
		t.Errorf("dirty pass rcPublished %q", got)
	}
	time.Sleep(50 * time.Millisecond)
	if n := f.count("c@x"); n != 2 {
		t.Errorf("c@x reconciled %d times; want 2 (two marks in a burst are one pass)", n)
	}

	// The failing account recovers.
	f.set("bad@x", rcListing{states: []ReconcileState{rcState("INBOX", "", 1, 1, 0, 0, 1)}}, nil)
	rcWaitFor(t, "recovery", func() bool { s, _ := st.LoadReconcileState(context.Background(), "bad@x"); return len(s) == 1 })

	// MarkAllDirty sweeps again at once.
	before := f.count("a@x")
	r.MarkAllDirty()
	rcWaitFor(t, "second sweep", func() bool { return f.count("a@x") == before+1 })
}

// The periodic sweep comes round every Interval.
func TestReconcileSweepInterval(t *testing.T) {
	cfg := DefaultReconcileConfig()
	cfg.Interval = time.Second
	r, f, st, _ := rcNewTest(t, cfg)
	f.set("a@x", rcListing{}, nil)
	st.SetAccounts("a@x")
	rcRun(t, r)
	rcWaitFor(t, "three sweeps", func() bool { return f.count("a@x") >= 3 })
}
