package lmtp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// SMTPError is the reply as go-smtp writes it back: Message has one line
// per reply line. The zero Reply (no verdict) becomes 451 4.4.1, never a
// success or a permanent failure.
func (r Reply) SMTPError() *smtp.SMTPError {
	if r.Code == 0 {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1},
			Message: "No answer from the mail store, try again later"}
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: r.Enhanced, Message: strings.Join(r.Lines, "\n")}
}

// String is the reply on one line, for logs: "550 5.1.1 Mailbox unknown.
// ... User unknown".
func (r Reply) String() string {
	if r.Code == 0 {
		return "no reply"
	}
	var b strings.Builder
	b.WriteString(strconv.Itoa(r.Code))
	if r.Enhanced != smtp.EnhancedCodeNotSet {
		fmt.Fprintf(&b, " %d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])
	}
	for _, l := range r.Lines {
		if l != "" {
			b.WriteByte(' ')
			b.WriteString(l)
		}
	}
	return b.String()
}

// readReply reads one reply (RFC 5321 §4.2): lines "NNN-text" and a last
// "NNN text" (or "NNN"), the same code on each, at most maxReplyLines lines
// of maxReplyLine bytes. An enhanced code (RFC 2034 §4, RFC 3463 §2) at the
// start of the last line, of the reply's class, goes to Enhanced. A clean
// EOF before the first byte is io.EOF; later, io.ErrUnexpectedEOF.
func readReply(r *bufio.Reader) (Reply, error) {
	var rep Reply
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return Reply{}, fmt.Errorf("%w: more than %d lines", errReplyTooLong, maxReplyLines)
		}
		line, err := readReplyLine(r)
		if err != nil {
			if n > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Reply{}, err
		}
		code, last, text, err := parseReplyLine(line)
		if err != nil {
			return Reply{}, err
		}
		if n > 0 && code != rep.Code {
			return Reply{}, fmt.Errorf("%w: code %d after %d", errReplySyntax, code, rep.Code)
		}
		rep.Code = code
		rep.Lines = append(rep.Lines, text)
		if last {
			break
		}
	}
	end := len(rep.Lines) - 1
	if ec, rest, ok := cutEnhanced(rep.Lines[end], rep.Code/100); ok {
		rep.Enhanced, rep.Lines[end] = ec, rest
	}
	return rep, nil
}

// readReplyLine reads up to LF, at most maxReplyLine bytes, and returns
// the line without LF or CRLF.
func readReplyLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > maxReplyLine {
			return nil, fmt.Errorf("%w: line over %d bytes", errReplyTooLong, maxReplyLine)
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// parseReplyLine splits "NNN-text", "NNN text" or "NNN". The text may not
// hold controls other than TAB: we relay it, and a stray CR is how
// responses get smuggled.
func parseReplyLine(line []byte) (code int, last bool, text string, err error) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return 0, false, "", fmt.Errorf("%w: %.20q", errReplySyntax, line)
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if len(line) == 3 {
		return code, true, "", nil
	}
	switch line[3] {
	case ' ':
		last = true
	case '-':
	default:
		return 0, false, "", fmt.Errorf("%w: %.20q", errReplySyntax, line)
	}
	for _, b := range line[4:] {
		if b < 0x20 && b != '\t' || b == 0x7f {
			return 0, false, "", fmt.Errorf("%w: control byte %#x in text", errReplySyntax, b)
		}
	}
	return code, last, string(line[4:]), nil
}

// cutEnhanced takes an enhanced status code "class.subject.detail" (1, 1-3
// and 1-3 digits, RFC 3463 §2) off the start of s, with one space after it.
func cutEnhanced(s string, class int) (smtp.EnhancedCode, string, bool) {
	var ec smtp.EnhancedCode
	rest := s
	for i, maxDigits := range []int{1, 3, 3} {
		n := 0
		for n < len(rest) && n < maxDigits && isDigit(rest[n]) {
			ec[i] = ec[i]*10 + int(rest[n]-'0')
			n++
		}
		if n == 0 || n < len(rest) && isDigit(rest[n]) {
			return smtp.EnhancedCodeNotSet, s, false
		}
		rest = rest[n:]
		if i < 2 {
			if rest == "" || rest[0] != '.' {
				return smtp.EnhancedCodeNotSet, s, false
			}
			rest = rest[1:]
		}
	}
	if ec[0] != class || (class != 2 && class != 4 && class != 5) {
		return smtp.EnhancedCodeNotSet, s, false
	}
	if rest == "" {
		return ec, "", true
	}
	if rest[0] != ' ' {
		return smtp.EnhancedCodeNotSet, s, false
	}
	return ec, rest[1:], true
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }
