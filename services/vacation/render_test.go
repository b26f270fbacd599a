package vacation

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
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

const (
	testRelationHeader = "X-Sidecar-Sender-Relation"
	// trickyText has everything that broke other generators: quotes and
	// backslashes, a lone "." line, a quoted-string breakout, an early
	// CRLF.CRLF, variables and encoded characters, dot runs, bare CR and
	// LF, non-ASCII (NFC and NFD), emoji, RTL and no final line end.
	trickyText = "Quote \" and backslash \\ and \\\" together.\n.\n\"; discard; \"\r\n.\r\n" +
		"${from} ${hex:41} ${unicode:263A} ${subject}\n..two dots\n...three\n.leading dot\n" +
		"Grüße, 日本語, שלום, café and cafe\u0301\nEmoji: 🏖️👍🏽\r" +
		".\r\n; redirect \"attacker@example.net\";\n} else { discard; }\ntext:\nlast line, no line end"
	trickySubject = `Out "until" 15 July \ ${subject} \" 🏖️ Grüße`
)

// renderBaseInput is the golden cases' starting point: scheduled for the first
// half of July 2026, separate replies, the proxy's relation header.
func renderBaseInput() Input {
	return Input{
		Settings: Settings{
			State:        "scheduled",
			Start:        time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC),
			End:          time.Date(2026, 7, 15, 0, 0, 0, 0, time.UTC),
			Subject:      "Out of office until 15 July",
			InternalText: "Hi,\n\nI am away until 15 July. Bob covers for me (bob@example.com).\n\nAlice\n",
			ExternalText: "Thank you for your message. I am out of the office until 15 July\nand will answer after my return.\n",
			Audience:     "all",
			Days:         7,
		},
		User:           "alice@example.com",
		Addresses:      []string{"alice@example.com", "al@example.com", "Alice@Example.com", "sales@example.com"},
		OrgDomains:     []string{"example.com", "example.org"},
		RelationHeader: testRelationHeader,
		Period:         "v42-1782864000",
		Extensions:     DefaultExtensions,
	}
}

// renderCases are the golden cases, testdata/render/<name>.sieve.
func renderCases() []struct {
	name string
	in   Input
} {
	with := func(f func(*Input)) Input {
		in := renderBaseInput()
		f(&in)
		return in
	}
	return []struct {
		name string
		in   Input
	}{
		{"all", renderBaseInput()},
		{"known", with(func(in *Input) { in.Audience = "known" })},
		{"none", with(func(in *Input) { in.Audience = "none" })},
		{"on", with(func(in *Input) { in.State = "on" })}, // Start and End ignored
		{"end_only", with(func(in *Input) { in.Start = time.Time{} })},
		{"start_only", with(func(in *Input) { in.End = time.Time{} })},
		{"envelope", with(func(in *Input) { in.RelationHeader = "" })},
		{"envelope_known_on", with(func(in *Input) { in.RelationHeader, in.Audience, in.State = "", "known", "on" })},
		{"from", with(func(in *Input) { in.From = "alice.out-of-office@example.com" })},
		{"default_days_no_subject", with(func(in *Input) { in.Days, in.Subject = 0, "" })},
		{"tricky", with(func(in *Input) {
			in.Subject = trickySubject
			in.InternalText = trickyText
			in.ExternalText = "External \"; discard; \" text:\r\n.\r\n}\r\nvacation \"x\";\n\n"
		})},
	}
}

func TestRenderGolden(t *testing.T) {
	names := map[string]bool{}
	for _, tc := range renderCases() {
		names[tc.name+".sieve"] = true
		t.Run(tc.name, func(t *testing.T) {
			got, err := Render(tc.in)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			path := filepath.Join("testdata", "render", tc.name+".sieve")
			if updateGolden() {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test ./services/vacation -run TestRenderGolden -update creates it)", err)
			}
			if got != string(want) {
				t.Errorf("Render differs from %s (-update rewrites it):\ngot:\n%s\nwant:\n%s", path, got, want)
			}
			again, _ := Render(tc.in)
			if again != got {
				t.Errorf("second Render differs: output is not deterministic")
			}
			checkRoundTrip(t, tc.in, got)
		})
	}
	// A golden file no case renders is stale.
	files, err := filepath.Glob(filepath.Join("testdata", "render", "*.sieve"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !names[filepath.Base(f)] {
			t.Errorf("%s belongs to no case in renderCases", f)
		}
	}
}

// checkRoundTrip parses script back with the test reader and checks it
// against in: the require list, the actions and their texts and tags.
func checkRoundTrip(t *testing.T, in Input, script string) {
	t.Helper()
	p, err := parseSieve(script)
	if err != nil {
		t.Fatalf("script does not parse: %v\n%s", err, script)
	}
	acts := p.vacations
	wantActs := 2
	if in.Audience == "none" {
		wantActs = 1
	}
	if len(acts) != wantActs {
		t.Fatalf("script has %d vacation actions; want %d\n%s", len(acts), wantActs, script)
	}
	texts := []string{in.InternalText, in.ExternalText}
	for i, a := range acts {
		if want := wantText(texts[i]); a.reason != want {
			t.Errorf("action %d: reason %q; want %q", i, a.reason, want)
		}
		if a.subject != in.Subject || a.from != in.From {
			t.Errorf("action %d: subject %q, from %q; want %q, %q", i, a.subject, a.from, in.Subject, in.From)
		}
		if want := in.Period + []string{"-int", "-ext"}[i]; a.handle != want {
			t.Errorf("action %d: handle %q; want %q", i, a.handle, want)
		}
		wantDays := ""
		if in.Days > 0 {
			wantDays = fmt.Sprint(in.Days)
		}
		if a.days != wantDays {
			t.Errorf("action %d: days %q; want %q", i, a.days, wantDays)
		}
		if len(a.addresses) == 0 || a.addresses[0] != in.User {
			t.Errorf("action %d: addresses %q; want the user first", i, a.addresses)
		}
	}
	used := []string{"vacation"}
	if slices.Contains(p.idents, "currentdate") {
		used = append(used, "date", "relational")
	}
	if slices.Contains(p.idents, "envelope") {
		used = append(used, "envelope")
	}
	if slices.Contains(p.tags, ":list") {
		used = append(used, "extlists")
	}
	if !slices.Equal(p.require, used) {
		t.Errorf("require %q; the script uses %q", p.require, used)
	}
}

var lineEnd = regexp.MustCompile(`\r\n|\r|\n`)

// wantText is the value a text: block must have for text: CRLF line ends
// (from CRLF, CR or LF), exactly one at the end. Written apart from
// normaliseText so that a bug in one shows.
func wantText(text string) string {
	lines := lineEnd.Split(text, -1)
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return strings.Join(lines, "\r\n") + "\r\n"
}

func TestRenderOff(t *testing.T) {
	in := renderBaseInput()
	in.State = "off"
	in.InternalText = "" // nothing else is checked
	if got, err := Render(in); !errors.Is(err, ErrOff) || got != "" {
		t.Errorf("Render(off) = %q, %v; want ErrOff", got, err)
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name    string
		change  func(*Input)
		wantErr error
		want    string // in the message
	}{
		{"unknown state", func(in *Input) { in.State = "enabled" }, errSieveInput, `state: must be "on", "scheduled" or "off", got "enabled"`},
		{"scheduled without bounds", func(in *Input) { in.Start, in.End = time.Time{}, time.Time{} }, errSieveInput, "needs a start or an end"},
		{"end before start", func(in *Input) { in.Start, in.End = in.End, in.Start }, errSieveInput, "end: 2026-07-01T00:00:00Z is not after the start 2026-07-15T00:00:00Z"},
		{"end equals start", func(in *Input) { in.End = in.Start }, errSieveInput, "is not after the start"},
		{"end equals start after truncation", func(in *Input) { in.End = in.Start.Add(999 * time.Millisecond) }, errSieveInput, "is not after the start"},
		{"year 10000", func(in *Input) { in.End = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, errSieveInput, "end: year 10000 is outside 1 to 9999"},
		{"unknown audience", func(in *Input) { in.Audience = "contacts" }, errSieveInput, `audience: must be "all", "known" or "none", got "contacts"`},
		{"empty audience", func(in *Input) { in.Audience = "" }, errSieveInput, `got ""`},
		{"subject LF", func(in *Input) { in.Subject = "a\nBcc: x@y" }, errSieveInput, "subject: contains a line break (CR or LF)"},
		{"subject CR", func(in *Input) { in.Subject = "a\rb" }, errSieveInput, "subject: contains a line break"},
		{"subject tab", func(in *Input) { in.Subject = "a\tb" }, errSieveInput, "subject: contains the control character U+0009"},
		{"subject DEL", func(in *Input) { in.Subject = "a\x7fb" }, errSieveInput, "U+007F"},
		{"subject NUL", func(in *Input) { in.Subject = "a\x00b" }, errSieveInput, "U+0000"},
		{"subject bad UTF-8", func(in *Input) { in.Subject = "caf\xe9" }, errSieveInput, "subject: is not valid UTF-8"},
		{"subject invalid final byte", func(in *Input) { in.Subject = "x\xff" }, errSieveInput, "subject: is not valid UTF-8"},
		{"subject too long", func(in *Input) { in.Subject = strings.Repeat("é", 256) }, errSieveInput, "subject: is longer than 255 characters"},
		{"internal bad UTF-8", func(in *Input) { in.InternalText = "\xc3\x28" }, errSieveInput, "internal text: is not valid UTF-8"},
		{"internal surrogate", func(in *Input) { in.InternalText = "\xed\xa0\x80" }, errSieveInput, "internal text: is not valid UTF-8"},
		{"internal NUL", func(in *Input) { in.InternalText = "a\x00b" }, errSieveInput, "internal text: contains a NUL character"},
		{"internal empty", func(in *Input) { in.InternalText = " \r\n\t" }, errSieveInput, "internal text: is empty"},
		{"external empty", func(in *Input) { in.ExternalText = "" }, errSieveInput, "external text: is empty"},
		{"external empty known", func(in *Input) { in.ExternalText, in.Audience = "", "known" }, errSieveInput, "external text: is empty"},
		{"negative days", func(in *Input) { in.Days = -1 }, errSieveInput, "days: must be 0 (Cyrus's default) to 24855, got -1"},
		{"days wrap in Cyrus", func(in *Input) { in.Days = 24856 }, errSieveInput, "got 24856"},
		{"from with name", func(in *Input) { in.From = "Alice <alice@example.com>" }, errSieveInput, `from: "Alice <alice@example.com>" is not a plain address`},
		{"from injection", func(in *Input) { in.From = "a@b>\r\nBcc: x@y" }, errSieveInput, "from:"},
		{"from list", func(in *Input) { in.From = `a@b", "c@d` }, errSieveInput, "from:"},
		{"no user", func(in *Input) { in.User = "" }, errSieveInput, `user: "" is not a plain address`},
		{"alias without domain", func(in *Input) { in.Addresses = []string{"alice"} }, errSieveInput, `addresses: "alice" is not a plain address`},
		{"empty alias", func(in *Input) { in.Addresses = []string{""} }, errSieveInput, `addresses: "" is not a plain address`},
		{"alias with space", func(in *Input) { in.Addresses = []string{"a b@example.com"} }, errSieveInput, "addresses:"},
		{"alias quoted", func(in *Input) { in.Addresses = []string{`"a"@example.com`} }, errSieveInput, "addresses:"},
		{"alias double dot", func(in *Input) { in.Addresses = []string{"a..b@example.com"} }, errSieveInput, "addresses:"},
		{"alias bad domain", func(in *Input) { in.Addresses = []string{"a@-example.com"} }, errSieveInput, "addresses:"},
		{"alias too long", func(in *Input) { in.Addresses = []string{strings.Repeat("a", 65) + "@example.com"} }, errSieveInput, "addresses:"},
		{"no period", func(in *Input) { in.Period = "" }, errSieveInput, "period: is empty"},
		{"period with LF", func(in *Input) { in.Period = "a\nb" }, errSieveInput, "period: must be printable UTF-8"},
		{"bad header", func(in *Input) { in.RelationHeader = "X Relation" }, errSieveInput, `relation header: "X Relation" is not a header field name`},
		{"header with colon", func(in *Input) { in.RelationHeader = "X-R:" }, errSieveInput, "relation header:"},
		{"no domains", func(in *Input) { in.RelationHeader, in.OrgDomains = "", nil }, errSieveInput, "org domains: none given"},
		{"bad domain", func(in *Input) { in.RelationHeader, in.OrgDomains = "", []string{`example.com"]`} }, errSieveInput, "is not a domain name"},
		{"no extensions", func(in *Input) { in.Extensions = nil }, errSieveExtension, `lacks ["vacation" "date" "relational"], which the script needs`},
		{"no date", func(in *Input) { in.Extensions = withoutExt(DefaultExtensions, "date") }, errSieveExtension, `lacks ["date"]`},
		{"no envelope", func(in *Input) { in.RelationHeader, in.Extensions = "", withoutExt(DefaultExtensions, "envelope") }, errSieveExtension, `lacks ["envelope"]`},
		{"no extlists", func(in *Input) { in.Audience, in.Extensions = "known", withoutExt(DefaultExtensions, "extlists") }, errSieveExtension, `lacks ["extlists"]`},
		{"too large", func(in *Input) { in.InternalText = strings.Repeat("x", maxScriptSize) }, errSieveSize, "vacation script too large: 33"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := renderBaseInput()
			tc.change(&in)
			got, err := Render(in)
			if !errors.Is(err, tc.wantErr) || got != "" {
				t.Fatalf("Render = %q, %v; want error %v", got, err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func withoutExt(list []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(s string) bool { return s == drop })
}

// TestRenderAllErrorsAtOnce: every problem is reported, not the first.
func TestRenderAllErrorsAtOnce(t *testing.T) {
	in := renderBaseInput()
	in.Subject, in.Audience, in.Period, in.Extensions = "a\nb", "everyone", "", nil
	_, err := Render(in)
	for _, want := range []string{"subject:", "audience:", "period:", "lacks"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
}

// TestRenderOnlyNeededExtensions: a server with exactly the extensions a
// script requires is enough, and "on" needs no date extension.
func TestRenderOnlyNeededExtensions(t *testing.T) {
	for _, tc := range renderCases() {
		t.Run(tc.name, func(t *testing.T) {
			script, err := Render(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			p, err := parseSieve(script)
			if err != nil {
				t.Fatal(err)
			}
			in := tc.in
			in.Extensions = p.require
			if again, err := Render(in); err != nil || again != script {
				t.Errorf("with only %q: %v, or a different script", p.require, err)
			}
			if tc.in.State == "on" && slices.Contains(p.require, "date") {
				t.Errorf("an unscheduled vacation requires %q", p.require)
			}
		})
	}
}

func TestRenderSizeLimit(t *testing.T) {
	in := renderBaseInput()
	in.InternalText = "x"
	small, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	// Grow the text until the script is exactly at the limit, then one more.
	in.InternalText = strings.Repeat("x", 1+maxScriptSize-len(small))
	got, err := Render(in)
	if err != nil || len(got) != maxScriptSize {
		t.Fatalf("at the limit: %d bytes, %v; want %d bytes, no error", len(got), err, maxScriptSize)
	}
	in.InternalText += "y"
	_, err = Render(in)
	if want := fmt.Sprintf("%d bytes, the limit is %d", maxScriptSize+1, maxScriptSize); !errors.Is(err, errSieveSize) || !strings.Contains(err.Error(), want) {
		t.Errorf("one byte over: %v; want %q", err, want)
	}
}

func TestRenderDates(t *testing.T) {
	in := renderBaseInput()
	in.Start = time.Date(2026, 7, 1, 2, 0, 0, 999_000_000, time.FixedZone("CEST", 2*3600))
	in.End = time.Date(2026, 7, 14, 23, 59, 59, 0, time.FixedZone("west", -12*3600))
	got, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"ge" "iso8601" "2026-07-01T00:00:00Z"`, `"lt" "iso8601" "2026-07-15T11:59:59Z"`} {
		if !strings.Contains(got, want) {
			t.Errorf("script lacks %s:\n%s", want, got)
		}
	}
}

func TestRenderAddresses(t *testing.T) {
	in := renderBaseInput()
	in.Addresses = []string{"sales@example.com", "alice@example.com", "SALES@example.com", "b@example.org", "ALICE@EXAMPLE.COM"}
	got, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	want := `:addresses ["alice@example.com", "sales@example.com", "b@example.org"]`
	if n := strings.Count(got, want); n != 2 {
		t.Errorf("script has %d times %s; want 2:\n%s", n, want, got)
	}
	in.Addresses = nil // only the user
	if got, err = Render(in); err != nil || !strings.Contains(got, `:addresses ["alice@example.com"]`) {
		t.Errorf("without aliases: %v\n%s", err, got)
	}
}

func TestRenderDaysUnchanged(t *testing.T) {
	in := renderBaseInput()
	in.Days = MinDays - 2 // Cyrus will use MinDays; the caller warns
	if got, err := Render(in); err != nil || !strings.Contains(got, "vacation :days 1 :handle") {
		t.Errorf("Render(days 1) = %v\n%s", err, got)
	}
}

func TestSieveQuote(t *testing.T) {
	for in, want := range map[string]string{
		``:            `""`,
		`plain`:       `"plain"`,
		`a"b`:         `"a\"b"`,
		`a\b`:         `"a\\b"`,
		`\"`:          `"\\\""`,
		`\\"`:         `"\\\\\""`,
		`"; discard;`: `"\"; discard;"`,
		`${hex:41}`:   `"${hex:41}"`,
		"é🏖️":         "\"é🏖️\"",
	} {
		if got := sieveQuote(in); got != want {
			t.Errorf("sieveQuote(%q) = %s; want %s", in, got, want)
		}
	}
}

func TestSieveTextBlock(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"x", "text:\r\nx\r\n.\r\n"},
		{"x\n", "text:\r\nx\r\n.\r\n"},
		{"x\n\n", "text:\r\nx\r\n\r\n.\r\n"},
		{"a\r\nb\rc\nd", "text:\r\na\r\nb\r\nc\r\nd\r\n.\r\n"},
		{".", "text:\r\n..\r\n.\r\n"},
		{"a\r\n.\r\nb", "text:\r\na\r\n..\r\nb\r\n.\r\n"},
		{"..\n.x\n. \n...", "text:\r\n...\r\n..x\r\n.. \r\n....\r\n.\r\n"},
		{"\n.", "text:\r\n\r\n..\r\n.\r\n"},
		{"\r\r", "text:\r\n\r\n\r\n.\r\n"},
	} {
		if got := sieveTextBlock(normaliseText(tc.in)); got != tc.want {
			t.Errorf("block of %q = %q; want %q", tc.in, got, tc.want)
		}
	}
}

// parsedSieve is what the test reader finds in a script.
type parsedSieve struct {
	require   []string
	idents    []string // every identifier, in order
	tags      []string // every tag, in order
	vacations []parsedVacation
}

type parsedVacation struct {
	days, handle, subject, from, reason string
	addresses                           []string
}

// sieveIdents are the only commands and tests Render may emit.
var sieveIdents = []string{"require", "if", "elsif", "else", "allof", "currentdate", "header", "envelope", "vacation"}

// parseSieve is a small, strict reader of RFC 5228 for the scripts Render
// writes: CRLF line ends only, hash comments, quoted strings with only \\
// and \" escapes, text: blocks with dot-stuffing, and the vacation action's
// arguments. Anything else is an error, so that a breakout shows.
func parseSieve(script string) (*parsedSieve, error) {
	toks, err := sieveTokens(script)
	if err != nil {
		return nil, err
	}
	p := &parsedSieve{}
	for i := 0; i < len(toks); i++ {
		tk := toks[i]
		switch tk.kind {
		case ':':
			p.tags = append(p.tags, tk.val)
		case 'i':
			p.idents = append(p.idents, tk.val)
			if !slices.Contains(sieveIdents, tk.val) {
				return nil, fmt.Errorf("unexpected identifier %q", tk.val)
			}
			if tk.val == "require" {
				if len(p.idents) != 1 {
					return nil, errors.New("require is not the first command")
				}
				list, n, err := readStringList(toks[i+1:])
				if err != nil {
					return nil, fmt.Errorf("require: %w", err)
				}
				p.require, i = list, i+n
			}
			if tk.val == "vacation" {
				v, n, err := readVacationArgs(toks[i+1:])
				if err != nil {
					return nil, fmt.Errorf("vacation %d: %w", len(p.vacations)+1, err)
				}
				p.vacations, i = append(p.vacations, v), i+n
			}
		}
	}
	return p, nil
}

// readVacationArgs reads a vacation action's arguments up to its ";" and
// returns how many tokens it took.
func readVacationArgs(toks []sieveTok) (parsedVacation, int, error) {
	var v parsedVacation
	seen := map[string]bool{}
	for i := 0; i < len(toks); i++ {
		tk := toks[i]
		if tk.kind == 's' || tk.kind == 't' {
			v.reason = tk.val
			if i+1 >= len(toks) || toks[i+1].kind != ';' {
				return v, 0, errors.New("reason not followed by ;")
			}
			return v, i + 2, nil
		}
		if tk.kind != ':' || seen[tk.val] || i+1 >= len(toks) {
			return v, 0, fmt.Errorf("unexpected %q", tk.val)
		}
		seen[tk.val] = true
		arg := toks[i+1]
		var str *string
		switch tk.val {
		case ":days":
			if arg.kind != 'n' {
				return v, 0, errors.New(":days without a number")
			}
			v.days, i = arg.val, i+1
			continue
		case ":addresses":
			list, n, err := readStringList(toks[i+1:])
			if err != nil {
				return v, 0, fmt.Errorf(":addresses: %w", err)
			}
			v.addresses, i = list, i+n
			continue
		case ":handle":
			str = &v.handle
		case ":subject":
			str = &v.subject
		case ":from":
			str = &v.from
		default:
			return v, 0, fmt.Errorf("unexpected tag %s", tk.val)
		}
		if arg.kind != 's' {
			return v, 0, fmt.Errorf("%s without a string", tk.val)
		}
		*str, i = arg.val, i+1
	}
	return v, 0, errors.New("no reason")
}

// readStringList reads a string list (or one string) and returns how many
// tokens it took.
func readStringList(toks []sieveTok) ([]string, int, error) {
	if len(toks) > 0 && toks[0].kind == 's' {
		return []string{toks[0].val}, 1, nil
	}
	if len(toks) == 0 || toks[0].kind != '[' {
		return nil, 0, errors.New("no string list")
	}
	var list []string
	for i := 1; i+1 < len(toks); i += 2 {
		if toks[i].kind != 's' {
			return nil, 0, errors.New("string list with a non-string")
		}
		list = append(list, toks[i].val)
		switch toks[i+1].kind {
		case ']':
			return list, i + 2, nil
		case ',':
		default:
			return nil, 0, errors.New("string list without , or ]")
		}
	}
	return nil, 0, errors.New("unterminated string list")
}

// sieveTok is one token: kind 'i' identifier, ':' tag, 's' quoted string,
// 't' text: block, 'n' number, or the punctuation character itself.
type sieveTok struct {
	kind byte
	val  string
}

func sieveTokens(s string) ([]sieveTok, error) {
	var toks []sieveTok
	isWord := func(c byte) bool { return c == '_' || isAlnum(rune(c)) }
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ':
			i++
		case strings.HasPrefix(s[i:], "\r\n"):
			i += 2
		case c == '\r' || c == '\n':
			return nil, fmt.Errorf("offset %d: bare CR or LF", i)
		case c == '#':
			end := strings.Index(s[i:], "\r\n")
			if end < 0 {
				return nil, errors.New("comment without CRLF")
			}
			if comment := s[i : i+end]; strings.ContainsAny(comment, "\r\n") {
				return nil, fmt.Errorf("offset %d: comment with a bare line end", i)
			}
			i += end + 2
		case strings.ContainsRune("[](){},;", rune(c)):
			toks = append(toks, sieveTok{c, string(c)})
			i++
		case c == '"':
			var b strings.Builder
			for i++; ; i++ {
				if i >= len(s) {
					return nil, errors.New("unterminated quoted string")
				}
				if s[i] == '"' {
					break
				}
				if s[i] == '\r' || s[i] == '\n' {
					return nil, fmt.Errorf("offset %d: line end in a quoted string", i)
				}
				if s[i] == '\\' {
					if i+1 >= len(s) || (s[i+1] != '\\' && s[i+1] != '"') {
						return nil, fmt.Errorf("offset %d: escape other than \\\\ or \\\"", i)
					}
					i++
				}
				b.WriteByte(s[i])
			}
			i++
			toks = append(toks, sieveTok{'s', b.String()})
		case strings.HasPrefix(s[i:], "text:\r\n"):
			var b strings.Builder
			for i += len("text:\r\n"); ; {
				end := strings.Index(s[i:], "\r\n")
				if end < 0 {
					return nil, errors.New("unterminated text: block")
				}
				line := s[i : i+end]
				i += end + 2
				if line == "." {
					break
				}
				if strings.ContainsAny(line, "\r\n") {
					return nil, errors.New("text: line with a bare line end")
				}
				if line != "" && line[0] == '.' {
					if !strings.HasPrefix(line, "..") {
						return nil, fmt.Errorf("text: line %q starts with an unstuffed dot", line)
					}
					line = line[1:]
				}
				b.WriteString(line + "\r\n")
			}
			toks = append(toks, sieveTok{'t', b.String()})
		case c == ':' || isWord(c):
			j := i + 1
			for j < len(s) && isWord(s[j]) {
				j++
			}
			word := s[i:j]
			switch {
			case c == ':':
				toks = append(toks, sieveTok{':', word})
			case word[0] >= '0' && word[0] <= '9':
				toks = append(toks, sieveTok{'n', word})
			default:
				toks = append(toks, sieveTok{'i', word})
			}
			i = j
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return nil, fmt.Errorf("offset %d: unexpected %q", i, r)
		}
	}
	return toks, nil
}

// TestParseSieveCatchesBreakouts: the reader refuses what a broken
// renderer would produce, so the round-trip checks can fail.
func TestParseSieveCatchesBreakouts(t *testing.T) {
	head := "require [\"vacation\"];\r\n"
	for name, script := range map[string]string{
		"quote breakout":   head + "vacation :subject \"a\"; discard; \"\" \"x\";\r\n",
		"bare LF":          head + "vacation \"x\";\n",
		"unstuffed dot":    head + "vacation text:\r\n.x\r\n.\r\n;\r\n",
		"early end":        head + "vacation text:\r\na\r\n.\r\nredirect \"x@y\";\r\n.\r\n;\r\n",
		"unknown escape":   head + "vacation \"\\n\";\r\n",
		"LF in string":     head + "vacation \"a\r\nb\";\r\n",
		"no semicolon":     head + "vacation \"x\"\r\n",
		"require late":     "vacation \"x\";\r\n" + head,
		"unterminated txt": head + "vacation text:\r\nx\r\n",
	} {
		if _, err := parseSieve(script); err == nil {
			t.Errorf("%s: parseSieve accepted %q", name, script)
		}
	}
}
