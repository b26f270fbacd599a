package saslauthd

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	"cyrus-sidecar/services/listen"
)

// Config is the [saslauthd] section.
type Config struct {
	Enabled     bool   `toml:"enabled"`
	Listen      string `toml:"listen"`
	SocketMode  string `toml:"socket_mode"`
	SocketGroup string `toml:"socket_group"`
	// MaxConns bounds open connections; one more is answered NO at once.
	MaxConns int `toml:"max_connections"`
	// RequestTimeout bounds reading one request and answering it.
	RequestTimeout time.Duration `toml:"request_timeout"`
	// FifthFieldWait is how long to wait, after the fourth field, for the
	// client address that newer libsasl sends as a fifth. 0 (the default):
	// a fifth field is read only when it came with the fourth, as libsasl
	// sends all fields in one write; any wait would delay every login of a
	// released (4-field) libsasl by that much.
	FifthFieldWait time.Duration `toml:"fifth_field_wait"`
	// VerifyWorkers bounds password hashes computed at once (about one per
	// core: argon2id and bcrypt are CPU- and memory-bound).
	VerifyWorkers int `toml:"verify_workers"`
	// VerifyQueueWait is how long a request waits for a free worker before
	// it is answered NO (overload gets a fast answer, never a hang).
	VerifyQueueWait time.Duration `toml:"verify_queue_wait"`
	// CacheEntries bounds the in-memory cache of successful verifications.
	CacheEntries int `toml:"cache_entries"`
	// FailDelay is the delay added per recent failure of a login (doubling,
	// capped at FailDelayMax); failures older than FailWindow are forgotten.
	FailDelay    time.Duration `toml:"fail_delay"`
	FailDelayMax time.Duration `toml:"fail_delay_max"`
	FailWindow   time.Duration `toml:"fail_window"`
	// AllowAliasLogin lets an alias that reaches exactly one user log in as
	// that user. Off by default: Cyrus would open the alias's mailbox name.
	AllowAliasLogin bool `toml:"allow_alias_login"`
	// RehashOnLogin replaces a user's hash in an old scheme (bcrypt,
	// SHA-crypt, other argon2 parameters) after a successful login.
	RehashOnLogin bool `toml:"rehash_on_login"`
	// TokenKeys maps a single sign-on token issuer to the file holding its
	// HMAC-SHA256 key; several issuers allow rotation (docs/sso-tokens.md).
	TokenKeys map[string]string `toml:"token_keys"`
	// TokenMaxTTL caps the lifetime a token may claim.
	TokenMaxTTL time.Duration `toml:"token_max_ttl"`
}

// DefaultConfig listens on saslauthd/mux in runtimeDir, the path layout
// Debian's saslauthd uses (/run/saslauthd/mux).
func DefaultConfig(runtimeDir string) Config {
	return Config{
		Enabled:         true,
		Listen:          "unix:" + filepath.Join(runtimeDir, "saslauthd", "mux"),
		SocketMode:      "0666",
		MaxConns:        1024,
		RequestTimeout:  10 * time.Second,
		FifthFieldWait:  0, // see the field's comment
		VerifyWorkers:   runtime.NumCPU(),
		VerifyQueueWait: 2 * time.Second,
		CacheEntries:    100_000,
		FailDelay:       500 * time.Millisecond,
		FailDelayMax:    8 * time.Second,
		FailWindow:      15 * time.Minute,
		RehashOnLogin:   true,
		TokenKeys:       map[string]string{},
		TokenMaxTTL:     time.Hour,
	}
}

// Validate returns every problem as "key: message" lines, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if msg := listen.CheckListen(c.Listen); msg != "" {
		bad("listen", "%s", msg)
	}
	if _, err := listen.Mode(c.SocketMode); err != nil {
		bad("socket_mode", "%v", err)
	}
	if c.MaxConns < 1 || c.MaxConns > 100_000 {
		bad("max_connections", "must be between 1 and 100000, got %d", c.MaxConns)
	}
	if c.RequestTimeout < 100*time.Millisecond || c.RequestTimeout > 5*time.Minute {
		bad("request_timeout", "must be between 100ms and 5m, got %s", c.RequestTimeout)
	}
	if c.FifthFieldWait < 0 || c.FifthFieldWait > time.Second {
		bad("fifth_field_wait", "must be between 0s and 1s, got %s", c.FifthFieldWait)
	}
	if c.VerifyWorkers < 1 || c.VerifyWorkers > 256 {
		bad("verify_workers", "must be between 1 and 256, got %d", c.VerifyWorkers)
	}
	if c.VerifyQueueWait < 0 || c.VerifyQueueWait >= c.RequestTimeout {
		bad("verify_queue_wait", "must be at least 0s and shorter than request_timeout, got %s", c.VerifyQueueWait)
	}
	if c.CacheEntries < 0 {
		bad("cache_entries", "must be 0 (no cache) or more, got %d", c.CacheEntries)
	}
	if c.FailDelay < 0 || c.FailDelayMax < c.FailDelay || c.FailDelayMax >= c.RequestTimeout {
		bad("fail_delay_max", "must be at least fail_delay and shorter than request_timeout, got %s", c.FailDelayMax)
	}
	if c.FailWindow < time.Second {
		bad("fail_window", "must be at least 1s, got %s", c.FailWindow)
	}
	for issuer, file := range c.TokenKeys {
		if !filepath.IsAbs(file) {
			bad("token_keys."+issuer, "must be an absolute path to the key file, got %q", file)
		}
	}
	if c.TokenMaxTTL < time.Second || c.TokenMaxTTL > 30*24*time.Hour {
		bad("token_max_ttl", "must be between 1s and 720h, got %s", c.TokenMaxTTL)
	}
	return errors.Join(errs...)
}
