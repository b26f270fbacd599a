package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// lmtpTimeout bounds each LMTP command and the delivery.
const lmtpTimeout = 30 * time.Second

// Deliver delivers msg over Cyrus's LMTP UNIX socket and returns one reply
// per recipient, in order: the RCPT reply for a refused recipient, else the
// per-recipient reply after DATA (RFC 2033 §4.2). A reply reads
// "<code> <text>", a multi-line reply's lines joined by spaces, such as
// "250 2.1.5 Success SESSIONID=<...>" or "550 Mailbox unknown. ... 5.1.1 User unknown".
// Line ends in msg may be LF or CRLF; they go out as CRLF.
func (c *Cyrus) Deliver(t testing.TB, from string, rcpts []string, msg []byte) []string {
	t.Helper()
	replies, err := deliverLMTP(c.LMTPSocket, from, rcpts, msg)
	if err != nil {
		t.Fatalf("lmtp deliver to %v: %v", rcpts, err)
	}
	return replies
}

// deliverLMTP runs one LMTP transaction on a UNIX socket.
func deliverLMTP(socket, from string, rcpts []string, msg []byte) ([]string, error) {
	conn, err := net.DialTimeout("unix", socket, lmtpTimeout)
	if err != nil {
		return nil, err
	}
	cl := smtp.NewClientLMTP(conn)
	defer cl.Close()
	cl.CommandTimeout, cl.SubmissionTimeout = lmtpTimeout, lmtpTimeout
	if err := cl.Hello("lab.localhost"); err != nil {
		return nil, fmt.Errorf("LHLO: %w", err)
	}
	if err := cl.Mail(from, nil); err != nil {
		return nil, fmt.Errorf("MAIL FROM:<%s>: %w", from, err)
	}
	replies := make([]string, len(rcpts))
	var accepted []int
	for i, rcpt := range rcpts {
		err := cl.Rcpt(rcpt, nil)
		if smtpErr, ok := errors.AsType[*smtp.SMTPError](err); ok {
			replies[i] = smtpReply(smtpErr)
			continue
		} else if err != nil {
			return nil, fmt.Errorf("RCPT TO:<%s>: %w", rcpt, err)
		}
		accepted = append(accepted, i)
	}
	if len(accepted) == 0 {
		return replies, cl.Quit()
	}
	w, err := cl.Data()
	if err != nil {
		return nil, fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return nil, fmt.Errorf("DATA: %w", err)
	}
	// go-smtp keys the per-recipient replies by address; the recipients it
	// sent are those RCPT accepted.
	ok, err := w.CloseWithLMTPResponse()
	failed, isLMTP := errors.AsType[smtp.LMTPDataError](err)
	if err != nil && !isLMTP {
		return nil, fmt.Errorf("end of DATA: %w", err)
	}
	for _, i := range accepted {
		if r, found := ok[rcpts[i]]; found {
			replies[i] = "250 " + oneLine(r.StatusText)
		} else if e, found := failed[rcpts[i]]; found {
			replies[i] = smtpReply(e)
		}
	}
	return replies, cl.Quit()
}

// smtpReply renders a go-smtp error as the server's reply.
func smtpReply(e *smtp.SMTPError) string {
	text := oneLine(e.Message)
	if e.EnhancedCode != (smtp.EnhancedCode{}) {
		ec := e.EnhancedCode
		text = fmt.Sprintf("%d.%d.%d %s", ec[0], ec[1], ec[2], text)
	}
	return fmt.Sprintf("%d %s", e.Code, text)
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// SentMail is one message Cyrus handed to its sendmail (Sieve vacation
// replies, redirects), as the lab's capture program received it.
type SentMail struct {
	From string   // MAIL FROM address, "" for the null sender
	To   []string // RCPT TO addresses
	Data []byte   // the message, CRLF line ends, dot-unstuffed
}

// SentMail returns what Cyrus has sent through the lab's capture sendmail
// so far, oldest first. With CyrusOptions.Conf["sendmail"] set it is empty.
func (c *Cyrus) SentMail(t testing.TB) []SentMail {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(c.Dir, "sendmail", "*.eml"))
	if err != nil {
		t.Fatalf("sent mail: %v", err)
	}
	slices.Sort(files) // names start with the time in nanoseconds
	var out []SentMail
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("sent mail: %v", err)
		}
		env, body, _ := bytes.Cut(data, []byte("\n\n"))
		m := SentMail{Data: body}
		for line := range strings.Lines(string(env)) {
			addr := between(line, "<", ">")
			switch {
			case strings.HasPrefix(strings.ToUpper(line), "MAIL FROM:"):
				m.From = addr
			case strings.HasPrefix(strings.ToUpper(line), "RCPT TO:"):
				m.To = append(m.To, addr)
			}
		}
		out = append(out, m)
	}
	return out
}

func between(s, open, close string) string {
	_, rest, _ := strings.Cut(s, open)
	v, _, _ := strings.Cut(rest, close)
	return v
}

// captureSendmail is the program Cyrus runs as "sendmail -bs": it plays an
// SMTP server on stdin and stdout (a program that only reads its input hangs
// lmtpd, facts pitfall 4) and stores each message in dir as the envelope
// lines, an empty line and the message. Files appear complete (rename).
func captureSendmail(dir string) string {
	return `#!/bin/sh
# written by cyrus-sidecar/e2e/lab.StartCyrus: Cyrus runs "sendmail -bs".
dir='` + dir + `'
cr=$(printf '\r')
reply() { printf '%s\r\n' "$1"; }
reply '220 lab capture ESMTP'
env=''
n=0
while IFS= read -r line; do
	line=${line%"$cr"}
	case $line in
	[Ee][Hh][Ll][Oo]*|[Hh][Ee][Ll][Oo]*) reply '250 lab capture' ;;
	[Mm][Aa][Ii][Ll]*) env=$line; reply '250 2.1.0 ok' ;;
	[Rr][Cc][Pp][Tt]*) env="$env
$line"; reply '250 2.1.5 ok' ;;
	[Rr][Ss][Ee][Tt]*) env=''; reply '250 2.0.0 ok' ;;
	[Dd][Aa][Tt][Aa]*)
		reply '354 go ahead'
		n=$((n + 1))
		f="$dir/$(date +%s%N)-$$-$n"
		{
			printf '%s\n\n' "$env"
			while IFS= read -r l; do
				l=${l%"$cr"}
				[ "$l" = . ] && break
				case $l in ..*) l=${l#.} ;; esac
				printf '%s\r\n' "$l"
			done
		} >"$f.tmp"
		mv "$f.tmp" "$f.eml"
		reply '250 2.0.0 stored'
		;;
	[Qq][Uu][Ii][Tt]*) reply '221 2.0.0 bye'; exit 0 ;;
	*) reply '250 ok' ;;
	esac
done
`
}
