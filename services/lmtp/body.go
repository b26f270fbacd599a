package lmtp

// The message body is spooled and normalised before anything goes to Cyrus.
// go-smtp passes bare CR and bare LF through (for BDAT, RFC 3030, the chunks
// are raw), but Cyrus lmtpd's spool.c turns a bare LF into CRLF, removes a
// lone CR and only then looks for the "." line, in 8190-byte pieces. Text
// such as "\r\n\r.\r\n" or "\n.\n" would end the message early inside Cyrus
// and run the rest as commands of an authorised session (SMTP smuggling,
// CVE-2023-51764). After readBody, every line ends in CRLF and no other CR or
// LF is left, so the dot-stuffing on the way to Cyrus means the same thing
// to it as to us.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/emersion/go-smtp"
)

const (
	// readChunk is how much client data is normalised at a time.
	readChunk = 32 << 10
	// flushAt is how much output collects between writes once a body has
	// moved to its temp file.
	flushAt = 64 << 10
	// maxPooled is the largest buffer kept for reuse; MemLimit may allow
	// far larger ones, which are left to the garbage collector.
	maxPooled = 4 << 20
)

// Policy failures. They are *smtp.SMTPError values, returned unwrapped:
// go-smtp answers with one only when the error is exactly that type.
var (
	errBareCR error = &smtp.SMTPError{
		Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message contains a bare CR (RFC 5321 section 2.3.8); not delivered",
	}
	errTooLarge error = &smtp.SMTPError{
		Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message too big",
	}
)

// errLineTooLong is the answer to a line longer than limit bytes.
func errLineTooLong(limit int) error {
	return &smtp.SMTPError{
		Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: fmt.Sprintf("Message has a line longer than %d bytes; not delivered", limit),
	}
}

// Buffers are reused across messages: a busy proxy reads one body per
// delivery, and fresh buffers for each would dominate its garbage.
var (
	scratchPool = sync.Pool{New: func() any { return new(scratch) }}
	outPool     = sync.Pool{New: func() any { b := make([]byte, 0, flushAt); return &b }}
)

// scratch is what readBody needs only while it runs.
type scratch struct {
	in      [readChunk]byte
	pending []byte // normaliser.pending
}

// bodyPolicy says how readBody treats a message. Sizes are of normalised
// text: MaxLine applies to every line, even one that StripHeader removes,
// and MaxBytes to what is left.
type bodyPolicy struct {
	Lenient     bool   // a bare CR is dropped, as Cyrus would; false refuses the message
	MaxLine     int    // longest line in bytes with its CRLF; 0 is no limit
	MaxBytes    int64  // largest body in bytes; 0 is no limit
	MemLimit    int    // largest body kept in memory; a larger one goes to a temp file
	Dir         string // directory for the temp file; "" is os.TempDir()
	StripHeader string // field removed wherever it occurs in the header section; "" is none
}

// body is a normalised message, in memory or in an unlinked temp file.
type body struct {
	maxBytes int64
	memLimit int64
	dir      string

	bufp     *[]byte  // pooled; the body itself, or the file's write buffer
	buf      []byte   // *bufp in use
	f        *os.File // nil while the body fits in memory
	size     int64
	eightBit bool
}

// readBody consumes r to EOF and returns the normalised message: every line
// ends in CRLF (a bare LF becomes CRLF, as Postfix's
// smtpd_forbid_bare_newline=normalize does; a bare CR is an error or, when
// lenient, dropped), a last line without one gets one, and the StripHeader
// field is gone. After a policy error it keeps reading to EOF so that the
// caller answers after the client's end of data; an error from r itself
// ends the read and is returned wrapped. On any error nothing is left on
// disk.
func readBody(r io.Reader, p bodyPolicy) (*body, error) {
	b := &body{maxBytes: p.MaxBytes, memLimit: int64(p.MemLimit), dir: p.Dir}
	b.bufp = outPool.Get().(*[]byte)
	b.buf = (*b.bufp)[:0]
	sc := scratchPool.Get().(*scratch)
	n := normaliser{p: p, out: b, state: lineKeep, pending: sc.pending[:0]}
	defer func() {
		sc.pending = n.pending[:0]
		scratchPool.Put(sc)
	}()
	if p.StripHeader != "" {
		n.header, n.state = true, lineStart
	}
	var perr error // the first policy or spool error
	for {
		k, err := r.Read(sc.in[:])
		if k > 0 && perr == nil {
			if perr = n.feed(sc.in[:k]); perr != nil {
				b.Close() // give the disk back while the rest is drained
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("lmtp body: read: %w", err)
		}
	}
	if perr == nil {
		perr = n.finish()
	}
	if perr == nil {
		perr = b.flush()
	}
	if perr != nil {
		b.Close()
		return nil, perr
	}
	return b, nil
}

// Size is the length of the normalised body in bytes.
func (b *body) Size() int64 { return b.size }

// EightBit reports whether the body has a byte >= 0x80 (RFC 6152).
func (b *body) EightBit() bool { return b.eightBit }

// Reader returns a new reader from the start of the body, independent of
// any other; one per delivery. It must not be used after Close, which
// hands the memory back for the next message.
func (b *body) Reader() io.Reader {
	if b.f != nil {
		return io.NewSectionReader(b.f, 0, b.size)
	}
	return bytes.NewReader(b.buf)
}

// Close releases the body; calling it again does nothing.
func (b *body) Close() error {
	var err error
	if b.f != nil {
		if err = b.f.Close(); err != nil {
			err = fmt.Errorf("lmtp body: close spool: %w", err)
		}
		b.f = nil
	}
	if b.bufp != nil {
		if cap(b.buf) <= maxPooled {
			*b.bufp = b.buf[:0] // keep any growth for the next message
			outPool.Put(b.bufp)
		}
		b.bufp, b.buf = nil, nil
	}
	return err
}

// write appends normalised output.
func (b *body) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	b.size += int64(len(p))
	if b.maxBytes > 0 && b.size > b.maxBytes {
		return errTooLarge
	}
	if b.f == nil && b.size > b.memLimit {
		if err := b.spill(); err != nil {
			return err
		}
	}
	b.buf = append(b.buf, p...)
	if b.f != nil && len(b.buf) >= flushAt {
		return b.flush()
	}
	return nil
}

// spill moves the body to a temp file. The name is removed at once: the
// open file is all we need, and a crash then leaves nothing in Dir.
func (b *body) spill() error {
	f, err := os.CreateTemp(b.dir, "lmtp-body-*") // mode 0600
	if err != nil {
		return fmt.Errorf("lmtp body: create spool: %w", err)
	}
	b.f = f
	if err := os.Remove(f.Name()); err != nil {
		return fmt.Errorf("lmtp body: unlink spool: %w", err)
	}
	return nil
}

// flush writes what has collected in memory to the file, if there is one,
// and looks for 8-bit bytes in it, which is cheaper in one long run than in
// every small write.
func (b *body) flush() error {
	if !b.eightBit {
		b.eightBit = hasHighBit(b.buf)
	}
	if b.f == nil || len(b.buf) == 0 {
		return nil
	}
	_, err := b.f.Write(b.buf)
	b.buf = b.buf[:0]
	if err != nil {
		return fmt.Errorf("lmtp body: write spool: %w", err)
	}
	return nil
}

// hasHighBit reports whether p has a byte >= 0x80, 32 bytes at a time.
func hasHighBit(p []byte) bool {
	const high = 0x8080808080808080
	le := binary.LittleEndian
	for len(p) >= 32 {
		if (le.Uint64(p)|le.Uint64(p[8:])|le.Uint64(p[16:])|le.Uint64(p[24:]))&high != 0 {
			return true
		}
		p = p[32:]
	}
	for _, c := range p {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// lineState is what becomes of the current line's bytes.
type lineState uint8

const (
	lineKeep  lineState = iota // written as they come
	lineDrop                   // part of a stripped field
	lineStart                  // header line, no byte seen yet
	lineName                   // header line that may yet be the stripped field
)

// normaliser turns client data into CRLF lines, checks line lengths and
// drops the StripHeader field, carrying its state across reads.
type normaliser struct {
	p       bodyPolicy
	out     *body
	cr      bool // the last byte read was a CR whose successor is unread
	lineLen int  // normalised bytes in the current line, without CRLF
	header  bool // in the header section, and there is a field to strip
	strip   bool // the field being read is stripped, continuations too
	state   lineState
	matched int // bytes of StripHeader seen at the start of the line
	// pending is the line so far while state is lineName: the name and
	// the blanks after it, so never more than MaxLine bytes.
	pending []byte
}

// feed normalises one read's worth of data. Each byte is looked at by one
// IndexByte for CR and one for LF, not one at a time.
func (n *normaliser) feed(d []byte) error {
	pos := 0
	if n.cr {
		n.cr = false
		if d[0] == '\n' { // a CRLF split between reads
			if err := n.eol(); err != nil {
				return err
			}
			pos = 1
		} else if err := n.bareCR(); err != nil {
			return err
		}
	}
	nextCR, nextLF := -1, -1
	for pos < len(d) {
		if nextCR < pos {
			nextCR = indexFrom(d, pos, '\r')
		}
		if nextLF < pos {
			nextLF = indexFrom(d, pos, '\n')
		}
		var err error
		switch {
		case nextLF < nextCR: // a bare LF: a CRLF is found by its CR
			if err = n.text(d[pos:nextLF]); err == nil {
				err = n.eol()
			}
			pos = nextLF + 1
		case nextCR == len(d): // neither
			err = n.text(d[pos:])
			pos = len(d)
		default: // a CR first
			err = n.text(d[pos:nextCR])
			pos = nextCR + 1
			switch {
			case err != nil:
			case pos == len(d): // its successor comes with the next read
				n.cr = true
			case d[pos] == '\n':
				err = n.eol()
				pos++
			default:
				err = n.bareCR()
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// finish ends the input: a CR with nothing after it is bare, and a last
// line without CRLF gets one (RFC 5321 §2.3.8: mail data is CRLF lines).
func (n *normaliser) finish() error {
	if n.cr {
		n.cr = false
		if err := n.bareCR(); err != nil {
			return err
		}
	}
	if n.lineLen > 0 {
		return n.eol()
	}
	return nil
}

// bareCR handles a CR not followed by LF. RFC 5321 §2.3.8 forbids it;
// lenient mode drops it, which is what Cyrus would do with it anyway.
func (n *normaliser) bareCR() error {
	if n.p.Lenient {
		return nil
	}
	return errBareCR
}

// text takes bytes of the current line (no CR or LF among them).
func (n *normaliser) text(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	// Every line ends in CRLF, read or added, so a line is too long as
	// soon as its text exceeds MaxLine-2. The bytes before that point go
	// out first, so that which error is reported does not depend on how
	// the data was split into reads.
	var tooLong bool
	if lim := n.p.MaxLine; lim > 0 && n.lineLen+len(p)+2 > lim {
		p, tooLong = p[:max(0, lim-2-n.lineLen)], true
	}
	n.lineLen += len(p)
	if err := n.put(p); err != nil {
		return err
	}
	if tooLong {
		return errLineTooLong(n.p.MaxLine)
	}
	return nil
}

// eol ends the current line with CRLF.
func (n *normaliser) eol() error {
	if lim := n.p.MaxLine; lim > 0 && n.lineLen+2 > lim {
		return errLineTooLong(lim) // only an empty line with MaxLine < 2 gets here
	}
	empty := n.lineLen == 0
	st := n.state
	n.lineLen = 0
	if n.header {
		n.state = lineStart
	}
	switch st {
	case lineDrop:
		return nil
	case lineName: // the line ended before its colon: not the field
		if err := n.out.write(n.pending); err != nil {
			return err
		}
	case lineStart:
		if empty { // RFC 5322 §2.1: an empty line ends the header section
			n.header, n.state = false, lineKeep
		}
	}
	return n.out.write(crlf)
}

var crlf = []byte("\r\n")

// put routes text of the current line by the line's state.
func (n *normaliser) put(p []byte) error {
	for len(p) > 0 {
		switch n.state {
		case lineKeep:
			return n.out.write(p)
		case lineDrop:
			return nil
		case lineStart:
			switch {
			case p[0] == ' ' || p[0] == '\t': // RFC 5322 §2.2.3: a folded continuation
				n.state = lineKeep
				if n.strip {
					n.state = lineDrop
				}
			default:
				n.state, n.strip, n.matched = lineName, false, 0
				n.pending = n.pending[:0]
			}
		case lineName:
			i, st := n.match(p)
			n.pending = append(n.pending, p[:i]...)
			p = p[i:]
			switch st {
			case lineKeep:
				n.state = lineKeep
				if err := n.out.write(n.pending); err != nil {
					return err
				}
			case lineDrop:
				n.state, n.strip = lineDrop, true
			}
		}
	}
	return nil
}

// match goes on comparing the line with "StripHeader:". It returns how
// many bytes of p it took and lineKeep or lineDrop once that is decided,
// lineName while it is not. A mismatching byte is not taken. Names compare
// without regard to ASCII case (RFC 5234 §2.3), and white space may come
// before the colon: RFC 5322 §4.5.8 obs-optional, which a reader of the
// message still honours, so "X-Foo :" is the field X-Foo too.
func (n *normaliser) match(p []byte) (int, lineState) {
	name := n.p.StripHeader
	for i, c := range p {
		switch {
		case n.matched < len(name):
			if lower(c) != lower(name[n.matched]) {
				return i, lineKeep
			}
			n.matched++
		case c == ':':
			return i + 1, lineDrop
		case c != ' ' && c != '\t':
			return i, lineKeep
		}
	}
	return len(p), lineName
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// indexFrom is the index of c in d at or after from, or len(d).
func indexFrom(d []byte, from int, c byte) int {
	if i := bytes.IndexByte(d[from:], c); i >= 0 {
		return from + i
	}
	return len(d)
}
