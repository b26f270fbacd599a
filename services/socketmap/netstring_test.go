package socketmap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// Captured requests: postmap sends "25:virtual alice@example.com," and Exim's
// ${readsocket} the string its ${strlen:...} built (cyrus-lab-facts.md §6, §7).
var netstringTests = []struct {
	name, in, want string
	wantErr        error
}{
	{"postmap", "25:virtual alice@example.com,", "virtual alice@example.com", nil},
	{"case kept", "25:virtual Alice@Example.COM,", "virtual Alice@Example.COM", nil},
	{"empty", "0:,", "", nil},
	{"clean eof", "", "", io.EOF},
	{"eof in length", "25", "", io.ErrUnexpectedEOF},
	{"eof in body", "25:virtual al", "", io.ErrUnexpectedEOF},
	{"eof before comma", "3:abc", "", io.ErrUnexpectedEOF},
	{"missing comma", "3:abcd", "", errSyntax},
	{"leading zero", "05:hello,", "", errSyntax},
	{"no length", ":hello,", "", errSyntax},
	{"non-digit", "5x:hello,", "", errSyntax},
	{"space", " 5:hello,", "", errSyntax},
	{"negative", "-5:hello,", "", errSyntax},
	{"too large", "10001:", "", errTooLarge},
	{"huge", "99999999999999999999:", "", errTooLarge},
	{"limit", "10000:" + strings.Repeat("a", 10000) + ",", strings.Repeat("a", 10000), nil},
	{"crlf instead of comma", "5:hello\r\n", "", errSyntax},
}

func TestReadNetstring(t *testing.T) {
	for _, tt := range netstringTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readNetstring(bufio.NewReader(strings.NewReader(tt.in)), MaxRequest)
			if !errors.Is(err, tt.wantErr) || string(got) != tt.want {
				t.Errorf("readNetstring(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestReadNetstringPipelined(t *testing.T) {
	r := bufio.NewReader(strings.NewReader("5:map a,5:map b,garbage"))
	for _, want := range []string{"map a", "map b"} {
		if got, err := readNetstring(r, MaxRequest); err != nil || string(got) != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	if _, err := readNetstring(r, MaxRequest); !errors.Is(err, errSyntax) {
		t.Errorf("garbage after good requests: %v, want errSyntax", err)
	}
}

func TestAppendNetstring(t *testing.T) {
	if got := string(appendNetstring(nil, "OK ", "alice@example.com")); got != "20:OK alice@example.com," {
		t.Errorf("appendNetstring = %q", got)
	}
	if got := string(appendNetstring(nil)); got != "0:," {
		t.Errorf("empty = %q", got)
	}
}

func FuzzReadNetstring(f *testing.F) {
	for _, tt := range netstringTests {
		f.Add([]byte(tt.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readNetstring(bufio.NewReader(bytes.NewReader(in)), MaxRequest)
		if err != nil {
			if !errors.Is(err, errSyntax) && !errors.Is(err, errTooLarge) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if len(got) > MaxRequest {
			t.Fatalf("accepted %d bytes", len(got))
		}
		// Round trip: what we accepted is exactly a prefix we would write.
		if out := appendNetstring(nil, string(got)); !bytes.HasPrefix(in, out) {
			t.Fatalf("accepted %q, re-encodes as %q", in, out)
		}
	})
}
