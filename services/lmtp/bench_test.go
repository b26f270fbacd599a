//go:build integration

package lmtp

// BenchmarkLMTP: the proxy, real Cyrus 3.6 lmtpd and a do-nothing go-smtp
// LMTP server side by side in one run, each in a process of its own. Two
// kinds of load:
//
//   - callouts, as Exim makes them: a new TCP connection per session,
//     LHLO, then MAIL FROM:<> and RCPT TO:<alice@example.com> pipelined in
//     one write, QUIT; against our serve (answers RCPT from the store,
//     check_quota off), Cyrus `lmtpd -a` on TCP, and the do-nothing server.
//   - 10 KiB deliveries to alice over persistent connections (MAIL, RCPT
//     and DATA pipelined in one write as Exim does with PIPELINING, the
//     body and its dot in a second, the next MAIL straight after the
//     reply), each with a Message-ID of its own (Cyrus suppresses
//     duplicates): through our serve into Cyrus's UNIX socket and directly
//     into it; through a second serve into a go-smtp sink that stores
//     nothing and directly into that sink, the proxy's own overhead. The
//     proxied paths run again with BDAT (RFC 3030), which Exim uses when
//     the server offers CHUNKING, as ours does and Cyrus does not: MAIL,
//     RCPT and "BDAT <size> LAST" with the message in one write.
//
// The method is perf-anchors.md §2 and §7, as in the socketmap and
// saslauthd benchmarks: client and servers share the cores, so the targets
// take turns (benchReps rounds, the order rotated each round) and outside
// load hits all of them alike; rates are medians of the rounds, ratios the
// medians of per-round ratios, latencies percentiles of all rounds' samples
// and server CPU /proc/PID/stat deltas around each turn. Cyrus's CPU is
// every process of its master's process group plus what master reaped
// (cutime+cstime): lmtpd exits after 250 connections (master's -U).
//
//	SIDECAR_STRICT=1 go test -tags integration -run '^$' -bench BenchmarkLMTP -benchtime=3s -count=1 -v ./services/lmtp/

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"cyrus-sidecar/e2e/lab"
)

const (
	benchReps    = 5                      // rounds per case; each target gets a turn in each
	benchPer     = 3 * time.Second        // measured time per target and case unless -benchtime is a duration
	benchWarmup  = 300 * time.Millisecond // per target and case, not counted
	benchTimeout = 10 * time.Second       // any single step; past it the benchmark fails
	benchMsgSize = 10 << 10               // bytes of each delivered message, headers included
	benchRcpt    = "alice@example.com"    // a store user with a Cyrus mailbox
	benchSender  = "sender@outside.example"
	benchNoopEnv = "SIDECAR_BENCH_LMTP_NOOP" // "<tcp addr> <unix socket>": run TestLMTPBenchNoop
	// proc(5): utime and stime are in clock ticks of USER_HZ, 100 on Linux.
	benchTicksPerSec = 100
)

// benchTarget is one server under test as its clients see it.
type benchTarget struct {
	name, network, addr string
	bdat                bool // deliveries: BDAT rather than DATA
	// front and back return utime+stime in ticks per process: the server
	// the client talks to, and (nil if none) the one behind it.
	front, back func(testing.TB) map[int]int64
}

// benchResult is one target's numbers in one case.
type benchResult struct {
	rates       []float64 // operations/s in each round
	rate        float64   // their median
	p50, p99    time.Duration
	front, back float64 // server CPU µs per operation
	n           int
}

// benchOp is one operation of a client: a callout session or a delivery.
type benchOp func(c *benchClient) error

func BenchmarkLMTP(b *testing.B) {
	dir := b.TempDir()
	if len(dir)+len("/noop.notify") >= 100 {
		b.Fatalf("temp dir %s too long for UNIX sockets; set TMPDIR=/tmp", dir)
	}
	st, _ := labStore(b)
	cy := labCyrus(b)
	bin := lab.BuildSidecar(b)
	noop := benchNoop(b, dir)
	sink := &benchTarget{name: "sink", network: "unix", addr: noop.sink, front: noop.cpu}
	ours := benchServe(b, bin, dir, "ours", st.Path(), cy.LMTPSocket)
	oursSink := benchServe(b, bin, dir, "ours-sink", st.Path(), noop.sink)
	cyrusCPU := benchCyrusCPU(b, cy)

	callouts := []*benchTarget{
		{name: "ours", network: "tcp", addr: ours.addr, front: ours.cpu},
		{name: "lmtpd-a", network: "tcp", addr: cy.LMTPAddr, front: cyrusCPU},
		{name: "noop", network: "tcp", addr: noop.tcp, front: noop.cpu},
	}
	deliveries := []*benchTarget{
		{name: "ours-cyrus", network: "tcp", addr: ours.addr, front: ours.cpu, back: cyrusCPU},
		{name: "lmtpd", network: "unix", addr: cy.LMTPSocket, front: cyrusCPU},
		{name: "ours-sink", network: "tcp", addr: oursSink.addr, front: oursSink.cpu, back: noop.cpu},
		sink,
		{name: "ours-cyrus-bdat", network: "tcp", addr: ours.addr, front: ours.cpu, back: cyrusCPU, bdat: true},
		{name: "ours-sink-bdat", network: "tcp", addr: oursSink.addr, front: oursSink.cpu, back: noop.cpu, bdat: true},
	}
	msgs := newBenchMessages()
	for _, tg := range callouts { // every target answers alike before anything is timed
		if err := benchCallout(&benchClient{tg: tg}); err != nil {
			b.Fatalf("%s: %v", tg.name, err)
		}
	}
	for _, tg := range deliveries {
		c := benchDial(b, tg, msgs)
		if err := msgs.deliver(c); err != nil {
			b.Fatalf("%s: %v", tg.name, err)
		}
	}

	per := benchPerTarget()
	all := make(map[string]map[string]benchResult)
	for _, n := range []int{1, 8} {
		name := fmt.Sprintf("callout/clients=%d", n)
		b.Run(name, func(b *testing.B) {
			all[name] = benchCase(b, callouts, n, nil, benchCallout, per)
		})
	}
	for _, n := range []int{1, 4, 8} {
		name := fmt.Sprintf("deliver/clients=%d", n)
		b.Run(name, func(b *testing.B) {
			all[name] = benchCase(b, deliveries, n, msgs, msgs.deliver, per)
		})
	}
	// A sub-benchmark of its own, so that its log shows without -v.
	b.Run("targets", func(b *testing.B) {
		if b.N == 1 { // the framework calls again with more b.N until -benchtime passed
			benchSummary(b, all)
			for _, s := range []*benchServer{ours, oursSink, noop} {
				kib, _ := lab.PeakRSS(s.pid)
				b.Logf("peak RSS %-9s %5.1f MiB", s.name, float64(kib)/1024)
			}
		}
		b.ReportMetric(0, "ns/op")
	})
}

// benchPerTarget is each target's measured time per case: -benchtime when
// it is a duration, else benchPer (with -benchtime=Nx).
func benchPerTarget() time.Duration {
	if f := flag.Lookup("test.benchtime"); f != nil && strings.HasSuffix(f.Value.String(), "x") {
		return benchPer
	}
	return lab.BenchTime()
}

// benchCase runs clients concurrent clients per target, round after round,
// and reports each target's numbers. msgs, for deliveries, means persistent
// connections; callouts connect per operation.
func benchCase(b *testing.B, targets []*benchTarget, clients int, msgs *benchMessages, op benchOp, per time.Duration) map[string]benchResult {
	b.StopTimer()
	pools := make([][]*benchClient, len(targets))
	for i, tg := range targets {
		for range clients {
			c := &benchClient{tg: tg}
			if msgs != nil {
				c = benchDial(b, tg, msgs)
			}
			pools[i] = append(pools[i], c)
		}
		benchSlice(b, pools[i], op, benchWarmup)
		for _, c := range pools[i] {
			c.lat = c.lat[:0]
		}
	}
	turn := per / benchReps
	rates := make([][]float64, len(targets))
	front, back := make([]int64, len(targets)), make([]int64, len(targets))
	b.StartTimer()
	for r := range benchReps {
		for k := range targets {
			i := (k + r) % len(targets) // rotated: no target always follows the same one
			tg := targets[i]
			f0, b0 := benchTicks(b, tg.front), benchTicks(b, tg.back)
			n, took := benchSlice(b, pools[i], op, turn)
			front[i] += benchTicks(b, tg.front) - f0
			back[i] += benchTicks(b, tg.back) - b0
			rates[i] = append(rates[i], float64(n)/took.Seconds())
		}
	}
	b.StopTimer()
	res := make(map[string]benchResult)
	for i, tg := range targets {
		var lat []time.Duration
		for _, c := range pools[i] {
			lat = append(lat, c.lat...)
		}
		slices.Sort(lat)
		r := benchResult{rates: rates[i], rate: benchMedian(rates[i]), n: len(lat),
			p50: lab.Percentile(lat, 50), p99: lab.Percentile(lat, 99),
			front: float64(front[i]) * 1e6 / benchTicksPerSec / float64(max(1, len(lat))),
			back:  float64(back[i]) * 1e6 / benchTicksPerSec / float64(max(1, len(lat)))}
		res[tg.name] = r
		unit := "sessions/s"
		if msgs != nil {
			unit = "msgs/s"
		}
		b.ReportMetric(r.rate, tg.name+"-"+unit)
		b.ReportMetric(float64(r.p50.Microseconds()), tg.name+"-p50-µs")
		b.ReportMetric(float64(r.p99.Microseconds()), tg.name+"-p99-µs")
		b.ReportMetric(r.front+r.back, tg.name+"-srv-µs/op")
		b.Logf("%-10s %d clients %7.0f %s (rounds %s)  p50 %6d µs  p99 %6d µs  server CPU %6.0f µs/op (front %.0f, behind %.0f)  n=%d",
			tg.name, clients, r.rate, unit, benchRates(r.rates), r.p50.Microseconds(), r.p99.Microseconds(),
			r.front+r.back, r.front, r.back, r.n)
	}
	if msgs == nil {
		b.ReportMetric(benchRatio(res, "ours", "noop"), "ours/noop")
		b.ReportMetric(benchRatio(res, "ours", "lmtpd-a"), "ours/lmtpd-a")
		b.ReportMetric(res["ours"].front/res["lmtpd-a"].front, "cpu-ours/lmtpd-a")
	} else {
		b.ReportMetric(benchRatio(res, "ours-cyrus", "lmtpd"), "ours-cyrus/lmtpd")
		b.ReportMetric(benchRatio(res, "ours-sink", "sink"), "ours-sink/sink")
		b.ReportMetric(benchRatio(res, "ours-cyrus-bdat", "lmtpd"), "ours-cyrus-bdat/lmtpd")
		b.ReportMetric(benchRatio(res, "ours-sink-bdat", "sink"), "ours-sink-bdat/sink")
	}
	b.ReportMetric(0, "ns/op") // one op is the whole case: meaningless
	return res
}

// benchRatio is the median of a's and z's per-round rate ratios.
func benchRatio(res map[string]benchResult, a, z string) float64 {
	var rs []float64
	for i, ra := range res[a].rates {
		rs = append(rs, ra/res[z].rates[i])
	}
	return benchMedian(rs)
}

func benchRates(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.FormatFloat(r, 'f', 0, 64)
	}
	return strings.Join(parts, " ")
}

func benchMedian(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchSummary logs the targets against what was measured, then a
// table per kind for BENCHMARKS.md.
func benchSummary(b *testing.B, all map[string]map[string]benchResult) {
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1e3, 'f', 2, 64) }
	// direct is what each delivery target is held against.
	direct := map[string]string{"ours-cyrus": "lmtpd", "ours-cyrus-bdat": "lmtpd", "ours-sink": "sink", "ours-sink-bdat": "sink"}
	// The verdicts first: go test shows 10 lines of a benchmark's log without -v.
	for _, n := range []int{1, 8} {
		res, ok := all[fmt.Sprintf("callout/clients=%d", n)]
		if !ok {
			continue
		}
		o, c := res["ours"], res["lmtpd-a"]
		r := benchRatio(res, "ours", "noop")
		// The do-nothing go-smtp server's own ratios follow each target as a
		// reference: what go-smtp alone costs on this machine.
		z := res["noop"]
		b.Logf("callouts at %d: ours ≥ 90%% of noop's sessions/s: %.2f %s; CPU ≤ 1/3 of lmtpd -a's: %.0f vs %.0f µs (%.2f) %s, noop's own %.2f; p99 ≤ half of lmtpd -a's: %s vs %s ms (%.2f) %s, noop's own %.2f",
			n, r, verdict(r >= 0.9), o.front, c.front, o.front/c.front, verdict(o.front*3 <= c.front), z.front/c.front,
			ms(o.p99), ms(c.p99), float64(o.p99)/float64(c.p99), verdict(2*o.p99 <= c.p99), float64(z.p99)/float64(c.p99))
	}
	for _, n := range []int{1, 4, 8} {
		res, ok := all[fmt.Sprintf("deliver/clients=%d", n)]
		if !ok {
			continue
		}
		var parts []string
		for _, name := range []string{"ours-cyrus", "ours-cyrus-bdat", "ours-sink", "ours-sink-bdat"} {
			r := benchRatio(res, name, direct[name])
			d := res[name].p50 - res[direct[name]].p50
			v := ""
			if direct[name] == "lmtpd" {
				v = " " + verdict(r >= 0.9 && d <= time.Millisecond)
			}
			parts = append(parts, fmt.Sprintf("%s %.2f, %+.2f ms%s", name, r, float64(d.Microseconds())/1e3, v))
		}
		b.Logf("deliveries at %d: ≥ 90%% of direct msgs/s and p50 at most +1 ms: %s", n, strings.Join(parts, "; "))
	}
	b.Logf("| clients | ours sessions/s | noop | lmtpd -a | ours / noop | ours / lmtpd -a | p50 ours / noop / lmtpd -a (ms) | p99 ours / noop / lmtpd -a (ms) | server CPU µs/session ours / noop / lmtpd -a |")
	for _, n := range []int{1, 8} {
		res, ok := all[fmt.Sprintf("callout/clients=%d", n)]
		if !ok {
			continue
		}
		o, z, c := res["ours"], res["noop"], res["lmtpd-a"]
		b.Logf("| %d | %.0f | %.0f | %.0f | %.2f | %.2f | %s / %s / %s | %s / %s / %s | %.0f / %.0f / %.0f |", n, o.rate, z.rate, c.rate,
			benchRatio(res, "ours", "noop"), benchRatio(res, "ours", "lmtpd-a"), ms(o.p50), ms(z.p50), ms(c.p50),
			ms(o.p99), ms(z.p99), ms(c.p99), o.front, z.front, c.front)
	}
	b.Logf("| clients | path | msgs/s | / direct | p50 ms (direct) | p99 ms (direct) | server CPU µs/msg: proxy + behind |")
	for _, n := range []int{1, 4, 8} {
		res, ok := all[fmt.Sprintf("deliver/clients=%d", n)]
		if !ok {
			continue
		}
		for _, name := range []string{"lmtpd", "ours-cyrus", "ours-cyrus-bdat", "sink", "ours-sink", "ours-sink-bdat"} {
			r, z := res[name], res[direct[name]]
			if direct[name] == "" {
				b.Logf("| %d | %s | %.0f | | %s | %s | %.0f |", n, name, r.rate, ms(r.p50), ms(r.p99), r.front)
				continue
			}
			b.Logf("| %d | %s | %.0f | %.2f | %s (%s) | %s (%s) | %.0f + %.0f |", n, name, r.rate, benchRatio(res, name, direct[name]),
				ms(r.p50), ms(z.p50), ms(r.p99), ms(z.p99), r.front, r.back)
		}
	}
}

// benchClient is one client of a target and its latencies; conn and r are
// its persistent connection (deliveries) or the current one (callouts).
type benchClient struct {
	tg   *benchTarget
	conn net.Conn
	r    *bufio.Reader
	msg  []byte // deliveries: what is written after the envelope (DATA) or with it (BDAT)
	idAt int    // where in msg the Message-ID's digits are
	lat  []time.Duration
	err  error
}

// benchSlice lets every client make operations back to back for d,
// recording each one's latency, and returns how many were done and the
// time until the last one ended.
func benchSlice(b *testing.B, pool []*benchClient, op benchOp, d time.Duration) (int, time.Duration) {
	start := time.Now()
	end := start.Add(d)
	n0 := 0
	for _, c := range pool {
		n0 += len(c.lat)
	}
	var wg sync.WaitGroup
	for _, c := range pool {
		wg.Go(func() {
			for t0 := time.Now(); t0.Before(end); {
				if c.err = op(c); c.err != nil {
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
	n := -n0
	for _, c := range pool {
		if c.err != nil {
			b.Fatalf("%s: %v", c.tg.name, c.err)
		}
		n += len(c.lat)
	}
	return n, took
}

// benchCallout is one callout session as Exim makes it: connect, LHLO,
// MAIL FROM:<> and RCPT pipelined in one write, QUIT, close.
func benchCallout(c *benchClient) error {
	conn, err := net.DialTimeout(c.tg.network, c.tg.addr, benchTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(benchTimeout)); err != nil {
		return err
	}
	if c.r == nil {
		c.r = bufio.NewReaderSize(conn, 4096)
	} else {
		c.r.Reset(conn)
	}
	steps := []struct {
		send string
		want []int
	}{
		{"", []int{220}},
		{"LHLO callout.bench.localhost\r\n", []int{250}},
		{"MAIL FROM:<>\r\nRCPT TO:<" + benchRcpt + ">\r\n", []int{250, 250}},
		{"QUIT\r\n", []int{221}},
	}
	for _, s := range steps {
		if s.send != "" {
			if _, err := io.WriteString(conn, s.send); err != nil {
				return err
			}
		}
		for _, code := range s.want {
			if err := benchExpect(c.r, code); err != nil {
				return fmt.Errorf("after %q: %w", s.send, err)
			}
		}
	}
	return nil
}

// benchExpect reads one reply and checks its code.
func benchExpect(r *bufio.Reader, want int) error {
	for lines := 0; ; lines++ {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("reply: %w", err)
		}
		if len(line) < 4 || lines >= 100 || (line[3] != ' ' && line[3] != '-') {
			return fmt.Errorf("malformed reply line %q", line)
		}
		if line[3] == '-' {
			continue
		}
		if code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0'); code != want {
			return fmt.Errorf("reply %q; want %d", bytes.TrimRight(line, "\r\n"), want)
		}
		return nil
	}
}

// benchMessages makes the delivered messages: benchMsgSize bytes of 72-byte
// CRLF lines with a Message-ID unique in the run.
type benchMessages struct {
	tmpl     []byte // the message, dot-stuffed (nothing to stuff) and with its final ".\r\n"
	idAt     int    // where the 16 hex digits of the Message-ID start
	envelope []byte
	next     atomic.Uint64
}

// benchSize is the SIZE= on MAIL, as Exim sends it to a server that
// announces SIZE: the message size plus its size_addition (1024).
const benchSize = benchMsgSize + 1024

func newBenchMessages() *benchMessages {
	head := fmt.Sprintf("From: Bench <%s>\r\nTo: <%s>\r\nSubject: benchmark\r\nMessage-ID: <%016x.%s@bench.example>\r\n\r\n",
		benchSender, benchRcpt, 0, rand.Text()[:8])
	m := &benchMessages{idAt: strings.Index(head, "<0000000000000000") + 1,
		envelope: []byte(fmt.Sprintf("MAIL FROM:<%s> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n", benchSender, benchSize, benchRcpt))}
	msg := []byte(head)
	for i := 0; len(msg) < benchMsgSize; i++ {
		n := min(72, benchMsgSize-len(msg))
		if left := benchMsgSize - len(msg) - n; left > 0 && left < 3 {
			n -= 3 - left // the last line must hold a character and its CRLF
		}
		msg = append(append(msg, bytes.Repeat([]byte{byte('a' + i%26)}, n-2)...), "\r\n"...)
	}
	m.tmpl = append(msg, ".\r\n"...)
	return m
}

// benchDial opens a persistent connection to tg (greeting, LHLO), closed
// when the case ends.
func benchDial(b *testing.B, tg *benchTarget, m *benchMessages) *benchClient {
	b.Helper()
	conn, err := net.DialTimeout(tg.network, tg.addr, benchTimeout)
	if err != nil {
		b.Fatalf("%s: %v", tg.name, err)
	}
	b.Cleanup(func() {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(conn, "QUIT\r\n") // a courtesy: the close ends it either way
		conn.Close()
	})
	c := &benchClient{tg: tg, conn: conn, r: bufio.NewReaderSize(conn, 4096), msg: slices.Clone(m.tmpl), idAt: m.idAt}
	if tg.bdat { // the raw message: no stuffing, no dot
		head := fmt.Sprintf("MAIL FROM:<%s> SIZE=%d\r\nRCPT TO:<%s>\r\nBDAT %d LAST\r\n", benchSender, benchSize, benchRcpt, benchMsgSize)
		c.msg, c.idAt = append([]byte(head), m.tmpl[:benchMsgSize]...), len(head)+m.idAt
	}
	conn.SetDeadline(time.Now().Add(benchTimeout))
	err = benchExpect(c.r, 220)
	if err == nil {
		_, err = io.WriteString(conn, "LHLO deliver.bench.localhost\r\n")
	}
	if err == nil {
		err = benchExpect(c.r, 250)
	}
	if err != nil {
		b.Fatalf("%s: %v", tg.name, err)
	}
	return c
}

// deliver sends one message on c's connection with a new Message-ID.
func (m *benchMessages) deliver(c *benchClient) error {
	if err := c.conn.SetDeadline(time.Now().Add(benchTimeout)); err != nil {
		return err
	}
	strconv.AppendUint(c.msg[:c.idAt], m.next.Add(1)+1<<60, 16) // 16 hex digits, in place
	if c.tg.bdat {
		if _, err := c.conn.Write(c.msg); err != nil {
			return err
		}
		for _, step := range []string{"MAIL", "RCPT", "BDAT"} { // RFC 2033 §4.2: one reply per RCPT after the last chunk
			if err := benchExpect(c.r, 250); err != nil {
				return fmt.Errorf("%s: %w", step, err)
			}
		}
		return nil
	}
	if _, err := c.conn.Write(m.envelope); err != nil {
		return err
	}
	for _, code := range []int{250, 250, 354} {
		if err := benchExpect(c.r, code); err != nil {
			return fmt.Errorf("envelope: %w", err)
		}
	}
	if _, err := c.conn.Write(c.msg); err != nil {
		return err
	}
	if err := benchExpect(c.r, 250); err != nil {
		return fmt.Errorf("end of data: %w", err)
	}
	return nil
}

// benchServer is a server process the benchmark started.
type benchServer struct {
	name, addr string // addr: its LMTP listener (TCP)
	sink       string // the do-nothing server's UNIX socket
	tcp        string // the do-nothing server's TCP address
	pid        int
	cpu        func(testing.TB) map[int]int64
}

// benchServe runs `cyrus-sidecar serve` with only the LMTP proxy, on the
// store at storePath, toward the LMTP socket cyrusSock; otherwise the
// defaults (check_quota off, relation header on, log level info).
func benchServe(b *testing.B, bin, dir, name, storePath, cyrusSock string) *benchServer {
	addr := freeAddr(b)
	conf := filepath.Join(dir, name+".toml")
	err := os.WriteFile(conf, fmt.Appendf(nil, `[store]
path = %q
[cyrus]
default_domain = "example.com"
lmtp = "unix:%s"
[log]
format = "text"
[serve]
shutdown_grace = "1s"
[saslauthd]
enabled = false
[socketmap]
enabled = false
[vacation]
enabled = false
[lmtp]
listen = [%q]
hostname = "sidecar.bench.localhost"
`, storePath, cyrusSock, addr), 0o644)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "-config", conf)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "STATE_DIRECTORY="+dir, "RUNTIME_DIRECTORY="+dir)
	pid := lab.StartNotify(b, name, cmd, dir, benchTimeout)
	return &benchServer{name: name, addr: addr, pid: pid, cpu: benchPIDCPU(pid)}
}

// benchNoop runs this test binary again as the do-nothing server
// (TestLMTPBenchNoop), on TCP for callouts and a UNIX socket as the sink.
func benchNoop(b *testing.B, dir string) *benchServer {
	s := &benchServer{name: "noop", tcp: freeAddr(b), sink: filepath.Join(dir, "sink.sock")}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLMTPBenchNoop$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), benchNoopEnv+"="+s.tcp+" "+s.sink)
	s.pid = lab.StartNotify(b, "noop", cmd, dir, benchTimeout)
	s.cpu = benchPIDCPU(s.pid)
	return s
}

// TestLMTPBenchNoop is no test: it is BenchmarkLMTP's do-nothing go-smtp
// LMTP server, in a process of its own: every recipient accepted, every
// message read and dropped, go-smtp configured as the proxy configures it;
// until SIGTERM.
func TestLMTPBenchNoop(t *testing.T) {
	tcpAddr, sock, ok := strings.Cut(os.Getenv(benchNoopEnv), " ")
	if !ok {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	cfg := DefaultConfig()
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return benchNoopSession{}, nil }))
	srv.LMTP = true
	srv.Domain = "noop.bench.localhost"
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxMessageBytes = cfg.MaxSize
	srv.MaxLineLength = cfg.MaxLine + 2
	srv.ReadTimeout = cfg.CommandTimeout
	srv.WriteTimeout = cfg.CommandTimeout
	var lns []net.Listener
	for _, a := range [][2]string{{"tcp", tcpAddr}, {"unix", sock}} {
		ln, err := net.Listen(a[0], a[1])
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	lab.NotifyReady(t)
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Go(func() { srv.Serve(ln) })
	}
	<-ctx.Done()
	srv.Close() // listeners and connections
	wg.Wait()
}

// benchNoopSession accepts everything and stores nothing.
type benchNoopSession struct{}

func (benchNoopSession) Reset()                               {}
func (benchNoopSession) Logout() error                        { return nil }
func (benchNoopSession) Mail(string, *smtp.MailOptions) error { return nil }
func (benchNoopSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (benchNoopSession) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }

func benchPIDCPU(pid int) func(testing.TB) map[int]int64 {
	return func(t testing.TB) map[int]int64 {
		st, err := lab.Stat(pid)
		if err != nil {
			t.Fatal(err)
		}
		return map[int]int64{pid: st.CPU}
	}
}

// benchCyrusCPU returns the CPU of this Cyrus: every process in master's
// process group (the lab starts master as a group leader; its services
// stay in the group), and under key -1 what master has reaped of its
// children (cutime+cstime), so that an lmtpd that exited between two
// snapshots still counts, once.
func benchCyrusCPU(b *testing.B, cy *lab.Cyrus) func(testing.TB) map[int]int64 {
	data, err := os.ReadFile(filepath.Join(cy.Dir, "run/master.pid"))
	if err != nil {
		b.Fatal(err)
	}
	master, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		b.Fatalf("master.pid: %v", err)
	}
	if st, err := lab.Stat(master); err != nil || st.Pgrp != master {
		b.Fatalf("cyrus master %d: not a process group leader (%+v, %v)", master, st, err)
	}
	return func(t testing.TB) map[int]int64 {
		// Reaped first: a child reaped while the group is listed is
		// then missed rather than counted twice.
		out := map[int]int64{-1: benchReaped(t, master)}
		ents, err := os.ReadDir("/proc")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if st, err := lab.Stat(pid); err == nil && st.Pgrp == master { // else gone meanwhile
				out[pid] = st.CPU
			}
		}
		return out
	}
}

// benchReaped is cutime+cstime of pid: the CPU of its children it has
// waited for, in ticks.
func benchReaped(t testing.TB, pid int) int64 {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// proc(5): fields 16 and 17, counted from the last ')' as lab.Stat does.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 15 {
		t.Fatalf("/proc/%d/stat: %d fields", pid, len(f))
	}
	cu, err1 := strconv.ParseInt(f[13], 10, 64)
	cs, err2 := strconv.ParseInt(f[14], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: cutime %q, cstime %q", pid, f[13], f[14])
	}
	return cu + cs
}

// benchTicks sums ticks over a snapshot (0 for no source).
func benchTicks(t testing.TB, cpu func(testing.TB) map[int]int64) int64 {
	if cpu == nil {
		return 0
	}
	var n int64
	for _, v := range cpu(t) {
		n += v
	}
	return n
}
