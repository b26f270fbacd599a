package main

import (
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/store"
)

// appPassLine is the password's own line in apppass add's output.
var appPassLine = regexp.MustCompile(`(?m)^    ([a-z0-9]{5}(?:-[a-z0-9]{5}){5})$`)

// appPassEnv is a store with alice (imap and sieve only) in example.com.
func appPassEnv(t *testing.T) string {
	t.Helper()
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "", "user", "add", "alice", "-no-password", "-services", "imap,sieve")
	return cfg
}

type listedAppPass struct {
	User     string    `json:"user"`
	Label    string    `json:"label"`
	Services []string  `json:"services"`
	Expires  time.Time `json:"expires"`
	Created  time.Time `json:"created"`
	LastUsed time.Time `json:"last_used"`
	Password string    `json:"password"`
}

func listAppPass(t *testing.T, cfg, address string) ([]listedAppPass, string) {
	t.Helper()
	out := mustRun(t, cfg, "", "apppass", "list", address, "-json")
	var ps []listedAppPass
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("apppass list -json: %v\n%s", err, out)
	}
	return ps, out
}

func TestCLIAppPassRoundTrip(t *testing.T) {
	cfg := appPassEnv(t)
	before := time.Now()
	out := mustRun(t, cfg, "", "apppass", "add", "Alice@Example.com", "-label", "phone", "-services", "imap", "-ttl", "90d")
	m := appPassLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("apppass add printed no password line:\n%s", out)
	}
	plain := m[1]
	for _, want := range []string{"cannot be shown again", `"phone" for alice@example.com`, "services: imap;", "expires 20"} {
		if !strings.Contains(out, want) {
			t.Errorf("apppass add output lacks %q:\n%s", want, out)
		}
	}
	// Flags before the address, all services, no expiry.
	mustRun(t, cfg, "", "apppass", "add", "-label", "Calendar", "alice")

	ps, raw := listAppPass(t, cfg, "alice")
	if len(ps) != 2 || ps[0].Label != "Calendar" || ps[1].Label != "phone" {
		t.Fatalf("apppass list -json = %+v", ps)
	}
	phone := ps[1]
	wantExp := before.Add(90 * 24 * time.Hour)
	if phone.User != "alice@example.com" || !slices.Equal(phone.Services, []string{"imap"}) ||
		phone.Expires.Before(wantExp.Add(-2*time.Second)) || phone.Expires.After(wantExp.Add(time.Minute)) || !phone.LastUsed.IsZero() {
		t.Errorf("phone = %+v; want imap only, expiring about %v, never used", phone, wantExp)
	}
	if !slices.Equal(ps[0].Services, []string{"*"}) || !ps[0].Expires.IsZero() {
		t.Errorf("calendar = %+v; want all services, no expiry", ps[0])
	}
	if strings.Contains(raw, "sctapp") || strings.Contains(raw, "hash") || strings.Contains(raw, plain) {
		t.Errorf("apppass list -json shows the hash or the password:\n%s", raw)
	}
	table := mustRun(t, cfg, "", "apppass", "list", "alice")
	if !strings.HasPrefix(table, "LABEL     SERVICES  EXPIRES") || !strings.Contains(table, "phone     imap      20") ||
		!strings.Contains(table, "Calendar  *         never") || strings.Contains(table, "sctapp") {
		t.Errorf("apppass list:\n%s", table)
	}

	// What was printed is what the store verifies; nothing else is.
	hash := storedAppHash(t, cfg, "alice@example.com", "phone")
	if !store.VerifyAppPassword(hash, plain) {
		t.Errorf("the printed password %q does not verify against the stored hash", plain)
	}
	if store.VerifyAppPassword(storedAppHash(t, cfg, "alice@example.com", "Calendar"), plain) {
		t.Errorf("phone's password verifies against calendar's hash")
	}

	// -json for scripts: the password once, never the hash.
	js := mustRun(t, cfg, "", "apppass", "add", "alice", "-label", "script", "-expires", "2099-01-02T03:04:05+01:00", "-json")
	var added listedAppPass
	if err := json.Unmarshal([]byte(js), &added); err != nil {
		t.Fatalf("apppass add -json: %v\n%s", err, js)
	}
	if !added.Expires.Equal(time.Date(2099, 1, 2, 2, 4, 5, 0, time.UTC)) || strings.Contains(js, "sctapp") ||
		!store.VerifyAppPassword(storedAppHash(t, cfg, "alice", "script"), added.Password) {
		t.Errorf("apppass add -json = %s", js)
	}

	if out := mustRun(t, cfg, "", "apppass", "del", "alice", "-label", "phone"); !strings.Contains(out, `"phone" of alice@example.com deleted`) {
		t.Errorf("apppass del: %q", out)
	}
	mustRun(t, cfg, "", "apppass", "del", "alice", "-label", "calendar") // labels ignore case
	mustRun(t, cfg, "", "apppass", "del", "alice", "-label", "script")
	if ps, raw := listAppPass(t, cfg, "alice"); len(ps) != 0 || strings.TrimSpace(raw) != "[]" {
		t.Errorf("apppass list -json after del = %q", raw)
	}
	if out := mustRun(t, cfg, "", "apppass", "list", "alice"); strings.TrimSpace(out) != "LABEL  SERVICES  EXPIRES  CREATED  LAST-USED" {
		t.Errorf("empty apppass list:\n%s", out)
	}
}

// TestCLIAppPassWarnings: an app password the user's own settings make
// useless is still added (the admin may fix the user next), with a warning.
func TestCLIAppPassWarnings(t *testing.T) {
	cfg := appPassEnv(t)
	mustRun(t, cfg, "", "user", "disable", "alice")
	out, errOut, err := runCLI(t, cfg, "", "apppass", "add", "alice", "-label", "mail", "-services", "imap,pop")
	if err != nil || appPassLine.FindString(out) == "" {
		t.Fatalf("apppass add: %v\n%s", err, out)
	}
	for _, want := range []string{"alice@example.com is disabled", "may not use pop (user services: imap,sieve)"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q: %q", want, errOut)
		}
	}
	if strings.Contains(errOut, "may not use imap") || strings.Contains(errOut, appPassLine.FindStringSubmatch(out)[1]) {
		t.Errorf("stderr: %q", errOut)
	}
}

func TestCLIAppPassErrors(t *testing.T) {
	cfg := appPassEnv(t)
	mustRun(t, cfg, "", "apppass", "add", "alice", "-label", "phone")
	tests := []struct {
		name    string
		args    []string
		usage   bool   // exit status 2
		message string // part of the error
	}{
		{"unknown user", []string{"apppass", "add", "nobody", "-label", "x"}, false, "user nobody@example.com: not found; app passwords belong to existing users"},
		{"unknown user list", []string{"apppass", "list", "nobody@example.com"}, false, "user nobody@example.com: not found"},
		{"unknown user del", []string{"apppass", "del", "nobody", "-label", "phone"}, false, "user nobody@example.com: not found"},
		{"malformed address", []string{"apppass", "add", "bob smith", "-label", "x"}, false, `"bob smith" is not a valid address`},
		{"login with detail", []string{"apppass", "add", "alice+x", "-label", "x"}, false, "user alice+x@example.com: not found"},
		{"duplicate label", []string{"apppass", "add", "alice", "-label", "phone"}, false, `app password "phone" of alice@example.com: already exists; pick another label`},
		{"duplicate label other case", []string{"apppass", "add", "alice", "-label", "Phone"}, false, "already exists"},
		{"unknown label", []string{"apppass", "del", "alice", "-label", "tablet"}, false, `app password "tablet" of alice@example.com: not found (see cyrus-sidecar apppass list alice@example.com)`},
		{"missing -label", []string{"apppass", "add", "alice"}, true, "-label LABEL is required"},
		{"missing -label del", []string{"apppass", "del", "alice"}, true, "-label LABEL is required"},
		{"empty -label", []string{"apppass", "add", "alice", "-label", ""}, true, "-label: name must be 1 to 64 bytes"},
		{"control byte in -label", []string{"apppass", "add", "alice", "-label", "a\x07b"}, true, "non-printable"},
		{"bad -services", []string{"apppass", "add", "alice", "-label", "x", "-services", "imap,web mail"}, true, `-services: service "web mail"`},
		{"past -expires", []string{"apppass", "add", "alice", "-label", "x", "-expires", "2020-01-01T00:00:00Z"}, true, "-expires 2020-01-01T00:00:00Z is in the past"},
		{"bad -expires", []string{"apppass", "add", "alice", "-label", "x", "-expires", "2030-01-01"}, true, "want an RFC 3339 time"},
		{"-expires and -ttl", []string{"apppass", "add", "alice", "-label", "x", "-expires", "2099-01-01T00:00:00Z", "-ttl", "1d"}, true, "exclude each other"},
		{"bad -ttl", []string{"apppass", "add", "alice", "-label", "x", "-ttl", "3 months"}, true, "want a duration such as 90d"},
		{"zero -ttl", []string{"apppass", "add", "alice", "-label", "x", "-ttl", "0d"}, true, "whole number of days"},
		{"missing address", []string{"apppass", "list"}, true, "expected one address"},
		{"two addresses", []string{"apppass", "del", "alice", "bob", "-label", "x"}, true, "expected one address"},
		{"no subcommand", []string{"apppass"}, true, "expected add, del or list"},
		{"unknown subcommand", []string{"apppass", "show", "alice"}, true, `unknown subcommand "show"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runCLI(t, cfg, "", tt.args...)
			if err == nil {
				t.Fatalf("%s succeeded:\n%s", strings.Join(tt.args, " "), out)
			}
			if _, isUsage := errors.AsType[usageError](err); isUsage != tt.usage {
				t.Errorf("usage error = %v, want %v (%v)", isUsage, tt.usage, err)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not contain %q", err, tt.message)
			}
			if appPassLine.MatchString(out) {
				t.Errorf("a refused command printed a password:\n%s", out)
			}
		})
	}
	if ps, _ := listAppPass(t, cfg, "alice"); len(ps) != 1 {
		t.Errorf("refused commands changed the store: %+v", ps)
	}
}

func TestAppPassTTL(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration // 0: an error
	}{
		{"90d", 90 * 24 * time.Hour},
		{"1d", 24 * time.Hour},
		{"720h", 720 * time.Hour},
		{"30m", 30 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"36500d", 36500 * 24 * time.Hour},
		{"36501d", 0},
		{"1000000h", 0},
		{"0d", 0},
		{"-5d", 0},
		{"d", 0},
		{"1.5d", 0},
		{"30s", 0},
		{"-1h", 0},
		{"", 0},
		{"9999999999999999999d", 0},
	} {
		got, err := appPassTTL(tt.in)
		if got != tt.want || (err != nil) != (tt.want == 0) {
			t.Errorf("appPassTTL(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// storedAppHash reads an app password's hash from the store, as
// storedHash does for a user's.
func storedAppHash(t *testing.T, cfg, address, label string) store.Secret {
	t.Helper()
	c := newCommand("test", "", stdio{}, noEnv)
	*c.config = cfg
	if err := c.open(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	defer c.close()
	a, err := c.canon.Address(address)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := c.st.AppPasswords(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Label == label {
			return p.Hash
		}
	}
	t.Fatalf("%s has no app password %q", address, label)
	return ""
}
