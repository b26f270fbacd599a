package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/store"
)

// vacationEnv is a store with alice and bob in example.com (Acme, which
// also owns example.net) and an alias sales -> alice.
func vacationEnv(t *testing.T) string {
	t.Helper()
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.net", "-org", "Acme")
	mustRun(t, cfg, "", "user", "add", "alice", "-no-password")
	mustRun(t, cfg, "", "user", "add", "bob", "-no-password")
	mustRun(t, cfg, "", "alias", "add", "sales@example.net", "alice")
	return cfg
}

// shownVacation is `vacation show -json`.
type shownVacation struct {
	Address  string    `json:"address"`
	State    string    `json:"state"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Subject  string    `json:"subject"`
	Internal string    `json:"internal_text"`
	External string    `json:"external_text"`
	Audience string    `json:"external_audience"`
	Days     int       `json:"days"`
	From     string    `json:"from"`
	Period   string    `json:"period"`
	Updated  time.Time `json:"updated"`
	Sieve    *struct {
		Mode      string `json:"mode"`
		LastError string `json:"last_error"`
	} `json:"sieve"`
}

func showVacation(t *testing.T, cfg, address string) (shownVacation, string) {
	t.Helper()
	out := mustRun(t, cfg, "", "vacation", "show", address, "-json")
	var v shownVacation
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("vacation show -json: %v\n%s", err, out)
	}
	return v, out
}

// openStore opens the test configuration's store, as a command would.
func openStore(t *testing.T, cfg string) *command {
	t.Helper()
	c := newCommand("test", "", stdio{}, noEnv)
	*c.config = cfg
	if err := c.open(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c
}

func TestCLIVacationRoundTrip(t *testing.T) {
	cfg := vacationEnv(t)
	out := mustRun(t, cfg, "", "vacation", "set", "Alice@Example.com", "-subject", "Away", "-internal-text", "Back Monday.",
		"-external-text", "I am out of the office.", "-days", "5")
	if !strings.Contains(out, "vacation of alice@example.com set: replies from now until turned off") {
		t.Errorf("vacation set printed %q", out)
	}
	v, raw := showVacation(t, cfg, "alice")
	if v.Address != "alice@example.com" || v.State != "on" || v.Subject != "Away" || v.Internal != "Back Monday." ||
		v.External != "I am out of the office." || v.Audience != "all" || v.Days != 5 || v.From != "" || len(v.Period) != 16 ||
		!v.Start.IsZero() || !v.End.IsZero() || v.Sieve != nil {
		t.Errorf("show -json = %+v", v)
	}
	if strings.Contains(raw, `"start"`) || strings.Contains(raw, `"from"`) {
		t.Errorf("show -json prints empty fields:\n%s", raw)
	}

	// A flag left out keeps the stored value: this only adds an end (in
	// another zone, stored in UTC), which starts a new absence period.
	end := time.Now().AddDate(0, 1, 0).Truncate(time.Second)
	mustRun(t, cfg, "", "vacation", "set", "alice", "-end", end.In(time.FixedZone("X", -5*3600)).Format(time.RFC3339))
	w, _ := showVacation(t, cfg, "alice")
	if w.State != "scheduled" || !w.End.Equal(end) || w.End.Location() != time.UTC || !w.Start.IsZero() ||
		w.Internal != v.Internal || w.External != v.External || w.Subject != "Away" || w.Days != 5 || w.Period == v.Period {
		t.Errorf("after set -end: %+v; want scheduled until %v, all else kept, a new period", w, end.UTC())
	}
	// Flags before the address; a text edit keeps the period and the dates.
	mustRun(t, cfg, "", "vacation", "set", "-external-audience", "known", "alice", "-from", "Sales@Example.NET")
	x, _ := showVacation(t, cfg, "alice")
	if x.Period != w.Period || !x.End.Equal(end) || x.Audience != "known" || x.From != "sales@example.net" {
		t.Errorf("after set -external-audience -from: %+v", x)
	}

	// show: the settings, then what the vacation service did.
	c := openStore(t, cfg)
	if err := c.st.SetSieveState(t.Context(), store.SieveState{Address: "alice@example.com", Mode: "include", ScriptHash: "ab",
		InstalledAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), AttemptedAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		LastError: "timsieved: connection refused", PrevActive: "roundcube"}); err != nil {
		t.Fatal(err)
	}
	out = mustRun(t, cfg, "", "vacation", "show", "alice")
	for _, want := range []string{"state                   scheduled: replies from now until " + end.UTC().Format(vacationTime),
		"external audience       known", "days                    5", "included from the user's own active script",
		"installed at            2030-01-02 03:04:05Z", "last error              timsieved: connection refused",
		"previous active script  roundcube", "\ninternal text (senders in the organisation):\n    Back Monday.\n",
		"\nexternal text (other senders):\n    I am out of the office.\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("vacation show lacks %q:\n%s", want, out)
		}
	}
	if y, _ := showVacation(t, cfg, "alice"); y.Sieve == nil || y.Sieve.Mode != "include" || y.Sieve.LastError == "" {
		t.Errorf("show -json sieve = %+v", y.Sieve)
	}

	out = mustRun(t, cfg, "", "vacation", "off", "alice")
	if !strings.Contains(out, "vacation of alice@example.com is off") {
		t.Errorf("vacation off printed %q", out)
	}
	off, _ := showVacation(t, cfg, "alice")
	if off.State != "off" || off.Internal != v.Internal || off.Subject != "Away" || !off.End.IsZero() {
		t.Errorf("after off: %+v; want off, texts kept, no dates", off)
	}
	if out := mustRun(t, cfg, "", "vacation", "show", "alice"); !strings.Contains(out, "off: no replies") {
		t.Errorf("show after off:\n%s", out)
	}
	// set with no flags turns the kept settings back on, with no dates.
	mustRun(t, cfg, "", "vacation", "set", "alice")
	if on, _ := showVacation(t, cfg, "alice"); on.State != "on" || !on.End.IsZero() || on.Internal != v.Internal || on.Period == x.Period {
		t.Errorf("set after off: %+v; want on again, a new period", on)
	}
	// -on drops dates; -start "" and -end "" clear one each.
	start := time.Now().AddDate(0, 0, 7).UTC().Truncate(time.Second)
	mustRun(t, cfg, "", "vacation", "set", "alice", "-start", start.Format(time.RFC3339), "-end", end.Format(time.RFC3339))
	mustRun(t, cfg, "", "vacation", "set", "alice", "-end", "")
	if s, _ := showVacation(t, cfg, "alice"); s.State != "scheduled" || !s.Start.Equal(start) || !s.End.IsZero() {
		t.Errorf("after -end \"\": %+v; want scheduled from %v, open end", s, start)
	}
	mustRun(t, cfg, "", "vacation", "set", "alice", "-on")
	if s, _ := showVacation(t, cfg, "alice"); s.State != "on" || !s.Start.IsZero() {
		t.Errorf("after -on: %+v", s)
	}
}

func TestCLIVacationTexts(t *testing.T) {
	cfg := vacationEnv(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// One text for a new vacation goes to everyone; a BOM is dropped.
	mustRun(t, cfg, "", "vacation", "set", "alice", "-internal-file", write("in.txt", "\ufeffIch bin weg.\nGrüße\n"))
	v, _ := showVacation(t, cfg, "alice")
	if v.Internal != "Ich bin weg.\nGrüße\n" || v.External != v.Internal {
		t.Errorf("after -internal-file: %+v", v)
	}
	if out := mustRun(t, cfg, "", "vacation", "show", "alice"); !strings.Contains(out, "\ntext (every sender):\n    Ich bin weg.\n    Grüße\n") {
		t.Errorf("show with one text:\n%s", out)
	}
	// Later, one text changes only that text; stdin is "-".
	mustRun(t, cfg, "Away from stdin.\r\n", "vacation", "set", "alice", "-external-file", "-")
	if w, _ := showVacation(t, cfg, "alice"); w.Internal != v.Internal || w.External != "Away from stdin.\r\n" {
		t.Errorf("after -external-file -: %+v", w)
	}
	// bob: external only, from a file, internal from stdin.
	mustRun(t, cfg, "Drinnen.", "vacation", "set", "bob", "-external-file", write("out.txt", "Outside."), "-internal-file", "-")
	if b, _ := showVacation(t, cfg, "bob"); b.Internal != "Drinnen." || b.External != "Outside." {
		t.Errorf("bob: %+v", b)
	}

	for _, tt := range []struct {
		name, stdin string
		args        []string
		message     string
	}{
		{"latin-1 file", "", []string{"-internal-file", write("latin1.txt", "Gr\xfc\xdfe")}, "latin1.txt: reply text is not valid UTF-8"},
		{"latin-1 stdin", "caf\xe9", []string{"-external-file", "-"}, "stdin: reply text is not valid UTF-8"},
		{"latin-1 argument", "", []string{"-internal-text", "caf\xe9"}, "-internal-text: reply text is not valid UTF-8"},
		{"NUL", "", []string{"-internal-file", write("nul.txt", "a\x00b")}, "contains a NUL byte"},
		{"too long", "", []string{"-internal-file", write("long.txt", strings.Repeat("x", store.MaxVacationText+1))}, "longer than 16384 bytes"},
		{"missing file", "", []string{"-internal-file", filepath.Join(dir, "nope.txt")}, "nope.txt: no such file"},
	} {
		_, _, err := runCLI(t, cfg, tt.stdin, append([]string{"vacation", "set", "alice"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.message) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.message)
		}
	}
	if w, _ := showVacation(t, cfg, "alice"); w.External != "Away from stdin.\r\n" {
		t.Errorf("a refused set changed the texts: %+v", w)
	}
}

func TestCLIVacationWarnings(t *testing.T) {
	cfg := vacationEnv(t)
	_, errOut, err := runCLI(t, cfg, "", "vacation", "set", "alice", "-internal-text", "Away.", "-days", "1")
	if err != nil || !strings.Contains(errOut, "warning: -days 1: Cyrus answers a sender at most once in 3 days (sieve_vacation_min_response)") {
		t.Errorf("-days 1: %v, stderr %q", err, errOut)
	}
	if v, _ := showVacation(t, cfg, "alice"); v.Days != 1 {
		t.Errorf("-days 1 stored as %d", v.Days)
	}
	if _, errOut, _ = runCLI(t, cfg, "", "vacation", "set", "alice", "-days", "3"); errOut != "" {
		t.Errorf("-days 3 warned: %q", errOut)
	}
	_, errOut, err = runCLI(t, cfg, "", "vacation", "set", "alice", "-from", "bob@example.com")
	if err != nil || !strings.Contains(errOut, "warning: replies will come from bob@example.com, which does not deliver to alice@example.com") {
		t.Errorf("-from bob: %v, stderr %q", err, errOut)
	}
	if _, errOut, _ = runCLI(t, cfg, "", "vacation", "set", "alice", "-from", "alice+ooo@example.com"); errOut != "" {
		t.Errorf("-from alice+ooo warned: %q", errOut)
	}
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("[vacation]\nenabled = false\n")
	f.Close()
	if _, errOut, err = runCLI(t, cfg, "", "vacation", "set", "alice"); err != nil || !strings.Contains(errOut, "serve will not install this") {
		t.Errorf("set with the service off: %v, stderr %q", err, errOut)
	}
}

func TestCLIVacationPreview(t *testing.T) {
	cfg := vacationEnv(t)
	mustRun(t, cfg, "", "vacation", "set", "alice", "-internal-text", "Back Monday.", "-external-text", "Out of office.")
	out := mustRun(t, cfg, "", "vacation", "preview", "alice")
	v, _ := showVacation(t, cfg, "alice")
	for _, want := range []string{"Back Monday.", "Out of office.", "sales@example.net", "alice@example.com", "example.net",
		"X-Sidecar-Sender-Relation", v.Period} {
		if !strings.Contains(out, want) {
			t.Errorf("preview lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `envelope :domain`) {
		t.Errorf("preview with the LMTP proxy tests the envelope:\n%s", out)
	}
	// Without the LMTP proxy, the organisation's domains decide.
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("[lmtp]\nenabled = false\n")
	f.Close()
	out = mustRun(t, cfg, "", "vacation", "preview", "alice")
	if !strings.Contains(out, `envelope :domain :is "from" ["example.com", "example.net"]`) || strings.Contains(out, "X-Sidecar-Sender-Relation") {
		t.Errorf("preview without the LMTP proxy:\n%s", out)
	}
	mustRun(t, cfg, "", "vacation", "off", "alice")
	out, errOut, err := runCLI(t, cfg, "", "vacation", "preview", "alice")
	if err != nil || out != "" || !strings.Contains(errOut, "vacation of alice@example.com is off: no script would be installed") {
		t.Errorf("preview of an off vacation: %v, stdout %q, stderr %q", err, out, errOut)
	}
}

func TestCLIVacationErrors(t *testing.T) {
	cfg := vacationEnv(t)
	mustRun(t, cfg, "", "vacation", "set", "alice", "-internal-text", "Away.")
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	future := time.Now().AddDate(0, 1, 0).UTC().Format(time.RFC3339)
	tests := []struct {
		name    string
		stdin   string
		args    []string
		usage   bool
		message string
	}{
		{"unknown user", "", []string{"set", "nobody", "-internal-text", "x"}, false,
			"user nobody@example.com: not found; vacations belong to existing users (cyrus-sidecar user list)"},
		{"unknown user off", "", []string{"off", "nobody"}, false, "user nobody@example.com: not found"},
		{"unknown user show", "", []string{"show", "nobody@example.com"}, false, "user nobody@example.com: not found"},
		{"no vacation yet", "", []string{"show", "bob"}, false,
			"vacation of bob@example.com: not found; set one with: cyrus-sidecar vacation set bob@example.com -internal-text TEXT"},
		{"no vacation to preview", "", []string{"preview", "bob"}, false, "vacation of bob@example.com: not found"},
		{"no text", "", []string{"set", "bob"}, true, "no reply text: give -internal-text or -internal-file"},
		{"no external text", "", []string{"set", "bob", "-internal-text", "x", "-external-text", ""}, true, "no reply text for outside senders"},
		{"end in the past", "", []string{"set", "alice", "-end", past}, true, "is in the past"},
		{"start after end", "", []string{"set", "alice", "-start", future, "-end", time.Now().AddDate(0, 0, 1).UTC().Format(time.RFC3339)}, true, "is not before the end"},
		{"not RFC 3339", "", []string{"set", "alice", "-start", "2026-07-01"}, true, `-start "2026-07-01": want an RFC 3339 time`},
		{"-on with -end", "", []string{"set", "alice", "-on", "-end", future}, true, "-on and -end exclude each other"},
		{"text and file", "", []string{"set", "alice", "-internal-text", "x", "-internal-file", "f"}, true, "-internal-text and -internal-file exclude each other"},
		{"stdin twice", "", []string{"set", "alice", "-internal-file", "-", "-external-file", "-"}, true, "only one of -internal-file and -external-file"},
		{"bad audience", "", []string{"set", "alice", "-external-audience", "friends"}, true, `-external-audience "friends": want all, known or none`},
		{"days 0", "", []string{"set", "alice", "-days", "0"}, true, "-days 0: want 1 to 365"},
		{"days 366", "", []string{"set", "alice", "-days", "366"}, true, "-days 366: want 1 to 365"},
		{"subject with newline", "", []string{"set", "alice", "-subject", "a\nb"}, true, "-subject contains a line break"},
		{"subject with tab", "", []string{"set", "alice", "-subject", "a\tb"}, true, "-subject contains a line break, tab"},
		// What the vacation service could not install is refused at once.
		{"subject Cyrus would not take", "", []string{"set", "alice", "-subject", strings.Repeat("x", 300)}, false, "nothing changed: invalid vacation settings: subject"},
		{"blank text", "", []string{"set", "alice", "-internal-text", " \n "}, false, "nothing changed: invalid vacation settings: internal text: is empty"},
		{"script too large", "", []string{"set", "alice", "-internal-text", strings.Repeat("x", store.MaxVacationText),
			"-external-text", strings.Repeat("y", store.MaxVacationText)}, false, "nothing changed: vacation script too large"},
		{"bad from", "", []string{"set", "alice", "-from", "Alice <alice@example.com>"}, true, "-from \"Alice <alice@example.com>\" is not a valid address"},
		{"no address", "", []string{"set", "-internal-text", "x"}, true, "expected one address"},
		{"two addresses", "", []string{"off", "alice", "bob"}, true, "expected one address"},
		{"unknown subcommand", "", []string{"frob"}, true, `unknown subcommand "frob"`},
		{"no subcommand", "", nil, true, "expected set, off, show or preview"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCLI(t, cfg, tt.stdin, append([]string{"vacation"}, tt.args...)...)
			if err == nil {
				t.Fatalf("vacation %s succeeded", strings.Join(tt.args, " "))
			}
			if _, isUsage := errors.AsType[usageError](err); isUsage != tt.usage {
				t.Errorf("usage error = %v, want %v (%v)", isUsage, tt.usage, err)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not contain %q", err, tt.message)
			}
		})
	}
	if v, _ := showVacation(t, cfg, "alice"); v.State != "on" || v.Internal != "Away." || v.Days != store.DefaultVacationDays {
		t.Errorf("refused commands changed alice's vacation: %+v", v)
	}
}

// TestCLIVacationExitStatus runs the real binary.
func TestCLIVacationExitStatus(t *testing.T) {
	bin := buildBinary(t)
	cfg := vacationEnv(t)
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"vacation", "set", "alice", "-internal-text", "Away."}, 0},
		{[]string{"vacation", "show", "alice", "-json"}, 0},
		{[]string{"vacation", "set", "nobody", "-internal-text", "Away."}, 1},
		{[]string{"vacation", "show", "bob"}, 1},
		{[]string{"vacation", "set", "alice", "-days", "0"}, 2},
		{[]string{"vacation", "set"}, 2},
		{[]string{"vacation", "set", "-h"}, 0},
		{[]string{"vacation"}, 2},
	} {
		cmd := exec.Command(bin, append(tt.args, "-config", cfg)...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != tt.code {
			t.Errorf("%s: exit %d, want %d\n%s", strings.Join(tt.args, " "), code, tt.code, out)
		}
	}
}
