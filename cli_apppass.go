package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"cyrus-sidecar/store"
)

// maxAppPassTTL bounds -ttl and -expires: further out is "never", which is
// what leaving both out says.
const maxAppPassTTL = 100 * 365 * 24 * time.Hour

// appPassTime is how app-password times are shown in tables.
const appPassTime = "2006-01-02 15:04:05Z"

func cmdAppPass(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("apppass: expected add, del or list")
	}
	sub, args := args[0], args[1:]
	// No ^C handler: every edit is one transaction (see cmdUser).
	ctx := context.Background()
	switch sub {
	case "add":
		c := newCommand("apppass add", "apppass add ADDRESS -label LABEL [-services LIST] [-expires RFC3339 | -ttl DURATION] [-json] [-config FILE]", std, getenv)
		label := c.fs.String("label", "", "`name` of the device or program that will use it (required, unique per user)")
		services := c.fs.String("services", "*", "comma-separated `services` it may be used for (imap,pop,sieve,http,smtp), * = all the user's")
		expires := c.fs.String("expires", "", "stop working at this `time` (RFC 3339, e.g. 2026-12-31T23:59:59Z)")
		ttl := c.fs.String("ttl", "", "stop working after this `duration` (90d, 720h, 30m); default: never")
		jsonOut := c.fs.Bool("json", false, "print JSON (with the password) instead of text, for scripts")
		pos, err := c.parse(args)
		if err != nil {
			return err
		}
		if err := c.want(pos, 1, 1, "one address"); err != nil {
			return err
		}
		if err := appPassLabel(c, *label); err != nil {
			return err
		}
		svc, err := store.ParseServices(*services)
		if err != nil {
			return usagef("apppass add: -services: %v", err)
		}
		exp, err := appPassExpiry(*expires, *ttl, time.Now())
		if err != nil {
			return err
		}
		if err := c.open(ctx, false); err != nil {
			return err
		}
		defer c.close()
		a, u, err := c.appPassUser(ctx, pos[0])
		if err != nil {
			return err
		}
		plain, hash, err := store.GenerateAppPassword()
		if err != nil {
			return err
		}
		p, err := c.st.AddAppPassword(ctx, a, *label, hash, svc, exp)
		switch {
		case errors.Is(err, store.ErrExists):
			return fmt.Errorf("%w; pick another label, or remove the old one first: cyrus-sidecar apppass del %s -label %q", err, u.Address, *label)
		case errors.Is(err, store.ErrLimit):
			return fmt.Errorf("%w; remove unused ones first (cyrus-sidecar apppass list %s)", err, u.Address)
		case err != nil:
			return err
		}
		appPassWarn(c, u, p)
		if *jsonOut {
			return c.printJSON(struct {
				store.AppPassword
				Password string `json:"password"`
			}{p, plain})
		}
		fmt.Fprintf(std.out, "app password %q for %s (services: %s; %s):\n\n    %s\n\n",
			p.Label, p.User, appPassServices(p.Services), appPassExpiryText(p.Expires), plain)
		fmt.Fprintln(std.out, "It cannot be shown again: enter it in the mail client now, with the login", p.User+".")
		return nil
	case "del":
		c := newCommand("apppass del", "apppass del ADDRESS -label LABEL [-config FILE]", std, getenv)
		label := c.fs.String("label", "", "`name` of the app password to remove (see apppass list)")
		pos, err := c.parse(args)
		if err != nil {
			return err
		}
		if err := c.want(pos, 1, 1, "one address"); err != nil {
			return err
		}
		if err := appPassLabel(c, *label); err != nil {
			return err
		}
		if err := c.open(ctx, false); err != nil {
			return err
		}
		defer c.close()
		a, u, err := c.appPassUser(ctx, pos[0])
		if err != nil {
			return err
		}
		if err := c.st.DeleteAppPassword(ctx, a, *label); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w (see cyrus-sidecar apppass list %s)", err, u.Address)
			}
			return err
		}
		fmt.Fprintf(std.out, "app password %q of %s deleted; logins with it fail from now on\n", *label, u.Address)
		return nil
	case "list":
		c := newCommand("apppass list", "apppass list ADDRESS [-json] [-config FILE]", std, getenv).withJSON()
		pos, err := c.start(ctx, args, 1, 1, "one address", false)
		if err != nil {
			return err
		}
		defer c.close()
		a, _, err := c.appPassUser(ctx, pos[0])
		if err != nil {
			return err
		}
		ps, err := c.st.AppPasswords(ctx, a)
		if err != nil {
			return err
		}
		if *c.jsonOut {
			return c.printJSON(nonNil(ps))
		}
		now := time.Now()
		rows := make([][]string, len(ps))
		for i, p := range ps {
			exp := "never"
			if !p.Expires.IsZero() {
				exp = p.Expires.UTC().Format(appPassTime)
				if p.Expired(now) {
					exp += " (expired)"
				}
			}
			used := "never"
			if !p.LastUsed.IsZero() {
				used = p.LastUsed.UTC().Format(appPassTime)
			}
			rows[i] = []string{p.Label, strings.Join(p.Services, ","), exp, p.Created.UTC().Format(appPassTime), used}
		}
		return c.printTable([]string{"LABEL", "SERVICES", "EXPIRES", "CREATED", "LAST-USED"}, rows)
	}
	return usagef("apppass: unknown subcommand %q (add, del, list)", sub)
}

// appPassUser finds the user an app-password command is about, looked up
// exactly as written, the way a login is (see userAddress).
func (c *command) appPassUser(ctx context.Context, s string) (store.Address, store.User, error) {
	a, err := c.userAddress(s, false)
	if err != nil {
		return store.Address{}, store.User{}, err
	}
	u, err := c.st.User(ctx, a)
	if errors.Is(err, store.ErrNotFound) {
		return store.Address{}, store.User{}, fmt.Errorf("%w; app passwords belong to existing users (cyrus-sidecar user list)", err)
	}
	return a, u, err
}

// appPassLabel requires -label and checks it before the store is opened.
func appPassLabel(c *command, label string) error {
	if !flagSet(c, "label") {
		return usagef("%s: -label LABEL is required (say which device or program it is for, e.g. -label phone)", c.name)
	}
	if err := store.CheckName(label); err != nil {
		return usagef("%s: -label: %v", c.name, err)
	}
	return nil
}

// appPassExpiry turns -expires or -ttl into an expiry time (zero: never).
func appPassExpiry(expires, ttl string, now time.Time) (time.Time, error) {
	switch {
	case expires != "" && ttl != "":
		return time.Time{}, usagef("apppass add: -expires and -ttl exclude each other")
	case expires != "":
		t, err := time.Parse(time.RFC3339, expires)
		if err != nil {
			return time.Time{}, usagef("apppass add: -expires %q: want an RFC 3339 time such as 2026-12-31T23:59:59Z, or use -ttl 90d", expires)
		}
		if !t.After(now) {
			return time.Time{}, usagef("apppass add: -expires %s is in the past", t.UTC().Format(time.RFC3339))
		}
		if t.Sub(now) > maxAppPassTTL {
			return time.Time{}, usagef("apppass add: -expires %s is more than 100 years away; leave it out for never", expires)
		}
		return t, nil
	case ttl != "":
		d, err := appPassTTL(ttl)
		if err != nil {
			return time.Time{}, usagef("apppass add: -ttl: %v", err)
		}
		return now.Add(d), nil
	}
	return time.Time{}, nil
}

// appPassTTL is time.ParseDuration plus whole days ("90d"), which it lacks
// and which is how admins think of credential lifetimes.
func appPassTTL(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n <= 0 || n > int64(maxAppPassTTL/(24*time.Hour)) {
			return 0, fmt.Errorf("%q: want a whole number of days from 1 to %d, such as 90d", s, maxAppPassTTL/(24*time.Hour))
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q: want a duration such as 90d, 720h or 30m", s)
		}
	}
	switch {
	case d < time.Minute:
		return 0, fmt.Errorf("%q: must be at least 1m", s)
	case d > maxAppPassTTL:
		return 0, fmt.Errorf("%q: more than 100 years; leave -ttl out for never", s)
	}
	return d, nil
}

// appPassWarn tells the admin when the user's own settings keep the new
// app password from working: a login needs the user enabled and the service
// allowed for both the user and the app password.
func appPassWarn(c *command, u store.User, p store.AppPassword) {
	if u.Disabled {
		fmt.Fprintf(c.std.err, "warning: %s is disabled; the app password works only once the user is enabled\n", u.Address)
	}
	var denied []string
	for _, s := range p.Services {
		if s != store.AllServices && !u.Allows(s) {
			denied = append(denied, s)
		}
	}
	if len(denied) > 0 {
		fmt.Fprintf(c.std.err, "warning: %s may not use %s (user services: %s); the app password will not work there\n",
			u.Address, strings.Join(denied, ", "), strings.Join(u.Services, ","))
	}
}

func appPassServices(s []string) string {
	if len(s) == 1 && s[0] == store.AllServices {
		return "all the user's"
	}
	return strings.Join(s, ", ")
}

func appPassExpiryText(t time.Time) string {
	if t.IsZero() {
		return "never expires"
	}
	return "expires " + t.UTC().Format(appPassTime)
}
