package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// withUsers returns a store with organisation Acme, domain example.com and
// the given users (without passwords).
func withUsers(t *testing.T, locals ...string) (*Store, Canon) {
	t.Helper()
	st, c := openTest(t)
	ctx := t.Context()
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddDomain(ctx, "example.com", "Acme"); err != nil {
		t.Fatal(err)
	}
	for _, l := range locals {
		if _, err := st.AddUser(ctx, NewUser{Address: addr(t, c, l)}); err != nil {
			t.Fatal(err)
		}
	}
	return st, c
}

func mustGenerate(t *testing.T) (string, Secret) {
	t.Helper()
	plain, hash, err := GenerateAppPassword()
	if err != nil {
		t.Fatal(err)
	}
	return plain, hash
}

func TestGenerateAppPassword(t *testing.T) {
	format := regexp.MustCompile(`^[` + appPassAlphabet + `]{5}(-[` + appPassAlphabet + `]{5}){5}$`)
	seen := map[string]bool{}
	for range 1000 {
		plain, hash := mustGenerate(t)
		if !format.MatchString(plain) || len(plain) > 64 {
			t.Fatalf("generated %q: not six groups of five from %q", plain, appPassAlphabet)
		}
		if seen[plain] || seen[hash.Reveal()] {
			t.Fatalf("generated %q twice", plain)
		}
		seen[plain], seen[hash.Reveal()] = true, true
		if !VerifyAppPassword(hash, plain) {
			t.Fatalf("VerifyAppPassword(hash of %q, %q) = false", plain, plain)
		}
	}
	// Every symbol turns up: the mapping from random bytes uses the whole
	// alphabet (a bias or a stuck bit would show here first).
	var all strings.Builder
	for p := range seen {
		all.WriteString(p)
	}
	for _, r := range appPassAlphabet {
		if !strings.ContainsRune(all.String(), r) {
			t.Errorf("symbol %q never generated", r)
		}
	}
}

func TestVerifyAppPassword(t *testing.T) {
	plain, hash := mustGenerate(t)
	other, _ := mustGenerate(t)
	tests := []struct {
		name  string
		hash  Secret
		plain string
		want  bool
	}{
		{"as shown", hash, plain, true},
		{"without dashes", hash, strings.ReplaceAll(plain, "-", ""), true},
		{"upper case", hash, strings.ToUpper(plain), true},
		{"spaces for dashes", hash, strings.ReplaceAll(plain, "-", " "), true},
		{"capitalised by a phone", hash, strings.ToUpper(plain[:1]) + plain[1:], true},
		{"another password", hash, other, false},
		{"one character off", hash, plain[:len(plain)-1] + string(appPassAlphabet[(strings.IndexByte(appPassAlphabet, plain[len(plain)-1])+1)%32]), false},
		{"truncated", hash, plain[:len(plain)-1], false},
		{"empty", hash, "", false},
		{"empty hash", "", plain, false},
		{"argon2 hash", "$argon2id$v=19$m=8192,t=1,p=1$c2FsdA$aGFzaA", plain, false},
		{"short digest", hash[:len(hash)-2], plain, false},
		{"not hex", Secret(appHashPrefix + strings.Repeat("zz", 32)), plain, false},
		{"plain text stored as hash", Secret(plain), plain, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := VerifyAppPassword(tt.hash, tt.plain); got != tt.want {
				t.Errorf("VerifyAppPassword = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAppPasswords(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "alice", "bob")
	alice, bob := addr(t, c, "alice"), addr(t, c, "bob")
	_, h1 := mustGenerate(t)
	_, h2 := mustGenerate(t)
	exp := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second).UTC()

	phone, err := st.AddAppPassword(ctx, alice, "Phone", h1, []string{"IMAP", "sieve", "imap"}, exp)
	if err != nil {
		t.Fatal(err)
	}
	if phone.ID == 0 || phone.User != "alice@example.com" || !slices.Equal(phone.Services, []string{"imap", "sieve"}) ||
		!phone.Expires.Equal(exp) || phone.Created.IsZero() || !phone.LastUsed.IsZero() {
		t.Errorf("AddAppPassword = %+v", phone)
	}
	if _, err := st.AddAppPassword(ctx, alice, "calendar", h2, nil, time.Time{}); err != nil {
		t.Fatal(err)
	}
	// The same label for another user is fine.
	if _, err := st.AddAppPassword(ctx, bob, "phone", h2, nil, time.Time{}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		user     Address
		label    string
		hash     Secret
		services []string
		want     error
		message  string
	}{
		{"unknown user", addr(t, c, "nobody"), "x", h1, nil, ErrNotFound, "user nobody@example.com: not found"},
		{"duplicate label", alice, "Phone", h1, nil, ErrExists, `app password "Phone" of alice@example.com: already exists`},
		{"duplicate label other case", alice, "PHONE", h1, nil, ErrExists, "already exists"},
		{"empty label", alice, "", h1, nil, ErrMalformed, "label"},
		{"label with control byte", alice, "a\tb", h1, nil, ErrMalformed, "non-printable"},
		{"long label", alice, strings.Repeat("x", MaxNameLen+1), h1, nil, ErrMalformed, "label"},
		{"plain password as hash", alice, "x", "hunter2", nil, ErrMalformed, "not an app-password hash"},
		{"argon2 hash", alice, "x", "$argon2id$v=19$m=8192,t=1,p=1$c2FsdA$aGFzaA", nil, ErrMalformed, "not an app-password hash"},
		{"no services", alice, "x", h1, []string{}, ErrMalformed, "empty service list"},
		{"bad service", alice, "x", h1, []string{"im ap"}, ErrMalformed, "service"},
		{"comma in service", alice, "x", h1, []string{"imap,pop"}, ErrMalformed, "one name per element"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := st.AddAppPassword(ctx, tt.user, tt.label, tt.hash, tt.services, time.Time{})
			if !errors.Is(err, tt.want) || !strings.Contains(fmt.Sprint(err), tt.message) {
				t.Errorf("AddAppPassword = %v; want %v containing %q", err, tt.want, tt.message)
			}
		})
	}

	ps, err := st.AppPasswords(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Label != "calendar" || ps[1].Label != "Phone" || ps[1].ID != phone.ID ||
		!slices.Equal(ps[0].Services, []string{AllServices}) || !ps[0].Expires.IsZero() || !ps[1].Expires.Equal(exp) {
		t.Fatalf("AppPasswords(alice) = %+v", ps)
	}
	if ps[1].Hash != h1 {
		t.Errorf("stored hash differs from the one given")
	}
	// The hash never leaves through JSON or fmt.
	js, _ := json.Marshal(ps)
	if s := string(js) + fmt.Sprintf("%v %+v %#v", ps, ps, ps); strings.Contains(s, h1.Reveal()) || strings.Contains(s, "sctapp") {
		t.Errorf("hash printed: %s", s)
	}
	if !strings.Contains(string(js), `"expires":"`) || strings.Count(string(js), `"expires"`) != 1 || strings.Contains(string(js), "last_used") {
		t.Errorf("JSON should have expires only where set and no last_used before use: %s", js)
	}
	if _, err := st.AppPasswords(ctx, addr(t, c, "nobody")); !errors.Is(err, ErrNotFound) {
		t.Errorf("AppPasswords(nobody) = %v, want ErrNotFound", err)
	}

	if err := st.DeleteAppPassword(ctx, alice, "phone"); err != nil { // labels ignore case
		t.Fatal(err)
	}
	for _, tt := range []struct {
		user         Address
		label, inErr string
	}{
		{alice, "phone", `app password "phone" of alice@example.com: not found`},
		{addr(t, c, "nobody"), "phone", "user nobody@example.com: not found"},
	} {
		if err := st.DeleteAppPassword(ctx, tt.user, tt.label); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), tt.inErr) {
			t.Errorf("DeleteAppPassword(%s, %q) = %v; want ErrNotFound naming %q", tt.user, tt.label, err, tt.inErr)
		}
	}
	if ps, err := st.AppPasswords(ctx, alice); err != nil || len(ps) != 1 || ps[0].Label != "calendar" {
		t.Errorf("after delete: %+v, %v", ps, err)
	}
	if ps, err := st.AppPasswords(ctx, bob); err != nil || len(ps) != 1 {
		t.Errorf("bob's were touched: %+v, %v", ps, err)
	}
	if err := st.DeleteAppPassword(ctx, alice, "calendar"); err != nil {
		t.Fatal(err)
	}
	if ps, err := st.AppPasswords(ctx, alice); err != nil || len(ps) != 0 {
		t.Errorf("none left: %+v, %v; want empty and no error", ps, err)
	}
}

func TestAppPasswordLimit(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "alice")
	alice := addr(t, c, "alice")
	_, h := mustGenerate(t)
	for i := range MaxAppPasswords {
		if _, err := st.AddAppPassword(ctx, alice, fmt.Sprintf("device %03d", i), h, nil, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := st.AddAppPassword(ctx, alice, "one too many", h, nil, time.Time{})
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "already has 100 app passwords") {
		t.Errorf("app password %d: %v, want ErrLimit", MaxAppPasswords+1, err)
	}
	if err := st.DeleteAppPassword(ctx, alice, "device 000"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddAppPassword(ctx, alice, "one too many", h, nil, time.Time{}); err != nil {
		t.Errorf("after a deletion there is room again: %v", err)
	}
}

func TestAppPasswordAllowsExpired(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		services []string
		expires  time.Time
		service  string
		allows   bool
		expired  bool
	}{
		{"all services, never expires", []string{"*"}, time.Time{}, "imap", true, false},
		{"listed service", []string{"imap", "sieve"}, time.Time{}, "sieve", true, false},
		{"service as Cyrus sends it", []string{"http"}, time.Time{}, "HTTP", true, false},
		{"unlisted service", []string{"imap", "sieve"}, time.Time{}, "pop", false, false},
		{"no service named", []string{"imap"}, time.Time{}, "", false, false},
		{"expires later", []string{"*"}, now.Add(time.Second), "imap", true, false},
		{"expires now", []string{"*"}, now, "imap", true, true},
		{"expired", []string{"*"}, now.Add(-time.Hour), "imap", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := AppPassword{Services: tt.services, Expires: tt.expires}
			if got := p.Allows(tt.service); got != tt.allows {
				t.Errorf("Allows(%q) = %v, want %v", tt.service, got, tt.allows)
			}
			if got := p.Expired(now); got != tt.expired {
				t.Errorf("Expired = %v, want %v", got, tt.expired)
			}
		})
	}
}

// TestTouchAppPassword: recording a use is not a change services cache, so
// it must leave Generation alone (as RecordLogin does, see
// TestGenerationInProcess), while adding and deleting must move it.
func TestTouchAppPassword(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "alice")
	alice := addr(t, c, "alice")
	gen := func() int64 {
		t.Helper()
		g, err := st.Generation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	g0 := gen()
	_, h := mustGenerate(t)
	p, err := st.AddAppPassword(ctx, alice, "phone", h, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	g1 := gen()
	if g1 == g0 {
		t.Errorf("generation did not move after AddAppPassword")
	}
	used := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := st.TouchAppPassword(ctx, p.ID, used); err != nil {
		t.Fatal(err)
	}
	if g := gen(); g != g1 {
		t.Errorf("generation moved after TouchAppPassword: %d -> %d", g1, g)
	}
	// An older time (a slower concurrent login) does not set it back.
	if err := st.TouchAppPassword(ctx, p.ID, used.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ps, _ := st.AppPasswords(ctx, alice); len(ps) != 1 || !ps[0].LastUsed.Equal(used) {
		t.Errorf("last used = %+v, want %v", ps, used)
	}
	if err := st.TouchAppPassword(ctx, p.ID+1000, used); !errors.Is(err, ErrNotFound) {
		t.Errorf("TouchAppPassword(unknown id) = %v, want ErrNotFound", err)
	}
	if err := st.DeleteAppPassword(ctx, alice, "phone"); err != nil {
		t.Fatal(err)
	}
	if g := gen(); g == g1 {
		t.Errorf("generation did not move after DeleteAppPassword: a cache would keep a revoked password")
	}
}

// TestAppPasswordsGoWithUser: deleting a user deletes their app passwords
// (ON DELETE CASCADE), so a new user with the same address inherits none.
func TestAppPasswordsGoWithUser(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "alice", "bob")
	alice := addr(t, c, "alice")
	_, h := mustGenerate(t)
	for _, u := range []string{"alice", "bob"} {
		if _, err := st.AddAppPassword(ctx, addr(t, c, u), "phone", h, nil, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.DeleteUser(ctx, alice); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := st.r.QueryRowContext(ctx, "SELECT count(*) FROM app_passwords").Scan(&n); err != nil || n != 1 {
		t.Errorf("%d app passwords left after deleting alice (%v), want bob's 1", n, err)
	}
	if _, err := st.AddUser(ctx, NewUser{Address: alice}); err != nil {
		t.Fatal(err)
	}
	if ps, err := st.AppPasswords(ctx, alice); err != nil || len(ps) != 0 {
		t.Errorf("a new alice inherited app passwords: %+v, %v", ps, err)
	}
}

func BenchmarkVerifyAppPassword(b *testing.B) {
	plain, hash, err := GenerateAppPassword()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !VerifyAppPassword(hash, plain) {
			b.Fatal("no match")
		}
	}
}
