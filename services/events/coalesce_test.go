package events

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCoalesceConfigValidate(t *testing.T) {
	if err := DefaultCoalesceConfig().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	err := CoalesceConfig{Window: time.Millisecond}.Validate()
	if err == nil || !strings.Contains(err.Error(), "window: ") || !strings.Contains(err.Error(), "max_per_mailbox: ") {
		t.Errorf("Validate = %v", err)
	}
}

// step is one Add (ev set) or Flush (ev nil) at a time offset, with the
// CyrusEvent names it must release.
type step struct {
	at   time.Duration
	ev   *Event
	want []string
}

func ev(name, mailbox string) *Event {
	typ := eventTypes[name]
	return &Event{Type: typ, Account: "alice@example.com", Mailbox: mailbox, CyrusEvent: name,
		Readers: []string{"alice@example.com"}}
}

func TestCoalescer(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC)
	cfg := CoalesceConfig{Window: 200 * time.Millisecond, MaxPerWindow: 3}
	for _, tt := range []struct {
		name  string
		steps []step
	}{
		{"modseq before append is dropped", []step{ // an append sends MailboxModseq first (§1.4)
			{0, ev("MailboxModseq", "INBOX"), nil},
			{time.Millisecond, ev("MessageAppend", "INBOX"), []string{"MessageAppend"}},
			{300 * time.Millisecond, nil, nil},
		}},
		{"modseq after store is dropped", []step{ // a STORE sends FlagsSet first
			{0, ev("FlagsSet", "INBOX"), []string{"FlagsSet"}},
			{time.Millisecond, ev("MailboxModseq", "INBOX"), nil},
			{300 * time.Millisecond, nil, nil},
		}},
		{"modseq after window end still dropped when recent", []step{
			{0, ev("FlagsSet", "INBOX"), []string{"FlagsSet"}},
			{150 * time.Millisecond, ev("FlagsSet", "INBOX"), []string{"FlagsSet"}},
			{250 * time.Millisecond, ev("MailboxModseq", "INBOX"), nil}, // 100 ms after the last specific one
			{time.Second, nil, nil},
		}},
		{"lone modseq passes at window end", []step{
			{0, ev("MailboxModseq", "INBOX"), nil},
			{100 * time.Millisecond, ev("MailboxModseq", "INBOX"), nil},
			{199 * time.Millisecond, nil, nil},
			{200 * time.Millisecond, nil, []string{"MailboxModseq"}},
			{time.Second, nil, nil},
		}},
		{"other mailbox unaffected", []step{
			{0, ev("MailboxModseq", "INBOX"), nil},
			{time.Millisecond, ev("MessageAppend", "INBOX/Projects"), []string{"MessageAppend"}},
			{200 * time.Millisecond, nil, []string{"MailboxModseq"}},
			{time.Second, nil, nil},
		}},
		{"storm collapses", []step{
			{0, ev("FlagsSet", "INBOX"), []string{"FlagsSet"}},
			{1 * time.Millisecond, ev("FlagsSet", "INBOX"), []string{"FlagsSet"}},
			{2 * time.Millisecond, ev("FlagsSet", "INBOX"), []string{"FlagsSet"}},
			{3 * time.Millisecond, ev("FlagsSet", "INBOX"), nil},
			{4 * time.Millisecond, ev("MessageExpunge", "INBOX"), nil},
			{5 * time.Millisecond, ev("MailboxRename", "INBOX"), []string{"MailboxRename"}}, // mailbox events always pass
			{6 * time.Millisecond, ev("MailboxModseq", "INBOX"), nil},
			{200 * time.Millisecond, nil, []string{CyrusEventCoalesced}},
			// A new window: the cap starts again.
			{210 * time.Millisecond, ev("FlagsSet", "INBOX"), []string{"FlagsSet"}},
			{time.Second, nil, nil},
		}},
		{"window closes on add", []step{
			{0, ev("MailboxModseq", "INBOX"), nil},
			{500 * time.Millisecond, ev("MailboxModseq", "INBOX"), []string{"MailboxModseq"}},
			{700 * time.Millisecond, nil, []string{"MailboxModseq"}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCoalescer(cfg)
			for i, s := range tt.steps {
				now := t0.Add(s.at)
				var got []Event
				if s.ev != nil {
					got = c.Add(*s.ev, now)
				} else {
					got = c.Flush(now)
				}
				if names := cyrusNames(got); fmt.Sprint(names) != fmt.Sprint(s.want) {
					t.Fatalf("step %d at %v: released %v, want %v", i, s.at, names, s.want)
				}
			}
			if c.Len() != 0 {
				if at, ok := c.Next(); ok {
					t.Errorf("state left for %d mailboxes, next at %v", c.Len(), at.Sub(t0))
				}
			}
		})
	}
}

func TestCoalescerSummary(t *testing.T) {
	t0 := time.Now()
	c := NewCoalescer(CoalesceConfig{Window: 100 * time.Millisecond, MaxPerWindow: 1})
	first := *ev("FlagsSet", "INBOX")
	first.UIDs, first.Flags = "1", []string{`\Flagged`}
	c.Add(first, t0)
	n := uint32(7)
	last := *ev("MessageExpunge", "INBOX")
	last.UIDs, last.Messages, last.MailboxID, last.Readers = "2:9", &n, "uid1", []string{"alice@example.com", "bob@example.com"}
	if got := c.Add(last, t0.Add(time.Millisecond)); len(got) != 0 {
		t.Fatalf("over the cap released %v", got)
	}
	at, ok := c.Next()
	if !ok || !at.Equal(t0.Add(100*time.Millisecond)) {
		t.Fatalf("Next = %v, %v", at, ok)
	}
	got := c.Flush(at)
	if len(got) != 1 {
		t.Fatalf("Flush = %v", got)
	}
	s := got[0]
	if s.Type != TypeMailboxChanged || s.CyrusEvent != CyrusEventCoalesced || s.UIDs != "" || s.Flags != nil ||
		s.Messages == nil || *s.Messages != 7 || s.MailboxID != "uid1" || len(s.Readers) != 2 {
		t.Errorf("summary %+v", s)
	}
}

// TestCoalescerDeterministic: mailboxes whose windows end together come
// out in mailbox order, whatever the map's order.
func TestCoalescerDeterministic(t *testing.T) {
	t0 := time.Now()
	c := NewCoalescer(DefaultCoalesceConfig())
	for i := range 50 {
		c.Add(*ev("MailboxModseq", fmt.Sprintf("INBOX/%02d", 49-i)), t0)
	}
	c.Add(*ev("MailboxModseq", "A-later"), t0.Add(time.Millisecond))
	got := cyrusMailboxes(c.Flush(t0.Add(time.Second)))
	if len(got) != 51 || got[50] != "A-later" || !slices.IsSorted(got[:50]) {
		t.Fatalf("released %v", got)
	}
}

func cyrusMailboxes(evs []Event) []string {
	var names []string
	for _, e := range evs {
		names = append(names, e.Mailbox)
	}
	return names
}

func cyrusNames(evs []Event) []string {
	var names []string
	for _, e := range evs {
		names = append(names, e.CyrusEvent)
	}
	return names
}
