package password

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/GehirnInc/crypt/sha256_crypt"
	"github.com/GehirnInc/crypt/sha512_crypt"
)

// TestSHACryptMatchesGehirnInc holds shaCrypt to github.com/GehirnInc/crypt,
// which computed our SHA-crypt sums before it, on random passwords (empty,
// shorter and longer than a digest and a hash block), salts and rounds.
// The known answers from other tools are in vectors_test.go.
func TestSHACryptMatchesGehirnInc(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 60 {
		pw := make([]byte, rng.IntN(300))
		for j := range pw {
			pw[j] = byte(rng.IntN(256))
		}
		salt := make([]byte, 1+rng.IntN(shaSaltMax))
		for j := range salt {
			salt[j] = shaAlphabet[rng.IntN(len(shaAlphabet))]
		}
		rounds := shaRoundsMin + rng.IntN(200)
		for _, is512 := range []bool{true, false} {
			prefix, crypter := "$5$", sha256_crypt.New()
			if is512 {
				prefix, crypter = "$6$", sha512_crypt.New()
			}
			setting := prefix + shaRoundsPrefix + strconv.Itoa(rounds) + "$" + string(salt)
			want, err := crypter.Generate(pw, []byte(setting))
			if err != nil {
				t.Fatalf("case %d: GehirnInc: %v", i, err)
			}
			want = want[strings.LastIndexByte(want, '$')+1:]
			var out [sha512SumLen]byte
			if got := out[:shaCrypt(out[:], is512, string(pw), string(salt), rounds)]; string(got) != want {
				t.Errorf("case %d (%s, %d-byte password, rounds %d): shaCrypt = %s; GehirnInc %s",
					i, prefix, len(pw), rounds, got, want)
			}
		}
	}
}
