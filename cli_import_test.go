package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cyrus-sidecar/store/password"
)

// sha512Hash is `openssl passwd -6 -salt Qx7.saltsalt 'correct horse'`.
const sha512Hash = "$6$Qx7.saltsalt$RBQ3MtHRV1VOC1jJqTqgycTxS/1OhZ8B4yDD1W6Ui9CB.i6q7/C/BB.FOxiTIaOow7Mem/cPqT87ncjSqCbDT/"

func TestParseImportLine(t *testing.T) {
	tests := []struct {
		name, in string
		want     importEntry
		wantOK   bool
		wantErr  error
	}{
		{"address only", "alice@example.com", importEntry{addr: "alice@example.com"}, true, nil},
		{"address and empty secret", "alice:", importEntry{addr: "alice"}, true, nil},
		{"colon hash", "alice:" + sha512Hash, importEntry{addr: "alice", kind: secretHash, secret: sha512Hash}, true, nil},
		{"tab hash", "alice@example.com\t" + sha512Hash, importEntry{addr: "alice@example.com", kind: secretHash, secret: sha512Hash}, true, nil},
		{"crypt prefix", "a\t{CRYPT}$2b$x", importEntry{addr: "a", kind: secretHash, secret: "$2b$x"}, true, nil},
		{"plain", "a@b.c:{PLAIN}pw", importEntry{addr: "a@b.c", kind: secretPlain, secret: "pw"}, true, nil},
		{"plain keeps separators and spaces", "a\t{PLAIN} p:w\tx ", importEntry{addr: "a", kind: secretPlain, secret: " p:w\tx "}, true, nil},
		{"first separator wins", "a:{PLAIN}b\tc", importEntry{addr: "a", kind: secretPlain, secret: "b\tc"}, true, nil},
		{"CRLF", "a:{PLAIN}pw\r", importEntry{addr: "a", kind: secretPlain, secret: "pw"}, true, nil},
		{"blank", "  \t ", importEntry{}, false, nil},
		{"empty", "", importEntry{}, false, nil},
		{"comment", "  # alice:{PLAIN}x", importEntry{}, false, nil},
		{"no address", ":{PLAIN}pw", importEntry{}, false, errImportSyntax},
		{"space separator", "alice secret", importEntry{}, false, errImportSyntax},
		{"empty plain", "alice:{PLAIN}", importEntry{}, false, errImportSyntax},
		{"NUL in address", "al\x00ice:x", importEntry{}, false, errImportSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := parseImportLine(tt.in)
			if !errors.Is(err, tt.wantErr) || ok != tt.wantOK || got != tt.want {
				t.Errorf("parseImportLine(%q) = %+v, %v, %v; want %+v, %v, %v", tt.in, got, ok, err, tt.want, tt.wantOK, tt.wantErr)
			}
		})
	}
}

func FuzzParseImportLine(f *testing.F) {
	var constErrs []string
	for _, in := range []string{":x", "a b", "a:{PLAIN}"} {
		_, _, err := parseImportLine(in)
		constErrs = append(constErrs, err.Error())
	}
	for _, s := range []string{"alice@example.com", "alice:" + sha512Hash, "a\t{PLAIN}p:w", ":x", "a b", "a:{PLAIN}", "# c", "a:{CRYPT}$6$x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		e, ok, err := parseImportLine(in)
		if err != nil {
			// Property: an error is constant text, so it never repeats
			// any part of the line (a password, say).
			if !slices.Contains(constErrs, err.Error()) {
				t.Fatalf("%q: error %q is not one of the constant ones", in, err)
			}
			return
		}
		if !ok {
			return
		}
		if e.addr == "" || strings.ContainsAny(e.addr, "\t: \x00") {
			t.Fatalf("%q: address %q", in, e.addr)
		}
		// Property: writing the entry back as a line parses to the same.
		line := e.addr
		switch e.kind {
		case secretPlain:
			line += "\t" + plainPrefix + e.secret
		case secretHash:
			line += "\t" + e.secret
		}
		if e.kind == secretHash && (strings.HasPrefix(e.secret, plainPrefix) || strings.HasPrefix(e.secret, cryptPrefix)) {
			return // "{CRYPT}{PLAIN}x" is a hash that starts like a marker
		}
		again, ok, err := parseImportLine(line)
		if strings.HasSuffix(line, "\r") || e.kind == secretHash && e.secret == "" {
			return // a trailing CR is dropped; "a:{CRYPT}" is a hash of nothing
		}
		if err != nil || !ok || again != e {
			t.Fatalf("%q parsed as %+v; its line %q parses as %+v, %v, %v", in, e, line, again, ok, err)
		}
	})
}

// TestParseSASLDBDump reads what `db5.3_dump -p` printed for a sasldb2
// made by saslpasswd2 (a user under the host name realm, one with a ':',
// a backslash and a tab in the password, and an OTP secret that is not a
// password).
func TestParseSASLDBDump(t *testing.T) {
	dump := `VERSION=3
format=print
type=hash
h_nelem=3
db_pagesize=4096
HEADER=END
 bob\00vm\00userPassword
 hpw
 alice\00example.com\00userPassword
 pw one
 carol\00other.org\00userPassword
 x:y\\z\09
 alice\00example.com\00cmusaslsecretOTP
 \01\02
DATA=END
`
	got, errs := parseSASLDBDump(strings.NewReader(dump))
	want := []importEntry{
		{line: 7, addr: "bob@vm", kind: secretPlain, secret: "hpw"},
		{line: 9, addr: "alice@example.com", kind: secretPlain, secret: "pw one"},
		{line: 11, addr: "carol@other.org", kind: secretPlain, secret: "x:y\\z\t"},
	}
	if len(errs) > 0 || !slices.Equal(got, want) {
		t.Errorf("parseSASLDBDump = %+v, %v; want %+v", got, errs, want)
	}

	for _, tt := range []struct{ name, in, wantErr string }{
		{"not a dump", "alice:secret\n", "line 1: not a db_dump -p file"},
		{"truncated", "HEADER=END\n alice\\00x\\00userPassword\n", "no DATA=END"},
		{"no -p", "HEADER=END\n616c696365\n", "line 2: not a db_dump -p file: data line does not start with a space"},
		{"bad escape", "HEADER=END\n a\\zz\nDATA=END\n", "bad \\xx escape"},
		{"key without value", "HEADER=END\n a\\00b\\00userPassword\nDATA=END\n", "line 2: not a db_dump -p file: key without a value"},
		{"not a sasldb key", "HEADER=END\n ab\n x\nDATA=END\n", "line 2: not a sasldb key"},
		{"at in user", "HEADER=END\n a@b\\00c\\00userPassword\n x\nDATA=END\n", "line 2: syntax: empty user, or '@'"},
	} {
		_, errs := parseSASLDBDump(strings.NewReader(tt.in))
		if len(errs) == 0 || !strings.Contains(errors.Join(errs...).Error(), tt.wantErr) {
			t.Errorf("%s: errors %v, want %q", tt.name, errs, tt.wantErr)
		}
	}
}

func FuzzParseSASLDBDump(f *testing.F) {
	f.Add("HEADER=END\n a\\00example.com\\00userPassword\n p\\\\w\\09\nDATA=END\n")
	f.Add("VERSION=3\nHEADER=END\n a\\00\\00userPassword\n x\n b\\00c\\00x\n y\nDATA=END\n")
	f.Fuzz(func(t *testing.T, in string) {
		entries, _ := parseSASLDBDump(strings.NewReader(in))
		for _, e := range entries {
			if e.kind != secretPlain || e.secret == "" || e.addr == "" || strings.Count(e.addr, "@") > 1 {
				t.Fatalf("%q: entry %+v", in, e)
			}
		}
	})
}

// importEnv is a store with organisation Acme hosting example.com and
// alice@example.com (password "old").
func importEnv(t *testing.T) string {
	t.Helper()
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "old\n", "user", "add", "alice", "-password-stdin")
	return cfg
}

func verifies(t *testing.T, cfg, addr, pw string) bool {
	t.Helper()
	ok, err := password.Verify(storedHash(t, cfg, addr), pw)
	if err != nil {
		t.Fatalf("%s: %v", addr, err)
	}
	return ok
}

func TestCLIUserImport(t *testing.T) {
	cfg := importEnv(t)
	input := strings.Join([]string{
		"# exported from the old host",
		"bob:" + sha512Hash,
		"carol@Example.COM\t{PLAIN}p:w d",
		"dave@example.com",
		"alice:{PLAIN}new",
		"erin:$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
		"bob:{PLAIN}second",
		"",
	}, "\n")

	// Without -unsupported-hash the yescrypt line is an error, and
	// nothing is written.
	out, errOut, err := runCLI(t, cfg, input, "user", "import", "-")
	if err == nil || !strings.Contains(errOut, "line 6: erin@example.com: verify password: unknown password hash scheme") ||
		!strings.Contains(err.Error(), "nothing imported") {
		t.Fatalf("import with a yescrypt hash: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	if users := mustRun(t, cfg, "", "user", "list"); strings.Contains(users, "bob") {
		t.Fatalf("a failed import wrote users:\n%s", users)
	}

	out = mustRun(t, cfg, input, "user", "import", "-dry-run", "-unsupported-hash", "no-password", "-")
	if !strings.Contains(out, "line 2: bob@example.com: would be added, with a password") ||
		!strings.Contains(out, "dry run, nothing written: 4 added, 0 updated, 1 skipped, 0 failed") {
		t.Errorf("dry run:\n%s", out)
	}
	if users := mustRun(t, cfg, "", "user", "list"); strings.Contains(users, "bob") {
		t.Fatalf("a dry run wrote users:\n%s", users)
	}

	file := filepath.Join(t.TempDir(), "users.txt")
	if err := os.WriteFile(file, []byte(input), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = runCLI(t, cfg, "", "user", "import", file, "-unsupported-hash", "no-password")
	if err != nil {
		t.Fatalf("import: %v\n%s", err, errOut)
	}
	for _, want := range []string{
		"line 2: bob@example.com: added, with a password",
		"line 3: carol@example.com: added, with a password",
		"line 4: dave@example.com: added, without a password",
		"line 5: alice@example.com: exists, skipped (-update replaces its password)",
		"line 6: erin@example.com: added, hash scheme not supported, imported without a password",
		"4 added, 0 updated, 1 skipped, 0 failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("import output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "line 7: bob@example.com: already on line 2, skipped") {
		t.Errorf("duplicate not reported:\n%s", errOut)
	}
	if strings.Contains(out+errOut, "p:w d") || strings.Contains(out+errOut, "second") || strings.Contains(out+errOut, "$6$") {
		t.Errorf("import printed a secret:\n%s\n%s", out, errOut)
	}
	if h := storedHash(t, cfg, "bob@example.com"); h != sha512Hash {
		t.Errorf("bob's hash stored as %q, want it as imported", h)
	}
	if !verifies(t, cfg, "bob@example.com", "correct horse") || !verifies(t, cfg, "carol@example.com", "p:w d") ||
		!verifies(t, cfg, "alice@example.com", "old") {
		t.Errorf("imported passwords do not verify")
	}
	if h := storedHash(t, cfg, "carol@example.com"); !strings.HasPrefix(h, "$argon2id$") {
		t.Errorf("plaintext stored as %q, want an argon2id hash", h)
	}
	if storedHash(t, cfg, "dave@example.com") != "" || storedHash(t, cfg, "erin@example.com") != "" {
		t.Errorf("dave or erin got a password")
	}

	// -update replaces passwords of existing users; an address-only line
	// leaves the user's password alone.
	out = mustRun(t, cfg, "alice:{PLAIN}new\nbob\n", "user", "import", "-update", "-")
	if !strings.Contains(out, "line 1: alice@example.com: password replaced") ||
		!strings.Contains(out, "line 2: bob@example.com: exists, nothing to update (without a password)") {
		t.Errorf("import -update:\n%s", out)
	}
	if !verifies(t, cfg, "alice@example.com", "new") || !verifies(t, cfg, "bob@example.com", "correct horse") {
		t.Errorf("after -update: alice's password not replaced, or bob's lost")
	}
}

// TestCLIUserImportSASLDB: the host name realm maps to the default domain.
func TestCLIUserImportSASLDB(t *testing.T) {
	cfg := importEnv(t)
	dump := "HEADER=END\n bob\\00mailhost\\00userPassword\n s\\5c3\n bob\\00example.com\\00userPassword\n s\\5c3\nDATA=END\n"
	_, errOut, err := runCLI(t, cfg, dump, "user", "import", "-format", "sasldb-dump", "-")
	if err == nil || !strings.Contains(errOut, "line 2: bob@mailhost: domain mailhost is not hosted here; add it first: cyrus-sidecar domain add mailhost -org NAME (if mailhost is the old server's host name, saslauthd's realm for logins without a domain, add -host-realm mailhost)") {
		t.Errorf("unknown realm: %v\n%s", err, errOut)
	}
	out, errOut, err := runCLI(t, cfg, dump, "user", "import", "-format", "sasldb-dump", "-host-realm", "MailHost", "-")
	if err != nil || !strings.Contains(out, "line 2: bob@example.com: added, with a password") ||
		!strings.Contains(errOut, "line 4: bob@example.com: already on line 2, skipped") {
		t.Fatalf("import -host-realm: %v\n%s\n%s", err, out, errOut)
	}
	if !verifies(t, cfg, "bob@example.com", `s\3`) {
		t.Errorf("bob's password does not verify")
	}
}

// TestCLIUserImportErrors: every refusal names its line; a line's secret is
// never printed.
func TestCLIUserImportErrors(t *testing.T) {
	cfg := importEnv(t)
	tests := []struct {
		name, stdin string
		args        []string
		usage       bool
		message     string
	}{
		{"no file", "", []string{"user", "import"}, true, "expected one FILE, or - for stdin"},
		{"bad format", "", []string{"user", "import", "-format", "csv", "-"}, true, "-format must be lines or sasldb-dump"},
		{"bad unsupported-hash", "", []string{"user", "import", "-unsupported-hash", "x", "-"}, true, "-unsupported-hash must be error or no-password"},
		{"missing file", "", []string{"user", "import", "/nonexistent/users"}, false, "no such file"},
		{"unknown domain", "x@other.org\n", []string{"user", "import", "-"}, false, "line 1: x@other.org: domain other.org is not hosted here; add it first: cyrus-sidecar domain add other.org -org NAME"},
		{"malformed hash", "x:$6$salt$short\n", []string{"user", "import", "-"}, false, "line 1: x@example.com: verify sha512-crypt hash: malformed password hash: hash is not 86 characters"},
		{"plaintext where a hash belongs", "x:hunter2\n", []string{"user", "import", "-"}, false, "line 1: x@example.com: verify password: unknown password hash scheme"},
		{"space separator", "x hunter2\n", []string{"user", "import", "-"}, false, "line 1: syntax: the address contains a space"},
		{"detail", "x+y:{PLAIN}hunter2\n", []string{"user", "import", "-"}, false, "line 1: \"x+y\": a user address cannot contain"},
		{"token-like password", "x:{PLAIN}sct1.abc\n", []string{"user", "import", "-"}, false, "line 1: x@example.com: a password cannot start with \"sct1.\""},
		{"all errors at once", "a:hunter2\n\nb@nope.org\n", []string{"user", "import", "-"}, false, "2 error(s); nothing imported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, err := runCLI(t, cfg, tt.stdin, tt.args...)
			_, isUsage := errors.AsType[usageError](err)
			if err == nil || isUsage != tt.usage || !strings.Contains(err.Error()+"\n"+errOut, tt.message) {
				t.Errorf("%v: err %v (usage %v), stderr %q; want %q (usage %v)", tt.args, err, isUsage, errOut, tt.message, tt.usage)
			}
			if strings.Contains(errOut, "hunter2") {
				t.Errorf("stderr shows the password: %q", errOut)
			}
		})
	}
}
