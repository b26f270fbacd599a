package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
)

// conv is a scripted peer: what it reads from the client goes to written,
// and it answers with the canned server bytes.
type conv struct {
	r       io.Reader
	written bytes.Buffer
}

func (c *conv) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *conv) Write(p []byte) (int, error) { return c.written.Write(p) }

func TestReadSMTPReply(t *testing.T) {
	tests := []struct {
		name, in string
		code     int
		lines    int
		wantErr  error
	}{
		{"one line", "220 cyruslab Cyrus LMTP ready\r\n", 220, 1, nil},
		{"multi line", "250-host\r\n250-PIPELINING\r\n250 SIZE\r\n", 250, 3, nil},
		{"bare code", "250\r\n", 250, 1, nil},
		{"code changes", "250-host\r\n251 x\r\n", 0, 0, errProbeSyntax},
		{"no separator", "250xhost\r\n", 0, 0, errProbeSyntax},
		{"not a code", "abc hello\r\n", 0, 0, errProbeSyntax},
		{"eof mid line", "250-host", 0, 0, io.ErrUnexpectedEOF},
		{"clean eof", "", 0, 0, io.EOF},
		{"too long", "250 " + strings.Repeat("x", maxProbeLine) + "\r\n", 0, 0, errProbeTooLong},
		{"too many lines", strings.Repeat("250-x\r\n", maxProbeLines+1), 0, 0, errProbeTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := readSMTPReply(bufio.NewReaderSize(strings.NewReader(tt.in), 16))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && (rep.code != tt.code || len(rep.lines) != tt.lines) {
				t.Errorf("reply = %d %q, want %d with %d lines", rep.code, rep.lines, tt.code, tt.lines)
			}
		})
	}
}

func TestLMTPProbe(t *testing.T) {
	// Cyrus 3.6 lmtpd on its UNIX socket (cyrus-lab-facts §4).
	server := "220 cyruslab.localhost Cyrus LMTP 3.6.1 server ready\r\n" +
		"250-cyruslab.localhost\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-SIZE\r\n" +
		"250-AUTH EXTERNAL\r\n250-IGNOREQUOTA\r\n250 Ok SESSIONID=<x>\r\n221 2.0.0 bye\r\n"
	c := &conv{r: strings.NewReader(server)}
	info, err := lmtpProbe(c, "doc")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.written.String(); got != "LHLO doc\r\nQUIT\r\n" {
		t.Errorf("client sent %q", got)
	}
	if info.greeting != "cyruslab.localhost Cyrus LMTP 3.6.1 server ready" {
		t.Errorf("greeting %q", info.greeting)
	}
	if p, ok := info.hasExt("auth"); !ok || p != "EXTERNAL" {
		t.Errorf("AUTH = %q, %v", p, ok)
	}
	for _, bad := range []string{"554 5.3.2 go away\r\n", "220 hi\r\n500 5.5.1 what\r\n"} {
		if _, err := lmtpProbe(&conv{r: strings.NewReader(bad)}, "doc"); err == nil {
			t.Errorf("lmtpProbe accepted %q", bad)
		}
	}
}

func TestIMAPProbe(t *testing.T) {
	server := "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] cyruslab.localhost Cyrus IMAP 3.6.1 server ready\r\n" +
		"* CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN auth=login SASL-IR\r\nd1 OK Completed\r\n" +
		"* BYE LOGOUT received\r\nd2 OK Completed\r\n"
	c := &conv{r: strings.NewReader(server)}
	info, err := imapProbe(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.written.String(); got != "d1 CAPABILITY\r\nd2 LOGOUT\r\n" {
		t.Errorf("client sent %q", got)
	}
	if info.greeting != "cyruslab.localhost Cyrus IMAP 3.6.1 server ready" || !info.has("literal+") || info.has("STARTTLS") {
		t.Errorf("info = %+v", info)
	}
	if got := strings.Join(info.authMechs(), " "); got != "PLAIN LOGIN" {
		t.Errorf("mechanisms %q", got)
	}
	for _, bad := range []string{
		"* BYE too many connections\r\n",
		"* OK hi\r\nd1 BAD no\r\n",
		"* OK hi\r\n* CAPABILITY IMAP4rev1\r\n", // EOF before the tagged reply
	} {
		if _, err := imapProbe(&conv{r: strings.NewReader(bad)}); err == nil {
			t.Errorf("imapProbe accepted %q", bad)
		}
	}
}

func TestSaslauthdProbe(t *testing.T) {
	c := &conv{r: strings.NewReader("\x00\x02NO")}
	reply, err := saslauthdProbe(c)
	if err != nil || reply != "NO" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	// Four counted strings: login, an empty password, service, realm.
	want := "\x00\x14" + probeLogin + "\x00\x00\x00\x06doctor\x00\x00"
	if got := c.written.String(); got != want {
		t.Errorf("request %q, want %q", got, want)
	}
	long := binary.BigEndian.AppendUint16(nil, maxSASLReply+1)
	if _, err := saslauthdProbe(&conv{r: bytes.NewReader(long)}); !errors.Is(err, errProbeTooLong) {
		t.Errorf("oversized reply: %v", err)
	}
	if _, err := saslauthdProbe(&conv{r: strings.NewReader("\x00\x05NO")}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short reply: %v", err)
	}
}

func TestReadNetstringReply(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  error
	}{
		{"7:OK Acme,", "OK Acme", nil},
		{"0:,", "", nil},
		{"8:NOTFOUND,", "NOTFOUND", nil},
		{":x,", "", errProbeSyntax},
		{"2:OKx", "", errProbeSyntax},
		{"1234567:", "", errProbeSyntax},
		{"100001:", "", errProbeTooLong},
		{"5:OK", "", io.ErrUnexpectedEOF},
		{"", "", io.EOF},
	}
	for _, tt := range tests {
		got, err := readNetstringReply(bufio.NewReader(strings.NewReader(tt.in)))
		if !errors.Is(err, tt.wantErr) || got != tt.want {
			t.Errorf("readNetstringReply(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	c := &conv{r: strings.NewReader("7:OK Acme,")}
	status, data, err := socketmapProbe(c, "domain", "example.com")
	if err != nil || status != "OK" || data != "Acme" || c.written.String() != "18:domain example.com," {
		t.Errorf("socketmapProbe = %q %q %v, sent %q", status, data, err, c.written.String())
	}
}

// TestProbeDeadline: a peer that accepts and never speaks costs the probe
// its timeout, not a hang.
func TestProbeDeadline(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		<-done
		c.Close()
	}()
	conn, err := dialProbe("unix:"+sock, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := lmtpProbe(conn, "x"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("silent peer: %v, want a deadline error", err)
	}
}

func TestParseImapdConf(t *testing.T) {
	in := "# comment\n\nconfigdirectory: /var/lib/cyrus\nAdmins: admin cyrus\nsasl_pwcheck_method:saslauthd\n  allowplaintext : yes  \n"
	conf, err := parseImapdConf(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if conf["admins"] != "admin cyrus" || conf["sasl_pwcheck_method"] != "saslauthd" || !imapdBool(conf["allowplaintext"]) {
		t.Errorf("conf = %q", conf)
	}
	if _, err := parseImapdConf(strings.NewReader("no colon here\n")); err == nil {
		t.Error("a line without ':' was accepted")
	}
}

func TestIdentityMay(t *testing.T) {
	cyrus := identity{name: "cyrus", uid: 103, group: "mail", gids: []uint32{8, 45}}
	tests := []struct {
		name      string
		uid, gid  uint32
		mode      uint32
		want      uint32
		wantAllow bool
	}{
		{"other may write", 0, 0, 0o666, permWrite, true},
		{"other may not", 0, 0, 0o660, permWrite, false},
		{"group member", 0, 8, 0o660, permWrite, true},
		{"supplementary group", 0, 45, 0o660, permWrite, true},
		{"owner bits rule for the owner", 103, 8, 0o070, permWrite, false},
		{"search on a 0750 dir of another group", 0, 0, 0o750, permSearch, false},
		{"search on 0711", 0, 0, 0o711, permSearch, true},
	}
	for _, tt := range tests {
		st := &syscall.Stat_t{Uid: tt.uid, Gid: tt.gid, Mode: syscall.S_IFSOCK | tt.mode}
		if got := cyrus.may(st, tt.want); got != tt.wantAllow {
			t.Errorf("%s: may = %v, want %v", tt.name, got, tt.wantAllow)
		}
	}
	if !(identity{uid: 0}).may(&syscall.Stat_t{Mode: 0}, permWrite) {
		t.Error("root was refused")
	}
}

// TestReachSocket walks real directories for a made-up user who owns
// nothing and is in no group of the files.
func TestReachSocket(t *testing.T) {
	// Not t.TempDir: its parent is 0700, which would stop the stranger.
	dir, err := os.MkdirTemp("", "doctor-reach")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if !traversableByOthers(filepath.Dir(dir)) {
		t.Skipf("%s is not traversable by others", filepath.Dir(dir))
	}
	stranger := identity{name: "stranger", uid: 4242424, group: "stranger", gids: []uint32{4242424}}
	sub := filepath.Join(dir, "run")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sub, "mux")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	os.Chmod(sock, 0o666)
	if b := reachSocket(sock, stranger); b != nil {
		t.Errorf("0666 socket in 0755 dirs: blocked at %s", b.describe())
	}
	os.Chmod(sock, 0o600)
	b := reachSocket(sock, stranger)
	if b == nil || !b.socket || b.path != sock {
		t.Fatalf("0600 socket: blocker %+v", b)
	}
	fixes := strings.Join(reachFixes(b, stranger, "saslauthd", "x.socket"), "\n")
	for _, want := range []string{"chgrp stranger " + sock + " && chmod 0660 " + sock, `[saslauthd] socket_mode = "0660"  socket_group = "stranger"`, "SocketGroup=stranger in x.socket"} {
		if !strings.Contains(fixes, want) {
			t.Errorf("fixes lack %q:\n%s", want, fixes)
		}
	}
	os.Chmod(sock, 0o666)
	os.Chmod(sub, 0o700)
	defer os.Chmod(sub, 0o755)
	b = reachSocket(sock, stranger)
	if b == nil || b.socket || b.path != sub {
		t.Fatalf("0700 dir: blocker %+v", b)
	}
	if fixes := reachFixes(b, stranger, "saslauthd", ""); len(fixes) != 1 || !strings.HasPrefix(fixes[0], "chmod o+x "+sub) {
		t.Errorf("dir fixes %q", fixes)
	}
	// Through a symbolic link, the target's directories count too.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(sub, link); err != nil {
		t.Fatal(err)
	}
	if b := reachSocket(filepath.Join(link, "mux"), stranger); b == nil || b.path != sub {
		t.Errorf("via symlink: blocker %+v", b)
	}
	if b := reachSocket(filepath.Join(dir, "gone/mux"), stranger); b == nil || !b.missing {
		t.Errorf("missing dir: blocker %+v", b)
	}
}

func traversableByOthers(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == "/" {
			return true
		}
	}
}

// TestDoctorNoStore: without serve or Cyrus, every check still ends in a
// line, each failure with a fix, and the exit status is 1.
func TestDoctorNoStore(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	text := "[store]\npath = \"" + filepath.Join(dir, "store.db") + "\"\n" +
		"[cyrus]\ndefault_domain = \"example.com\"\nlmtp = \"unix:" + filepath.Join(dir, "no-cyrus.sock") + "\"\n" +
		"imap = \"127.0.0.1:1\"\nmanagesieve = \"127.0.0.1:1\"\n" +
		"[saslauthd]\nlisten = \"unix:" + filepath.Join(dir, "mux") + "\"\n" +
		"[lmtp]\nlisten = [\"unix:" + filepath.Join(dir, "lmtp.sock") + "\"]\n" +
		"[socketmap]\nlisten = [\"unix:" + filepath.Join(dir, "sm.sock") + "\"]\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, cfg, "", "doctor", "-imapd-conf", filepath.Join(dir, "imapd.conf"))
	if err == nil || err.Error() == "" {
		t.Fatalf("doctor passed with nothing running:\n%s", out)
	}
	checkReportGrammar(t, out)
	for _, want := range []string{
		"FAIL  store                 no store at " + filepath.Join(dir, "store.db"),
		"FAIL  imapd.conf",
		"FAIL  saslauthd.serve       nothing answers on unix:" + filepath.Join(dir, "mux"),
		`fix: cyrus.conf SERVICES: lmtpunix cmd="lmtpd" listen="` + filepath.Join(dir, "no-cyrus.sock") + `" prefork=0`,
		`fix: cyrus.conf SERVICES: imap cmd="imapd" listen="127.0.0.1:1" prefork=0`,
		`fix: cyrus.conf SERVICES: sieve cmd="timsieved" listen="127.0.0.1:1" prefork=0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// The JSON report has the same checks.
	jout, _, _ := runCLI(t, cfg, "", "doctor", "-json", "-imapd-conf", filepath.Join(dir, "imapd.conf"))
	if !strings.Contains(jout, `"name": "store"`) || !strings.Contains(jout, `"status": "FAIL"`) {
		t.Errorf("JSON report:\n%s", jout)
	}
}

func TestDoctorBadConfig(t *testing.T) {
	out, _, err := runCLI(t, "testdata/config/bad/integer-duration.toml", "", "doctor")
	if err == nil || !strings.Contains(out, "FAIL  config") || !strings.Contains(out, "serve.shutdown_grace") ||
		!strings.Contains(out, "fix: cyrus-sidecar check-config") {
		t.Errorf("doctor with a bad config: %v\n%s", err, out)
	}
}

// reportLine is the grammar of a report line: a check, a fix, a blank
// line, or the summary.
var reportLineRE = regexp.MustCompile(`^(?:(?:ok  |warn|FAIL)  [a-z][a-z0-9.+-]*\s+\S.*|      fix: \S.*|\d+ ok, \d+ warnings?, \d+ failed|)$`)

func checkReportGrammar(t *testing.T, out string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if !reportLineRE.MatchString(line) {
			t.Errorf("report line does not fit the format: %q", line)
		}
	}
}

// TestDoctorDocExamples: the examples in docs/operations.md have the
// format doctor prints (the integration test compares the healthy one's
// checks with a real run).
func TestDoctorDocExamples(t *testing.T) {
	for _, name := range []string{"doctor-healthy", "doctor-broken"} {
		checkReportGrammar(t, lab.DocSnippet(t, "docs/operations.md", name))
	}
}

// TestDoctorBackup: no line without the backup timer's copy; its age once
// there is one; a warning with what to look at once it is two days old.
func TestDoctorBackup(t *testing.T) {
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	dir := filepath.Dir(cfg)
	out, _, _ := runCLI(t, cfg, "", "doctor", "-imapd-conf", filepath.Join(dir, "imapd.conf"))
	if strings.Contains(out, "backup") {
		t.Errorf("a backup line without a backup:\n%s", out)
	}
	if err := os.Mkdir(filepath.Join(dir, "backup"), 0o750); err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dir, "backup", "store.db")
	mustRun(t, cfg, "", "backup", copyPath)
	out, _, _ = runCLI(t, cfg, "", "doctor", "-imapd-conf", filepath.Join(dir, "imapd.conf"))
	checkReportGrammar(t, out)
	if !regexp.MustCompile(`(?m)^ok    backup +` + regexp.QuoteMeta(copyPath) + `: 0s old, written `).MatchString(out) {
		t.Errorf("fresh backup:\n%s", out)
	}
	old := time.Now().Add(-50 * time.Hour)
	if err := os.Chtimes(copyPath, old, old); err != nil {
		t.Fatal(err)
	}
	out, _, _ = runCLI(t, cfg, "", "doctor", "-imapd-conf", filepath.Join(dir, "imapd.conf"))
	if !regexp.MustCompile(`(?m)^warn  backup +.*: 50h0m0s old, .*: the daily backup has not run$`).MatchString(out) ||
		!strings.Contains(out, "fix: systemctl status cyrus-sidecar-backup.timer") {
		t.Errorf("old backup:\n%s", out)
	}
}
