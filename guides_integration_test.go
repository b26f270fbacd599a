//go:build integration

package main

// The integration guides (docs/cyrus.md, docs/exim.md) and the migration
// page (docs/migrating.md) against real peers: their snippets are read with
// lab.DocSnippet and run as they are, with only the file names and socket
// paths each page says it replaces.

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
)

// docSASLSocket is the saslauthd socket path the guides use.
const docSASLSocket = "/run/cyrus-sidecar/saslauthd/mux"

// guideEnv is a store and configuration in a directory that Cyrus's
// processes (user cyrus) can enter, with serve's saslauthd socket in it.
type guideEnv struct {
	dir, cfg, sock string
}

// newGuideEnv writes the configuration: the store, the default domain
// example.com, fast password hashes, saslauthd on <dir>/mux and the other
// services off. It adds organisation Acme with the given domains.
func newGuideEnv(t *testing.T, domains ...string) *guideEnv {
	t.Helper()
	// t.TempDir is 0700 and its path may be too long for a UNIX socket.
	dir, err := os.MkdirTemp("/tmp", "gd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &guideEnv{dir: dir, cfg: filepath.Join(dir, "config.toml"), sock: filepath.Join(dir, "mux")}
	conf := fmt.Sprintf(`[store]
path = %q
[cyrus]
default_domain = "example.com"
[password]
time = 1
memory_kib = 8192
[saslauthd]
listen = "unix:%s"
socket_mode = "0666"
[lmtp]
enabled = false
[socketmap]
enabled = false
[vacation]
enabled = false
`, filepath.Join(dir, "store.db"), e.sock)
	if err := os.WriteFile(e.cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, e.cfg, "", "org", "add", "Acme")
	for _, d := range domains {
		mustRun(t, e.cfg, "", "domain", "add", d, "-org", "Acme")
	}
	return e
}

// serve starts `cyrus-sidecar serve` on the configuration and waits until
// it is ready; it is killed at cleanup.
func (e *guideEnv) serve(t *testing.T) {
	t.Helper()
	e.serveDaemon(t)
}

// serveDaemon is serve, returning the process for a test that stops it.
func (e *guideEnv) serveDaemon(t *testing.T) *daemon {
	t.Helper()
	d := startServe(t, e.dir, "-config", e.cfg)
	d.waitLog(t, "ready")
	go func() {
		for range d.logs { // serve must never block on a full log pipe
		}
	}()
	return d
}

// runDoc runs a snippet with sh after replacing each old text (which must
// occur in it) by its new one; cyrus-sidecar is in PATH and finds the
// configuration through $CYRUS_SIDECAR_CONFIG. It returns stdout and
// stderr together.
func (e *guideEnv) runDoc(t *testing.T, doc, name string, replace ...string) string {
	t.Helper()
	script := lab.DocSnippet(t, doc, name)
	for i := 0; i+1 < len(replace); i += 2 {
		if !strings.Contains(script, replace[i]) {
			t.Fatalf("%s snippet %s no longer contains %q", doc, name, replace[i])
		}
		script = strings.ReplaceAll(script, replace[i], replace[i+1])
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", "set -e\n"+script)
	cmd.Env = append(filteredEnv(), "CYRUS_SIDECAR_CONFIG="+e.cfg,
		"PATH="+filepath.Dir(buildBinary(t))+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s snippet %s: %v\n%s", doc, name, err, out)
	}
	return string(out)
}

// saslCheck asks serve's socket with sasl2-bin's testsaslauthd and returns
// OK or NO (the shared reference cyrus-lab-facts.md, section 3).
func (e *guideEnv) saslCheck(t *testing.T, user, pw, realm string) string {
	t.Helper()
	bin := lab.Tool(t, "SIDECAR_TESTSASLAUTHD", "testsaslauthd", "/usr/sbin")
	args := []string{"-u", user, "-p", pw, "-s", "imap", "-f", e.sock}
	if realm != "" {
		args = append(args, "-r", realm)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	switch line := strings.TrimSpace(string(out)); {
	case err == nil && line == `0: OK "Success."`:
		return "OK"
	case line == `0: NO "authentication failed"`:
		return "NO"
	}
	t.Fatalf("testsaslauthd -u %s -r %q: %q, %v", user, realm, out, err)
	return ""
}

func wantAll(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
}

// TestImportSASLDB: docs/migrating.md's sasldb pipeline over a sasldb2 made
// by saslpasswd2 (users under a domain realm, under the host name as
// saslauthd -a sasldb keeps logins without a domain, and in another
// domain), dumped by db5.3_dump; each user then logs in through serve.
func TestImportSASLDB(t *testing.T) {
	saslpasswd := lab.Tool(t, "", "saslpasswd2", "/usr/sbin")
	lab.Tool(t, "", "db5.3_dump") // used by the snippet
	e := newGuideEnv(t, "example.com", "other.org")
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(e.dir, "sasldb2")
	users := []struct{ user, realm, pw string }{
		{"alice", "example.com", "alice pw:1"},
		{"bob", host, `bob\pw	tab`},
		{"carol", "other.org", "carol-pw"},
	}
	for _, u := range users {
		cmd := exec.CommandContext(t.Context(), saslpasswd, "-f", db, "-p", "-u", u.realm, "-c", u.user)
		cmd.Stdin = strings.NewReader(u.pw + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("saslpasswd2 %s: %v\n%s", u.user, err, out)
		}
	}
	e.serve(t)
	out := e.runDoc(t, "docs/migrating.md", "sasldb-import", "/etc/sasldb2", db)
	wantAll(t, "import output", out,
		"dry run, nothing written: 3 added, 0 updated, 0 skipped, 0 failed",
		"bob@example.com: added, with a password", "carol@other.org: added, with a password",
		"\n3 added, 0 updated, 0 skipped, 0 failed")
	for _, u := range users {
		if strings.Contains(out, u.pw) {
			t.Errorf("import output shows %s's password", u.user)
		}
	}
	// Cyrus sends default-domain logins without a realm (facts §3).
	for _, tt := range []struct{ user, pw, realm, want string }{
		{"alice", "alice pw:1", "", "OK"},
		{"bob", `bob\pw	tab`, "", "OK"},
		{"carol", "carol-pw", "other.org", "OK"},
		{"alice", "carol-pw", "", "NO"},
	} {
		if got := e.saslCheck(t, tt.user, tt.pw, tt.realm); got != tt.want {
			t.Errorf("testsaslauthd %s@%q after import: %s, want %s", tt.user, tt.realm, got, tt.want)
		}
	}
}

// TestImportShadow: docs/migrating.md's shadow pipeline over fixture
// passwd and shadow files: a SHA-512-crypt hash from `openssl passwd -6`
// logs in; a yescrypt user comes without a password; root, locked and
// system accounts stay out.
func TestImportShadow(t *testing.T) {
	openssl := lab.Tool(t, "", "openssl")
	out, err := exec.CommandContext(t.Context(), openssl, "passwd", "-6", "alice's pw").Output()
	if err != nil {
		t.Fatalf("openssl passwd -6: %v", err)
	}
	hash := strings.TrimSpace(string(out))
	e := newGuideEnv(t, "example.com")
	passwd := filepath.Join(e.dir, "passwd")
	shadow := filepath.Join(e.dir, "shadow")
	writeFiles(t, map[string]string{
		passwd: "root:x:0:0:root:/root:/bin/bash\n" +
			"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
			"alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n" +
			"bob:x:1001:1001:Bob,,,:/home/bob:/bin/bash\n" +
			"carol:x:1002:1002:Carol,,,:/home/carol:/bin/bash\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		shadow: "root:" + sha512Hash + ":19000:0:99999:7:::\n" +
			"daemon:*:19000:0:99999:7:::\n" +
			"alice:" + hash + ":19000:0:99999:7:::\n" +
			// yescrypt, as Debian 12's passwd writes it
			"bob:$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7:19000:0:99999:7:::\n" +
			"carol:!" + hash + ":19000:0:99999:7:::\n" +
			"nobody:*:19000:0:99999:7:::\n",
	})
	e.serve(t)
	out2 := e.runDoc(t, "docs/migrating.md", "shadow-import", "/etc/passwd", passwd, "/etc/shadow", shadow)
	wantAll(t, "import output", out2,
		"line 1: alice@example.com: added, with a password",
		"line 2: bob@example.com: added, hash scheme not supported, imported without a password",
		"\n2 added, 0 updated, 0 skipped, 0 failed")
	if strings.Contains(out2, "root") || strings.Contains(out2, "carol") || strings.Contains(out2, "$6$") {
		t.Errorf("import took root or a locked account, or printed a hash:\n%s", out2)
	}
	if got := e.saslCheck(t, "alice", "alice's pw", ""); got != "OK" {
		t.Errorf("alice with her shadow password: %s, want OK", got)
	}
	if got := e.saslCheck(t, "bob", "anything", ""); got != "NO" {
		t.Errorf("bob (yescrypt, imported without a password): %s, want NO", got)
	}
}

// TestImportMailboxes: docs/migrating.md's smmapd step lists the users'
// INBOXes of a real Cyrus and imports them without passwords.
func TestImportMailboxes(t *testing.T) {
	c := lab.StartCyrus(t, lab.CyrusOptions{})
	for _, u := range []string{"alice@example.com", "al.ice@example.com", "carol@other.org"} {
		c.CreateMailbox(t, u)
	}
	cl := c.AdminIMAP(t)
	for _, m := range []string{"user/alice/Sent@example.com", "shared"} {
		if r := cl.Cmd(t, "CREATE "+lab.IMAPQuote(m)); !r.OK() {
			t.Fatalf("CREATE %s: %s", m, r)
		}
	}
	cl.Logout(t)
	e := newGuideEnv(t, "example.com", "other.org")
	mustRun(t, e.cfg, "pw\n", "user", "add", "alice", "-password-stdin") // imported before, with a password
	const ctl = "/usr/lib/cyrus/bin/ctl_mboxlist -d"
	out := e.runDoc(t, "docs/migrating.md", "mailboxes-import", ctl, "/usr/lib/cyrus/bin/ctl_mboxlist -C "+c.ConfPath+" -d")
	wantAll(t, "import output", out,
		"al.ice@example.com: added, without a password",
		"alice@example.com: exists, skipped",
		"carol@other.org: added, without a password",
		"2 added, 0 updated, 1 skipped, 0 failed")
	if strings.Contains(out, "shared") || strings.Contains(out, "Sent") {
		t.Errorf("import took a folder that is not an INBOX:\n%s", out)
	}
}

// TestGuideCyrus: a real Cyrus 3.6 with docs/cyrus.md's imapd.conf lines
// logs users in through serve: the admin (admins:) creates a mailbox, the
// user logs in to IMAP and ManageSieve, a wrong password is refused.
func TestGuideCyrus(t *testing.T) {
	e := newGuideEnv(t, "example.com")
	const adminPW, alicePW = "admin secret", "alice secret"
	mustRun(t, e.cfg, adminPW+"\n", "user", "add", "cyrus-sidecar", "-password-stdin", "-services", "imap,sieve")
	mustRun(t, e.cfg, alicePW+"\n", "user", "add", "alice@example.com", "-password-stdin")
	e.serve(t)

	conf := map[string]string{}
	for line := range strings.Lines(lab.DocSnippet(t, "docs/cyrus.md", "imapd-conf")) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			t.Fatalf("docs/cyrus.md imapd-conf: line %q is not \"key: value\"", line)
		}
		conf[k] = v
	}
	// The documented substitution: the socket path is the test's.
	if conf["sasl_saslauthd_path"] != docSASLSocket || conf["admins"] != "cyrus-sidecar" || conf["defaultdomain"] != "example.com" {
		t.Fatalf("docs/cyrus.md imapd-conf changed: %v", conf)
	}
	conf["sasl_saslauthd_path"] = e.sock
	c := lab.StartCyrus(t, lab.CyrusOptions{SASLSocket: e.sock, Conf: conf})

	q := lab.IMAPQuote
	admin := lab.DialIMAP(t, c.IMAPAddr)
	admin.Login(t, "cyrus-sidecar", adminPW)
	if r := admin.Cmd(t, "CREATE "+q("user/alice@example.com")); !r.OK() {
		t.Fatalf("CREATE as the admins: user: %s", r)
	}
	admin.Logout(t)

	cl := lab.DialIMAP(t, c.IMAPAddr)
	cl.Login(t, "alice@example.com", alicePW)
	if r := cl.Cmd(t, "SELECT INBOX"); !r.OK() {
		t.Errorf("alice: SELECT INBOX: %s", r)
	}
	cl.Logout(t)

	plain := func(user, pw string) string {
		return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pw))
	}
	if l, err := lab.SieveAuth(c.SieveAddr, plain("alice@example.com", alicePW)); err != nil || !strings.HasPrefix(l, "OK") {
		t.Errorf("ManageSieve AUTHENTICATE PLAIN: %q, %v", l, err)
	}
	bad := lab.DialIMAP(t, c.IMAPAddr)
	if r, err := bad.Do("LOGIN " + q("alice@example.com") + " " + q("wrong")); err != nil || r.Status != "NO" {
		t.Errorf("LOGIN with a wrong password: %v, %v; want NO", r, err)
	}
}

func writeFiles(t *testing.T, files map[string]string) {
	t.Helper()
	for p, s := range files {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGuideEximAuth: docs/exim.md's authenticators in real Exim, asking
// serve through the tmpfiles line's link. Exim's saslauthd socket path is
// compiled in (/var/run/saslauthd/mux), so exim4 runs in a private mount
// namespace with a directory of the test's bound over /run: the machine's
// /run/saslauthd is never touched.
func TestGuideEximAuth(t *testing.T) {
	exim := lab.Tool(t, "", "exim4", "/usr/sbin")
	unshare := lab.Tool(t, "", "unshare", "/usr/bin")
	e := newGuideEnv(t, "example.com")
	mustRun(t, e.cfg, "alice pw\n", "user", "add", "alice", "-password-stdin")
	mustRun(t, e.cfg, "imap only\n", "user", "add", "bob", "-password-stdin", "-services", "imap")
	e.serve(t)

	// The tmpfiles line: L PATH - - - - TARGET, both under /run.
	f := strings.Fields(lab.DocSnippet(t, "docs/exim.md", "tmpfiles-saslauthd-link"))
	if len(f) != 7 || f[0] != "L" || f[1] != "/run/saslauthd/mux" || f[6] != docSASLSocket {
		t.Fatalf("docs/exim.md tmpfiles line changed: %q", f)
	}
	run := filepath.Join(e.dir, "run")
	if err := os.MkdirAll(filepath.Join(run, filepath.Dir(strings.TrimPrefix(f[1], "/run/"))), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.sock, filepath.Join(run, strings.TrimPrefix(f[1], "/run/"))); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(e.dir, "exim4")
	script := fmt.Sprintf("#!/bin/sh\nexec %s -m --propagation private sh -c 'mount --bind %s /run && exec %s \"$@\"' exim4 \"$@\"\n", unshare, run, exim)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIDECAR_EXIM", wrapper)
	x := lab.NewExim(t, lab.EximOptions{Conf: "primary_hostname = exim.lab.localhost\ntls_advertise_hosts =\n\nbegin authenticators\n\n" +
		lab.DocSnippet(t, "docs/exim.md", "exim-auth") + "\n"})

	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	session := func(cmds ...string) []string {
		t.Helper()
		return lab.SMTPReplies(x.BHC(t, "EHLO client.example\r\n"+strings.Join(cmds, "\r\n")+"\r\nQUIT\r\n"))
	}
	replies := session("AUTH PLAIN "+b64("\x00alice@example.com\x00alice pw"),
		"AUTH LOGIN", b64("alice"), b64("alice pw"))
	if len(replies) < 5 || !strings.Contains(replies[1], "AUTH PLAIN LOGIN") ||
		!strings.HasPrefix(replies[2], "235") || !strings.HasPrefix(replies[3], "503") {
		// One AUTH per session (RFC 4954 §4): the second is refused, so
		// LOGIN gets its own session below.
		t.Errorf("EHLO + AUTH PLAIN alice: %q", replies)
	}
	for _, tt := range []struct {
		name string
		cmds []string
		want string
	}{
		{"LOGIN", []string{"AUTH LOGIN", b64("alice"), b64("alice pw")}, "235"},
		{"PLAIN wrong password", []string{"AUTH PLAIN " + b64("\x00alice\x00wrong")}, "535"},
		{"PLAIN user without smtp", []string{"AUTH PLAIN " + b64("\x00bob@example.com\x00imap only")}, "535"},
	} {
		r := session(tt.cmds...)
		if got := r[len(r)-2]; !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: %q, want %s", tt.name, r, tt.want)
		}
	}

	// From another address, without TLS: no AUTH offered.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, wrapper, "-C", x.ConfPath, "-bhc", "192.0.2.1")
	cmd.Stdin = strings.NewReader("EHLO client.example\r\nQUIT\r\n")
	out, _ := cmd.CombinedOutput() // the replies tell
	if r := lab.SMTPReplies(string(out)); len(r) < 2 || !strings.HasPrefix(r[1], "250") || strings.Contains(r[1], "AUTH") {
		t.Errorf("EHLO from 192.0.2.1: %q, want 250 without AUTH\n%s", r, out)
	}
}
