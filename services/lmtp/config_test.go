package lmtp

import (
	"strings"
	"testing"
	"time"
)

func TestConfigDefaultValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v", err)
	}
	// Good values at the edges.
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"bounds low", func(c *Config) {
			c.MaxConns, c.MaxRecipients, c.MaxSize, c.MaxLine, c.MinDataRate, c.SpoolMemory, c.CyrusConns = 1, 1, 1<<10, 1000, 0, 0, 1
			c.CommandTimeout, c.DataTimeout = 100*time.Millisecond, 100*time.Millisecond
			c.CyrusConnectTimeout, c.CyrusCommandTimeout, c.CyrusFinalTimeout, c.CyrusWait = 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
		}},
		{"bounds high", func(c *Config) {
			c.MaxConns, c.MaxRecipients, c.MaxSize, c.MaxLine, c.MinDataRate, c.SpoolMemory, c.CyrusConns = 100_000, 100_000, 1<<34, 8000, 1<<30, 1<<30, 1000
			c.CommandTimeout, c.DataTimeout = time.Hour, time.Hour
			c.CyrusConnectTimeout, c.CyrusCommandTimeout, c.CyrusFinalTimeout, c.CyrusWait = 10*time.Minute, 10*time.Minute, time.Hour, 10*time.Minute
		}},
		{"unix and IPv6 loopback", func(c *Config) { c.Listen = []string{"unix:/run/sidecar/lmtp.sock", "[::1]:2003", "localhost:2003"} }},
		{"disabled without listen", func(c *Config) { c.Enabled, c.Listen = false, nil }},
		{"lenient, auth, no header", func(c *Config) { c.LineEndings, c.RelationProof, c.RelationHeader = "lenient", "auth", "" }},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestConfigBad(t *testing.T) {
	for _, tc := range []struct {
		key string
		mod func(*Config)
	}{
		{"listen", func(c *Config) { c.Listen = []string{"0.0.0.0:25"} }},
		{"listen", func(c *Config) { c.Listen = []string{"192.0.2.1:2003"} }},
		{"listen", func(c *Config) { c.Listen = []string{"127.0.0.1:0"} }},
		{"listen", func(c *Config) { c.Listen = []string{"unix:run/lmtp.sock"} }},
		{"listen", func(c *Config) { c.Listen = []string{""} }},
		{"listen", func(c *Config) { c.Listen = nil }},
		{"socket_mode", func(c *Config) { c.SocketMode = "rw" }},
		{"socket_mode", func(c *Config) { c.SocketMode = "1777" }},
		{"hostname", func(c *Config) { c.Hostname = "a b" }},
		{"hostname", func(c *Config) { c.Hostname = "a\r\nMAIL" }},
		{"max_connections", func(c *Config) { c.MaxConns = 0 }},
		{"max_connections", func(c *Config) { c.MaxConns = 100_001 }},
		{"max_recipients", func(c *Config) { c.MaxRecipients = 0 }},
		{"max_recipients", func(c *Config) { c.MaxRecipients = 100_001 }},
		{"max_message_size", func(c *Config) { c.MaxSize = 1<<10 - 1 }},
		{"max_message_size", func(c *Config) { c.MaxSize = 1<<34 + 1 }},
		{"max_message_size", func(c *Config) { c.MaxSize = -1 }},
		{"max_line_length", func(c *Config) { c.MaxLine = 999 }},
		{"max_line_length", func(c *Config) { c.MaxLine = 8001 }},
		{"min_data_rate", func(c *Config) { c.MinDataRate = -1 }},
		{"min_data_rate", func(c *Config) { c.MinDataRate = 1<<30 + 1 }},
		{"spool_memory", func(c *Config) { c.SpoolMemory = -1 }},
		{"spool_memory", func(c *Config) { c.SpoolMemory = 1<<30 + 1 }},
		{"cyrus_connections", func(c *Config) { c.CyrusConns = 0 }},
		{"cyrus_connections", func(c *Config) { c.CyrusConns = 1001 }},
		{"command_timeout", func(c *Config) { c.CommandTimeout = 0 }},
		{"command_timeout", func(c *Config) { c.CommandTimeout = 99 * time.Millisecond }},
		{"command_timeout", func(c *Config) { c.CommandTimeout = time.Hour + 1 }},
		{"data_timeout", func(c *Config) { c.DataTimeout = -time.Second }},
		{"data_timeout", func(c *Config) { c.DataTimeout = time.Hour + 1 }},
		{"cyrus_connect_timeout", func(c *Config) { c.CyrusConnectTimeout = 0 }},
		{"cyrus_connect_timeout", func(c *Config) { c.CyrusConnectTimeout = 10*time.Minute + 1 }},
		{"cyrus_command_timeout", func(c *Config) { c.CyrusCommandTimeout = 99 * time.Millisecond }},
		{"cyrus_command_timeout", func(c *Config) { c.CyrusCommandTimeout = 10*time.Minute + 1 }},
		{"cyrus_final_timeout", func(c *Config) { c.CyrusFinalTimeout = 0 }},
		{"cyrus_final_timeout", func(c *Config) { c.CyrusFinalTimeout = time.Hour + 1 }},
		{"cyrus_wait", func(c *Config) { c.CyrusWait = 0 }},
		{"cyrus_wait", func(c *Config) { c.CyrusWait = 10*time.Minute + 1 }},
		{"line_endings", func(c *Config) { c.LineEndings = "crlf" }},
		{"line_endings", func(c *Config) { c.LineEndings = "" }},
		{"line_endings", func(c *Config) { c.LineEndings = "Strict" }},
		{"relation_header", func(c *Config) { c.RelationHeader = "X Bad" }},
		{"relation_header", func(c *Config) { c.RelationHeader = "X-Bad:" }},
		{"relation_header", func(c *Config) { c.RelationHeader = " X-Bad" }},
		{"relation_header", func(c *Config) { c.RelationHeader = "X-Bad\r\nBcc: x" }},
		{"relation_header", func(c *Config) { c.RelationHeader = "X-B\u00e4d" }},
		{"relation_proof", func(c *Config) { c.RelationProof = "dns" }},
		{"relation_proof", func(c *Config) { c.RelationProof = "" }},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: bad value accepted: %+v", tc.key, c)
			continue
		}
		// Every problem names its key first, and only this one is wrong.
		for _, e := range unjoin(err) {
			if !strings.HasPrefix(e.Error(), tc.key+": ") {
				t.Errorf("%s: error %q does not name the key", tc.key, e)
			}
		}
	}
}

// TestConfigAllErrors: Validate reports every problem at once.
func TestConfigAllErrors(t *testing.T) {
	c := DefaultConfig()
	c.Listen = []string{"0.0.0.0:25"}
	c.MaxConns = 0
	c.LineEndings = "crlf"
	c.RelationHeader = "X Bad"
	c.RelationProof = "dns"
	c.CyrusWait = 0
	errs := unjoin(c.Validate())
	var keys []string
	for _, e := range errs {
		k, _, _ := strings.Cut(e.Error(), ":")
		keys = append(keys, k)
	}
	want := "listen max_connections cyrus_wait line_endings relation_header relation_proof"
	if strings.Join(keys, " ") != want {
		t.Errorf("Validate reported %q, want keys %q", errs, want)
	}
}

// unjoin splits an errors.Join error into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}
