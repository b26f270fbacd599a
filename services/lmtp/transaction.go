package lmtp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// transaction is one use of a connection by deliver or check.
type transaction struct {
	ctx     context.Context
	cfg     upstreamConfig
	c       *lmtpConn
	env     Envelope
	replies []Reply
	start   int64 // c.in.n at the start: no reply byte came if unchanged
	clean   bool  // c is between transactions and may be reused
	stale   bool  // a pooled c was found closed before any reply: retry
}

// run is deliver on one connection.
func (t *transaction) run(body io.Reader) error {
	mail, rcpts, data, err := t.envelope()
	if err != nil {
		return err
	}
	if mail.Code/100 != 2 {
		for i := range t.replies {
			t.replies[i] = mail
		}
		return t.finish(data)
	}
	var accepted []int
	for i, r := range rcpts {
		if r.Code/100 == 2 {
			accepted = append(accepted, i)
		} else {
			t.replies[i] = r // refused at RCPT: that is its verdict
		}
	}
	if len(accepted) == 0 {
		return t.finish(data)
	}
	if data.Code != 354 {
		for _, i := range accepted {
			t.replies[i] = data
		}
		return t.finish(data)
	}
	return t.body(body, accepted)
}

// envelope sends MAIL, the RCPTs and DATA and reads their replies: all in
// one write with PIPELINING (RFC 2920 §3.1), else one at a time, stopping
// after a refused MAIL and before DATA when no RCPT was accepted (data is
// then the zero Reply).
func (t *transaction) envelope() (mail Reply, rcpts []Reply, data Reply, err error) {
	c, env := t.c, t.env
	rcpts = make([]Reply, len(env.Rcpts))
	mailOp := "MAIL FROM:<" + env.From + ">"
	if c.pipelining {
		c.w.WriteString(env.mailCommand())
		for _, r := range env.Rcpts {
			c.w.WriteString(env.rcptCommand(r))
		}
		c.w.WriteString("DATA\r\n")
		if err = c.w.Flush(); err != nil { // bufio keeps the first write error
			return mail, rcpts, data, t.fail(mailOp, err)
		}
		if mail, err = t.reply(); err != nil {
			return mail, rcpts, data, t.fail(mailOp, err)
		}
		for i, r := range env.Rcpts {
			if rcpts[i], err = t.reply(); err != nil {
				return mail, rcpts, data, t.fail("RCPT TO:<"+r+">", err)
			}
		}
		if data, err = t.reply(); err != nil {
			return mail, rcpts, data, t.fail("DATA", err)
		}
		return mail, rcpts, data, nil
	}
	if mail, err = t.command(env.mailCommand()); err != nil || mail.Code/100 != 2 {
		return mail, rcpts, data, t.fail(mailOp, err)
	}
	accepted := false
	for i, r := range env.Rcpts {
		if rcpts[i], err = t.command(env.rcptCommand(r)); err != nil {
			return mail, rcpts, data, t.fail("RCPT TO:<"+r+">", err)
		}
		accepted = accepted || rcpts[i].Code/100 == 2
	}
	if !accepted {
		return mail, rcpts, data, nil
	}
	data, err = t.command("DATA\r\n")
	return mail, rcpts, data, t.fail("DATA", err)
}

// finish ends a transaction that stopped before the body, every recipient
// having its verdict. Cyrus may still have said 354 (after a MAIL refused
// for its SIZE= it keeps the sender, accepts the RCPTs and DATA): it then
// waits for a body that will not come, so the connection is closed.
// Otherwise RSET now, so that the pool holds clean connections only; a
// failed RSET just closes the connection.
func (t *transaction) finish(data Reply) error {
	if data.Code == 354 {
		return nil
	}
	r, err := t.command("RSET\r\n")
	t.clean = err == nil && r.Code == 250
	return nil
}

// body sends the message after 354 and reads one reply per accepted RCPT,
// in RCPT order (RFC 2033 §4.2), all within FinalTimeout.
func (t *transaction) body(body io.Reader, accepted []int) error {
	c := t.c
	// ctx's AfterFunc closes the connection, but from another goroutine:
	// a body read that ends after the cancellation must not be followed
	// by the dot before the close lands.
	if err := writeDotStuffed(c.w, ctxReader{t.ctx, body}); err != nil {
		return fmt.Errorf("lmtp upstream: DATA: %w", err) // never the dot: the caller closes c
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("lmtp upstream: DATA: %w", err)
	}
	if err := c.nc.SetReadDeadline(time.Now().Add(t.cfg.FinalTimeout)); err != nil {
		return fmt.Errorf("lmtp upstream: end of DATA: %w", err)
	}
	for k, i := range accepted {
		r, err := readReply(c.r)
		if err != nil {
			return fmt.Errorf("lmtp upstream: end of DATA: reply %d of %d (RCPT TO:<%s>): %w",
				k+1, len(accepted), t.env.Rcpts[i], err)
		}
		t.replies[i] = r
		if k == 0 && r.Code == 552 && r.Enhanced == (smtp.EnhancedCode{5, 2, 3}) {
			// Cyrus's check of the message against maxmessagesize
			// answers once, not per recipient, and keeps the
			// transaction (lmtpengine.c, DATA). The connection is
			// closed rather than left out of step.
			for _, j := range accepted[1:] {
				t.replies[j] = r
			}
			return nil
		}
	}
	t.clean = true
	return nil
}

// check is upstream.check on one connection.
func (t *transaction) check() error {
	c, env := t.c, t.env
	rcpt := env.Rcpts[0]
	var mail, rc Reply
	var err error
	if c.pipelining {
		c.w.WriteString(env.mailCommand())
		c.w.WriteString(env.rcptCommand(rcpt))
		c.w.WriteString("RSET\r\n")
		if err = c.w.Flush(); err != nil {
			return t.fail("MAIL FROM:<>", err)
		}
		if mail, err = t.reply(); err != nil {
			return t.fail("MAIL FROM:<>", err)
		}
		if rc, err = t.reply(); err != nil {
			return t.fail("RCPT TO:<"+rcpt+">", err)
		}
	} else {
		if mail, err = t.command(env.mailCommand()); err != nil {
			return t.fail("MAIL FROM:<>", err)
		}
		if mail.Code/100 == 2 {
			if rc, err = t.command(env.rcptCommand(rcpt)); err != nil {
				return t.fail("RCPT TO:<"+rcpt+">", err)
			}
		}
	}
	t.replies[0] = rc
	if mail.Code/100 != 2 {
		t.replies[0] = mail
	}
	// The verdict is in; a failed RSET only costs the connection.
	if !c.pipelining {
		c.w.WriteString("RSET\r\n")
		if c.w.Flush() != nil {
			return nil
		}
	}
	rset, err := t.reply()
	t.clean = err == nil && rset.Code == 250
	return nil
}

// command sends one command and reads its reply.
func (t *transaction) command(cmd string) (Reply, error) {
	t.c.w.WriteString(cmd)
	if err := t.c.w.Flush(); err != nil {
		return Reply{}, err
	}
	return t.reply()
}

// reply reads one reply within CommandTimeout.
func (t *transaction) reply() (Reply, error) {
	if err := t.c.nc.SetReadDeadline(time.Now().Add(t.cfg.CommandTimeout)); err != nil {
		return Reply{}, err
	}
	return readReply(t.c.r)
}

// fail wraps err (nil stays nil) with the command it belongs to and notes
// whether the connection was a stale pooled one: closed by Cyrus before
// any byte of a reply came, so that nothing can have been accepted.
func (t *transaction) fail(op string, err error) error {
	if err == nil {
		return nil
	}
	gone := errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	t.stale = gone && t.c.pooled && t.c.in.n == t.start
	return fmt.Errorf("lmtp upstream: %s: %w", op, err)
}

// check refuses fields that would break or add command lines.
func (e Envelope) check() error {
	addrs := append([]string{e.From}, e.Rcpts...)
	for _, a := range addrs {
		if strings.ContainsFunc(a, badCommandRune) || strings.ContainsAny(a, "<>") {
			return fmt.Errorf("address %q: %w", a, errEnvelopeSyntax)
		}
	}
	for _, p := range append(append([]string(nil), e.MailParams...), e.RcptParams...) {
		if p == "" || strings.ContainsFunc(p, badCommandRune) || strings.Contains(p, " ") {
			return fmt.Errorf("parameter %q: %w", p, errEnvelopeSyntax)
		}
	}
	return nil
}

// mailCommand is "MAIL FROM:<from> params" with CRLF.
func (e Envelope) mailCommand() string {
	return "MAIL FROM:<" + e.From + ">" + joinParams(e.MailParams) + "\r\n"
}

// rcptCommand is "RCPT TO:<rcpt> params" with CRLF.
func (e Envelope) rcptCommand(rcpt string) string {
	return "RCPT TO:<" + rcpt + ">" + joinParams(e.RcptParams) + "\r\n"
}

func joinParams(params []string) string {
	if len(params) == 0 {
		return ""
	}
	return " " + strings.Join(params, " ")
}

// badCommandRune: controls (CR and LF above all) and DEL.
func badCommandRune(r rune) bool { return r < 0x20 || r == 0x7f }
