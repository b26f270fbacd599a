package saslauthd

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
)

// The fixed test vector, repeated in docs/sso-tokens.md for other
// implementations (TestTokenVectorInDocs keeps the two equal).
const (
	vecKeyB64  = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" // bytes 0x00..0x1f
	vecIssuer  = "webmail"
	vecUser    = "alice@example.com"
	vecService = "imap"
	vecExpiry  = 1767225600         // 2026-01-01T00:00:00Z
	vecNonce   = "8PHy8_T19vf4-fr7" // bytes 0xf0..0xfb
	vecToken   = "sct1.webmail.1767225600.8PHy8_T19vf4-fr7.eHUtwN0u36oy8GG-4a7cz3nDIwiPADbj"
)

// vecNow is five minutes before the vector's expiry.
var vecNow = time.Unix(vecExpiry-300, 0)

func vecKey(t testing.TB) []byte {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(vecKeyB64)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testKey is a deterministic key distinct per seed.
func testKey(seed byte) []byte { return bytes.Repeat([]byte{seed}, 32) }

func TestTokenVector(t *testing.T) {
	nonce, err := base64.RawURLEncoding.DecodeString(vecNonce)
	if err != nil {
		t.Fatal(err)
	}
	got := signToken(vecKey(t), vecIssuer, vecUser, vecService, vecExpiry, nonce)
	if got != vecToken {
		t.Fatalf("signToken(vector) = %q, want %q", got, vecToken)
	}
	keys := TokenKeys{vecIssuer: vecKey(t)}
	if err := VerifyToken(keys, vecToken, vecUser, vecService, vecNow, time.Hour); err != nil {
		t.Fatalf("VerifyToken(vector) = %v", err)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	keys := TokenKeys{"webmail": testKey(1), "groupware-2026": testKey(2)}
	now := time.Now()
	seen := map[string]bool{}
	for _, issuer := range []string{"webmail", "groupware-2026"} {
		for _, service := range []string{"imap", "pop", "sieve", "http", "smtp"} {
			tok, err := IssueToken(keys, issuer, "alice@example.com", service, 5*time.Minute, now)
			if err != nil {
				t.Fatalf("IssueToken(%s, %s): %v", issuer, service, err)
			}
			if err := VerifyToken(keys, tok, "alice@example.com", service, now, time.Hour); err != nil {
				t.Errorf("VerifyToken(%q) = %v", tok, err)
			}
			if !IsToken(tok) || len(tok) > maxTokenLen || seen[tok] {
				t.Errorf("token %q: IsToken %v, %d bytes (max %d), seen before %v", tok, IsToken(tok), len(tok), maxTokenLen, seen[tok])
			}
			seen[tok] = true
			// RFC 9051 §9: only ATOM-CHARs, so LOGIN can send it unquoted.
			if i := strings.IndexFunc(tok, func(r rune) bool {
				return !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", r)
			}); i >= 0 {
				t.Errorf("token %q has %q at %d", tok, tok[i], i)
			}
		}
	}
	// Same user, service and second: the nonce still makes tokens differ.
	a, _ := IssueToken(keys, "webmail", "alice@example.com", "imap", time.Minute, now)
	b, _ := IssueToken(keys, "webmail", "alice@example.com", "imap", time.Minute, now)
	if a == b {
		t.Errorf("two tokens are equal: %q", a)
	}
}

// mutate returns tok with field i (0 prefix, 1 issuer, 2 expiry, 3 nonce,
// 4 mac) passed through f.
func mutate(tok string, i int, f func(string) string) string {
	parts := strings.Split(tok, ".")
	parts[i] = f(parts[i])
	return strings.Join(parts, ".")
}

// flip changes the character at index i to another of the alphabet.
func flip(i int) func(string) string {
	return func(s string) string {
		b := []byte(s)
		if i < 0 {
			i += len(b)
		}
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
}

func TestVerifyToken(t *testing.T) {
	const (
		alice  = "alice@example.com"
		maxTTL = time.Hour
	)
	key, other := testKey(1), testKey(2)
	nonce := []byte("twelve bytes")
	exp := vecNow.Unix() + 300
	sign := func(issuer, user, service string, expiry int64) string {
		return signToken(key, issuer, user, service, expiry, nonce)
	}
	tok := sign("webmail", alice, "imap", exp)
	keys := TokenKeys{
		"webmail":  key,
		"webmail2": key, // the same key under another name: the issuer is signed too
		"short":    key[:31],
		"rotated":  other,
	}
	tests := []struct {
		name          string
		token         string
		user, service string
		now           time.Time
		keys          TokenKeys
		wantErr       error
	}{
		{"valid", tok, alice, "imap", vecNow, nil, nil},
		{"other user", tok, "bob@example.com", "imap", vecNow, nil, errTokenSignature},
		// The caller canonicalises; Verify uses exactly what it is given.
		{"user in other case", tok, "Alice@example.com", "imap", vecNow, nil, errTokenSignature},
		{"domain in other case", tok, "alice@EXAMPLE.com", "imap", vecNow, nil, errTokenSignature},
		{"other service", tok, alice, "pop", vecNow, nil, errTokenSignature},
		{"service in other case", tok, alice, "IMAP", vecNow, nil, errTokenSignature},
		{"user and service shifted", tok, alice + "\x00imap", "", vecNow, nil, errTokenSignature},
		{"last second within skew", tok, alice, "imap", time.Unix(exp+29, 999e6), nil, nil},
		{"expired", tok, alice, "imap", time.Unix(exp+30, 0), nil, errTokenExpired},
		{"expired long ago", tok, alice, "imap", time.Unix(exp+86400, 0), nil, errTokenExpired},
		{"lifetime at max plus skew", tok, alice, "imap", time.Unix(exp-3600-30, 0), nil, nil},
		{"lifetime beyond max", tok, alice, "imap", time.Unix(exp-3600-31, 0), nil, errTokenTooLong},
		{"far future", sign("webmail", alice, "imap", 99999999999), alice, "imap", vecNow, nil, errTokenTooLong},
		{"unknown issuer", sign("gone", alice, "imap", exp), alice, "imap", vecNow, nil, errTokenIssuer},
		{"issuer removed", tok, alice, "imap", vecNow, TokenKeys{"rotated": other}, errTokenIssuer},
		{"issuer key too short", sign("short", alice, "imap", exp), alice, "imap", vecNow, nil, errTokenIssuer},
		{"other key same issuer", tok, alice, "imap", vecNow, TokenKeys{"webmail": other}, errTokenSignature},
		{"issuer renamed, same key", mutate(tok, 1, func(string) string { return "webmail2" }), alice, "imap", vecNow, nil, errTokenSignature},
		{"expiry changed", mutate(tok, 2, func(string) string { return strconv.FormatInt(exp+1, 10) }), alice, "imap", vecNow, nil, errTokenSignature},
		{"expiry leading zero", mutate(tok, 2, func(s string) string { return "0" + s }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"expiry zero", mutate(tok, 2, func(string) string { return "0" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"expiry signed", mutate(tok, 2, func(s string) string { return "+" + s }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"expiry 12 digits", mutate(tok, 2, func(string) string { return "100000000000" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"nonce changed first", mutate(tok, 3, flip(0)), alice, "imap", vecNow, nil, errTokenSignature},
		{"nonce changed last", mutate(tok, 3, flip(-1)), alice, "imap", vecNow, nil, errTokenSignature},
		{"mac changed first", mutate(tok, 4, flip(0)), alice, "imap", vecNow, nil, errTokenSignature},
		{"mac changed last", mutate(tok, 4, flip(-1)), alice, "imap", vecNow, nil, errTokenSignature},
		// 12 and 24 bytes encode to 16 and 32 characters with no spare
		// bits, so the only other spellings are other alphabets, padding
		// or other lengths.
		{"mac std alphabet +", mutate(tok, 4, func(s string) string { return "+" + s[1:] }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"mac std alphabet /", mutate(tok, 4, func(s string) string { return s[:31] + "/" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"mac padded", tok + "=", alice, "imap", vecNow, nil, errTokenMalformed},
		{"mac full length", mutate(tok, 4, func(s string) string { return s + "AAAAAAAAAAA" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"mac short", mutate(tok, 4, func(s string) string { return s[:22] }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"mac with newline", mutate(tok, 4, func(s string) string { return s[:16] + "\n" + s[17:] }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"nonce std alphabet", mutate(tok, 3, func(s string) string { return s[:15] + "/" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"nonce padded", mutate(tok, 3, func(s string) string { return s + "==" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"nonce short", mutate(tok, 3, func(s string) string { return s[1:] }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"issuer upper case", mutate(tok, 1, strings.ToUpper), alice, "imap", vecNow, nil, errTokenMalformed},
		{"issuer empty", mutate(tok, 1, func(string) string { return "" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"issuer 33 characters", mutate(tok, 1, func(string) string { return strings.Repeat("a", 33) }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"issuer with dot", mutate(tok, 1, func(string) string { return "web.mail" }), alice, "imap", vecNow, nil, errTokenMalformed},
		{"trailing dot", tok + ".", alice, "imap", vecNow, nil, errTokenMalformed},
		{"double dot", strings.Replace(tok, ".", "..", 2), alice, "imap", vecNow, nil, errTokenMalformed},
		{"extra field", tok + ".x", alice, "imap", vecNow, nil, errTokenMalformed},
		{"truncated by one", tok[:len(tok)-1], alice, "imap", vecNow, nil, errTokenMalformed},
		{"truncated to mac", tok[:strings.LastIndexByte(tok, '.')], alice, "imap", vecNow, nil, errTokenMalformed},
		{"prefix only", "sct1.", alice, "imap", vecNow, nil, errTokenMalformed},
		{"too long", tok + strings.Repeat("A", 200), alice, "imap", vecNow, nil, errTokenMalformed},
		{"with space", tok + " ", alice, "imap", vecNow, nil, errTokenMalformed},
		{"password", "hunter2", alice, "imap", vecNow, nil, errNotToken},
		{"empty", "", alice, "imap", vecNow, nil, errNotToken},
		{"prefix without dot", "sct1", alice, "imap", vecNow, nil, errNotToken},
		{"prefix upper case", "SCT1" + tok[4:], alice, "imap", vecNow, nil, errNotToken},
		{"other version", "sct2" + tok[4:], alice, "imap", vecNow, nil, errNotToken},
		{"leading space", " " + tok, alice, "imap", vecNow, nil, errNotToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := keys
			if tt.keys != nil {
				k = tt.keys
			}
			err := VerifyToken(k, tt.token, tt.user, tt.service, tt.now, maxTTL)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("VerifyToken(%q, %q, %q) = %v, want %v", tt.token, tt.user, tt.service, err, tt.wantErr)
			}
			if IsToken(tt.token) == errors.Is(err, errNotToken) {
				t.Errorf("IsToken(%q) = %v with error %v", tt.token, IsToken(tt.token), err)
			}
		})
	}
}

func TestTokenRotation(t *testing.T) {
	now := time.Now()
	keys := TokenKeys{"webmail-2025": testKey(1)}
	old, err := IssueToken(keys, "webmail-2025", "alice@example.com", "imap", 10*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	// Rotation: the new issuer is added beside the old one ...
	keys["webmail-2026"] = testKey(2)
	cur, err := IssueToken(keys, "webmail-2026", "alice@example.com", "imap", 10*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{old, cur} {
		if err := VerifyToken(keys, tok, "alice@example.com", "imap", now, time.Hour); err != nil {
			t.Errorf("with both issuers, VerifyToken(%q) = %v", tok, err)
		}
	}
	// ... and removing the old one revokes its tokens at once.
	delete(keys, "webmail-2025")
	if err := VerifyToken(keys, old, "alice@example.com", "imap", now, time.Hour); !errors.Is(err, errTokenIssuer) {
		t.Errorf("old issuer removed: VerifyToken = %v, want %v", err, errTokenIssuer)
	}
	if err := VerifyToken(keys, cur, "alice@example.com", "imap", now, time.Hour); err != nil {
		t.Errorf("new issuer: VerifyToken = %v", err)
	}
}

func TestIssueTokenRefuses(t *testing.T) {
	keys := TokenKeys{"webmail": testKey(1), "short": testKey(1)[:16], "Bad": testKey(1)}
	tests := []struct {
		name, issuer, user, service string
		ttl                         time.Duration
	}{
		{"unknown issuer", "nope", "alice@example.com", "imap", time.Minute},
		{"short key", "short", "alice@example.com", "imap", time.Minute},
		{"bad issuer name", "Bad", "alice@example.com", "imap", time.Minute},
		{"upper-case user", "webmail", "Alice@example.com", "imap", time.Minute},
		{"upper-case domain", "webmail", "alice@Example.com", "imap", time.Minute},
		{"no domain", "webmail", "alice", "imap", time.Minute},
		{"empty local", "webmail", "@example.com", "imap", time.Minute},
		{"empty domain", "webmail", "alice@", "imap", time.Minute},
		{"space", "webmail", "al ice@example.com", "imap", time.Minute},
		{"NUL", "webmail", "alice@example.com\x00", "imap", time.Minute},
		{"bad UTF-8", "webmail", "al\xffice@example.com", "imap", time.Minute},
		{"user too long", "webmail", strings.Repeat("a", 64) + "@" + strings.Repeat("b", 190), "imap", time.Minute},
		{"upper-case service", "webmail", "alice@example.com", "HTTP", time.Minute},
		{"empty service", "webmail", "alice@example.com", "", time.Minute},
		{"service with space", "webmail", "alice@example.com", "im ap", time.Minute},
		{"zero ttl", "webmail", "alice@example.com", "imap", 0},
		{"negative ttl", "webmail", "alice@example.com", "imap", -time.Minute},
		{"ttl below a second", "webmail", "alice@example.com", "imap", 999 * time.Millisecond},
		{"ttl over 30 days", "webmail", "alice@example.com", "imap", maxTokenTTL + time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := IssueToken(keys, tt.issuer, tt.user, tt.service, tt.ttl, time.Now())
			if err == nil {
				t.Errorf("IssueToken(%q, %q, %q, %s) = %q, want an error", tt.issuer, tt.user, tt.service, tt.ttl, tok)
			}
		})
	}
	// UTF-8 local parts are canonical (the store lower-cases ASCII only).
	if _, err := IssueToken(keys, "webmail", "jörg@example.com", "imap", time.Minute, time.Now()); err != nil {
		t.Errorf("UTF-8 local part: %v", err)
	}
}

// TestTokenLength: the longest token fits a saslauthd field with room to
// spare (and the 120 bytes promised in the docs).
func TestTokenLength(t *testing.T) {
	issuer := strings.Repeat("z", maxIssuerLen)
	keys := TokenKeys{issuer: testKey(1)}
	user := strings.Repeat("a", 64) + "@" + strings.Repeat("b", 189)
	tok, err := IssueToken(keys, issuer, user, strings.Repeat("s", maxTokenService), maxTokenTTL, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	longest := signToken(testKey(1), issuer, user, "imap", 99999999999, make([]byte, tokenNonceLen))
	if len(tok) > len(longest) || len(longest) != maxTokenLen || maxTokenLen >= 120 || maxTokenLen >= maxField {
		t.Errorf("issued %d bytes, longest %d, maxTokenLen %d: want all < 120", len(tok), len(longest), maxTokenLen)
	}
	if err := VerifyToken(TokenKeys{issuer: testKey(1)}, longest, user, "imap", time.Unix(99999999999-60, 0), time.Hour); err != nil {
		t.Errorf("longest token: %v", err)
	}
}

func TestLoadTokenKeys(t *testing.T) {
	dir := t.TempDir()
	key32 := bytes.Repeat([]byte{0xa5}, 32)
	key64 := bytes.Repeat([]byte{0x5a}, 64)
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
		return p
	}
	// base64(1) wraps at 76 columns: a 64-byte key takes two lines.
	wrapped := base64.StdEncoding.EncodeToString(key64)
	wrapped = wrapped[:76] + "\n" + wrapped[76:] + "\n"
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		want    []byte
		wantErr string // substring; "" for success
	}{
		{"base64 with newline", base64.StdEncoding.EncodeToString(key32) + "\n", 0o600, key32, ""},
		{"CRLF", base64.StdEncoding.EncodeToString(key32) + "\r\n", 0o400, key32, ""},
		{"group readable", base64.StdEncoding.EncodeToString(key32), 0o640, key32, ""},
		{"wrapped 64 bytes", wrapped, 0o600, key64, ""},
		{"readable by others", base64.StdEncoding.EncodeToString(key32), 0o644, nil, "readable or writable by others (mode 0644); chmod o-rw"},
		{"writable by others", base64.StdEncoding.EncodeToString(key32), 0o602, nil, "readable or writable by others (mode 0602)"},
		{"short key", base64.StdEncoding.EncodeToString(key32[:31]), 0o600, nil, "key is 31 bytes, want at least 32"},
		{"empty", "", 0o600, nil, "key is 0 bytes"},
		{"url alphabet", base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)), 0o600, nil, "not standard base64"},
		{"unpadded", base64.RawStdEncoding.EncodeToString(key32), 0o600, nil, "not standard base64"},
		{"hex", hex.EncodeToString(key32), 0o600, nil, "not standard base64"},
		{"raw bytes", string(key32), 0o600, nil, "not standard base64"},
		{"huge", strings.Repeat("A", maxTokenKeyFile+4), 0o600, nil, "longer than 4096 bytes"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := write(fmt.Sprintf("key%d", i), tt.content, tt.mode)
			keys, err := LoadTokenKeys(map[string]string{"webmail": p})
			if tt.wantErr == "" {
				if err != nil || !bytes.Equal(keys["webmail"], tt.want) {
					t.Fatalf("LoadTokenKeys = %x, %v; want %x", keys["webmail"], err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "token_keys.webmail: "+p) {
				t.Fatalf("LoadTokenKeys = %v, %v; want error %q", keys, err, tt.wantErr)
			}
		})
	}

	t.Run("every problem at once", func(t *testing.T) {
		good := write("good", base64.StdEncoding.EncodeToString(key32), 0o600)
		_, err := LoadTokenKeys(map[string]string{
			"webmail":               good,
			"Upper":                 good,
			"":                      good,
			"under_sc":              good,
			strings.Repeat("a", 33): good,
			"missing":               filepath.Join(dir, "missing"),
			"dir":                   dir,
			"public":                write("public", base64.StdEncoding.EncodeToString(key32), 0o604),
		})
		if err == nil {
			t.Fatal("LoadTokenKeys accepted bad entries")
		}
		want := []string{
			`token_keys: issuer "" must be`,
			`token_keys: issuer "Upper" must be`,
			`token_keys: issuer "under_sc" must be`,
			`token_keys: issuer "` + strings.Repeat("a", 33) + `" must be`,
			"token_keys.missing: open " + filepath.Join(dir, "missing") + ": no such file",
			"token_keys.dir: " + dir + ": not a regular file",
			"token_keys.public: ",
		}
		lines := strings.Split(err.Error(), "\n")
		if len(lines) != len(want) {
			t.Fatalf("got %d problems, want %d:\n%v", len(lines), len(want), err)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error lacks %q:\n%v", w, err)
			}
		}
	})

	t.Run("none", func(t *testing.T) {
		keys, err := LoadTokenKeys(nil)
		if err != nil || keys == nil || len(keys) != 0 {
			t.Errorf("LoadTokenKeys(nil) = %v, %v; want an empty map", keys, err)
		}
	})
}

// TestTokenKeysRedacted: printing, logging or marshalling keys shows the
// issuers and never a key byte.
func TestTokenKeysRedacted(t *testing.T) {
	key := []byte("0123456789abcdefghijklmnopqrstuv")
	keys := TokenKeys{"webmail": key}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("loaded", "keys", keys, "nested", struct{ K TokenKeys }{keys})
	js, err := json.Marshal(map[string]any{"k": keys})
	if err != nil {
		t.Fatal(err)
	}
	outs := []string{logged.String(), string(js)}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		outs = append(outs, fmt.Sprintf(verb, keys), fmt.Sprintf(verb, &keys))
	}
	for _, out := range outs {
		for _, leak := range []string{string(key), hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key), "[48 49 50"} {
			if strings.Contains(strings.ToLower(out), strings.ToLower(leak)) {
				t.Errorf("output leaks the key: %s", out)
			}
		}
		if !strings.Contains(out, "webmail") && !strings.Contains(out, "77656") { // %x of the name is fine
			t.Errorf("output does not name the issuer: %s", out)
		}
	}
}

// FuzzVerifyToken: VerifyToken never panics, its error is always one of
// the sentinels, and it accepts nothing but the tokens this test minted
// with the keys it holds, for the user and service they were minted for:
// the fuzzer does not know the keys, so whatever else it accepted would be
// a forgery.
func FuzzVerifyToken(f *testing.F) {
	now := vecNow
	keys := TokenKeys{"webmail": testKey(1), "groupware": testKey(2)}
	otherKeys := TokenKeys{"webmail": testKey(3), "groupware": testKey(4)}
	type minted struct{ token, user, service string }
	valid := map[minted]bool{}
	for _, issuer := range []string{"webmail", "groupware"} {
		for _, u := range []string{"alice@example.com", "bob@example.org"} {
			for _, s := range []string{"imap", "sieve"} {
				// Deterministic: fuzz workers are other processes that run
				// this again and must mint the same tokens.
				nonce := []byte(fmt.Sprintf("%-12.12s", issuer+u+s))
				tok := signToken(keys[issuer], issuer, u, s, now.Unix()+600, nonce)
				valid[minted{tok, u, s}] = true
				f.Add(tok, u, s)
				f.Add(tok, u, "pop")
				f.Add(tok[:len(tok)-1]+"A", u, s)
			}
		}
	}
	f.Add(vecToken, vecUser, vecService)
	f.Add("hunter2", "alice@example.com", "imap")
	f.Add("sct1.", "", "")
	f.Add("sct1.a.1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "a@b", "imap")
	sentinels := []error{errNotToken, errTokenMalformed, errTokenIssuer, errTokenSignature, errTokenExpired, errTokenTooLong}
	f.Fuzz(func(t *testing.T, token, user, service string) {
		err := VerifyToken(keys, token, user, service, now, time.Hour)
		if IsToken(token) == errors.Is(err, errNotToken) {
			t.Fatalf("IsToken(%q) = %v, VerifyToken = %v", token, IsToken(token), err)
		}
		if err != nil {
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("VerifyToken(%q) = %v, not a sentinel", token, err)
		}
		if !valid[minted{token, user, service}] {
			t.Fatalf("accepted %q for %q, %q, which was never minted for them", token, user, service)
		}
		if err := VerifyToken(otherKeys, token, user, service, now, time.Hour); !errors.Is(err, errTokenSignature) {
			t.Fatalf("accepted %q with the wrong keys: %v", token, err)
		}
	})
}

// TestTokenVectorInDocs: the vector table in the docs is the one tested here.
func TestTokenVectorInDocs(t *testing.T) {
	table := docSnippet(t, "vector")
	for _, want := range []string{
		vecKeyB64, vecIssuer, vecUser, vecService, strconv.Itoa(vecExpiry), vecNonce, vecToken,
		fmt.Sprint(vecNow.Unix()),
	} {
		if !strings.Contains(table, want) {
			t.Errorf("docs vector lacks %q:\n%s", want, table)
		}
	}
}

// writeKeyFile writes the vector key as the docs tell an admin to.
func writeKeyFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "webmail.key")
	if err := os.WriteFile(p, []byte(vecKeyB64+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDocsPython runs the Python minting example from the docs: with the
// vector's time and nonce it must print the vector's token, and as a
// command its tokens must verify here.
func TestDocsPython(t *testing.T) {
	python := lab.Tool(t, "SIDECAR_PYTHON3", "python3")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mint_token.py"), []byte(docSnippet(t, "python")), 0o644); err != nil {
		t.Fatal(err)
	}
	nonce, _ := base64.RawURLEncoding.DecodeString(vecNonce)
	code := fmt.Sprintf("import mint_token, base64\n"+
		"print(mint_token.mint(base64.b64decode(%q), %q, %q, %q, ttl=300, now=%d, nonce=bytes.fromhex(%q)))",
		vecKeyB64, vecIssuer, vecUser, vecService, vecNow.Unix(), hex.EncodeToString(nonce))
	cmd := exec.CommandContext(t.Context(), python, "-c", code)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != vecToken {
		t.Fatalf("python mint(vector) = %q, %v; want %q", got, err, vecToken)
	}

	// As a command, with a key file, the user in mixed case and a fresh
	// nonce and clock.
	cmd = exec.CommandContext(t.Context(), python, filepath.Join(dir, "mint_token.py"),
		writeKeyFile(t), vecIssuer, "Alice@Example.COM", "IMAP", "120")
	out, err = cmd.CombinedOutput()
	tok := strings.TrimSpace(string(out))
	if err != nil {
		t.Fatalf("python mint_token.py: %v: %s", err, out)
	}
	keys := TokenKeys{vecIssuer: vecKey(t)}
	if err := VerifyToken(keys, tok, vecUser, vecService, time.Now(), time.Hour); err != nil {
		t.Errorf("token from mint_token.py %q: %v", tok, err)
	}
}

// TestDocsShell runs the shell example from the docs under sh with the
// vector's time and nonce, and with its own.
func TestDocsShell(t *testing.T) {
	sh := lab.Tool(t, "", "sh")
	lab.Tool(t, "", "openssl")
	lab.Tool(t, "", "basenc")
	script := filepath.Join(t.TempDir(), "mint-token")
	if err := os.WriteFile(script, []byte(docSnippet(t, "shell")), 0o755); err != nil {
		t.Fatal(err)
	}
	key := writeKeyFile(t)
	cmd := exec.CommandContext(t.Context(), sh, script, key, vecIssuer, vecUser, vecService, "300")
	cmd.Env = append(os.Environ(), fmt.Sprintf("NOW=%d", vecNow.Unix()), "NONCE="+vecNonce)
	out, err := cmd.CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != vecToken {
		t.Fatalf("mint-token (vector) = %q, %v; want %q", got, err, vecToken)
	}

	out, err = exec.CommandContext(t.Context(), sh, script, key, vecIssuer, vecUser, vecService).CombinedOutput()
	tok := strings.TrimSpace(string(out))
	if err != nil {
		t.Fatalf("mint-token: %v: %s", err, out)
	}
	keys := TokenKeys{vecIssuer: vecKey(t)}
	if err := VerifyToken(keys, tok, vecUser, vecService, time.Now(), time.Hour); err != nil {
		t.Errorf("token from mint-token %q: %v", tok, err)
	}
}

// docSnippet is a snippet of docs/sso-tokens.md (see lab.DocSnippet).
func docSnippet(t testing.TB, name string) string {
	t.Helper()
	return lab.DocSnippet(t, "docs/sso-tokens.md", name)
}
