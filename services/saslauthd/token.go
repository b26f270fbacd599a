package saslauthd

// Single sign-on tokens, specified in docs/sso-tokens.md: a webmail or
// groupware that holds an issuer's key mints a short-lived token for a user
// and a service, and logs into Cyrus with it as the user's password.
//
//	sct1.<issuer>.<expiry>.<nonce>.<mac>
//
// The user and the service are not in the text: they come from the login
// request, and the MAC covers them, so a token works for the user and
// service it was minted for and for nothing else. That keeps the token under
// 100 bytes, far below the saslauthd field limit (maxField, 256 bytes), and
// every byte of it is an IMAP atom character (RFC 9051 §9 ATOM-CHAR), so a
// client can send it in LOGIN unquoted.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The token format, version 1. Changing any of these is a new version.
const (
	// tokenPrefix starts every token. A password that begins with it is
	// never tried as a password (IsToken).
	tokenPrefix = "sct1."
	// tokenContext is the first field of the MAC input: it separates these
	// MACs from anything else an administrator might sign with the same key.
	tokenContext = "cyrus-sidecar-sso-token-v1"
	// tokenNonceLen is 96 random bits, 16 base64url characters. 12 is a
	// multiple of 3, so the encoding has no padding and no spare bits: every
	// 16-character string of the alphabet is the one encoding of its bytes.
	tokenNonceLen   = 12
	tokenNonceChars = 16
	// tokenMACLen truncates HMAC-SHA256 to 192 bits (RFC 2104 §5 asks for at
	// least half the hash; NIST SP 800-107 §5.3.3 allows truncation), 32
	// base64url characters, again without padding or spare bits.
	tokenMACLen   = 24
	tokenMACChars = 32
	// maxIssuerLen and maxExpiryDigits bound the two variable fields; 11
	// digits of Unix time reach the year 5138.
	maxIssuerLen    = 32
	maxExpiryDigits = 11
	// maxTokenLen is the longest well-formed token: 99 bytes.
	maxTokenLen = len(tokenPrefix) + maxIssuerLen + 1 + maxExpiryDigits + 1 +
		tokenNonceChars + 1 + tokenMACChars
	// maxTokenService bounds the service a token is minted for; saslauthd
	// services are short words (imap, pop, sieve, http, smtp, lmtp).
	maxTokenService = 32
	// maxTokenTTL is the longest lifetime IssueToken mints, the upper bound
	// of token_max_ttl in Config.Validate.
	maxTokenTTL = 30 * 24 * time.Hour
	// tokenClockSkew is how far the minting host's clock may be off ours:
	// a token is accepted until expiry+skew, and may claim an expiry up to
	// maxTTL+skew ahead.
	tokenClockSkew = 30 * time.Second
	// minTokenKeyLen is the shortest key accepted: 256 bits, the output
	// size of SHA-256 (RFC 2104 §3: shorter keys weaken the MAC).
	minTokenKeyLen = 32
	// maxTokenKeyFile bounds what is read of a key file.
	maxTokenKeyFile = 4096
)

// Token failures, one per class, for the log and for `auth test`; the
// socket answers all of them with the same NO. There is no "wrong user" or
// "wrong service": the MAC covers both, so a token presented for another
// user or service fails exactly as a forged one does (errTokenSignature),
// by design.
var (
	// errNotToken: the string does not start with tokenPrefix. The caller
	// treats it as a password.
	errNotToken       = errors.New("not a token")
	errTokenMalformed = errors.New("malformed token")
	// errTokenIssuer: no key is configured for the issuer the token names,
	// including one whose key was removed to revoke its tokens.
	errTokenIssuer    = errors.New("unknown token issuer")
	errTokenSignature = errors.New("token signature does not match (wrong key, altered token, or another user or service)")
	errTokenExpired   = errors.New("token expired")
	// errTokenTooLong: the expiry is further ahead than token_max_ttl (plus
	// tokenClockSkew) allows.
	errTokenTooLong = errors.New("token lifetime longer than token_max_ttl")
)

// TokenKeys maps an issuer name to its HMAC-SHA256 key. Printing or logging
// it shows the issuer names only.
type TokenKeys map[string][]byte

// LoadTokenKeys reads the key files of Config.TokenKeys (issuer -> path).
// A file holds the key in standard base64 (RFC 4648 §4, with padding; line
// breaks are ignored), as `head -c 32 /dev/urandom | base64` writes it; it
// must decode to at least 32 bytes, be a regular file and be neither readable
// nor writable by others. Every problem is reported, each line starting with
// its config key.
func LoadTokenKeys(files map[string]string) (TokenKeys, error) {
	keys := make(TokenKeys, len(files))
	var errs []error
	for _, issuer := range slices.Sorted(maps.Keys(files)) {
		if !validIssuer(issuer) {
			errs = append(errs, fmt.Errorf("token_keys: issuer %q must be 1 to %d characters a-z, 0-9 or -", issuer, maxIssuerLen))
			continue
		}
		key, err := readTokenKey(files[issuer])
		if err != nil {
			errs = append(errs, fmt.Errorf("token_keys.%s: %w", issuer, err))
			continue
		}
		keys[issuer] = key
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return keys, nil
}

// IssueToken mints a token of issuer for user and service, valid for ttl
// from now. user must be canonical (local@domain, lower-case, as the store
// canonicalises) and service lower-case, because the responder verifies
// exactly the canonical login and the lower-cased service it is given.
func IssueToken(keys TokenKeys, issuer, user, service string, ttl time.Duration, now time.Time) (string, error) {
	key, ok := keys[issuer]
	if !ok {
		return "", fmt.Errorf("%w %q", errTokenIssuer, issuer)
	}
	if !validIssuer(issuer) || len(key) < minTokenKeyLen {
		return "", fmt.Errorf("issuer %q: invalid name or key shorter than %d bytes", issuer, minTokenKeyLen)
	}
	if !validTokenUser(user) {
		return "", fmt.Errorf("user %q: must be a canonical address (local@domain, lower-case)", user)
	}
	if !validTokenService(service) {
		return "", fmt.Errorf("service %q: must be 1 to %d characters a-z, 0-9, '.', '_' or '-'", service, maxTokenService)
	}
	if ttl < time.Second || ttl > maxTokenTTL {
		return "", fmt.Errorf("ttl must be between 1s and %s, got %s", maxTokenTTL, ttl)
	}
	expiry := now.Add(ttl).Unix()
	if expiry <= 0 || len(strconv.FormatInt(expiry, 10)) > maxExpiryDigits {
		return "", fmt.Errorf("expiry %d out of range", expiry)
	}
	var nonce [tokenNonceLen]byte
	rand.Read(nonce[:]) // crypto/rand never fails: it crashes the program instead
	return signToken(key, issuer, user, service, expiry, nonce[:]), nil
}

// IsToken reports whether s claims to be a token: it starts with "sct1.".
// Such a string is judged only by VerifyToken, never as a password, so a
// malformed token is reported as one instead of as a wrong password.
func IsToken(s string) bool { return strings.HasPrefix(s, tokenPrefix) }

// VerifyToken checks token for user and service at time now: well-formed,
// from a configured issuer, MAC right for exactly this user and service
// (hmac.Equal, constant time), not expired, and not claiming more than
// maxTTL. user and service are used exactly as given: the caller passes the
// canonical login and the lower-cased service.
func VerifyToken(keys TokenKeys, token, user, service string, now time.Time, maxTTL time.Duration) error {
	p, err := parseToken(token)
	if err != nil {
		return err
	}
	key := keys[p.issuer]
	if len(key) < minTokenKeyLen { // a key below the minimum is no key at all
		return fmt.Errorf("%w %q", errTokenIssuer, p.issuer)
	}
	// The MAC comes before the times, so that "expired" always describes a
	// genuine token.
	if !hmac.Equal(p.mac, tokenMAC(key, p.issuer, user, service, p.expiryText, p.nonce)) {
		return errTokenSignature
	}
	t, skew := now.Unix(), int64(tokenClockSkew/time.Second)
	if t >= p.expiry+skew {
		return fmt.Errorf("%w at %s", errTokenExpired, time.Unix(p.expiry, 0).UTC().Format(time.RFC3339))
	}
	if p.expiry > t+int64(maxTTL/time.Second)+skew {
		return fmt.Errorf("%w (%s): expires at %s", errTokenTooLong, maxTTL, time.Unix(p.expiry, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// String lists the issuers, never the keys.
func (k TokenKeys) String() string {
	return "TokenKeys[" + strings.Join(slices.Sorted(maps.Keys(k)), " ") + "]"
}

// GoString is the %#v form, also without keys.
func (k TokenKeys) GoString() string {
	return fmt.Sprintf("saslauthd.TokenKeys(%q)", slices.Sorted(maps.Keys(k)))
}

// Format makes every verb print String (GoString for %#v), so %x or %d
// cannot print the keys either.
func (k TokenKeys) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, k.GoString())
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), k.String())
}

// LogValue logs the issuer names.
func (k TokenKeys) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalText is String, for JSON and nested slog values.
func (k TokenKeys) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// tokenParts is a token split into its fields.
type tokenParts struct {
	issuer     string
	expiryText string // as in the token and the MAC input
	expiry     int64
	nonce      string // base64url text, as in the token and the MAC input
	mac        []byte
}

// parseToken splits a token and checks the shape of every field. Each
// field has exactly one accepted spelling, so no two token texts carry the
// same MAC input.
func parseToken(s string) (tokenParts, error) {
	if !IsToken(s) {
		return tokenParts{}, errNotToken
	}
	if len(s) > maxTokenLen { // before splitting: a peer's field is up to 256 bytes
		return tokenParts{}, fmt.Errorf("%w: longer than %d bytes", errTokenMalformed, maxTokenLen)
	}
	f := strings.Split(s[len(tokenPrefix):], ".")
	if len(f) != 4 {
		return tokenParts{}, fmt.Errorf("%w: want 5 fields separated by '.', got %d", errTokenMalformed, len(f)+1)
	}
	p := tokenParts{issuer: f[0], expiryText: f[1], nonce: f[2]}
	switch {
	case !validIssuer(p.issuer):
		return tokenParts{}, fmt.Errorf("%w: issuer must be 1 to %d characters a-z, 0-9 or -", errTokenMalformed, maxIssuerLen)
	case !validExpiry(p.expiryText):
		return tokenParts{}, fmt.Errorf("%w: expiry must be 1 to %d digits without leading zeros", errTokenMalformed, maxExpiryDigits)
	case !isBase64URL(p.nonce, tokenNonceChars):
		return tokenParts{}, fmt.Errorf("%w: nonce must be %d base64url characters", errTokenMalformed, tokenNonceChars)
	case !isBase64URL(f[3], tokenMACChars):
		return tokenParts{}, fmt.Errorf("%w: mac must be %d base64url characters", errTokenMalformed, tokenMACChars)
	}
	p.expiry, _ = strconv.ParseInt(p.expiryText, 10, 64) // at most 11 digits: always fits
	mac, err := base64.RawURLEncoding.Strict().DecodeString(f[3])
	if err != nil || len(mac) != tokenMACLen { // unreachable after isBase64URL
		return tokenParts{}, fmt.Errorf("%w: mac: %v", errTokenMalformed, err)
	}
	p.mac = mac
	return p, nil
}

// signToken is IssueToken with the expiry and nonce given: the fixed test
// vector in docs/sso-tokens.md comes from it.
func signToken(key []byte, issuer, user, service string, expiry int64, nonce []byte) string {
	exp := strconv.FormatInt(expiry, 10)
	n := base64.RawURLEncoding.EncodeToString(nonce)
	mac := base64.RawURLEncoding.EncodeToString(tokenMAC(key, issuer, user, service, exp, n))
	return tokenPrefix + issuer + "." + exp + "." + n + "." + mac
}

// tokenMAC is HMAC-SHA256 over tokenContext, issuer, user, service, expiry
// and nonce, separated by NUL bytes, truncated to tokenMACLen. NUL cannot
// occur in a field (saslauthd refuses it, the store never canonicalises to
// it, the token fields have fixed alphabets), so the encoding is
// unambiguous, and a user or service that did contain one would add a
// separator and match no minted token.
func tokenMAC(key []byte, issuer, user, service, expiry, nonce string) []byte {
	m := hmac.New(sha256.New, key)
	for i, field := range [...]string{tokenContext, issuer, user, service, expiry, nonce} {
		if i > 0 {
			m.Write([]byte{0})
		}
		io.WriteString(m, field)
	}
	return m.Sum(nil)[:tokenMACLen]
}

// readTokenKey reads and checks one key file.
func readTokenKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *fs.PathError names the file
	}
	defer f.Close()
	fi, err := f.Stat() // the opened file itself: no race with a rename
	if err != nil {
		return nil, err
	}
	switch mode := fi.Mode(); {
	case !mode.IsRegular():
		return nil, fmt.Errorf("%s: not a regular file", path)
	case mode.Perm()&0o006 != 0:
		return nil, fmt.Errorf("%s: readable or writable by others (mode %04o); chmod o-rw %s", path, mode.Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTokenKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxTokenKeyFile {
		return nil, fmt.Errorf("%s: longer than %d bytes, not a key file", path, maxTokenKeyFile)
	}
	// base64 wraps long output at 76 columns: drop all whitespace.
	text := strings.Join(strings.Fields(string(data)), "")
	key, err := base64.StdEncoding.Strict().DecodeString(text)
	// The hex of a key (openssl rand -hex 32) is valid base64 of other
	// bytes; real base64 of 32 random bytes is never all hex digits.
	if err != nil || text != "" && strings.Trim(text, "0123456789abcdefABCDEF") == "" {
		return nil, fmt.Errorf("%s: not standard base64 (generate a key with: head -c 32 /dev/urandom | base64)", path)
	}
	if len(key) < minTokenKeyLen {
		return nil, fmt.Errorf("%s: key is %d bytes, want at least %d (head -c 32 /dev/urandom | base64)", path, len(key), minTokenKeyLen)
	}
	return key, nil
}

// validIssuer: 1 to 32 of a-z, 0-9, '-'.
func validIssuer(s string) bool {
	if len(s) == 0 || len(s) > maxIssuerLen {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validExpiry: 1 to 11 digits, no leading zero, not 0.
func validExpiry(s string) bool {
	if len(s) == 0 || len(s) > maxExpiryDigits || s[0] == '0' {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isBase64URL: exactly n characters of the RFC 4648 §5 alphabet, no '='.
func isBase64URL(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validTokenUser accepts what the store's canonicalisation produces:
// local@domain, valid UTF-8, no ASCII upper case, space or control bytes,
// at most 254 bytes (RFC 5321 §4.5.3.1).
func validTokenUser(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 || len(s) > 254 || !utf8.ValidString(s) {
		return false
	}
	for i := range len(s) {
		if c := s[i]; c <= ' ' || c == 0x7f || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// validTokenService: 1 to 32 of a-z, 0-9, '.', '_', '-' (Cyrus sends
// "HTTP" upper-case; the caller lower-cases it).
func validTokenService(s string) bool {
	if len(s) == 0 || len(s) > maxTokenService {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
