//go:build integration

package main

// BenchmarkServeStartup and BenchmarkServeMemory (issue 7): the real
// `cyrus-sidecar serve` binary on a store of 100,000 users, with the
// saslauthd responder and the socketmap responder on (what the store's size
// could affect) and the LMTP proxy and vacation off (LMTP's default
// 127.0.0.1:2003 would collide with other runs; vacation needs Cyrus).
//
// Start-up is the time from exec to the READY=1 datagram on $NOTIFY_SOCKET,
// what systemd's Type=notify waits for, over sbStarts starts of one store,
// then SIGTERM; an empty store is measured the same way for comparison.
// Memory is VmRSS from /proc/PID/status: at READY=1, after sbSettle idle,
// and its peak (VmHWM, and the largest of samples every sbSample) under a
// saslauthd load and under a socketmap load, each on a fresh process so
// that one load's peak does not hide the next one's.
//
//	SIDECAR_STRICT=1 go test -tags integration -run '^$' -bench 'BenchmarkServe' -benchtime=1x -count=1 -v .

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

const (
	sbUsers     = 100_000 // users in the big store, spread over sbDomains domains
	sbOrgs      = 4
	sbDomains   = 8                      // two per organisation; the first is the default domain
	sbAliases   = 5_000                  // each to one user
	sbStarts    = 20                     // starts per store (the issue asks for at least 15)
	sbTimeout   = 10 * time.Second       // any single step; past it the benchmark fails
	sbSettle    = 2 * time.Second        // idle time before the settled RSS
	sbSample    = 10 * time.Millisecond  // VmRSS sampling period under load
	sbLoadTime  = 3 * time.Second        // each load, unless -benchtime is a duration
	sbWarmUsers = 128                    // users whose logins are cached before the saslauthd load
	sbBadShare  = 8                      // one client in sbBadShare sends wrong passwords
	sbTarget    = 200 * time.Millisecond // the start-up target with sbUsers users
	sbPassword  = "secret"
)

func BenchmarkServeStartup(b *testing.B) {
	bin := lab.BuildSidecar(b)
	dir := sbDir(b)
	hash := sbHash(b)
	for _, users := range []int{0, sbUsers} {
		b.Run(fmt.Sprintf("users=%d", users), func(b *testing.B) {
			db := sbStore(b, dir, users, hash)
			cfg := sbConfig(b, dir, fmt.Sprintf("start%d", users), db)
			var ready, pre, open []time.Duration
			var rss []int64 // KiB
			var first time.Duration
			for i := range sbStarts + 1 {
				s := sbStart(b, bin, cfg, dir)
				kib := sbStatus(b, s.pid, "VmRSS")
				s.stop(b)
				ph := s.phases(b)
				if i == 0 { // page cache, first open of a fresh file: reported apart
					first = s.ready
					continue
				}
				ready = append(ready, s.ready)
				pre, open = append(pre, ph.pre), append(open, ph.open)
				rss = append(rss, kib)
			}
			for _, d := range [][]time.Duration{ready, pre, open} {
				slices.Sort(d)
			}
			slices.Sort(rss)
			rssMiB := float64(rss[len(rss)/2]) / 1024
			p50, p90 := lab.Percentile(ready, 50), lab.Percentile(ready, 90)
			b.ReportMetric(sbMS(p50), "ms/start-p50")
			b.ReportMetric(sbMS(p90), "ms/start-p90")
			b.ReportMetric(sbMS(ready[len(ready)-1]), "ms/start-max")
			b.ReportMetric(rssMiB, "MiB-rss-ready")
			b.ReportMetric(0, "ns/op") // one op is the whole case: meaningless
			b.Logf("users=%d: exec to READY=1 over %d starts: p50 %.1f ms, p90 %.1f ms, min %.1f ms, max %.1f ms (first start, not counted: %.1f ms)",
				users, len(ready), sbMS(p50), sbMS(p90), sbMS(ready[0]), sbMS(ready[len(ready)-1]), sbMS(first))
			b.Logf("users=%d: medians by phase: exec to the \"starting\" log line %.1f ms (process start, runtime, config); "+
				"\"starting\" to \"ready\" %.1f ms (store open, services, listen); VmRSS at READY=1 %.1f MiB",
				users, sbMS(lab.Percentile(pre, 50)), sbMS(lab.Percentile(open, 50)), rssMiB)
			if users == sbUsers {
				verdict := "met"
				if p50 >= sbTarget {
					verdict = "MISSED"
				}
				b.Logf("target: under %v with %d users: p50 %.1f ms, p90 %.1f ms: %s", sbTarget, users, sbMS(p50), sbMS(p90), verdict)
			}
		})
	}
}

func BenchmarkServeMemory(b *testing.B) {
	bin := lab.BuildSidecar(b)
	dir := sbDir(b)
	db := sbStore(b, dir, sbUsers, sbHash(b))
	per := sbLoadDuration()
	// Each case: a fresh serve, its RSS at READY=1 and settled, then the
	// load while VmRSS is sampled.
	run := func(b *testing.B, name string, load func(b *testing.B, s *sbServe) string) {
		cfg := sbConfig(b, dir, name, db)
		s := sbStart(b, bin, cfg, dir)
		defer s.stop(b)
		atReady := sbStatus(b, s.pid, "VmRSS")
		time.Sleep(sbSettle) // not waiting for a server: letting it idle
		idle, idleAnon := sbStatus(b, s.pid, "VmRSS"), sbStatus(b, s.pid, "RssAnon")
		stop := make(chan struct{})
		var sampled atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() {
			t := time.NewTicker(sbSample)
			defer t.Stop()
			for {
				if kib, err := sbReadStatus(s.pid, "VmRSS"); err == nil && kib > sampled.Load() {
					sampled.Store(kib)
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		})
		what := load(b, s)
		close(stop)
		wg.Wait()
		peak := sbStatus(b, s.pid, "VmHWM")
		after, afterAnon := sbStatus(b, s.pid, "VmRSS"), sbStatus(b, s.pid, "RssAnon")
		b.ReportMetric(float64(atReady)/1024, "MiB-rss-ready")
		b.ReportMetric(float64(idle)/1024, "MiB-rss-idle")
		b.ReportMetric(float64(idleAnon)/1024, "MiB-anon-idle")
		b.ReportMetric(float64(peak)/1024, "MiB-rss-peak")
		b.ReportMetric(float64(sampled.Load())/1024, "MiB-rss-peak-sampled")
		b.ReportMetric(0, "ns/op")
		b.Logf("%s: VmRSS at READY=1 %.1f MiB, after %v idle %.1f MiB (anonymous %.1f); under load peak %.1f MiB "+
			"(VmHWM; sampled every %v: %.1f MiB), after it %.1f MiB (anonymous %.1f); %s",
			name, float64(atReady)/1024, sbSettle, float64(idle)/1024, float64(idleAnon)/1024, float64(peak)/1024, sbSample,
			float64(sampled.Load())/1024, float64(after)/1024, float64(afterAnon)/1024, what)
	}
	for _, clients := range []int{8, 64} {
		b.Run(fmt.Sprintf("saslauthd-clients=%d", clients), func(b *testing.B) {
			run(b, fmt.Sprintf("sasl%d", clients), func(b *testing.B, s *sbServe) string { return sbSaslLoad(b, s, clients, per) })
		})
	}
	for _, conns := range []int{1, 64} {
		b.Run(fmt.Sprintf("socketmap-conns=%d", conns), func(b *testing.B) {
			run(b, fmt.Sprintf("sm%d", conns), func(b *testing.B, s *sbServe) string { return sbSocketmapLoad(b, s, conns, per, 0) })
		})
	}
	// Every user once, and a third as many missing addresses: more
	// distinct keys than the answer cache holds (cache_entries, 100,000 by
	// default), so that it fills up and starts over: its largest size.
	b.Run("socketmap-conns=64-all-keys", func(b *testing.B) {
		run(b, "smkeys", func(b *testing.B, s *sbServe) string {
			return sbSocketmapLoad(b, s, 64, 2*time.Minute, sbUsers*4/3)
		})
	})
}

// sbSaslLoad runs clients saslauthd clients for per, a connection per
// request as libsasl makes them: one in sbBadShare sends wrong passwords,
// each for a user not tried before (a full argon2id verify every time, no
// failure delay), the others log in with the right password as one of
// sbWarmUsers users whose logins were cached first.
func sbSaslLoad(b *testing.B, s *sbServe, clients int, per time.Duration) string {
	// Warm the cache: a full verify per user, on the server's workers.
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < sbWarmUsers; i = int(next.Add(1) - 1) {
				if ok, err := sbSaslAsk(s.sasl, sbUser(i), sbPassword); err != nil || !ok {
					errs <- fmt.Errorf("warm-up login %s: ok %v, %v", sbUser(i), ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var good, bad, goodNO, badOK atomic.Int64
	var fatal atomic.Pointer[error]
	var unseen atomic.Int64 // users after the warm ones, never tried
	unseen.Store(sbWarmUsers)
	end := time.Now().Add(per)
	start := time.Now()
	for c := range clients {
		wg.Go(func() {
			for i := c; time.Now().Before(end); i += clients {
				if c%sbBadShare == sbBadShare-1 {
					ok, err := sbSaslAsk(s.sasl, sbUser(int(unseen.Add(1)-1)), "wrong")
					if err != nil {
						fatal.CompareAndSwap(nil, &err)
						return
					}
					if bad.Add(1); ok {
						badOK.Add(1)
					}
					continue
				}
				ok, err := sbSaslAsk(s.sasl, sbUser(i%sbWarmUsers), sbPassword)
				if err != nil {
					fatal.CompareAndSwap(nil, &err)
					return
				}
				if good.Add(1); !ok {
					goodNO.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if err := fatal.Load(); err != nil {
		b.Fatalf("saslauthd load: %v", *err)
	}
	if badOK.Load() > 0 || goodNO.Load() > 0 {
		b.Errorf("saslauthd load: %d wrong passwords answered OK, %d cached logins answered NO", badOK.Load(), goodNO.Load())
	}
	b.ReportMetric(float64(good.Load())/took.Seconds(), "cached-logins/s")
	b.ReportMetric(float64(bad.Load())/took.Seconds(), "bad-logins/s")
	return fmt.Sprintf("%d clients (%d with wrong passwords) for %v: %d cached logins (%.0f/s), %d wrong-password logins (%.0f/s)",
		clients, clients/sbBadShare, took.Round(time.Millisecond), good.Load(), float64(good.Load())/took.Seconds(),
		bad.Load(), float64(bad.Load())/took.Seconds())
}

// sbSaslAsk makes one saslauthd request (login, password, service, realm as
// counted strings) on a new connection and reports whether it said OK.
func sbSaslAsk(sock, login, pw string) (bool, error) {
	c, err := net.DialTimeout("unix", sock, sbTimeout)
	if err != nil {
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(sbTimeout))
	var req []byte
	for _, f := range []string{login, pw, "imap", ""} {
		req = append(req, byte(len(f)>>8), byte(len(f)))
		req = append(req, f...)
	}
	if _, err := c.Write(req); err != nil {
		return false, err
	}
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return false, fmt.Errorf("reply: %w", err)
	}
	reply := make([]byte, int(hdr[0])<<8|int(hdr[1]))
	if _, err := io.ReadFull(c, reply); err != nil {
		return false, fmt.Errorf("reply: %w", err)
	}
	return bytes.HasPrefix(reply, []byte("OK")), nil
}

// sbSocketmapLoad runs conns persistent socketmap connections, lock-step,
// for per or until limit lookups (0: no limit): mailbox lookups walking
// through all users (so that the answer cache grows as it would on a busy
// MX), every 16th an alias and every 4th a missing address of a hosted
// domain.
func sbSocketmapLoad(b *testing.B, s *sbServe, conns int, per time.Duration, limit int) string {
	var found, missing atomic.Int64
	var next atomic.Int64
	var fatal atomic.Pointer[error]
	var wg sync.WaitGroup
	end := time.Now().Add(per)
	start := time.Now()
	for range conns {
		c, err := net.DialTimeout("unix", s.sm, sbTimeout)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(end.Add(sbTimeout))
		wg.Go(func() {
			defer c.Close()
			r := bufio.NewReader(c)
			var req []byte
			for time.Now().Before(end) {
				i := int(next.Add(1) - 1)
				if limit > 0 && i >= limit {
					return
				}
				key, want := sbUser(i*7919%sbUsers), "OK "
				switch {
				case i%4 == 3:
					key, want = fmt.Sprintf("nobody%06d@%s", i%sbUsers, sbDomain(i)), "NOTFOUND"
				case i%16 == 1:
					key = sbAlias(i * 31 % sbAliases)
				}
				req = strconv.AppendInt(req[:0], int64(len("mailbox ")+len(key)), 10)
				req = append(append(append(req, ":mailbox "...), key...), ',')
				if _, err := c.Write(req); err != nil {
					fatal.CompareAndSwap(nil, &err)
					return
				}
				got, err := sbReadNetstring(r)
				if err == nil && !strings.HasPrefix(got, want) {
					err = fmt.Errorf("mailbox %s answered %q; want %s...", key, got, want)
				}
				if err != nil {
					fatal.CompareAndSwap(nil, &err)
					return
				}
				if want == "NOTFOUND" {
					missing.Add(1)
				} else {
					found.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if err := fatal.Load(); err != nil {
		b.Fatalf("socketmap load: %v", *err)
	}
	n := found.Load() + missing.Load()
	b.ReportMetric(float64(n)/took.Seconds(), "lookups/s")
	return fmt.Sprintf("%d connections for %v: %d lookups (%.0f/s; %d found, %d missing)",
		conns, took.Round(time.Millisecond), n, float64(n)/took.Seconds(), found.Load(), missing.Load())
}

// sbReadNetstring reads one netstring reply ("<len>:<data>,").
func sbReadNetstring(r *bufio.Reader) (string, error) {
	head, err := r.ReadString(':')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(head, ":"))
	if err != nil || n < 0 || n > 100_000 {
		return "", fmt.Errorf("netstring length %q", head)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	if buf[n] != ',' {
		return "", fmt.Errorf("netstring %q: no ','", buf)
	}
	return string(buf[:n]), nil
}

// sbServe is one running serve.
type sbServe struct {
	cmd      *exec.Cmd
	pid      int
	done     chan struct{}
	notify   *net.UnixConn
	log      string
	sasl, sm string
	start    time.Time     // just before exec
	ready    time.Duration // exec to READY=1
	stopped  bool
}

// sbStart starts serve with cfg and waits for READY=1.
func sbStart(b *testing.B, bin string, cfg sbConf, dir string) *sbServe {
	b.Helper()
	sock := filepath.Join(dir, "notify.sock")
	os.Remove(sock)
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(cfg.log)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close() // the child has its own
	cmd := exec.Command(bin, "serve", "-config", cfg.path)
	cmd.Dir = dir
	cmd.Env = append(filteredEnv(), "NOTIFY_SOCKET="+sock, "STATE_DIRECTORY="+dir, "RUNTIME_DIRECTORY="+dir)
	cmd.Stdout, cmd.Stderr = f, f
	// Should the test binary die without cleanup, serve goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s := &sbServe{cmd: cmd, done: make(chan struct{}), notify: nl, log: cfg.log, sasl: cfg.sasl, sm: cfg.sm}
	s.start = time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s.pid = cmd.Process.Pid
	go func() { cmd.Wait(); close(s.done) }()
	b.Cleanup(func() { s.stop(b) })
	buf := make([]byte, 512)
	for deadline := s.start.Add(sbTimeout); ; {
		nl.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if n, err := nl.Read(buf); err == nil && bytes.Contains(buf[:n], []byte("READY=1")) {
			s.ready = time.Since(s.start)
			return s
		}
		select {
		case <-s.done:
			out, _ := os.ReadFile(cfg.log)
			b.Fatalf("serve exited during start: %v\n%s", cmd.ProcessState, out)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("serve not ready within %v", sbTimeout)
		}
	}
}

// stop sends SIGTERM and waits for serve to exit (SIGKILL after
// sbTimeout); it fails the benchmark unless serve exited cleanly.
func (s *sbServe) stop(b *testing.B) {
	if s.stopped {
		return
	}
	s.stopped = true
	defer s.notify.Close()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		if !s.cmd.ProcessState.Success() {
			out, _ := os.ReadFile(s.log)
			b.Errorf("serve exit after SIGTERM: %v\n%s", s.cmd.ProcessState, out)
		}
	case <-time.After(sbTimeout):
		s.cmd.Process.Kill()
		<-s.done
		b.Errorf("serve did not stop within %v of SIGTERM; killed", sbTimeout)
	}
}

// sbPhases splits a start by serve's own log lines (their times are the
// same wall clock as the benchmark's).
type sbPhases struct{ pre, open time.Duration }

// phases reads the stopped serve's log: exec to "starting", and "starting"
// to "ready".
func (s *sbServe) phases(b *testing.B) sbPhases {
	data, err := os.ReadFile(s.log)
	if err != nil {
		b.Fatal(err)
	}
	at := map[string]time.Time{}
	for l := range strings.Lines(string(data)) {
		var m struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(l), &m) == nil && at[m.Msg].IsZero() {
			at[m.Msg] = m.Time
		}
	}
	if at["starting"].IsZero() || at["ready"].IsZero() {
		b.Fatalf("%s: no \"starting\" or \"ready\" line:\n%s", s.log, data)
	}
	return sbPhases{pre: at["starting"].Sub(s.start), open: at["ready"].Sub(at["starting"])}
}

// sbConf is one serve configuration and the paths it names.
type sbConf struct{ path, log, sasl, sm string }

// sbConfig writes a configuration for db with sockets named after name:
// saslauthd and socketmap on UNIX sockets with their defaults, LMTP and
// vacation off, JSON logs at the default level.
func sbConfig(b *testing.B, dir, name, db string) sbConf {
	c := sbConf{path: filepath.Join(dir, name+".toml"), log: filepath.Join(dir, name+".log"),
		sasl: filepath.Join(dir, name+"-sasl.sock"), sm: filepath.Join(dir, name+"-sm.sock")}
	text := fmt.Sprintf(`[store]
path = %q
[cyrus]
default_domain = %q
[serve]
shutdown_grace = "1s"
[saslauthd]
listen = "unix:%s"
[socketmap]
listen = ["unix:%s"]
[lmtp]
enabled = false
[vacation]
enabled = false
`, db, sbDomain(0), c.sasl, c.sm)
	if err := os.WriteFile(c.path, []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
	return c
}

// sbStore creates a store of users users (none: the schema only) and
// returns its path. The schema comes from store.Open (the migrations serve
// runs); the rows go in through database/sql directly, in one transaction.
// That bulk fill is for this benchmark only: the store's API adds a user
// per immediate transaction (and reads it back), about 1.3 ms each here,
// which would make 100,000 users take over two minutes.
func sbStore(b *testing.B, dir string, users int, hash string) string {
	b.Helper()
	path := filepath.Join(dir, fmt.Sprintf("store-%d.db", users))
	if _, err := os.Stat(path); err == nil {
		return path // made by an earlier call of this benchmark
	}
	st, err := store.Open(context.Background(), path, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	if users == 0 {
		return path
	}
	t0 := time.Now()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	err = func() error {
		tx, err := db.Begin()
		if err != nil {
			return err
		}
		defer tx.Rollback()
		now := time.Now().Unix()
		run := func(q string, args ...any) {
			if err == nil {
				_, err = tx.Exec(q, args...)
			}
		}
		for o := range sbOrgs {
			run("INSERT INTO organisations (id, name, created) VALUES (?, ?, ?)", o+1, fmt.Sprintf("Org%d", o), now)
		}
		for d := range sbDomains {
			run("INSERT INTO domains (id, name, org_id, created) VALUES (?, ?, ?, ?)", d+1, sbDomain(d), d%sbOrgs+1, now)
		}
		if err != nil {
			return err
		}
		user, err := tx.Prepare(`INSERT INTO users (id, address, domain_id, password_hash, created, updated)
			VALUES (?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		for i := range users {
			if _, err := user.Exec(i+1, sbUser(i), i%sbDomains+1, hash, now, now); err != nil {
				return err
			}
		}
		for i := range sbAliases {
			run("INSERT INTO aliases (id, address, domain_id, created) VALUES (?, ?, ?, ?)", i+1, sbAlias(i), i%sbDomains+1, now)
			run("INSERT INTO alias_targets (alias_id, pos, target) VALUES (?, 0, ?)", i+1, sbUser(i*13%users))
		}
		if err != nil {
			return err
		}
		return tx.Commit()
	}()
	if err != nil {
		b.Fatalf("bulk fill %s: %v", path, err)
	}
	fi, _ := os.Stat(path)
	b.Logf("store: %d users, %d aliases in %d domains of %d organisations, filled in %v (%.1f MiB)",
		users, sbAliases, sbDomains, sbOrgs, time.Since(t0).Round(time.Millisecond), float64(fi.Size())/(1<<20))
	return path
}

func sbDomain(i int) string {
	if i%sbDomains == 0 {
		return "example.com"
	}
	return fmt.Sprintf("d%d.example", i%sbDomains)
}

func sbUser(i int) string  { return fmt.Sprintf("user%06d@%s", i, sbDomain(i)) }
func sbAlias(i int) string { return fmt.Sprintf("alias%05d@%s", i, sbDomain(i)) }

// sbHash is every user's password hash: argon2id with the default
// parameters, what a fresh install stores (one hash for all: the store's
// size and the verify cost are what matter here).
func sbHash(b *testing.B) string {
	h, err := password.New(password.DefaultParams())
	if err != nil {
		b.Fatal(err)
	}
	hash, err := h.Hash(sbPassword)
	if err != nil {
		b.Fatal(err)
	}
	return hash
}

// sbDir is a directory short enough for the UNIX sockets in it.
func sbDir(b *testing.B) string {
	dir := b.TempDir()
	if len(dir)+len("/start100000-sasl.sock") >= 100 {
		b.Fatalf("temp dir %s too long for UNIX sockets; set TMPDIR=/tmp", dir)
	}
	return dir
}

// sbLoadDuration is -benchtime when it is a duration, else sbLoadTime.
func sbLoadDuration() time.Duration {
	if f := flag.Lookup("test.benchtime"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			return d
		}
	}
	return sbLoadTime
}

// sbStatus is a field of /proc/PID/status in KiB.
func sbStatus(b *testing.B, pid int, field string) int64 {
	b.Helper()
	kib, err := sbReadStatus(pid, field)
	if err != nil {
		b.Fatal(err)
	}
	return kib
}

func sbReadStatus(pid int, field string) (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("/proc/" + strconv.Itoa(pid) + "/status: no " + field)
}

func sbMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
