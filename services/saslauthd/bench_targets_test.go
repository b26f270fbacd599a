//go:build integration

package saslauthd

// The servers BenchmarkSaslauthd compares (see bench_test.go): real
// saslauthd with -a sasldb and -a shadow, a do-nothing responder and our
// serve, each its own process.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// benchSaslauthdProcs is saslauthd's -n: Debian's default (THREADS=5 in
// /etc/default/saslauthd) and the compiled-in one.
const benchSaslauthdProcs = "5"

// benchSasldb runs saslauthd -a sasldb -c on a private sasldb holding alice
// twice: under example.com, and under the host name, where saslauthd looks
// a login with an empty realm up (cyrus-lab-facts.md §3).
func benchSasldb(b *testing.B, dir string) *benchTarget {
	saslpasswd := lab.Tool(b, "SIDECAR_SASLPASSWD2", "saslpasswd2", "/usr/sbin")
	host, err := os.Hostname()
	if err != nil {
		b.Fatal(err)
	}
	db := filepath.Join(dir, "sasldb2")
	for _, realm := range []string{"example.com", host} {
		cmd := exec.Command(saslpasswd, "-f", db, "-c", "-p", "-u", realm, benchLogin)
		cmd.Stdin = strings.NewReader(benchPassword)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("saslpasswd2 -u %s: %v\n%s", realm, err, out)
		}
	}
	return benchSaslauthd(b, dir, "sasldb-c", "sasldb", [][2]string{{db, "/etc/sasldb2"}})
}

// benchShadow runs saslauthd -a shadow -c on private copies of /etc/passwd
// and /etc/shadow with alice added, her hash benchSHA512 (perf-anchors.md
// §2).
func benchShadow(b *testing.B, dir string) *benchTarget {
	var binds [][2]string
	for _, f := range []struct{ sys, line string }{
		{"/etc/passwd", benchLogin + ":x:60999:60999:bench:/nonexistent:/usr/sbin/nologin"},
		{"/etc/shadow", benchLogin + ":" + benchSHA512 + ":19000:0:99999:7:::"},
	} {
		data, err := os.ReadFile(f.sys)
		if err != nil {
			b.Fatal(err)
		}
		var out []string
		for l := range strings.Lines(string(data)) {
			if !strings.HasPrefix(l, benchLogin+":") { // a system alice would come first
				out = append(out, l)
			}
		}
		out = append(out, f.line+"\n")
		private := filepath.Join(dir, filepath.Base(f.sys))
		if err := os.WriteFile(private, []byte(strings.Join(out, "")), 0o600); err != nil {
			b.Fatal(err)
		}
		binds = append(binds, [2]string{private, f.sys})
	}
	return benchSaslauthd(b, dir, "shadow-c", "shadow", binds)
}

// benchSaslauthd starts saslauthd -a mech -c -n 5 in a mount namespace of
// its own in which each bind's file is mounted over the system file it
// names: saslauthd's sasldb path is compiled in, and -a shadow reads the
// system files, which stay untouched (cyrus-lab-facts.md pitfall 5). It
// daemonizes; it is stopped by the master PID from its pid file, and its
// processes are those of the master's process group (it calls setsid).
func benchSaslauthd(b *testing.B, dir, name, mech string, binds [][2]string) *benchTarget {
	if os.Geteuid() != 0 {
		if lab.Strict() {
			b.Fatalf("SIDECAR_STRICT=1: saslauthd in a private mount namespace needs root")
		}
		b.Skip("saslauthd in a private mount namespace needs root")
	}
	saslauthd := lab.Tool(b, "SIDECAR_SASLAUTHD", "saslauthd", "/usr/sbin")
	unshare := lab.Tool(b, "", "unshare")
	run := filepath.Join(dir, name)
	if err := os.Mkdir(run, 0o755); err != nil {
		b.Fatal(err)
	}
	// Paths go in as positional parameters, never into the script text.
	var script strings.Builder
	var params []string
	for _, bd := range binds {
		if _, err := os.Stat(bd[1]); err != nil {
			b.Fatalf("%s: cannot mount over it: %v", bd[1], err)
		}
		params = append(params, bd[0], bd[1])
		fmt.Fprintf(&script, `mount --bind "$%d" "$%d" && `, len(params)-1, len(params))
	}
	params = append(params, saslauthd, mech, run)
	fmt.Fprintf(&script, `exec "$%d" -a "$%d" -c -n %s -m "$%d"`, len(params)-2, len(params)-1, benchSaslauthdProcs, len(params))
	cmd := exec.Command(unshare, append([]string{"-m", "--propagation", "private", "sh", "-c", script.String(), "sh"}, params...)...)
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f // a file, not a pipe: the daemon may keep it open
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		b.Fatalf("start %s: %v\n%s", name, err, out)
	}
	// The parent has exited once the daemon forked; the pid file and the
	// socket follow.
	sock, pidFile := filepath.Join(run, "mux"), filepath.Join(run, "saslauthd.pid")
	var master int
	req := encode(benchLogin, benchPassword, benchService, benchRealm)
	for deadline := time.Now().Add(benchTimeout); ; time.Sleep(10 * time.Millisecond) {
		if master == 0 {
			if data, err := os.ReadFile(pidFile); err == nil {
				if master, err = strconv.Atoi(strings.TrimSpace(string(data))); err == nil && master > 0 {
					b.Cleanup(func() { benchStopDaemon(b, name, master) })
				}
			}
		}
		if master > 0 {
			if _, err := benchAsk(sock, req, make([]byte, 64)); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			b.Fatalf("%s: no answer on %s within %v (pid %d)\n%s", name, sock, benchTimeout, master, out)
		}
	}
	pids := func(t testing.TB) []int {
		var out []int
		ents, err := os.ReadDir("/proc")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if st, err := lab.Stat(pid); err == nil && st.Pgrp == master && st.State != "Z" {
				out = append(out, pid)
			}
		}
		return out
	}
	b.Logf("%s: saslauthd -a %s -c -n %s, master pid %d, %d processes", name, mech, benchSaslauthdProcs, master, len(pids(b)))
	return &benchTarget{name: name, sock: sock, pids: pids}
}

// benchStopDaemon sends SIGTERM to saslauthd's master (which stops its
// workers) and waits for it to go; after benchTimeout it SIGKILLs what is
// left of its process group, process by process.
func benchStopDaemon(b *testing.B, name string, master int) {
	gone := func(pid int) bool {
		st, err := lab.Stat(pid)
		return err != nil || st.State == "Z"
	}
	group := func() []int {
		var out []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				if st, err := lab.Stat(pid); err == nil && st.Pgrp == master && st.State != "Z" {
					out = append(out, pid)
				}
			}
		}
		return out
	}
	if gone(master) {
		return
	}
	syscall.Kill(master, syscall.SIGTERM)
	for deadline := time.Now().Add(benchTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if gone(master) && len(group()) == 0 {
			return
		}
	}
	for _, pid := range group() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	b.Errorf("%s: saslauthd (pid %d) did not stop within %v of SIGTERM; killed", name, master, benchTimeout)
}

// benchNoop runs this test binary again as a do-nothing responder
// (TestSaslauthdBenchNoop), named name. With verify it checks each
// request's password against benchSHA512 before it answers: the
// hash-bound server, as little as a Go server can do around the verify.
func benchNoop(b *testing.B, dir, name string, verify bool) *benchTarget {
	sock := filepath.Join(dir, name+".sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSaslauthdBenchNoop$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), benchNoopEnv+"="+sock)
	if verify {
		cmd.Env = append(cmd.Env, benchNoopVerifyEnv+"=1")
	}
	pid := lab.StartNotify(b, name, cmd, dir, benchTimeout)
	return &benchTarget{name: name, sock: sock, pids: func(testing.TB) []int { return []int{pid} }}
}

// TestSaslauthdBenchNoop is no test: it is BenchmarkSaslauthd's do-nothing
// responder, in a process of its own. It reads each connection's request
// with the real responder's wire code (not waiting for a fifth field),
// answers OK (with benchNoopVerifyEnv set: OK if password.Verify of
// benchSHA512 says so, else NO) and closes, a goroutine per connection,
// until SIGTERM.
func TestSaslauthdBenchNoop(t *testing.T) {
	sock := os.Getenv(benchNoopEnv)
	if sock == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	verify := os.Getenv(benchNoopVerifyEnv) != ""
	lab.NotifyReady(t)
	var wg sync.WaitGroup
	for {
		c, err := ln.Accept()
		if err != nil {
			break // closed on SIGTERM
		}
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(benchTimeout))
			req, err := readRequest(bufio.NewReaderSize(c, maxRequest), nil)
			if err != nil {
				return
			}
			ok := true
			if verify {
				ok, _ = password.Verify(benchSHA512, req.Password)
			}
			writeReply(c, ok, "")
		})
	}
	wg.Wait()
}

// benchServeConfig is one serve target: its name, alice's hash and the
// settings that differ from the defaults.
type benchServeConfig struct {
	name, hash   string
	cacheEntries int    // 0: no cache
	fifthWait    string // fifth_field_wait; "" is the default
	logLevel     string // [log] level; "" is the default (info: a line per request)
}

// benchServe runs `cyrus-sidecar serve` with only the saslauthd responder,
// on a store of its own holding alice@example.com with c.hash.
// rehash_on_login is off so that a SHA512-crypt hash stays one; everything
// not in c is the default.
func benchServe(b *testing.B, bin string, c benchServeConfig) *benchTarget {
	dir := filepath.Dir(bin)
	db := filepath.Join(dir, c.name+".db")
	st, err := store.Open(b.Context(), db, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	canon, err := store.NewCanon("example.com", "+")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.AddOrg(b.Context(), "Acme"); err != nil {
		b.Fatal(err)
	}
	if _, err := st.AddDomain(b.Context(), "example.com", "Acme"); err != nil {
		b.Fatal(err)
	}
	a, err := canon.Exact(benchLogin + "@example.com")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.AddUser(b.Context(), store.NewUser{Address: a, PasswordHash: store.Secret(c.hash)}); err != nil {
		b.Fatal(err)
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}

	sock := filepath.Join(dir, c.name+".sock")
	var conf strings.Builder
	fmt.Fprintf(&conf, "[store]\npath = %q\n[cyrus]\ndefault_domain = \"example.com\"\n[serve]\nshutdown_grace = \"1s\"\n", db)
	if c.logLevel != "" {
		fmt.Fprintf(&conf, "[log]\nlevel = %q\n", c.logLevel)
	}
	fmt.Fprintf(&conf, "[saslauthd]\nlisten = \"unix:%s\"\ncache_entries = %d\nrehash_on_login = false\n", sock, c.cacheEntries)
	if c.fifthWait != "" {
		fmt.Fprintf(&conf, "fifth_field_wait = %q\n", c.fifthWait)
	}
	conf.WriteString("[socketmap]\nenabled = false\n[lmtp]\nenabled = false\n[vacation]\nenabled = false\n")
	path := filepath.Join(dir, c.name+".toml")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "-config", path)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "STATE_DIRECTORY="+dir, "RUNTIME_DIRECTORY="+dir)
	pid := lab.StartNotify(b, c.name, cmd, dir, benchTimeout)
	b.Logf("%s: serve pid %d, hash %s, config:\n%s", c.name, pid, password.Scheme(c.hash), conf.String())
	return &benchTarget{name: c.name, sock: sock, pids: func(testing.TB) []int { return []int{pid} }}
}

// benchArgon2Hash hashes the password with the default parameters (those
// of a fresh install's [password] section).
func benchArgon2Hash(b *testing.B) string {
	h, err := password.New(password.DefaultParams())
	if err != nil {
		b.Fatal(err)
	}
	hash, err := h.Hash(benchPassword)
	if err != nil {
		b.Fatal(err)
	}
	return hash
}
