package password

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"strings"
)

// SHA-crypt constants from Ulrich Drepper, "Unix crypt using SHA-256 and
// SHA-512" (https://www.akkadia.org/drepper/SHA-crypt.txt).
const (
	shaRoundsPrefix  = "rounds="
	shaRoundsDefault = 5000 // used when "rounds=" is absent
	shaRoundsMin     = 1000 // "a value below is silently raised to 1000"
	shaSaltMax       = 16   // longer salts are truncated by the encoder
	sha512SumLen     = 86   // base64 characters of the 64-byte digest
	sha256SumLen     = 43   // base64 characters of the 32-byte digest
)

// shaAlphabet is crypt's base64 alphabet, in which the digest is written.
const shaAlphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// verifySHACrypt checks password against $6$[rounds=N$]salt$sum or its $5$
// counterpart, computing the sum with shaCrypt and comparing it in constant
// time.
func verifySHACrypt(hash, password, scheme string, lim limits) (bool, error) {
	sumLen := sha512SumLen
	if scheme == SchemeSHA256Crypt {
		sumLen = sha256SumLen
	}
	rest := hash[3:] // after "$6$" or "$5$", checked by Scheme
	rounds := uint64(shaRoundsDefault)
	if num, ok := strings.CutPrefix(rest, shaRoundsPrefix); ok {
		// glibc treats "rounds=" not followed by a number and '$' as part
		// of the salt; no encoder writes such a salt, so it is refused.
		num, after, ok := strings.Cut(num, "$")
		if !ok {
			return false, malformed("rounds without '$'")
		}
		n, err := decimal(num) // leading zeros allowed, as with glibc's strtoul
		if err != nil {
			return false, malformed("rounds: %v", err)
		}
		if n > lim.shaRounds {
			return false, malformed("rounds above limit %d", lim.shaRounds)
		}
		// The spec raises rounds below 1000 to 1000 (and writes
		// "rounds=1000" in the result, so stored hashes rarely show less);
		// libxcrypt instead refuses them. We follow the spec.
		rounds = max(n, shaRoundsMin)
		rest = after
	}
	salt, sum, ok := strings.Cut(rest, "$")
	if !ok {
		return false, malformed("no '$' between salt and hash")
	}
	if len(salt) > shaSaltMax {
		return false, malformed("salt longer than %d characters", shaSaltMax)
	}
	if len(sum) != sumLen {
		return false, malformed("hash is not %d characters", sumLen)
	}
	for i := 0; i < len(sum); i++ {
		if strings.IndexByte(shaAlphabet, sum[i]) < 0 {
			return false, malformed("hash outside crypt's base64 alphabet")
		}
	}
	var got [sha512SumLen]byte
	n := shaCrypt(got[:], scheme == SchemeSHA512Crypt, password, salt, int(rounds))
	return subtle.ConstantTimeCompare(got[:n], []byte(sum)) == 1, nil
}

// shaCrypt computes the sum of SHA-crypt (SHA-crypt.txt, "The algorithm",
// steps 1 to 22) for password, salt (at most shaSaltMax bytes) and rounds,
// with SHA-512 if is512 and SHA-256 otherwise, writes it into out in crypt's
// base64 and returns its length (sha512SumLen or sha256SumLen).
//
// It was github.com/GehirnInc/crypt's Generate (still the reference in
// shacrypt_test.go); that allocates a fresh digest in each of the 5,000
// rounds, 320 KB per login: allocating and collecting it took about a
// tenth of the responder's CPU per uncached login. Here the rounds
// allocate nothing: each round's input is put together in one buffer and
// hashed with sha512.Sum512 (or sha256.Sum256) into an array.
func shaCrypt(out []byte, is512 bool, password, salt string, rounds int) int {
	newHash, size, sum := sha256.New, sha256.Size, func(b []byte) (d [sha512.Size]byte) {
		s := sha256.Sum256(b)
		copy(d[:], s[:])
		return d
	}
	if is512 {
		newHash, size, sum = sha512.New, sha512.Size, sha512.Sum512
	}
	p, s := []byte(password), []byte(salt)
	defer clear(p)
	// Steps 1-20 are a handful of digests, streamed; A, B, DP and DS are
	// arrays, so Sum appends to them in place.
	h := newHash()
	var a, b, dp, ds [sha512.Size]byte
	// Steps 4-8: digest B of password, salt, password.
	h.Write(p)
	h.Write(s)
	h.Write(p)
	h.Sum(b[:0])
	// Steps 1-3, 9-12: digest A.
	h.Reset()
	h.Write(p)
	h.Write(s)
	for n := len(p); n > 0; n -= size {
		h.Write(b[:min(n, size)])
	}
	for i := len(p); i > 0; i >>= 1 {
		if i&1 != 0 {
			h.Write(b[:size])
		} else {
			h.Write(p)
		}
	}
	h.Sum(a[:0])
	clear(b[:])
	// Steps 13-16: the P sequence, from digest DP of the password len(p)
	// times.
	h.Reset()
	for range len(p) {
		h.Write(p)
	}
	h.Sum(dp[:0])
	// Steps 17-20: the S sequence, from digest DS of the salt 16+A[0]
	// times.
	h.Reset()
	for range 16 + int(a[0]) {
		h.Write(s)
	}
	h.Sum(ds[:0])
	// One buffer holds the sequences and, after them, a round's input:
	// at most the digest, the S sequence and the P sequence twice.
	buf := make([]byte, 0, len(p)+len(s)+size+len(s)+2*len(p))
	defer clear(buf[:cap(buf)])
	buf = appendRepeat(buf, dp[:size], len(p))
	buf = appendRepeat(buf, ds[:size], len(s))
	ps, ss := buf[:len(p):len(p)], buf[len(p):len(p)+len(s):len(p)+len(s)]
	in := buf[len(p)+len(s):]
	clear(dp[:])
	// Step 21: the rounds. Each round's input is put together in one
	// buffer and hashed with one call: no allocation, and a fraction of
	// the calls of streaming.
	for i := range rounds {
		in = in[:0]
		if i&1 != 0 {
			in = append(in, ps...)
		} else {
			in = append(in, a[:size]...)
		}
		if i%3 != 0 {
			in = append(in, ss...)
		}
		if i%7 != 0 {
			in = append(in, ps...)
		}
		if i&1 != 0 {
			in = append(in, a[:size]...)
		} else {
			in = append(in, ps...)
		}
		a = sum(in)
	}
	// Step 22: the digest's bytes in the spec's order, 24 bits at a time.
	perm := sha256Perm[:]
	if is512 {
		perm = sha512Perm[:]
	}
	n := 0
	for i := 0; i < len(perm); i += 3 {
		var w uint
		k := min(3, len(perm)-i)
		for j := k - 1; j >= 0; j-- {
			w = w<<8 | uint(a[perm[i+j]])
		}
		for range k + 1 { // 3 bytes make 4 characters, 2 make 3, 1 makes 2
			out[n] = shaAlphabet[w&0x3f]
			w >>= 6
			n++
		}
	}
	clear(a[:])
	return n
}

// appendRepeat appends the first n bytes of seq repeated (steps 11, 16 and
// 20: "for each block of 32 or 64 bytes ... the first remaining bytes").
func appendRepeat(dst, seq []byte, n int) []byte {
	for ; n > len(seq); n -= len(seq) {
		dst = append(dst, seq...)
	}
	return append(dst, seq[:n]...)
}

// sha512Perm and sha256Perm are the orders of step 22 in which the final
// digest's bytes are encoded, three at a time, the first of each three the
// lowest (b64_from_24bit(B2, B1, B0) takes them the other way round).
var (
	sha512Perm = [sha512.Size]byte{
		42, 21, 0, 1, 43, 22, 23, 2, 44, 45, 24, 3, 4, 46, 25, 26, 5, 47, 48, 27, 6,
		7, 49, 28, 29, 8, 50, 51, 30, 9, 10, 52, 31, 32, 11, 53, 54, 33, 12, 13, 55, 34,
		35, 14, 56, 57, 36, 15, 16, 58, 37, 38, 17, 59, 60, 39, 18, 19, 61, 40, 41, 20, 62,
		63,
	}
	sha256Perm = [sha256.Size]byte{
		20, 10, 0, 11, 1, 21, 2, 22, 12, 23, 13, 3, 14, 4, 24, 5, 25, 15, 26, 16, 6,
		17, 7, 27, 8, 28, 18, 29, 19, 9, 30, 31,
	}
)
