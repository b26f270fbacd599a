package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// DocSnippet returns the text between "<!-- snippet: name -->" and
// "<!-- /snippet -->" in the repository file doc (such as
// "docs/socketmap.md"), without the fence lines of a fenced code block; a
// snippet that is not fenced (a table) is returned whole. Tests run the
// snippets the docs show, so the two cannot drift apart.
func DocSnippet(t testing.TB, doc, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(RepoRoot(t), doc))
	if err != nil {
		t.Fatal(err)
	}
	open := "<!-- snippet: " + name + " -->"
	if n := strings.Count(string(data), open); n != 1 {
		t.Fatalf("%s has %d %q markers, want 1", doc, n, open)
	}
	_, rest, _ := strings.Cut(string(data), open)
	body, _, ok := strings.Cut(rest, "<!-- /snippet -->")
	if !ok {
		t.Fatalf("%s: %q is not closed by <!-- /snippet -->", doc, open)
	}
	body = strings.TrimSpace(body)
	if strings.HasPrefix(body, "```") {
		_, body, _ = strings.Cut(body, "\n")   // the opening fence and its language
		body = strings.TrimSuffix(body, "```") // the closing fence
	}
	return body
}
