package store

import (
	"errors"
	"strings"
	"testing"
)

func mustCanon(t testing.TB, def, sep string) Canon {
	t.Helper()
	c, err := NewCanon(def, sep)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCanonAddress(t *testing.T) {
	c := mustCanon(t, "Example.COM", "+")
	tests := []struct {
		in, want, detail string
		wantErr          error
	}{
		{"alice@example.com", "alice@example.com", "", nil},
		{"Alice@Example.COM", "alice@example.com", "", nil},
		{"alice", "alice@example.com", "", nil},
		{"alice+folder@example.com", "alice@example.com", "folder", nil},
		{"Alice+Folder@example.com", "alice@example.com", "Folder", nil}, // Cyrus keeps the folder's case
		{"alice+a+b@example.com", "alice@example.com", "a+b", nil},
		{"+x@example.com", "+x@example.com", "", nil}, // no user before the separator
		{"carol@other.org", "carol@other.org", "", nil},
		{"first.last@other.org", "first.last@other.org", "", nil},
		{"a@b@other.org", "", "", ErrMalformed}, // split at the last '@': local "a@b"
		{"jörg@Bücher.de", "jörg@xn--bcher-kva.de", "", nil},
		{"ÄRGER@example.com", "Ärger@example.com", "", nil}, // Cyrus lower-cases ASCII only
		{"", "", "", ErrMalformed},
		{"@example.com", "", "", ErrMalformed},
		{"alice@", "", "", ErrMalformed},
		{"al ice@example.com", "", "", ErrMalformed},
		{"al\x00ice@example.com", "", "", ErrMalformed},
		{"alice\r\n@example.com", "", "", ErrMalformed},
		{"al\x7fice@example.com", "", "", ErrMalformed},
		{"\"quoted\"@example.com", "", "", ErrMalformed},
		{"<alice@example.com>", "", "", ErrMalformed},
		{".alice@example.com", "", "", ErrMalformed},
		{"alice.@example.com", "", "", ErrMalformed},
		{"al..ice@example.com", "", "", ErrMalformed},
		{"alice@exa_mple.com", "", "", ErrMalformed},
		{"o'brien@example.com", "o'brien@example.com", "", nil},
		{"a_b-c=d~e#f$g@example.com", "a_b-c=d~e#f$g@example.com", "", nil},
		{"100%@example.com", "", "", ErrMalformed},        // '%' separates domains in Cyrus
		{"a!b@example.com", "", "", ErrMalformed},         // not in Cyrus's GOODCHARS
		{"a/b@example.com", "", "", ErrMalformed},         // hierarchy separator
		{"a^b@example.com", "", "", ErrMalformed},         // stands for '.' inside Cyrus
		{"a&b@example.com", "", "", ErrMalformed},         // starts modified UTF-7
		{"e\u0301mile@example.com", "", "", ErrMalformed}, // NFD: not normal form C
		{"émile@example.com", "émile@example.com", "", nil},
		{"a\u202eb@example.com", "", "", ErrMalformed}, // bidi override (Cf)
		{"a\u0085b@example.com", "", "", ErrMalformed}, // C1 control
		{"a\u00a0b@example.com", "", "", ErrMalformed}, // no-break space
		{"alice@-example.com", "", "", ErrMalformed},
		{"alice@example..com", "", "", ErrMalformed},
		{"alice@example.com.", "", "", ErrMalformed},
		{"alice@[127.0.0.1]", "", "", ErrMalformed},
		{"al\xffice@example.com", "", "", ErrMalformed},
		{strings.Repeat("a", 65) + "@example.com", "", "", ErrMalformed},
		{strings.Repeat("a", 64) + "@example.com", strings.Repeat("a", 64) + "@example.com", "", nil},
		{strings.Repeat("a", 64) + "+" + strings.Repeat("d", 100) + "@example.com", strings.Repeat("a", 64) + "@example.com", strings.Repeat("d", 100), nil},
		{"a@" + strings.Repeat("b", 64) + ".com", "", "", ErrMalformed},
		{strings.Repeat("x", 400), "", "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := c.Address(tt.in)
			if !errors.Is(err, tt.wantErr) || got.String() != tt.want || got.Detail() != tt.detail {
				t.Errorf("Address(%q) = %q detail %q, %v; want %q detail %q, %v", tt.in, got, got.Detail(), err, tt.want, tt.detail, tt.wantErr)
			}
		})
	}
}

// TestCanonLogin follows what Cyrus 3.6 sends to saslauthd with
// virtdomains: userid (cyrus-lab-facts.md §3).
func TestCanonLogin(t *testing.T) {
	c := mustCanon(t, "example.com", "+")
	tests := []struct {
		login, realm, want string
		wantErr            error
	}{
		{"alice", "", "alice@example.com", nil},             // alice@<defaultdomain>
		{"carol", "other.org", "carol@other.org", nil},      // carol@other.org
		{"alice", "example.com", "alice@example.com", nil},  // other defaultdomain
		{"alice@example.com", "", "alice@example.com", nil}, // testsaslauthd -u alice@example.com
		{"Carol", "Other.ORG", "carol@other.org", nil},      // username_tolower off
		{"alice+x", "", "alice+x@example.com", nil},         // logins keep the separator
		{"a@b", "other.org", "", ErrMalformed},              // user id had two '@'
		{"", "", "", ErrMalformed},
		{"alice", "bad realm", "", ErrMalformed},
		{"alice\x00", "", "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.login+"|"+tt.realm, func(t *testing.T) {
			got, err := c.Login(tt.login, tt.realm)
			if !errors.Is(err, tt.wantErr) || got.String() != tt.want {
				t.Errorf("Login(%q, %q) = %q, %v; want %q, %v", tt.login, tt.realm, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestCanonExact: alias targets keep their +detail and may use any RFC 5322
// atext, since they can live on other systems.
func TestCanonExact(t *testing.T) {
	c := mustCanon(t, "example.com", "+")
	for in, want := range map[string]string{
		"Bob+Lists@Example.com": "bob+Lists@example.com", // the folder keeps its case
		"a!b%c@outside.org":     "a!b%c@outside.org",
		"bob":                   "bob@example.com",
	} {
		if got, err := c.Exact(in); err != nil || got.String() != want || got.Detail() != "" {
			t.Errorf("Exact(%q) = %q detail %q, %v; want %q", in, got, got.Detail(), err, want)
		}
	}
	if _, err := c.Exact("a b@outside.org"); !errors.Is(err, ErrMalformed) {
		t.Errorf("Exact with a space: %v", err)
	}
}

func TestCanonNoDefaultDomain(t *testing.T) {
	c := mustCanon(t, "", "")
	if _, err := c.Address("alice"); !errors.Is(err, ErrMalformed) {
		t.Errorf("Address(alice) with no default domain: err = %v, want ErrMalformed", err)
	}
	if a, err := c.Address("alice+x@example.com"); err != nil || a.String() != "alice+x@example.com" {
		t.Errorf("no separator configured: Address = %q, %v; want the + kept", a, err)
	}
}

func TestNewCanonRejects(t *testing.T) {
	for _, tt := range []struct{ def, sep string }{{"bad domain", "+"}, {"example.com", "@"}, {"example.com", "-"}, {"example.com", "+-"}} {
		if _, err := NewCanon(tt.def, tt.sep); err == nil {
			t.Errorf("NewCanon(%q, %q) = nil error", tt.def, tt.sep)
		}
	}
}

// FuzzCanon checks the properties every service relies on: canonical output
// is a fixed point, bounded, and free of bytes that could break a wire
// protocol or a log line.
func FuzzCanon(f *testing.F) {
	for _, s := range []string{"alice@example.com", "Alice+x@Example.COM", "alice", "a@b@c", "jörg@bücher.de",
		"al\x00ice", "x@xn--bcher-kva.de", "+@x", ".a@b", "a@-b", "ÄRGER@EXAMPLE.com", "a@b.c.", "\xff@x"} {
		f.Add(s, "")
		f.Add(s, "other.org")
	}
	c := mustCanon(f, "example.com", "+")
	f.Fuzz(func(t *testing.T, s, realm string) {
		for _, a := range []func() (Address, error){
			func() (Address, error) { return c.Address(s) },
			func() (Address, error) { return c.Login(s, realm) },
			func() (Address, error) { return c.Exact(s) },
		} {
			got, err := a()
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("error %v is not ErrMalformed", err)
				}
				continue
			}
			out := got.String()
			user, _, _ := strings.Cut(got.Local(), "+")
			if len(out) > MaxAddress || len(got.Local()) > MaxLocal || got.Domain() == "" {
				t.Fatalf("%q: out of bounds: %q", s, out)
			}
			for i := 0; i < len(out); i++ {
				if b := out[i]; b <= ' ' || b == 0x7f || strings.IndexByte("\"(),:;<>[\\]", b) >= 0 {
					t.Fatalf("%q: canonical form %q holds byte %q", s, out, b)
				}
			}
			if strings.ToLower(user) != user && isASCII(user) {
				t.Fatalf("%q: user part %q not lower-case", s, user)
			}
			again, err := c.Exact(out)
			if err != nil || again != got.withoutDetail() {
				t.Fatalf("%q: canonical %q is not a fixed point: %q, %v", s, out, again, err)
			}
		}
	})
}

func (a Address) withoutDetail() Address { a.detail = ""; return a }
