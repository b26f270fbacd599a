package events

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/store"
)

// The -update flag rewrites golden files; registered only if another test
// file of the package has not done so already.
var _ = func() bool {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite golden files under testdata")
	}
	return true
}()

func updateGolden() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// testReceived is the arrival time of test datagrams without a timestamp.
var testReceived = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func testParser(t testing.TB, mod func(*ParseOptions)) *Parser {
	t.Helper()
	c, err := store.NewCanon("example.com", "+")
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultParseOptions()
	if mod != nil {
		mod(&o)
	}
	p, err := NewParser(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// wire frames an event body as Cyrus's notify() sends it (§1.3).
func wire(body []byte) []byte {
	b := []byte("pusher\x00EVENT\x00\x00\x00\x000\x00")
	b = append(b, body...)
	return append(b, 0)
}

// goldenEvent shows Readers, which Event keeps out of its JSON.
type goldenEvent struct {
	Event
	Readers []string `json:"readers"`
}

type goldenResult struct {
	Events []goldenEvent `json:"events,omitempty"`
	Error  string        `json:"error,omitempty"`
}

// TestParseGolden parses every testdata/events/*.json body, framed as a
// datagram, and compares with testdata/events/*.golden (-update rewrites).
// The bodies are the verified payloads of events-anchors §1.3 and events
// of the actions it lists.
func TestParseGolden(t *testing.T) {
	p := testParser(t, nil)
	files, err := filepath.Glob("testdata/events/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			evs, err := p.ParseDatagram(wire(body), testReceived)
			var res goldenResult
			if err != nil {
				res.Error = err.Error()
			}
			for _, ev := range evs {
				res.Events = append(res.Events, goldenEvent{ev, ev.Readers})
				checkInvariants(t, ev)
			}
			got, _ := json.MarshalIndent(res, "", "  ")
			got = append(got, '\n')
			golden := strings.TrimSuffix(f, ".json") + ".golden"
			if updateGolden() {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if string(got) != string(want) {
				t.Errorf("%s: got\n%s\nwant\n%s", name, got, want)
			}
			// No subject or sender reaches an Event, whatever Cyrus sent.
			for _, leak := range []string{"secret subject", "outside.org", "midset", "<2026"} {
				if strings.Contains(string(got), leak) {
					t.Errorf("%s: output contains %q", name, leak)
				}
			}
		})
	}
}

// checkInvariants are the authorisation rules every Event obeys.
func checkInvariants(t testing.TB, ev Event) {
	t.Helper()
	for _, r := range ev.Readers {
		if r == "anyone" || r == "anonymous" || strings.HasPrefix(r, "anyone@") || strings.HasPrefix(r, "anonymous@") ||
			strings.HasPrefix(r, "group:") || !strings.Contains(r, "@") {
			t.Errorf("%s %s: reader %q", ev.CyrusEvent, ev.Mailbox, r)
		}
	}
	if ev.Account != "" && ev.Type != TypeMailboxSubscription && !slices.Contains(ev.Readers, ev.Account) {
		t.Errorf("%s %s: readers %q lack the owner %s", ev.CyrusEvent, ev.Mailbox, ev.Readers, ev.Account)
	}
	if !slices.IsSorted(ev.Readers) {
		t.Errorf("readers not sorted: %q", ev.Readers)
	}
}

func TestParseErrors(t *testing.T) {
	p := testParser(t, nil)
	for _, tt := range []struct {
		name, body string
		want       error
		reason     string
	}{
		{"not json", `{"event":`, ErrMalformed, ""},
		{"array", `[1,2]`, ErrMalformed, ""},
		{"no name", `{"uri":"imap://h/user/alice"}`, ErrMalformed, ""},
		{"name not string", `{"event":7,"uri":"imap://h/user/alice"}`, ErrMalformed, ""},
		{"no uri", `{"event":"MessageNew"}`, ErrMalformed, ""},
		{"http uri", `{"event":"MessageNew","uri":"http://h/user/alice"}`, ErrMalformed, ""},
		{"server only", `{"event":"MessageNew","uri":"imap://h/"}`, ErrMalformed, ""},
		{"bad owner", `{"event":"MessageNew","uri":"imap://h/user/al%20ice"}`, ErrMalformed, ""},
		{"control char", `{"event":"MessageNew","uri":"imap://h/user/alice/a%0Ab"}`, ErrMalformed, ""},
		{"bad utf8", `{"event":"MessageNew","uri":"imap://h/user/alice/%FF"}`, ErrMalformed, ""},
		{"bad escape", `{"event":"MessageNew","uri":"imap://h/user/alice/%G1"}`, ErrMalformed, ""},
		{"bad uidvalidity", `{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=x"}`, ErrMalformed, ""},
		{"empty level", `{"event":"MessageNew","uri":"imap://h/user//x"}`, ErrMalformed, ""},
		{"logout", `{"event":"Logout","user":"alice"}`, ErrIgnored, ReasonEventType},
		{"unknown", `{"event":"vnd.future.Thing","uri":"imap://h/user/alice"}`, ErrIgnored, ReasonEventType},
		{"addressbook", `{"event":"MessageNew","vnd.cmu.mbtype":"a","uri":"imap://h/user/alice"}`, ErrIgnored, ReasonMailboxType},
		{"deleted", `{"event":"MailboxDelete","uri":"imap://h/DELETED/user/alice/X/5F3A2B1C"}`, ErrIgnored, ReasonDeleted},
		{"sieve", `{"event":"MailboxModseq","uri":"imap://h/user;UIDVALIDITY=5"}`, ErrIgnored, ReasonNoOwner},
	} {
		t.Run(tt.name, func(t *testing.T) {
			evs, err := p.Parse([]byte(tt.body), testReceived)
			if !errors.Is(err, tt.want) || evs != nil {
				t.Fatalf("Parse(%s) = %v, %v; want %v", tt.body, evs, err, tt.want)
			}
			if ie, ok := errors.AsType[*IgnoredError](err); ok != (tt.reason != "") || ok && ie.Reason != tt.reason {
				t.Errorf("Parse(%s): %v, want reason %q", tt.body, err, tt.reason)
			}
		})
	}
}

func TestParseDatagramClass(t *testing.T) {
	p := testParser(t, nil)
	b, err := os.ReadFile("testdata/datagrams/sieve-notify.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ParseDatagram(b, testReceived); !errors.Is(err, ErrIgnored) {
		t.Errorf("SIEVE datagram: %v, want ErrIgnored", err)
	}
	if _, err := p.ParseDatagram([]byte("x\x00EVENT\x00"), testReceived); !errors.Is(err, ErrDatagramFraming) {
		t.Errorf("truncated datagram: %v, want ErrDatagramFraming", err)
	}
}

func TestParseURI(t *testing.T) {
	for _, tt := range []struct {
		name, uri string
		alt       bool
		sep       string
		want      MailboxRef
	}{
		{"inbox", "imap://h/user/alice", false, "/", MailboxRef{Account: "alice@example.com", Mailbox: "INBOX"}},
		{"subfolder", "imap://h/user/alice/Projects;UIDVALIDITY=1795314938", false, "/",
			MailboxRef{Account: "alice@example.com", Mailbox: "INBOX/Projects", UIDValidity: 1795314938}},
		{"altnamespace", "imap://h/user/alice/Projects/2026", true, "/",
			MailboxRef{Account: "alice@example.com", Mailbox: "Projects/2026"}},
		{"altnamespace inbox", "imap://h/user/alice", true, "/", MailboxRef{Account: "alice@example.com", Mailbox: "INBOX"}},
		{"other domain inbox", "imap://cyruslab.localhost/user/carol%40other.org;UIDVALIDITY=1795314863/;UID=2", false, "/",
			MailboxRef{Account: "carol@other.org", Mailbox: "INBOX", UIDValidity: 1795314863, UID: 2}},
		{"other domain subfolder", "imap://h/user/carol/Work/Q1%40other.org", false, "/",
			MailboxRef{Account: "carol@other.org", Mailbox: "INBOX/Work/Q1"}},
		{"default domain spelled out", "imap://h/user/Alice@Example.COM", false, "/",
			MailboxRef{Account: "alice@example.com", Mailbox: "INBOX"}},
		{"uid without uidvalidity", "imap://h/user/alice/;UID=4", false, "/",
			MailboxRef{Account: "alice@example.com", Mailbox: "INBOX", UID: 4}},
		{"utf8", "imap://h/user/alice/M%C3%BCll%20Ordner", false, "/",
			MailboxRef{Account: "alice@example.com", Mailbox: "INBOX/Müll Ordner"}},
		{"utf8 cjk", "imap://h/user/alice/%E6%97%A5%E6%9C%AC", false, "/",
			MailboxRef{Account: "alice@example.com", Mailbox: "INBOX/日本"}},
		{"shared", "imap://h/shared/team;UIDVALIDITY=9", false, "/", MailboxRef{Mailbox: "shared/team", UIDValidity: 9}},
		{"shared other domain", "imap://h/shared/team%40Other.org", false, "/", MailboxRef{Mailbox: "shared/team@other.org"}},
		{"shared default domain", "imap://h/shared/team@example.com", false, "/", MailboxRef{Mailbox: "shared/team"}},
		{"netnews separator", "imap://h/user.john^doe.Sent@other.org", false, ".",
			MailboxRef{Account: "john.doe@other.org", Mailbox: "INBOX.Sent"}},
		{"scheme case", "IMAP://h/user/alice", false, "/", MailboxRef{Account: "alice@example.com", Mailbox: "INBOX"}},
		{"search ignored", "imap://h/user/alice?SUBJECT%20x", false, "/", MailboxRef{Account: "alice@example.com", Mailbox: "INBOX"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := testParser(t, func(o *ParseOptions) { o.AltNamespace, o.HierarchySep = tt.alt, tt.sep })
			got, err := p.ParseURI(tt.uri)
			if err != nil || got != tt.want {
				t.Errorf("ParseURI(%q) = %+v, %v; want %+v", tt.uri, got, err, tt.want)
			}
		})
	}
}

func TestACLReaders(t *testing.T) {
	c, err := store.NewCanon("example.com", "+")
	if err != nil {
		t.Fatal(err)
	}
	const alice = "alice@example.com"
	for _, tt := range []struct {
		name, owner, acl string
		want             []string
		ok               bool
	}{
		{"owner only", alice, "alice\tlrswipkxtecdan\t", []string{alice}, true},
		{"reader", alice, "alice\tlrswipkxtecdan\tbob\tlr\t", []string{alice, "bob@example.com"}, true},
		{"lookup only", alice, "alice\tlrswipkxtecdan\tbob\tl\t", []string{alice}, true},
		{"read only", alice, "alice\tlrswipkxtecdan\tbob\tr\t", []string{alice}, true},
		{"negative r", alice, "alice\tlrswipkxtecdan\tbob\tlrs\t-bob\tr\t", []string{alice}, true},
		{"negative first", alice, "-bob\tl\tbob\tlrs\t", []string{alice}, true},
		{"negative other right", alice, "bob\tlrs\t-bob\ts\t", []string{alice, "bob@example.com"}, true},
		{"anyone", alice, "alice\tlrswipkxtecdan\tanyone\tlr\tanonymous\tlr\t", []string{alice}, true},
		{"group", alice, "group:staff\tlrs\t", []string{alice}, true},
		{"other domain", alice, "carol@Other.ORG\tlr\t", []string{alice, "carol@other.org"}, true},
		{"owner revoked stays", alice, "alice\t\t", []string{alice}, true},
		{"no trailing tab", alice, "alice\tlr\tbob\tlr", []string{alice, "bob@example.com"}, true},
		{"duplicate", alice, "bob\tl\tbob\tr\t", []string{alice, "bob@example.com"}, true},
		{"invalid id dropped", alice, "bad id\tlr\tbob\tlr\t", []string{alice, "bob@example.com"}, true},
		{"shared", "", "admin\tlrswipkxtecda\tbob\tlrs\tanyone\tlrs\t", []string{"admin@example.com", "bob@example.com"}, true},
		{"missing", alice, "", []string{alice}, false},
		{"odd fields", alice, "alice\tlr\tbob", []string{alice}, false},
		{"bad rights", alice, "bob\tLR!\t", []string{alice}, false},
		{"control", alice, "b\x01b\tlr\t", []string{alice}, false},
		{"shared unreadable", "", "x", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ACLReaders(c, tt.owner, tt.acl)
			if !slices.Equal(got, tt.want) || ok != tt.ok {
				t.Errorf("ACLReaders(%q, %q) = %q, %v; want %q, %v", tt.owner, tt.acl, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseOptionsValidate(t *testing.T) {
	if err := DefaultParseOptions().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	bad := ParseOptions{HierarchySep: ":", MailboxTypes: []string{"email"}, DeletedPrefix: "a/b"}
	err := bad.Validate()
	for _, key := range []string{"hierarchy_separator", "mailbox_types", "deleted_prefix"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Validate(%+v) = %v, want a %s problem", bad, err, key)
		}
	}
}
