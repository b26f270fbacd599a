package password

import (
	"errors"
	"testing"
	"time"
)

// fuzzLimits are far below storedLimits so that every accepted input is
// cheap to compute; parsing, which is what the fuzzer explores, is the same.
func fuzzLimits() limits {
	return limits{
		argon2MemoryKiB: 1024,
		argon2Time:      3,
		argon2Threads:   4,
		shaRounds:       5000,
		bcryptCost:      5,
	}
}

func FuzzVerify(f *testing.F) {
	for _, v := range vectors() {
		f.Add(v.hash, v.password)
	}
	for _, tt := range malformedCases() {
		f.Add(tt.hash, "secret")
	}
	f.Fuzz(func(t *testing.T, hash, password string) {
		start := time.Now()
		ok, err := verify(hash, password, fuzzLimits())
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("verify took %v", d)
		}
		if err != nil {
			if ok {
				t.Fatalf("verify = true, %v", err)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownScheme) && !errors.Is(err, ErrTooLong) {
				t.Fatalf("error %q wraps none of the sentinels", err)
			}
			// The message depends on the hash only, never on the password
			// (except the length check), so it cannot leak it.
			if !errors.Is(err, ErrTooLong) {
				_, err2 := verify(hash, "", fuzzLimits())
				if err2 == nil || err2.Error() != err.Error() {
					t.Fatalf("error depends on the password: %q vs %q", err, err2)
				}
			}
			return
		}
		if Scheme(hash) == "" {
			t.Fatalf("verify accepted a hash of unknown scheme")
		}
	})
}
