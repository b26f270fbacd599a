package events

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"cyrus-sidecar/services/events/imap"
)

// rcLogoutTimeout bounds LOGOUT after a pass, also when the account's
// context has ended.
const rcLogoutTimeout = time.Second

// rcStatusItems are the STATUS items compared (events-anchors §4.4).
const rcStatusItems = imap.StatusMessages | imap.StatusUIDNext | imap.StatusUIDValidity |
	imap.StatusUnseen | imap.StatusHighestModseq

// rcListing is an account's personal mailboxes as Cyrus listed them.
type rcListing struct {
	states []ReconcileState
	// unknown are listed mailboxes without a status (RFC 5819: none for
	// \NoSelect ones, or the server failed to get it): kept as they were,
	// neither changed nor deleted.
	unknown []string
}

// ReconcileAccount reconciles one account now: it lists the account's
// mailboxes, publishes what differs from the stored state and then saves
// the new state. It returns the events published.
func (r *Reconciler) ReconcileAccount(ctx context.Context, account string) ([]Event, error) {
	cfg := r.cfg.Load()
	start := time.Now()
	prev, err := r.st.LoadReconcileState(ctx, account)
	if err != nil {
		return nil, fmt.Errorf("reconcile %s: load state: %w", account, err)
	}
	cur, err := r.list(ctx, cfg, account)
	if err != nil {
		return nil, fmt.Errorf("reconcile %s: %w", account, err)
	}
	listed := time.Since(start)
	evs, next := rcDiff(account, prev, cur, r.now().UTC())
	if len(evs) > 0 {
		// At least once: the state moves on only after the events left.
		if err := r.publish(ctx, evs); err != nil {
			return nil, fmt.Errorf("reconcile %s: publish: %w", account, err)
		}
	}
	if !slices.Equal(rcSorted(prev), next) {
		if err := r.st.SaveReconcileState(ctx, account, next); err != nil {
			return evs, fmt.Errorf("reconcile %s: save state: %w", account, err)
		}
	}
	lvl := slog.LevelDebug
	if len(evs) > 0 {
		lvl = slog.LevelInfo
	}
	r.log.Log(ctx, lvl, "reconciled", "account", account, "mailboxes", len(next),
		"events", len(evs), "list_dur", listed, "dur", time.Since(start))
	return evs, nil
}

// listIMAP logs in as the admin for account and lists its personal
// mailboxes with their status (and uniqueid, when Cyrus has LIST-METADATA).
func (r *Reconciler) listIMAP(ctx context.Context, cfg *ReconcileConfig, account string) (rcListing, error) {
	password, err := r.cy.Password()
	if err != nil {
		return rcListing{}, fmt.Errorf("admin password: %w", err)
	}
	cl, err := imap.Dial(ctx, r.cy.Network, r.cy.Addr, imap.Options{Timeout: cfg.CommandTimeout})
	if err != nil {
		return rcListing{}, err
	}
	defer func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rcLogoutTimeout)
		defer cancel()
		_ = cl.Logout(lctx) // the pass is done; a failed LOGOUT changes nothing
	}()
	// RFC 4616: the admin authenticates, the account is who it acts as.
	if err := cl.AuthenticatePlain(ctx, account, r.cy.Admin, password); err != nil {
		return rcListing{}, fmt.Errorf("login as %s for %s: %w", r.cy.Admin, account, err)
	}
	caps, err := cl.Capabilities(ctx)
	if err != nil {
		return rcListing{}, err
	}
	if !slices.Contains(caps, "LIST-STATUS") {
		return rcListing{}, fmt.Errorf("imap: server lacks LIST-STATUS (RFC 5819)")
	}
	var ns imap.Namespaces
	if slices.Contains(caps, "NAMESPACE") {
		if ns, err = cl.Namespace(ctx); err != nil {
			return rcListing{}, err
		}
	}
	opt := imap.ListOptions{Pattern: "*", Status: rcStatusItems, Subscribed: slices.Contains(caps, "LIST-EXTENDED")}
	if slices.Contains(caps, "LIST-METADATA") {
		opt.Metadata = []string{imap.UniqueIDEntry}
	}
	boxes, err := cl.List(ctx, opt)
	if err != nil {
		return rcListing{}, err
	}
	var l rcListing
	for i := range boxes {
		m := &boxes[i]
		if !rcPersonal(m.Name, ns) {
			continue
		}
		if m.Status == nil || m.HasAttr(`\Noselect`) || m.HasAttr(`\NonExistent`) {
			l.unknown = append(l.unknown, m.Name)
			continue
		}
		s := m.Status
		sub := subUnknown
		if opt.Subscribed {
			sub = subNo
			if m.HasAttr(`\Subscribed`) {
				sub = subYes
			}
		}
		l.states = append(l.states, ReconcileState{
			Mailbox: m.Name, MailboxID: m.Metadata[imap.UniqueIDEntry],
			UIDValidity: s.UIDValidity, UIDNext: s.UIDNext, Messages: s.Messages,
			Unseen: s.Unseen, HighestModseq: s.HighestModseq, Subscribed: sub,
		})
	}
	return l, nil
}

// rcPersonal reports whether name is in the account's personal namespace:
// INBOX, or the namespace with the longest matching prefix is a personal
// one (RFC 2342). Cyrus 3.6: personal "INBOX/", other users "user/",
// shared "" with altnamespace off; "", "Other Users/", "Shared Folders/"
// with it on. Without NAMESPACE everything counts as personal.
func rcPersonal(name string, ns imap.Namespaces) bool {
	if name == "INBOX" {
		return true
	}
	personal, best := len(ns.Personal)+len(ns.Other)+len(ns.Shared) == 0, -1
	for i, list := range [][]imap.Namespace{ns.Personal, ns.Other, ns.Shared} {
		for _, n := range list {
			// A prefix also names its own mailbox without the delimiter
			// ("Shared Folders" for "Shared Folders/").
			p := n.Prefix
			if !strings.HasPrefix(name, p) && (n.Delim == "" || name != strings.TrimSuffix(p, n.Delim)) {
				continue
			}
			if len(p) > best {
				personal, best = i == 0, len(p)
			}
		}
	}
	return personal
}

// rcDiff compares what was notified with what Cyrus listed and returns
// the events to publish and the state to store after them. A mailbox
// matches by uniqueid when both sides have one, else by name. An account
// never reconciled (no stored state) gets a mailbox.changed without
// fromModseq for every mailbox: we cannot know what it missed.
func rcDiff(account string, prev []ReconcileState, cur rcListing, now time.Time) ([]Event, []ReconcileState) {
	prev = rcSorted(prev)
	byName := make(map[string]int, len(prev))
	byID := make(map[string]int, len(prev))
	for i, p := range prev {
		byName[p.Mailbox] = i
		if p.MailboxID != "" {
			byID[p.MailboxID] = i
		}
	}
	matched := make([]bool, len(prev))
	var next []ReconcileState
	for _, name := range cur.unknown {
		if i, ok := byName[name]; ok && !matched[i] {
			matched[i] = true
			next = append(next, prev[i])
		}
	}
	var evs []Event
	for _, c := range rcSorted(cur.states) {
		i := -1
		if j, ok := byID[c.MailboxID]; ok && c.MailboxID != "" && !matched[j] {
			i = j
		} else if j, ok := byName[c.Mailbox]; ok && !matched[j] && (c.MailboxID == "" || prev[j].MailboxID == "" || prev[j].MailboxID == c.MailboxID) {
			i = j
		}
		next = append(next, c)
		switch {
		case i < 0 && len(prev) == 0:
			evs = append(evs, rcEvent(TypeMailboxChanged, account, c, now))
		case i < 0:
			evs = append(evs, rcEvent(TypeMailboxCreated, account, c, now))
		default:
			matched[i] = true
			p := prev[i]
			if p.Mailbox != c.Mailbox {
				ev := rcEvent(TypeMailboxRenamed, account, c, now)
				ev.OldMailbox = p.Mailbox
				evs = append(evs, ev)
			}
			if p.UIDValidity != c.UIDValidity || p.HighestModseq != c.HighestModseq || p.UIDNext != c.UIDNext ||
				p.Messages != c.Messages || p.Unseen != c.Unseen {
				ev := rcEvent(TypeMailboxChanged, account, c, now)
				// Modseqs of another UIDVALIDITY mean nothing: sync all.
				if p.UIDValidity == c.UIDValidity {
					ev.FromModseq = p.HighestModseq
				}
				evs = append(evs, ev)
			}
			// A lost MailboxSubscribe or MailboxUnSubscribe: only between
			// two known states (unknown ones are adopted silently).
			if p.Subscribed != subUnknown && c.Subscribed != subUnknown && p.Subscribed != c.Subscribed {
				on := c.Subscribed == subYes
				evs = append(evs, Event{
					Type: TypeMailboxSubscription, Account: account, Mailbox: c.Mailbox, MailboxID: c.MailboxID,
					Subscribed: &on, Time: now, CyrusEvent: CyrusEventReconcile, Readers: []string{account},
				})
			}
		}
	}
	for i, p := range prev {
		if !matched[i] {
			evs = append(evs, Event{
				Type: TypeMailboxDeleted, Account: account, Mailbox: p.Mailbox, MailboxID: p.MailboxID,
				UIDValidity: p.UIDValidity, Time: now, CyrusEvent: CyrusEventReconcile, Readers: []string{account},
			})
		}
	}
	return evs, rcSorted(next)
}

// rcEvent is an event about mailbox c with its status.
func rcEvent(typ, account string, c ReconcileState, now time.Time) Event {
	messages, unseen := c.Messages, c.Unseen
	return Event{
		Type: typ, Account: account, Mailbox: c.Mailbox, MailboxID: c.MailboxID,
		UIDValidity: c.UIDValidity, Modseq: c.HighestModseq, UIDNext: c.UIDNext,
		Messages: &messages, Unseen: &unseen, Time: now,
		CyrusEvent: CyrusEventReconcile, Readers: []string{account},
	}
}

// rcSorted returns a copy of states sorted by mailbox name.
func rcSorted(states []ReconcileState) []ReconcileState {
	s := slices.Clone(states)
	slices.SortFunc(s, func(a, b ReconcileState) int { return cmp.Compare(a.Mailbox, b.Mailbox) })
	return s
}
