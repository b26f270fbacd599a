package store

import "log/slog"

// Secret holds a password hash or another credential. Every way of printing
// it (fmt, slog, JSON, text) shows "***", so a struct that carries one can be
// logged whole without leaking it (STYLE.md §5: LogValue alone leaks through
// nested structs).
type Secret string

// LogValue redacts for slog.
func (Secret) LogValue() slog.Value { return slog.StringValue("***") }

// String redacts for fmt's %s and %v.
func (Secret) String() string { return "***" }

// GoString redacts for fmt's %#v.
func (Secret) GoString() string { return "***" }

// MarshalText redacts for encoding/json and TOML.
func (Secret) MarshalText() ([]byte, error) { return []byte("***"), nil }

// Reveal returns the value, for the one place that needs it (verification).
func (s Secret) Reveal() string { return string(s) }
