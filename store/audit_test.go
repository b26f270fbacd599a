package store

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestRecordLogins: a batch comes back as it went in, in order, whatever
// bytes the peer put in its strings, and across the 1000-row split.
func TestRecordLogins(t *testing.T) {
	st, _ := openTest(t)
	ctx := t.Context()
	at := time.Unix(1_700_000_000, 0).UTC()
	odd := []string{`q"uote`, `back\slash`, "new\nline\ttab\x01\x1f\x7f", "ünïcödé ✓ \u2028", "bad\xffutf8", "", "x"}
	var want []LoginEvent
	for i := range 1500 {
		want = append(want, LoginEvent{At: at.Add(time.Duration(i) * time.Second), Login: odd[i%len(odd)],
			Service: fmt.Sprint("svc", i), Result: ResultOK, Reason: odd[(i+1)%len(odd)], Client: odd[(i+2)%len(odd)]})
	}
	// A batch of one.
	clean := []LoginEvent{{At: at, Login: `a"b\c`, Service: "imap", Result: ResultFail, Reason: "wrong\npassword\x01\x1f\x7f ✓ \u2028", Client: "::1;993"}}
	if err := st.RecordLogins(ctx, clean); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordLogins(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := st.Logins(ctx, "", 10_000)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(got) // newest first
	want = append(clean, want...)
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("row %d = %#v, want %#v", i, got[i], want[i])
		}
	}
}

// BenchmarkRecordLogins writes the responder's batches of 256 attempts.
func BenchmarkRecordLogins(b *testing.B) {
	st, err := Open(b.Context(), filepath.Join(b.TempDir(), "s.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	batch := make([]LoginEvent, 256)
	for i := range batch {
		batch[i] = LoginEvent{At: time.Now(), Login: "alice@example.com", Service: "imap", Result: ResultOK, Reason: "ok", Client: "192.0.2.1"}
	}
	b.ResetTimer()
	for b.Loop() {
		if err := st.RecordLogins(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch))/1000, "µs/row")
}

// TestLoginsWhere: each filter alone and together, newest first, the limit.
func TestLoginsWhere(t *testing.T) {
	st, _ := openTest(t)
	ctx := t.Context()
	at := time.Unix(1_700_000_000, 0).UTC()
	var es []LoginEvent
	for i := range 40 {
		e := LoginEvent{At: at.Add(time.Duration(i) * time.Minute), Login: []string{"alice@example.com", "bob@example.com"}[i%2],
			Service: []string{"imap", "sieve", "smtp"}[i%3], Result: ResultOK, Client: fmt.Sprint("192.0.2.", i)}
		if i%4 == 0 {
			e.Result, e.Reason = ResultFail, "wrong password"
		}
		if i == 7 {
			e.Client = "ünï;7" // what a client claims is kept as it came
		}
		es = append(es, e)
	}
	if err := st.RecordLogins(ctx, es); err != nil {
		t.Fatal(err)
	}
	want := func(f LoginFilter, keep func(LoginEvent) bool) {
		t.Helper()
		got, err := st.LoginsWhere(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var exp []LoginEvent
		for i := len(es) - 1; i >= 0; i-- {
			if keep(es[i]) && (f.Limit <= 0 && len(exp) < 100 || len(exp) < f.Limit) {
				exp = append(exp, es[i])
			}
		}
		if !slices.Equal(got, exp) {
			t.Errorf("%+v: got %d entries %v, want %d %v", f, len(got), got, len(exp), exp)
		}
	}
	want(LoginFilter{}, func(LoginEvent) bool { return true })
	want(LoginFilter{Limit: 5}, func(LoginEvent) bool { return true })
	want(LoginFilter{Login: "bob@example.com"}, func(e LoginEvent) bool { return e.Login == "bob@example.com" })
	want(LoginFilter{Result: ResultFail}, func(e LoginEvent) bool { return e.Result == ResultFail })
	want(LoginFilter{Service: "sieve", Login: "alice@example.com"}, func(e LoginEvent) bool {
		return e.Service == "sieve" && e.Login == "alice@example.com"
	})
	since := at.Add(30 * time.Minute)
	want(LoginFilter{Since: since, Result: ResultOK, Limit: 3}, func(e LoginEvent) bool { return !e.At.Before(since) && e.Result == ResultOK })
	want(LoginFilter{Login: "nobody@example.com"}, func(LoginEvent) bool { return false })
	want(LoginFilter{Client: "192.0.2.1"}, func(e LoginEvent) bool { return e.Client == "192.0.2.1" })
	want(LoginFilter{Client: "ünï"}, func(e LoginEvent) bool { return e.Client == "ünï;7" })
}
