package store

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestSieveState(t *testing.T) {
	ctx := t.Context()
	st, _ := openTest(t)
	if got, err := st.SieveState(ctx, "alice@example.com"); err != nil || got != (SieveState{}) {
		t.Errorf("SieveState with none = %+v, %v; want the zero value", got, err)
	}
	at := time.Date(2030, 7, 1, 9, 30, 0, 0, time.UTC)
	want := SieveState{Address: "alice@example.com", ScriptHash: strings.Repeat("ab", 32), Mode: "include",
		PrevActive: "roundcube", InstalledAt: at, AttemptedAt: at.Add(time.Minute)}
	if err := st.SetSieveState(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := st.SetSieveState(ctx, SieveState{Address: "bob@example.com", AttemptedAt: at, LastError: "NO \"quota\""}); err != nil {
		t.Fatal(err)
	}
	if got, err := st.SieveState(ctx, "alice@example.com"); err != nil || got != want {
		t.Errorf("SieveState = %+v, %v; want %+v", got, err, want)
	}
	// An upsert replaces every field.
	want.Mode, want.ScriptHash, want.LastError = "", "", "connection refused"
	if err := st.SetSieveState(ctx, want); err != nil {
		t.Fatal(err)
	}
	all, err := st.SieveStates(ctx)
	if err != nil || len(all) != 2 || all[0] != want || all[1].Address != "bob@example.com" || all[1].LastError != `NO "quota"` {
		t.Errorf("SieveStates = %+v, %v", all, err)
	}
	for _, mode := range []string{"wrapper", "report"} {
		if err := st.SetSieveState(ctx, SieveState{Address: "carol@example.com", Mode: mode}); err != nil {
			t.Errorf("mode %q: %v", mode, err)
		}
	}
	if err := st.SetSieveState(ctx, SieveState{Address: "carol@example.com", Mode: "wrap"}); !errors.Is(err, ErrMalformed) {
		t.Errorf("mode wrap: %v, want ErrMalformed", err)
	}
	if err := st.SetSieveState(ctx, SieveState{Mode: "include"}); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty address: %v, want ErrMalformed", err)
	}
	// A huge error (ManageSieve quoting a script back) is cut, still UTF-8.
	long := strings.Repeat("é", maxSieveError)
	if err := st.SetSieveState(ctx, SieveState{Address: "carol@example.com", LastError: long}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.SieveState(ctx, "carol@example.com"); len(got.LastError) > maxSieveError || len(got.LastError) < maxSieveError-1 ||
		!utf8.ValidString(got.LastError) {
		t.Errorf("long error stored as %d bytes, valid UTF-8 %v", len(got.LastError), utf8.ValidString(got.LastError))
	}
	for range 2 { // the second time there is nothing to delete
		if err := st.DeleteSieveState(ctx, "bob@example.com"); err != nil {
			t.Fatal(err)
		}
	}
	all, _ = st.SieveStates(ctx)
	var names []string
	for _, s := range all {
		names = append(names, s.Address)
	}
	if !slices.Equal(names, []string{"alice@example.com", "carol@example.com"}) {
		t.Errorf("after delete: %q", names)
	}
}

// TestSieveStateGeneration: the vacation service's bookkeeping does not
// flush every cache, while vacation settings (directory data) do.
func TestSieveStateGeneration(t *testing.T) {
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
	g := gen()
	if err := st.SetSieveState(ctx, SieveState{Address: "alice@example.com", ScriptHash: "x", Mode: "wrapper"}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetSieveState(ctx, SieveState{Address: "alice@example.com", LastError: "later"}); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteSieveState(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	if g2 := gen(); g2 != g {
		t.Errorf("generation moved after sieve state writes: %d -> %d", g, g2)
	}
	if err := st.SetVacation(ctx, alice, onVacation()); err != nil {
		t.Fatal(err)
	}
	g2 := gen()
	if g2 == g {
		t.Errorf("generation did not move after SetVacation")
	}
	if err := st.VacationOff(ctx, alice); err != nil {
		t.Fatal(err)
	}
	g3 := gen()
	if g3 == g2 {
		t.Errorf("generation did not move after VacationOff")
	}
	if err := st.VacationOff(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if g4 := gen(); g4 != g3 {
		t.Errorf("generation moved after VacationOff of an off vacation: %d -> %d", g3, g4)
	}
}
