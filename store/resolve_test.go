package store

import (
	"slices"
	"testing"
)

func TestResolve(t *testing.T) {
	ctx := t.Context()
	st, c := openTest(t)
	st.AddOrg(ctx, "Acme")
	st.AddDomain(ctx, "example.com", "Acme")
	st.AddOrg(ctx, "Other")
	st.AddDomain(ctx, "other.org", "Other")
	for _, u := range []string{"alice", "bob", "carol@other.org"} {
		if _, err := st.AddUser(ctx, NewUser{Address: addr(t, c, u)}); err != nil {
			t.Fatal(err)
		}
	}
	st.SetDisabled(ctx, addr(t, c, "bob"), true)
	exact := func(s string) Address {
		a, err := c.Exact(s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	mustAlias := func(a string, targets ...string) {
		var ts []Address
		for _, s := range targets {
			ts = append(ts, exact(s))
		}
		if _, err := st.AddAlias(ctx, addr(t, c, a), ts); err != nil {
			t.Fatal(err)
		}
	}
	mustAlias("sales", "alice+sales", "bob", "friend@outside.org")
	mustAlias("all", "sales", "carol@other.org", "loop")
	mustAlias("loop", "all")
	mustAlias("gone", "nobody")
	if err := st.SetCatchAll(ctx, "other.org", exact("carol@other.org")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		in          string
		hosted      bool
		kind        Kind
		deliverable bool
		users       []string
	}{
		{"alice", true, KindUser, true, []string{"alice@example.com"}},
		{"Alice+Folder@Example.com", true, KindUser, true, []string{"alice@example.com"}},
		{"bob", true, KindUser, false, nil},
		{"nobody", true, KindNone, false, nil},
		{"sales", true, KindAlias, true, []string{"alice@example.com"}},
		{"all", true, KindAlias, true, []string{"alice@example.com", "carol@other.org"}},
		{"loop", true, KindAlias, true, []string{"alice@example.com", "carol@other.org"}},
		{"gone", true, KindAlias, false, nil}, // reaches nobody: refused, not bounced later
		{"anything@other.org", true, KindCatchAll, true, []string{"carol@other.org"}},
		{"carol@other.org", true, KindUser, true, []string{"carol@other.org"}},
		{"x@outside.org", false, KindNone, false, nil},
	}
	for _, tt := range tests {
		r, err := st.Resolve(ctx, c, addr(t, c, tt.in))
		if err != nil {
			t.Fatalf("Resolve(%s): %v", tt.in, err)
		}
		if tt.in == "sales" && !slices.Equal(r.Remote, []string{"friend@outside.org"}) {
			t.Errorf("Resolve(sales).Remote = %q", r.Remote)
		}
		if r.Hosted != tt.hosted || r.Kind != tt.kind || r.Deliverable() != tt.deliverable || !slices.Equal(r.Users, tt.users) {
			t.Errorf("Resolve(%s) = hosted %v %v deliverable %v users %q; want %v %v %v %q",
				tt.in, r.Hosted, r.Kind, r.Deliverable(), r.Users, tt.hosted, tt.kind, tt.deliverable, tt.users)
		}
	}
}
