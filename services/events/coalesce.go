package events

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// CyrusEventCoalesced is the CyrusEvent of the mailbox.changed that stands
// for a storm of events folded together by the Coalescer.
const CyrusEventCoalesced = "coalesced"

// CoalesceConfig bounds what one mailbox sends per window.
type CoalesceConfig struct {
	// Window is how long a MailboxModseq is held for a specific event of
	// the same mailbox to make it redundant, and the span over which
	// MaxPerWindow counts (events-anchors §4.2: about 100-250 ms). Cyrus
	// sends the pair from one process within microseconds, in either
	// order (§1.4).
	Window time.Duration `toml:"window"`
	// MaxPerWindow is how many message events one mailbox passes on per
	// window; the rest of a storm (bulk STORE, cyr_expire, a migration)
	// becomes one mailbox.changed at the window's end (§4.5). Mailbox
	// events (created, deleted, renamed, acl, subscription) always pass.
	MaxPerWindow int `toml:"max_per_mailbox"`
}

// DefaultCoalesceConfig holds a MailboxModseq for 200 ms and lets 20
// message events per mailbox through in that time.
func DefaultCoalesceConfig() CoalesceConfig {
	return CoalesceConfig{Window: 200 * time.Millisecond, MaxPerWindow: 20}
}

// Validate returns every problem as "key: message" lines, joined.
func (c CoalesceConfig) Validate() error {
	var errs []error
	if c.Window < 10*time.Millisecond || c.Window > 10*time.Second {
		errs = append(errs, fmt.Errorf("window: must be between 10ms and 10s, got %s", c.Window))
	}
	if c.MaxPerWindow < 1 || c.MaxPerWindow > 100_000 {
		errs = append(errs, fmt.Errorf("max_per_mailbox: must be between 1 and 100000, got %d", c.MaxPerWindow))
	}
	return errors.Join(errs...)
}

// Coalescer merges events per mailbox. It holds no clock: every call says
// what time it is, so tests are exact. It is not safe for concurrent use;
// one goroutine (Ingest.Pump) owns it.
//
// Per mailbox (owner and folder), a window opens with the first event and
// lasts Window:
//   - a MailboxModseq is dropped when a specific event of the mailbox came
//     within the last Window, and otherwise held until the window ends; a
//     specific event arriving meanwhile drops it. One that survives is
//     passed on (as the mailbox.changed Parse made of it).
//   - specific events pass at once, up to MaxPerWindow message events per
//     window; the rest are counted, and at the window's end one
//     mailbox.changed (CyrusEvent "coalesced") with the latest event's
//     counts and readers stands for them.
type Coalescer struct {
	cfg   CoalesceConfig
	boxes map[string]*boxState
}

type boxState struct {
	windowEnd    time.Time // zero: no window open
	passed       int       // message events passed in this window
	suppressed   *Event    // latest event held back in this window, nil if none
	modseq       *Event    // held MailboxModseq
	lastSpecific time.Time // when the last specific event came; zero if none
}

// NewCoalescer returns an empty Coalescer; cfg must be valid.
func NewCoalescer(cfg CoalesceConfig) *Coalescer {
	return &Coalescer{cfg: cfg, boxes: map[string]*boxState{}}
}

// Add takes one event that arrived at now and returns what to pass on at
// once (possibly a summary of the mailbox's window that just ended).
func (c *Coalescer) Add(ev Event, now time.Time) []Event {
	key := ev.Account + "\x00" + ev.Mailbox
	st := c.boxes[key]
	if st == nil {
		st = &boxState{}
		c.boxes[key] = st
	}
	var out []Event
	if !st.windowEnd.IsZero() && !now.Before(st.windowEnd) {
		out = st.close(out)
	}
	if st.windowEnd.IsZero() {
		st.windowEnd = now.Add(c.cfg.Window)
	}
	if ev.CyrusEvent == "MailboxModseq" {
		if c.recent(st, now) || st.modseq != nil {
			coalescedModseq.Inc() // covered by a specific event, or by the one held
		}
		if !c.recent(st, now) {
			st.modseq = &ev
		}
		return out
	}
	st.lastSpecific = now
	if st.modseq != nil {
		coalescedModseq.Inc()
		st.modseq = nil
	}
	if strings.HasPrefix(ev.Type, "mailbox.") || st.passed < c.cfg.MaxPerWindow {
		if !strings.HasPrefix(ev.Type, "mailbox.") {
			st.passed++
		}
		return append(out, ev)
	}
	coalescedStorm.Inc()
	st.suppressed = &ev
	return out
}

// Flush returns what the windows that ended by now release, ordered by
// window end and then mailbox, and forgets idle mailboxes.
func (c *Coalescer) Flush(now time.Time) []Event {
	type due struct {
		end time.Time
		key string
	}
	var ready []due
	for key, st := range c.boxes {
		switch {
		case !st.windowEnd.IsZero() && !now.Before(st.windowEnd):
			ready = append(ready, due{st.windowEnd, key})
		case st.windowEnd.IsZero() && !c.recent(st, now):
			delete(c.boxes, key)
		}
	}
	slices.SortFunc(ready, func(a, b due) int {
		return cmp.Or(a.end.Compare(b.end), strings.Compare(a.key, b.key))
	})
	var out []Event
	for _, d := range ready {
		st := c.boxes[d.key]
		out = st.close(out)
		if !c.recent(st, now) {
			delete(c.boxes, d.key)
		}
	}
	return out
}

// Next returns when Flush next has work: the earliest window end, or the
// time an idle mailbox may be forgotten. ok is false when nothing is held.
func (c *Coalescer) Next() (t time.Time, ok bool) {
	for _, st := range c.boxes {
		at := st.windowEnd
		if at.IsZero() {
			at = st.lastSpecific.Add(c.cfg.Window)
		}
		if !ok || at.Before(t) {
			t, ok = at, true
		}
	}
	return t, ok
}

// Len is the number of mailboxes with state, for tests and metrics.
func (c *Coalescer) Len() int { return len(c.boxes) }

// recent reports whether a specific event of the mailbox came within the
// last Window.
func (c *Coalescer) recent(st *boxState, now time.Time) bool {
	return !st.lastSpecific.IsZero() && now.Sub(st.lastSpecific) < c.cfg.Window
}

// close ends the window, appending its summary (a storm's mailbox.changed,
// or the held MailboxModseq's) to out.
func (st *boxState) close(out []Event) []Event {
	switch {
	case st.suppressed != nil:
		s := *st.suppressed
		s.Type, s.CyrusEvent = TypeMailboxChanged, CyrusEventCoalesced
		// The folded events' UIDs and flags are not summed up: the
		// consumer syncs the folder (CONDSTORE) as for any mailbox.changed.
		s.UIDs, s.Flags, s.OldMailbox, s.Subscribed = "", nil, "", nil
		out = append(out, s)
	case st.modseq != nil:
		out = append(out, *st.modseq)
	}
	*st = boxState{lastSpecific: st.lastSpecific}
	return out
}
