package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"strings"
	"text/tabwriter"

	"golang.org/x/term"

	"cyrus-sidecar/services/saslauthd"
	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// maxPasswordLen bounds a password read from stdin or a terminal.
const maxPasswordLen = 1024

// command is what every admin command shares: its flags, the standard
// streams and, once opened, the configuration and the store.
type command struct {
	name    string
	fs      *flag.FlagSet
	std     stdio
	getenv  func(string) string
	config  *string
	jsonOut *bool

	cfg   *Config
	st    *store.Store
	canon store.Canon
}

// newCommand makes a FlagSet for "cyrus-sidecar NAME" with -config.
func newCommand(name, synopsis string, std stdio, getenv func(string) string) *command {
	c := &command{name: name, std: std, getenv: getenv}
	c.fs = flag.NewFlagSet(name, flag.ContinueOnError)
	c.fs.SetOutput(std.err)
	c.config = c.fs.String("config", "", "configuration `file` (default $CYRUS_SIDECAR_CONFIG, else "+systemConfigPath+" if present, else built-in defaults)")
	c.fs.Usage = func() {
		fmt.Fprintf(std.err, "usage: cyrus-sidecar %s\n", synopsis)
		c.fs.PrintDefaults()
	}
	return c
}

// withJSON adds -json to a listing command.
func (c *command) withJSON() *command {
	c.jsonOut = c.fs.Bool("json", false, "print JSON instead of a table")
	return c
}

// parse accepts flags before and after positional arguments, as admins type
// them ("domain add example.com -org Acme"); "--" ends flag parsing.
func (c *command) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := c.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, usagef("%s: %v", c.name, err)
		}
		rest := c.fs.Args()
		// The flag package stops at "--" and drops it: all that follows
		// is positional, even if it starts with '-'.
		if consumed := args[:len(args)-len(rest)]; len(consumed) > 0 && consumed[len(consumed)-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// start parses args, checks that between min and max (-1: any number)
// positional arguments were given, and opens the store.
func (c *command) start(ctx context.Context, args []string, min, max int, what string, create bool) ([]string, error) {
	pos, err := c.parse(args)
	if err != nil {
		return nil, err
	}
	if err := c.want(pos, min, max, what); err != nil {
		return nil, err
	}
	return pos, c.open(ctx, create)
}

// open loads the configuration and opens the store. Read-only commands
// (list, show) refuse a store that does not exist yet, and a command that
// creates one says where: an admin shell without systemd's StateDirectory
// would otherwise quietly edit ./var/store.db while serve reads another file.
func (c *command) open(ctx context.Context, create bool) error {
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	c.cfg, err = loadConfig(configPath(*c.config, c.getenv, systemConfigPath), c.getenv, cwd)
	if err != nil {
		return err
	}
	if c.canon, err = c.cfg.Canon(); err != nil {
		return err
	}
	_, statErr := os.Stat(c.cfg.Store.Path)
	if errors.Is(statErr, fs.ErrNotExist) {
		if !create {
			return fmt.Errorf("no store at %s (serve and the first add command create it; set store.path in the configuration to share one with serve)", c.cfg.Store.Path)
		}
		fmt.Fprintf(c.std.err, "creating a new store at %s\n", c.cfg.Store.Path)
	}
	c.st, err = store.Open(ctx, c.cfg.Store.Path, store.Options{MaxReaders: 2, BusyTimeout: c.cfg.Store.BusyTimeout})
	return explain(err)
}

func (c *command) close() {
	if c.st != nil {
		c.st.Close()
	}
}

// want checks the number of positional arguments.
func (c *command) want(pos []string, min, max int, what string) error {
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		c.fs.Usage()
		return usagef("%s: expected %s", c.name, what)
	}
	return nil
}

// printJSON writes v indented; nil slices print as [].
func (c *command) printJSON(v any) error {
	enc := json.NewEncoder(c.std.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printTable writes a header and rows aligned in columns.
func (c *command) printTable(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(c.std.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// errHelp is returned after -h printed the usage: exit status 0.
var errHelp = errors.New("help shown")

// readPassword takes a new password from stdin (-password-stdin: the first
// line) or from the terminal without echo, asked twice.
func (c *command) readPassword(fromStdin bool) (string, error) {
	if fromStdin {
		if f, ok := c.std.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			fmt.Fprintln(c.std.err, "warning: -password-stdin reads from a terminal and echoes; leave the flag out for a prompt without echo")
		}
		line, err := bufio.NewReaderSize(io.LimitReader(c.std.in, maxPasswordLen+2), maxPasswordLen+2).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read password from stdin: %w", err)
		}
		pw := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if len(pw) > maxPasswordLen {
			return "", fmt.Errorf("password longer than %d bytes", maxPasswordLen)
		}
		if pw == "" {
			return "", errors.New("empty password on stdin")
		}
		return pw, nil
	}
	f, ok := c.std.in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", usagef("%s: no terminal to ask for the password: pipe it in with -password-stdin", c.name)
	}
	ask := func(prompt string) (string, error) {
		fmt.Fprint(c.std.err, prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.std.err)
		return string(b), err
	}
	pw, err := ask("New password: ")
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	again, err := ask("Again: ")
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	switch {
	case pw != again:
		return "", errors.New("the two passwords differ; nothing changed")
	case pw == "":
		return "", errors.New("empty password; nothing changed")
	case len(pw) > maxPasswordLen:
		return "", fmt.Errorf("password longer than %d bytes", maxPasswordLen)
	}
	return pw, nil
}

// readSecret reads an existing password (one prompt, no confirmation) from
// stdin (the first line) or the terminal without echo.
func (c *command) readSecret(fromStdin bool, prompt string) (string, error) {
	if !fromStdin {
		if f, ok := c.std.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			fmt.Fprint(c.std.err, prompt)
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(c.std.err)
			if err != nil {
				return "", fmt.Errorf("read password: %w", err)
			}
			return string(b), nil
		}
	}
	// Not a terminal: stdin is the password, as `auth test` documents.
	return c.readPassword(true)
}

// hash hashes a new password with the configured parameters.
func (c *command) hash(pw string) (store.Secret, error) {
	if saslauthd.IsToken(pw) {
		// The responder reads such a password as a single sign-on token.
		return "", errors.New("a password cannot start with \"sct1.\" (that is how single sign-on tokens start)")
	}
	h, err := password.New(c.cfg.Password.Params())
	if err != nil {
		return "", err
	}
	s, err := h.Hash(pw)
	return store.Secret(s), err
}

// address canonicalises an address argument, explaining a refusal.
func (c *command) address(s string) (store.Address, error) {
	a, err := c.canon.Address(s)
	if err != nil {
		return store.Address{}, fmt.Errorf("%q is not a valid address: %w", s, err)
	}
	return a, nil
}

// explain turns store sentinels into advice for the admin.
func explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrSchema):
		return fmt.Errorf("%w; upgrade cyrus-sidecar", err)
	}
	return err
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		return "cyrus-sidecar " + v + " " + bi.GoVersion
	}
	return "cyrus-sidecar (unknown version)"
}
