package wire

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

var errBad = errors.New("bad")

func TestReadQuoted(t *testing.T) {
	for _, c := range []struct {
		in, want string
		bad      bool
	}{
		{`abc" rest`, "abc", false},
		{`a\"b\\c"`, `a"b\c`, false},
		{`"`, "", false},
		{"Gr\u00fc\u00dfe\"", "Gr\u00fc\u00dfe", false},
		{`a\nb"`, "", true},
		{"a\r\nb\"", "", true},
		{"a\x00b\"", "", true},
		{`unterminated`, "", true},
	} {
		br := bufio.NewReader(strings.NewReader(c.in))
		got, err := ReadQuoted(br.ReadByte, errBad)
		if c.bad != (err != nil) || got != c.want {
			t.Errorf("ReadQuoted(%q) = %q, %v", c.in, got, err)
		}
		if c.bad && c.in != "unterminated" && !errors.Is(err, errBad) {
			t.Errorf("ReadQuoted(%q): %v does not wrap the caller's syntax error", c.in, err)
		}
	}
}

func TestReadLiteral(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		body string
		bad  bool
	}{
		{"5}\r\nhello", 5, "hello", false},
		{"5+}\r\nhello", 5, "hello", false},
		{"0}\r\n", 0, "", false},
		{"}\r\n", 0, "", true},
		{"+}\r\n", 0, "", true},
		{"12345678901}\r\n", 0, "", true},
		{"5}\nhello", 0, "", true},
		{"5)\r\nhello", 0, "", true},
		{"5}\r\nhel", 5, "", true},
	} {
		br := bufio.NewReader(strings.NewReader(c.in))
		n, err := ReadLiteralSize(br.ReadByte, errBad)
		if err == nil {
			var body string
			if body, err = ReadLiteral(br, n); err == nil && (n != c.n || body != c.body) {
				t.Errorf("%q: %d %q, want %d %q", c.in, n, body, c.n, c.body)
			}
		}
		if c.bad != (err != nil) {
			t.Errorf("%q: err %v, want bad=%v", c.in, err, c.bad)
		}
	}
}

func FuzzReadQuoted(f *testing.F) {
	for _, s := range []string{`abc"`, `a\"b"`, "x\r\n", `\`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ReadQuoted(bufio.NewReader(strings.NewReader(s)).ReadByte, errBad)
		if err == nil && strings.ContainsAny(got, "\r\n\x00") {
			t.Errorf("ReadQuoted(%q) = %q: CR, LF or NUL got through", s, got)
		}
	})
}

func TestReadAtom(t *testing.T) {
	atom := func(c byte) bool { return c > ' ' && c < 0x7f && c != '(' && c != ')' }
	for _, c := range []struct {
		in, want string
		bad      bool
	}{
		{"ERSION rest", "VERSION", false},
		{"K)", "OK", false},
		{"", "", true}, // the input ends inside the response
	} {
		br := bufio.NewReader(strings.NewReader(c.in))
		peek := func() (byte, error) {
			p, err := br.Peek(1)
			if err != nil {
				return 0, err
			}
			return p[0], nil
		}
		first := map[string]byte{"VERSION": 'V', "OK": 'O', "": 'X'}[c.want]
		got, err := ReadAtom(first, peek, br.ReadByte, atom)
		if c.bad != (err != nil) || (!c.bad && got != c.want) {
			t.Errorf("ReadAtom(%q) = %q, %v", c.in, got, err)
		}
	}
}

func TestPeekByte(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("a"))
	for range 2 { // peeking does not take the byte
		if c, err := PeekByte(br); c != 'a' || err != nil {
			t.Fatalf("PeekByte = %q, %v; want 'a'", c, err)
		}
	}
	br.ReadByte()
	if _, err := PeekByte(br); err != io.ErrUnexpectedEOF {
		t.Errorf("PeekByte at the end = %v; want io.ErrUnexpectedEOF", err)
	}
}
