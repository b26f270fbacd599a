package managesieve

import (
	"bufio"
	"cyrus-sidecar/services/wire"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits on what the server may send. RFC 5804 sets none; these are far
// above anything timsieved sends and small enough to hold in memory.
const (
	// maxLine bounds one line's bytes outside literals.
	maxLine = 64 << 10
	// maxScript bounds a literal, which is how scripts travel both ways
	// (RFC 5804 §2.6, §2.9), and the scripts we send. Cyrus's
	// sieve_maxscriptsize defaults to 32 KiB.
	maxScript = 1 << 20
	// maxDataLines bounds the lines before OK/NO/BYE (LISTSCRIPTS lines,
	// capability lines).
	maxDataLines = 10000
	// maxResponse bounds all bytes of one response, literals included:
	// without it 10,000 lines of 64 KiB would be 640 MiB.
	maxResponse = 4 << 20
	// maxTokens bounds the tokens of one response, whose slices cost more
	// than the bytes that make them ("((((" is one token per byte).
	// LISTSCRIPTS with maxDataLines scripts needs 2 per line.
	maxTokens = 5 * maxDataLines
)

// Failure classes.
var (
	// errSyntax: the server's reply does not follow RFC 5804 §4. The
	// stream is out of step afterwards.
	errSyntax = errors.New("malformed managesieve reply")
	// errTooLong: the reply breaks one of the limits above.
	errTooLong = errors.New("managesieve reply over limit")
	// errArg: an argument we refuse to send (a name RFC 5804 §1.6 or
	// Cyrus cannot take, a script over maxScript, a negative size).
	errArg = errors.New("invalid managesieve argument")
	// errBroken: an earlier I/O or protocol failure, or BYE, ended the
	// session; it is wrapped together with that failure.
	errBroken = errors.New("managesieve session unusable")
)

// tokKind is the kind of a token on a reply line.
type tokKind uint8

const (
	tAtom   tokKind = iota + 1 // OK, NO, BYE, ACTIVE, a code name, a number
	tString                    // quoted string or literal, decoded
	tOpen                      // "("
	tClose                     // ")"
)

// token is one lexical item of a reply line.
type token struct {
	kind tokKind
	val  string
}

// reader reads replies with the limits above.
type reader struct {
	br      *bufio.Reader
	left    int // bytes the current response may still use
	tokLeft int // tokens the current response may still have
	line    int // bytes of the current line outside literals
}

func newReader(r io.Reader) *reader {
	rd := &reader{br: bufio.NewReader(r)}
	rd.reset()
	return rd
}

// reset starts the budgets of a new response.
func (r *reader) reset() {
	r.left, r.tokLeft = maxResponse, maxTokens
}

// response is one complete reply: data lines, then OK, NO or BYE
// (RFC 5804 §4 response-oneline and friends).
type response struct {
	kind string // "OK", "NO" or "BYE"
	code string // see Error.Code
	msg  string
	data [][]token
}

// err returns the reply as an *Error, or nil for OK.
func (r *response) err() error {
	if r.kind == "OK" {
		return nil
	}
	return &Error{Kind: r.kind, Code: r.code, Msg: r.msg}
}

// readResponse reads data lines until the final OK, NO or BYE line. A
// clean EOF before the first byte is io.EOF, EOF later io.ErrUnexpectedEOF.
func readResponse(r *reader) (*response, error) {
	r.reset()
	var data [][]token
	for {
		toks, err := r.readLine()
		if err == io.EOF && len(data) > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, err
		}
		resp, err := parseFinal(toks)
		if err != nil {
			return nil, err
		}
		if resp != nil {
			resp.data = data
			return resp, nil
		}
		if len(data) == maxDataLines {
			return nil, fmt.Errorf("%w: more than %d data lines", errTooLong, maxDataLines)
		}
		data = append(data, toks)
	}
}

// parseFinal parses an OK/NO/BYE line, or returns nil for a data line,
// which starts with a string (RFC 5804 §4):
//
//	response-ok = "OK" [SP "(" resp-code ")"] [SP string] CRLF
func parseFinal(toks []token) (*response, error) {
	if toks[0].kind != tAtom {
		return nil, nil
	}
	resp := &response{kind: strings.ToUpper(toks[0].val)}
	if resp.kind != "OK" && resp.kind != "NO" && resp.kind != "BYE" {
		return nil, fmt.Errorf("%w: %s", errSyntax, describe(toks))
	}
	i := 1
	if i < len(toks) && toks[i].kind == tOpen {
		// Codes nest: resp-code-ext = "X" atom [SP extension-data], and
		// extension-data may be a parenthesised list.
		end, depth := -1, 0
		for j := i; j < len(toks) && end < 0; j++ {
			switch toks[j].kind {
			case tOpen:
				depth++
			case tClose:
				if depth--; depth == 0 {
					end = j
				}
			}
		}
		if end < 0 || end == i+1 || toks[i+1].kind != tAtom {
			return nil, fmt.Errorf("%w: response code in %s", errSyntax, describe(toks))
		}
		resp.code = renderCode(toks[i+1 : end])
		i = end + 1
	}
	if i < len(toks) && toks[i].kind == tString {
		resp.msg = toks[i].val
		i++
	}
	if i != len(toks) {
		return nil, fmt.Errorf("%w: %s", errSyntax, describe(toks))
	}
	return resp, nil
}

// readLine reads the tokens of one line up to CRLF. Literal bodies are
// part of the line, as in `"name" {4}CRLF....SP ACTIVE CRLF`.
func (r *reader) readLine() ([]token, error) {
	r.line = 0
	var toks []token
	for {
		if len(toks) > r.tokLeft {
			return nil, fmt.Errorf("%w: more than %d tokens", errTooLong, maxTokens)
		}
		b, err := r.readByte()
		if err == io.ErrUnexpectedEOF && r.line == 0 {
			return nil, io.EOF
		}
		if err != nil {
			return nil, err
		}
		switch {
		case b == ' ':
			// Separator; RFC 5804 says one SP, we take any number.
		case b == '\r':
			if b, err = r.readByte(); err != nil {
				return nil, err
			}
			if b != '\n' || len(toks) == 0 {
				return nil, fmt.Errorf("%w: bare CR or empty line", errSyntax)
			}
			r.tokLeft -= len(toks)
			return toks, nil
		case b == '"':
			s, err := r.readQuoted()
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{tString, s})
		case b == '{':
			s, err := r.readLiteral()
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{tString, s})
		case b == '(':
			toks = append(toks, token{kind: tOpen})
		case b == ')':
			toks = append(toks, token{kind: tClose})
		case isAtomChar(b):
			a, err := r.readAtom(b)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{tAtom, a})
		default:
			return nil, fmt.Errorf("%w: byte %#02x outside a string", errSyntax, b)
		}
	}
}

// readByte reads one line byte under both limits; EOF is unexpected here.
func (r *reader) readByte() (byte, error) {
	if r.line >= maxLine {
		return 0, fmt.Errorf("%w: line longer than %d bytes", errTooLong, maxLine)
	}
	if r.left <= 0 {
		return 0, fmt.Errorf("%w: response longer than %d bytes", errTooLong, maxResponse)
	}
	b, err := r.br.ReadByte()
	if err == io.EOF {
		return 0, io.ErrUnexpectedEOF
	}
	if err != nil {
		return 0, err
	}
	r.line++
	r.left--
	return b, nil
}

// readQuoted reads a quoted string after its opening quote:
// QUOTED-CHAR = SAFE-UTF8-CHAR / "\" QUOTED-SPECIALS (RFC 5804 §4).
func (r *reader) readQuoted() (string, error) { return wire.ReadQuoted(r.readByte, errSyntax) }

// readLiteral reads a literal after its "{": literal-s2c = "{" number "}"
// CRLF *OCTET. We also take the client form "{N+}".
func (r *reader) readLiteral() (string, error) {
	n, err := wire.ReadLiteralSize(r.readByte, errSyntax)
	if err != nil {
		return "", err
	}
	if n > maxScript || n > r.left {
		return "", fmt.Errorf("%w: literal of %d bytes", errTooLong, n)
	}
	s, err := wire.ReadLiteral(r.br, n)
	if err != nil {
		return "", err
	}
	r.left -= n
	return s, nil
}

// readAtom reads the rest of an atom whose first byte is first.
func (r *reader) readAtom(first byte) (string, error) {
	return wire.ReadAtom(first, r.peekByte, r.readByte, isAtomChar)
}

// peekByte returns the next byte without taking it.
func (r *reader) peekByte() (byte, error) { return wire.PeekByte(r.br) }

// isAtomChar: printable ASCII but for the characters that start or end
// other tokens and the quoting ones (RFC 5804 §4 ATOM-CHAR, roughly).
func isAtomChar(b byte) bool {
	return b > ' ' && b < 0x7f && !strings.ContainsRune(`(){}"\`, rune(b))
}

// renderCode renders a response code's tokens: the name upper-cased (atoms
// are case-insensitive), arguments Go-quoted, which for a plain string is
// also its RFC 5804 quoted form.
func renderCode(toks []token) string {
	var b strings.Builder
	for i, t := range toks {
		if i > 0 && t.kind != tClose && toks[i-1].kind != tOpen {
			b.WriteByte(' ')
		}
		switch t.kind {
		case tAtom:
			if i == 0 {
				b.WriteString(strings.ToUpper(t.val))
			} else {
				b.WriteString(t.val)
			}
		case tString:
			b.WriteString(strconv.QuoteToGraphic(t.val))
		case tOpen:
			b.WriteByte('(')
		case tClose:
			b.WriteByte(')')
		}
	}
	return b.String()
}

// describe renders a line for an error message, shortened.
func describe(toks []token) string {
	const maxDescribe = 100
	s := renderCode(toks)
	if len(s) > maxDescribe {
		s = s[:maxDescribe] + "..."
	}
	return strconv.QuoteToGraphic(s)
}
