package lmtp

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzReadBody checks readBody against refBody, a slow line-at-a-time
// version written from the rules rather than from readBody, and checks the
// output's properties directly.
func FuzzReadBody(f *testing.F) {
	seeds := []string{
		"a\r\nb\r\n\r\nc\r\n", "a\nb\n", "a\r\nb\nc", "a\rb\r\n", "a\r", "\r",
		"a\r\n\r.\r\nRSET\r\n", "a\n.\nRSET\n", "\r.\r", ".\r", "", "caf\xc3\xa9",
		"A: 1\r\nX-Rel: a\r\n b\r\n\tc\r\nB: 2\r\n\r\nX-Rel: body\r\n",
		"x-rEL : 1\nX-Relation: 2\nX-Re\n\nX-Rel: 3", " lead\r\nX-Rel: 1\r\n",
		"X-R\rel: 1\r\nA\r\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s), "X-Rel", uint8(0), uint8(0), uint8(255))
		f.Add([]byte(s), "x-rel", uint8(6), uint8(5), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, name string, maxLine, maxBytes, mem uint8) {
		for _, lenient := range []bool{false, true} {
			p := bodyPolicy{
				Lenient: lenient, MaxLine: int(maxLine), MaxBytes: 4 * int64(maxBytes),
				MemLimit: int(mem), StripHeader: name,
			}
			got, err := fuzzRead(t, bytes.NewReader(in), p)
			want, failed := refBody(in, p)
			if len(failed) == 0 && (err != nil || !bytes.Equal(got, want)) {
				t.Fatalf("%+v: readBody(%q) = %q, %v; want %q", p, in, got, err, want)
			}
			if len(failed) > 0 && !oneOf(err, failed) {
				t.Fatalf("%+v: readBody(%q) = %q, %v; want one of %v", p, in, got, err, failed)
			}
			if err == nil {
				checkLines(t, got, p)
			}
			if err == nil && validCRLF(in) && !containsFold(in, name) {
				want := in
				if len(in) > 0 && !bytes.HasSuffix(in, []byte("\r\n")) {
					want = append(in[:len(in):len(in)], "\r\n"...)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%+v: valid input %q changed to %q", p, in, got)
				}
			}
			for _, wrap := range []func(io.Reader) io.Reader{iotest.OneByteReader, iotest.HalfReader} {
				got2, err2 := fuzzRead(t, wrap(bytes.NewReader(in)), p)
				if !bytes.Equal(got2, got) || !sameErr(err2, err) {
					t.Fatalf("%+v: %q read in pieces gives %q, %v; in one %q, %v", p, in, got2, err2, got, err)
				}
			}
		}
	})
}

func fuzzRead(t *testing.T, r io.Reader, p bodyPolicy) ([]byte, error) {
	b, err := readBody(r, p)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	got, err := io.ReadAll(b.Reader())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != b.Size() || b.EightBit() != hasHigh(string(got)) {
		t.Fatalf("Size() %d, EightBit() %v for %q", b.Size(), b.EightBit(), got)
	}
	return got, nil
}

// checkLines checks that out is CRLF lines within the policy's limits.
func checkLines(t *testing.T, out []byte, p bodyPolicy) {
	t.Helper()
	if p.MaxBytes > 0 && int64(len(out)) > p.MaxBytes {
		t.Fatalf("%d bytes over MaxBytes %d", len(out), p.MaxBytes)
	}
	if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
		t.Fatalf("%q does not end in CRLF", out)
	}
	if !validCRLF(out) {
		t.Fatalf("%q has a bare CR or LF", out)
	}
	for line := range bytes.SplitAfterSeq(out, []byte("\r\n")) {
		if p.MaxLine > 0 && len(line) > p.MaxLine {
			t.Fatalf("line %q longer than %d", line, p.MaxLine)
		}
	}
}

// validCRLF reports whether every CR in b is followed by LF and every LF
// preceded by CR.
func validCRLF(b []byte) bool {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			return false
		}
	}
	return true
}

func oneOf(err error, errs []error) bool {
	for _, e := range errs {
		if sameErr(err, e) {
			return true
		}
	}
	return false
}

// refBody is readBody done slowly: split into lines, then strip, then
// measure. With no policy failure it returns the expected output;
// otherwise it returns every failure that applies, any of which readBody
// may report (it stops at the first in the stream).
func refBody(in []byte, p bodyPolicy) ([]byte, []error) {
	var failed []error
	var lines []string
	var cur []byte
	bareCR := false
	for i := 0; i < len(in); i++ {
		switch {
		case in[i] == '\r' && i+1 < len(in) && in[i+1] == '\n':
			lines, cur = append(lines, string(cur)), nil
			i++
		case in[i] == '\r':
			bareCR = true // dropped
		case in[i] == '\n':
			lines, cur = append(lines, string(cur)), nil
		default:
			cur = append(cur, in[i])
		}
	}
	if len(cur) > 0 {
		lines = append(lines, string(cur))
	}
	if bareCR && !p.Lenient {
		failed = append(failed, errBareCR)
	}
	var out []byte
	header, stripping, tooLong := p.StripHeader != "", false, false
	for _, l := range lines {
		if p.MaxLine > 0 && len(l)+2 > p.MaxLine && !tooLong {
			failed, tooLong = append(failed, errLineTooLong(p.MaxLine)), true
		}
		if header {
			switch {
			case l == "":
				header = false
			case l[0] == ' ' || l[0] == '\t':
				if stripping {
					continue
				}
			default:
				stripping = isField(l, p.StripHeader)
				if stripping {
					continue
				}
			}
		}
		out = append(out, l+"\r\n"...)
	}
	if p.MaxBytes > 0 && int64(len(out)) > p.MaxBytes {
		failed = append(failed, errTooLarge)
	}
	return out, failed
}

// isField reports whether line starts the field name: the name in any
// ASCII case, optional blanks, a colon.
func isField(line, name string) bool {
	if len(line) < len(name) {
		return false
	}
	for i := range len(name) {
		a, b := line[i], name[i]
		if a != b && !(a|0x20 == b|0x20 && a|0x20 >= 'a' && a|0x20 <= 'z') {
			return false
		}
	}
	rest := line[len(name):]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	return len(rest) > 0 && rest[0] == ':'
}

// containsFold reports whether s occurs in b in any ASCII case.
func containsFold(b []byte, s string) bool {
	low := func(b []byte) []byte {
		l := make([]byte, len(b))
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			l[i] = c
		}
		return l
	}
	return s != "" && bytes.Contains(low(b), low([]byte(s)))
}

// TestRefBody pins the reference itself to hand-written answers, so the
// fuzz target cannot agree with readBody by both being wrong.
func TestRefBody(t *testing.T) {
	p := bodyPolicy{Lenient: true, StripHeader: "X-Rel"}
	in := "X-Rel: 1\n c\nA:\r 1\r\n\r\nX-Rel: 2"
	got, failed := refBody([]byte(in), p)
	if want := "A: 1\r\n\r\nX-Rel: 2\r\n"; string(got) != want || failed != nil {
		t.Errorf("refBody(%q) = %q, %v; want %q", in, got, failed, want)
	}
	p.Lenient, p.MaxLine, p.MaxBytes = false, 5, 1
	if _, failed := refBody([]byte(in), p); len(failed) != 3 || !errors.Is(failed[0], errBareCR) {
		t.Errorf("refBody(%q) failures %v; want bare CR, long line, too large", in, failed)
	}
}
