package vacation

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config is the [vacation] section.
type Config struct {
	Enabled bool `toml:"enabled"`
	// ScriptName is our script in each user's Cyrus; WrapperName the small
	// active script that includes it for users without one of their own.
	ScriptName  string `toml:"script_name"`
	WrapperName string `toml:"wrapper_name"`
	// Policy for a user whose own script is active: "include" (add one
	// marked include line to it), "wrap" (activate a wrapper including both)
	// or "report" (install ours, activate nothing, say so in `show`).
	Policy string `toml:"policy"`
	// Interval is the full pass that also catches end dates; a store change
	// is picked up within Poll.
	Interval time.Duration `toml:"interval"`
	Poll     time.Duration `toml:"poll"`
	RetryMax time.Duration `toml:"retry_max"` // longest pause between attempts while Cyrus fails
	Timeout  time.Duration `toml:"timeout"`   // each ManageSieve command
	Workers  int           `toml:"workers"`   // ManageSieve sessions at once
}

// DefaultConfig is the configuration without a [vacation] section.
func DefaultConfig() Config {
	return Config{
		Enabled:     true,
		ScriptName:  "cyrus-sidecar-vacation",
		WrapperName: "cyrus-sidecar",
		Policy:      "include",
		Interval:    5 * time.Minute,
		Poll:        250 * time.Millisecond,
		RetryMax:    5 * time.Minute,
		Timeout:     30 * time.Second,
		Workers:     4,
	}
}

// Validate returns every problem, each as "key: message" relative to the
// section, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	for _, n := range []struct{ key, v string }{{"script_name", c.ScriptName}, {"wrapper_name", c.WrapperName}} {
		// RFC 5804 §1.6: a script name is UTF-8 without controls; keep it plain.
		if n.v == "" || len(n.v) > 100 || strings.ContainsFunc(n.v, func(r rune) bool { return r < ' ' || r == 0x7f || r == '"' || r == '\\' }) {
			bad(n.key, "must be a plain script name of 1 to 100 characters, got %q", n.v)
		}
	}
	if c.ScriptName == c.WrapperName {
		bad("wrapper_name", "must differ from script_name")
	}
	if c.Policy != "include" && c.Policy != "wrap" && c.Policy != "report" {
		bad("policy", "must be \"include\", \"wrap\" or \"report\", got %q", c.Policy)
	}
	for _, d := range []struct {
		key     string
		v, l, h time.Duration
	}{{"interval", c.Interval, time.Minute, 24 * time.Hour}, {"poll", c.Poll, 50 * time.Millisecond, time.Minute},
		{"retry_max", c.RetryMax, time.Second, 24 * time.Hour}, {"timeout", c.Timeout, time.Second, 10 * time.Minute}} {
		if d.v < d.l || d.v > d.h {
			bad(d.key, "must be between %s and %s, got %s", d.l, d.h, d.v)
		}
	}
	if c.Workers < 1 || c.Workers > 64 {
		bad("workers", "must be between 1 and 64, got %d", c.Workers)
	}
	return errors.Join(errs...)
}
