//go:build integration

package socketmap

// The three servers BenchmarkSocketmap compares (see bench_test.go): real
// Cyrus smmapd, a do-nothing responder and our serve, each its own process.

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/store"
)

// benchSmmapd starts Cyrus with the benchmark's mailboxes. Its CPU is that
// of every smmapd process of this instance, found by the imapd.conf path in
// its command line, including processes started meanwhile.
func benchSmmapd(b *testing.B) *benchTarget {
	cy := lab.StartCyrus(b, lab.CyrusOptions{})
	cl := cy.AdminIMAP(b)
	for i := range benchUsers {
		if r := cl.Cmd(b, "CREATE "+lab.IMAPQuote(cy.Mailbox(benchUser(i)))); !r.OK() {
			b.Fatalf("imap CREATE %s: %s", cy.Mailbox(benchUser(i)), r)
		}
	}
	cl.Logout(b)
	procs := func(t testing.TB) map[int]int64 {
		out := make(map[int]int64)
		ents, err := os.ReadDir("/proc")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			args := strings.Split(string(cmdline), "\x00")
			if err != nil || filepath.Base(args[0]) != "smmapd" || !slices.Contains(args, cy.ConfPath) {
				continue
			}
			if ticks, err := benchProcCPU(pid); err == nil { // else it exited meanwhile
				out[pid] = ticks
			}
		}
		return out
	}
	cold := func(t testing.TB) {
		// SIGHUP makes master recycle its children (cyrus-lab-facts.md §2);
		// their exit can only be watched for in /proc.
		data, err := os.ReadFile(filepath.Join(cy.Dir, "run/master.pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatalf("master.pid: %v", err)
		}
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP cyrus master: %v", err)
		}
		for deadline := time.Now().Add(benchTimeout); len(procs(t)) > 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("smmapd processes still there %v after SIGHUP to master", benchTimeout)
			}
		}
	}
	return &benchTarget{name: "smmapd", sock: cy.SmmapSocket, cpu: procs, cold: cold}
}

// benchNoop runs this test binary again as a do-nothing responder
// (TestSocketmapBenchNoop).
func benchNoop(b *testing.B, dir string) *benchTarget {
	sock := filepath.Join(dir, "noop.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSocketmapBenchNoop$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), benchNoopEnv+"="+sock)
	pid := benchStart(b, "noop", cmd, dir)
	return &benchTarget{name: "noop", sock: sock, cpu: benchPIDCPU(pid)}
}

// TestSocketmapBenchNoop is no test: it is BenchmarkSocketmap's do-nothing
// responder, in a process of its own. It answers "OK <key>" to every
// request, a goroutine per persistent connection, with the wire helpers of
// the real responder and nothing else, until SIGTERM.
func TestSocketmapBenchNoop(t *testing.T) {
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
	ready, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ready.Write([]byte("READY=1"))
	ready.Close()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for {
		c, err := ln.Accept()
		if err != nil {
			break // closed on SIGTERM
		}
		wg.Go(func() {
			defer c.Close()
			defer context.AfterFunc(ctx, func() { c.Close() })()
			r := bufio.NewReader(c)
			var out []byte
			for {
				req, err := readNetstring(r, MaxRequest)
				if err != nil {
					return
				}
				_, key, _ := strings.Cut(string(req), " ")
				out = appendNetstring(out[:0], "OK ", key)
				if _, err := c.Write(out); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
}

// benchServe builds the binary and runs `cyrus-sidecar serve` on a store
// holding the benchmark's users, with the mailbox map named "cyrus" so that
// it gets smmapd's very requests. The quota check is off (its default).
func benchServe(b *testing.B, dir string) *benchTarget {
	goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(dir, "cyrus-sidecar")
	build := exec.Command(goTool, "build", "-o", bin, ".")
	build.Dir = lab.RepoRoot(b)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}

	db := filepath.Join(dir, "store.db")
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
	for i := range benchUsers {
		a, err := canon.Exact(benchUser(i))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.AddUser(b.Context(), store.NewUser{Address: a}); err != nil {
			b.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}

	sock := filepath.Join(dir, "ours.sock")
	conf := filepath.Join(dir, "config.toml")
	err = os.WriteFile(conf, fmt.Appendf(nil, `[store]
path = %q
[cyrus]
default_domain = "example.com"
[log]
format = "text"
[serve]
shutdown_grace = "1s"
[socketmap]
listen = ["unix:%s"]
[socketmap.maps]
mailbox = "cyrus"
`, db, sock), 0o644)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "-config", conf)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "STATE_DIRECTORY="+dir, "RUNTIME_DIRECTORY="+dir)
	pid := benchStart(b, "ours", cmd, dir)
	return &benchTarget{name: "ours", sock: sock, cpu: benchPIDCPU(pid)}
}

// benchStart starts a server, waits for its READY=1 on $NOTIFY_SOCKET and
// stops it (SIGTERM to its PID) at cleanup. Its output goes to dir/name.log,
// shown if it fails to start.
func benchStart(b *testing.B, name string, cmd *exec.Cmd, dir string) int {
	notify := filepath.Join(dir, name+".notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer nl.Close()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close() // the child has its own
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+notify)
	// Should the benchmark die without cleanup (a -timeout panic), the
	// server goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(benchTimeout):
			cmd.Process.Kill()
			<-done
			b.Errorf("%s did not stop within %v of SIGTERM; killed", name, benchTimeout)
		}
	})
	buf := make([]byte, 512)
	for deadline := time.Now().Add(3 * benchTimeout); ; {
		nl.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := nl.Read(buf); err == nil && bytes.Contains(buf[:n], []byte("READY=1")) {
			return cmd.Process.Pid
		}
		select {
		case <-done:
			out, _ := os.ReadFile(logPath)
			b.Fatalf("%s exited during start: %v\n%s", name, cmd.ProcessState, out)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s not ready within %v", name, 3*benchTimeout)
		}
	}
}

func benchPIDCPU(pid int) func(testing.TB) map[int]int64 {
	return func(t testing.TB) map[int]int64 {
		ticks, err := benchProcCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		return map[int]int64{pid: ticks}
	}
}

// benchProcCPU returns utime+stime of a process (all its threads), in ticks.
func benchProcCPU(pid int) (int64, error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// proc(5): "pid (comm) state ppid ..."; comm may hold spaces, so the
	// fields are counted from the last ')'. utime and stime are fields 14
	// and 15, here 11 and 12.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return utime + stime, nil
}

// benchCPUDelta sums the CPU each process used between two snapshots; one
// that started meanwhile counts from zero. One that exited meanwhile is
// lost (its time went to master's cutime, with every other child's).
func benchCPUDelta(before, after map[int]int64) int64 {
	var d int64
	for pid, t := range after {
		d += t - before[pid]
	}
	return d
}

// benchPercentile is the nearest-rank percentile of sorted durations.
func benchPercentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[max(0, (len(sorted)*p+99)/100-1)]
}

// benchPer is each target's measured time per case: -test.benchtime when
// it is a duration, else one second.
func benchPer() time.Duration {
	if f := flag.Lookup("test.benchtime"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			return d
		}
	}
	return time.Second
}

func benchUser(i int) string { return fmt.Sprintf("user%d@example.com", i) }
