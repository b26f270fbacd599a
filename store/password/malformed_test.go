package password

import (
	"errors"
	"strings"
	"testing"
)

// Building blocks for malformed hashes: a valid Argon2id hash of "secret"
// (argon2 CLI, see vectors_test.go) and valid bcrypt and SHA-512 sums.
const (
	a2Salt  = "c2FsdHNhbHRzYWx0c2FsdA"
	a2Key   = "6G4RVhNf4sYzxbGJQzsImNwnF3BnniV+nogjylwdjiA"
	bcBody  = "abcdefghijklmnopqrstuuqflPDzB6gcMhKa1rZqKiun2YGL5sa2u"
	sha512S = "TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"
)

// malformedCase is a stored hash Verify must refuse, the sentinel it must
// wrap, and text the message must contain (the bound it names).
type malformedCase struct {
	name, hash string
	wantErr    error
	wantText   string
}

func malformedCases() []malformedCase {
	a2 := func(params string) string { return "$argon2id$v=19$" + params + "$" + a2Salt + "$" + a2Key }
	return []malformedCase{
		{"argon2 no key", "$argon2id$v=19$m=19456,t=2,p=1$" + a2Salt, ErrMalformed, ""},
		{"argon2 params only", "$argon2id$v=19$m=19456,t=2,p=1", ErrMalformed, ""},
		{"argon2 id only", "$argon2id$", ErrMalformed, ""},
		{"argon2 extra field", a2("m=19456,t=2,p=1") + "$", ErrMalformed, ""},
		{"argon2 bad base64 salt", "$argon2id$v=19$m=19456,t=2,p=1$c2Fsd*NhbHRzYWx0c2FsdA$" + a2Key, ErrMalformed, "salt"},
		{"argon2 padded key", a2("m=19456,t=2,p=1") + "=", ErrMalformed, "key"},
		{"argon2 stray bits", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdB$" + a2Key, ErrMalformed, "salt"},
		{"argon2 short salt", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$" + a2Key, ErrMalformed, "8 bytes"},
		{"argon2 short key", "$argon2id$v=19$m=19456,t=2,p=1$" + a2Salt + "$AAAA", ErrMalformed, "4 bytes"},
		{"argon2 m=4GiB", a2("m=4194304,t=2,p=1"), ErrMalformed, "1048576 KiB"},
		{"argon2 m=2^32-1", a2("m=4294967295,t=2,p=1"), ErrMalformed, "1048576 KiB"},
		{"argon2 m overflow", a2("m=99999999999999999999999999,t=2,p=1"), ErrMalformed, "1048576 KiB"},
		{"argon2 t=21", a2("m=19456,t=21,p=1"), ErrMalformed, "limit 20"},
		{"argon2 t huge", a2("m=19456,t=999999999,p=1"), ErrMalformed, "limit 20"},
		{"argon2 t=0", a2("m=19456,t=0,p=1"), ErrMalformed, "below 1"},
		{"argon2 p=65", a2("m=19456,t=2,p=65"), ErrMalformed, "limit 64"},
		{"argon2 p=256", a2("m=19456,t=2,p=256"), ErrMalformed, "limit 64"},
		{"argon2 p=0", a2("m=19456,t=2,p=0"), ErrMalformed, "below 1"},
		{"argon2 m below 8", a2("m=7,t=2,p=1"), ErrMalformed, "8 KiB per lane"},
		{"argon2 m below 8p", a2("m=16,t=2,p=4"), ErrMalformed, "8 KiB per lane"},
		{"argon2 leading zero", a2("m=019456,t=2,p=1"), ErrMalformed, "leading zero"},
		{"argon2 sign", a2("m=+19456,t=2,p=1"), ErrMalformed, "decimal"},
		{"argon2 empty m", a2("m=,t=2,p=1"), ErrMalformed, ""},
		{"argon2 order", a2("t=2,m=19456,p=1"), ErrMalformed, "order"},
		{"argon2 missing p", a2("m=19456,t=2"), ErrMalformed, ""},
		{"argon2 unknown param", a2("m=19456,t=2,p=1,x=1"), ErrMalformed, ""},
		{"argon2 v=20", "$argon2id$v=20$m=19456,t=2,p=1$" + a2Salt + "$" + a2Key, ErrMalformed, "version"},
		{"argon2 v=019", "$argon2id$v=019$m=19456,t=2,p=1$" + a2Salt + "$" + a2Key, ErrMalformed, "version"},
		{"argon2 v empty", "$argon2id$v=$m=19456,t=2,p=1$" + a2Salt + "$" + a2Key, ErrMalformed, "version"},
		{"argon2 data", a2("m=19456,t=2,p=1,data=YWQ"), ErrUnknownScheme, "data"},
		{"argon2 trailing newline", a2("m=19456,t=2,p=1") + "\n", ErrMalformed, "line break"},
		{"argon2 CRLF in salt", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNh\r\nbHRzYWx0c2FsdA$" + a2Key, ErrMalformed, "line break"},

		{"bcrypt cost 17", "$2b$17$" + bcBody, ErrMalformed, "limit 16"},
		{"bcrypt cost 31", "$2b$31$" + bcBody, ErrMalformed, "limit 16"},
		{"bcrypt cost 99", "$2y$99$" + bcBody, ErrMalformed, "limit 16"},
		{"bcrypt cost 03", "$2a$03$" + bcBody, ErrMalformed, "below 4"},
		{"bcrypt cost sign", "$2b$+9$" + bcBody, ErrMalformed, "two digits"},
		{"bcrypt no dollar", "$2b$10x" + bcBody, ErrMalformed, "two digits"},
		{"bcrypt trailing", "$2b$10$" + bcBody + "x", ErrMalformed, "60"},
		{"bcrypt truncated", "$2b$10$" + bcBody[:52], ErrMalformed, "60"},
		{"bcrypt alphabet", "$2b$10$" + bcBody[:20] + "+" + bcBody[21:], ErrMalformed, "alphabet"},

		{"sha rounds=999999999", "$6$rounds=999999999$saltsalt$" + sha512S, ErrMalformed, "limit 1000000"},
		{"sha rounds=1000001", "$6$rounds=1000001$saltsalt$" + sha512S, ErrMalformed, "limit 1000000"},
		{"sha256 rounds huge", "$5$rounds=99999999999999999999999$saltsalt$" + sha512S[:43], ErrMalformed, "limit 1000000"},
		{"sha rounds not a number", "$6$rounds=abc$saltsalt$" + sha512S, ErrMalformed, "rounds"},
		{"sha rounds negative", "$6$rounds=-1$saltsalt$" + sha512S, ErrMalformed, "rounds"},
		{"sha rounds empty", "$6$rounds=$saltsalt$" + sha512S, ErrMalformed, "rounds"},
		{"sha rounds no dollar", "$6$rounds=5000", ErrMalformed, "rounds"},
		{"sha setting only", "$6$saltsalt", ErrMalformed, ""},
		{"sha empty sum", "$6$saltsalt$", ErrMalformed, "86"},
		{"sha short sum", "$6$saltsalt$" + sha512S[:85], ErrMalformed, "86"},
		{"sha256 with sha512 sum", "$5$saltsalt$" + sha512S, ErrMalformed, "43"},
		{"sha long salt", "$6$saltsaltsaltsalts$" + sha512S, ErrMalformed, "16"},
		{"sha alphabet", "$6$saltsalt$" + sha512S[:85] + "*", ErrMalformed, "alphabet"},
		{"sha extra field", "$6$saltsalt$" + sha512S + "$", ErrMalformed, ""},
		{"sha trailing newline", "$6$saltsalt$" + sha512S + "\n", ErrMalformed, "86"},
		{"bcrypt trailing newline", "$2b$10$" + bcBody + "\n", ErrMalformed, "60"},

		{"hash too long", "$6$" + strings.Repeat("a", maxHashLen), ErrMalformed, "512"},
	}
}

func TestVerifyMalformed(t *testing.T) {
	for _, tt := range malformedCases() {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := Verify(tt.hash, "secret")
			if ok || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %v, %v; want false, %v", ok, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not mention %q", err, tt.wantText)
			}
		})
	}
}

func TestVerifyTooLong(t *testing.T) {
	// echo -n password | argon2 somesalt -i -t 2 -k 256 -p 1 -e
	const hash = "$argon2i$v=19$m=256,t=2,p=1$c29tZXNhbHQ$iekCn0Y3spW+sCcFanM2xBT63UP2sghkUoHLIUpWRS8"
	if ok, err := Verify(hash, strings.Repeat("p", MaxPasswordLen)); ok || err != nil {
		t.Errorf("Verify(%d bytes) = %v, %v; want false, nil", MaxPasswordLen, ok, err)
	}
	for _, h := range []string{hash, "$2b$10$" + bcBody, "unknown"} {
		ok, err := Verify(h, strings.Repeat("p", MaxPasswordLen+1))
		if ok || !errors.Is(err, ErrTooLong) {
			t.Errorf("Verify(%.10s…, %d bytes) = %v, %v; want false, ErrTooLong", h, MaxPasswordLen+1, ok, err)
		}
	}
}

// TestErrorsOmitSecrets checks that no error message quotes the password or
// any part of the stored hash.
func TestErrorsOmitSecrets(t *testing.T) {
	const canary = "canary-Pa55w0rd!"
	hashes := []string{
		"$argon2i$v=16$m=4096,t=3,p=2$c2FsdHNhbHRzYWx0c2FsdA$WshemNO4+S/EuEkI7je5Jm+ArJ6jndWGJQY7BapS88w",
		"$2x$05$/OK.fbVrR/bpIqNJ5ianF.o./n25XVfn6oAPaUvHe.Csk4zRfsYPi",
		canary, // a plaintext password stored where a hash belongs
	}
	for _, tt := range malformedCases() {
		hashes = append(hashes, tt.hash)
	}
	for _, h := range hashes {
		_, err := Verify(h, canary)
		if err == nil {
			t.Fatalf("Verify(%q) succeeded; want an error", h)
		}
		msg := err.Error()
		if strings.Contains(msg, canary) {
			t.Errorf("error %q contains the password", msg)
		}
		// Every '$'-separated part of 8 bytes or more (salts, keys, sums),
		// except the scheme identifier, which the message may name.
		for i, part := range strings.Split(h, "$") {
			if i != 1 && len(part) >= 8 && strings.Contains(msg, part) {
				t.Errorf("error %q contains %q from the hash", msg, part)
			}
		}
	}
}
