package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"cyrus-sidecar/services/events"
	"cyrus-sidecar/store"
)

// domainList is a -domain flag: comma-separated, and repeatable.
type domainList []string

func (l *domainList) String() string { return strings.Join(*l, ",") }

func (l *domainList) Set(s string) error {
	for d := range strings.SplitSeq(s, ",") {
		if d = strings.TrimSpace(d); d != "" {
			*l = append(*l, d)
		}
	}
	return nil
}

func cmdConsumer(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("consumer: expected add, del, rotate, enable, disable or list")
	}
	sub, args := args[0], args[1:]
	// No ^C handler: every edit is one transaction (see cmdUser).
	ctx := context.Background()
	switch sub {
	case "add":
		c := newCommand("consumer add", "consumer add NAME -url URL [-org ORGANISATION] [-domain D,...] [-envelope] [-json] [-config FILE]", std, getenv)
		u := c.fs.String("url", "", "`URL` the signed webhooks are POSTed to (https://, or http:// on a trusted network)")
		org := c.fs.String("org", "", "send the events of every domain of this `organisation` (as it changes)")
		var doms domainList
		c.fs.Var(&doms, "domain", "send the events of these `domains` (comma-separated, or repeat the flag)")
		envelope := c.fs.Bool("envelope", false, "add the subject, sender, recipients, date and Message-ID of new messages (fetched from IMAP) to its webhooks")
		jsonOut := c.fs.Bool("json", false, "print JSON (with the secret) instead of text, for scripts")
		pos, err := c.parse(args)
		if err != nil {
			return err
		}
		if err := c.want(pos, 1, 1, "one consumer name"); err != nil {
			return err
		}
		if err := store.CheckName(pos[0]); err != nil {
			return usagef("consumer add: name: %v", err)
		}
		if *u == "" {
			return usagef("consumer add: -url URL is required (where the consumer receives webhooks)")
		}
		if err := store.CheckConsumerURL(*u); err != nil {
			return usagef("consumer add: -url: %v", err)
		}
		if *org == "" && len(doms) == 0 {
			return usagef("consumer add: say whose events it gets: -org ORGANISATION, -domain D,... or both")
		}
		if err := c.open(ctx, false); err != nil {
			return err
		}
		defer c.close()
		for i, d := range doms {
			if doms[i], err = c.canon.Domain(d); err != nil {
				return fmt.Errorf("-domain %q is not a valid domain: %w", d, err)
			}
		}
		secret, err := store.GenerateWebhookSecret()
		if err != nil {
			return err
		}
		co, err := c.st.AddConsumer(ctx, store.NewConsumer{Name: pos[0], URL: *u, Secret: secret, Org: *org, Domains: doms, Envelope: *envelope})
		switch {
		case errors.Is(err, store.ErrExists):
			return fmt.Errorf("%w; pick another name, or remove the old one first: cyrus-sidecar consumer del %q", err, pos[0])
		case errors.Is(err, store.ErrNotHosted):
			return fmt.Errorf("%w (see cyrus-sidecar domain list)", err)
		case errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("%w (see cyrus-sidecar org list)", err)
		case err != nil:
			return err
		}
		if *jsonOut {
			return c.printJSON(struct {
				store.Consumer
				Secret string `json:"secret"`
			}{co, secret.Reveal()})
		}
		fmt.Fprintf(std.out, "consumer %q added: webhooks to %s for %s.\nIts signing secret (Standard Webhooks, HMAC-SHA256):\n\n    %s\n\n",
			co.Name, co.URL, consumerScope(co.Org, co.Domains), secret.Reveal())
		if co.Envelope {
			fmt.Fprintln(std.out, "Its message.added webhooks carry the subjects and senders of the new messages.")
		}
		fmt.Fprintln(std.out, "It cannot be shown again: configure it in the consumer now. serve starts sending within a second.")
		return nil
	case "del":
		c := newCommand("consumer del", "consumer del NAME [-config FILE]", std, getenv)
		pos, err := c.start(ctx, args, 1, 1, "one consumer name", false)
		if err != nil {
			return err
		}
		defer c.close()
		if err := c.st.DelConsumer(ctx, pos[0]); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w (see cyrus-sidecar consumer list)", err)
			}
			return err
		}
		fmt.Fprintf(std.out, "consumer %q deleted with its undelivered webhooks\n", pos[0])
		return nil
	case "rotate":
		c := newCommand("consumer rotate", "consumer rotate NAME [-grace 24h] [-json] [-config FILE]", std, getenv)
		grace := c.fs.Duration("grace", 24*time.Hour, "how long the current secret keeps signing next to the new one (0: stop at once)")
		jsonOut := c.fs.Bool("json", false, "print JSON (with the secret) instead of text, for scripts")
		pos, err := c.start(ctx, args, 1, 1, "one consumer name", false)
		if err != nil {
			return err
		}
		defer c.close()
		if *grace < 0 || *grace > 30*24*time.Hour {
			return usagef("consumer rotate: -grace must be between 0 and 720h, got %v", *grace)
		}
		secret, err := store.GenerateWebhookSecret()
		if err != nil {
			return err
		}
		if err := c.st.RotateConsumerSecret(ctx, pos[0], secret, *grace); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w (see cyrus-sidecar consumer list)", err)
			}
			return err
		}
		until := time.Now().Add(*grace).UTC()
		if *jsonOut {
			out := struct {
				Name           string    `json:"name"`
				Secret         string    `json:"secret"`
				OldSecretUntil time.Time `json:"old_secret_until,omitzero"`
			}{Name: pos[0], Secret: secret.Reveal()}
			if *grace > 0 {
				out.OldSecretUntil = until
			}
			return c.printJSON(out)
		}
		fmt.Fprintf(std.out, "consumer %q: its new signing secret:\n\n    %s\n\n", pos[0], secret.Reveal())
		if *grace > 0 {
			fmt.Fprintf(std.out, "Until %s its webhooks carry two signatures, by the new and the old secret:\nswitch the receiver to the new one before then.\n",
				until.Format("2006-01-02 15:04Z"))
		} else {
			fmt.Fprintln(std.out, "The old secret no longer signs: configure the new one in the receiver now.")
		}
		fmt.Fprintln(std.out, "It cannot be shown again.")
		return nil
	case "enable", "disable":
		c := newCommand("consumer "+sub, "consumer "+sub+" NAME [-config FILE]", std, getenv)
		pos, err := c.start(ctx, args, 1, 1, "one consumer name", false)
		if err != nil {
			return err
		}
		defer c.close()
		if err := c.st.SetConsumerEnabled(ctx, pos[0], sub == "enable", "disabled by an admin", events.ResyncAllBody(time.Now())); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w (see cyrus-sidecar consumer list)", err)
			}
			return err
		}
		if sub == "enable" {
			fmt.Fprintf(std.out, "consumer %q enabled: if it was disabled, its pending webhooks are replaced by one resync of everything, sent within a second\n", pos[0])
		} else {
			fmt.Fprintf(std.out, "consumer %q disabled: its webhooks are kept until it is enabled again or deleted\n", pos[0])
		}
		return nil
	case "list":
		c := newCommand("consumer list", "consumer list [-json] [-config FILE]", std, getenv).withJSON()
		if _, err := c.start(ctx, args, 0, 0, "no arguments", false); err != nil {
			return err
		}
		defer c.close()
		cs, err := c.st.Consumers(ctx)
		if err != nil {
			return err
		}
		if *c.jsonOut {
			return c.printJSON(nonNil(cs))
		}
		rows := make([][]string, len(cs))
		for i, co := range cs {
			state := "enabled"
			if !co.Enabled {
				state = "disabled: " + co.DisabledReason
			}
			if !co.OldSecretUntil.IsZero() {
				state += "; old secret signs until " + co.OldSecretUntil.Format("2006-01-02 15:04Z")
			}
			rows[i] = []string{co.Name, co.URL, dash(co.Org), dash(strings.Join(co.Domains, ",")),
				yesNo(co.Envelope), strconv.Itoa(co.Pending), co.Created.Format("2006-01-02"), state}
		}
		return c.printTable([]string{"NAME", "URL", "ORGANISATION", "DOMAINS", "ENVELOPE", "PENDING", "CREATED", "STATE"}, rows)
	}
	return usagef("consumer: unknown subcommand %q (add, del, rotate, enable, disable, list)", sub)
}

// consumerScope says whose events a consumer gets.
func consumerScope(org string, doms []string) string {
	var parts []string
	if org != "" {
		parts = append(parts, fmt.Sprintf("the domains of organisation %q", org))
	}
	if len(doms) > 0 {
		parts = append(parts, strings.Join(doms, ", "))
	}
	return strings.Join(parts, " and ")
}

// yesNo renders a flag in a table.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
