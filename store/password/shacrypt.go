package password

import (
	"crypto/subtle"
	"strconv"
	"strings"

	"github.com/GehirnInc/crypt/sha256_crypt"
	"github.com/GehirnInc/crypt/sha512_crypt"
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
// counterpart.
//
// It computes with github.com/GehirnInc/crypt but does not use its Verify:
// that passes the whole stored hash to its salt parser, which for the
// rounds= form keeps the "$sum" as part of the salt, so every rounds= hash
// fails to verify. We pass a setting string without the sum instead and
// compare the sums ourselves in constant time.
func verifySHACrypt(hash, password, scheme string, lim limits) (bool, error) {
	sumLen := sha512SumLen
	if scheme == SchemeSHA256Crypt {
		sumLen = sha256SumLen
	}
	prefix, rest := hash[:3], hash[3:] // "$6$" or "$5$", checked by Scheme
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

	setting := prefix + shaRoundsPrefix + strconv.FormatUint(rounds, 10) + "$" + salt
	crypter := sha512_crypt.New()
	if scheme == SchemeSHA256Crypt {
		crypter = sha256_crypt.New()
	}
	out, err := crypter.Generate([]byte(password), []byte(setting))
	if err != nil {
		return false, malformed("rejected by GehirnInc/crypt")
	}
	got := out[strings.LastIndexByte(out, '$')+1:]
	return subtle.ConstantTimeCompare([]byte(got), []byte(sum)) == 1, nil
}
