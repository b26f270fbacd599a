package password

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// testParams are the cheapest parameters Validate allows, to keep the
// Hash/Verify tests fast.
func testParams() Params { return Params{Time: 1, MemoryKiB: 8 << 10, Threads: 1} }

func newTestHasher(t testing.TB, p Params) *Hasher {
	t.Helper()
	h, err := New(p)
	if err != nil {
		t.Fatalf("New(%+v): %v", p, err)
	}
	return h
}

func TestParamsValidate(t *testing.T) {
	tests := []struct {
		name   string
		p      Params
		errHas []string // each must appear in the error; none means valid
	}{
		{"default", DefaultParams(), nil},
		{"minimum", Params{Time: 1, MemoryKiB: 8192, Threads: 1}, nil},
		{"maximum", Params{Time: 10, MemoryKiB: 1 << 20, Threads: 16}, nil},
		{"zero", Params{}, []string{"time:", "memory_kib:", "threads:"}},
		{"time 11", Params{Time: 11, MemoryKiB: 19456, Threads: 1}, []string{"time: must be between 1 and 10, got 11"}},
		{"memory 8191", Params{Time: 2, MemoryKiB: 8191, Threads: 1}, []string{"memory_kib: must be between 8192 and 1048576 KiB, got 8191"}},
		{"memory 1GiB+1", Params{Time: 2, MemoryKiB: 1<<20 + 1, Threads: 1}, []string{"memory_kib:"}},
		{"threads 17", Params{Time: 2, MemoryKiB: 19456, Threads: 17}, []string{"threads: must be between 1 and 16, got 17"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if len(tt.errHas) == 0 {
				if err != nil {
					t.Errorf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want an error mentioning %q", tt.errHas)
			}
			for _, s := range tt.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Validate() = %q; want it to contain %q", err, s)
				}
			}
			if _, err := New(tt.p); err == nil {
				t.Errorf("New(%+v) succeeded; want the Validate error", tt.p)
			}
		})
	}
}

func TestDefaultParams(t *testing.T) {
	// OWASP Password Storage Cheat Sheet: m=19456 (19 MiB), t=2, p=1.
	if got, want := DefaultParams(), (Params{Time: 2, MemoryKiB: 19456, Threads: 1}); got != want {
		t.Errorf("DefaultParams() = %+v; want %+v", got, want)
	}
}

func TestHashVerifyRoundTrip(t *testing.T) {
	h := newTestHasher(t, testParams())
	phc := regexp.MustCompile(`^\$argon2id\$v=19\$m=8192,t=1,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)
	for _, pw := range []string{"secret", "", "pässwörd ✓", "with\x00nul", strings.Repeat("x", MaxPasswordLen)} {
		hash, err := h.Hash(pw)
		if err != nil {
			t.Fatalf("Hash(%d bytes): %v", len(pw), err)
		}
		if !phc.MatchString(hash) {
			t.Errorf("Hash(%d bytes) = %q; want a PHC string matching %s", len(pw), hash, phc)
		}
		if ok, err := Verify(hash, pw); !ok || err != nil {
			t.Errorf("Verify(Hash(%d bytes), same) = %v, %v; want true, nil", len(pw), ok, err)
		}
		if ok, err := Verify(hash, wrong(pw)); ok || err != nil {
			t.Errorf("Verify(Hash(%d bytes), other) = %v, %v; want false, nil", len(pw), ok, err)
		}
		if h.NeedsRehash(hash) {
			t.Errorf("NeedsRehash(fresh hash) = true; want false")
		}
	}
	a, _ := h.Hash("secret")
	b, _ := h.Hash("secret")
	if a == b {
		t.Errorf("two hashes of one password are equal; the salt is not random")
	}
}

func TestHashTooLong(t *testing.T) {
	h := newTestHasher(t, testParams())
	_, err := h.Hash(strings.Repeat("x", MaxPasswordLen+1))
	if err == nil || !strings.Contains(err.Error(), "1024") {
		t.Fatalf("Hash(1025 bytes) = %v; want ErrTooLong naming 1024", err)
	}
}

func TestNeedsRehash(t *testing.T) {
	h := newTestHasher(t, DefaultParams())
	current, err := h.Hash("secret")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, hash string
		want       bool
	}{
		{"fresh", current, false},
		// argon2 CLI, saltsaltsaltsalt -id -t 2 -k 19456 -p 1 (see vectors_test.go)
		{"same params, other tool", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$6G4RVhNf4sYzxbGJQzsImNwnF3BnniV+nogjylwdjiA", false},
		{"other memory", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0c2FsdA$FbJ1lfvVOaIr/c+LmFdF+61MmFGb6DP0RQgJ+CssLaY", true},
		{"other time", strings.Replace(current, "t=2", "t=3", 1), true},
		{"other threads", strings.Replace(current, "p=1", "p=2", 1), true},
		{"short key", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$XK2SSMHUgIfEY5ZNz+0/wQ", true},
		{"short salt", "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$6G4RVhNf4sYzxbGJQzsImNwnF3BnniV+nogjylwdjiA", true},
		{"argon2i", strings.Replace(current, "$argon2id$", "$argon2i$", 1), true},
		{"v=16", strings.Replace(current, "v=19", "v=16", 1), true},
		{"bcrypt", "$2b$10$abcdefghijklmnopqrstuuqflPDzB6gcMhKa1rZqKiun2YGL5sa2u", true},
		{"sha512-crypt", "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1", true},
		{"malformed", "$argon2id$v=19$m=19456,t=2,p=1$", true},
		{"unknown", "plaintext", true},
		{"empty", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := h.NeedsRehash(tt.hash); got != tt.want {
				t.Errorf("NeedsRehash(%q) = %v; want %v", tt.hash, got, tt.want)
			}
		})
	}
}

func TestScheme(t *testing.T) {
	tests := []struct{ hash, want string }{
		{"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$a2V5", SchemeArgon2id},
		{"$argon2i$v=19$m=256,t=2,p=1$c2FsdA$a2V5", SchemeArgon2i},
		{"$argon2i$m=256,t=2,p=1$c2FsdA$a2V5", SchemeArgon2i}, // named, though Verify refuses it
		{"$argon2d$v=19$m=256,t=2,p=1$c2FsdA$a2V5", ""},
		{"$argon2$", ""},
		{"$2a$10$x", SchemeBcrypt},
		{"$2b$10$x", SchemeBcrypt},
		{"$2y$10$x", SchemeBcrypt},
		{"$2x$10$x", ""},
		{"$2$10$x", ""},
		{"$6$saltsalt$x", SchemeSHA512Crypt},
		{"$6$rounds=5000$saltsalt$x", SchemeSHA512Crypt},
		{"$5$saltsalt$x", SchemeSHA256Crypt},
		{"$1$saltsalt$x", ""},
		{"$y$j9T$x", ""}, // yescrypt
		{"{SSHA}x", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := Scheme(tt.hash); got != tt.want {
			t.Errorf("Scheme(%q) = %q; want %q", tt.hash, got, tt.want)
		}
	}
}

// TestDummyVerifyCost checks that DummyVerify does the work of verifying a
// current hash, so an unknown user is not answered measurably faster. The
// bounds are loose (a factor of two) because CI machines are noisy; the
// minimum of several runs filters out most interference.
func TestDummyVerifyCost(t *testing.T) {
	if testing.Short() {
		t.Skip("timing test")
	}
	h := newTestHasher(t, Params{Time: 2, MemoryKiB: 8 << 10, Threads: 1})
	hash, err := h.Hash("secret")
	if err != nil {
		t.Fatal(err)
	}
	minOf := func(f func()) time.Duration {
		best := time.Duration(1<<63 - 1)
		for range 5 {
			start := time.Now()
			f()
			best = min(best, time.Since(start))
		}
		return best
	}
	verify := minOf(func() { _, _ = Verify(hash, "wrong") }) // result irrelevant: timing only
	dummy := minOf(func() { h.DummyVerify("wrong") })
	if ratio := float64(dummy) / float64(verify); ratio < 0.5 || ratio > 2 {
		t.Errorf("DummyVerify took %v, Verify %v (ratio %.2f); want within a factor of 2", dummy, verify, ratio)
	}
}

func ExampleVerify() {
	// openssl passwd -6 -salt saltsalt secret
	const stored = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"
	ok, err := Verify(stored, "secret")
	fmt.Println(Scheme(stored), ok, err)
	h, _ := New(DefaultParams())
	fmt.Println("rehash:", h.NeedsRehash(stored))
	// Output:
	// sha512-crypt true <nil>
	// rehash: true
}
