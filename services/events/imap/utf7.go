package imap

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// errUTF7 is a mailbox name that is not modified UTF-7.
var errUTF7 = errors.New("malformed modified UTF-7 mailbox name")

// mbase64 is RFC 3501 §5.1.3's modified BASE64: "," for "/", no padding.
var mbase64 = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").
	WithPadding(base64.NoPadding).Strict()

// DecodeName decodes a mailbox name from modified UTF-7 (RFC 3501
// §5.1.3) to UTF-8: printable ASCII stands for itself, "&-" for "&", and
// "&...-" holds UTF-16 in modified BASE64. It refuses what the RFC
// forbids: other octets, unterminated or empty shifts, odd or unpaired
// UTF-16, and printable ASCII hidden in BASE64.
func DecodeName(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			return "", fmt.Errorf("%w: octet %#02x", errUTF7, c)
		}
		if c != '&' {
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i+1:], '-')
		if end < 0 {
			return "", fmt.Errorf("%w: unterminated &", errUTF7)
		}
		enc := s[i+1 : i+1+end]
		i += end + 1
		if enc == "" {
			b.WriteByte('&')
			continue
		}
		raw, err := mbase64.DecodeString(enc)
		if err != nil || len(raw)%2 != 0 {
			return "", fmt.Errorf("%w: bad BASE64 %q", errUTF7, enc)
		}
		units := make([]uint16, len(raw)/2)
		for j := range units {
			units[j] = uint16(raw[2*j])<<8 | uint16(raw[2*j+1])
		}
		for j := 0; j < len(units); j++ {
			r := rune(units[j])
			switch {
			case utf16.IsSurrogate(r):
				if j+1 == len(units) {
					return "", fmt.Errorf("%w: unpaired surrogate", errUTF7)
				}
				r = utf16.DecodeRune(r, rune(units[j+1]))
				if r == utf8.RuneError {
					return "", fmt.Errorf("%w: unpaired surrogate", errUTF7)
				}
				j++
			case r >= 0x20 && r <= 0x7e:
				// "MUST NOT be used to represent any printing US-ASCII
				// character which can represent itself."
				return "", fmt.Errorf("%w: ASCII %q in BASE64", errUTF7, r)
			}
			b.WriteRune(r)
		}
	}
	return b.String(), nil
}

// EncodeName encodes a UTF-8 mailbox name as modified UTF-7 (RFC 3501
// §5.1.3), the form mailbox names take on the wire. Invalid UTF-8 is
// encoded as U+FFFD.
func EncodeName(s string) string {
	var b strings.Builder
	var run []rune
	flush := func() {
		if len(run) == 0 {
			return
		}
		units := utf16.Encode(run)
		raw := make([]byte, 2*len(units))
		for i, u := range units {
			raw[2*i], raw[2*i+1] = byte(u>>8), byte(u)
		}
		b.WriteByte('&')
		b.WriteString(mbase64.EncodeToString(raw))
		b.WriteByte('-')
		run = run[:0]
	}
	for _, r := range s {
		if r >= 0x20 && r <= 0x7e {
			flush()
			b.WriteRune(r)
			if r == '&' {
				b.WriteByte('-')
			}
			continue
		}
		run = append(run, r)
	}
	flush()
	return b.String()
}
