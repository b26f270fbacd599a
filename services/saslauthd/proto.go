// Package saslauthd will hold the saslauthd-protocol responder that Cyrus
// (sasl_pwcheck_method: saslauthd), Postfix, Exim and testsaslauthd
// authenticate against. So far it holds its wire codec: readRequest and
// writeReply, pure functions over a *bufio.Reader and an io.Writer.
//
// The protocol (cyrus-sasl saslauthd/ipc_unix.c do_request, lib/checkpw.c
// saslauthd_verify_password): the client sends counted strings, each a
// 2-byte big-endian length and that many bytes with no NUL terminator:
// login, password, service, realm and, in cyrus-sasl master since commit
// c813bf1f (in no release), a fifth, the client address "IP;port". The
// server answers one counted string, "OK" or "NO", optionally followed by
// a space and a reason, and closes the connection.
package saslauthd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Limits on the wire.
const (
	// maxField is MAX_REQ_LEN in saslauthd/saslauthd-main.h: the reference
	// server answers "NO " at once to a longer field.
	maxField = 256
	// maxReply is what lib/checkpw.c reads of a reply (a 1024-byte buffer
	// with its NUL); it silently truncates a longer one.
	maxReply = 1023
	// minReply: checkpw.c calls a reply shorter than 2 bytes a "bad
	// response", and a reply is at least "OK" or "NO".
	minReply = 2
	// maxRequest is the longest request readRequest accepts: five full
	// fields with their length prefixes. A *bufio.Reader of at least this
	// size holds a whole request, so Buffered sees a fifth field that came
	// in the same segment as the fourth.
	maxRequest = 5 * (2 + maxField)
)

// Request failures, one per class. A clean EOF before the first byte is
// io.EOF; EOF anywhere later is io.ErrUnexpectedEOF; errors of the reader
// itself (a read deadline, a reset) are returned as they are.
var (
	// errTooLong: a length prefix above maxField. It is checked before the
	// field is read, so the stream is out of step afterwards.
	errTooLong = errors.New("saslauthd field longer than 256 bytes")
	// errNUL: a NUL byte in a field. The C server would truncate the
	// field there (it becomes a C string); we refuse it rather than let
	// the two readings differ. A real libsasl client builds fields with
	// strlen and never sends one.
	errNUL = errors.New("NUL byte in saslauthd field")
	// errEmpty: an empty login or password, which the reference server
	// refuses with "NO NULL login received" / "NO NULL password received".
	errEmpty = errors.New("empty saslauthd login or password")
)

// fieldNames names the fields in wire order, for errors and String.
var fieldNames = [5]string{"login", "password", "service", "realm", "client_addr"}

// Request is one authentication request as it came off the wire. Password
// is secret: String, GoString, Format, LogValue and MarshalText all leave it
// out, so printing or logging a Request (or a pointer to one) never shows
// it. Redaction goes by the Request type: a bare req.Password passed to a
// logger is printed like any string, and so is a Request stored in an
// unexported field of a struct printed with %v, which fmt cannot call
// methods on.
type Request struct {
	Login, Password, Service, Realm string
	// ClientAddr is the fifth field, "IP;port" from libsasl master, or ""
	// when the client sent only four. It is informational: the client
	// vouches for it, nobody checks it.
	ClientAddr string
	// Fields is how many fields the client sent: 4 or 5.
	Fields int
}

// String describes r without its password, with the peer's bytes quoted so
// control characters cannot forge log lines.
func (r Request) String() string {
	return fmt.Sprintf("login=%q service=%q realm=%q client_addr=%q fields=%d",
		r.Login, r.Service, r.Realm, r.ClientAddr, r.Fields)
}

// GoString is the %#v form: Go syntax without the Password field.
func (r Request) GoString() string {
	return fmt.Sprintf("saslauthd.Request{Login:%q, Service:%q, Realm:%q, ClientAddr:%q, Fields:%d}",
		r.Login, r.Service, r.Realm, r.ClientAddr, r.Fields)
}

// Format makes every verb print String (or GoString for %#v). Stringer
// alone covers only %v, %s, %q and %x; %d or %t on a struct would print its
// fields, password included.
func (r Request) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, r.GoString())
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), r.String())
}

// LogValue logs r as a group without its password.
func (r Request) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("login", r.Login),
		slog.String("service", r.Service),
		slog.String("realm", r.Realm),
		slog.String("client_addr", r.ClientAddr),
		slog.Int("fields", r.Fields),
	)
}

// MarshalText is String, so json.Marshal, and slog handlers meeting a
// Request nested inside another value, still leave the password out.
func (r Request) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// readRequest reads one request from r.
//
// Four or five fields. libsasl master sends a fifth field, the client
// address; released libsasl (2.1.28) and Exim send four and then wait for
// the reply with no timeout at all, so waiting for a fifth field that never
// comes would hang both sides. After the fourth field readRequest reads a
// fifth only if a byte of it is already buffered in r, or else if more
// reports that one is available. more is the caller's: it may wait a short
// grace (the service sets a read deadline of a few tens of milliseconds and
// peeks one byte) but must not block for long; a nil more means "do not
// wait". libsasl writes the whole request with one writev, so with a
// reader of at least maxRequest bytes the fifth field is normally buffered
// already and more is not even asked.
//
// The trade-off: a five-field client that sends its fifth field in a
// separate segment later than the grace is answered as a four-field one,
// and its fifth field is left unread. That is harmless (the field is only
// informational and the connection carries one request), whereas the
// opposite mistake would deadlock every released client. Likewise, bytes a
// four-field client sends after its request are read as a fifth field.
//
// Within a request, fields may arrive in separate segments (Exim writes
// each with its own writev), so reading a field waits for all its bytes;
// the caller bounds that with a read deadline on the connection.
//
// The length of each field is checked against maxField before its bytes
// are read (errTooLong, at once, as the reference server does). NUL bytes
// (errNUL) and an empty login or password (errEmpty) are reported after
// the whole request is read, so that the reply goes to a client that has
// finished writing. On any error the Request is zero.
func readRequest(r *bufio.Reader, more func() bool) (Request, error) {
	var f [5]string
	var buf []byte // made only for a reader smaller than a field
	n := 0
	for ; n < 4; n++ {
		s, err := readField(r, n, &buf)
		if err != nil {
			return Request{}, err
		}
		f[n] = s
	}
	if r.Buffered() > 0 || (more != nil && more()) {
		s, err := readField(r, n, &buf)
		if err != nil {
			return Request{}, err
		}
		f[n] = s
		n++
	}
	for i, s := range f[:n] {
		if strings.IndexByte(s, 0) >= 0 {
			return Request{}, fmt.Errorf("%w: %s", errNUL, fieldNames[i])
		}
	}
	// Login before password, as ipc_unix.c checks them.
	for i := range 2 {
		if f[i] == "" {
			return Request{}, fmt.Errorf("%w: %s", errEmpty, fieldNames[i])
		}
	}
	return Request{Login: f[0], Password: f[1], Service: f[2], Realm: f[3], ClientAddr: f[4], Fields: n}, nil
}

// readField reads counted string number i of a request. EOF is io.EOF only
// before the first byte of the first field (a clean EOF: nothing was sent);
// anywhere else it is io.ErrUnexpectedEOF. *buf is scratch space of
// maxField bytes, made on first use.
func readField(r *bufio.Reader, i int, buf *[]byte) (string, error) {
	// Peek and Discard rather than io.ReadFull: the field is copied once,
	// into its string, and buf does not escape to the heap.
	p, err := r.Peek(2)
	if err != nil {
		if i > 0 || len(p) > 0 {
			err = unexpected(err)
		}
		return "", err
	}
	n := int(p[0])<<8 | int(p[1]) // big-endian, like ntohs in ipc_unix.c
	r.Discard(2)
	if n > maxField {
		return "", fmt.Errorf("%w: %s is %d bytes", errTooLong, fieldNames[i], n)
	}
	if n <= r.Size() {
		p, err := r.Peek(n)
		if err != nil {
			return "", unexpected(err)
		}
		s := string(p)
		r.Discard(n)
		return s, nil
	}
	// A reader smaller than a field (tests only: the service's holds a
	// whole request).
	if *buf == nil {
		*buf = make([]byte, maxField)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(r, b); err != nil {
		return "", unexpected(err)
	}
	return string(b), nil
}

// unexpected turns io.EOF inside a request into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// replyOK and replyNO are the two replies without a reason, shared by
// every Write (which, per io.Writer, must not modify them).
var (
	replyOK = [4]byte{0, 2, 'O', 'K'}
	replyNO = [4]byte{0, 2, 'N', 'O'}
)

// writeReply writes the reply "OK" or "NO", followed by " " and reason if
// reason is not empty, as one counted string in one Write, so the client
// reads it in one piece.
//
// The reason goes to the peer and may end up in its logs: bytes outside
// printable ASCII (CR, LF, NUL, ESC, UTF-8) become '?', and the reply is
// cut at maxReply bytes, which the client would otherwise truncate itself.
// Because the status comes first and reason cannot replace it, a "NO"
// reply can never start with "OK" (checkpw.c accepts any reply that does).
// Pass only generic text: detail belongs in our log, and the password is
// never an argument here.
func writeReply(w io.Writer, ok bool, reason string) error {
	if reason == "" {
		// The common replies, prebuilt: no allocation per request.
		reply := replyNO[:]
		if ok {
			reply = replyOK[:]
		}
		if _, err := w.Write(reply); err != nil {
			return fmt.Errorf("write saslauthd reply: %w", err)
		}
		return nil
	}
	status := "NO"
	if ok {
		status = "OK"
	}
	n := len(status)
	if reason != "" {
		n = min(n+1+len(reason), maxReply)
	}
	buf := make([]byte, 2, 2+n)
	buf = append(buf, status...)
	if reason != "" {
		buf = append(buf, ' ')
		for i := 0; len(buf) < 2+n; i++ {
			c := reason[i]
			if c < ' ' || c > '~' {
				c = '?'
			}
			buf = append(buf, c)
		}
	}
	buf[0], buf[1] = byte(n>>8), byte(n)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write saslauthd reply: %w", err)
	}
	return nil
}
