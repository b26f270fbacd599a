package store

import (
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// onVacation is valid settings for an open-ended vacation.
func onVacation() Vacation {
	return Vacation{State: "on", Subject: "Away", InternalText: "Back Monday.", ExternalText: "I am away.",
		Audience: "all", Days: DefaultVacationDays}
}

func mustVacation(t *testing.T, st *Store, a Address) Vacation {
	t.Helper()
	v, err := st.Vacation(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVacationValidation(t *testing.T) {
	st, c := withUsers(t, "alice")
	alice := addr(t, c, "alice")
	start := time.Date(2030, 7, 1, 9, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		change func(v *Vacation)
		want   string // "" = accepted; else part of the ErrMalformed message
	}{
		{"valid", func(v *Vacation) {}, ""},
		{"off with no texts", func(v *Vacation) { *v = Vacation{State: "off", Audience: "all", Days: 7} }, ""},
		{"scheduled with start", func(v *Vacation) { v.State, v.Start = "scheduled", start }, ""},
		{"scheduled with end", func(v *Vacation) { v.State, v.End = "scheduled", start }, ""},
		{"scheduled with both", func(v *Vacation) { v.State, v.Start, v.End = "scheduled", start, start.Add(time.Hour) }, ""},
		{"audience none, no external text", func(v *Vacation) { v.Audience, v.ExternalText = "none", "" }, ""},
		{"text at the limit", func(v *Vacation) { v.InternalText = strings.Repeat("é", MaxVacationText/2) }, ""},
		{"subject at the limit", func(v *Vacation) { v.Subject = strings.Repeat("x", MaxVacationSubject) }, ""},
		{"days 1", func(v *Vacation) { v.Days = 1 }, ""},
		{"days 365", func(v *Vacation) { v.Days = 365 }, ""},
		{"from", func(v *Vacation) { v.From = "alice+ooo@example.com" }, ""},

		{"unknown state", func(v *Vacation) { v.State = "maybe" }, `state "maybe"`},
		{"empty state", func(v *Vacation) { v.State = "" }, `state ""`},
		{"unknown audience", func(v *Vacation) { v.Audience = "some" }, `external audience "some"`},
		{"days 0", func(v *Vacation) { v.Days = 0 }, "days 0"},
		{"days 366", func(v *Vacation) { v.Days = 366 }, "days 366"},
		{"scheduled without dates", func(v *Vacation) { v.State = "scheduled" }, "needs a start or an end"},
		{"on with dates", func(v *Vacation) { v.End = start }, "scheduled, not on"},
		{"start after end", func(v *Vacation) { v.State, v.Start, v.End = "scheduled", start, start.Add(-time.Hour) }, "not before end"},
		{"start equals end", func(v *Vacation) { v.State, v.Start, v.End = "scheduled", start, start }, "not before end"},
		{"before 1970", func(v *Vacation) { v.State, v.Start = "scheduled", time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC) }, "not after 1970"},
		{"text too long", func(v *Vacation) { v.ExternalText = strings.Repeat("x", MaxVacationText+1) }, "external text is 16385 bytes"},
		{"text not UTF-8", func(v *Vacation) { v.InternalText = "caf\xe9" }, "internal text is not valid UTF-8"},
		{"text with NUL", func(v *Vacation) { v.InternalText = "a\x00b" }, "NUL"},
		{"subject too long", func(v *Vacation) { v.Subject = strings.Repeat("x", MaxVacationSubject+1) }, "subject is 1001 bytes"},
		{"subject with LF", func(v *Vacation) { v.Subject = "a\nBcc: x@example.org" }, "line break"},
		{"subject with CR", func(v *Vacation) { v.Subject = "a\rb" }, "line break"},
		{"subject with a tab", func(v *Vacation) { v.Subject = "a\tb" }, "control character"},
		{"subject not UTF-8", func(v *Vacation) { v.Subject = "\xff" }, "subject is not valid UTF-8"},
		{"on without internal text", func(v *Vacation) { v.InternalText = "" }, "internal text is empty"},
		{"on without external text", func(v *Vacation) { v.ExternalText = "" }, "external text is empty"},
		{"from with display name", func(v *Vacation) { v.From = "Alice <alice@example.com>" }, "not a plain address"},
		{"from without domain", func(v *Vacation) { v.From = "alice@" }, "not a plain address"},
		{"from with CRLF", func(v *Vacation) { v.From = "a@example.com\r\nBcc: x@y" }, "not a plain address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := onVacation()
			tt.change(&v)
			err := st.SetVacation(t.Context(), alice, v)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("SetVacation: %v, want success", err)
			case tt.want != "" && (!errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("SetVacation: %v, want ErrMalformed with %q", err, tt.want)
			}
		})
	}
}

func TestVacationRoundTrip(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "bob", "alice", "carol")
	alice, bob := addr(t, c, "alice"), addr(t, c, "bob")
	if _, err := st.Vacation(ctx, alice); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "vacation of alice@example.com") {
		t.Errorf("Vacation before any: %v, want ErrNotFound naming the vacation", err)
	}
	nobody := addr(t, c, "nobody")
	if _, err := st.Vacation(ctx, nobody); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "user nobody@example.com") {
		t.Errorf("Vacation of an unknown user: %v, want ErrNotFound naming the user", err)
	}
	if err := st.SetVacation(ctx, nobody, onVacation()); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetVacation of an unknown user: %v, want ErrNotFound", err)
	}
	if err := st.VacationOff(ctx, nobody); !errors.Is(err, ErrNotFound) {
		t.Errorf("VacationOff of an unknown user: %v, want ErrNotFound", err)
	}
	if err := st.VacationOff(ctx, bob); err != nil {
		t.Errorf("VacationOff without settings: %v", err)
	}

	// Times come back in UTC, to the second.
	paris := time.FixedZone("CEST", 2*3600)
	v := onVacation()
	v.State, v.Start, v.End = "scheduled", time.Date(2030, 7, 1, 9, 0, 0, 500, paris), time.Date(2030, 7, 15, 18, 0, 0, 0, paris)
	v.From, v.Days, v.Audience = "alice@example.com", 3, "known"
	before := time.Now().Truncate(time.Second)
	if err := st.SetVacation(ctx, alice, v); err != nil {
		t.Fatal(err)
	}
	got := mustVacation(t, st, alice)
	if got.Address != "alice@example.com" || got.State != "scheduled" || got.Start != time.Date(2030, 7, 1, 7, 0, 0, 0, time.UTC) ||
		got.End != time.Date(2030, 7, 15, 16, 0, 0, 0, time.UTC) || got.Subject != v.Subject || got.InternalText != v.InternalText ||
		got.ExternalText != v.ExternalText || got.Audience != "known" || got.Days != 3 || got.From != v.From ||
		len(got.Period) != 16 || got.Updated.Before(before) {
		t.Errorf("Vacation = %+v", got)
	}
	if err := st.SetVacation(ctx, bob, onVacation()); err != nil {
		t.Fatal(err)
	}
	vs, err := st.Vacations(ctx)
	if err != nil || len(vs) != 2 || vs[0].Address != "alice@example.com" || vs[1].Address != "bob@example.com" || vs[1].State != "on" {
		t.Errorf("Vacations = %+v, %v; want alice's and bob's by address", vs, err)
	}

	if err := st.VacationOff(ctx, alice); err != nil {
		t.Fatal(err)
	}
	off := mustVacation(t, st, alice)
	if off.State != "off" || !off.Start.IsZero() || !off.End.IsZero() || off.InternalText != v.InternalText ||
		off.ExternalText != v.ExternalText || off.Subject != v.Subject {
		t.Errorf("after VacationOff: %+v; want off, no dates, texts kept", off)
	}
	if vs, _ := st.Vacations(ctx); len(vs) != 2 {
		t.Errorf("Vacations after off = %+v; want the off one listed too", vs)
	}
	if _, err := st.DeleteUser(ctx, bob); err != nil {
		t.Fatal(err)
	}
	if vs, _ := st.Vacations(ctx); len(vs) != 1 {
		t.Errorf("Vacations after deleting bob = %+v; want his gone with him", vs)
	}
}

// TestVacationPeriod: the period (the Sieve :handle) is new exactly when a
// new absence starts, so senders get one reply per absence.
func TestVacationPeriod(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "alice")
	alice := addr(t, c, "alice")
	period := func() string { t.Helper(); return mustVacation(t, st, alice).Period }
	set := func(change func(v *Vacation)) {
		t.Helper()
		v := mustVacation(t, st, alice)
		v.Period = "caller-supplied" // ignored
		change(&v)
		if err := st.SetVacation(ctx, alice, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetVacation(ctx, alice, onVacation()); err != nil {
		t.Fatal(err)
	}
	p := period()
	if len(p) != 16 || strings.Trim(p, "0123456789abcdef") != "" {
		t.Fatalf("period %q: want 16 hex digits", p)
	}
	start := time.Date(2030, 7, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		name   string
		change func(v *Vacation)
		isNew  bool
	}{
		{"text edit", func(v *Vacation) { v.InternalText, v.Subject = "Changed.", "New subject" }, false},
		{"days, audience and from", func(v *Vacation) { v.Days, v.Audience, v.From = 14, "known", "a@example.com" }, false},
		{"dates added", func(v *Vacation) { v.State, v.Start = "scheduled", start }, true},
		{"same dates again", func(v *Vacation) {}, false},
		{"end added", func(v *Vacation) { v.End = start.AddDate(0, 0, 14) }, true},
		{"end moved", func(v *Vacation) { v.End = start.AddDate(0, 0, 21) }, true},
		{"sub-second change is no change", func(v *Vacation) { v.End = v.End.Add(300 * time.Millisecond) }, false},
		{"texts while scheduled", func(v *Vacation) { v.ExternalText = "Other." }, false},
		{"dates removed", func(v *Vacation) { v.State, v.Start, v.End = "on", time.Time{}, time.Time{} }, true},
		{"turned off via SetVacation", func(v *Vacation) { v.State = "off" }, false},
		{"on again", func(v *Vacation) { v.State = "on" }, true},
	}
	for _, s := range steps {
		set(s.change)
		if q := period(); (q != p) != s.isNew || q == "caller-supplied" {
			t.Errorf("%s: period %q -> %q, want new: %v", s.name, p, q, s.isNew)
		}
		p = period()
	}
	if err := st.VacationOff(ctx, alice); err != nil {
		t.Fatal(err)
	}
	set(func(v *Vacation) { v.State = "on" })
	if q := period(); q == p {
		t.Errorf("on after VacationOff kept period %q", q)
	}
}

// TestMigrateFrom0001: a store made by the first release, with a vacation
// on and a Sieve state, opens with the new columns filled in.
func TestMigrateFrom0001(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := migrations.ReadFile("migrations/0001_init.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{string(v1), "PRAGMA user_version = 1",
		"INSERT INTO organisations (name, created) VALUES ('Acme', 1)",
		"INSERT INTO domains (name, org_id, created) VALUES ('example.com', 1, 1)",
		"INSERT INTO users (address, domain_id, created, updated) VALUES ('alice@example.com', 1, 1, 1), ('bob@example.com', 1, 1, 1)",
		`INSERT INTO vacations (user_id, state, internal_text, external_text, updated) VALUES (1, 'on', 'in', 'out', 1), (2, 'on', 'in', 'out', 1)`,
		"INSERT INTO sieve_state (address, script_hash, installed_at) VALUES ('alice@example.com', 'abc', 2)",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%.40s: %v", q, err)
		}
	}
	db.Close()

	st, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	names, _ := migrations.ReadDir("migrations")
	if v, err := st.SchemaVersion(ctx); err != nil || v != len(names) || v < 2 {
		t.Errorf("schema version %d, %v; want %d", v, err, len(names))
	}
	vs, err := st.Vacations(ctx)
	if err != nil || len(vs) != 2 {
		t.Fatalf("Vacations = %+v, %v", vs, err)
	}
	if vs[0].State != "on" || vs[0].InternalText != "in" || vs[0].Days != DefaultVacationDays || len(vs[0].Period) != 16 ||
		vs[0].Period == vs[1].Period {
		t.Errorf("migrated vacations = %+v; want each with a period of its own", vs)
	}
	ss, err := st.SieveState(ctx, "alice@example.com")
	if err != nil || ss.ScriptHash != "abc" || ss.Mode != "" || ss.PrevActive != "" || ss.InstalledAt != time.Unix(2, 0).UTC() {
		t.Errorf("migrated sieve state = %+v, %v", ss, err)
	}
	// The migrated store takes the new columns.
	ss.Mode, ss.PrevActive = "include", "mine"
	if err := st.SetSieveState(ctx, ss); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.SieveState(ctx, "alice@example.com"); got.Mode != "include" || got.PrevActive != "mine" {
		t.Errorf("sieve state after update = %+v", got)
	}
}

func TestAddressesOf(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "alice", "bob", "dave")
	st.AddOrg(ctx, "Other")
	st.AddDomain(ctx, "other.org", "Other")
	st.AddDomain(ctx, "example.net", "Acme")
	exact := func(s string) Address {
		t.Helper()
		a, err := c.Exact(s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	mustAlias := func(a string, targets ...string) {
		t.Helper()
		var ts []Address
		for _, s := range targets {
			ts = append(ts, exact(s))
		}
		if _, err := st.AddAlias(ctx, addr(t, c, a), ts); err != nil {
			t.Fatal(err)
		}
	}
	mustAlias("a.liddell", "alice")
	mustAlias("sales", "Alice+Sales", "friend@outside.org") // a +detail target still reaches alice
	mustAlias("all@example.net", "sales", "bob")            // nested, another domain
	mustAlias("loop1", "loop2", "alice")                    // a loop through alice
	mustAlias("loop2", "loop1")
	mustAlias("team@other.org", "all@example.net")
	mustAlias("bobonly", "bob")
	mustAlias("alicex", "alicexyz@outside.org") // a prefix of alice's name, elsewhere
	mustAlias("alice2@other.org", "alice@other.org")
	mustAlias("alice3@other.org", "alice+x@other.org") // in the target range, another domain
	// A chain exactly as deep as Resolve follows, and one step deeper.
	prev := "alice"
	for i := 1; i <= maxAliasDepth+1; i++ {
		name := "chain" + string(rune('a'+i-1))
		mustAlias(name, prev)
		prev = name
	}
	if err := st.SetCatchAll(ctx, "example.com", exact("alice")); err != nil {
		t.Fatal(err)
	}
	got, err := st.AddressesOf(ctx, c, addr(t, c, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a.liddell@example.com", "alice@example.com", "all@example.net", "chaina@example.com",
		"chainb@example.com", "chainc@example.com", "chaind@example.com", "chaine@example.com", "chainf@example.com",
		"chaing@example.com", "chainh@example.com", "loop1@example.com", "loop2@example.com", "sales@example.com",
		"team@other.org"}
	if !slices.Equal(got, want) {
		t.Errorf("AddressesOf(alice) =\n%q\nwant\n%q", got, want)
	}
	// Every address listed really delivers to alice, by the resolver.
	for _, a := range got {
		r, err := st.Resolve(ctx, c, addr(t, c, a))
		if err != nil || !slices.Contains(r.Users, "alice@example.com") {
			t.Errorf("Resolve(%s) = %+v, %v; does not reach alice", a, r, err)
		}
	}
	if r, _ := st.Resolve(ctx, c, addr(t, c, "chaini")); slices.Contains(r.Users, "alice@example.com") {
		t.Errorf("chaini reaches alice after all: the depth test is wrong")
	}
	if got, _ := st.AddressesOf(ctx, c, addr(t, c, "dave")); !slices.Equal(got, []string{"dave@example.com"}) {
		t.Errorf("AddressesOf(dave) = %q; want own address only (the catch-all is not his)", got)
	}
	if got, _ := st.AddressesOf(ctx, c, addr(t, c, "bob")); !slices.Equal(got, []string{"all@example.net", "bob@example.com", "bobonly@example.com", "team@other.org"}) {
		t.Errorf("AddressesOf(bob) = %q", got)
	}
	st.SetDisabled(ctx, addr(t, c, "bob"), true)
	if got, _ := st.AddressesOf(ctx, c, addr(t, c, "bob")); !slices.Equal(got, []string{"bob@example.com"}) {
		t.Errorf("AddressesOf(disabled bob) = %q; no alias delivers to him", got)
	}
	if _, err := st.AddressesOf(ctx, c, addr(t, c, "sales")); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddressesOf(an alias): %v, want ErrNotFound", err)
	}
	// Without detail stripping, alice+sales is a different mailbox.
	plain := mustCanon(t, "example.com", "")
	if got, _ := st.AddressesOf(ctx, plain, addr(t, plain, "alice")); slices.Contains(got, "sales@example.com") {
		t.Errorf("AddressesOf(alice) without a separator = %q; sales names alice+sales", got)
	}
}

func TestOrgDomains(t *testing.T) {
	ctx := t.Context()
	st, c := withUsers(t, "alice")
	st.AddDomain(ctx, "example.net", "Acme")
	st.AddDomain(ctx, "a.example.org", "Acme")
	st.AddOrg(ctx, "Other")
	st.AddDomain(ctx, "other.org", "Other")
	got, err := st.OrgDomains(ctx, addr(t, c, "alice"))
	if want := []string{"a.example.org", "example.com", "example.net"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("OrgDomains(alice) = %q, %v; want %q", got, err, want)
	}
	if got, err := st.OrgDomains(ctx, addr(t, c, "x@other.org")); err != nil || !slices.Equal(got, []string{"other.org"}) {
		t.Errorf("OrgDomains(other.org) = %q, %v", got, err)
	}
	if _, err := st.OrgDomains(ctx, addr(t, c, "x@outside.org")); !errors.Is(err, ErrNotHosted) {
		t.Errorf("OrgDomains(outside.org): %v, want ErrNotHosted", err)
	}
}
