package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"cyrus-sidecar/services/vacation"
	"cyrus-sidecar/store"
)

// vacationTime is how vacation times are shown in tables.
const vacationTime = "2006-01-02 15:04:05Z"

func cmdVacation(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		return usagef("vacation: expected set, off, show or preview")
	}
	sub, args := args[0], args[1:]
	// No ^C handler: every edit is one transaction (see cmdUser).
	ctx := context.Background()
	switch sub {
	case "set":
		return vacationSet(ctx, args, std, getenv)
	case "off", "show", "preview":
		c := newCommand("vacation "+sub, "vacation "+sub+" ADDRESS [-config FILE]", std, getenv)
		if sub == "show" {
			c.withJSON()
			c.fs.Usage = func() {
				fmt.Fprintln(std.err, "usage: cyrus-sidecar vacation show ADDRESS [-json] [-config FILE]")
				c.fs.PrintDefaults()
			}
		}
		pos, err := c.start(ctx, args, 1, 1, "one address", false)
		if err != nil {
			return err
		}
		defer c.close()
		a, err := c.vacationUser(ctx, pos[0])
		if err != nil {
			return err
		}
		switch sub {
		case "off":
			if err := c.st.VacationOff(ctx, a); err != nil {
				return err
			}
			fmt.Fprintf(std.out, "vacation of %s is off (texts kept for next time)\n", a)
			return nil
		case "show":
			return c.vacationShow(ctx, a)
		}
		return c.vacationPreview(ctx, a)
	}
	return usagef("vacation: unknown subcommand %q (set, off, show, preview)", sub)
}

// vacationSet is `vacation set`: a flag given replaces the stored value, a
// flag left out keeps it.
func vacationSet(ctx context.Context, args []string, std stdio, getenv func(string) string) error {
	c := newCommand("vacation set", "vacation set ADDRESS [-subject S] [-internal-text T | -internal-file F] "+
		"[-external-text T | -external-file F] [-external-audience all|known|none] [-on | [-start RFC3339] [-end RFC3339]] "+
		"[-days N] [-from ADDRESS] [-config FILE]", std, getenv)
	subject := c.fs.String("subject", "", "`subject` of the replies (default: Cyrus's \"Auto: \" and the original subject)")
	inText := c.fs.String("internal-text", "", "reply `text` for senders in the user's organisation")
	inFile := c.fs.String("internal-file", "", "read the internal reply text from `file` (- = stdin)")
	exText := c.fs.String("external-text", "", "reply `text` for everyone else (a new vacation with one text uses it for both)")
	exFile := c.fs.String("external-file", "", "read the external reply text from `file` (- = stdin)")
	// Defaults are zero: a flag left out keeps what is stored.
	audience := c.fs.String("external-audience", "", "`which` outside senders get a reply: all, known or none (a new vacation: all)")
	on := c.fs.Bool("on", false, "on from now until turned off: drop any start and end")
	start := c.fs.String("start", "", "replies start at this `time` (RFC 3339, e.g. 2026-07-01T00:00:00+02:00; \"\" = now)")
	end := c.fs.String("end", "", "replies stop at this `time` (RFC 3339; \"\" = until turned off)")
	days := c.fs.Int("days", 0, "answer each sender at most once in this many `days`, 1 to 365 (a new vacation: 7)")
	from := c.fs.String("from", "", "From `address` of the replies (default: the address the mail was sent to)")
	pos, err := c.parse(args)
	if err != nil {
		return err
	}
	if err := c.want(pos, 1, 1, "one address"); err != nil {
		return err
	}
	// Every check of the flags alone comes before the store is opened.
	for _, pair := range [][2]string{{"internal-text", "internal-file"}, {"external-text", "external-file"}, {"on", "start"}, {"on", "end"}} {
		if flagSet(c, pair[0]) && flagSet(c, pair[1]) {
			return usagef("vacation set: -%s and -%s exclude each other", pair[0], pair[1])
		}
	}
	if *inFile == "-" && *exFile == "-" {
		return usagef("vacation set: only one of -internal-file and -external-file can read stdin")
	}
	if flagSet(c, "external-audience") && !slices.Contains([]string{"all", "known", "none"}, *audience) {
		return usagef("vacation set: -external-audience %q: want all, known or none", *audience)
	}
	if flagSet(c, "days") && (*days < 1 || *days > store.MaxVacationDays) {
		return usagef("vacation set: -days %d: want 1 to %d", *days, store.MaxVacationDays)
	}
	if flagSet(c, "subject") {
		if err := checkSubject(*subject); err != nil {
			return err
		}
	}
	now := time.Now()
	startAt, err := vacationFlagTime("start", *start)
	if err != nil {
		return err
	}
	endAt, err := vacationFlagTime("end", *end)
	if err != nil {
		return err
	}
	// The texts, nil where not given.
	text := func(textFlag, fileFlag string, val, file *string) (*string, error) {
		switch {
		case flagSet(c, textFlag):
			return val, checkVacationText("-"+textFlag, *val)
		case flagSet(c, fileFlag):
			s, err := c.readVacationFile(*file)
			return &s, err
		}
		return nil, nil
	}
	in, err := text("internal-text", "internal-file", inText, inFile)
	if err != nil {
		return err
	}
	ex, err := text("external-text", "external-file", exText, exFile)
	if err != nil {
		return err
	}
	if err := c.open(ctx, false); err != nil {
		return err
	}
	defer c.close()
	a, err := c.vacationUser(ctx, pos[0])
	if err != nil {
		return err
	}
	v, err := c.st.Vacation(ctx, a)
	if errors.Is(err, store.ErrNotFound) {
		v = store.Vacation{Audience: "all", Days: store.DefaultVacationDays}
	} else if err != nil {
		return err
	}
	fresh := v.InternalText == "" && v.ExternalText == ""
	if !v.Active() {
		// An absence that is over leaves no dates behind: "set" starts a
		// new one, open unless dates are given.
		v.Start, v.End = time.Time{}, time.Time{}
	}
	if flagSet(c, "start") {
		v.Start = startAt
	}
	if flagSet(c, "end") {
		v.End = endAt
	}
	if *on {
		v.Start, v.End = time.Time{}, time.Time{}
	}
	v.State = "on"
	if !v.Start.IsZero() || !v.End.IsZero() {
		v.State = "scheduled"
	}
	if flagSet(c, "subject") {
		v.Subject = *subject
	}
	if flagSet(c, "external-audience") {
		v.Audience = *audience
	}
	if flagSet(c, "days") {
		v.Days = *days
	}
	if in != nil {
		v.InternalText = *in
	}
	if ex != nil {
		v.ExternalText = *ex
	}
	if fresh && (in == nil) != (ex == nil) {
		// One text for a new vacation: everyone gets it.
		one := cmp.Or(in, ex)
		v.InternalText, v.ExternalText = *one, *one
	}
	if flagSet(c, "from") {
		v.From = ""
		if *from != "" {
			f, err := c.canon.Exact(*from)
			if err != nil {
				return usagef("vacation set: -from %q is not a valid address: %v", *from, err)
			}
			v.From = f.String()
		}
	}
	switch {
	case !v.End.IsZero() && !v.End.After(now):
		return usagef("vacation set: the end %s is in the past; give a later -end, or -on for no end", v.End.UTC().Format(time.RFC3339))
	case !v.Start.IsZero() && !v.End.IsZero() && !v.Start.Before(v.End):
		return usagef("vacation set: the start %s is not before the end %s", v.Start.Format(time.RFC3339), v.End.Format(time.RFC3339))
	case v.InternalText == "":
		return usagef("vacation set: no reply text: give -internal-text or -internal-file (and -external-text or -external-file for outside senders)")
	case v.ExternalText == "" && v.Audience != "none":
		return usagef("vacation set: no reply text for outside senders: give -external-text or -external-file, or -external-audience none")
	}
	// What the vacation service could not install is refused now, not
	// found later in its last error (a script over Cyrus's 32 KiB, a
	// subject Cyrus would cut).
	check := v
	check.Period = cmp.Or(v.Period, "0000000000000000") // SetVacation makes the real one
	if _, err := c.renderVacation(ctx, a, check); err != nil {
		return fmt.Errorf("vacation set: nothing changed: %w", err)
	}
	if err := c.st.SetVacation(ctx, a, v); err != nil {
		return err
	}
	c.vacationWarn(ctx, a, v, flagSet(c, "days"))
	fmt.Fprintf(std.out, "vacation of %s set: %s\n", a, vacationWhen(v))
	return nil
}

// vacationFlagTime parses -start or -end: RFC 3339, or "" for none.
func vacationFlagTime(name, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usagef("vacation set: -%s %q: want an RFC 3339 time such as 2026-07-01T08:00:00+02:00 or 2026-07-01T06:00:00Z", name, s)
	}
	return t.UTC(), nil
}

// readVacationFile reads a reply text from a file, or stdin for "-".
func (c *command) readVacationFile(name string) (string, error) {
	var r io.Reader = c.std.in
	what := "stdin"
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return "", err // *fs.PathError names the file
		}
		defer f.Close()
		r, what = f, name
	}
	b, err := io.ReadAll(io.LimitReader(r, store.MaxVacationText+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	// A byte order mark is an editor's, not part of the text.
	s := strings.TrimPrefix(string(b), "\ufeff")
	return s, checkVacationText(what, s)
}

// checkVacationText explains what the store would refuse in a reply text.
func checkVacationText(what, s string) error {
	switch {
	case len(s) > store.MaxVacationText:
		return fmt.Errorf("%s: reply text longer than %d bytes", what, store.MaxVacationText)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s: reply text is not valid UTF-8 (convert it first, e.g. iconv -f latin1 -t utf-8)", what)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%s: reply text contains a NUL byte", what)
	}
	return nil
}

// checkSubject explains what the store would refuse in a subject: it
// becomes one header line.
func checkSubject(s string) error {
	switch {
	case len(s) > store.MaxVacationSubject:
		return usagef("vacation set: -subject is longer than %d bytes", store.MaxVacationSubject)
	case !utf8.ValidString(s):
		return usagef("vacation set: -subject is not valid UTF-8")
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return usagef("vacation set: -subject contains a line break, tab or other control character; it must be one plain line")
	}
	return nil
}

// vacationUser finds the user a vacation command is about, looked up as
// written, the way a login is (see userAddress).
func (c *command) vacationUser(ctx context.Context, s string) (store.Address, error) {
	a, err := c.userAddress(s, false)
	if err != nil {
		return store.Address{}, err
	}
	if _, err := c.st.User(ctx, a); errors.Is(err, store.ErrNotFound) {
		return store.Address{}, fmt.Errorf("%w; vacations belong to existing users (cyrus-sidecar user list)", err)
	} else if err != nil {
		return store.Address{}, err
	}
	return a, nil
}

// vacationWarn says what will not work the way the settings read.
func (c *command) vacationWarn(ctx context.Context, a store.Address, v store.Vacation, daysGiven bool) {
	if !c.cfg.Vacation.Enabled {
		fmt.Fprintln(c.std.err, "warning: the configuration turns the vacation service off ([vacation] enabled = false): serve will not install this in Cyrus")
	}
	if daysGiven && v.Days < vacation.MinDays {
		fmt.Fprintf(c.std.err, "warning: -days %d: Cyrus answers a sender at most once in %d days (sieve_vacation_min_response) unless imapd.conf lowers it\n",
			v.Days, vacation.MinDays)
	}
	if v.From == "" {
		return
	}
	own, err := c.st.AddressesOf(ctx, c.canon, a)
	if err != nil {
		return // only a warning: the settings are stored
	}
	if f, err := c.canon.Address(v.From); err != nil || !slices.Contains(own, f.String()) {
		fmt.Fprintf(c.std.err, "warning: replies will come from %s, which does not deliver to %s (its addresses: %s)\n",
			v.From, a, strings.Join(own, ", "))
	}
}

// vacationShow prints the settings and what the vacation service last did.
func (c *command) vacationShow(ctx context.Context, a store.Address) error {
	v, err := c.st.Vacation(ctx, a)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w; set one with: cyrus-sidecar vacation set %s -internal-text TEXT", err, a)
	} else if err != nil {
		return err
	}
	ss, err := c.st.SieveState(ctx, a.String())
	if err != nil {
		return err
	}
	if *c.jsonOut {
		var sieve *store.SieveState
		if ss != (store.SieveState{}) {
			sieve = &ss
		}
		return c.printJSON(struct {
			store.Vacation
			Sieve *store.SieveState `json:"sieve,omitempty"`
		}{v, sieve})
	}
	rows := [][]string{
		{"address", v.Address}, {"state", v.State + ": " + vacationWhen(v)},
		{"start", showTime(v.Start, "-")}, {"end", showTime(v.End, "-")},
		{"subject", dash(v.Subject)}, {"external audience", v.Audience},
		{"days", strconv.Itoa(v.Days)}, {"from", dash(v.From)}, {"period", dash(v.Period)},
		{"updated", showTime(v.Updated, "-")},
		{"installed", sieveInstalled(ss)}, {"installed at", showTime(ss.InstalledAt, "never")},
		{"last attempt", showTime(ss.AttemptedAt, "never")}, {"last error", dash(ss.LastError)},
	}
	if ss.PrevActive != "" {
		rows = append(rows, []string{"previous active script", ss.PrevActive})
	}
	if err := c.printTable([]string{"FIELD", "VALUE"}, rows); err != nil {
		return err
	}
	// The texts have lines of their own: after the table, indented.
	texts := []struct{ name, text string }{{"internal text (senders in the organisation)", v.InternalText}}
	if v.ExternalText == v.InternalText {
		texts[0].name = "text (every sender)"
	} else {
		texts = append(texts, struct{ name, text string }{"external text (other senders)", v.ExternalText})
	}
	for _, t := range texts {
		fmt.Fprintf(c.std.out, "\n%s:\n", t.name)
		for line := range strings.Lines(t.text) {
			fmt.Fprintln(c.std.out, "    "+strings.TrimRight(line, "\r\n"))
		}
		if t.text == "" {
			fmt.Fprintln(c.std.out, "    (none)")
		}
	}
	return nil
}

// vacationPreview prints the script the vacation service would install.
func (c *command) vacationPreview(ctx context.Context, a store.Address) error {
	v, err := c.st.Vacation(ctx, a)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w; set one with: cyrus-sidecar vacation set %s -internal-text TEXT", err, a)
	} else if err != nil {
		return err
	}
	script, err := c.renderVacation(ctx, a, v)
	if errors.Is(err, vacation.ErrOff) {
		fmt.Fprintf(c.std.err, "vacation of %s is %s: no script would be installed (turn it on with: cyrus-sidecar vacation set %s -on)\n",
			a, v.State, a)
		return nil
	} else if err != nil {
		return fmt.Errorf("render the vacation script of %s: %w", a, err)
	}
	_, err = io.WriteString(c.std.out, script)
	return err
}

// renderVacation renders v as the vacation service would, with Cyrus's
// default SIEVE capability for the server's.
func (c *command) renderVacation(ctx context.Context, a store.Address, v store.Vacation) (string, error) {
	addrs, err := c.st.AddressesOf(ctx, c.canon, a)
	if err != nil {
		return "", err
	}
	domains, err := c.st.OrgDomains(ctx, a)
	if err != nil {
		return "", err
	}
	relation := ""
	if c.cfg.LMTP.Enabled {
		// The LMTP proxy stamps each delivery with the sender's relation;
		// without it the script falls back to the envelope sender.
		relation = c.cfg.LMTP.RelationHeader
	}
	return vacation.Render(vacation.Input{
		Settings: vacation.Settings{State: v.State, Start: v.Start, End: v.End, Subject: v.Subject,
			InternalText: v.InternalText, ExternalText: v.ExternalText, Audience: v.Audience, Days: v.Days, From: v.From},
		User: a.String(), Addresses: addrs, OrgDomains: domains, RelationHeader: relation,
		Period: v.Period, Extensions: vacation.DefaultExtensions,
	})
}

// vacationWhen describes when replies go out.
func vacationWhen(v store.Vacation) string {
	switch {
	case !v.Active():
		return "no replies"
	case v.Start.IsZero() && v.End.IsZero():
		return "replies from now until turned off"
	case v.End.IsZero():
		return "replies from " + v.Start.Format(vacationTime) + " until turned off"
	case v.Start.IsZero():
		return "replies from now until " + v.End.Format(vacationTime)
	}
	return "replies from " + v.Start.Format(vacationTime) + " until " + v.End.Format(vacationTime)
}

func sieveInstalled(ss store.SieveState) string {
	switch {
	case ss.ScriptHash == "" && ss.Mode == "":
		return "nothing"
	case ss.Mode == "wrapper":
		return "yes, through our wrapper script (the user had no active script of their own)"
	case ss.Mode == "include":
		return "yes, included from the user's own active script"
	case ss.Mode == "report":
		return "uploaded but not active (policy report: the user's own script is active)"
	}
	return "script uploaded, not activated"
}

func showTime(t time.Time, zero string) string {
	if t.IsZero() {
		return zero
	}
	return t.UTC().Format(vacationTime)
}
