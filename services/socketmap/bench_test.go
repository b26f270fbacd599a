//go:build integration

package socketmap

// BenchmarkSocketmap: Cyrus smmapd, a do-nothing responder and our `serve`
// side by side in one run, each in a process of its own, asked the same
// requests ("cyrus userN@example.com", answered "OK userN@example.com")
// over UNIX sockets. The method is perf-anchors.md §2 and §7: client and
// servers share the cores, the targets take turns in short slices so that
// outside load hits all of them alike, latency is taken per request and
// server CPU from /proc/PID/stat at the edges of the measured time.
//
//	SIDECAR_STRICT=1 go test -tags integration -run '^$' -bench BenchmarkSocketmap -benchtime=2s ./services/socketmap/

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
)

const (
	benchUsers   = 100                    // user0..user99@example.com, in Cyrus and in our store
	benchTurn    = 250 * time.Millisecond // one target's turn in a round
	benchWarmup  = 300 * time.Millisecond // per target and case, not counted
	benchBurst   = 64                     // new connections at once in the connect case
	benchSettle  = 50 * time.Millisecond  // pause after a burst: servers take back their connections
	benchTimeout = 10 * time.Second       // any single step; past it the benchmark fails
	benchNoopEnv = "SIDECAR_BENCH_NOOP_SOCKET"
	// proc(5): utime and stime are in clock ticks of USER_HZ, 100 on Linux.
	benchTicksPerSec = 100
)

// benchTarget is one socketmap server under test.
type benchTarget struct {
	name string
	sock string
	// cpu returns utime+stime in ticks for each of the server's processes.
	cpu func(testing.TB) map[int]int64
	// cold, if set, leaves the server with no idle process (smmapd).
	cold func(testing.TB)
}

// benchKeys are each user's request and the reply every target must give.
type benchKeys struct{ req, want [][]byte }

func BenchmarkSocketmap(b *testing.B) {
	var keys benchKeys
	for i := range benchUsers {
		keys.req = append(keys.req, appendNetstring(nil, "cyrus ", benchUser(i)))
		keys.want = append(keys.want, []byte("OK "+benchUser(i)))
	}
	dir := b.TempDir()
	if len(dir)+len("/serve.notify") >= 100 {
		b.Fatalf("temp dir %s too long for UNIX sockets; set TMPDIR=/tmp", dir)
	}
	targets := []*benchTarget{benchSmmapd(b), benchNoop(b, dir), benchServe(b, dir)}
	for _, tg := range targets { // every key answered alike, before anything is timed
		pool := benchDial(b, tg, keys, 1)
		for range benchUsers {
			if err := pool[0].ask(keys); err != nil {
				b.Fatalf("%s: %v", tg.name, err)
			}
		}
		pool[0].c.Close()
	}
	per := lab.BenchTime()
	for _, n := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) { benchPersistent(b, targets, keys, n, per) })
	}
	b.Run(fmt.Sprintf("connect%d", benchBurst), func(b *testing.B) { benchConnect(b, targets, keys, per) })
}

// benchPersistent measures lock-step lookups (write a request, read the
// reply, repeat) over conns persistent connections per target, as Postfix
// and sendmail keep them. Each target gets per of measured time.
func benchPersistent(b *testing.B, targets []*benchTarget, keys benchKeys, conns int, per time.Duration) {
	b.StopTimer()
	pools := make([][]*benchConn, len(targets))
	for i, tg := range targets {
		pools[i] = benchDial(b, tg, keys, conns)
		benchSlice(b, tg, pools[i], keys, benchWarmup)
		for _, c := range pools[i] {
			c.lat = c.lat[:0]
		}
	}
	before := make([]map[int]int64, len(targets))
	for i, tg := range targets {
		before[i] = tg.cpu(b)
	}
	// A server waiting for its turn uses no CPU, so one window per target
	// around all rounds counts only its own slices.
	busy := make([]time.Duration, len(targets))
	b.StartTimer()
	for range max(1, int(per/benchTurn)) {
		for i, tg := range targets {
			busy[i] += benchSlice(b, tg, pools[i], keys, benchTurn)
		}
	}
	b.StopTimer()
	rates, cpus := make([]float64, len(targets)), make([]float64, len(targets))
	for i, tg := range targets {
		var lat []time.Duration
		for _, c := range pools[i] {
			lat = append(lat, c.lat...)
		}
		slices.Sort(lat)
		ticks := benchCPUDelta(before[i], tg.cpu(b))
		rates[i] = float64(len(lat)) / busy[i].Seconds()
		cpus[i] = float64(ticks) * 1e6 / benchTicksPerSec / float64(len(lat))
		p50, p99 := lab.Percentile(lat, 50), lab.Percentile(lat, 99)
		b.ReportMetric(rates[i], tg.name+"-lookups/s")
		b.ReportMetric(float64(p50.Microseconds()), tg.name+"-p50-µs")
		b.ReportMetric(float64(p99.Microseconds()), tg.name+"-p99-µs")
		b.ReportMetric(cpus[i], tg.name+"-srv-µs/lookup")
		b.Logf("%-6s %6d conns %8.0f lookups/s  p50 %5d µs  p99 %6d µs  server CPU %5.1f µs/lookup (%d lookups in %v, %d ticks)",
			tg.name, conns, rates[i], p50.Microseconds(), p99.Microseconds(), cpus[i], len(lat), busy[i].Round(time.Millisecond), ticks)
	}
	benchRatios(b, targets, rates, cpus)
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	// The targets, and where the do-nothing responder itself is
	// on the CPU one (a reference: it does nothing a Go server can skip).
	r, c := rates[2]/rates[1], cpus[2]/cpus[0]
	b.Logf("at %d conns: ours ≥ 90%% of noop's lookups/s: %.2f %s; CPU per lookup ≤ 1/3 of smmapd's: %.1f vs %.1f µs (%.2f) %s; noop's own: %.2f",
		conns, r, verdict(r >= 0.9), cpus[2], cpus[0], c, verdict(3*cpus[2] <= cpus[0]), cpus[1]/cpus[0])
	b.ReportMetric(0, "ns/op") // one op is the whole case: meaningless
}

// benchRatios reports ours against the do-nothing responder and smmapd;
// targets are smmapd, noop, ours in that order.
func benchRatios(b *testing.B, targets []*benchTarget, rates, cpus []float64) {
	b.ReportMetric(rates[2]/rates[1], targets[2].name+"/"+targets[1].name)
	b.ReportMetric(rates[2]/rates[0], targets[2].name+"/"+targets[0].name)
	b.ReportMetric(cpus[2]/cpus[0], "cpu-"+targets[2].name+"/"+targets[0].name)
}

// benchConnect measures bursts of benchBurst new connections opened at
// once, each asking one key: the time until all have their answer. smmapd
// is measured cold once first (no idle process, as after a Cyrus restart
// or a quiet minute), then all targets take turns for per.
func benchConnect(b *testing.B, targets []*benchTarget, keys benchKeys, per time.Duration) {
	b.StopTimer()
	for _, tg := range targets {
		if tg.cold != nil {
			tg.cold(b)
			d := benchBurstOnce(b, tg, keys)
			b.ReportMetric(float64(d.Microseconds())/1e3, tg.name+"-cold-ms")
			b.Logf("%-6s cold: all %d answered after %v", tg.name, benchBurst, d.Round(10*time.Microsecond))
		}
	}
	times := make([][]time.Duration, len(targets))
	b.StartTimer()
	for end := time.Now().Add(per); time.Now().Before(end) || len(times[0]) < 5; {
		for i, tg := range targets {
			times[i] = append(times[i], benchBurstOnce(b, tg, keys))
			time.Sleep(benchSettle) // not waiting for a server: leaving the next burst a settled one
		}
	}
	b.StopTimer()
	for i, tg := range targets {
		slices.Sort(times[i])
		p50, worst := lab.Percentile(times[i], 50), times[i][len(times[i])-1]
		b.ReportMetric(float64(p50.Microseconds())/1e3, tg.name+"-p50-ms")
		b.ReportMetric(float64(worst.Microseconds())/1e3, tg.name+"-max-ms")
		b.Logf("%-6s %d bursts of %d: all answered after p50 %v, max %v", tg.name, len(times[i]), benchBurst,
			p50.Round(10*time.Microsecond), worst.Round(10*time.Microsecond))
	}
	b.ReportMetric(0, "ns/op")
}

// benchBurstOnce opens benchBurst connections at once, each asking one key
// with blocking system calls as a C client does (a full listen backlog
// makes connect wait, not fail) and staying open, as an MTA's processes
// keep theirs, until all have their answer: the time that took.
func benchBurstOnce(b *testing.B, tg *benchTarget, keys benchKeys) time.Duration {
	start := make(chan struct{})
	var t0 time.Time
	took := make([]time.Duration, benchBurst)
	files := make([]*os.File, benchBurst)
	errs := make([]error, benchBurst)
	var wg sync.WaitGroup
	for i := range benchBurst {
		wg.Go(func() {
			<-start
			files[i], errs[i] = benchAskOnce(tg.sock, keys.req[i%benchUsers], keys.want[i%benchUsers])
			took[i] = time.Since(t0)
		})
	}
	t0 = time.Now() // before close: the channel orders it before every read
	close(start)
	wg.Wait()
	for i, f := range files {
		if f != nil {
			f.Close()
		}
		if errs[i] != nil {
			b.Fatalf("%s: %v", tg.name, errs[i])
		}
	}
	return slices.Max(took)
}

// benchAskOnce connects, asks req and checks the reply; the caller closes
// the connection it returns (nil if it could not connect).
func benchAskOnce(sock string, req, want []byte) (*os.File, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), sock) // blocking: plain read(2) and write(2)
	// SO_SNDTIMEO also bounds a blocking connect on a UNIX socket.
	tv := syscall.NsecToTimeval(benchTimeout.Nanoseconds())
	for _, opt := range []int{syscall.SO_SNDTIMEO, syscall.SO_RCVTIMEO} {
		if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, opt, &tv); err != nil {
			return f, err
		}
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		return f, fmt.Errorf("connect: %w", err)
	}
	if _, err := f.Write(req); err != nil {
		return f, err
	}
	got, err := readNetstring(bufio.NewReaderSize(f, 64), MaxReply)
	if err != nil {
		return f, fmt.Errorf("reply: %w", err)
	}
	if !bytes.Equal(got, want) {
		return f, fmt.Errorf("%q answered %q; want %q", req, got, want)
	}
	return f, nil
}

// benchConn is one persistent client connection and its latencies.
type benchConn struct {
	c    net.Conn
	r    *bufio.Reader
	next int // index of the next key
	lat  []time.Duration
	err  error
}

// benchDial opens n connections to tg, each asking once so that the server
// has taken it (smmapd forks a process per connection) before any timing;
// they are closed when the case ends.
func benchDial(b *testing.B, tg *benchTarget, keys benchKeys, n int) []*benchConn {
	b.Helper()
	pool := make([]*benchConn, 0, n)
	b.Cleanup(func() {
		for _, c := range pool {
			c.c.Close()
		}
	})
	for i := range n {
		nc, err := net.DialTimeout("unix", tg.sock, benchTimeout)
		if err != nil {
			b.Fatalf("%s: %v", tg.name, err)
		}
		c := &benchConn{c: nc, r: bufio.NewReader(nc), next: i}
		pool = append(pool, c)
		nc.SetDeadline(time.Now().Add(benchTimeout))
		if err := c.ask(keys); err != nil {
			b.Fatalf("%s: %v", tg.name, err)
		}
	}
	return pool
}

func (c *benchConn) ask(keys benchKeys) error {
	k := c.next % benchUsers
	c.next++
	if _, err := c.c.Write(keys.req[k]); err != nil {
		return err
	}
	got, err := readNetstring(c.r, MaxReply)
	if err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	if !bytes.Equal(got, keys.want[k]) {
		return fmt.Errorf("%q answered %q; want %q", keys.req[k], got, keys.want[k])
	}
	return nil
}

// benchSlice drives every connection of pool lock-step for d, recording
// each lookup's latency, and returns the time until the last reply.
func benchSlice(b *testing.B, tg *benchTarget, pool []*benchConn, keys benchKeys, d time.Duration) time.Duration {
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for _, c := range pool {
		c.c.SetDeadline(end.Add(benchTimeout))
		wg.Go(func() {
			for t0 := time.Now(); t0.Before(end); {
				if c.err = c.ask(keys); c.err != nil {
					return
				}
				t1 := time.Now()
				c.lat = append(c.lat, t1.Sub(t0))
				t0 = t1
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	for _, c := range pool {
		if c.err != nil {
			b.Fatalf("%s: %v", tg.name, c.err)
		}
	}
	return took
}
