package imap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name, in string
		want     *response
		wantErr  error
	}{
		{"greeting", "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n",
			&response{tag: "*", status: "OK", code: "CAPABILITY", args: []string{"IMAP4rev1", "SASL-IR", "AUTH=PLAIN"}, text: "ready"}, nil},
		{"tagged no", "s1 NO [AUTHENTICATIONFAILED] nope\r\n",
			&response{tag: "s1", status: "NO", code: "AUTHENTICATIONFAILED", text: "nope"}, nil},
		{"text with brackets and quotes", "s2 OK Success (no protection) SESSIONID=<a-1\"\r\n",
			&response{tag: "s2", status: "OK", text: `Success (no protection) SESSIONID=<a-1"`}, nil},
		{"status without text", "s3 OK\r\n", &response{tag: "s3", status: "OK"}, nil},
		{"lower-case status", "* bye going away\r\n", &response{tag: "*", status: "BYE", text: "going away"}, nil},
		{"continuation", "+ \r\n", &response{tag: "+"}, nil},
		{"continuation no SP", "+\r\n", &response{tag: "+"}, nil},
		{"continuation text", "+ Ready\r\n", &response{tag: "+", text: "Ready"}, nil},
		{"list", "* LIST (\\HasNoChildren) \"/\" INBOX/Projects\r\n",
			&response{tag: "*", name: "LIST", fields: []value{
				{kind: vList, list: []value{{kind: vAtom, s: `\HasNoChildren`}}},
				{kind: vString, s: "/"}, {kind: vAtom, s: "INBOX/Projects"}}}, nil},
		{"list literal name nil delim", "* LIST () NIL {5}\r\na b\"c\r\n",
			&response{tag: "*", name: "LIST", fields: []value{
				{kind: vList}, {kind: vNil}, {kind: vString, s: "a b\"c"}}}, nil},
		{"quoted escapes", "* LIST () \"/\" \"a\\\\b\\\"c\"\r\n",
			&response{tag: "*", name: "LIST", fields: []value{
				{kind: vList}, {kind: vString, s: "/"}, {kind: vString, s: `a\b"c`}}}, nil},
		{"exists skipped", "* 3 EXISTS\r\n", &response{tag: "*", num: "3", name: "EXISTS"}, nil},
		{"fetch literal skipped", "* 1 FETCH (BODY[] {7}\r\nab)\r\ncd)\r\n", &response{tag: "*", num: "1", name: "FETCH"}, nil},
		{"unknown with text", "* XFOO free \"text (\r\n", &response{tag: "*", name: "XFOO"}, nil},
		{"clean eof", "", nil, io.EOF},
		{"eof in line", "* LIST (", nil, io.ErrUnexpectedEOF},
		{"eof in literal", "* LIST () NIL {5}\r\nab", nil, io.ErrUnexpectedEOF},
		{"bare LF", "* OK hi\n", nil, errSyntax},
		{"unbalanced open", "* LIST (\r\n", nil, errSyntax},
		{"unbalanced close", "* LIST )\r\n", nil, errSyntax},
		{"bad escape", "* LIST () \"/\" \"a\\b\"\r\n", nil, errSyntax},
		{"CR in quoted", "* LIST () \"/\" \"a\rb\"\r\n", nil, errSyntax},
		{"tagged data", "s1 LIST () NIL x\r\n", nil, errSyntax},
		{"bad tag", "s(1 OK\r\n", nil, errSyntax},
		{"empty line", "\r\n", nil, errSyntax},
		{"number only", "* 3\r\n", nil, errSyntax},
		{"literal too large", "* LIST () NIL {1048577}\r\n", nil, errTooLong},
		{"literal size digits", "* LIST () NIL {12345678901}\r\n", nil, errSyntax},
		{"skipped literal too large", "* 1 FETCH (BODY[] {1048577}\r\n", nil, errTooLong},
		{"line too long", "* OK " + strings.Repeat("x", maxLine) + "\r\n", nil, errTooLong},
		{"too deep", "* LIST " + strings.Repeat("(", maxDepth+1) + "\r\n", nil, errTooLong},
		{"too many tokens", "* LIST (" + strings.Repeat("a ", maxTokens) + ")\r\n", nil, errTooLong},
		{"bad code", "* OK [CAPABILITY x\r\n", nil, errSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readResponse(newReader(strings.NewReader(tt.in)))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("readResponse(%q) error = %v; want %v", tt.in, err, tt.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("readResponse(%q) =\n %+v\nwant\n %+v", tt.in, got, tt.want)
			}
		})
	}
}

// The command budget counts literals too.
func TestReadResponseCommandBudget(t *testing.T) {
	r := newReader(strings.NewReader("* LIST () NIL {10}\r\n0123456789\r\n"))
	r.left = 15
	if _, err := readResponse(r); !errors.Is(err, errTooLong) {
		t.Fatalf("err = %v; want errTooLong", err)
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		name, in string
		want     Mailbox
		wantErr  bool
	}{
		{"plain", `* LIST (\HasNoChildren) "/" INBOX/Projects`, Mailbox{Name: "INBOX/Projects", Raw: "INBOX/Projects", Delim: "/", Attrs: []string{`\HasNoChildren`}}, false},
		{"inbox any case", `* LIST () "/" inbox`, Mailbox{Name: "INBOX", Raw: "inbox", Delim: "/"}, false},
		{"utf7", `* LIST () "/" "INBOX/M&APw-ll Ordner"`, Mailbox{Name: "INBOX/Müll Ordner", Raw: "INBOX/M&APw-ll Ordner", Delim: "/"}, false},
		{"bad utf7 kept raw", `* LIST () "/" "a&b"`, Mailbox{Name: "a&b", Raw: "a&b", Delim: "/"}, false},
		{"nil delim", `* LIST (\Noselect) NIL foo`, Mailbox{Name: "foo", Raw: "foo", Attrs: []string{`\Noselect`}}, false},
		{"extended", `* LIST (\Subscribed) "/" Foo ("CHILDINFO" ("SUBSCRIBED") "OLDNAME" ("Bar"))`,
			Mailbox{Name: "Foo", Raw: "Foo", Delim: "/", Attrs: []string{`\Subscribed`}, OldName: "Bar"}, false},
		{"two char delim", `* LIST () "//" foo`, Mailbox{}, true},
		{"no name", `* LIST () "/"`, Mailbox{}, true},
		{"list name", `* LIST () "/" (x)`, Mailbox{}, true},
		{"odd extended", `* LIST () "/" x ("CHILDINFO")`, Mailbox{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := readResponse(newReader(strings.NewReader(tt.in + "\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseList(resp.fields)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseList(%q) error = %v; want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseList(%q) = %+v; want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name, in, wantName string
		want               Status
		wantErr            bool
	}{
		{"cyrus", `* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1795332797 UNSEEN 1 HIGHESTMODSEQ 2)`, "INBOX",
			Status{Has: StatusMessages | StatusUIDNext | StatusUIDValidity | StatusUnseen | StatusHighestModseq, Messages: 1, UIDNext: 2, UIDValidity: 1795332797, Unseen: 1, HighestModseq: 2}, false},
		{"mailboxid skipped", `* STATUS "a b" (MESSAGES 0 MAILBOXID (F2212ea87) SIZE 12)`, "a b",
			Status{Has: StatusMessages}, false},
		{"big modseq", `* STATUS x (HIGHESTMODSEQ 9223372036854775807)`, "x",
			Status{Has: StatusHighestModseq, HighestModseq: 1<<63 - 1}, false},
		{"modseq over 63 bits", `* STATUS x (HIGHESTMODSEQ 9223372036854775808)`, "", Status{}, true},
		{"uint32 overflow", `* STATUS x (MESSAGES 4294967296)`, "", Status{}, true},
		{"negative", `* STATUS x (MESSAGES -1)`, "", Status{}, true},
		{"odd", `* STATUS x (MESSAGES)`, "", Status{}, true},
		{"no list", `* STATUS x MESSAGES 1`, "", Status{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := readResponse(newReader(strings.NewReader(tt.in + "\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			name, got, err := parseStatus(resp.fields)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStatus(%q) error = %v; want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && (name != tt.wantName || got != tt.want) {
				t.Errorf("parseStatus(%q) = %q, %+v; want %q, %+v", tt.in, name, got, tt.wantName, tt.want)
			}
		})
	}
}

func TestParseNamespace(t *testing.T) {
	tests := []struct {
		in   string
		want Namespaces
	}{
		{`* NAMESPACE (("INBOX/" "/")) (("user/" "/")) (("" "/"))`, Namespaces{
			Personal: []Namespace{{"INBOX/", "/"}}, Other: []Namespace{{"user/", "/"}}, Shared: []Namespace{{"", "/"}}}},
		{`* NAMESPACE (("" "/")) (("Other Users/" "/")) (("Shared Folders/" "/"))`, Namespaces{
			Personal: []Namespace{{"", "/"}}, Other: []Namespace{{"Other Users/", "/"}}, Shared: []Namespace{{"Shared Folders/", "/"}}}},
		{`* NAMESPACE (("" NIL "X-EXT" ("a"))) NIL NIL`, Namespaces{Personal: []Namespace{{"", ""}}}},
	}
	for _, tt := range tests {
		resp, err := readResponse(newReader(strings.NewReader(tt.in + "\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseNamespace(resp.fields)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseNamespace(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// TestCyrusTranscripts parses what Cyrus 3.6.1 answered in the lab
// (altnamespace no and yes): greeting, AUTHENTICATE, NAMESPACE, LIST-STATUS
// with LIST-METADATA, LOGOUT.
func TestCyrusTranscripts(t *testing.T) {
	want := map[string][]string{
		"cyrus36-no.txt":  {"INBOX", "INBOX/Müll Ordner", "INBOX/Projects", "INBOX/Sp ace", "shared", "shared/team"},
		"cyrus36-yes.txt": {"INBOX", "Müll Ordner", "Projects", "Sp ace", "Shared Folders/shared", "Shared Folders/shared/team"},
	}
	for file, names := range want {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", file))
			if err != nil {
				t.Fatal(err)
			}
			r := newReader(bytes.NewReader(data))
			var l lister
			var tagged int
			for {
				resp, err := readResponse(r)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if resp.tag != "*" {
					tagged++
				}
				if err := l.add(resp); err != nil {
					t.Fatal(err)
				}
			}
			if tagged != 4 {
				t.Errorf("%d tagged responses; want 4", tagged)
			}
			var got []string
			for _, m := range l.boxes {
				got = append(got, m.Name)
				if m.Status == nil || m.Status.Has != StatusMessages|StatusUIDNext|StatusUIDValidity|StatusUnseen|StatusHighestModseq || m.Status.UIDValidity == 0 {
					t.Errorf("%s: status %+v", m.Name, m.Status)
				}
				if id := m.Metadata[UniqueIDEntry]; len(id) != 24 {
					t.Errorf("%s: uniqueid %q", m.Name, id)
				}
			}
			if !reflect.DeepEqual(got, names) {
				t.Errorf("names %q; want %q", got, names)
			}
			if inbox := l.boxes[0].Status; inbox.Messages != 1 || inbox.Unseen != 1 || inbox.UIDNext != 2 || inbox.HighestModseq != 2 {
				t.Errorf("INBOX status %+v", inbox)
			}
		})
	}
}

// FuzzReadResponse feeds arbitrary server bytes through the reader and the
// LIST collector: rejecting is fine; panicking, hanging or over-allocating
// is not.
func FuzzReadResponse(f *testing.F) {
	for _, file := range []string{"cyrus36-no.txt", "cyrus36-yes.txt"} {
		data, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			f.Add(append(sc.Bytes(), "\r\n"...))
		}
	}
	for _, s := range []string{
		"* LIST () NIL {5}\r\na b\"c\r\n", "* LIST (\\Subscribed) \"/\" Foo (\"CHILDINFO\" (\"SUBSCRIBED\") \"OLDNAME\" (\"Bar\"))\r\n",
		"* 1 FETCH (BODY[] {7}\r\nab)\r\ncd)\r\n", "+ \r\n", "* NAMESPACE ((\"\" NIL)) NIL NIL\r\n",
		"* STATUS x (MAILBOXID (F1) HIGHESTMODSEQ 9223372036854775807)\r\n", "* METADATA x (\"/a\" NIL \"/b\" {1}\r\nv)\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := newReader(bytes.NewReader(in))
		var l lister
		for range 1000 {
			resp, err := readResponse(r)
			if err != nil {
				return
			}
			if resp.name == "NAMESPACE" {
				parseNamespace(resp.fields) // any result
			}
			if l.add(resp) != nil {
				return
			}
			if len(l.boxes) > len(in) {
				t.Fatalf("%d mailboxes from %d bytes", len(l.boxes), len(in))
			}
		}
	})
}
