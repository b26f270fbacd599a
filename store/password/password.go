// Package password hashes new passwords with Argon2id and verifies stored
// hashes in the schemes a Cyrus IMAP / saslauthd installation may carry
// over: Argon2id and Argon2i (PHC string format), bcrypt ($2a$, $2b$, $2y$)
// and SHA-crypt ($5$, $6$).
//
// Stored hashes are untrusted input: they may have been imported from another
// system, so their cost parameters are bounded before anything is computed,
// and a hash that asks for more is refused with ErrMalformed instead of being
// run. No error text ever contains a password or a hash.
package password

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// MaxPasswordLen is the longest password, in bytes, that Hash and Verify
// accept. It keeps the per-request cost bounded: SHA-crypt hashes the whole
// password in each of its rounds.
const MaxPasswordLen = 1024

// Scheme names, as returned by Scheme.
const (
	SchemeArgon2id    = "argon2id"
	SchemeArgon2i     = "argon2i"
	SchemeBcrypt      = "bcrypt"
	SchemeSHA512Crypt = "sha512-crypt"
	SchemeSHA256Crypt = "sha256-crypt"
)

// Sizes of what Hash generates. RFC 9106 §3.1 recommends a 16-byte salt and
// calls a 32-byte tag sufficient for password hashing.
const (
	saltLen = 16
	keyLen  = 32
)

// maxHashLen bounds the stored-hash string we parse at all. The longest
// legitimate hash we know of (SHA-512-crypt with rounds= and a 16-char salt)
// is 123 bytes; Argon2 with a 64-byte salt and key is about 210.
const maxHashLen = 512

// Bounds on the cost a stored hash may ask for. They refuse parameter bombs
// in imported hashes (m=4 GiB, rounds=999999999), not expensive hashes.
const (
	maxStoredArgon2MemoryKiB = 1 << 20 // 1 GiB
	maxStoredArgon2Time      = 20
	maxStoredArgon2Threads   = 64
	// SHA-crypt.txt allows up to 999,999,999 rounds; 1,000,000 is 200
	// times the default and already takes about 0.4 s.
	maxStoredSHARounds  = 1_000_000
	maxStoredBcryptCost = 16 // 2^16 rounds, about 4 s; x/crypto allows 31
)

// Bounds for Params.Validate: what an operator may configure for new hashes.
const (
	minTime      = 1
	maxTime      = 10
	minMemoryKiB = 8 << 10 // 8 MiB
	maxMemoryKiB = 1 << 20 // 1 GiB
	minThreads   = 1
	maxThreads   = 16
)

var (
	// ErrUnknownScheme means the hash is not in a scheme this package can
	// compute: an unrecognised $id$, or a variant of a known one that
	// x/crypto cannot reproduce (Argon2 version 0x10, Argon2 with associated
	// data or a secret key id, bcrypt $2$/$2x$).
	ErrUnknownScheme = errors.New("unknown password hash scheme")

	// ErrMalformed means the hash names a known scheme but cannot be used:
	// bad syntax, bad encoding, or cost parameters beyond our bounds.
	ErrMalformed = errors.New("malformed password hash")

	// ErrTooLong means the password is longer than MaxPasswordLen bytes.
	ErrTooLong = errors.New("password too long")
)

// Params are the argon2id parameters for new hashes.
type Params struct {
	Time      uint32 // passes over memory (RFC 9106 "t")
	MemoryKiB uint32 // memory size in KiB (RFC 9106 "m")
	Threads   uint8  // lanes and goroutines (RFC 9106 "p")
}

// DefaultParams returns t=2, m=19456 KiB (19 MiB), p=1: the OWASP Password
// Storage Cheat Sheet minimum for Argon2id. It takes about 22 ms on a 2-core
// host, so two verifications in flight stay under 40 MiB.
func DefaultParams() Params {
	return Params{Time: 2, MemoryKiB: 19456, Threads: 1}
}

// Validate reports every parameter outside its sane range, each error naming
// the field: time 1..10, memory_kib 8 MiB..1 GiB, threads 1..16.
func (p Params) Validate() error {
	var errs []error
	if p.Time < minTime || p.Time > maxTime {
		errs = append(errs, fmt.Errorf("time: must be between %d and %d, got %d", minTime, maxTime, p.Time))
	}
	if p.MemoryKiB < minMemoryKiB || p.MemoryKiB > maxMemoryKiB {
		errs = append(errs, fmt.Errorf("memory_kib: must be between %d and %d KiB, got %d", minMemoryKiB, maxMemoryKiB, p.MemoryKiB))
	}
	if p.Threads < minThreads || p.Threads > maxThreads {
		errs = append(errs, fmt.Errorf("threads: must be between %d and %d, got %d", minThreads, maxThreads, p.Threads))
	}
	return errors.Join(errs...)
}

// Hasher makes new Argon2id hashes with fixed parameters. It is immutable and
// safe for concurrent use.
type Hasher struct {
	p Params
}

// New returns a Hasher for p, or the errors from p.Validate.
func New(p Params) (*Hasher, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("new password hasher: %w", err)
	}
	return &Hasher{p: p}, nil
}

// Params returns the parameters h hashes with.
func (h *Hasher) Params() Params { return h.p }

// Hash returns password hashed as a PHC string,
// $argon2id$v=19$m=<KiB>,t=<time>,p=<threads>$<salt>$<key>, with a random
// 16-byte salt and a 32-byte key, both unpadded standard base64 as the
// reference argon2 tool writes them. Whether an empty password is acceptable
// is the caller's policy.
func (h *Hasher) Hash(password string) (string, error) {
	if len(password) > MaxPasswordLen {
		return "", fmt.Errorf("hash password: %w", errTooLong())
	}
	salt := make([]byte, saltLen)
	// Since Go 1.24 crypto/rand.Read never returns an error: it crashes the
	// process instead of handing out a predictable salt.
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, h.p.Time, h.p.MemoryKiB, h.p.Threads, keyLen)
	return argon2Hash{
		variant: SchemeArgon2id,
		version: argon2.Version,
		memory:  h.p.MemoryKiB,
		time:    h.p.Time,
		threads: h.p.Threads,
		salt:    salt,
		key:     key,
	}.String(), nil
}

// NeedsRehash reports whether hash should be replaced by a fresh Hash of the
// same password after a successful login: true unless it is an Argon2id
// v=19 hash with exactly h's parameters and key size. Unusable hashes need it
// too.
func (h *Hasher) NeedsRehash(hash string) bool {
	if len(hash) > maxHashLen || Scheme(hash) != SchemeArgon2id {
		return true
	}
	a, err := parseArgon2(hash, SchemeArgon2id, storedLimits())
	if err != nil {
		return true
	}
	return a.version != argon2.Version || a.time != h.p.Time ||
		a.memory != h.p.MemoryKiB || a.threads != h.p.Threads ||
		len(a.key) != keyLen || len(a.salt) < saltLen
}

// DummyVerify costs what Verify costs for a hash made by h. Call it for
// unknown users so that response time does not reveal which users exist.
// Users whose stored hash is in another scheme or older parameters still
// time differently until they are rehashed.
func (h *Hasher) DummyVerify(password string) {
	if len(password) > MaxPasswordLen {
		return // Verify refuses these before doing any work, too.
	}
	var salt [saltLen]byte
	var want [keyLen]byte
	key := argon2.IDKey([]byte(password), salt[:], h.p.Time, h.p.MemoryKiB, h.p.Threads, keyLen)
	// The result is meaningless; the comparison is here so the work matches
	// Verify's step for step.
	_ = subtle.ConstantTimeCompare(key, want[:])
}

// Verify reports whether password matches hash. A wrong password is
// (false, nil). An error means the hash is unusable (ErrUnknownScheme,
// ErrMalformed, including cost parameters beyond our bounds) or the password
// is longer than MaxPasswordLen (ErrTooLong); match them with errors.Is.
//
// Stored-hash bounds: Argon2 memory <= 1 GiB, time <= 20, threads <= 64;
// SHA-crypt rounds <= 1,000,000; bcrypt cost <= 16. They stop absurd
// parameters, not expensive ones: at the bounds one call can take tens of
// seconds and 1 GiB, so callers limit concurrency (a bounded worker pool).
// Every comparison of derived keys is constant-time. The hash is not
// trimmed: a trailing newline makes it malformed. Verify is safe for
// concurrent use.
func Verify(hash, password string) (bool, error) {
	return verify(hash, password, storedLimits())
}

// Scheme names the scheme of hash by its prefix: one of the Scheme*
// constants, or "" if unknown. A known name does not mean Verify can use the
// hash: it may still be malformed or an unsupported variant.
func Scheme(hash string) string {
	switch {
	case strings.HasPrefix(hash, "$argon2id$"):
		return SchemeArgon2id
	case strings.HasPrefix(hash, "$argon2i$"):
		return SchemeArgon2i
	case strings.HasPrefix(hash, "$2a$"), strings.HasPrefix(hash, "$2b$"), strings.HasPrefix(hash, "$2y$"):
		return SchemeBcrypt
	case strings.HasPrefix(hash, "$6$"):
		return SchemeSHA512Crypt
	case strings.HasPrefix(hash, "$5$"):
		return SchemeSHA256Crypt
	}
	return ""
}

// limits bounds the cost parameters a stored hash may ask for. It is a value
// passed down rather than constants so the fuzz test can use cheaper ones.
type limits struct {
	argon2MemoryKiB uint64
	argon2Time      uint64
	argon2Threads   uint64
	shaRounds       uint64
	bcryptCost      int
}

// storedLimits are the bounds Verify applies.
func storedLimits() limits {
	return limits{
		argon2MemoryKiB: maxStoredArgon2MemoryKiB,
		argon2Time:      maxStoredArgon2Time,
		argon2Threads:   maxStoredArgon2Threads,
		shaRounds:       maxStoredSHARounds,
		bcryptCost:      maxStoredBcryptCost,
	}
}

// verify is Verify with explicit limits.
func verify(hash, password string, lim limits) (bool, error) {
	if len(password) > MaxPasswordLen {
		return false, fmt.Errorf("verify password: %w", errTooLong())
	}
	if len(hash) > maxHashLen {
		return false, fmt.Errorf("verify password: %w: longer than %d bytes", ErrMalformed, maxHashLen)
	}
	var (
		ok     bool
		err    error
		scheme = Scheme(hash)
	)
	switch scheme {
	case SchemeArgon2id, SchemeArgon2i:
		ok, err = verifyArgon2(hash, password, scheme, lim)
	case SchemeBcrypt:
		ok, err = verifyBcrypt(hash, password, lim)
	case SchemeSHA512Crypt, SchemeSHA256Crypt:
		ok, err = verifySHACrypt(hash, password, scheme, lim)
	default:
		// The hash itself stays out of the message: a column holding
		// something unexpected may hold a plaintext password.
		return false, fmt.Errorf("verify password: %w", ErrUnknownScheme)
	}
	if err != nil {
		return false, fmt.Errorf("verify %s hash: %w", scheme, err)
	}
	return ok, nil
}

// errTooLong is ErrTooLong with the bound in the text.
func errTooLong() error {
	return fmt.Errorf("%w: over %d bytes", ErrTooLong, MaxPasswordLen)
}

// malformed returns ErrMalformed with a reason made only of constant text
// and bounds, never of the hash's own bytes.
func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}
