package imap

import (
	"errors"
	"testing"
	"unicode/utf8"
)

func TestDecodeName(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  error
	}{
		{"INBOX", "INBOX", nil},
		{"M&APw-ll Ordner", "Müll Ordner", nil}, // captured from Cyrus 3.6
		{"&-", "&", nil},
		{"A&-B", "A&B", nil},
		{"~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語", nil}, // RFC 3501 §5.1.3
		{"&2D3eAA-", "\U0001F600", nil},                                // surrogate pair
		{"&AOQA5A-", "ää", nil},
		{"&AOQ-&AOQ-", "ää", nil}, // not canonical, still decodable
		{"&AOQ", "", errUTF7},     // unterminated
		{"&AGE-", "", errUTF7},    // "a" in BASE64
		{"&2D0-", "", errUTF7},    // lone high surrogate
		{"&AO-", "", errUTF7},     // odd octets
		{"&AOQ=-", "", errUTF7},   // padding
		{"&AO/k-", "", errUTF7},   // "/" is ","
		{"caf\xc3\xa9", "", errUTF7},
		{"a\tb", "", errUTF7},
	}
	for _, tt := range tests {
		got, err := DecodeName(tt.in)
		if !errors.Is(err, tt.wantErr) || got != tt.want {
			t.Errorf("DecodeName(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestEncodeName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"INBOX", "INBOX"},
		{"Müll Ordner", "M&APw-ll Ordner"},
		{"A&B", "A&-B"},
		{"~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"},
		{"ää", "&AOQA5A-"},
		{"\U0001F600", "&2D3eAA-"},
		{"a\tb", "a&AAk-b"},
	}
	for _, tt := range tests {
		if got := EncodeName(tt.in); got != tt.want {
			t.Errorf("EncodeName(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzDecodeName(f *testing.F) {
	for _, s := range []string{"INBOX", "M&APw-ll Ordner", "&-", "&U,BTFw-/&ZeVnLIqe-", "&2D3eAA-", "&AOQ-&AOQ-", "&AGE-", "&2D0-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		dec, err := DecodeName(in)
		if err != nil {
			return
		}
		if !utf8.ValidString(dec) {
			t.Fatalf("DecodeName(%q) = %q: not UTF-8", in, dec)
		}
		// Property: what decodes re-encodes to something that decodes to
		// the same name (merged shifts may change the bytes).
		enc := EncodeName(dec)
		again, err := DecodeName(enc)
		if err != nil || again != dec {
			t.Fatalf("DecodeName(%q) = %q, re-encoded %q decodes to %q, %v", in, dec, enc, again, err)
		}
	})
}
