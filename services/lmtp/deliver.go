package lmtp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-smtp"
)

// Sender relations stamped on deliveries.
const (
	internal = "internal"
	external = "external"
)

// target is one Cyrus mailbox of this message, with the relation its
// header will carry (it depends on the recipient's organisation).
type target struct{ user, relation string }

// outcome is Cyrus's reply for one target, or why there is none.
type outcome struct {
	reply Reply
	err   error
}

// relations returns, for an organisation, whether the sender counts as
// inside it: its envelope domain is one of the organisation's, and with
// relation_proof "auth" the AUTH= address Exim passed is too. Anything
// else, the null sender included, is external.
func (ss *session) relations(ctx context.Context) (func(org string) string, error) {
	outside := func(string) string { return external }
	if ss.cfg.RelationHeader == "" {
		return func(string) string { return "" }, nil
	}
	senderOrg, err := ss.s.orgOf(ctx, ss.from)
	if err != nil || senderOrg == "" {
		return outside, err
	}
	if ss.cfg.RelationProof == "auth" {
		authOrg := ""
		if ss.opts != nil && ss.opts.Auth != nil {
			if authOrg, err = ss.s.orgOf(ctx, *ss.opts.Auth); err != nil {
				return outside, err
			}
		}
		if authOrg != senderOrg {
			return outside, nil
		}
	}
	return func(org string) string {
		if org == senderOrg {
			return internal
		}
		return external
	}, nil
}

// orgOf is the organisation owning an address's domain; "" for the null
// sender, a malformed address or a domain not hosted here.
func (s *Service) orgOf(ctx context.Context, addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	a, err := s.canon.Exact(addr)
	if err != nil {
		return "", nil
	}
	org, err := s.domainOrg(ctx, a.Domain())
	if err != nil {
		return "", fmt.Errorf("sender domain %s: %w", a.Domain(), err)
	}
	return org, nil
}

// plan lists each distinct mailbox once, in RCPT order: a duplicate RCPT,
// or a user reached directly and through an alias, is one delivery whose
// reply is fanned out (RFC 2033 §4.2 wants a reply per RCPT). groups are
// the Cyrus transactions, as indexes into targets.
func (ss *session) plan(relation func(org string) string) (targets []target, index map[target]int, groups [][]int) {
	index = map[target]int{}
	for _, rc := range ss.rcpts {
		for _, u := range rc.users {
			t := target{u, relation(rc.org)}
			if _, ok := index[t]; !ok {
				index[t] = len(targets)
				targets = append(targets, t)
			}
		}
	}
	return targets, index, ss.transactions(targets)
}

// statuses turns the mailboxes' outcomes into one status per accepted
// RCPT: nil never appears; a 2xx is Cyrus's own reply, relayed.
func (ss *session) statuses(outcomes []outcome, index map[target]int, relation func(org string) string) []error {
	statuses := make([]error, len(ss.rcpts))
	for i, rc := range ss.rcpts {
		got := make([]outcome, len(rc.users))
		for j, u := range rc.users {
			got[j] = outcomes[index[target{u, relation(rc.org)}]]
		}
		statuses[i] = verdict(got)
		if len(got) > 1 {
			ss.s.log.Info("alias delivered", "rcpt", rc.rcpt, "mailboxes", len(got), "status", statuses[i].Error())
		}
	}
	return statuses
}

// transactions splits the targets into Cyrus transactions (indexes into
// targets): one each with one_recipient_per_transaction (cyrus-imapd#4878:
// with several recipients Cyrus 3.6 may run the wrong user's Sieve
// script), else one per relation, since the stamped header differs.
func (ss *session) transactions(targets []target) [][]int {
	var groups [][]int
	byRelation := map[string]int{}
	for i, t := range targets {
		if ss.cfg.OneRecipient {
			groups = append(groups, []int{i})
			continue
		}
		g, ok := byRelation[t.relation]
		if !ok {
			g = len(groups)
			byRelation[t.relation] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	return groups
}

func (ss *session) deliverGroup(ctx context.Context, msg io.Reader, size int64, targets []target, group []int, outcomes []outcome) {
	var stamp []byte
	if rel := targets[group[0]].relation; rel != "" {
		// RFC 5322 §3.6: a trace-like field at the top, as Received is.
		stamp = fmt.Appendf(nil, "%s: %s\r\n", ss.cfg.RelationHeader, rel)
		msg = io.MultiReader(bytes.NewReader(stamp), msg)
	}
	env := Envelope{From: ss.from, MailParams: ss.mailParams(int64(len(stamp)) + size)}
	for _, i := range group {
		env.Rcpts = append(env.Rcpts, targets[i].user)
	}
	replies, err := ss.s.up.deliver(ctx, env, msg)
	if err != nil {
		ss.s.log.Warn("delivery to Cyrus incomplete", "rcpts", env.Rcpts, "err", err)
	}
	for k, i := range group {
		outcomes[i] = outcome{err: err}
		if k < len(replies) {
			outcomes[i].reply = replies[k]
		}
	}
	ss.s.log.Info("delivered", "from", ss.from, "rcpts", env.Rcpts, "size", size, "cyrus", joinReplies(replies))
}

// lateBody is a message that is not there yet: the first Cyrus transaction
// runs up to Cyrus's 354 while the client is still sending, and its reads
// wait until the spooled, checked message is ready. A message that fails
// the checks makes them fail, and the transaction ends without the dot.
type lateBody struct {
	ctx   context.Context
	ready chan struct{}
	r     io.Reader
	err   error
}

func newLateBody(ctx context.Context) *lateBody {
	return &lateBody{ctx: ctx, ready: make(chan struct{})}
}

// set makes the message (or its failure) available; once.
func (l *lateBody) set(r io.Reader, err error) {
	l.r, l.err = r, err
	close(l.ready)
}

func (l *lateBody) Read(p []byte) (int, error) {
	select {
	case <-l.ready:
	case <-l.ctx.Done():
		return 0, l.ctx.Err()
	}
	if l.err != nil {
		return 0, l.err
	}
	return l.r.Read(p)
}

// verdict is a RCPT's status from its mailboxes' outcomes: Cyrus's reply
// for one; for an alias, a 4xx if any mailbox has no verdict or a 4xx (the
// retry may duplicate into the others, never lose), else the first 5xx if
// all failed, else a 2xx.
func verdict(got []outcome) error {
	var firstTemp, firstPerm, firstOK error
	for _, o := range got {
		switch o.reply.Code / 100 {
		case 2:
			if firstOK == nil {
				firstOK = o.reply.SMTPError()
			}
		case 5:
			if firstPerm == nil {
				firstPerm = o.reply.SMTPError()
			}
		case 4:
			if firstTemp == nil {
				firstTemp = o.reply.SMTPError()
			}
		default: // no verdict: Cyrus unreachable, gone, or too slow
			if firstTemp == nil {
				firstTemp = noVerdict(o.err)
			}
		}
	}
	switch {
	case firstTemp != nil:
		return firstTemp
	case firstOK == nil:
		return firstPerm
	case len(got) > 1 && firstPerm != nil:
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 1, 5}, Message: "Delivered to some of the alias's mailboxes; the others refused it"}
	}
	return firstOK
}

// noVerdict is the status of a mailbox Cyrus never answered for. After the
// final dot the outcome is unknown: a 4xx makes the client retry, which at
// worst duplicates (Cyrus's duplicate suppression usually drops it).
func noVerdict(err error) error {
	if err == nil {
		err = errors.New("no reply")
	}
	return unavailable(err)
}

// mailParams are the MAIL FROM parameters Cyrus lmtpd understands (AUTH,
// BODY, SIZE); everything else the client sent stays here.
func (ss *session) mailParams(size int64) []string {
	var params []string
	if size > 0 {
		params = append(params, fmt.Sprintf("SIZE=%d", size))
	}
	if ss.opts == nil {
		return params
	}
	switch ss.opts.Body {
	case smtp.Body8BitMIME:
		params = append(params, "BODY=8BITMIME")
	case smtp.Body7Bit:
		params = append(params, "BODY=7BIT")
	}
	if ss.opts.Auth != nil {
		// Exim's authenticated_sender: Cyrus checks folder ACLs for
		// +detail delivery against it (RFC 4954 §5).
		if *ss.opts.Auth == "" {
			params = append(params, "AUTH=<>")
		} else {
			params = append(params, "AUTH="+xtext(*ss.opts.Auth))
		}
	}
	return params
}

// xtext encodes an ESMTP parameter value (RFC 3461 §4): '+', '=' and
// anything outside printable ASCII as +XX.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
