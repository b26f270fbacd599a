// Package socketmap will answer Sendmail/Postfix socketmap lookups
// (netstrings, "<len>:<map> <key>," answered "<len>:<STATUS> <data>,") from
// the store, for persistent, pipelined and half-closed (Exim ${readsocket})
// clients alike. So far it holds the netstring wire format, tested and
// fuzzed; the service itself is issue 5's work and not yet wired into serve.
package socketmap
