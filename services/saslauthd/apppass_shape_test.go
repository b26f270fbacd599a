package saslauthd

import (
	"strings"
	"testing"

	"cyrus-sidecar/store"
)

// TestCouldBeAppPassword holds the shortcut in decideUncached to its
// premise: every app password the store hands out, as shown or as people
// type it (upper case, no dashes, spaces for dashes), passes
// store.CouldBeAppPassword, so skipping the lookup when it says no can
// never turn away an app password.
func TestCouldBeAppPassword(t *testing.T) {
	for range 200 {
		plain, hash, err := store.GenerateAppPassword()
		if err != nil {
			t.Fatal(err)
		}
		for _, typed := range []string{plain, strings.ToUpper(plain), strings.ReplaceAll(plain, "-", ""),
			strings.ReplaceAll(plain, "-", " "), strings.ToUpper(plain[:1]) + plain[1:]} {
			if !store.VerifyAppPassword(hash, typed) {
				t.Fatalf("VerifyAppPassword(%q) = false", typed)
			}
			if !store.CouldBeAppPassword(typed) {
				t.Fatalf("CouldBeAppPassword(%q) = false for an app password", typed)
			}
		}
	}
	const shaped = "k7mzq-3hx9p-tcw2a-ve8nd-r4ujb-y6gfs"
	for _, pw := range []string{"", "secret", shaped[:len(shaped)-1], shaped + "k",
		strings.Replace(shaped, "k", "0", 1), strings.Replace(shaped, "k", "l", 1), strings.Replace(shaped, "-", "_", 1)} {
		if store.CouldBeAppPassword(pw) {
			t.Errorf("CouldBeAppPassword(%q) = true", pw)
		}
	}
}
