package lmtp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"strings"
	"testing"
	"testing/iotest"
)

// chunkReader returns its data in reads of at most n bytes, so that line
// ends and dots fall on read boundaries.
type chunkReader struct {
	data []byte
	n    int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n, len(r.data))
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}

// readerShapes are the ways each table input is fed: whole, a byte at a
// time, in halves, with the EOF on the last data read, in chunks of 3.
var readerShapes = []struct {
	name string
	wrap func(string) io.Reader
}{
	{"whole", func(s string) io.Reader { return strings.NewReader(s) }},
	{"one byte", func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) }},
	{"half", func(s string) io.Reader { return iotest.HalfReader(strings.NewReader(s)) }},
	{"data err", func(s string) io.Reader { return iotest.DataErrReader(strings.NewReader(s)) }},
	{"chunks of 3", func(s string) io.Reader { return &chunkReader{[]byte(s), 3} }},
}

// stuff runs writeDotStuffed into a buffer and returns what was flushed.
func stuff(body io.Reader) (string, error) {
	var out bytes.Buffer
	w := bufio.NewWriterSize(&out, 16) // small: flushes happen mid-body
	err := writeDotStuffed(w, body)
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	return out.String(), err
}

// hasTerminator reports whether out contains the end-of-data line.
func hasTerminator(out string) bool {
	return strings.HasPrefix(out, ".\r\n") || strings.Contains(out, "\r\n.\r\n")
}

func TestDotStuffed(t *testing.T) {
	a := strings.Repeat
	tests := []struct {
		name, in, want string
		wantErr        error
	}{
		{"empty", "", ".\r\n", nil},
		{"dot line", ".\r\n", "..\r\n.\r\n", nil},
		{"two dots", "..\r\n", "...\r\n.\r\n", nil},
		{"dot x", ".x\r\n", "..x\r\n.\r\n", nil},
		{"dots mid line untouched", "a.b.\r\n", "a.b.\r\n.\r\n", nil},
		{"dot lines between", "a\r\n.\r\nb\r\n..\r\n", "a\r\n..\r\nb\r\n...\r\n.\r\n", nil},
		{"no final CRLF", "abc", "abc\r\n.\r\n", nil},
		{"dot last char", "abc\r\n.", "abc\r\n..\r\n.\r\n", nil},
		{"only a dot", ".", "..\r\n.\r\n", nil},
		{"blank lines", "\r\n\r\n", "\r\n\r\n.\r\n", nil},
		{"smuggle attempt stuffed", "x\r\n.\r\nMAIL FROM:<a@b>\r\n", "x\r\n..\r\nMAIL FROM:<a@b>\r\n.\r\n", nil},
		{"8189 A then a dot line", a("A", 8189) + "\r\n.\r\n", a("A", 8189) + "\r\n..\r\n.\r\n", nil},
		{"8188 A and a dot", a("A", 8188) + ".\r\n", a("A", 8188) + ".\r\n.\r\n", nil},
		{"stuffed to the limit", "." + a("A", 8187) + "\r\n", ".." + a("A", 8187) + "\r\n.\r\n", nil},
		{"8189 A and a dot", a("A", 8189) + ".\r\n", "", errBodyLineTooLong},
		{"8189 A and dot CRLF then more", a("A", 8189) + ".\r\nRSET\r\n", "", errBodyLineTooLong},
		{"stuffed over the limit", "." + a("A", 8188) + "\r\n", "", errBodyLineTooLong},
		{"long last line", a("A", 9000), "", errBodyLineTooLong},
		{"bare CR", "a\rb\r\n", "", errBareLineEnding},
		{"bare CR dot (Cyrus end)", "x\r\n\r.\r\nRSET\r\n", "", errBareLineEnding},
		{"CR CR LF", "a\r\r\n", "", errBareLineEnding},
		{"CR at end", "abc\r", "", errBareLineEnding},
		{"only CR", "\r", "", errBareLineEnding},
		{"bare LF", "a\nb\r\n", "", errBareLineEnding},
		{"bare LF dot LF", "x\r\n.\n", "", errBareLineEnding},
		{"LF first", "\n", "", errBareLineEnding},
		{"LF after CRLF", "a\r\n\n", "", errBareLineEnding},
		{"LF CR", "a\n\r", "", errBareLineEnding},
	}
	for _, tt := range tests {
		for _, shape := range readerShapes {
			t.Run(tt.name+"/"+shape.name, func(t *testing.T) {
				got, err := stuff(shape.wrap(tt.in))
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("writeDotStuffed(%.40q) error = %v, want %v", tt.in, err, tt.wantErr)
				}
				if err != nil {
					if hasTerminator(got) {
						t.Errorf("writeDotStuffed(%.40q) failed but wrote the end of data: %.60q", tt.in, got)
					}
					return
				}
				if got != tt.want {
					t.Errorf("writeDotStuffed(%.40q) = %.60q, want %.60q", tt.in, got, tt.want)
				}
			})
		}
	}
}

// TestDotStuffedReadError: a failing body reader ends the copy with its
// error and without the end-of-data line, even after whole lines.
func TestDotStuffedReadError(t *testing.T) {
	boom := errors.New("spool read failed")
	body := io.MultiReader(strings.NewReader("Subject: x\r\n\r\nline\r\n"), iotest.ErrReader(boom))
	got, err := stuff(body)
	if !errors.Is(err, boom) {
		t.Fatalf("error = %v, want %v", err, boom)
	}
	if hasTerminator(got) || !strings.HasPrefix(got, "Subject: x\r\n") {
		t.Errorf("wrote %q", got)
	}
}

// failWriter fails every write.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestDotStuffedWriteError(t *testing.T) {
	w := bufio.NewWriterSize(failWriter{}, 16)
	err := writeDotStuffed(w, strings.NewReader(strings.Repeat("line\r\n", 100)))
	if err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Errorf("error = %v, want the write error", err)
	}
}

// bodyProblem is the test's own, byte-by-byte, judgement of an input:
// errBareLineEnding, errBodyLineTooLong (whichever comes first) or nil.
func bodyProblem(in []byte) error {
	lineLen := 0
	for i := 0; i < len(in); i++ {
		switch {
		case in[i] == '\r' && i+1 < len(in) && in[i+1] == '\n':
			lineLen = 0
			i++
			continue
		case in[i] == '\r' || in[i] == '\n':
			return errBareLineEnding
		case lineLen == 0 && in[i] == '.':
			lineLen++ // the stuffed dot counts: Cyrus sees it
		}
		lineLen++
		if lineLen > maxBodyLine {
			return errBodyLineTooLong
		}
	}
	return nil
}

// FuzzDotStuffed: for any body and read size, either the writer refuses
// (exactly when the body has a bare CR/LF or an over-long line) without
// the end-of-data line, or its output unstuffs (net/textproto) to the
// body plus a missing final CRLF, has CRLF line ends only, and its only
// "." line is the last.
func FuzzDotStuffed(f *testing.F) {
	for _, s := range []string{"", ".", ".\r\n", "..\r\n", ".x\r\nabc", "a\r\n\r.\r\n", "a\n.\n",
		"\r\n.\r\n", "x\r", "a\r\n.", strings.Repeat("A", 8189) + ".\r\n"} {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(7))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		out, err := stuff(&chunkReader{in, int(chunk%64) + 1})
		if want := bodyProblem(in); !errors.Is(err, want) || (err != nil && want == nil) {
			t.Fatalf("writeDotStuffed(%q) error = %v, want %v", in, err, want)
		}
		if err != nil {
			if hasTerminator(out) {
				t.Fatalf("writeDotStuffed(%q) failed but wrote the end of data: %q", in, out)
			}
			return
		}
		if i := strings.Index(out, "\r\n.\r\n"); i >= 0 && i != len(out)-5 || strings.HasPrefix(out, ".\r\n") && out != ".\r\n" {
			t.Fatalf("writeDotStuffed(%q) = %q: a \".\" line before the end", in, out)
		}
		if bodyProblem([]byte(out)) == errBareLineEnding {
			t.Fatalf("writeDotStuffed(%q) = %q: bare CR or LF", in, out)
		}
		br := bufio.NewReader(strings.NewReader(out))
		dec, derr := io.ReadAll(textproto.NewReader(br).DotReader())
		if derr != nil || br.Buffered() != 0 {
			t.Fatalf("DotReader(%q) = %v with %d bytes left", out, derr, br.Buffered())
		}
		want := string(in)
		if len(in) > 0 && !strings.HasSuffix(want, "\r\n") {
			want += "\r\n"
		}
		// DotReader turns CRLF into LF.
		if want = strings.ReplaceAll(want, "\r\n", "\n"); string(dec) != want {
			t.Fatalf("writeDotStuffed(%q) = %q, unstuffs to %q", in, out, dec)
		}
	})
}

// BenchmarkDotStuffed copies a 10 KiB message of 78-byte lines, some
// starting with a dot.
func BenchmarkDotStuffed(b *testing.B) {
	var msg bytes.Buffer
	msg.WriteString("From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n")
	for i := 0; msg.Len() < 10<<10; i++ {
		if i%10 == 0 {
			msg.WriteByte('.')
		}
		msg.WriteString(strings.Repeat("x", 76) + "\r\n")
	}
	body := msg.Bytes()[:bytes.LastIndex(msg.Bytes()[:10<<10], []byte("\r\n"))+2]
	w := bufio.NewWriterSize(io.Discard, 32<<10)
	r := bytes.NewReader(body)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(body)
		if err := writeDotStuffed(w, r); err != nil {
			b.Fatal(err)
		}
		w.Flush()
	}
}
