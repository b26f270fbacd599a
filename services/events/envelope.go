package events

// Subjects and senders, opt-in (events-anchors §4.2, issue 8). Cyrus could
// put them in every event (vnd.cmu.envelope), but that makes each datagram
// larger (risking the ~21 KB limit) and sends every subject through the
// socket whether anyone wants it or not. Instead, for the consumers that
// opted in (`consumer add -envelope`), the dispatcher fetches the
// envelopes of a message.added's messages from Cyrus IMAP before
// recording the event: as the admin acting for the owner, EXAMINE (read
// only: \Seen is never set) and UID FETCH (UID ENVELOPE). Only those
// consumers' webhooks carry them; other consumers and the account event
// log behind the streams get the event without. Fetching is bounded
// (maxEnvelopeUIDs per event, envelopeBudget per publish batch) and never
// delays an event further or drops it: on failure the event goes out with
// "envelopeError". Logs never carry subjects or senders.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strconv"
	"strings"
	"time"

	"cyrus-sidecar/services/events/imap"
)

const (
	// maxEnvelopeUIDs bounds the messages of one event whose envelopes
	// are fetched; the rest have none ("envelopeError": "incomplete").
	maxEnvelopeUIDs = 20
	// envelopeBudget bounds all fetches of one publish batch (every
	// account's session), envelopeCommandTimeout each dial and command.
	envelopeBudget         = 5 * time.Second
	envelopeCommandTimeout = 3 * time.Second
)

// The values of Event.EnvelopeError.
const (
	// EnvelopeUnavailable: no envelope could be fetched (Cyrus did not
	// answer in time, the login failed, the mailbox is gone or was
	// recreated).
	EnvelopeUnavailable = "unavailable"
	// EnvelopeIncomplete: some messages have no envelope (expunged
	// already, or beyond the first maxEnvelopeUIDs).
	EnvelopeIncomplete = "incomplete"
)

// MessageEnvelope is what an opted-in consumer learns about one new
// message: from its envelope (RFC 3501 §7.4.2), encoded-words decoded.
// Addresses are shown as `Name <mailbox@host>` or `mailbox@host`.
type MessageEnvelope struct {
	UID     uint32   `json:"uid"`
	Subject string   `json:"subject"`
	From    []string `json:"from,omitempty"`
	To      []string `json:"to,omitempty"`
	Cc      []string `json:"cc,omitempty"`
	// Date is the Date header in RFC 3339; absent when it did not parse.
	Date      string `json:"date,omitempty"`
	MessageID string `json:"messageId,omitempty"`
}

// envelopeReq asks for the envelopes of uids in one mailbox, which must
// still have uidValidity.
type envelopeReq struct {
	mailbox     string
	uidValidity uint32
	uids        []uint32
}

// envelopeResult answers one envelopeReq: the envelopes found (UIDs that
// are gone have none), or why none could be read.
type envelopeResult struct {
	envs []MessageEnvelope
	err  error
}

// envelopeFetcher reads the envelopes for one account's requests, in one
// session; the results are in the requests' order.
type envelopeFetcher func(ctx context.Context, account string, reqs []envelopeReq) []envelopeResult

// errUIDValidity: the mailbox was recreated since the event.
var errUIDValidity = errors.New("uidvalidity changed")

// envelopeOutcome is what an event's opted-in payload gets.
type envelopeOutcome struct {
	envs []MessageEnvelope
	code string // Event.EnvelopeError
}

// UseCyrusForEnvelopes has the dispatcher fetch envelopes for opted-in
// consumers from cy; without it they get "envelopeError": "unavailable".
// Call it before Run.
func (d *Dispatcher) UseCyrusForEnvelopes(cy ReconcileCyrus) {
	d.fetchEnv = imapEnvelopes(cy)
}

// wantsEnvelope reports whether ev is a message.added whose envelopes can
// be fetched and some consumer that opted in may see it.
func wantsEnvelope(ev Event, consumers []scopedConsumer) bool {
	if ev.Type != TypeMessageAdded || ev.UIDs == "" || ev.UIDValidity == 0 || ev.Account == "" {
		return false
	}
	for _, c := range consumers {
		if c.envelope && inScope(c.scope, ev.Account, ev.Readers) {
			return true
		}
	}
	return false
}

// envelopes fetches what the opted-in consumers get for evs: nil when no
// event needs it, else one entry per event (nil for those that do not).
// One session per account, all within envelopeBudget.
func (d *Dispatcher) envelopes(ctx context.Context, evs []Event, consumers []scopedConsumer) []*envelopeOutcome {
	var out []*envelopeOutcome
	var accounts []string
	byAccount := map[string][]int{}
	reqs := map[int]envelopeReq{}
	more := map[int]bool{}
	for i, ev := range evs {
		if !wantsEnvelope(ev, consumers) {
			continue
		}
		if out == nil {
			out = make([]*envelopeOutcome, len(evs))
		}
		out[i] = &envelopeOutcome{code: EnvelopeUnavailable}
		uids, cut, ok := firstUIDs(ev.UIDs, maxEnvelopeUIDs)
		if !ok || d.fetchEnv == nil {
			continue
		}
		if _, seen := byAccount[ev.Account]; !seen {
			accounts = append(accounts, ev.Account)
		}
		byAccount[ev.Account] = append(byAccount[ev.Account], i)
		reqs[i], more[i] = envelopeReq{mailbox: ev.Mailbox, uidValidity: ev.UIDValidity, uids: uids}, cut
	}
	if len(accounts) == 0 {
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, envelopeBudget)
	defer cancel()
	for _, a := range accounts {
		idx := byAccount[a]
		rs := make([]envelopeReq, len(idx))
		for k, i := range idx {
			rs[k] = reqs[i]
		}
		var failed int
		var firstErr error
		for k, r := range d.fetchEnv(ctx, a, rs) {
			o := out[idx[k]]
			if r.err != nil {
				failed++
				firstErr = cmp.Or(firstErr, r.err)
				continue
			}
			o.envs, o.code = r.envs, ""
			if len(r.envs) < len(rs[k].uids) || more[idx[k]] {
				o.code = EnvelopeIncomplete
			}
		}
		// The error names commands and server replies, never a subject.
		if failed > 0 {
			d.log.Warn("envelopes not fetched; sent without", "account", a, "events", failed, "err", firstErr)
		}
	}
	return out
}

// firstUIDs expands an IMAP sequence set of UIDs ("3:5,9") to at most n
// UIDs; cut says some were left out, ok is false for a set it cannot read
// ("*" among them).
func firstUIDs(set string, n int) (uids []uint32, cut, ok bool) {
	for part := range strings.SplitSeq(set, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, err := strconv.ParseUint(lo, 10, 32)
		if err != nil || a == 0 {
			return nil, false, false
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 32); err != nil || b == 0 {
				return nil, false, false
			}
		}
		if a > b {
			a, b = b, a // RFC 3501 §9: 5:3 is 3:5
		}
		for u := a; u <= b; u++ {
			if len(uids) == n {
				return uids, true, true
			}
			uids = append(uids, uint32(u))
		}
	}
	return uids, false, len(uids) > 0
}

// imapEnvelopes is the envelopeFetcher over Cyrus IMAP.
func imapEnvelopes(cy ReconcileCyrus) envelopeFetcher {
	return func(ctx context.Context, account string, reqs []envelopeReq) []envelopeResult {
		res := make([]envelopeResult, len(reqs))
		fail := func(from int, err error) []envelopeResult {
			for i := from; i < len(res); i++ {
				res[i].err = err
			}
			return res
		}
		password, err := cy.Password()
		if err != nil {
			return fail(0, fmt.Errorf("admin password: %w", err))
		}
		cl, err := imap.Dial(ctx, cy.Network, cy.Addr, imap.Options{Timeout: envelopeCommandTimeout})
		if err != nil {
			return fail(0, err)
		}
		defer func() {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rcLogoutTimeout)
			defer cancel()
			_ = cl.Logout(lctx) // the fetch is done; a failed LOGOUT changes nothing
		}()
		// RFC 4616: the admin authenticates, the owner is who it acts as.
		if err := cl.AuthenticatePlain(ctx, account, cy.Admin, password); err != nil {
			return fail(0, fmt.Errorf("login as %s for %s: %w", cy.Admin, account, err))
		}
		selected, uv := "", uint32(0)
		for i, r := range reqs {
			if r.mailbox != selected || selected == "" {
				if uv, err = cl.Examine(ctx, r.mailbox); err != nil {
					if imap.IsNo(err) { // gone or unreadable: the session goes on
						res[i].err, selected = err, ""
						continue
					}
					return fail(i, err)
				}
				selected = r.mailbox
			}
			if uv != r.uidValidity {
				res[i].err = errUIDValidity
				continue
			}
			set := make([]string, len(r.uids))
			for k, u := range r.uids {
				set[k] = strconv.FormatUint(uint64(u), 10)
			}
			envs, err := cl.UIDFetchEnvelope(ctx, strings.Join(set, ","), len(r.uids))
			if err != nil {
				if imap.IsNo(err) {
					res[i].err = err
					continue
				}
				return fail(i, err)
			}
			res[i].envs = messageEnvelopes(envs, r.uids)
		}
		return res
	}
}

// messageEnvelopes keeps the envelopes of the requested UIDs, in their
// order.
func messageEnvelopes(envs []imap.Envelope, uids []uint32) []MessageEnvelope {
	byUID := make(map[uint32]imap.Envelope, len(envs))
	for _, e := range envs {
		byUID[e.UID] = e
	}
	var out []MessageEnvelope
	for _, u := range uids {
		e, ok := byUID[u]
		if !ok {
			continue
		}
		me := MessageEnvelope{UID: u, Subject: e.Subject, From: addrStrings(e.From), To: addrStrings(e.To),
			Cc: addrStrings(e.Cc), MessageID: e.MessageID}
		if t, err := mail.ParseDate(e.Date); err == nil {
			me.Date = t.Format(time.RFC3339)
		}
		out = append(out, me)
	}
	return out
}

func addrStrings(as []imap.Address) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}
