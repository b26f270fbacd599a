package main

import (
	"context"
	"fmt"
	"time"

	"cyrus-sidecar/services/saslauthd"
	"cyrus-sidecar/store/password"
)

// cmdAuth is `auth test ADDRESS [-service imap]`: the password (or app
// password, or token) on stdin, and exactly why it would fail. The socket
// only ever says OK or NO; this is where an admin finds the reason.
func cmdAuth(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 || args[0] != "test" {
		return usagef("auth: expected test")
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
