package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"cyrus-sidecar/store"
)

func cmdUser(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("user: expected add, passwd, set, disable, enable, del, show, list or import")
	}
	sub, args := args[0], args[1:]
	// No ^C handler: an interrupted command leaves the store as it was
	// (every edit is one transaction), and a terminal prompt must stay
	// interruptible.
	ctx := context.Background()
	switch sub {
	case "import":
		return cmdUserImport(args, std, getenv)
	case "add", "passwd":
		syn := "user add ADDRESS [-password-stdin | -no-password] [-name NAME] [-services LIST] [-config FILE]"
		if sub == "passwd" {
			syn = "user passwd ADDRESS [-password-stdin | -no-password] [-config FILE]"
		}
		c := newCommand("user "+sub, syn, std, getenv)
		fromStdin := c.fs.Bool("password-stdin", false, "read the password from the first line of stdin instead of a terminal prompt")
		noPassword := c.fs.Bool("no-password", false, "no password login (app passwords and tokens only); with passwd: remove the password")
		var name, services *string
		if sub == "add" {
			name = c.fs.String("name", "", "display `name`")
			services = c.fs.String("services", "*", "comma-separated `services` the user may log in to (imap,pop,sieve,http,smtp), * = all")
		}
		pos, err := c.parse(args)
		if err != nil {
			return err
		}
		if err := c.want(pos, 1, 1, "one address"); err != nil {
			return err
		}
		if *fromStdin && *noPassword {
			return usagef("user %s: -password-stdin and -no-password exclude each other", sub)
		}
		var svc []string
		if services != nil {
			if svc, err = store.ParseServices(*services); err != nil {
				return usagef("user add: -services: %v", err)
			}
		}
		if err := c.open(ctx, sub == "add"); err != nil {
			return err
		}
		defer c.close()
		a, err := c.userAddress(pos[0], sub == "add")
		if err != nil {
			return err
		}
		if sub == "add" {
			// Fail on the cheap checks before asking for a password.
			if _, err := c.st.Domain(ctx, a.Domain()); errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("domain %s is not hosted here; add it first: cyrus-sidecar domain add %s -org NAME", a.Domain(), a.Domain())
			} else if err != nil {
				return err
			}
			if _, err := c.st.User(ctx, a); err == nil {
				return fmt.Errorf("user %s already exists (to change the password: cyrus-sidecar user passwd %s)", a, a)
			}
		} else if _, err := c.st.User(ctx, a); err != nil {
			return err
		}
		var hash store.Secret
		if !*noPassword {
			pw, err := c.readPassword(*fromStdin)
			if err != nil {
				return err
			}
			if hash, err = c.hash(pw); err != nil {
				return err
			}
		}
		if sub == "passwd" {
			if err := c.st.SetPassword(ctx, a, hash); err != nil {
				return err
			}
			fmt.Fprintf(std.out, "user %s: password %s\n", a, map[bool]string{true: "removed", false: "changed"}[*noPassword])
			return nil
		}
		u, err := c.st.AddUser(ctx, store.NewUser{Address: a, PasswordHash: hash, Services: svc, DisplayName: *name})
		if err != nil {
			return explain(err)
		}
		fmt.Fprintf(std.out, "user %s added (organisation %q)\n", u.Address, u.Org)
		return nil
	case "set":
		c := newCommand("user set", "user set ADDRESS [-name NAME] [-services LIST] [-config FILE]", std, getenv)
		name := c.fs.String("name", "", "display `name`")
		services := c.fs.String("services", "", "comma-separated `services` the user may log in to, * = all")
		pos, err := c.parse(args)
		if err != nil {
			return err
		}
		if err := c.want(pos, 1, 1, "one address"); err != nil {
			return err
		}
		if !flagSet(c, "name") && !flagSet(c, "services") {
			return usagef("user set: nothing to set (-name, -services)")
		}
		if err := c.open(ctx, false); err != nil {
			return err
		}
		defer c.close()
		a, err := c.userAddress(pos[0], false)
		if err != nil {
			return err
		}
		if flagSet(c, "services") {
			if strings.TrimSpace(*services) == "" {
				return usagef("user set: -services \"\" would allow every service; say -services '*' for that, or list them")
			}
			svc, err := store.ParseServices(*services)
			if err != nil {
				return usagef("user set: -services: %v", err)
			}
			if err := c.st.SetServices(ctx, a, svc); err != nil {
				return err
			}
		}
		if flagSet(c, "name") {
			if err := c.st.SetDisplayName(ctx, a, *name); err != nil {
				return err
			}
		}
		fmt.Fprintf(std.out, "user %s updated\n", a)
		return nil
	case "disable", "enable", "del", "show":
		c := newCommand("user "+sub, "user "+sub+" ADDRESS [-config FILE]", std, getenv)
		if sub == "show" {
			c.withJSON()
		}
		pos, err := c.start(ctx, args, 1, 1, "one address", false)
		if err != nil {
			return err
		}
		defer c.close()
		a, err := c.userAddress(pos[0], false)
		if err != nil {
			return err
		}
		switch sub {
		case "disable", "enable":
			if err := c.st.SetDisabled(ctx, a, sub == "disable"); err != nil {
				return err
			}
			fmt.Fprintf(std.out, "user %s %sd\n", a, sub)
		case "del":
			dangling, err := c.st.DeleteUser(ctx, a)
			if err != nil {
				return err
			}
			fmt.Fprintf(std.out, "user %s deleted (the Cyrus mailbox is not touched)\n", a)
			if len(dangling) > 0 {
				fmt.Fprintf(std.err, "warning: these aliases still point to %s: %s\n", a, strings.Join(dangling, ", "))
			}
		case "show":
			u, err := c.st.User(ctx, a)
			if err != nil {
				return err
			}
			// The newest success and failure from the login audit.
			var last [2]*store.LoginEvent
			for i, result := range []string{store.ResultOK, store.ResultFail} {
				es, err := c.st.LoginsWhere(ctx, store.LoginFilter{Login: u.Address, Result: result, Limit: 1})
				if err != nil {
					return err
				}
				if len(es) == 1 {
					last[i] = &es[0]
				}
			}
			if *c.jsonOut {
				return c.printJSON(struct {
					store.User
					LastLogin   *store.LoginEvent `json:"last_login,omitempty"`
					LastFailure *store.LoginEvent `json:"last_failure,omitempty"`
				}{u, last[0], last[1]})
			}
			return c.printTable([]string{"FIELD", "VALUE"}, [][]string{
				{"address", u.Address}, {"organisation", u.Org}, {"display name", dash(u.DisplayName)},
				{"status", status(u)}, {"password", map[bool]string{true: "set", false: "none"}[u.HasPassword]},
				{"services", strings.Join(u.Services, ",")},
				{"created", u.Created.Format("2006-01-02 15:04:05Z")}, {"updated", u.Updated.Format("2006-01-02 15:04:05Z")},
				{"last login", auditLine(last[0])}, {"last failure", auditLine(last[1])},
			})
		}
		return nil
	case "list":
		c := newCommand("user list", "user list [-domain DOMAIN] [-json] [-config FILE]", std, getenv).withJSON()
		domain := c.fs.String("domain", "", "only users of this `domain`")
		_, err := c.start(ctx, args, 0, 0, "no arguments", false)
		if err != nil {
			return err
		}
		defer c.close()
		d, err := c.optDomain(*domain)
		if err != nil {
			return err
		}
		us, err := c.st.Users(ctx, d)
		if err != nil {
			return err
		}
		if *c.jsonOut {
			return c.printJSON(nonNil(us))
		}
		rows := make([][]string, len(us))
		for i, u := range us {
			rows[i] = []string{u.Address, u.Org, status(u), strings.Join(u.Services, ","), dash(u.DisplayName)}
		}
		return c.printTable([]string{"USER", "ORGANISATION", "STATUS", "SERVICES", "NAME"}, rows)
	}
	return usagef("user: unknown subcommand %q (add, passwd, set, disable, enable, del, show, list)", sub)
}

// userAddress canonicalises a user's address. A new user cannot have a
// +detail (mail to alice+x reaches alice); an existing one is looked up
// exactly as written, the way a login is.
func (c *command) userAddress(s string, adding bool) (store.Address, error) {
	if !adding {
		a, err := c.canon.Login(s, "")
		if err != nil {
			return store.Address{}, fmt.Errorf("%q is not a valid address: %w", s, err)
		}
		return a, nil
	}
	a, err := c.address(s)
	if err != nil {
		return store.Address{}, err
	}
	if a.Detail() != "" {
		return store.Address{}, fmt.Errorf("%q: a user address cannot contain the detail separator %q (mail to %s reaches %s anyway)",
			s, c.cfg.Cyrus.DetailSeparator, s, a)
	}
	return a, nil
}

func status(u store.User) string {
	if u.Disabled {
		return "disabled"
	}
	return "enabled"
}

// auditLine is one audit entry for user show: when, which service, from
// where, and for a failure why; "-" when there is none.
func auditLine(e *store.LoginEvent) string {
	if e == nil {
		return "-"
	}
	line := e.At.UTC().Format("2006-01-02 15:04:05Z") + " " + printable(e.Service)
	if e.Result == store.ResultFail {
		line += ": " + printable(e.Reason)
	}
	if e.Client != "" {
		line += " from " + printable(e.Client)
	}
	return line
}
