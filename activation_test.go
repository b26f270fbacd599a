package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// socketActivate starts `systemd-socket-activate -l addr... --fdname=names
// cyrus-sidecar serve -config cfg`: systemd-socket-activate binds addrs and
// execs serve (in its own process, so LISTEN_PID matches) on the first
// connection, passing the socket as fd 3.
func socketActivate(t *testing.T, dir, cfg string, addrs []string, names string) *daemon {
	t.Helper()
	var flags []string
	for _, a := range addrs {
		flags = append(flags, "-l", a)
	}
	return socketActivateFlags(t, dir, cfg, flags, names)
}

// socketActivateFlags is socketActivate with systemd-socket-activate's own
// flags (-d for datagram sockets).
func socketActivateFlags(t *testing.T, dir, cfg string, flags []string, names string) *daemon {
	t.Helper()
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		if os.Getenv("SIDECAR_STRICT") != "" {
			t.Fatalf("SIDECAR_STRICT=1: %v", err)
		}
		t.Skipf("no systemd-socket-activate: %v", err)
	}
	bin := buildBinary(t)
	d := &daemon{logs: make(chan map[string]any, 100)}
	// systemd-socket-activate passes on only PATH, TERM, USER and HOME
	// (and LISTEN_*); the rest goes through -E.
	args := append(flags, "--fdname="+names, "-E", "GORACE=halt_on_error=1", bin, "serve", "-config", cfg)
	cmd := exec.Command(tool, args...)
	cmd.Dir = dir
	cmd.Env = filteredEnv()
	d.run(t, cmd)
	return d
}

// activationConfig has every listening service on a UNIX socket of its own
// in dir, which socket activation must leave unbound.
func activationConfig(t *testing.T, dir string) string {
	t.Helper()
	cfg := filepath.Join(dir, "config.toml")
	text := "[store]\npath = \"" + filepath.Join(dir, "store.db") + "\"\n" +
		"[cyrus]\nlmtp = \"unix:" + filepath.Join(dir, "no-cyrus.sock") + "\"\n" +
		"[saslauthd]\nlisten = \"unix:" + filepath.Join(dir, "own-saslauthd.sock") + "\"\n" +
		"[lmtp]\nlisten = [\"unix:" + filepath.Join(dir, "own-lmtp.sock") + "\"]\n" +
		"[socketmap]\nlisten = [\"unix:" + filepath.Join(dir, "own-socketmap.sock") + "\"]\n" +
		"[vacation]\nenabled = false\n" +
		"[http]\nlisten = \"unix:" + filepath.Join(dir, "http.sock") + "\"\n" +
		"[events]\nenabled = true\n[events.ingest]\nsocket = \"" + filepath.Join(dir, "own-events.sock") + "\"\n" +
		"cyrus_user = \"" + currentUser(t) + "\"\nrelay_socket = \"\"\n[events.reconcile]\nenabled = false\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// dialRetry connects as soon as the socket exists: before serve has
// started, since systemd-socket-activate starts it on this connection.
func dialRetry(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket %s never came up: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopActivated checks the log line naming the socket's origin, that the
// service's own address was not bound, and a clean stop on SIGTERM; more
// checks the log lines that follow the first.
func stopActivated(t *testing.T, d *daemon, dir, service, addr string, more ...func()) {
	t.Helper()
	m := d.waitLog(t, "listening on a socket from systemd")
	if m["service"] != service || m["addr"] != addr {
		t.Errorf("activation log line: %v", m)
	}
	for _, f := range more {
		f()
	}
	d.waitLog(t, "ready")
	if _, err := os.Stat(filepath.Join(dir, "own-"+service+".sock")); !os.IsNotExist(err) {
		t.Errorf("serve bound its configured %s address as well: %v", service, err)
	}
	for _, other := range activationNames {
		if _, err := os.Stat(filepath.Join(dir, "own-"+other+".sock")); other != service && err != nil {
			t.Errorf("%s without a passed socket did not bind its own: %v", other, err)
		}
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitLog(t, "stopped on signal")
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("serve exit after SIGTERM: %v", err)
	}
}

// TestSocketActivationLMTP: a client connects to the LMTP port before serve
// runs and gets the greeting from the passed socket. A second socket under
// a name no service has is closed with a warning.
func TestSocketActivationLMTP(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	stray := filepath.Join(dir, "stray.sock")
	d := socketActivate(t, dir, activationConfig(t, dir), []string{addr, stray}, "lmtp:bogus")
	c := dialRetry(t, "tcp", addr)
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "220 ") {
		t.Fatalf("greeting %q, %v", line, err)
	}
	c.Write([]byte("QUIT\r\n"))
	stopActivated(t, d, dir, "lmtp", addr, func() {
		m := d.waitLog(t, "closing a socket from systemd that no enabled service uses (FileDescriptorName= must be one of saslauthd, lmtp, socketmap, events)")
		if m["name"] != "bogus" || m["addr"] != stray {
			t.Errorf("stray socket line: %v", m)
		}
	})
}

// TestSocketActivationSaslauthd: the same on a UNIX socket: a request sent
// before serve runs gets an answer.
func TestSocketActivationSaslauthd(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "mux")
	d := socketActivate(t, dir, activationConfig(t, dir), []string{sock}, "saslauthd")
	c := dialRetry(t, "unix", sock)
	defer c.Close()
	var req []byte
	for _, f := range []string{"nobody", "secret", "imap", ""} {
		req = binary.BigEndian.AppendUint16(req, uint16(len(f)))
		req = append(req, f...)
	}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var n uint16
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		t.Fatalf("reply: %v", err)
	}
	reply := make([]byte, n)
	if _, err := io.ReadFull(c, reply); err != nil || !strings.HasPrefix(string(reply), "NO") {
		t.Fatalf("reply %q, %v", reply, err)
	}
	stopActivated(t, d, dir, "saslauthd", sock)
	// The socket is systemd's: serve's stop must not remove it.
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("the passed socket is gone after serve stopped: %v", err)
	}
}

// TestWatchdogPingsOnlyWhileCheckPasses: WATCHDOG=1 arrives while the
// self-check passes, stops while it fails (or hangs), and resumes.
func TestWatchdogPingsOnlyWhileCheckPasses(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pings := make(chan string, 1000)
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				return
			}
			pings <- string(buf[:n])
		}
	}()
	const (
		ok = iota
		fail
		hang
	)
	var state atomic.Int32
	check := func(ctx context.Context) error {
		switch state.Load() {
		case fail:
			return io.ErrUnexpectedEOF
		case hang:
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	sd := newNotifier(sock, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { sd.watchdog(ctx, 20*time.Millisecond, check); close(done) }()
	defer func() { cancel(); <-done }()

	expect := func(what string) {
		t.Helper()
		select {
		case p := <-pings:
			if p != "WATCHDOG=1" {
				t.Fatalf("sd_notify %q", p)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no WATCHDOG=1", what)
		}
	}
	silent := func(what string, s int32) {
		t.Helper()
		state.Store(s)
		time.Sleep(50 * time.Millisecond) // a ping decided before the switch may still arrive
		for len(pings) > 0 {
			<-pings
		}
		select {
		case p := <-pings:
			t.Fatalf("%s: got %q", what, p)
		case <-time.After(300 * time.Millisecond):
		}
	}
	expect("check passing")
	expect("check passing")
	silent("check failing", fail)
	state.Store(ok)
	expect("check passing again")
	silent("check hanging", hang)
	state.Store(ok)
	expect("check passing after a hang")
}

// TestServeWatchdog: with WATCHDOG_USEC set, the real serve pings at half
// the interval; with WATCHDOG_PID naming another process it does not.
func TestServeWatchdog(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "200000")
	dir := t.TempDir()
	d := startServe(t, dir)
	m := d.waitLog(t, "watchdog enabled")
	if m["ping_every"] != "100ms" {
		t.Errorf("watchdog line: %v", m)
	}
	d.waitNotify(t, "READY=1")
	start := time.Now()
	d.waitNotify(t, "WATCHDOG=1")
	d.waitNotify(t, "WATCHDOG=1")
	if e := time.Since(start); e > 2*time.Second {
		t.Errorf("two pings took %s", e)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitLog(t, "stopped on signal")
	d.cmd.Wait()

	if got := watchdogInterval(func(k string) string {
		return map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": strconv.Itoa(os.Getpid() + 1)}[k]
	}); got != 0 {
		t.Errorf("WATCHDOG_PID of another process: interval %s", got)
	}
	if got := watchdogInterval(func(k string) string {
		return map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": strconv.Itoa(os.Getpid())}[k]
	}); got != 15*time.Second {
		t.Errorf("WATCHDOG_USEC=30s: interval %s", got)
	}
}

// TestSystemdUnits: systemd-analyze verify finds nothing to say about the
// shipped units (with ExecStart= pointing at the built binary, since
// /usr/sbin/cyrus-sidecar need not exist here), and the service's sandbox
// scores as systemd-analyze security's "OK" band.
func TestSystemdUnits(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("SIDECAR_STRICT") != "" {
			t.Fatalf("SIDECAR_STRICT=1: %v", err)
		}
		t.Skipf("no systemd-analyze: %v", err)
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	units, _ := filepath.Glob("systemd/*.service")
	sockets, err := filepath.Glob("systemd/*.socket")
	units = append(units, sockets...)
	timers, _ := filepath.Glob("systemd/*.timer")
	units = append(units, timers...)
	if err != nil || len(units) != 7 {
		t.Fatalf("units: %v, %v", units, err)
	}
	var names []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if strings.HasSuffix(u, ".service") {
			if !strings.Contains(text, "ExecStart=/usr/sbin/cyrus-sidecar ") {
				t.Fatalf("%s: ExecStart is not /usr/sbin/cyrus-sidecar", u)
			}
			text = strings.ReplaceAll(text, "/usr/sbin/cyrus-sidecar", bin)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(u)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, "./"+filepath.Base(u))
	}
	cmd := exec.Command(tool, append([]string{"verify"}, names...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, u := range []string{"./cyrus-sidecar.service", "./cyrus-sidecar-backup.service"} {
		cmd = exec.Command(tool, "security", "--offline=yes", "--threshold=20", "--no-pager", u)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze security of %s above 2.0: %v\n%s", u, err, out)
		}
	}
}

// TestBackupUnit runs cyrus-sidecar-backup.service's ExecStart line as it
// is, with only the binary, the configuration and the state directory put
// elsewhere: twice, since the timer runs it every day onto the same file.
func TestBackupUnit(t *testing.T) {
	b, err := os.ReadFile("systemd/cyrus-sidecar-backup.service")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for l := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(l, "ExecStart="); ok {
			line = strings.TrimSpace(rest)
		}
	}
	cfg := testEnv(t)
	dir := filepath.Dir(cfg)
	mustRun(t, cfg, "", "org", "add", "Acme")
	args := strings.Fields(line)
	if len(args) < 2 || args[0] != "/usr/sbin/cyrus-sidecar" {
		t.Fatalf("ExecStart=%s", line)
	}
	for i, a := range args {
		a = strings.ReplaceAll(a, "/etc/cyrus-sidecar/config.toml", cfg)
		args[i] = strings.ReplaceAll(a, "/var/lib/cyrus-sidecar", dir)
	}
	if err := os.Mkdir(filepath.Join(dir, "backup"), 0o750); err != nil { // StateDirectory= makes it
		t.Fatal(err)
	}
	for range 2 {
		out, errOut, err := runCLI(t, "", "", args[1:]...)
		if err != nil || !strings.Contains(out, "wrote "+filepath.Join(dir, "backup", "store.db")) {
			t.Fatalf("%v: %v\n%s%s", args, err, out, errOut)
		}
	}
}

// currentUser is the name of the user running the test (the events
// service takes datagrams from one user only).
func currentUser(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

// TestSocketActivationEvents: the events service takes Cyrus's notify
// socket from systemd (ListenDatagram=, as cyrus-sidecar-events.socket)
// instead of binding its own, and reads the events sent to it.
func TestSocketActivationEvents(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	cfg := activationConfig(t, dir)
	text, _ := os.ReadFile(cfg)
	msock := filepath.Join(dir, "http.sock")
	os.WriteFile(cfg, append(text, "[metrics]\nenabled = true\n"...), 0o644)
	d := socketActivateFlags(t, dir, cfg, []string{"-d", "-l", sock}, "events")
	datagram, err := os.ReadFile("services/events/testdata/datagrams/event-messagenew.bin")
	if err != nil {
		t.Fatal(err)
	}
	send := func() {
		t.Helper()
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(datagram); err != nil {
			t.Fatal(err)
		}
	}
	// systemd-socket-activate starts serve on the first datagram. That one
	// carries no sender credentials (SO_PASSCRED was not on when it was
	// sent; the unit's PassCredentials=yes is) and is dropped; the next
	// one is read.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	send()
	m := d.waitLog(t, "receiving on a socket from systemd")
	if m["service"] != "events" || m["addr"] != sock {
		t.Errorf("activation log line: %v", m)
	}
	d.waitLog(t, "ready")
	if _, err := os.Stat(filepath.Join(dir, "own-events.sock")); !os.IsNotExist(err) {
		t.Errorf("serve bound its configured events socket as well: %v", err)
	}
	send()
	for {
		page := scrape(t, msock)
		if strings.Contains(page, "\ncyrus_sidecar_events_received_total 1\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the datagram sent after the start was not received:\n%s", page)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitLog(t, "stopped on signal")
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("serve exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("the passed socket is gone after serve stopped: %v", err)
	}
}
