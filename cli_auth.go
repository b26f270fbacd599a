package main

import (
	"context"
	"fmt"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"cyrus-sidecar/services/saslauthd"
	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// cmdAuth is `auth test ADDRESS [-service imap]`: the password (or app
// password, or token) on stdin, and exactly why it would fail. The socket
// only ever says OK or NO; this is where an admin finds the reason.
func cmdAuth(args []string, std stdio, getenv func(string) string) error {
	if len(args) > 0 && args[0] == "log" {
		return cmdAuthLog(args[1:], std, getenv)
	}
	if len(args) == 0 || args[0] != "test" {
		return usagef("auth: expected test or log")
	}
	c := newCommand("auth test", "auth test ADDRESS [-service imap] [-password-stdin] [-config FILE]   (the password on stdin)", std, getenv)
	service := c.fs.String("service", "imap", "the `service` Cyrus would send: imap, pop, sieve, http, smtp")
	fromStdin := c.fs.Bool("password-stdin", false, "read the password from the first line of stdin instead of a terminal prompt")
	ctx := context.Background()
	pos, err := c.start(ctx, args[1:], 1, 1, "one address", false)
	if err != nil {
		return err
	}
	defer c.close()
	pw, err := c.readSecret(*fromStdin, "Password: ")
	if err != nil {
		return err
	}
	keys, err := saslauthd.LoadTokenKeys(c.cfg.Saslauthd.TokenKeys)
	if err != nil {
		return err
	}
	h, err := password.New(c.cfg.Password.Params())
	if err != nil {
		return err
	}
	start := time.Now()
	r := saslauthd.Check(ctx, c.cfg.Saslauthd, keys, c.st, c.canon, h, pos[0], *service, pw)
	who := r.User
	if who == "" {
		who = pos[0]
	}
	if r.OK {
		fmt.Fprintf(std.out, "OK: %s may log in to %s (%s, %s)\n", who, *service, r.Via, time.Since(start).Round(time.Millisecond))
		return nil
	}
	return fmt.Errorf("NO: %s, %s: %s", who, *service, r.Reason)
}

// cmdToken is `token issue ADDRESS -service imap -ttl 5m [-issuer NAME]`:
// a single sign-on token that logs the user in to that service until it
// expires (docs/sso-tokens.md).
func cmdToken(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 || args[0] != "issue" {
		return usagef("token: expected issue")
	}
	c := newCommand("token issue", "token issue ADDRESS -service imap [-ttl 5m] [-issuer NAME] [-config FILE]", std, getenv)
	service := c.fs.String("service", "", "the `service` the token is good for (imap, sieve, ...)")
	ttl := c.fs.Duration("ttl", 5*time.Minute, "how long the token is valid")
	issuer := c.fs.String("issuer", "", "which of saslauthd.token_keys signs it (default: the only one)")
	ctx := context.Background()
	pos, err := c.start(ctx, args[1:], 1, 1, "one address", false)
	if err != nil {
		return err
	}
	defer c.close()
	if *service == "" {
		return usagef("token issue: -service is required (imap, sieve, ...)")
	}
	keys, err := saslauthd.LoadTokenKeys(c.cfg.Saslauthd.TokenKeys)
	if err != nil {
		return err
	}
	if *issuer == "" {
		switch len(keys) {
		case 0:
			return fmt.Errorf("no token keys configured: add a [saslauthd.token_keys] entry (docs/sso-tokens.md)")
		case 1:
			for name := range keys {
				*issuer = name
			}
		default:
			return usagef("token issue: several issuers are configured; pick one with -issuer")
		}
	}
	if *ttl > c.cfg.Saslauthd.TokenMaxTTL {
		return fmt.Errorf("-ttl %s is over saslauthd.token_max_ttl (%s): the responder would refuse it", *ttl, c.cfg.Saslauthd.TokenMaxTTL)
	}
	a, err := c.userAddress(pos[0], false)
	if err != nil {
		return err
	}
	if _, err := c.st.User(ctx, a); err != nil {
		return err
	}
	tok, err := saslauthd.IssueToken(keys, *issuer, a.String(), *service, *ttl, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(std.out, tok)
	return nil
}

// cmdAuthLog is `auth log [ADDRESS]`: the login audit, newest first, as the
// saslauthd responder recorded it (it writes in batches, so an attempt shows
// within a fraction of a second).
func cmdAuthLog(args []string, std stdio, getenv func(string) string) error {
	c := newCommand("auth log", "auth log [ADDRESS] [-n 50] [-failed] [-service S] [-client IP] [-since 24h] [-json] [-config FILE]", std, getenv).withJSON()
	n := c.fs.Int("n", 50, "show the newest `count` entries")
	failed := c.fs.Bool("failed", false, "only failed attempts")
	service := c.fs.String("service", "", "only this `service` (imap, pop, sieve, HTTP, smtp, as the client sent it)")
	client := c.fs.String("client", "", "only attempts from this `address` (an IP, or IP;port as libsasl sends it)")
	since := c.fs.Duration("since", 0, "only entries from this `long` ago on (24h, 30m)")
	ctx := context.Background()
	pos, err := c.start(ctx, args, 0, 1, "at most one address", false)
	if err != nil {
		return err
	}
	defer c.close()
	if *n <= 0 || *n > 100_000 {
		return usagef("auth log: -n must be between 1 and 100000, got %d", *n)
	}
	if *since < 0 {
		return usagef("auth log: -since must be positive, got %v", *since)
	}
	f := store.LoginFilter{Service: *service, Client: *client, Limit: *n}
	if len(pos) == 1 {
		// As the responder records it: canonical when it parses (Cyrus's
		// rules for a login), else as sent.
		f.Login = pos[0]
		if a, err := c.canon.Login(pos[0], ""); err == nil {
			f.Login = a.String()
		}
	}
	if *failed {
		f.Result = store.ResultFail
	}
	if *since > 0 {
		f.Since = time.Now().Add(-*since)
	}
	es, err := c.st.LoginsWhere(ctx, f)
	if err != nil {
		return err
	}
	if *c.jsonOut {
		if es == nil {
			es = []store.LoginEvent{}
		}
		return c.printJSON(es)
	}
	rows := make([][]string, 0, len(es))
	for _, e := range es {
		rows = append(rows, []string{e.At.UTC().Format("2006-01-02 15:04:05Z"), printable(e.Login), printable(e.Service), e.Result,
			dash(printable(e.Reason)), dash(printable(e.Client))})
	}
	return c.printTable([]string{"TIME", "LOGIN", "SERVICE", "RESULT", "REASON", "CLIENT"}, rows)
}

// printable quotes what a client sent when it holds anything a terminal
// would act on, or that would reorder or hide text (bidi and other format
// characters); the audit keeps the bytes as they came.
func printable(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' ||
			unicode.Is(unicode.Cf, r) {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}
