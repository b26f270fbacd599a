package imap

import (
	"bufio"
	"bytes"
	"cyrus-sidecar/services/wire"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits on what the server may send. RFC 3501 sets none; these are far
// above what Cyrus sends for a mailbox list and small enough to hold in
// memory.
const (
	// maxLine bounds one line's bytes outside literals (RFC 7162 §4
	// recommends clients accept lines of at least 8192 octets).
	maxLine = 64 << 10
	// maxLiteral bounds one literal; we never fetch messages, so literals
	// are mailbox names and metadata values.
	maxLiteral = 1 << 20
	// maxCommandBytes bounds all bytes answering one command, literals
	// included: a LIST-STATUS of maxResponses lines must fit.
	maxCommandBytes = 64 << 20
	// maxResponses bounds the responses answering one command: three per
	// mailbox with LIST-STATUS and METADATA, so about 80,000 mailboxes.
	maxResponses = 1 << 18
	// maxTokens bounds one response's tokens, whose slices cost more than
	// the bytes that make them ("((((" is one token per byte).
	maxTokens = 4096
	// maxDepth bounds parenthesis nesting.
	maxDepth = 16
	// maxLiteralDigits: RFC 3501 number is 0..4294967295.
	maxLiteralDigits = 10
)

// Failure classes.
var (
	// errSyntax: the server's response does not follow RFC 3501 §9. The
	// stream is out of step afterwards.
	errSyntax = errors.New("malformed imap response")
	// errTooLong: a response breaks one of the limits above.
	errTooLong = errors.New("imap response over limit")
	// errArg: an argument we refuse to send.
	errArg = errors.New("invalid imap argument")
	// errBroken: an earlier I/O or protocol failure, BYE or LOGOUT ended
	// the session; it wraps that failure.
	errBroken = errors.New("imap session unusable")
)

// kind is the kind of a parsed value.
type kind uint8

const (
	vAtom   kind = iota + 1 // atom or number
	vString                 // quoted string or literal, decoded
	vNil                    // NIL
	vList                   // parenthesised list
)

// value is one item of a data response.
type value struct {
	kind kind
	s    string
	list []value
}

// response is one server response (RFC 3501 §7).
type response struct {
	tag string // "*", "+" or the command's tag
	// Status responses (OK, NO, BAD, BYE, PREAUTH), tagged or not.
	status string   // upper-cased; "" for data and continuations
	code   string   // response code name upper-cased, without brackets
	args   []string // the code's arguments split at spaces (CAPABILITY's atoms)
	text   string   // human-readable text; a continuation's text
	// Data responses: "* [num SP] name fields".
	num    string  // leading number ("3" of "* 3 EXISTS"); "" when none
	name   string  // upper-cased (LIST, STATUS, METADATA, ...)
	fields []value // the parsed rest, for the names we parse (parsedData)
}

// parsedData are the untagged responses whose fields we parse; others are
// skipped, literals included.
var parsedData = map[string]bool{
	"LIST": true, "STATUS": true, "METADATA": true, "NAMESPACE": true,
	"CAPABILITY": true, "ENABLED": true,
}

// reader reads responses with the limits above.
type reader struct {
	br   *bufio.Reader
	left int // bytes the current command's responses may still use
	line int // bytes of the current line outside literals
	toks int // tokens of the current response
	// fetch: parse FETCH responses (UIDFetchEnvelope is running).
	fetch bool
}

func newReader(r io.Reader) *reader {
	rd := &reader{br: bufio.NewReader(r)}
	rd.reset()
	return rd
}

// reset starts the byte budget of a new command.
func (r *reader) reset() { r.left = maxCommandBytes }

// readResponse reads one response. A clean EOF before its first byte is
// io.EOF, EOF later io.ErrUnexpectedEOF.
func readResponse(r *reader) (*response, error) {
	r.line, r.toks = 0, 0
	if _, err := r.br.Peek(1); err == io.EOF {
		return nil, io.EOF
	}
	tag, err := r.readWord()
	if err != nil {
		return nil, err
	}
	resp := &response{tag: tag}
	if tag == "+" {
		// continue-req = "+" SP (resp-text / base64) CRLF; servers
		// sometimes leave the SP out.
		resp.text, err = r.readText()
		return resp, err
	}
	if !isTag(tag) {
		return nil, fmt.Errorf("%w: tag %q", errSyntax, tag)
	}
	if err := r.expect(' '); err != nil {
		return nil, err
	}
	word, err := r.readWord()
	if err != nil {
		return nil, err
	}
	if tag == "*" && isNumber(word) {
		// message-data = nz-number SP ("EXPUNGE" / "FETCH" ...)
		resp.num = word
		if err := r.expect(' '); err != nil {
			return nil, err
		}
		if word, err = r.readWord(); err != nil {
			return nil, err
		}
	}
	word = strings.ToUpper(word)
	switch {
	case resp.num == "" && (word == "OK" || word == "NO" || word == "BAD" || word == "BYE" || (word == "PREAUTH" && tag == "*")):
		resp.status = word
		return resp, r.readRespText(resp)
	case tag != "*":
		return nil, fmt.Errorf("%w: tagged %q", errSyntax, word)
	case resp.num == "" && parsedData[word], resp.num != "" && word == "FETCH" && r.fetch:
		// message-data "FETCH" msg-att: parsed during UIDFetchEnvelope
		// only, skipped (with its literals) otherwise.
		resp.name = word
		resp.fields, err = r.readFields()
		return resp, err
	default:
		resp.name = word
		return resp, r.skipLine()
	}
}

// readRespText reads `[SP] ["[" code [SP args] "]" SP] text CRLF` (RFC
// 3501 resp-text; the SP before it is optional in practice).
func (r *reader) readRespText(resp *response) error {
	rest, err := r.readText()
	if err != nil {
		return err
	}
	if code, ok := strings.CutPrefix(rest, "["); ok {
		end := strings.IndexByte(code, ']')
		if end < 1 {
			return fmt.Errorf("%w: response code in %q", errSyntax, shorten(rest))
		}
		name, args, _ := strings.Cut(code[:end], " ")
		resp.code = strings.ToUpper(name)
		if args != "" {
			resp.args = strings.Fields(args)
		}
		rest = strings.TrimPrefix(code[end+1:], " ")
	}
	resp.text = rest
	return nil
}

// readText reads the rest of the line after an optional SP, raw.
func (r *reader) readText() (string, error) {
	var b []byte
	for {
		c, err := r.readByte()
		if err != nil {
			return "", err
		}
		if c == '\r' {
			return string(bytes.TrimPrefix(b, []byte(" "))), r.expect('\n')
		}
		if c == '\n' || c == 0 {
			return "", fmt.Errorf("%w: bare LF or NUL in text", errSyntax)
		}
		b = append(b, c)
	}
}

// readFields parses the rest of a data response: SP-separated atoms,
// strings, literals, NIL and lists, up to CRLF.
func (r *reader) readFields() ([]value, error) {
	var stack [][]value
	var cur []value
	for {
		c, err := r.readByte()
		if err != nil {
			return nil, err
		}
		if r.toks++; r.toks > maxTokens {
			return nil, fmt.Errorf("%w: more than %d tokens", errTooLong, maxTokens)
		}
		switch {
		case c == ' ':
			// Separator; RFC 3501 says one SP, we take any number.
		case c == '\r':
			if err := r.expect('\n'); err != nil {
				return nil, err
			}
			if len(stack) > 0 {
				return nil, fmt.Errorf("%w: unbalanced (", errSyntax)
			}
			return cur, nil
		case c == '(':
			if len(stack) == maxDepth {
				return nil, fmt.Errorf("%w: lists nested deeper than %d", errTooLong, maxDepth)
			}
			stack, cur = append(stack, cur), nil
		case c == ')':
			if len(stack) == 0 {
				return nil, fmt.Errorf("%w: unbalanced )", errSyntax)
			}
			list := value{kind: vList, list: cur}
			stack, cur = stack[:len(stack)-1], stack[len(stack)-1]
			cur = append(cur, list)
		case c == '"':
			s, err := r.readQuoted()
			if err != nil {
				return nil, err
			}
			cur = append(cur, value{kind: vString, s: s})
		case c == '{':
			s, err := r.readLiteral()
			if err != nil {
				return nil, err
			}
			cur = append(cur, value{kind: vString, s: s})
		case isAtomChar(c):
			a, err := r.readAtom(c)
			if err != nil {
				return nil, err
			}
			if strings.EqualFold(a, "NIL") {
				cur = append(cur, value{kind: vNil})
			} else {
				cur = append(cur, value{kind: vAtom, s: a})
			}
		default:
			return nil, fmt.Errorf("%w: byte %#02x outside a string", errSyntax, c)
		}
	}
}

// skipLine skips the rest of a response we do not parse, with its
// literals: a line ending in "{n}" continues after n octets.
func (r *reader) skipLine() error {
	var tail []byte // the line's last bytes, to spot "{n}"
	for {
		c, err := r.readByte()
		if err != nil {
			return err
		}
		if c != '\r' {
			tail = append(tail, c)
			if len(tail) > maxLiteralDigits+3 {
				tail = tail[1:]
			}
			continue
		}
		if err := r.expect('\n'); err != nil {
			return err
		}
		i := bytes.LastIndexByte(tail, '{')
		if i < 0 || !bytes.HasSuffix(tail, []byte("}")) {
			return nil
		}
		n, err := strconv.Atoi(strings.TrimSuffix(string(tail[i+1:len(tail)-1]), "+"))
		if err != nil || n < 0 {
			return nil // "{x}" at the end of text is text
		}
		if err := r.discard(n); err != nil {
			return err
		}
		tail, r.line = tail[:0], 0
	}
}

// readByte reads one line byte under the limits; EOF is unexpected here.
func (r *reader) readByte() (byte, error) {
	if r.line >= maxLine {
		return 0, fmt.Errorf("%w: line longer than %d bytes", errTooLong, maxLine)
	}
	if r.left <= 0 {
		return 0, fmt.Errorf("%w: responses to one command longer than %d bytes", errTooLong, maxCommandBytes)
	}
	c, err := r.br.ReadByte()
	if err == io.EOF {
		return 0, io.ErrUnexpectedEOF
	}
	if err != nil {
		return 0, err
	}
	r.line++
	r.left--
	return c, nil
}

// expect reads one byte that must be want.
func (r *reader) expect(want byte) error {
	c, err := r.readByte()
	if err != nil {
		return err
	}
	if c != want {
		return fmt.Errorf("%w: %q where %q belongs", errSyntax, c, want)
	}
	return nil
}

// readWord reads a tag or response name: bytes up to SP or CR, at least
// one, all printable.
func (r *reader) readWord() (string, error) {
	var w []byte
	for {
		c, err := r.peekByte()
		if err != nil {
			return "", err
		}
		if c == ' ' || c == '\r' {
			if len(w) == 0 {
				return "", fmt.Errorf("%w: empty word", errSyntax)
			}
			return string(w), nil
		}
		if c <= ' ' || c >= 0x7f {
			return "", fmt.Errorf("%w: byte %#02x in a word", errSyntax, c)
		}
		c, err = r.readByte()
		if err != nil {
			return "", err
		}
		w = append(w, c)
	}
}

// readQuoted reads a quoted string after its opening quote (RFC 3501
// quoted, RFC 9051 adding UTF-8): "\" escapes only "\" and DQUOTE.
func (r *reader) readQuoted() (string, error) { return wire.ReadQuoted(r.readByte, errSyntax) }

// readLiteral reads a literal after its "{": "{" number "}" CRLF *CHAR8.
// The non-synchronising client form "{n+}" is taken too.
func (r *reader) readLiteral() (string, error) {
	n, err := wire.ReadLiteralSize(r.readByte, errSyntax)
	if err != nil {
		return "", err
	}
	if n > maxLiteral || n > r.left {
		return "", fmt.Errorf("%w: literal of %d bytes", errTooLong, n)
	}
	s, err := wire.ReadLiteral(r.br, n)
	if err != nil {
		return "", err
	}
	r.left -= n
	return s, nil
}

// discard skips a literal's n octets of a response we do not parse.
func (r *reader) discard(n int) error {
	if n > maxLiteral || n > r.left {
		return fmt.Errorf("%w: literal of %d bytes", errTooLong, n)
	}
	if _, err := io.CopyN(io.Discard, r.br, int64(n)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	r.left -= n
	return nil
}

// readAtom reads the rest of an atom whose first byte is first.
func (r *reader) readAtom(first byte) (string, error) {
	return wire.ReadAtom(first, r.peekByte, r.readByte, isAtomChar)
}

// peekByte returns the next byte without taking it.
func (r *reader) peekByte() (byte, error) { return wire.PeekByte(r.br) }

// isAtomChar: printable ASCII but the bytes that start or end other
// tokens. Wider than RFC 3501 ATOM-CHAR on purpose: flags ("\Seen"),
// list-wildcards and "]" appear unquoted in LIST and FETCH data.
func isAtomChar(c byte) bool {
	return c > ' ' && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '"'
}

// isTag: "*", or a tag as we send them (RFC 3501 tag: ASTRING-CHAR but
// "+").
func isTag(s string) bool {
	return s == "*" || !strings.ContainsAny(s, `+(){%*"\`)
}

func isNumber(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != "" && len(s) <= maxLiteralDigits
}

// shorten cuts server text for an error message.
func shorten(s string) string {
	const maxShow = 100
	if len(s) > maxShow {
		return s[:maxShow] + "..."
	}
	return s
}
