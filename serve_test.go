package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// daemon is a running `cyrus-sidecar serve` whose JSON log lines and
// sd_notify messages the test reads.
type daemon struct {
	cmd    *exec.Cmd
	logs   chan map[string]any
	notify chan string
}

func startServe(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	bin := buildBinary(t)
	sock := filepath.Join(dir, "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	d := &daemon{logs: make(chan map[string]any, 100), notify: make(chan string, 100)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				return
			}
			d.notify <- string(buf[:n])
		}
	}()
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(filteredEnv(), "NOTIFY_SOCKET="+sock)
	d.run(t, cmd)
	return d
}

// run starts cmd as the daemon and feeds its JSON log lines (stderr) to
// d.logs; it is killed at cleanup if still running.
func (d *daemon) run(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	d.cmd = cmd
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"msg": "unparsed: " + sc.Text()}
			}
			d.logs <- m
		}
		close(d.logs)
	}()
}

// filteredEnv drops settings that would change serve's defaults.
func filteredEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STATE_DIRECTORY=") && !strings.HasPrefix(kv, "RUNTIME_DIRECTORY=") &&
			!strings.HasPrefix(kv, "CYRUS_SIDECAR_CONFIG=") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			out = append(out, kv)
		}
	}
	return out
}

// waitLog returns the first log line with msg, failing after 10 s.
func (d *daemon) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-d.logs:
			if !ok {
				t.Fatalf("serve exited before logging %q", msg)
			}
			if m["msg"] == msg {
				return m
			}
		case <-deadline:
			t.Fatalf("no %q log line within 10s", msg)
		}
	}
}

func (d *daemon) waitNotify(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-d.notify:
			if strings.HasPrefix(s, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no sd_notify %q within 10s", want)
		}
	}
}

// TestServeDefaults is the README's first command: serve with no config file
// at all, state under ./var, clean stop on SIGTERM.
func TestServeDefaults(t *testing.T) {
	dir := t.TempDir()
	d := startServe(t, dir)
	m := d.waitLog(t, "starting")
	if m["store"] != filepath.Join(dir, "var", "store.db") || m["runtime_dir"] != filepath.Join(dir, "var", "run") ||
		m["config"] != "built-in defaults" {
		t.Errorf("starting line: %v", m)
	}
	d.waitLog(t, "ready")
	d.waitNotify(t, "READY=1")
	if _, err := os.Stat(filepath.Join(dir, "var", "store.db")); err != nil {
		t.Errorf("store not created: %v", err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitLog(t, "stopped on signal")
	d.waitNotify(t, "STOPPING=1")
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("serve exit after SIGTERM: %v", err)
	}
}

// TestServeReload: SIGHUP applies a good file and keeps the running
// configuration when the file is bad.
func TestServeReload(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	good := "[store]\npath = \"" + filepath.Join(dir, "store.db") + "\"\n[log]\nlevel = \"info\"\n"
	os.WriteFile(cfg, []byte(good), 0o644)
	d := startServe(t, dir, "-config", cfg)
	d.waitLog(t, "ready")
	d.waitNotify(t, "READY=1")

	os.WriteFile(cfg, []byte("[log]\nlevel = 7\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	m := d.waitLog(t, "reload failed, keeping the running configuration")
	if !strings.Contains(m["err"].(string), "log.level: must be a string") {
		t.Errorf("reload error: %v", m["err"])
	}
	d.waitNotify(t, "RELOADING=1")
	d.waitNotify(t, "READY=1")

	os.WriteFile(cfg, []byte(strings.Replace(good, "info", "debug", 1)+"[cyrus]\ndefault_domain = \"example.org\"\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	m = d.waitLog(t, "restart required for a changed setting")
	if m["key"] != "cyrus.default_domain" {
		t.Errorf("restart warning for %v", m["key"])
	}
	d.waitLog(t, "configuration reloaded")

	d.cmd.Process.Signal(syscall.SIGINT)
	d.waitLog(t, "stopped on signal")
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("serve exit after SIGINT: %v", err)
	}
}

func TestServeBadConfigFailsStart(t *testing.T) {
	bin := buildBinary(t)
	out, err := exec.Command(bin, "serve", "-config", "testdata/config/bad/integer-duration.toml").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "serve.shutdown_grace: must be a duration string") {
		t.Errorf("serve with a bad config: %v\n%s", err, out)
	}
}

// TestReloadKeepsConnections: a SIGHUP applies a renamed socketmap map to
// a connection that was open before it, and an LMTP session open across
// the reload goes on; neither is dropped.
func TestReloadKeepsConnections(t *testing.T) {
	dir := t.TempDir()
	smap, lsock := filepath.Join(dir, "socketmap.sock"), filepath.Join(dir, "lmtp.sock")
	cfg := filepath.Join(dir, "config.toml")
	base := "[store]\npath = \"" + filepath.Join(dir, "store.db") + "\"\n" +
		"[cyrus]\nlmtp = \"unix:" + filepath.Join(dir, "no-cyrus.sock") + "\"\n" +
		"[saslauthd]\nlisten = \"unix:" + filepath.Join(dir, "sasl.sock") + "\"\n" +
		"[lmtp]\nlisten = [\"unix:" + lsock + "\"]\n" +
		"[vacation]\nenabled = false\n" +
		"[socketmap]\nlisten = [\"unix:" + smap + "\"]\n"
	if err := os.WriteFile(cfg, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startServe(t, dir, "-config", cfg)
	d.waitLog(t, "ready")

	sm, err := net.Dial("unix", smap)
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	sm.SetDeadline(time.Now().Add(30 * time.Second))
	smr := bufio.NewReader(sm)
	askMap := func(req string) string {
		t.Helper()
		fmt.Fprintf(sm, "%d:%s,", len(req), req)
		reply, err := smr.ReadString(',')
		if err != nil {
			t.Fatalf("socketmap %q: %v", req, err)
		}
		return reply
	}
	if r := askMap("hosted example.org"); !strings.Contains(r, "PERM unknown map") {
		t.Fatalf("before the reload: %q", r)
	}

	lc, err := net.Dial("unix", lsock)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	lc.SetDeadline(time.Now().Add(30 * time.Second))
	lr := bufio.NewReader(lc)
	lmtpReply := func(cmd string) string {
		t.Helper()
		if cmd != "" {
			io.WriteString(lc, cmd+"\r\n")
		}
		var last string
		for {
			line, err := lr.ReadString('\n')
			if err != nil {
				t.Fatalf("LMTP %q: %v", cmd, err)
			}
			if len(line) < 4 || line[3] != '-' {
				last = line
				break
			}
		}
		return last
	}
	lmtpReply("") // greeting
	if r := lmtpReply("LHLO test"); !strings.HasPrefix(r, "250") {
		t.Fatalf("LHLO: %q", r)
	}

	next := base + "[socketmap.maps]\ndomain = \"hosted\"\n[log]\nlevel = \"debug\"\n"
	if err := os.WriteFile(cfg, []byte(next), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "configuration reloaded")

	if r := askMap("hosted example.org"); !strings.Contains(r, "NOTFOUND") {
		t.Errorf("after the reload, on the same connection: %q", r)
	}
	if r := lmtpReply("MAIL FROM:<a@example.net>"); !strings.HasPrefix(r, "250") {
		t.Errorf("MAIL after the reload: %q", r)
	}
	if r := lmtpReply("RCPT TO:<b@example.org>"); !strings.HasPrefix(r, "550 5.7.1") {
		t.Errorf("RCPT after the reload: %q", r)
	}
	if r := lmtpReply("QUIT"); !strings.HasPrefix(r, "221") {
		t.Errorf("QUIT: %q", r)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitLog(t, "stopped on signal")
}

// TestWarnRestart: each setting read only at start is named when a reload
// changes it, and nothing else is.
func TestWarnRestart(t *testing.T) {
	old := defaultConfig(noEnv, "/srv")
	next := defaultConfig(noEnv, "/srv")
	next.LMTP.Enabled = !old.LMTP.Enabled
	next.Cyrus.ManageSieve = "127.0.0.1:2000"
	next.Password.Time++
	next.Saslauthd.FailDelay *= 2 // applied live: no warning
	var buf strings.Builder
	warnRestart(slog.New(slog.NewTextHandler(&buf, nil)), old, next)
	var keys []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		_, k, _ := strings.Cut(line, "key=")
		k, _, _ = strings.Cut(k, " ")
		keys = append(keys, k)
	}
	if got, want := strings.Join(keys, " "), "cyrus.managesieve password lmtp.enabled"; got != want {
		t.Errorf("restart warnings for %q, want %q\n%s", got, want, buf.String())
	}
}
