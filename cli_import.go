package main

// `cyrus-sidecar user import`: users, and their passwords or hashes, from
// the systems the sidecar replaces (docs/migrating.md): saslauthd's sasldb
// (plaintext userPassword), /etc/shadow (crypt hashes) and a plain list of
// addresses (the mailboxes smmapd used to answer for).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

const (
	// maxImportLine bounds one input line: an address (at most
	// store.MaxAddress) and a secret (a hash or a password of at most
	// maxPasswordLen bytes) with room for escapes in a database dump.
	maxImportLine = 16 << 10
	// plainPrefix marks a plaintext password in the lines format; it is
	// hashed with the configured parameters, never stored as it is.
	plainPrefix = "{PLAIN}"
	// cryptPrefix may precede a crypt hash, as LDAP userPassword values and
	// Dovecot's passwd-file write them; it is dropped.
	cryptPrefix = "{CRYPT}"
	// sasldbPasswordProp is the sasldb property holding the plaintext
	// password (lib/auxprop.c and saslpasswd2 write it; other properties,
	// such as cmusaslsecretOTP, are not passwords).
	sasldbPasswordProp = "userPassword"
)

// Secret kinds of an import entry.
const (
	secretNone  = iota // no password: app passwords and tokens only
	secretHash         // a crypt hash, stored as it is
	secretPlain        // a plaintext password, hashed on import
)

var (
	errImportSyntax = errors.New("syntax")
	errDumpFormat   = errors.New("not a db_dump -p file")
)

// importEntry is one user to import: where it came from, the address as
// written and the secret. Its String never shows the secret.
type importEntry struct {
	line   int
	addr   string
	kind   int
	secret string
}

// parseImportLine parses one line of the lines format:
//
//	ADDRESS                      a user without a password
//	ADDRESS<TAB or :>HASH        a crypt hash password.Verify knows, also as {CRYPT}HASH
//	ADDRESS<TAB or :>{PLAIN}PW   a plaintext password
//
// The first tab or ':' separates; the secret is taken exactly as it is
// (a password may contain either), but a CR before the line end is dropped.
// Blank lines and lines starting with '#' are skipped (ok false). An error
// never contains the secret.
func parseImportLine(line string) (e importEntry, ok bool, err error) {
	line = strings.TrimSuffix(line, "\r")
	if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimLeft(line, " \t"), "#") {
		return importEntry{}, false, nil
	}
	addr, secret := line, ""
	if i := strings.IndexAny(line, "\t:"); i >= 0 {
		addr, secret = line[:i], line[i+1:]
	}
	switch {
	case addr == "":
		return importEntry{}, false, fmt.Errorf("%w: no address before the separator", errImportSyntax)
	case strings.ContainsFunc(addr, func(r rune) bool { return r <= ' ' || r == 0x7f || unicode.IsSpace(r) }):
		// The line is not quoted back: with a space as the separator it
		// would show the password.
		return importEntry{}, false, fmt.Errorf("%w: the address contains a space or control character (separate address and secret with a tab or ':')", errImportSyntax)
	}
	e.addr = addr
	switch {
	case secret == "":
		e.kind = secretNone
	case strings.HasPrefix(secret, plainPrefix):
		e.kind, e.secret = secretPlain, secret[len(plainPrefix):]
		if e.secret == "" {
			return importEntry{}, false, fmt.Errorf("%w: empty password after %s", errImportSyntax, plainPrefix)
		}
	default:
		e.kind, e.secret = secretHash, strings.TrimPrefix(secret, cryptPrefix)
	}
	return e, true, nil
}

// parseLines reads the lines format.
func parseLines(r io.Reader) ([]importEntry, []error) {
	var (
		entries []importEntry
		errs    []error
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxImportLine)
	n := 0
	for sc.Scan() {
		n++
		e, ok, err := parseImportLine(sc.Text())
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		if ok {
			e.line = n
			entries = append(entries, e)
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("line %d: %w", n+1, err))
	}
	return entries, errs
}

// parseSASLDBDump reads `db5.3_dump -p` output of a sasldb2 file
// (Berkeley DB's "print" format, db_dump(1)): a header ending in
// HEADER=END, then key and value lines, each starting with a space, with a
// backslash as \\ and other unprintable bytes as \xx in hex, then DATA=END.
// A sasldb key is user NUL realm NUL property (lib/db_berkeley.c); each
// userPassword becomes user@realm with the plaintext password.
func parseSASLDBDump(r io.Reader) ([]importEntry, []error) {
	var (
		entries []importEntry
		errs    []error
		key     []byte
		keyLine int
		inData  bool
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxImportLine)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if !inData {
			if line == "HEADER=END" {
				inData = true
			} else if !strings.Contains(line, "=") {
				return nil, []error{fmt.Errorf("line %d: %w: header line without '='", n, errDumpFormat)}
			}
			continue
		}
		if line == "DATA=END" {
			if key != nil {
				errs = append(errs, fmt.Errorf("line %d: %w: key without a value", keyLine, errDumpFormat))
			}
			return entries, errs
		}
		v, ok := strings.CutPrefix(line, " ")
		if !ok {
			return nil, append(errs, fmt.Errorf("line %d: %w: data line does not start with a space (dump with -p)", n, errDumpFormat))
		}
		b, err := unescapeDump(v)
		if err != nil {
			return nil, append(errs, fmt.Errorf("line %d: %w: %v", n, errDumpFormat, err))
		}
		if key == nil {
			key, keyLine = b, n
			continue
		}
		parts := bytes.Split(key, []byte{0})
		key = nil
		if len(parts) != 3 {
			errs = append(errs, fmt.Errorf("line %d: not a sasldb key (user NUL realm NUL property)", keyLine))
			continue
		}
		if string(parts[2]) != sasldbPasswordProp {
			continue
		}
		if len(parts[0]) == 0 || bytes.ContainsAny(parts[0], "@ ") || bytes.ContainsAny(parts[1], "@ ") {
			errs = append(errs, fmt.Errorf("line %d: %w: empty user, or '@' or a space in user or realm", keyLine, errImportSyntax))
			continue
		}
		if len(b) == 0 {
			errs = append(errs, fmt.Errorf("line %d: %w: empty password", keyLine, errImportSyntax))
			continue
		}
		addr := string(parts[0])
		if len(parts[1]) > 0 {
			addr += "@" + string(parts[1])
		}
		entries = append(entries, importEntry{line: keyLine, addr: addr, kind: secretPlain, secret: string(b)})
	}
	if err := sc.Err(); err != nil {
		return nil, append(errs, fmt.Errorf("line %d: %w", n+1, err))
	}
	return nil, append(errs, fmt.Errorf("%w: no DATA=END line (truncated?)", errDumpFormat))
}

// unescapeDump decodes one db_dump -p data line.
func unescapeDump(s string) ([]byte, error) {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == '\\':
			out = append(out, '\\')
			i++
		case i+2 < len(s):
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return nil, errors.New("bad \\xx escape")
			}
			out = append(out, byte(v))
			i += 2
		default:
			return nil, errors.New("backslash at the end of a line")
		}
	}
	return out, nil
}

// importPlan is an entry checked against the store, ready to write.
type importPlan struct {
	importEntry
	a      store.Address
	exists bool
	hash   store.Secret // what is stored; "" = no password
	note   string       // why the secret is not what the line said
}

// cmdUserImport is `cyrus-sidecar user import`. Every line is checked (and
// every password hashed) before anything is written: a file with an error
// imports nothing, and the errors name their lines.
func cmdUserImport(args []string, std stdio, getenv func(string) string) error {
	ctx := context.Background()
	c := newCommand("user import", "user import [-format lines|sasldb-dump] [-dry-run] [-update] [-host-realm NAME] [-unsupported-hash error|no-password] FILE|- [-config FILE]", std, getenv)
	format := c.fs.String("format", "lines", "input `format`: lines (ADDRESS[<TAB or :>HASH or {PLAIN}PASSWORD]) or sasldb-dump (db5.3_dump -p of a sasldb2)")
	dryRun := c.fs.Bool("dry-run", false, "check everything and say what would change; write nothing")
	update := c.fs.Bool("update", false, "replace the password of users that exist already (default: leave them as they are)")
	hostRealm := c.fs.String("host-realm", "", "realm `NAME` that stands for cyrus.default_domain (saslauthd -a sasldb keeps logins without a domain under the host name)")
	unsupported := c.fs.String("unsupported-hash", "error", "a hash in a scheme that cannot be verified (yescrypt $y$, MD5 $1$, ...): error, or no-password (import the user without a password)")
	pos, err := c.parse(args)
	if err != nil {
		return err
	}
	if err := c.want(pos, 1, 1, "one FILE, or - for stdin"); err != nil {
		return err
	}
	parse := map[string]func(io.Reader) ([]importEntry, []error){"lines": parseLines, "sasldb-dump": parseSASLDBDump}[*format]
	if parse == nil {
		return usagef("user import: -format must be lines or sasldb-dump, got %q", *format)
	}
	if *unsupported != "error" && *unsupported != "no-password" {
		return usagef("user import: -unsupported-hash must be error or no-password, got %q", *unsupported)
	}
	in := std.in
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	entries, errs := parse(in)
	if err := c.open(ctx, false); err != nil {
		return err
	}
	defer c.close()
	plans, perrs := c.planImport(ctx, entries, strings.ToLower(*hostRealm), *unsupported == "no-password")
	if errs = append(errs, perrs...); len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintln(std.err, e)
		}
		return fmt.Errorf("user import: %d error(s); nothing imported", len(errs))
	}
	return c.runImport(ctx, plans, *dryRun, *update)
}

// planImport canonicalises each entry, checks its domain and existence,
// drops later duplicates and hashes or checks every secret.
func (c *command) planImport(ctx context.Context, entries []importEntry, hostRealm string, unsupportedNoPassword bool) ([]importPlan, []error) {
	var (
		plans   []importPlan
		errs    []error
		seen    = map[string]int{}  // address -> first line
		domains = map[string]bool{} // domain -> hosted
	)
	for _, e := range entries {
		addr := e.addr
		if local, dom, ok := cutLast(addr, "@"); ok && hostRealm != "" && strings.ToLower(dom) == hostRealm {
			addr = local // saslauthd's realm for logins without a domain
		}
		a, err := c.userAddress(addr, true)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", e.line, err))
			continue
		}
		if first, dup := seen[a.String()]; dup {
			fmt.Fprintf(c.std.err, "line %d: %s: already on line %d, skipped\n", e.line, a, first)
			continue
		}
		seen[a.String()] = e.line
		hosted, known := domains[a.Domain()]
		if !known {
			_, err := c.st.Domain(ctx, a.Domain())
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, append(errs, err)
			}
			hosted = err == nil
			domains[a.Domain()] = hosted
		}
		if !hosted {
			hint := ""
			if hostRealm == "" && !strings.Contains(a.Domain(), ".") {
				hint = fmt.Sprintf(" (if %s is the old server's host name, saslauthd's realm for logins without a domain, add -host-realm %s)", a.Domain(), a.Domain())
			}
			errs = append(errs, fmt.Errorf("line %d: %s: domain %s is not hosted here; add it first: cyrus-sidecar domain add %s -org NAME%s",
				e.line, a, a.Domain(), a.Domain(), hint))
			continue
		}
		_, err = c.st.User(ctx, a)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, append(errs, err)
		}
		plans = append(plans, importPlan{importEntry: e, a: a, exists: err == nil})
	}
	return plans, append(errs, c.prepareSecrets(plans, unsupportedNoPassword)...)
}

// prepareSecrets hashes plaintext passwords and checks hashes, on every
// core: argon2id takes tens of milliseconds per password, and checking a
// hash means computing it once (with an empty password).
func (c *command) prepareSecrets(plans []importPlan, unsupportedNoPassword bool) []error {
	errs := make([]error, len(plans))
	next := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range next {
				errs[i] = c.prepareSecret(&plans[i], unsupportedNoPassword)
			}
		})
	}
	for i := range plans {
		next <- i
	}
	close(next)
	wg.Wait()
	var out []error
	for _, err := range errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

func (c *command) prepareSecret(p *importPlan, unsupportedNoPassword bool) error {
	switch p.kind {
	case secretPlain:
		if len(p.secret) > maxPasswordLen {
			return fmt.Errorf("line %d: %s: password longer than %d bytes", p.line, p.a, maxPasswordLen)
		}
		h, err := c.hash(p.secret)
		if err != nil {
			return fmt.Errorf("line %d: %s: %w", p.line, p.a, err)
		}
		p.hash = h
	case secretHash:
		// Verify with an empty password runs the parser and the cost
		// bounds; its errors never quote the hash.
		_, err := password.Verify(p.secret, "")
		switch {
		case errors.Is(err, password.ErrUnknownScheme) && unsupportedNoPassword:
			p.note = "hash scheme not supported, imported without a password"
		case errors.Is(err, password.ErrUnknownScheme):
			return fmt.Errorf("line %d: %s: %w (supported: argon2id, argon2i, bcrypt $2a$/$2b$/$2y$, SHA-crypt $5$/$6$; "+
				"-unsupported-hash no-password imports such users without a password)", p.line, p.a, err)
		case err != nil:
			return fmt.Errorf("line %d: %s: %w", p.line, p.a, err)
		default:
			p.hash = store.Secret(p.secret)
		}
	}
	return nil
}

// runImport writes the plans, one transaction per user, and prints a line
// per user and a summary; a write that fails is reported and the rest go on.
func (c *command) runImport(ctx context.Context, plans []importPlan, dryRun, update bool) error {
	var added, updated, skipped, failed int
	verb := map[bool]string{true: "would be ", false: ""}[dryRun]
	for _, p := range plans {
		what := map[bool]string{true: "with a password", false: "without a password"}[p.hash != ""]
		if p.note != "" {
			what = p.note
		}
		var err error
		switch {
		case p.exists && !update:
			fmt.Fprintf(c.std.out, "line %d: %s: exists, skipped (-update replaces its password)\n", p.line, p.a)
			skipped++
			continue
		case p.exists && p.hash == "":
			fmt.Fprintf(c.std.out, "line %d: %s: exists, nothing to update (%s)\n", p.line, p.a, what)
			skipped++
			continue
		case p.exists:
			if !dryRun {
				err = c.st.SetPassword(ctx, p.a, p.hash)
			}
			if err == nil {
				fmt.Fprintf(c.std.out, "line %d: %s: password %sreplaced\n", p.line, p.a, verb)
				updated++
			}
		default:
			if !dryRun {
				_, err = c.st.AddUser(ctx, store.NewUser{Address: p.a, PasswordHash: p.hash})
			}
			if err == nil {
				fmt.Fprintf(c.std.out, "line %d: %s: %sadded, %s\n", p.line, p.a, verb, what)
				added++
			}
		}
		if err != nil {
			fmt.Fprintf(c.std.err, "line %d: %s: %v\n", p.line, p.a, explain(err))
			failed++
		}
	}
	prefix := ""
	if dryRun {
		prefix = "dry run, nothing written: "
	}
	fmt.Fprintf(c.std.out, "%s%d added, %d updated, %d skipped, %d failed\n", prefix, added, updated, skipped, failed)
	if failed > 0 {
		return fmt.Errorf("user import: %d user(s) failed", failed)
	}
	return nil
}

// cutLast splits s at the last sep.
func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}
