package lab

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// cyrusBinDir is where Debian installs master and the services.
	cyrusBinDir = "/usr/lib/cyrus/bin"
	// cyrusReadyTimeout bounds StartCyrus's wait for the services; a cold
	// start takes well under a second.
	cyrusReadyTimeout = 20 * time.Second
	// cyrusStopGrace bounds the wait for master and its children after
	// SIGTERM.
	cyrusStopGrace = 10 * time.Second
	// cyrusAdmin is the admins: entry in imapd.conf.
	cyrusAdmin = "admin"
)

// CyrusOptions configure StartCyrus. The zero value is usable.
type CyrusOptions struct {
	DefaultDomain string            // default "example.com"
	SASLSocket    string            // saslauthd socket for Cyrus; "" = the lab runs its own small responder on <lab>/sasl/mux that accepts Users
	Users         map[string]string // login -> password for the lab's own responder (the admin is always added); a login without @ is in DefaultDomain
	Conf          map[string]string // extra/overriding imapd.conf keys (e.g. "sendmail", "lmtp_over_quota_perm_failure")
	AdminPassword string            // "" = random; set it when SASLSocket's responder must know it
	// CardDAV runs Cyrus's httpd with the CardDAV module (httpmodules:
	// carddav) on Cyrus.HTTPAddr. Sieve's extlists (":addrbook:Default")
	// compiles only then, and looks senders up in the address books
	// AddContact fills. Needs httpd (Debian's cyrus-caldav).
	CardDAV bool
}

// Cyrus is a running throwaway Cyrus instance.
type Cyrus struct {
	Dir, ConfPath                       string
	IMAPAddr, LMTPAddr, SieveAddr       string // 127.0.0.1:port; LMTPAddr is `lmtpd -a` on TCP
	HTTPAddr                            string // 127.0.0.1:port of httpd (CardDAV); "" without CyrusOptions.CardDAV
	LMTPSocket, SmmapSocket             string // UNIX sockets served by lmtpd and smmapd
	NotifySocket                        string // imapd.conf notifysocket; nothing serves it unless a test does
	SASLSocket                          string // where Cyrus asks saslauthd
	Admin, AdminPassword, DefaultDomain string

	master  *proc
	stopped bool
	sasl    *saslResponder // nil with CyrusOptions.SASLSocket
	syslog  *syslogCatcher
	prefix  string // syslog_prefix, marks this instance's syslog lines
}

// StartCyrus starts Cyrus's master in a new lab directory and returns once
// IMAP, both LMTP listeners, ManageSieve and smmapd (and httpd with
// CyrusOptions.CardDAV) answer. At cleanup it stops master (SIGTERM,
// waited, with its children), the responder and the syslog catcher and
// removes the directory; if the test failed it first logs the tail of
// master's output and this instance's syslog lines.
func StartCyrus(t testing.TB, opts CyrusOptions) *Cyrus {
	t.Helper()
	requireRoot(t, "cyrus master")
	// "master" in PATH may well be another program (postfix has one too),
	// so Debian's place comes first.
	master := filepath.Join(cyrusBinDir, "master")
	if os.Getenv("SIDECAR_CYRUS_MASTER") != "" || !isExecutable(master) {
		master = Tool(t, "SIDECAR_CYRUS_MASTER", "master", cyrusBinDir)
	}
	bin := filepath.Dir(master)
	services := []string{"imapd", "lmtpd", "timsieved", "smmapd", "ctl_cyrusdb"}
	if opts.CardDAV {
		services = append(services, "httpd") // Debian: package cyrus-caldav
	}
	for _, name := range services {
		if !isExecutable(filepath.Join(bin, name)) {
			missingPeer(t, "cyrus %s not found next to %s", name, master)
		}
	}
	cy := lookupIDs(t, "cyrus", "mail")

	dir := newLabDir(t, "cl")
	c := &Cyrus{
		Dir:           dir,
		ConfPath:      filepath.Join(dir, "etc/imapd.conf"),
		LMTPSocket:    filepath.Join(dir, "cyrus/socket/lmtp"),
		SmmapSocket:   filepath.Join(dir, "cyrus/socket/smmapd"),
		NotifySocket:  filepath.Join(dir, "cyrus/socket/notify"),
		SASLSocket:    opts.SASLSocket,
		Admin:         cyrusAdmin,
		AdminPassword: opts.AdminPassword,
		DefaultDomain: opts.DefaultDomain,
		prefix:        filepath.Base(dir),
	}
	if c.DefaultDomain == "" {
		c.DefaultDomain = "example.com"
	}
	if c.AdminPassword == "" {
		c.AdminPassword = rand.Text()
	}
	nPorts := 3
	if opts.CardDAV {
		nPorts++
	}
	ports := freePorts(t, nPorts)
	c.IMAPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	c.LMTPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	c.SieveAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2]))
	if opts.CardDAV {
		c.HTTPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3]))
	}

	// Facts §2 and pitfall 2: Debian's makedirs only knows /etc/imapd.conf.
	root := ids{0, 0}
	mkdirs(t, dir, 0o755, root, "etc", "run", "log", "sasl", "bin")
	mkdirs(t, dir, 0o755, cy, "cyrus", "cyrus/sieve", "cyrus/socket", "sendmail")
	mkdirs(t, dir, 0o750, cy, "cyrus/config", "cyrus/spool")
	for _, sub := range []string{"db", "proc", "socket", "log", "msg", "user", "quota", "lock"} {
		mkdirs(t, dir, 0o750, cy, "cyrus/config/"+sub)
	}

	c.syslog = startSyslog(t, dir)
	t.Cleanup(c.syslog.stop)
	if c.SASLSocket == "" {
		c.SASLSocket = filepath.Join(dir, "sasl/mux")
		users := maps.Clone(opts.Users)
		if users == nil {
			users = make(map[string]string)
		}
		users[c.Admin] = c.AdminPassword
		c.sasl = startSASL(t, c.SASLSocket, c.DefaultDomain, users)
		t.Cleanup(c.sasl.stop)
	}

	sendmail := filepath.Join(dir, "bin/sendmail")
	writeFile(t, sendmail, captureSendmail(filepath.Join(dir, "sendmail")), 0o755)
	writeFile(t, c.ConfPath, c.imapdConf(opts.Conf, sendmail), 0o644)
	cyrusConf := filepath.Join(dir, "etc/cyrus.conf")
	writeFile(t, cyrusConf, c.cyrusConf(bin), 0o644)

	// No -d: master stays in the foreground as our child (-d would
	// daemonize it); -L sends its stdout and stderr to a file once it has
	// parsed its arguments, startProc before. Cyrus logs through syslog.
	cmd := exec.Command(master, "-C", c.ConfPath, "-M", cyrusConf,
		"-p", filepath.Join(dir, "run/master.pid"), "-L", c.masterLog())
	cmd.Dir = dir
	c.master = startProc(t, "cyrus master", cmd, c.masterLog())
	// 3.6.1's master, in shutdown, still selects on listeners but never
	// accepts, and pselect(2) returns at once for a queued connection, so a
	// pending SIGCHLD is never delivered: master spins at full CPU, its
	// children exited but unreaped. Seen when a connection was queued on
	// smmapd's socket at SIGTERM (master/master.c, main loop). Once master
	// is alone it has nothing left to do, so it is killed.
	c.master.aloneGrace = time.Second
	t.Cleanup(func() {
		c.Stop(t)
		if t.Failed() {
			c.dump(t)
		}
	})
	c.waitReady(t)
	return c
}

// Stop stops master and all its services (SIGTERM, waited for), for tests
// of a peer's behaviour while Cyrus is down; cleanup does it otherwise.
// The directory and the saslauthd responder stay until cleanup. Calling it
// again does nothing.
func (c *Cyrus) Stop(t testing.TB) {
	t.Helper()
	if c.stopped {
		return
	}
	c.stopped = true
	if err := c.master.stop(cyrusStopGrace); err != nil {
		t.Errorf("stop cyrus: %v", err)
	}
}

// SASLRequests returns what the lab's saslauthd responder has received so
// far (never passwords); nil when Cyrus uses CyrusOptions.SASLSocket.
func (c *Cyrus) SASLRequests() []SASLRequest {
	if c.sasl == nil {
		return nil
	}
	return c.sasl.requests()
}

// Mailbox returns the IMAP name of user's INBOX as the admin creates it:
// user/<local>@<domain>, the domain defaulting to DefaultDomain. (LIST shows
// mailboxes in the default domain without it: user/alice.)
func (c *Cyrus) Mailbox(user string) string {
	if !strings.Contains(user, "@") {
		user += "@" + c.DefaultDomain
	}
	return "user/" + user
}

// AdminIMAP returns an IMAP connection logged in as the admin, closed at
// cleanup.
func (c *Cyrus) AdminIMAP(t testing.TB) *IMAPClient {
	t.Helper()
	cl := DialIMAP(t, c.IMAPAddr)
	cl.Login(t, c.Admin, c.AdminPassword)
	return cl
}

// CreateMailbox creates user's INBOX as the admin over IMAP.
func (c *Cyrus) CreateMailbox(t testing.TB, user string) {
	t.Helper()
	cl := c.AdminIMAP(t)
	if r := cl.Cmd(t, "CREATE "+IMAPQuote(c.Mailbox(user))); !r.OK() {
		t.Fatalf("imap CREATE %s: %s", c.Mailbox(user), r)
	}
	cl.Logout(t)
}

// SetQuota sets user's storage quota in KiB as the admin over IMAP
// (RFC 2087 SETQUOTA on the user's quota root).
func (c *Cyrus) SetQuota(t testing.TB, user string, storageKiB int) {
	t.Helper()
	cl := c.AdminIMAP(t)
	cmd := fmt.Sprintf("SETQUOTA %s (STORAGE %d)", IMAPQuote(c.Mailbox(user)), storageKiB)
	if r := cl.Cmd(t, cmd); !r.OK() {
		t.Fatalf("imap %s: %s", cmd, r)
	}
	cl.Logout(t)
}

// Messages logs in as user, selects INBOX and returns every message's exact
// bytes (FETCH 1:* BODY.PEEK[]), in order. Cyrus stores messages with CRLF
// line ends.
func (c *Cyrus) Messages(t testing.TB, user, password string) [][]byte {
	t.Helper()
	cl := DialIMAP(t, c.IMAPAddr)
	defer cl.Close()
	cl.Login(t, user, password)
	r := cl.Cmd(t, "SELECT INBOX")
	if !r.OK() {
		t.Fatalf("imap SELECT INBOX as %s: %s", user, r)
	}
	exists := 0
	for _, u := range r.Untagged {
		if n, ok := strings.CutSuffix(u.Text, " EXISTS"); ok {
			exists, _ = strconv.Atoi(n) // a malformed count reads as empty
		}
	}
	if exists == 0 {
		return nil
	}
	r = cl.Cmd(t, "FETCH 1:* (BODY.PEEK[])")
	if !r.OK() {
		t.Fatalf("imap FETCH as %s: %s", user, r)
	}
	var msgs [][]byte
	for _, u := range r.Untagged {
		// "n FETCH (BODY[] {size}" CRLF bytes ")"; FLAGS-only updates
		// carry no literal.
		if strings.Contains(u.Text, " FETCH ") && len(u.Literals) == 1 {
			msgs = append(msgs, u.Literals[0])
		}
	}
	return msgs
}

// imapdConf renders imapd.conf (facts §2) with overrides applied.
func (c *Cyrus) imapdConf(overrides map[string]string, sendmail string) string {
	d := c.Dir
	conf := map[string]string{
		"configdirectory":              d + "/cyrus/config",
		"defaultpartition":             "default",
		"partition-default":            d + "/cyrus/spool",
		"sievedir":                     d + "/cyrus/sieve",
		"sieveusehomedir":              "false",
		"lmtpsocket":                   c.LMTPSocket,
		"idlesocket":                   d + "/cyrus/socket/idle",
		"notifysocket":                 c.NotifySocket,
		"servername":                   "cyruslab.localhost",
		"admins":                       c.Admin,
		"sasl_pwcheck_method":          "saslauthd",
		"sasl_saslauthd_path":          c.SASLSocket,
		"sasl_mech_list":               "PLAIN LOGIN",
		"allowplaintext":               "yes",
		"virtdomains":                  "userid",
		"defaultdomain":                c.DefaultDomain,
		"unixhierarchysep":             "yes",
		"altnamespace":                 "no",
		"hashimapspool":                "true",
		"lmtp_downcase_rcpt":           "yes",
		"lmtp_over_quota_perm_failure": "no",
		"autocreate_post":              "no",
		"autocreate_quota":             "-1",
		"sendmail":                     sendmail, // never the system's (Exim's) sendmail
		"postmaster":                   "postmaster",
		"syslog_prefix":                c.prefix,
	}
	if c.HTTPAddr != "" {
		// http_carddav.c: the module, and with it Sieve's extlists
		// (sieve/interp.c), is on only when listed here. Basic auth over
		// plain HTTP comes with allowplaintext (httpd.c); the address
		// books live under addressbookprefix, default "#addressbooks".
		conf["httpmodules"] = "carddav"
	}
	maps.Copy(conf, overrides)
	var b strings.Builder
	b.WriteString("# written by cyrus-sidecar/e2e/lab.StartCyrus\n")
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		fmt.Fprintf(&b, "%s: %s\n", k, conf[k])
	}
	return b.String()
}

// cyrusConf renders cyrus.conf. master does not pass its -C on to the
// commands it runs (facts, pitfall 1), so every cmd= carries its own.
func (c *Cyrus) cyrusConf(bin string) string {
	cmd := func(name string, args ...string) string {
		return strings.Join(append([]string{filepath.Join(bin, name), "-C", c.ConfPath}, args...), " ")
	}
	http := ""
	if c.HTTPAddr != "" {
		http = fmt.Sprintf("  http       cmd=\"%s\" listen=\"%s\" prefork=0\n", cmd("httpd"), c.HTTPAddr)
	}
	return fmt.Sprintf(`# written by cyrus-sidecar/e2e/lab.StartCyrus
START {
  recover    cmd="%s"
}
SERVICES {
  imap       cmd="%s" listen="%s" prefork=0
  lmtpunix   cmd="%s" listen="%s" prefork=0
  lmtp       cmd="%s" listen="%s" prefork=0
  sieve      cmd="%s" listen="%s" prefork=0
  smmap      cmd="%s" listen="%s" prefork=0
%s}
EVENTS {
  checkpoint cmd="%s" period=30
}
`,
		cmd("ctl_cyrusdb", "-r"),
		cmd("imapd"), c.IMAPAddr,
		cmd("lmtpd"), c.LMTPSocket,
		cmd("lmtpd", "-a"), c.LMTPAddr, // -a: pre-authorised, as Exim needs (facts §4)
		cmd("timsieved"), c.SieveAddr,
		cmd("smmapd"), c.SmmapSocket, http,
		cmd("ctl_cyrusdb", "-c"),
	)
}

func (c *Cyrus) masterLog() string { return filepath.Join(c.Dir, "log/master.out") }

// waitReady polls until every service greets, master dies or the deadline
// passes. master runs START (recover) before it binds the services.
func (c *Cyrus) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(cyrusReadyTimeout)
	var err error
	for time.Now().Before(deadline) {
		if c.master.exited() {
			t.Fatalf("cyrus master exited during start (%v)\nmaster output:\n%s\nsyslog:\n%s",
				c.master.err, tail(c.masterLog(), 40), c.syslog.lines())
		}
		if err = c.probe(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("cyrus not ready within %v: %v\nmaster output:\n%s\nsyslog:\n%s",
		cyrusReadyTimeout, err, tail(c.masterLog(), 40), c.syslog.lines())
}

// probe checks each service once.
func (c *Cyrus) probe() error {
	const timeout = 2 * time.Second
	cl, err := dialIMAP(c.IMAPAddr, timeout)
	if err != nil {
		return fmt.Errorf("imap: %w", err)
	}
	cl.Close()
	// Every probe waits for an answer, so that the service has accepted the
	// connection: a connection still queued on a listener when master gets
	// SIGTERM makes 3.6.1's master spin (see aloneGrace in StartCyrus).
	type check struct {
		name, network, addr, send, want string
		end                             byte
	}
	checks := []check{
		{"lmtp socket", "unix", c.LMTPSocket, "", "220 ", '\n'},
		{"lmtp tcp", "tcp", c.LMTPAddr, "", "220 ", '\n'},
		{"sieve", "tcp", c.SieveAddr, "", `"IMPLEMENTATION"`, '\n'},
		// smmapd speaks when asked: netstring "<map> <key>" (facts §7).
		{"smmap", "unix", c.SmmapSocket, "15:lab probe@probe,", "NOTFOUND", ','},
	}
	if c.HTTPAddr != "" {
		// Any status line will do: httpd is up and parsing requests.
		checks = append(checks, check{"http", "tcp", c.HTTPAddr,
			"OPTIONS * HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n", "HTTP/1.1 ", '\n'})
	}
	for _, a := range checks {
		conn, err := net.DialTimeout(a.network, a.addr, timeout)
		if err != nil {
			return fmt.Errorf("%s: %w", a.name, err)
		}
		_ = conn.SetDeadline(time.Now().Add(timeout)) // fresh conn
		if a.send != "" {
			_, err = io.WriteString(conn, a.send)
		}
		var line string
		if err == nil {
			line, err = bufio.NewReader(conn).ReadString(a.end)
		}
		conn.Close()
		if err == nil && !strings.Contains(line, a.want) {
			err = fmt.Errorf("answer %q", line)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", a.name, err)
		}
	}
	return nil
}

// dump logs master's output and this instance's syslog lines.
func (c *Cyrus) dump(t testing.TB) {
	t.Helper()
	t.Logf("cyrus lab %s: master output:\n%s", c.Dir, tail(c.masterLog(), 40))
	t.Logf("cyrus lab %s: syslog:\n%s", c.Dir, c.syslog.lines())
}
