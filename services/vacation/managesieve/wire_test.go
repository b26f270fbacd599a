package managesieve

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// cyrusGreeting is timsieved 3.6.1's greeting as captured in the lab
// (cyrus-lab-facts.md §5, which leaves out the VERSION line that
// integration_test.go sees), without TLS configured.
const cyrusGreeting = "\"IMPLEMENTATION\" \"Cyrus timsieved 3.6.1-Debian-3.6.1-4+deb12u5\"\r\n" +
	"\"VERSION\" \"1.0\"\r\n" +
	"\"SASL\" \"PLAIN LOGIN\"\r\n" +
	"\"SIEVE\" \"encoded-character comparator-i;ascii-numeric fileinto reject ereject vacation vacation-seconds " +
	"notify enotify include editheader vnd.cyrus.snooze vnd.cyrus.imip envelope environment body imap4flags " +
	"date ihave mailbox mboxmetadata servermetadata duplicate vnd.cyrus.jmapquery relational regex extlists " +
	"subaddress copy index variables redirect-deliverby redirect-dsn special-use fcc mailboxid\"\r\n" +
	"\"NOTIFY\" \"mailto\"\r\n" +
	"\"EXTLISTS\" \"urn:ietf:params:sieve:addrbook\"\r\n" +
	"\"UNAUTHENTICATE\"\r\n" +
	"OK\r\n"

func str(s string) token  { return token{tString, s} }
func atom(s string) token { return token{tAtom, s} }

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name, in string
		want     *response
		wantErr  error
	}{
		{"ok", "OK\r\n", &response{kind: "OK"}, nil},
		{"ok lower case", "ok \"fine\"\r\n", &response{kind: "OK", msg: "fine"}, nil},
		{"no with code and text", "NO (ACTIVE) \"Active script cannot be deleted\"\r\n",
			&response{kind: "NO", code: "ACTIVE", msg: "Active script cannot be deleted"}, nil},
		{"nested code", "NO (QUOTA/MAXSCRIPTS) \"You are only allowed 5 scripts on this server\"\r\n",
			&response{kind: "NO", code: "QUOTA/MAXSCRIPTS", msg: "You are only allowed 5 scripts on this server"}, nil},
		{"code lower case", "NO (quota/maxsize)\r\n", &response{kind: "NO", code: "QUOTA/MAXSIZE"}, nil},
		{"code with string", "OK (SASL \"cnNwYXV0aD0=\")\r\n", &response{kind: "OK", code: `SASL "cnNwYXV0aD0="`}, nil},
		// timsieved answers a tagged NOOP with its tag as a literal.
		{"code with literal", "OK (TAG {3}\r\nx\"y) \"Done\"\r\n", &response{kind: "OK", code: `TAG "x\"y"`, msg: "Done"}, nil},
		{"code with list", "NO (X-FOO (1 \"two\" (3 a))) \"m\"\r\n", &response{kind: "NO", code: `X-FOO (1 "two" (3 a))`, msg: "m"}, nil},
		{"bye referral", "BYE (REFERRAL \"sieve://other\") \"Try Remote.\"\r\n",
			&response{kind: "BYE", code: `REFERRAL "sieve://other"`, msg: "Try Remote."}, nil},
		// Cyrus's parse errors come as a literal ending in CRLF.
		{"literal text", "NO {22}\r\nline 3: syntax error\r\n\r\n", &response{kind: "NO", msg: "line 3: syntax error\r\n"}, nil},
		{"escapes", "NO \"a \\\"b\\\" \\\\c\"\r\n", &response{kind: "NO", msg: `a "b" \c`}, nil},
		{"utf-8 text", "NO \"Skript gelöscht\"\r\n", &response{kind: "NO", msg: "Skript gelöscht"}, nil},
		{"listscripts", "\"a\"\r\n\"b c\" ACTIVE\r\n{3}\r\nd\re active\r\nOK\r\n", &response{kind: "OK", data: [][]token{
			{str("a")}, {str("b c"), atom("ACTIVE")}, {str("d\re"), atom("active")}}}, nil},
		{"getscript", "{9}\r\nkeep;\r\n.\n\r\nOK\r\n", &response{kind: "OK", data: [][]token{{str("keep;\r\n.\n")}}}, nil},
		{"client literal form", "NO {1+}\r\nx\r\n", &response{kind: "NO", msg: "x"}, nil},
		{"capabilities", "\"VERSION\" \"1.0\"\r\n\"STARTTLS\"\r\nOK\r\n", &response{kind: "OK", data: [][]token{
			{str("VERSION"), str("1.0")}, {str("STARTTLS")}}}, nil},

		{"clean eof", "", nil, io.EOF},
		{"eof in line", "OK", nil, io.ErrUnexpectedEOF},
		{"eof after data", "\"a\"\r\n", nil, io.ErrUnexpectedEOF},
		{"eof in literal", "NO {10}\r\nabc", nil, io.ErrUnexpectedEOF},
		{"bare lf", "OK\n", nil, errSyntax},
		{"bare cr", "OK\rx\r\n", nil, errSyntax},
		{"empty line", "\r\nOK\r\n", nil, errSyntax},
		{"unknown final", "MAYBE\r\n", nil, errSyntax},
		{"atom text", "OK Done\r\n", nil, errSyntax},
		{"two texts", "OK \"a\" \"b\"\r\n", nil, errSyntax},
		{"unclosed code", "NO (ACTIVE \"x\"\r\n", nil, errSyntax},
		{"empty code", "NO () \"x\"\r\n", nil, errSyntax},
		{"code not atom", "NO (\"x\")\r\n", nil, errSyntax},
		{"bad escape", "NO \"\\n\"\r\n", nil, errSyntax},
		{"cr in quoted", "NO \"a\rb\"\r\n", nil, errSyntax},
		{"nul outside", "OK \x00\r\n", nil, errSyntax},
		{"8bit outside", "OK \xc3\xa9\r\n", nil, errSyntax},
		{"literal no size", "NO {}\r\n", nil, errSyntax},
		{"literal bad size", "NO {1x}\r\n", nil, errSyntax},
		{"literal no crlf", "NO {1}x\r\n", nil, errSyntax},
		{"literal size digits", "NO {00000000001}\r\nx\r\n", nil, errSyntax},
		{"literal too large", "{1048577}\r\n", nil, errTooLong},
		{"line too long", strings.Repeat("a", maxLine+1) + "\r\n", nil, errTooLong},
		{"quoted too long", "\"" + strings.Repeat("a", maxLine) + "\"\r\nOK\r\n", nil, errTooLong},
		{"too many tokens", strings.Repeat("(", maxTokens+1) + "\r\n", nil, errTooLong},
		{"too many tokens over lines", strings.Repeat("\"a\" b c d e f\r\n", maxTokens/6+1) + "OK\r\n", nil, errTooLong},
		{"too many lines", strings.Repeat("\"a\"\r\n", maxDataLines+1) + "OK\r\n", nil, errTooLong},
		{"response too large", strings.Repeat("{1048576}\r\n"+strings.Repeat("x", 1<<20)+"\r\n", 4) + "OK\r\n", nil, errTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readResponse(newReader(strings.NewReader(tt.in)))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("readResponse: %v; want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("readResponse(%.60q) = %+v; want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// TestReadResponseStops checks that a rejected reply was not read past its
// limit: a too-large literal is refused before its body is read.
func TestReadResponseStops(t *testing.T) {
	in := strings.NewReader("{2000000}\r\n" + strings.Repeat("x", 100))
	r := newReader(in)
	if _, err := readResponse(r); !errors.Is(err, errTooLong) {
		t.Fatalf("readResponse: %v; want errTooLong", err)
	}
	if n := r.br.Buffered(); n != 100 {
		t.Errorf("%d bytes of the body left buffered; want all 100 unread", n)
	}
}

func TestParseCapabilities(t *testing.T) {
	resp, err := readResponse(newReader(strings.NewReader(
		"\"implementation\" \"X\"\r\n\"MAXREDIRECTS\" \"5\"\r\n\"LANGUAGE\" \"de\"\r\n\"OWNER\" \"alice@example.com\"\r\n" +
			"\"VERSION\" \"1.0\"\r\n\"STARTTLS\"\r\n\"NOTIFY\" \"mailto xmpp\"\r\n\"SIEVE\" \"\"\r\nOK\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseCapabilities(resp.data)
	if err != nil {
		t.Fatal(err)
	}
	want := Capabilities{
		Implementation: "X", MaxRedirects: 5, Language: "de", Owner: "alice@example.com", Version: "1.0",
		StartTLS: true, Notify: []string{"mailto", "xmpp"}, Sieve: []string{},
		Raw: map[string]string{"IMPLEMENTATION": "X", "MAXREDIRECTS": "5", "LANGUAGE": "de", "OWNER": "alice@example.com",
			"VERSION": "1.0", "STARTTLS": "", "NOTIFY": "mailto xmpp", "SIEVE": ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseCapabilities = %+v\nwant %+v", got, want)
	}
	for _, bad := range [][]token{
		{str("A"), str("b"), str("c")},
		{str("A"), atom("b")},
	} {
		if _, err := parseCapabilities([][]token{bad}); !errors.Is(err, errSyntax) {
			t.Errorf("parseCapabilities(%v) = %v; want errSyntax", bad, err)
		}
	}
}

func TestAppendString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"vacation", `"vacation"`},
		{"", `""`},
		{`a"b\c`, `"a\"b\\c"`},
		{"with space", `"with space"`},
		{"gelöscht", "{9+}\r\ngelöscht"}, // octets, not runes
		{"a\r\nb", "{4+}\r\na\r\nb"},
		{"nul\x00", "{4+}\r\nnul\x00"},
		{"tab\t", "{4+}\r\ntab\t"},
	}
	for _, tt := range tests {
		if got := string(appendString(nil, tt.in)); got != tt.want {
			t.Errorf("appendString(%q) = %q; want %q", tt.in, got, tt.want)
		}
		// Whatever we send, we read back the same.
		got, err := readResponse(newReader(strings.NewReader("OK " + string(appendString(nil, tt.in)) + "\r\n")))
		if err != nil || got.msg != tt.in {
			t.Errorf("reading back %q: %+v, %v", tt.in, got, err)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"vacation", "sidecar vacation", "Urlaub-ü", "日本", "a/b", "urn:ietf:params:jmap:vacationresponse"} {
		if err := checkName(ok); err != nil {
			t.Errorf("checkName(%q) = %v; want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "a\nb", "a\rb", "nul\x00", "del\x7f", "c1\u0085", "ls\u2028", "ps\u2029", "\xff", `q"`, `b\`} {
		if err := checkName(bad); !errors.Is(err, errArg) {
			t.Errorf("checkName(%q) = %v; want errArg", bad, err)
		}
	}
}
