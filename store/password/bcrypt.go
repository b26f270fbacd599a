package password

import (
	"errors"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// A bcrypt hash is exactly "$2b$" + two-digit cost + "$" + 22 characters of
// salt + 31 of hash (OpenBSD lib/libc/crypt/bcrypt.c), 60 bytes in all.
const (
	bcryptLen     = 60
	bcryptMinCost = 4 // OpenBSD BCRYPT_MINLOGROUNDS, x/crypto MinCost
)

// bcryptAlphabet is bcrypt's base64 alphabet (not the standard one).
const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// verifyBcrypt checks password against a $2a$, $2b$ or $2y$ hash.
//
// bcrypt only uses the first 72 bytes of a password (Blowfish's key schedule
// takes at most 18 32-bit words); x/crypto's CompareHashAndPassword truncates
// silently, as the C implementations do, so a longer password that shares
// those 72 bytes matches. Hash never makes bcrypt hashes, so this only
// concerns imported ones.
//
// The three prefixes are computed alike. $2y$ (crypt_blowfish's name for the
// fixed algorithm) and $2b$ (OpenBSD's) are the same function, and x/crypto
// accepts any minor letter, so $2y$ needs no mapping. $2a$ is the same too
// except in crypt_blowfish/libxcrypt, which for rare passwords with bytes
// >= 0x80 in particular positions deliberately computes a third value; those
// hashes fail to verify here, closed rather than open.
func verifyBcrypt(hash, password string, lim limits) (bool, error) {
	// x/crypto parses loosely: it ignores anything after byte 60, reads the
	// cost with strconv.Atoi ("+9" passes) and takes any minor letter,
	// including $2x$ (the sign-extension bug it does not reproduce). So the
	// shape is checked here first.
	if len(hash) != bcryptLen {
		return false, malformed("length is not %d", bcryptLen)
	}
	if hash[4] < '0' || hash[4] > '9' || hash[5] < '0' || hash[5] > '9' || hash[6] != '$' {
		return false, malformed("cost is not two digits followed by '$'")
	}
	cost := int(hash[4]-'0')*10 + int(hash[5]-'0')
	if cost < bcryptMinCost {
		return false, malformed("cost below %d", bcryptMinCost)
	}
	if cost > lim.bcryptCost {
		return false, malformed("cost above limit %d", lim.bcryptCost)
	}
	for i := 7; i < len(hash); i++ {
		if strings.IndexByte(bcryptAlphabet, hash[i]) < 0 {
			return false, malformed("salt or hash outside bcrypt's base64 alphabet")
		}
	}
	// CompareHashAndPassword compares with subtle.ConstantTimeCompare.
	err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
		return false, nil
	default:
		// Unreachable after the checks above; x/crypto's error text may
		// quote bytes of the hash, so it is not passed on.
		return false, malformed("rejected by x/crypto/bcrypt")
	}
}
