// Package wire holds the string syntax IMAP (RFC 3501, RFC 9051) and
// ManageSieve (RFC 5804, which borrows it) share: quoted strings and
// literals. Both clients read replies with it, so a fix to either syntax
// reaches both.
package wire

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

// maxLiteralDigits bounds a literal's size field: ten digits already say
// more than any limit a caller takes.
const maxLiteralDigits = 10

// ReadQuoted reads a quoted string after its opening quote: "\" escapes
// only "\" and DQUOTE; CR, LF and NUL may not appear. next reads one byte
// (bounded by the caller); malformed text is reported wrapping errSyntax.
func ReadQuoted(next func() (byte, error), errSyntax error) (string, error) {
	var s []byte
	for {
		c, err := next()
		if err != nil {
			return "", err
		}
		switch c {
		case '"':
			return string(s), nil
		case '\\':
			if c, err = next(); err != nil {
				return "", err
			}
			if c != '"' && c != '\\' {
				return "", fmt.Errorf("%w: \\%c in quoted string", errSyntax, c)
			}
		case '\r', '\n', 0:
			return "", fmt.Errorf("%w: CR, LF or NUL in quoted string", errSyntax)
		}
		s = append(s, c)
	}
}

// ReadLiteralSize reads a literal's header after its "{": the size, "}"
// and CRLF. The non-synchronising client form "{n+}" is taken too.
func ReadLiteralSize(next func() (byte, error), errSyntax error) (int, error) {
	n, digits := 0, 0
	c, err := next()
	for ; err == nil && c >= '0' && c <= '9'; c, err = next() {
		if digits++; digits > maxLiteralDigits {
			return 0, fmt.Errorf("%w: literal size too long", errSyntax)
		}
		n = n*10 + int(c-'0')
	}
	if err == nil && c == '+' && digits > 0 {
		c, err = next()
	}
	if err != nil {
		return 0, err
	}
	if c != '}' || digits == 0 {
		return 0, fmt.Errorf("%w: literal size", errSyntax)
	}
	for _, want := range []byte("\r\n") {
		if c, err = next(); err != nil {
			return 0, err
		}
		if c != want {
			return 0, fmt.Errorf("%w: no CRLF after literal size", errSyntax)
		}
	}
	return n, nil
}

// ReadLiteral reads a literal's n octets from r, growing its buffer with
// what arrives rather than with what the peer announced.
func ReadLiteral(r io.Reader, n int) (string, error) {
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	return buf.String(), nil
}

// ReadAtom reads the rest of an atom whose first byte is first: the bytes
// that follow while atomChar holds. peek looks at the next byte without
// taking it; next takes it (bounded by the caller).
func ReadAtom(first byte, peek, next func() (byte, error), atomChar func(byte) bool) (string, error) {
	a := []byte{first}
	for {
		c, err := peek()
		if err != nil {
			return "", err
		}
		if !atomChar(c) {
			return string(a), nil
		}
		if c, err = next(); err != nil {
			return "", err
		}
		a = append(a, c)
	}
}

// PeekByte returns br's next byte without taking it. Both protocols read
// only within a response here, so the end of input is always
// io.ErrUnexpectedEOF.
func PeekByte(br *bufio.Reader) (byte, error) {
	p, err := br.Peek(1)
	if err == io.EOF {
		return 0, io.ErrUnexpectedEOF
	}
	if err != nil {
		return 0, err
	}
	return p[0], nil
}
