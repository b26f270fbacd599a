package managesieve

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// appendString appends s as an RFC 5804 string: quoted when it is printable
// ASCII, else a non-synchronising literal, because Cyrus's timsieved
// refuses octets above 0x7F in quoted strings (timsieved/lex.c) and no
// quoted string may hold CR, LF or NUL (RFC 5804 §4 SAFE-CHAR).
func appendString(b []byte, s string) []byte {
	for i := range len(s) {
		if s[i] < ' ' || s[i] >= 0x7f {
			return appendLiteral(b, s)
		}
	}
	b = append(b, '"')
	for i := range len(s) {
		if s[i] == '"' || s[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return append(b, '"')
}

// appendLiteral appends s as a non-synchronising literal, {N+} CRLF s:
// LITERAL+ is part of RFC 5804 (§1.6), so no continuation is awaited. N
// counts octets.
func appendLiteral(b []byte, s string) []byte {
	b = append(b, '{')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, "+}\r\n"...)
	return append(b, s...)
}

// checkName refuses script names we must not send. RFC 5804 §1.6: a name
// is UTF-8 without 0000-001F, 007F, 0080-009F, 2028 or 2029. Cyrus lists
// names in quotes without escaping (timsieved/actions.c list_cb), so '"'
// and '\' would make LISTSCRIPTS unreadable: refused too.
func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty script name", errArg)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: script name %q is not UTF-8", errArg, name)
	}
	for _, c := range name {
		if c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0x2028 || c == 0x2029 || c == '"' || c == '\\' {
			return fmt.Errorf("%w: script name %q holds %U", errArg, name, c)
		}
	}
	return nil
}
