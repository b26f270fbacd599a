package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// eximRunTimeout bounds one exim4 -bhc session; each callout has its
	// own 5 s limit in EximCalloutConfig.
	eximRunTimeout = 60 * time.Second
	// eximReadyTimeout bounds StartDaemon's wait for the greeting.
	eximReadyTimeout = 20 * time.Second
	// eximStopGrace bounds the wait for the daemon and its deliveries.
	eximStopGrace = 10 * time.Second
)

// EximCalloutConfig is an Exim configuration for NewExim: local domain
// example.com; RCPT is verified by an LMTP callout to 127.0.0.1:LMTP_PORT
// (`require verify = recipient/callout=5s,defer_ok,no_cache`: a 5xx from the
// LMTP server rejects, a 4xx or no answer accepts, nothing is cached so
// changes show at once); mail for example.com is delivered over LMTP to the
// same port; other domains get "550 relay not permitted"; no STARTTLS.
// Set the macro LMTP_PORT, e.g. Macros: {"LMTP_PORT": port of
// Cyrus.LMTPAddr, which is `lmtpd -a`}. Facts §6.
const EximCalloutConfig = `
LMTP_PORT = 24

primary_hostname = exim.lab.localhost
qualify_domain = example.com
domainlist local_domains = example.com
acl_smtp_rcpt = acl_check_rcpt
tls_advertise_hosts =

begin acl

acl_check_rcpt:
  deny    message = relay not permitted
          !domains = +local_domains
  require verify = recipient/callout=5s,defer_ok,no_cache
  accept

begin routers

cyrus_lmtp:
  driver = accept
  domains = +local_domains
  transport = cyrus_ltcp

begin transports

cyrus_ltcp:
  driver = smtp
  protocol = lmtp
  hosts = 127.0.0.1
  port = LMTP_PORT
  allow_localhost
`

// EximOptions configure NewExim.
type EximOptions struct {
	Conf   string            // full configuration text, e.g. EximCalloutConfig; must not set the options NewExim sets (Exim rejects an option set twice)
	Macros map[string]string // passed as -DNAME=value on every run, overriding the file's definitions
}

// Exim is an Exim configuration in its own lab directory, with helpers to
// run exim4 -bhc sessions and a daemon against it. exim4 runs as root; with
// -C it drops privilege when it re-executes itself for deliveries, so the
// spool and log belong to the Exim user (facts §6).
type Exim struct {
	Dir, ConfPath string
	Port          int // daemon's SMTP port on 127.0.0.1, after StartDaemon

	bin    string
	macros []string // -D arguments, sorted
	daemon *proc
}

// NewExim writes <lab>/exim/exim.conf: spool_directory, log_file_path,
// pid_file_path and local_interfaces (loopback only) pointing into the lab,
// then opts.Conf.
func NewExim(t testing.TB, opts EximOptions) *Exim {
	t.Helper()
	requireRoot(t, "exim4 -C")
	bin := Tool(t, "SIDECAR_EXIM", "exim4", "/usr/sbin")
	owner := eximIDs(t)
	dir := newLabDir(t, "ex")
	e := &Exim{Dir: filepath.Join(dir, "exim"), bin: bin}
	e.ConfPath = filepath.Join(e.Dir, "exim.conf")
	mkdirs(t, dir, 0o755, ids{0, 0}, "exim")
	mkdirs(t, dir, 0o750, owner, "exim/spool", "exim/log")
	for _, k := range slices.Sorted(maps.Keys(opts.Macros)) {
		e.macros = append(e.macros, "-D"+k+"="+opts.Macros[k])
	}
	conf := fmt.Sprintf(`# written by cyrus-sidecar/e2e/lab.NewExim
spool_directory = %[1]s/spool
log_file_path = %[1]s/log/%%slog
pid_file_path = %[1]s/exim.pid
local_interfaces = <; 127.0.0.1
keep_environment =

`, e.Dir)
	writeFile(t, e.ConfPath, conf+opts.Conf, 0o644)
	return e
}

// eximIDs finds the user Exim drops to: Debian-exim on Debian, exim elsewhere.
func eximIDs(t testing.TB) ids {
	t.Helper()
	for _, name := range []string{"Debian-exim", "exim"} {
		if u, err := userLookup(name); err == nil {
			return u
		}
	}
	missingPeer(t, "no Exim user (Debian-exim or exim)")
	return ids{}
}

// args returns exim4's arguments: -C, the macros, then rest.
func (e *Exim) args(rest ...string) []string {
	return append(append([]string{"-C", e.ConfPath}, e.macros...), rest...)
}

// BHC runs an SMTP session as if from 127.0.0.1 (`exim4 -bhc 127.0.0.1`:
// -bh without c skips callouts, facts pitfall 9) with script on stdin and
// returns exim's whole output, stdout and stderr interleaved. Lines of script
// may end in LF or CRLF.
func (e *Exim) BHC(t testing.TB, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), eximRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, e.args("-bhc", "127.0.0.1")...)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("exim4 -bhc: %v\n%s", ctx.Err(), out)
	}
	if _, ok := errors.AsType[*exec.ExitError](err); err != nil && !ok {
		t.Fatalf("exim4 -bhc: %v", err)
	}
	// A non-zero exit only says that something was rejected; the output
	// says what.
	return string(out)
}

// SMTPReplies extracts the SMTP replies from exim's -bh/-bhc output,
// dropping debug (">>>"), LOG and banner lines. A multi-line reply is one
// element, its lines joined by "\n": "550-Callout verification failed:\n550 ...".
func SMTPReplies(out string) []string {
	var replies []string
	var cur []string
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || !isDigits(line[:3]) || (line[3] != ' ' && line[3] != '-') {
			continue
		}
		cur = append(cur, line)
		if line[3] == ' ' {
			replies = append(replies, strings.Join(cur, "\n"))
			cur = nil
		}
	}
	return replies
}

func isDigits(s string) bool {
	return strings.Trim(s, "0123456789") == ""
}

// StartDaemon runs `exim4 -bdf -q1m` (-bdf: the daemon stays in the
// foreground as our child) on a free port on 127.0.0.1 and returns once it
// greets. It is stopped with its deliveries at cleanup; if the test failed,
// the tails of Exim's main and panic logs are logged first.
func (e *Exim) StartDaemon(t testing.TB) {
	t.Helper()
	if e.daemon != nil {
		t.Fatalf("exim daemon already started")
	}
	e.Port = freePorts(t, 1)[0]
	cmd := exec.Command(e.bin, e.args("-bdf", "-q1m", "-oX", strconv.Itoa(e.Port))...)
	cmd.Dir = e.Dir
	e.daemon = startProc(t, "exim daemon", cmd, filepath.Join(e.Dir, "log/daemon.out"))
	t.Cleanup(func() {
		err := e.daemon.stop(eximStopGrace)
		if err != nil || t.Failed() {
			e.dump(t)
		}
		if err != nil {
			t.Errorf("stop exim: %v", err)
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(e.Port))
	deadline := time.Now().Add(eximReadyTimeout)
	var err error
	for time.Now().Before(deadline) {
		if e.daemon.exited() {
			t.Fatalf("exim daemon exited during start (%v)\n%s", e.daemon.err, e.logs())
		}
		if err = greets(addr, "220 "); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("exim daemon not ready on %s within %v: %v\n%s", addr, eximReadyTimeout, err, e.logs())
}

// MainLog returns Exim's main log so far.
func (e *Exim) MainLog() string {
	return tail(filepath.Join(e.Dir, "log/mainlog"), 1<<20)
}

func (e *Exim) logs() string {
	return "mainlog:\n" + tail(filepath.Join(e.Dir, "log/mainlog"), 40) +
		"\npaniclog:\n" + tail(filepath.Join(e.Dir, "log/paniclog"), 20) +
		"\ndaemon output:\n" + tail(filepath.Join(e.Dir, "log/daemon.out"), 20)
}

func (e *Exim) dump(t testing.TB) {
	t.Helper()
	t.Logf("exim lab %s:\n%s", e.Dir, e.logs())
}

// greets connects to a TCP address and checks the first line's prefix.
func greets(addr, prefix string) error {
	const timeout = 2 * time.Second
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(timeout)) // fresh conn
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, prefix) {
		return fmt.Errorf("greeting %q", line)
	}
	_, _ = io.WriteString(conn, "QUIT\r\n") // spares the log a "lost connection"; best effort
	return nil
}
