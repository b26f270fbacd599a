package lmtp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"cyrus-sidecar/store"
)

// storeTimeout bounds one store lookup during a command; Exim waits 30 s
// for a callout's answer.
const storeTimeout = 20 * time.Second

// session is one client connection's state. go-smtp keeps only the
// recipients we accepted, in order; rcpts mirrors that list.
type session struct {
	s     *Service
	conn  net.Conn
	fc    *frontConn // conn, when it came through our listener (tests may differ)
	cfg   *Config
	from  string
	opts  *smtp.MailOptions
	rcpts []recipient
	// inData is closed when the running LMTPData returns; nil when none
	// runs. Reset reads it from go-smtp's command goroutine, LMTPData runs
	// on another for BDAT.
	mu     sync.Mutex
	inData chan struct{}
	reset  bool // the running LMTPData ended because go-smtp aborted it (ErrDataReset)
}

// recipient is one accepted RCPT: the address as the client wrote it (the
// key go-smtp's StatusCollector wants) and the Cyrus mailboxes it reaches.
type recipient struct {
	rcpt  string
	users []string // Cyrus RCPT forms: the user, with its +detail for a user's own address
	org   string
}

// Reset forgets the transaction (RSET, a new LHLO, or after DATA).
func (ss *session) Reset() {
	ss.mu.Lock()
	running := ss.inData
	ss.mu.Unlock()
	if running != nil {
		// RSET (or LHLO) between BDAT chunks (RFC 3030 §3): go-smtp v0.25.1
		// would start the next BDAT while the aborted message's goroutine
		// still reports into the same field (a data race; the new
		// transaction could read the old result). Let the aborted one
		// finish, then end the connection; no MTA aborts that way, and the
		// client keeps its message.
		aborted := false
		select {
		case <-running:
			ss.mu.Lock()
			aborted = ss.reset
			ss.mu.Unlock()
		default:
			<-running
			aborted = true
		}
		if aborted && ss.fc != nil {
			ss.fc.end("421 4.5.0 Transaction aborted during BDAT, closing connection")
		}
	}
	ss.mu.Lock()
	ss.inData, ss.reset = nil, false
	ss.mu.Unlock()
	ss.from, ss.opts, ss.rcpts = "", nil, nil
	ss.setBusy(false)
	ss.s.idle(ss.conn)
}

func (ss *session) Logout() error { return nil }

// setBusy tells the drain whether a transaction is open.
func (ss *session) setBusy(b bool) {
	if ss.fc != nil {
		ss.fc.busy.Store(b)
	}
}

// Mail accepts any reverse path go-smtp parsed, the null sender above all:
// callouts use it, and refusing it would make Exim mark the whole domain
// as failing (its domain cache, 3 h).
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.cfg = ss.s.cfg.Load() // a reload applies from the next transaction
	if limit := ss.s.limit(); opts != nil && opts.Size > limit {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: fmt.Sprintf("Message size exceeds the limit of %d bytes", limit)}
	}
	ss.from, ss.opts = from, opts
	ss.setBusy(true)
	return nil
}

// Rcpt answers from the store (RFC 2033 §4.2 wants the truth at RCPT: Exim's
// callout=random probes a made-up local part and, were it accepted, would
// skip every later callout for the domain). Only recipients the store knows
// are ever shown to Cyrus, which would otherwise autocreate mailboxes.
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	err := ss.rcpt(to)
	rcpts.WithLabelValues(rcptResult(err)).Inc()
	return err
}

func (ss *session) rcpt(to string) error {
	ctx, cancel := context.WithTimeout(ss.s.hard, storeTimeout)
	defer cancel()
	a, err := ss.s.canon.Address(to)
	if err != nil {
		return errMalformed
	}
	r, err := ss.s.resolve(ctx, a)
	if err != nil {
		ss.s.log.Error("recipient lookup failed", "rcpt", a.String(), "err", err)
		return errStore
	}
	switch {
	case !r.Hosted:
		return errNotHosted
	case r.Kind == store.KindUser && r.Disabled:
		return errDisabled
	case len(r.Remote) > 0:
		// We deliver into Cyrus only: an outside target would be
		// dropped. Deferred, so the mail waits while the MTA is
		// configured to expand aliases itself (docs/lmtp.md).
		ss.s.log.Error("alias with outside targets reached the LMTP proxy; let the MTA expand aliases", "rcpt", a.String())
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 5}, Message: "Alias has outside targets; the MTA must expand it"}
	case len(r.Users) == 0:
		return errUnknown
	}
	rc := recipient{rcpt: to, org: r.Org, users: r.Users}
	if r.Kind == store.KindUser && a.Detail() != "" {
		// Cyrus files user+folder@domain into the folder.
		rc.users = []string{a.Local() + "+" + a.Detail() + "@" + a.Domain()}
	}
	if ss.cfg.CheckQuota {
		if err := ss.checkCyrus(ctx, rc.users); err != nil {
			return err
		}
	}
	ss.rcpts = append(ss.rcpts, rc)
	return nil
}

// checkCyrus asks Cyrus lmtpd about each mailbox (MAIL FROM:<>, RCPT, RSET)
// and relays a refusal such as 452 4.2.2 over quota.
func (ss *session) checkCyrus(ctx context.Context, users []string) error {
	var size int64
	if ss.opts != nil {
		size = ss.opts.Size
	}
	for _, u := range users {
		reply, err := ss.s.up.check(ctx, u, size)
		if err != nil {
			ss.s.log.Warn("Cyrus quota check failed", "rcpt", u, "err", err)
			return unavailable(err)
		}
		if reply.Code/100 != 2 {
			return reply.SMTPError()
		}
	}
	return nil
}

// Data is never called: go-smtp calls LMTPData for LMTP servers.
func (ss *session) Data(io.Reader) error {
	return &smtp.SMTPError{Code: 502, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "DATA without LMTP"}
}

// LMTPData spools the whole message first, so that nothing reaches Cyrus
// before the client's end of data and a client that goes away mid-message
// leaves nothing behind; then it delivers and sets one status per RCPT, in
// order, each Cyrus's own verdict or a 4xx (RFC 2033 §4.2).
func (ss *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	// Counted now: after a failed BDAT, go-smtp may Reset the session
	// while this is still returning.
	n := len(ss.rcpts)
	cs := &countingStatus{StatusCollector: status}
	err := ss.lmtpData(r, cs)
	if err != nil && cs.n == 0 {
		// go-smtp gives this one answer to every recipient.
		recipients.WithLabelValues(statusResult(err)).Add(float64(n))
	}
	return err
}

func (ss *session) lmtpData(r io.Reader, status smtp.StatusCollector) error {
	done := make(chan struct{})
	ss.mu.Lock()
	ss.inData = done
	ss.mu.Unlock()
	defer close(done)
	defer ss.s.idle(ss.conn)
	cfg := ss.cfg
	ctx := ss.s.hard
	relation, err := ss.relations(ctx)
	if err != nil {
		ss.s.log.Error("sender lookup failed", "err", err)
		return errStore
	}
	targets, index, groups := ss.plan(relation)
	outcomes := make([]outcome, len(targets))
	// A message the client announced as small starts its first Cyrus
	// transaction now, so that after the client's final dot only the body
	// and Cyrus's replies remain (one round trip less). Large ones wait:
	// they would hold an lmtpd at 354 for as long as they take to arrive.
	var late *lateBody
	var early chan struct{}
	if ss.opts != nil && ss.opts.Size > 0 && ss.opts.Size <= int64(cfg.SpoolMemory) {
		late, early = newLateBody(ctx), make(chan struct{})
		go func() {
			defer close(early)
			defer func() {
				if p := recover(); p != nil { // no verdict: 451 for these
					ss.s.log.Error("panic delivering", "panic", p, "stack", string(debug.Stack()))
				}
			}()
			ss.deliverGroup(ctx, late, ss.opts.Size, targets, groups[0], outcomes)
		}()
	}
	// abort ends the early transaction without the dot, for an answer that
	// is not Cyrus's.
	abort := func(answer error) error {
		if late != nil {
			late.set(nil, answer)
			<-early
		}
		return answer
	}
	b, err := readBody(ss.dataReader(r), bodyPolicy{
		Lenient: cfg.LineEndings == "lenient", MaxLine: cfg.MaxLine, MaxBytes: ss.s.limit(),
		MemLimit: cfg.SpoolMemory, Dir: cfg.SpoolDir, StripHeader: cfg.RelationHeader,
	})
	if err != nil {
		if errors.Is(err, smtp.ErrDataReset) {
			ss.mu.Lock()
			ss.reset = true
			ss.mu.Unlock()
		}
		return abort(bodyError(err))
	}
	defer b.Close() // after the early transaction is done with it: every path below waits
	receivedBytes.Add(float64(b.Size()))
	delivering := time.Now()
	defer func() { deliveryLatency.Observe(time.Since(delivering).Seconds()) }()
	if ss.fc != nil && ss.fc.broken.Load() {
		// The client went away before the end of its data: never deliver
		// a message it did not finish sending.
		return abort(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Connection lost during the message"})
	}
	rest := groups
	if late != nil {
		late.set(b.Reader(), nil)
		<-early
		rest = groups[1:]
	}
	for _, g := range rest {
		ss.deliverGroup(ctx, b.Reader(), b.Size(), targets, g, outcomes)
	}
	for i, st := range ss.statuses(outcomes, index, relation) {
		status.SetStatus(ss.rcpts[i].rcpt, st)
	}
	return nil
}

// dataReader bounds the wait for each part of the message (data_timeout)
// and, past that, the average rate (min_data_rate): go-smtp's own deadline
// covers only command lines.
func (ss *session) dataReader(r io.Reader) io.Reader {
	return &paced{r: r, conn: ss.conn, start: time.Now(), timeout: ss.cfg.DataTimeout, rate: ss.cfg.MinDataRate}
}

type paced struct {
	r       io.Reader
	conn    net.Conn
	start   time.Time
	timeout time.Duration
	rate    int
	n       int64
}

func (p *paced) Read(b []byte) (int, error) {
	deadline := time.Now().Add(p.timeout)
	if p.rate > 0 {
		// Slowloris: after the first data_timeout, the data must have
		// come at min_data_rate on average.
		byRate := p.start.Add(p.timeout + time.Duration(p.n)*time.Second/time.Duration(p.rate))
		if byRate.Before(deadline) {
			deadline = byRate
		}
	}
	p.conn.SetReadDeadline(deadline)
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

// bodyError turns a failure to take the message in into the answer every
// recipient gets. go-smtp wants an *smtp.SMTPError itself, not wrapped
// (anything else becomes a permanent 554 5.0.0).
func bodyError(err error) error {
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		return se
	case errors.Is(err, smtp.ErrTooLongLine):
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message has an over-long line; not delivered"}
	case errors.Is(err, smtp.ErrDataReset):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Message transfer aborted"}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout reading the message"}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Could not take the message in; try again later"}
}

// errStore is the answer while the store cannot be read: temporary, never
// a 5xx (a callout's negative answer is cached for hours).
var errStore = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Directory temporarily unavailable, try again later"}

// Rcpt's verdicts from the store (shared values: metrics tell them apart).
var (
	errMalformed = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Malformed mailbox address"}
	errNotHosted = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay not permitted: domain not hosted here"}
	errDisabled  = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 2, 1}, Message: "Mailbox disabled"}
	errUnknown   = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
)

// unavailable is the answer when Cyrus cannot be asked.
func unavailable(err error) *smtp.SMTPError {
	if errors.Is(err, errBusy) {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 5}, Message: "Mail store busy, try again later"}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "Mail store unavailable, try again later"}
}

// joinReplies is a one-line summary for logs.
func joinReplies(rs []Reply) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.String()
	}
	return strings.Join(parts, "; ")
}
