package lmtp

import (
	"errors"
	"fmt"
	"net/textproto"
	"strings"
	"time"

	"cyrus-sidecar/services/listen"
)

// Config is the [lmtp] section.
type Config struct {
	Enabled     bool     `toml:"enabled"`
	Listen      []string `toml:"listen"`
	SocketMode  string   `toml:"socket_mode"`
	SocketGroup string   `toml:"socket_group"`
	// Hostname is our name in the greeting and toward Cyrus; "" = the
	// machine's.
	Hostname string `toml:"hostname"`

	MaxConns      int   `toml:"max_connections"`
	MaxRecipients int   `toml:"max_recipients"`
	MaxSize       int64 `toml:"max_message_size"` // bytes; Cyrus's own SIZE lowers it
	MaxLine       int   `toml:"max_line_length"`  // bytes with CRLF, on DATA and BDAT alike
	// CommandTimeout bounds the wait for each command line; DataTimeout
	// the wait for each part of a message, which must also arrive at
	// MinDataRate on average once DataTimeout has passed.
	CommandTimeout time.Duration `toml:"command_timeout"`
	DataTimeout    time.Duration `toml:"data_timeout"`
	MinDataRate    int           `toml:"min_data_rate"` // bytes/s; 0 = none

	// LineEndings is "strict" (a bare CR refuses the message) or
	// "lenient" (a bare CR is dropped, as Cyrus itself would); a bare LF
	// always becomes CRLF.
	LineEndings  string `toml:"line_endings"`
	SpoolMemory  int    `toml:"spool_memory"` // bytes of a message kept in memory before a temp file
	SpoolDir     string `toml:"spool_dir"`    // "" = $TMPDIR
	OneRecipient bool   `toml:"one_recipient_per_transaction"`
	CheckQuota   bool   `toml:"check_quota"`

	// RelationHeader names the header stamped on each delivery, "internal"
	// or "external"; "" turns stamping off. RelationProof is what makes a
	// sender internal: "envelope" (its domain is in the recipient's
	// organisation) or "auth" (that, and an AUTH= on MAIL FROM in the
	// organisation too, as Exim's authenticated_sender sends).
	RelationHeader string `toml:"relation_header"`
	RelationProof  string `toml:"relation_proof"`

	// Toward Cyrus lmtpd ([cyrus] lmtp).
	CyrusConns          int           `toml:"cyrus_connections"`
	CyrusConnectTimeout time.Duration `toml:"cyrus_connect_timeout"`
	CyrusCommandTimeout time.Duration `toml:"cyrus_command_timeout"`
	CyrusFinalTimeout   time.Duration `toml:"cyrus_final_timeout"`
	CyrusWait           time.Duration `toml:"cyrus_wait"`
}

// DefaultConfig listens on loopback port 2003. The Cyrus timeouts stay below
// Exim's (command 5m, final 10m) so that Exim hears our 451 rather than
// timing out itself.
func DefaultConfig() Config {
	return Config{
		Enabled:             true,
		Listen:              []string{"127.0.0.1:2003"},
		SocketMode:          "0660",
		MaxConns:            100,
		MaxRecipients:       1000,
		MaxSize:             64 << 20,
		MaxLine:             8000, // below the 8190-byte chunks Cyrus's spool.c reads lines in
		CommandTimeout:      5 * time.Minute,
		DataTimeout:         3 * time.Minute,
		MinDataRate:         500, // as Postfix's smtpd_min_data_rate
		LineEndings:         "strict",
		SpoolMemory:         1 << 20,
		OneRecipient:        true,
		RelationHeader:      "X-Sidecar-Sender-Relation",
		RelationProof:       "envelope",
		CyrusConns:          10,
		CyrusConnectTimeout: 10 * time.Second,
		CyrusCommandTimeout: 2 * time.Minute,
		CyrusFinalTimeout:   8 * time.Minute,
		CyrusWait:           20 * time.Second,
	}
}

// Validate returns every problem, each as "key: message" relative to the
// section, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Enabled && len(c.Listen) == 0 {
		bad("listen", "must name at least one address when enabled")
	}
	for _, a := range c.Listen {
		if msg := listen.CheckListen(a); msg != "" {
			bad("listen", "%s", msg)
		}
	}
	if _, err := listen.Mode(c.SocketMode); err != nil {
		bad("socket_mode", "%v", err)
	}
	if strings.ContainsAny(c.Hostname, " \t\r\n") {
		bad("hostname", "must be a host name, got %q", c.Hostname)
	}
	ints := []struct {
		key      string
		v, lo, h int64
	}{
		{"max_connections", int64(c.MaxConns), 1, 100_000},
		{"max_recipients", int64(c.MaxRecipients), 1, 100_000},
		{"max_message_size", c.MaxSize, 1 << 10, 1 << 34},
		// RFC 5321 §4.5.3.1.6 says 1000; Cyrus reads 8190-byte chunks
		// and applies the dot rules at each chunk's start.
		{"max_line_length", int64(c.MaxLine), 1000, 8000},
		{"min_data_rate", int64(c.MinDataRate), 0, 1 << 30},
		{"spool_memory", int64(c.SpoolMemory), 0, 1 << 30},
		{"cyrus_connections", int64(c.CyrusConns), 1, 1000},
	}
	for _, n := range ints {
		if n.v < n.lo || n.v > n.h {
			bad(n.key, "must be between %d and %d, got %d", n.lo, n.h, n.v)
		}
	}
	durs := []struct {
		key    string
		v, max time.Duration
	}{
		{"command_timeout", c.CommandTimeout, time.Hour},
		{"data_timeout", c.DataTimeout, time.Hour},
		{"cyrus_connect_timeout", c.CyrusConnectTimeout, 10 * time.Minute},
		{"cyrus_command_timeout", c.CyrusCommandTimeout, 10 * time.Minute},
		{"cyrus_final_timeout", c.CyrusFinalTimeout, time.Hour},
		{"cyrus_wait", c.CyrusWait, 10 * time.Minute},
	}
	for _, d := range durs {
		if d.v < 100*time.Millisecond || d.v > d.max {
			bad(d.key, "must be between 100ms and %s, got %s", d.max, d.v)
		}
	}
	if c.LineEndings != "strict" && c.LineEndings != "lenient" {
		bad("line_endings", "must be \"strict\" or \"lenient\", got %q", c.LineEndings)
	}
	if c.RelationHeader != "" {
		if c.RelationHeader != textproto.TrimString(c.RelationHeader) || strings.ContainsFunc(c.RelationHeader, notFieldChar) {
			bad("relation_header", "must be a header field name such as \"X-Sidecar-Sender-Relation\", got %q", c.RelationHeader)
		}
	}
	if c.RelationProof != "envelope" && c.RelationProof != "auth" {
		bad("relation_proof", "must be \"envelope\" or \"auth\", got %q", c.RelationProof)
	}
	return errors.Join(errs...)
}

// notFieldChar reports the characters a header field name cannot hold
// (RFC 5322 §3.6.8: printable ASCII except ':').
func notFieldChar(r rune) bool { return r <= ' ' || r > '~' || r == ':' }
