package events

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// The notify datagram framing (imap/notify.c, notify(); events-anchors §1.1):
//
//	method NUL class NUL priority NUL user NUL mailbox NUL nopt NUL
//	    nopt × (option NUL) message NUL [fname NUL]
//
// Cyrus's mboxevent sends class EVENT with empty priority, user and mailbox
// and the JSON in message (imap/mboxevent.c:763). lmtpd's mailnotifier
// (MAIL), Sieve notify (SIEVE) and CalDAV scheduling (IMIP) share the socket.
// The optional trailing fname is sent by later Cyrus versions only.
//
// The dlist transport (notifysocket: dlist:/path, a stream with a reply per
// event, §1.1 transport B) is not handled: it blocks Cyrus on every event
// (B5), and the datagram transport is the documented default.
const (
	// MaxDatagram is the largest datagram Cyrus sends: notify.c's
	// NOTIFY_MAXSIZE / MIN(SO_SNDBUF/10-32, 65536) (§1.1). Anything longer
	// is not Cyrus's.
	MaxDatagram = 65536
	// maxOptions bounds nopt. mboxevent sends none; a Sieve notify action
	// sends its :options list (imap/lmtp_sieve.c), a handful at most.
	maxOptions = 256
	// maxHeaderField bounds method, class, priority, user and mailbox: a
	// method name, a class word, a mailbox name (Cyrus's MAX_MAILBOX_NAME is
	// 490) and a user id.
	maxHeaderField = 1024

	// ClassEvent is the class of mailbox events; every other class is
	// relayed to notifyd.
	ClassEvent = "EVENT"
)

// Errors of DecodeDatagram, matched with errors.Is.
var (
	ErrDatagramTooLarge = errors.New("notify datagram too large")
	ErrDatagramFraming  = errors.New("notify datagram framing")
)

// Datagram is one notification as Cyrus's notify() sends it on
// notifysocket.
type Datagram struct {
	Method   string // event_notifier for events; the Sieve method otherwise
	Class    string // EVENT, MAIL, SIEVE, IMIP
	Priority string
	User     string
	Mailbox  string
	Options  []string
	// Message is the payload: the event's JSON for class EVENT. It aliases
	// the input.
	Message []byte
}

// DecodeDatagram splits b into its fields. It never copies the message
// and rejects anything Cyrus's notify() could not have sent.
func DecodeDatagram(b []byte) (Datagram, error) {
	var d Datagram
	if len(b) > MaxDatagram {
		return d, fmt.Errorf("decode datagram: %w: %d bytes, the limit is %d", ErrDatagramTooLarge, len(b), MaxDatagram)
	}
	rest := b
	field := func(name string, limit int) ([]byte, error) {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return nil, fmt.Errorf("decode datagram: %w: %s not NUL-terminated", ErrDatagramFraming, name)
		}
		if i > limit {
			return nil, fmt.Errorf("decode datagram: %w: %s longer than %d bytes", ErrDatagramFraming, name, limit)
		}
		f := rest[:i]
		rest = rest[i+1:]
		return f, nil
	}
	var header [6][]byte
	for i, name := range [...]string{"method", "class", "priority", "user", "mailbox", "nopt"} {
		f, err := field(name, maxHeaderField)
		if err != nil {
			return Datagram{}, err
		}
		header[i] = f
	}
	d.Method, d.Class, d.Priority = string(header[0]), string(header[1]), string(header[2])
	d.User, d.Mailbox = string(header[3]), string(header[4])
	if len(d.Class) == 0 {
		return Datagram{}, fmt.Errorf("decode datagram: %w: empty class", ErrDatagramFraming)
	}
	// notify.c writes nopt with snprintf("%d"): plain decimal digits.
	nopt, err := strconv.Atoi(string(header[5]))
	if err != nil || len(header[5]) > 3 || !isDigits(header[5]) || len(header[5]) > 1 && header[5][0] == '0' {
		return Datagram{}, fmt.Errorf("decode datagram: %w: option count %q", ErrDatagramFraming, truncPeer(header[5]))
	}
	if nopt > maxOptions {
		return Datagram{}, fmt.Errorf("decode datagram: %w: %d options, the limit is %d", ErrDatagramFraming, nopt, maxOptions)
	}
	for range nopt {
		o, err := field("option", MaxDatagram)
		if err != nil {
			return Datagram{}, err
		}
		d.Options = append(d.Options, string(o))
	}
	msg, err := field("message", MaxDatagram)
	if err != nil {
		return Datagram{}, err
	}
	d.Message = msg
	// Later Cyrus appends the file path (fname NUL); nothing else follows.
	if len(rest) > 0 {
		if _, err := field("fname", MaxDatagram); err != nil {
			return Datagram{}, err
		}
		if len(rest) > 0 {
			return Datagram{}, fmt.Errorf("decode datagram: %w: %d bytes after the message", ErrDatagramFraming, len(rest))
		}
	}
	return d, nil
}

// peekClass returns the class field of a datagram without decoding the
// rest: all the ingest reader looks at (it must stay cheap). ok is false
// when there is no NUL-terminated method and class.
func peekClass(b []byte) (class []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, false
	}
	rest := b[i+1:]
	j := bytes.IndexByte(rest, 0)
	if j <= 0 {
		return nil, false
	}
	return rest[:j], true
}

// truncPeer keeps peer bytes in error messages short.
func truncPeer(b []byte) string {
	const max = 32
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}
