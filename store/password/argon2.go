package password

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Argon2 versions (RFC 9106 §3.1: v is one byte, 0x13 for this document).
const (
	argon2Version10 = 0x10 // pre-RFC reference code, "v=16"
	argon2Version13 = 0x13 // RFC 9106, "v=19"; the only one x/crypto computes
)

// Lower bounds from RFC 9106 §3.1 and the reference implementation
// (phc-winner-argon2 src/argon2.h ARGON2_MIN_SALT_LENGTH).
const (
	argon2MinSalt   = 8 // bytes
	argon2MinKey    = 4 // bytes: "tag length T ... from 4 to 2^32-1"
	argon2MinMemory = 8 // KiB per lane: "m ... from 8*p to 2^32-1"
)

// b64 is the PHC string format's base64: standard alphabet, no padding, and
// (like the reference decoder) no stray bits in the last character.
var b64 = base64.RawStdEncoding.Strict()

// argon2Hash is a parsed Argon2 PHC string.
type argon2Hash struct {
	variant   string // SchemeArgon2id or SchemeArgon2i
	version   uint32
	memory    uint32 // KiB
	time      uint32
	threads   uint8
	salt, key []byte
}

// String encodes a as the reference tool does:
// $argon2id$v=19$m=<KiB>,t=<time>,p=<threads>$<salt>$<key>.
func (a argon2Hash) String() string {
	return fmt.Sprintf("$%s$v=%d$m=%d,t=%d,p=%d$%s$%s", a.variant, a.version,
		a.memory, a.time, a.threads, b64.EncodeToString(a.salt), b64.EncodeToString(a.key))
}

// verifyArgon2 checks password against an Argon2i or Argon2id PHC string.
func verifyArgon2(hash, password, variant string, lim limits) (bool, error) {
	a, err := parseArgon2(hash, variant, lim)
	if err != nil {
		return false, err
	}
	var key []byte
	if variant == SchemeArgon2id {
		key = argon2.IDKey([]byte(password), a.salt, a.time, a.memory, a.threads, uint32(len(a.key)))
	} else {
		key = argon2.Key([]byte(password), a.salt, a.time, a.memory, a.threads, uint32(len(a.key)))
	}
	return subtle.ConstantTimeCompare(key, a.key) == 1, nil
}

// parseArgon2 parses $<variant>[$v=<n>]$m=<n>,t=<n>,p=<n>$<salt>$<key> the
// way the reference decoder (phc-winner-argon2 src/encoding.c decode_string)
// does, and refuses anything x/crypto would compute differently or that
// exceeds lim.
func parseArgon2(hash, variant string, lim limits) (argon2Hash, error) {
	a := argon2Hash{variant: variant}
	if strings.ContainsAny(hash, "\r\n") {
		// encoding/base64 skips CR and LF even in Strict mode; the
		// reference decoder does not.
		return a, malformed("line break in hash")
	}
	fields := strings.Split(strings.TrimPrefix(hash, "$"+variant), "$")
	if fields[0] != "" {
		return a, malformed("no '$' after the identifier")
	}
	fields = fields[1:]
	// encoding.c: a missing "$v=" means version 0x10, which predates it.
	version := uint64(argon2Version10)
	if len(fields) > 0 && strings.HasPrefix(fields[0], "v=") {
		v, err := phcDecimal(fields[0][len("v="):])
		if err != nil {
			return a, malformed("version: %v", err)
		}
		version = v
		fields = fields[1:]
	}
	if len(fields) != 3 {
		return a, malformed("want parameters, salt and key separated by '$'")
	}
	if err := a.parseParams(fields[0], lim); err != nil {
		return a, err
	}
	switch version {
	case argon2Version13:
		a.version = argon2Version13
	case argon2Version10:
		// x/crypto implements only 0x13, which changed how blocks are
		// combined (RFC 9106 §3.2 step 6); 0x10 is a different function.
		return a, fmt.Errorf("%w: argon2 version 16 (0x10) is not supported, only 19", ErrUnknownScheme)
	default:
		return a, malformed("unknown argon2 version")
	}
	var err error
	if a.salt, err = b64.DecodeString(fields[1]); err != nil {
		return a, malformed("salt is not unpadded base64")
	}
	if len(a.salt) < argon2MinSalt {
		return a, malformed("salt shorter than %d bytes", argon2MinSalt)
	}
	if a.key, err = b64.DecodeString(fields[2]); err != nil {
		return a, malformed("key is not unpadded base64")
	}
	if len(a.key) < argon2MinKey {
		return a, malformed("key shorter than %d bytes", argon2MinKey)
	}
	return a, nil
}

// parseParams parses "m=<n>,t=<n>,p=<n>", in that order as the reference
// decoder requires, and checks each against RFC 9106 §3.1 and lim.
func (a *argon2Hash) parseParams(s string, lim limits) error {
	parts := strings.Split(s, ",")
	if len(parts) > 3 && (strings.HasPrefix(parts[3], "keyid=") || strings.HasPrefix(parts[3], "data=")) {
		// x/crypto's API takes neither a secret nor associated data.
		return fmt.Errorf("%w: argon2 with keyid or data is not supported", ErrUnknownScheme)
	}
	if len(parts) != 3 {
		return malformed("want parameters m, t and p")
	}
	var v [3]uint64
	for i, name := range []string{"m=", "t=", "p="} {
		num, ok := strings.CutPrefix(parts[i], name)
		if !ok {
			return malformed("want parameters m, t and p in that order")
		}
		var err error
		if v[i], err = phcDecimal(num); err != nil {
			return malformed("%s: %v", name[:1], err)
		}
	}
	m, t, p := v[0], v[1], v[2]
	switch {
	case p < 1:
		return malformed("parallelism p below 1")
	case p > lim.argon2Threads:
		return malformed("parallelism p above limit %d", lim.argon2Threads)
	case t < 1:
		return malformed("time t below 1")
	case t > lim.argon2Time:
		return malformed("time t above limit %d", lim.argon2Time)
	case m > lim.argon2MemoryKiB:
		return malformed("memory m above limit %d KiB", lim.argon2MemoryKiB)
	case m < argon2MinMemory*p:
		// x/crypto would silently raise m to 8*p and compute a hash the
		// reference code refuses to make (ARGON2_MEMORY_TOO_LITTLE).
		return malformed("memory m below %d KiB per lane", argon2MinMemory)
	}
	a.memory, a.time, a.threads = uint32(m), uint32(t), uint8(p)
	return nil
}

// phcDecimal parses a PHC decimal: ASCII digits, no sign, no leading zero.
// Values too large for any of our bounds saturate rather than fail, so the
// caller reports the bound that was crossed.
func phcDecimal(s string) (uint64, error) {
	if len(s) > 1 && s[0] == '0' {
		return 0, errors.New("leading zero")
	}
	return decimal(s)
}

// decimal parses ASCII digits, saturating at math.MaxUint64.
func decimal(s string) (uint64, error) {
	if s == "" {
		return 0, errors.New("empty number")
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errors.New("not a decimal number")
		}
		if n > (math.MaxUint64-9)/10 {
			n = math.MaxUint64 // keep scanning: a later non-digit is still an error
			continue
		}
		n = n*10 + uint64(c-'0')
	}
	return n, nil
}
