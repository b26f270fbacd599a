package vacation

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzRender: for any subject and texts, Render either refuses them with
// an error it documents, and only when the input deserves it, or writes a
// script that the test reader parses back to exactly those texts and that
// subject, with no command Render does not write.
func FuzzRender(f *testing.F) {
	for _, tc := range renderCases() {
		f.Add(tc.in.Subject, tc.in.InternalText, tc.in.ExternalText)
	}
	for _, s := range []string{
		"", ".", "..", "\r\n.\r\n", "\n.\n", ".\r", "\r", "a\r\r\nb", "x\x00y", "\xff", "caf\xc3",
		"\"; discard; \"", "\\", "\\\"", "${hex:41}", "text:\r\n", "é\u0301", "🏖️", "\t", "\x7f",
	} {
		f.Add(s, s, s+"\n")
	}
	f.Fuzz(func(t *testing.T, subject, internal, external string) {
		in := renderBaseInput()
		in.Subject, in.InternalText, in.ExternalText = subject, internal, external
		script, err := Render(in)

		validText := func(s string) bool {
			return utf8.ValidString(s) && !strings.ContainsRune(s, 0) && strings.TrimSpace(s) != ""
		}
		valid := validText(internal) && validText(external) && utf8.ValidString(subject) &&
			!strings.ContainsFunc(subject, func(r rune) bool { return r < 0x20 || r == 0x7f }) &&
			utf8.RuneCountInString(subject) <= maxSubjectRunes
		// The fixed part of the script is well under 2000 bytes; a line end
		// grows by at most one byte, a subject byte by at most two.
		mayBeLarge := 2*(len(internal)+len(external))+2*2*len(subject) > maxScriptSize-2000
		switch {
		case err == nil && !valid:
			t.Fatalf("Render accepted invalid input (subject %q, texts %q, %q)", subject, internal, external)
		case errors.Is(err, errSieveSize) && (!valid || !mayBeLarge):
			t.Fatalf("size error for small or invalid input: %v", err)
		case err != nil && !errors.Is(err, errSieveSize) && (valid || !errors.Is(err, errSieveInput)):
			t.Fatalf("Render(valid=%v) = %v; want an invalid-settings error only for invalid input", valid, err)
		case err != nil:
			if script != "" {
				t.Fatalf("Render returned a script with the error %v", err)
			}
			return
		}
		if len(script) > maxScriptSize {
			t.Fatalf("script of %d bytes", len(script))
		}
		if strings.Count(script, "\n") != strings.Count(script, "\r\n") || strings.Count(script, "\r") != strings.Count(script, "\r\n") {
			t.Fatalf("script has a bare CR or LF")
		}
		checkRoundTrip(t, in, script)
	})
}
