// Command cyrus-sidecar runs beside a Cyrus IMAP server: `serve` runs its
// services over one SQLite store, and the admin commands edit that store.
// See README.md and config.example.toml.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

func main() {
	err := realMain(os.Args[1:], stdio{os.Stdin, os.Stdout, os.Stderr}, os.Getenv)
	if err == nil || errors.Is(err, errHelp) {
		return
	}
	fmt.Fprintln(os.Stderr, "cyrus-sidecar:", err)
	if _, ok := errors.AsType[usageError](err); ok {
		os.Exit(2)
	}
	os.Exit(1)
}

// stdio is a command's standard streams, so tests can run commands in-process.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// usageError is a command-line mistake: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

const usage = `usage: cyrus-sidecar COMMAND [ARGS] [-config FILE]

  serve                      run the services (sockets, store, signals)
  check-config               load and validate the configuration, print where things are
  org      add|del|list      organisations
  domain   add|del|set|list  hosted domains
  user     add|passwd|set|disable|enable|del|show|list|import   users (import: docs/migrating.md)
  alias    add|del|list      aliases
  apppass  add|del|list      app passwords: one per device, limited services, optional expiry
  vacation set|off|show|preview   out-of-office replies, one text inside the organisation, one outside
  auth     test ADDRESS      would this password log in? and if not, exactly why
  auth     log [ADDRESS]     the login audit: who logged in to what, from where, and why an attempt failed
  token    issue ADDRESS     a single sign-on token for groupware (docs/sso-tokens.md)
  consumer add|del|rotate|enable|disable|list   event webhooks: who receives signed mailbox events (docs/events.md)
  doctor                     check config, store, sockets and permissions, probe Cyrus; a fix for each failure
  backup   FILE              a consistent, checked copy of the store, while serve runs (docs/operations.md)
  version                    print the version

Run "cyrus-sidecar COMMAND -h" for a command's flags.`

func realMain(args []string, std stdio, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprintln(std.err, usage)
		return usagef("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(rest, std, getenv)
	case "check-config":
		return cmdCheckConfig(rest, std, getenv)
	case "org":
		return cmdOrg(rest, std, getenv)
	case "domain":
		return cmdDomain(rest, std, getenv)
	case "user":
		return cmdUser(rest, std, getenv)
	case "alias":
		return cmdAlias(rest, std, getenv)
	case "apppass":
		return cmdAppPass(rest, std, getenv)
	case "vacation":
		return cmdVacation(rest, std, getenv)
	case "auth":
		return cmdAuth(rest, std, getenv)
	case "token":
		return cmdToken(rest, std, getenv)
	case "consumer":
		return cmdConsumer(rest, std, getenv)
	case "doctor":
		return cmdDoctor(rest, std, getenv)
	case "backup":
		return cmdBackup(rest, std, getenv)
	case "version", "-version", "--version":
		fmt.Fprintln(std.out, version())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprintln(std.out, usage)
		return nil
	}
	fmt.Fprintln(std.err, usage)
	return usagef("unknown command %q", cmd)
}
