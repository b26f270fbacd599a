package password

import "testing"

func BenchmarkVerify(b *testing.B) {
	h := newTestHasher(b, DefaultParams())
	current, err := h.Hash("secret")
	if err != nil {
		b.Fatal(err)
	}
	benchmarks := []struct{ name, hash string }{
		{"argon2id-default", current},
		// python3 crypt, see vectors_test.go
		{"bcrypt-10", "$2b$10$abcdefghijklmnopqrstuuqflPDzB6gcMhKa1rZqKiun2YGL5sa2u"},
		// openssl passwd -6 / -5 -salt saltsalt secret (5000 rounds)
		{"sha512-crypt-5000", "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"},
		{"sha256-crypt-5000", "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA"},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			for b.Loop() {
				if ok, err := Verify(bm.hash, "secret"); !ok || err != nil {
					b.Fatalf("Verify = %v, %v", ok, err)
				}
			}
		})
	}
	b.Run("dummy", func(b *testing.B) {
		for b.Loop() {
			h.DummyVerify("secret")
		}
	})
}

func BenchmarkHash(b *testing.B) {
	h := newTestHasher(b, DefaultParams())
	for b.Loop() {
		if _, err := h.Hash("secret"); err != nil {
			b.Fatal(err)
		}
	}
}
