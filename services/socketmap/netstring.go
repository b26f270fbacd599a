package socketmap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Limits on the wire. Postfix's client accepts replies up to 100,000 bytes
// (dict_sockmap.c); requests are a map name and one key, and no real key is
// near MaxRequest.
const (
	MaxRequest = 10000
	MaxReply   = 100000
)

// Framing failures. Each ends the connection after a PERM reply: after a
// bad frame the stream cannot be trusted to be back in step.
var (
	errSyntax   = errors.New("bad netstring syntax")
	errTooLarge = errors.New("netstring longer than the limit")
)

// readNetstring reads one netstring "<len>:<bytes>," (netstrings as used by
// Sendmail and Postfix socketmaps: decimal length without leading zeros, no
// CRLF). The length is checked against max while its digits are read, before
// anything is allocated. A clean EOF before the first byte is io.EOF; EOF
// anywhere later is io.ErrUnexpectedEOF.
func readNetstring(r *bufio.Reader, max int) ([]byte, error) {
	n, digits := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) && digits > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if b == ':' {
			if digits == 0 {
				return nil, fmt.Errorf("%w: no length before ':'", errSyntax)
			}
			break
		}
		if b < '0' || b > '9' {
			return nil, fmt.Errorf("%w: %q in length", errSyntax, b)
		}
		if digits == 1 && n == 0 {
			return nil, fmt.Errorf("%w: leading zero in length", errSyntax)
		}
		n = n*10 + int(b-'0')
		digits++
		if n > max {
			return nil, fmt.Errorf("%w: more than %d bytes", errTooLarge, max)
		}
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if buf[n] != ',' {
		return nil, fmt.Errorf("%w: missing ',' after %d bytes", errSyntax, n)
	}
	return buf[:n], nil
}

// appendNetstring appends the netstring of s to dst.
func appendNetstring(dst []byte, s ...string) []byte {
	n := 0
	for _, p := range s {
		n += len(p)
	}
	dst = strconv.AppendInt(dst, int64(n), 10)
	dst = append(dst, ':')
	for _, p := range s {
		dst = append(dst, p...)
	}
	return append(dst, ',')
}
