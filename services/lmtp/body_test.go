package lmtp

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/emersion/go-smtp"
)

// readers split the same input differently; every result must be the same
// whichever is used. odd moves readChunk's borders about in long inputs.
var readers = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"whole", func(r io.Reader) io.Reader { return r }},
	{"one byte", iotest.OneByteReader},
	{"half", iotest.HalfReader},
	{"data err eof", iotest.DataErrReader},
	{"odd", func(r io.Reader) io.Reader { return &chunked{r: r, n: readChunk - 1} }},
}

// chunked reads at most n bytes at a time.
type chunked struct {
	r io.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// readAll runs readBody and returns the body's bytes, read through Reader.
func readAll(t *testing.T, r io.Reader, p bodyPolicy) (string, *body, error) {
	t.Helper()
	b, err := readBody(r, p)
	if err != nil {
		if b != nil {
			t.Fatalf("readBody returned a body with error %v", err)
		}
		return "", nil, err
	}
	t.Cleanup(func() { b.Close() })
	got, rerr := io.ReadAll(b.Reader())
	if rerr != nil {
		t.Fatalf("reading the body: %v", rerr)
	}
	if int64(len(got)) != b.Size() {
		t.Errorf("Size() = %d, read %d bytes", b.Size(), len(got))
	}
	return string(got), b, nil
}

// sameErr compares errors; *smtp.SMTPError values by content, since
// errLineTooLong makes a fresh one each time, and only unwrapped, as
// go-smtp looks for them.
func sameErr(got, want error) bool {
	g, gok := got.(*smtp.SMTPError)
	w, wok := want.(*smtp.SMTPError)
	if wok {
		return gok && *g == *w
	}
	return errors.Is(got, want)
}

func TestReadBody(t *testing.T) {
	strict := bodyPolicy{MemLimit: 1 << 20}
	lenient := bodyPolicy{MemLimit: 1 << 20, Lenient: true}
	line := func(n int) bodyPolicy { return bodyPolicy{MemLimit: 1 << 20, MaxLine: n} }
	size := func(n int64) bodyPolicy { return bodyPolicy{MemLimit: 1 << 20, MaxBytes: n} }
	strip := bodyPolicy{MemLimit: 1 << 20, StripHeader: "X-Rel"}
	long := strings.Repeat("x", 2*readChunk)
	tests := []struct {
		name    string
		p       bodyPolicy
		in      string
		want    string
		wantErr error
	}{
		{"crlf unchanged", strict, "a\r\nb\r\n\r\nc\r\n", "a\r\nb\r\n\r\nc\r\n", nil},
		{"lf only", strict, "a\nb\n\nc\n", "a\r\nb\r\n\r\nc\r\n", nil},
		{"mixed", strict, "a\r\nb\nc\r\n\n", "a\r\nb\r\nc\r\n\r\n", nil},
		{"leading lf", strict, "\n\na", "\r\n\r\na\r\n", nil},
		{"bare cr strict", strict, "a\rb\r\n", "", errBareCR},
		{"bare cr lenient", lenient, "a\rb\r\n", "ab\r\n", nil},
		{"cr before crlf lenient", lenient, "a\r\r\nb\r\n", "a\r\nb\r\n", nil},
		{"cr at end strict", strict, "a\r\nb\r", "", errBareCR},
		{"cr at end lenient", lenient, "a\r\nb\r", "a\r\nb\r\n", nil},
		{"only cr lenient", lenient, "\r", "", nil},
		{"only cr strict", strict, "\r", "", errBareCR},
		{"smuggle cr dot strict", strict, "a\r\n\r.\r\nRSET\r\n", "", errBareCR},
		{"smuggle cr dot lenient", lenient, "a\r\n\r.\r\nRSET\r\n", "a\r\n.\r\nRSET\r\n", nil},
		{"smuggle lf dot", strict, "a\n.\nRSET\n", "a\r\n.\r\nRSET\r\n", nil},
		{"smuggle cr dot cr strict", strict, "a\r.\rRSET", "", errBareCR},
		{"smuggle cr dot cr lenient", lenient, "a\r.\rRSET", "a.RSET\r\n", nil},
		{"dot cr strict", strict, ".\r", "", errBareCR},
		{"dot cr lenient", lenient, ".\r", ".\r\n", nil},
		{"empty", strict, "", "", nil},
		{"no final crlf", strict, "a\r\nb", "a\r\nb\r\n", nil},
		{"eight bit", strict, "caf\xc3\xa9\r\n", "caf\xc3\xa9\r\n", nil},
		{"line at max", line(5), "abc\r\nabc\r\n", "abc\r\nabc\r\n", nil},
		{"line over max", line(5), "abc\r\nabcd\r\n", "", errLineTooLong(5)},
		{"lf line at max", line(5), "abc\nabc\n", "abc\r\nabc\r\n", nil},
		{"lf line over max", line(5), "abcd\n", "", errLineTooLong(5)},
		{"last line at max", line(5), "abc", "abc\r\n", nil},
		{"last line over max", line(5), "abcd", "", errLineTooLong(5)},
		{"lenient cr not counted", bodyPolicy{Lenient: true, MaxLine: 5}, "a\rb\rc\r\n", "abc\r\n", nil},
		{"long line at max", line(len(long) + 2), long + "\r\n" + long, long + "\r\n" + long + "\r\n", nil},
		{"long line over max", line(len(long) + 1), long + "\r\n", "", errLineTooLong(len(long) + 1)},
		{"empty line under 2", line(1), "\r\n", "", errLineTooLong(1)},
		{"size at max", size(10), "12345678\r\n", "12345678\r\n", nil},
		{"size over max", size(10), "123456789\r\n", "", errTooLarge},
		{"lf size at max", size(10), "12345678\n", "12345678\r\n", nil},
		{"lf size over max", size(10), "123456789\n", "", errTooLarge},
		{"added crlf at max", size(10), "12345678", "12345678\r\n", nil},
		{"added crlf over max", size(10), "123456789", "", errTooLarge},
		{"first error wins", bodyPolicy{MaxLine: 4, MaxBytes: 3}, "abcdef", "", errLineTooLong(4)},
		{"first error wins size", bodyPolicy{MaxLine: 5, MaxBytes: 2}, "abcdef", "", errTooLarge},
		{"bare cr then long", bodyPolicy{MaxLine: 4}, "a\rbcdef", "", errBareCR},

		{"strip folded", strip, "A: 1\r\nX-Rel: a\r\n b\r\n\tc\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n\r\nbody\r\n", nil},
		{"strip several", strip, "X-Rel: 1\r\nA: 1\r\nX-Rel: 2\r\n\r\nb\r\n", "A: 1\r\n\r\nb\r\n", nil},
		{"strip case", strip, "x-rEL: 1\r\nA: 1\r\n\r\n", "A: 1\r\n\r\n", nil},
		{"strip last header", strip, "A: 1\r\nX-Rel: 2\r\n folded\r\n\r\nb\r\n", "A: 1\r\n\r\nb\r\n", nil},
		{"strip space before colon", strip, "X-Rel \t: 1\r\nA: 1\r\n", "A: 1\r\n", nil},
		{"strip empty value", strip, "X-Rel:\r\nA: 1\r\n", "A: 1\r\n", nil},
		{"strip keeps body", strip, "A: 1\r\n\r\nX-Rel: 3\r\n", "A: 1\r\n\r\nX-Rel: 3\r\n", nil},
		{"strip no blank line", strip, "A: 1\r\nX-Rel: 2\r\n cont\r\n", "A: 1\r\n", nil},
		{"strip only line", strip, "X-Rel: 2", "", nil},
		{"strip other names", strip, "X-Relation: 1\r\nX-Re: 2\r\nX-Rel\r\nX-Rel x: 3\r\nX-Re", "X-Relation: 1\r\nX-Re: 2\r\nX-Rel\r\nX-Rel x: 3\r\nX-Re\r\n", nil},
		{"strip keeps other continuation", strip, " lead\r\nA: 1\r\n cont\r\nX-Rel: 1\r\n c\r\nB: 2\r\n c\r\n", " lead\r\nA: 1\r\n cont\r\nB: 2\r\n c\r\n", nil},
		{"strip empty header section", strip, "\r\nX-Rel: 1\r\n", "\r\nX-Rel: 1\r\n", nil},
		{"strip after lf", strip, "X-Rel: 1\n b\nA: 1\n\nb\n", "A: 1\r\n\r\nb\r\n", nil},
		{"strip after dropped cr", bodyPolicy{Lenient: true, StripHeader: "X-Rel"}, "X-R\rel: 1\r\nA: 1\r\n", "A: 1\r\n", nil},
		{"stripped line too long", bodyPolicy{MaxLine: 10, StripHeader: "X-Rel"}, "X-Rel: 12345678\r\n", "", errLineTooLong(10)},
		{"strip 8-bit field", strip, "X-Rel: caf\xc3\xa9\r\nA: 1\r\n", "A: 1\r\n", nil},
		{"size after strip", bodyPolicy{MaxBytes: 3, StripHeader: "X-Rel"}, "X-Rel: 123456\r\nA\r\n", "A\r\n", nil},
		{"size of kept undecided line", bodyPolicy{MaxBytes: 5, StripHeader: "X-Rel"}, "X-Re\r\n", "", errTooLarge},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				got, b, err := readAll(t, rd.wrap(strings.NewReader(tt.in)), tt.p)
				if !sameErr(err, tt.wantErr) || got != tt.want {
					t.Fatalf("readBody(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.wantErr)
				}
				if b != nil && b.EightBit() != hasHigh(got) {
					t.Errorf("EightBit() = %v for %q", b.EightBit(), got)
				}
			})
		}
	}
}

// hasHigh is hasHighBit the slow way.
func hasHigh(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return true
		}
	}
	return false
}

func TestBodyErrors(t *testing.T) {
	tests := []struct {
		err  error
		want smtp.SMTPError
	}{
		{errBareCR, smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
			Message: "Message contains a bare CR (RFC 5321 section 2.3.8); not delivered"}},
		{errLineTooLong(8000), smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
			Message: "Message has a line longer than 8000 bytes; not delivered"}},
		{errTooLarge, smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big"}},
	}
	for _, tt := range tests {
		// A plain type assertion, as go-smtp does: wrapping would break it.
		se, ok := tt.err.(*smtp.SMTPError)
		if !ok || *se != tt.want {
			t.Errorf("error %#v; want %#v", tt.err, tt.want)
		}
	}
}

// TestBodyEightBit covers each step of hasHighBit at every offset, and a
// spilled body whose only 8-bit byte is early, late or nowhere.
func TestBodyEightBit(t *testing.T) {
	for n := range 80 {
		for i := range n {
			ascii := []byte(strings.Repeat("a", n))
			if hasHighBit(ascii) {
				t.Fatalf("hasHighBit(%q) = true", ascii)
			}
			ascii[i] = 0x80
			if !hasHighBit(ascii) {
				t.Errorf("hasHighBit with 0x80 at %d of %d = false", i, n)
			}
		}
	}
	big := strings.Repeat("0123456789abcdef\r\n", 3*flushAt/18)
	for _, in := range []string{"\xff" + big, big + "\xff", big[:flushAt+5] + "\xff" + big, big} {
		_, b, err := readAll(t, strings.NewReader(in), bodyPolicy{MemLimit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if b.f == nil || b.EightBit() != strings.Contains(in, "\xff") {
			t.Errorf("spilled %v, EightBit() = %v; want true, %v", b.f != nil, b.EightBit(), strings.Contains(in, "\xff"))
		}
	}
}

func TestBodyMemLimit(t *testing.T) {
	in := "0123456789abcdef" // 16 bytes, no CRLF: 18 after normalisation
	for _, tt := range []struct {
		mem   int
		spill bool
	}{{18, false}, {17, true}, {0, true}} {
		dir := t.TempDir()
		_, b, err := readAll(t, strings.NewReader(in), bodyPolicy{MemLimit: tt.mem, Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if spilled := b.f != nil; spilled != tt.spill {
			t.Errorf("MemLimit %d: spilled = %v; want %v", tt.mem, spilled, tt.spill)
		}
	}
}

func TestBodySpill(t *testing.T) {
	dir := t.TempDir()
	fds := openFiles(t)
	var in, want strings.Builder
	for i := 0; in.Len() < 3*flushAt; i++ {
		in.WriteString("line with caf\xc3\xa9 " + strings.Repeat("x", i%100) + "\n")
		want.WriteString("line with caf\xc3\xa9 " + strings.Repeat("x", i%100) + "\r\n")
	}
	b, err := readBody(iotest.HalfReader(strings.NewReader(in.String())), bodyPolicy{MemLimit: 1000, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	f := b.f
	if f == nil {
		t.Fatal("body over MemLimit is not in a file")
	}
	if fi, err := f.Stat(); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("spool file mode %v; want 0600", fi.Mode())
	}
	emptyDir(t, dir) // unlinked at once: a crash leaves nothing behind
	if b.Size() != int64(want.Len()) || !b.EightBit() {
		t.Errorf("Size() = %d, EightBit() = %v; want %d, true", b.Size(), b.EightBit(), want.Len())
	}
	// Two readers at once, each sees the whole body from the start.
	r1, r2 := b.Reader(), b.Reader()
	head := make([]byte, 100)
	if _, err := io.ReadFull(r1, head); err != nil {
		t.Fatal(err)
	}
	for i, r := range []io.Reader{r2, io.MultiReader(bytes.NewReader(head), r1), b.Reader()} {
		got, err := io.ReadAll(r)
		if err != nil || string(got) != want.String() {
			t.Errorf("reader %d: %d bytes, %v; want %d bytes", i, len(got), err, want.Len())
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("spool file still open after Close: Stat = %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	emptyDir(t, dir)
	if got := openFiles(t); got != fds {
		t.Errorf("%d files open after Close, %d before", got, fds)
	}
}

// TestBodySpillError checks that nothing stays on disk or open when a body
// that has moved to a file fails part way, by policy or by the client.
func TestBodySpillError(t *testing.T) {
	errGone := errors.New("client went away")
	big := strings.Repeat("0123456789abcdef\r\n", 2*flushAt/18)
	tests := []struct {
		name    string
		r       io.Reader
		p       bodyPolicy
		wantErr error
	}{
		{"bare cr", strings.NewReader(big + "\r." + big), bodyPolicy{}, errBareCR},
		{"too large", strings.NewReader(big + big), bodyPolicy{MaxBytes: int64(len(big)) + 1}, errTooLarge},
		{"long line", strings.NewReader(big + big + "x" + big), bodyPolicy{MaxLine: 18}, errLineTooLong(18)},
		{"read error", &failOnce{r: strings.NewReader(big + big), err: errGone}, bodyPolicy{}, errGone},
		{"read error after policy error", &failOnce{r: strings.NewReader(big + "\r." + big), err: errGone}, bodyPolicy{}, errGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			fds := openFiles(t)
			tt.p.MemLimit, tt.p.Dir = 100, dir
			b, err := readBody(tt.r, tt.p)
			if b != nil || !sameErr(err, tt.wantErr) {
				t.Fatalf("readBody = %v, %v; want nil, %v", b, err, tt.wantErr)
			}
			if errors.Is(err, errGone) && err.Error() != "lmtp body: read: "+errGone.Error() {
				t.Errorf("read error reported as %q", err)
			}
			emptyDir(t, dir)
			if got := openFiles(t); got != fds {
				t.Errorf("%d files open after the error, %d before", got, fds)
			}
		})
	}
}

func TestBodySpoolDirMissing(t *testing.T) {
	p := bodyPolicy{Dir: filepath.Join(t.TempDir(), "missing")}
	in := &eofReader{r: strings.NewReader("hello\r\n")}
	b, err := readBody(in, p)
	if b != nil || !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "lmtp body: create spool: ") {
		t.Fatalf("readBody = %v, %v; want a create spool error", b, err)
	}
	if !in.eof {
		t.Error("input not read to its end after the spool error")
	}
}

// failOnce fails with err when r is at its end, then reports EOF, so
// that a reader that went on after the error would end normally.
type failOnce struct {
	r    io.Reader
	err  error
	done bool
}

func (f *failOnce) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF && !f.done {
		f.done = true
		return n, f.err
	}
	return n, err
}

// eofReader records whether its reader reached EOF.
type eofReader struct {
	r   io.Reader
	n   int
	eof bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n += n
	e.eof = e.eof || err == io.EOF
	return n, err
}

// TestBodyDrain checks that after a policy error the rest of the message
// is still read, so the client gets its answer after its end of data.
func TestBodyDrain(t *testing.T) {
	rest := strings.Repeat("more data\r\n", 3*readChunk/11)
	for _, tt := range []struct {
		name, in string
		p        bodyPolicy
		wantErr  error
	}{
		{"bare cr", "a\r.\r\n" + rest, bodyPolicy{}, errBareCR},
		{"long line", "abcdef\r\n" + rest, bodyPolicy{MaxLine: 5}, errLineTooLong(5)},
		{"too large", rest, bodyPolicy{MaxBytes: 100}, errTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := &eofReader{r: strings.NewReader(tt.in)}
			if _, err := readBody(in, tt.p); !sameErr(err, tt.wantErr) {
				t.Fatalf("readBody = %v; want %v", err, tt.wantErr)
			}
			if !in.eof || in.n != len(tt.in) {
				t.Errorf("read %d of %d bytes, eof %v", in.n, len(tt.in), in.eof)
			}
		})
	}
}

// TestBodyReuse checks that a closed body's pooled memory does not show
// through in the next one.
func TestBodyReuse(t *testing.T) {
	for i, in := range []string{strings.Repeat("long line\r\n", 1000), "short\r\n", ""} {
		got, _, err := readAll(t, strings.NewReader(in), bodyPolicy{MemLimit: 1 << 20, StripHeader: "long line"})
		if err != nil || got != in {
			t.Fatalf("message %d: %d bytes, %v; want %d bytes", i, len(got), err, len(in))
		}
		got2, _, _ := readAll(t, strings.NewReader("other\r\n"), bodyPolicy{MemLimit: 1 << 20})
		if got2 != "other\r\n" {
			t.Fatalf("after message %d: %q", i, got2)
		}
	}
}

// TestBodyPoolCap checks that a buffer grown past maxPooled is not kept:
// a once-large message must not pin its memory for good. (A pool may drop
// what it is given, so this can miss a fault, but never fail wrongly.)
func TestBodyPoolCap(t *testing.T) {
	in := strings.Repeat("0123456789abcdef\r\n", 2*maxPooled/18)
	b, err := readBody(strings.NewReader(in), bodyPolicy{MemLimit: 4 * maxPooled})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	for range 4 {
		if bp := outPool.Get().(*[]byte); cap(*bp) > maxPooled {
			t.Fatalf("pool holds a %d-byte buffer", cap(*bp))
		}
	}
}

func emptyDir(t *testing.T, dir string) {
	t.Helper()
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		t.Errorf("spool dir holds %v, %v; want nothing", ents, err)
	}
}

// openFiles counts this process's open descriptors (Linux).
func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

func BenchmarkReadBody(b *testing.B) {
	var msg bytes.Buffer
	msg.WriteString("Received: from mx.example.org by mail.example.com; Fri, 21 Nov 2025 10:00:00 +0000\r\n" +
		"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: benchmark\r\n" +
		"X-Sidecar-Sender-Relation: forged\r\nMessage-ID: <1@example.org>\r\nDate: Fri, 21 Nov 2025 10:00:00 +0000\r\n\r\n")
	for msg.Len() < 10<<10 {
		msg.WriteString("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n")
	}
	in := msg.Bytes()[:10<<10-2]
	in = append(in, "\r\n"...)
	p := bodyPolicy{MaxLine: 8000, MaxBytes: 50 << 20, MemLimit: 1 << 20, StripHeader: "X-Sidecar-Sender-Relation"}
	r := bytes.NewReader(in)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(in)
		body, err := readBody(r, p)
		if err != nil {
			b.Fatal(err)
		}
		body.Close()
	}
}
