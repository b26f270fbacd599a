package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"cyrus-sidecar/store"
)

func cmdOrg(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("org: expected add, del or list")
	}
	sub, args := args[0], args[1:]
	// No ^C handler: an interrupted command leaves the store as it was
	// (every edit is one transaction), and a terminal prompt must stay
	// interruptible.
	ctx := context.Background()
	switch sub {
	case "add", "del":
		c := newCommand("org "+sub, "org "+sub+" NAME [-config FILE]", std, getenv)
		pos, err := c.start(ctx, args, 1, 1, "one organisation name", sub == "add")
		if err != nil {
			return err
		}
		defer c.close()
		if sub == "add" {
			if _, err := c.st.AddOrg(ctx, pos[0]); err != nil {
				return err
			}
			fmt.Fprintf(std.out, "organisation %q added\n", pos[0])
			return nil
		}
		if err := c.st.DeleteOrg(ctx, pos[0]); err != nil {
			if errors.Is(err, store.ErrInUse) {
				return fmt.Errorf("%w; delete or move its domains first (cyrus-sidecar domain list)", err)
			}
			return err
		}
		fmt.Fprintf(std.out, "organisation %q deleted\n", pos[0])
		return nil
	case "list":
		c := newCommand("org list", "org list [-json] [-config FILE]", std, getenv).withJSON()
		_, err := c.start(ctx, args, 0, 0, "no arguments", false)
		if err != nil {
			return err
		}
		defer c.close()
		orgs, err := c.st.Orgs(ctx)
		if err != nil {
			return err
		}
		if *c.jsonOut {
			return c.printJSON(nonNil(orgs))
		}
		rows := make([][]string, len(orgs))
		for i, o := range orgs {
			rows[i] = []string{o.Name, strconv.Itoa(o.Domains), o.Created.Format("2006-01-02")}
		}
		return c.printTable([]string{"ORGANISATION", "DOMAINS", "CREATED"}, rows)
	}
	return usagef("org: unknown subcommand %q (add, del, list)", sub)
}

func cmdDomain(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("domain: expected add, del, set or list")
	}
	sub, args := args[0], args[1:]
	// No ^C handler: an interrupted command leaves the store as it was
	// (every edit is one transaction), and a terminal prompt must stay
	// interruptible.
	ctx := context.Background()
	switch sub {
	case "add", "set":
		syn := "domain add DOMAIN -org NAME [-catchall ADDRESS] [-config FILE]"
		if sub == "set" {
			syn = "domain set DOMAIN [-org NAME] [-catchall ADDRESS] [-config FILE]"
		}
		c := newCommand("domain "+sub, syn, std, getenv)
		org := c.fs.String("org", "", "the organisation that owns the domain (set: move it there)")
		catchall := c.fs.String("catchall", "", "`address` that receives mail for unknown local parts (\"\" with set: none)")
		pos, err := c.parse(args)
		if err != nil {
			return err
		}
		if err := c.want(pos, 1, 1, "one domain"); err != nil {
			return err
		}
		if sub == "add" && *org == "" {
			return usagef("domain add: -org NAME is required (see cyrus-sidecar org list)")
		}
		if sub == "set" && !flagSet(c, "catchall") && !flagSet(c, "org") {
			return usagef("domain set: nothing to set (-org NAME, -catchall ADDRESS)")
		}
		if err := c.open(ctx, sub == "add"); err != nil {
			return err
		}
		defer c.close()
		name, err := c.canon.Domain(pos[0])
		if err != nil {
			return fmt.Errorf("%q is not a valid domain: %w", pos[0], err)
		}
		var target store.Address
		if *catchall != "" {
			if target, err = c.canon.Exact(*catchall); err != nil {
				return fmt.Errorf("-catchall %q is not a valid address: %w", *catchall, err)
			}
		}
		// Once the domain is known to exist, the only thing AddDomain or
		// MoveDomain can fail to find is the organisation.
		orgHint := func(err error) error {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w; create it with: cyrus-sidecar org add %q", err, *org)
			}
			return err
		}
		if sub == "set" {
			if _, err := c.st.Domain(ctx, name); err != nil {
				return err
			}
		}
		switch {
		case sub == "add":
			d, err := c.st.AddDomain(ctx, name, *org)
			if err != nil {
				return orgHint(err)
			}
			fmt.Fprintf(std.out, "domain %s added to organisation %q\n", name, d.Org)
		case flagSet(c, "org"):
			if err := c.st.MoveDomain(ctx, name, *org); err != nil {
				return orgHint(err)
			}
			fmt.Fprintf(std.out, "domain %s moved to organisation %q\n", name, *org)
		}
		if !flagSet(c, "catchall") || (sub == "add" && target.IsZero()) {
			return nil
		}
		c.warnDangling(ctx, target)
		if err := c.st.SetCatchAll(ctx, name, target); err != nil {
			return err
		}
		if target.IsZero() {
			fmt.Fprintf(std.out, "domain %s: no catch-all\n", name)
		} else {
			fmt.Fprintf(std.out, "domain %s: catch-all %s\n", name, target)
		}
		return nil
	case "del":
		c := newCommand("domain del", "domain del DOMAIN [-config FILE]", std, getenv)
		pos, err := c.start(ctx, args, 1, 1, "one domain", false)
		if err != nil {
			return err
		}
		defer c.close()
		name, err := c.canon.Domain(pos[0])
		if err != nil {
			return fmt.Errorf("%q is not a valid domain: %w", pos[0], err)
		}
		if err := c.st.DeleteDomain(ctx, name); err != nil {
			if errors.Is(err, store.ErrInUse) {
				return fmt.Errorf("%w; delete them first (cyrus-sidecar user list -domain %s, alias list -domain %s)", err, name, name)
			}
			return err
		}
		fmt.Fprintf(std.out, "domain %s deleted\n", name)
		return nil
	case "list":
		c := newCommand("domain list", "domain list [-json] [-config FILE]", std, getenv).withJSON()
		_, err := c.start(ctx, args, 0, 0, "no arguments", false)
		if err != nil {
			return err
		}
		defer c.close()
		ds, err := c.st.Domains(ctx)
		if err != nil {
			return err
		}
		if *c.jsonOut {
			return c.printJSON(nonNil(ds))
		}
		rows := make([][]string, len(ds))
		for i, d := range ds {
			rows[i] = []string{d.Name, d.Org, strconv.Itoa(d.Users), strconv.Itoa(d.Aliases), dash(d.CatchAll)}
		}
		return c.printTable([]string{"DOMAIN", "ORGANISATION", "USERS", "ALIASES", "CATCH-ALL"}, rows)
	}
	return usagef("domain: unknown subcommand %q (add, del, set, list)", sub)
}

func cmdAlias(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("alias: expected add, del or list")
	}
	sub, args := args[0], args[1:]
	// No ^C handler: an interrupted command leaves the store as it was
	// (every edit is one transaction), and a terminal prompt must stay
	// interruptible.
	ctx := context.Background()
	switch sub {
	case "add", "del":
		syn := "alias add ADDRESS TARGET... [-config FILE]"
		if sub == "del" {
			syn = "alias del ADDRESS [TARGET...] [-config FILE]   (no targets: the whole alias)"
		}
		c := newCommand("alias "+sub, syn, std, getenv)
		pos, err := c.parse(args)
		if err != nil {
			return err
		}
		min := 2
		if sub == "del" {
			min = 1
		}
		if err := c.want(pos, min, -1, "an address and its targets"); err != nil {
			return err
		}
		if err := c.open(ctx, sub == "add"); err != nil {
			return err
		}
		defer c.close()
		a, err := c.address(pos[0])
		if err != nil {
			return err
		}
		if a.Detail() != "" {
			return fmt.Errorf("alias %q: an alias cannot contain the detail separator %q", pos[0], c.cfg.Cyrus.DetailSeparator)
		}
		var targets []store.Address
		for _, s := range pos[1:] {
			t, err := c.canon.Exact(s)
			if err != nil {
				return fmt.Errorf("target %q is not a valid address: %w", s, err)
			}
			targets = append(targets, t)
		}
		if sub == "add" {
			for _, t := range targets {
				c.warnDangling(ctx, t)
			}
			al, err := c.st.AddAlias(ctx, a, targets)
			if errors.Is(err, store.ErrNotHosted) {
				return fmt.Errorf("domain %s is not hosted here; add it first: cyrus-sidecar domain add %s -org NAME", a.Domain(), a.Domain())
			} else if err != nil {
				return err
			}
			fmt.Fprintf(std.out, "alias %s -> %s\n", al.Address, joinComma(al.Targets))
			return nil
		}
		gone, err := c.st.DeleteAlias(ctx, a, targets)
		if err != nil {
			return err
		}
		if gone {
			fmt.Fprintf(std.out, "alias %s deleted\n", a)
		} else {
			fmt.Fprintf(std.out, "alias %s: %d target(s) removed\n", a, len(targets))
		}
		return nil
	case "list":
		c := newCommand("alias list", "alias list [-domain DOMAIN] [-json] [-config FILE]", std, getenv).withJSON()
		domain := c.fs.String("domain", "", "only aliases of this `domain`")
		_, err := c.start(ctx, args, 0, 0, "no arguments", false)
		if err != nil {
			return err
		}
		defer c.close()
		d, err := c.optDomain(*domain)
		if err != nil {
			return err
		}
		as, err := c.st.Aliases(ctx, d)
		if err != nil {
			return err
		}
		if *c.jsonOut {
			return c.printJSON(nonNil(as))
		}
		rows := make([][]string, len(as))
		for i, a := range as {
			rows[i] = []string{a.Address, joinComma(a.Targets)}
		}
		return c.printTable([]string{"ALIAS", "TARGETS"}, rows)
	}
	return usagef("alias: unknown subcommand %q (add, del, list)", sub)
}

// warnDangling tells the admin when a target in one of our own domains
// names nobody (a typo would otherwise swallow mail silently).
func (c *command) warnDangling(ctx context.Context, t store.Address) {
	if _, err := c.st.Domain(ctx, t.Domain()); err != nil {
		return // another system's address, or we cannot tell: say nothing
	}
	base, err := c.canon.Address(t.String()) // without its +detail
	if err != nil {
		base = t
	}
	if _, err := c.st.User(ctx, base); err == nil {
		return
	}
	if _, err := c.st.Alias(ctx, base); err == nil {
		return
	}
	fmt.Fprintf(c.std.err, "warning: %s is neither a user nor an alias here; mail to it will be refused\n", t)
}

// optDomain canonicalises an optional -domain filter.
func (c *command) optDomain(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	d, err := c.canon.Domain(s)
	if err != nil {
		return "", fmt.Errorf("-domain %q is not a valid domain: %w", s, err)
	}
	return d, nil
}

// flagSet reports whether a flag was given on the command line.
func flagSet(c *command, name string) bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinComma(s []string) string { return strings.Join(s, ", ") }
