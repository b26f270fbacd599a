package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// authEnv is testEnv plus a token key for issuer "webmail".
func authEnv(t *testing.T) string {
	t.Helper()
	cfg := testEnv(t)
	key := filepath.Join(filepath.Dir(cfg), "webmail.key")
	if err := os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32)))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("[saslauthd.token_keys]\nwebmail = \"" + key + "\"\n")
	f.Close()
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "secret\n", "user", "add", "alice", "-password-stdin", "-services", "imap,sieve")
	return cfg
}

func TestAuthTest(t *testing.T) {
	cfg := authEnv(t)
	out := mustRun(t, cfg, "secret\n", "auth", "test", "alice@example.com")
	if !strings.HasPrefix(out, "OK: alice@example.com may log in to imap (password") {
		t.Errorf("auth test ok: %q", out)
	}
	for _, tt := range []struct {
		stdin string
		args  []string
		why   string
	}{
		{"wrong\n", []string{"auth", "test", "alice"}, "NO: alice@example.com, imap: wrong password"},
		{"secret\n", []string{"auth", "test", "alice", "-service", "pop"}, "NO: alice@example.com, pop: service not allowed"},
		{"secret\n", []string{"auth", "test", "nobody"}, "NO: nobody@example.com, imap: unknown user"},
		{"sct1.x\n", []string{"auth", "test", "alice"}, "malformed token"},
	} {
		_, _, err := runCLI(t, cfg, tt.stdin, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("%s: %v, want %q", strings.Join(tt.args, " "), err, tt.why)
		}
	}
	mustRun(t, cfg, "", "user", "disable", "alice")
	if _, _, err := runCLI(t, cfg, "secret\n", "auth", "test", "alice"); err == nil || !strings.Contains(err.Error(), "user disabled") {
		t.Errorf("disabled: %v", err)
	}
}

func TestTokenIssue(t *testing.T) {
	cfg := authEnv(t)
	tok := strings.TrimSpace(mustRun(t, cfg, "", "token", "issue", "Alice@Example.com", "-service", "imap", "-ttl", "2m"))
	if !strings.HasPrefix(tok, "sct1.webmail.") {
		t.Fatalf("token = %q", tok)
	}
	if out := mustRun(t, cfg, tok+"\n", "auth", "test", "alice", "-service", "imap"); !strings.Contains(out, "(token") {
		t.Errorf("token login: %q", out)
	}
	if _, _, err := runCLI(t, cfg, tok+"\n", "auth", "test", "alice", "-service", "sieve"); err == nil {
		t.Errorf("token for imap accepted for sieve")
	}
	for _, tt := range []struct {
		args []string
		why  string
	}{
		{[]string{"token", "issue", "alice"}, "-service is required"},
		{[]string{"token", "issue", "alice", "-service", "imap", "-ttl", "5h"}, "over saslauthd.token_max_ttl"},
		{[]string{"token", "issue", "nobody", "-service", "imap"}, "not found"},
		{[]string{"token", "issue", "alice", "-service", "imap", "-issuer", "other"}, "other"},
	} {
		if _, _, err := runCLI(t, cfg, "", tt.args...); err == nil || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("%s: %v, want %q", strings.Join(tt.args, " "), err, tt.why)
		}
	}
	if _, _, err := runCLI(t, cfg, "sct1.abc\n", "user", "passwd", "alice", "-password-stdin"); err == nil || !strings.Contains(err.Error(), "sct1.") {
		t.Errorf("a password that looks like a token: %v", err)
	}
}
