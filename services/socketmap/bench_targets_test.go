//go:build integration

package socketmap

// The three servers BenchmarkSocketmap compares (see bench_test.go): real
// Cyrus smmapd, a do-nothing responder and our serve, each its own process.

import (
	"bufio"
	"context"
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
			if st, err := lab.Stat(pid); err == nil { // else it exited meanwhile
				ticks := st.CPU
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
	pid := lab.StartNotify(b, "noop", cmd, dir, benchTimeout)
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
	lab.NotifyReady(t)
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
	bin := lab.BuildSidecar(b)

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
[lmtp]
enabled = false
[vacation]
enabled = false
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
	pid := lab.StartNotify(b, "ours", cmd, dir, benchTimeout)
	return &benchTarget{name: "ours", sock: sock, cpu: benchPIDCPU(pid)}
}

func benchPIDCPU(pid int) func(testing.TB) map[int]int64 {
	return func(t testing.TB) map[int]int64 {
		st, err := lab.Stat(pid)
		if err != nil {
			t.Fatal(err)
		}
		return map[int]int64{pid: st.CPU}
	}
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

func benchUser(i int) string { return fmt.Sprintf("user%d@example.com", i) }
