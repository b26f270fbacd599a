package saslauthd

// In-process benchmarks of the uncached SHA512-crypt login, the path that
// BenchmarkSaslauthd's ours-sha target measures against its hash-only
// ceiling: each layer on its own, so that the difference between two
// layers is what that layer costs.
//
//	go test -run '^$' -bench BenchmarkUncached -count 6 ./services/saslauthd/ | benchstat -
//	go test -run '^$' -bench 'BenchmarkUncached/decide$' -cpuprofile cpu.out ./services/saslauthd/

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// uncachedSHA512 is `openssl passwd -6 -salt saltsalt secret` (5000
// rounds), the hash BenchmarkSaslauthd gives alice (benchSHA512).
const uncachedSHA512 = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"

// uncachedService is a responder configured as BenchmarkSaslauthd's
// ours-sha target (cache_entries = 0, rehash_on_login = false, defaults
// otherwise) on a store file holding alice@example.com with uncachedSHA512.
func uncachedService(b *testing.B) (*Service, string) {
	b.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(b.TempDir(), "s.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	c, _ := store.NewCanon("example.com", "+")
	st.AddOrg(ctx, "Acme")
	st.AddDomain(ctx, "example.com", "Acme")
	a, _ := c.Exact("alice@example.com")
	if _, err := st.AddUser(ctx, store.NewUser{Address: a, PasswordHash: store.Secret(uncachedSHA512)}); err != nil {
		b.Fatal(err)
	}
	h, err := password.New(password.DefaultParams())
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(b.TempDir(), "mux")
	cfg := DefaultConfig("")
	cfg.Listen = "unix:" + sock
	cfg.CacheEntries = 0
	cfg.RehashOnLogin = false
	s := New(cfg, TokenKeys{}, st, c, h, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	return s, sock
}

// BenchmarkUncached reports, besides wall time, the process's CPU time per
// operation (cpu-µs/op, from getrusage): on a machine shared with other
// work, wall time moves with their load, CPU time much less.
func BenchmarkUncached(b *testing.B) {
	// The hash alone: what the integration benchmark's ceiling times.
	b.Run("verify", func(b *testing.B) {
		defer uncachedCPU(b)()
		for b.Loop() {
			if ok, err := password.Verify(uncachedSHA512, "secret"); !ok || err != nil {
				b.Fatalf("Verify = %v, %v", ok, err)
			}
		}
	})
	// The decision: store lookups, the verify slot, the verify.
	b.Run("decide", func(b *testing.B) {
		s, _ := uncachedService(b)
		ctx := context.Background()
		defer uncachedCPU(b)()
		for b.Loop() {
			if r := s.Authenticate(ctx, "alice", "", "imap", "secret"); !r.OK {
				b.Fatalf("Authenticate = %+v", r)
			}
		}
	})
	// The request as serve handles it after reading it: the brake, the
	// decision, metrics and the audit record, with the audit writer running.
	b.Run("authenticate", func(b *testing.B) {
		s, _ := uncachedService(b)
		stop := uncachedRun(b, s)
		defer stop()
		ctx := context.Background()
		req := Request{Login: "alice", Password: "secret", Service: "imap"}
		defer uncachedCPU(b)()
		for b.Loop() {
			if r := s.authenticate(ctx, req); !r.OK {
				b.Fatalf("authenticate = %+v", r)
			}
		}
	})
	// Everything, over the socket: one connection per request as libsasl.
	b.Run("socket", func(b *testing.B) {
		s, sock := uncachedService(b)
		if err := s.Listen(); err != nil {
			b.Fatal(err)
		}
		stop := uncachedRun(b, s)
		defer stop()
		req := encode("alice", "secret", "imap", "")
		buf := make([]byte, 64)
		defer uncachedCPU(b)()
		for b.Loop() {
			if reply := uncachedAsk(b, sock, req, buf); reply != "OK" {
				b.Fatalf("reply %q", reply)
			}
		}
	})
}

// BenchmarkUncachedPaired alternates the layers of BenchmarkUncached in one
// loop, a request of each per iteration, and reports the median time of
// each and the medians of the per-iteration differences: outside load on a
// shared machine hits the layers alike, so the overhead of our code over
// the hash alone (decide-verify-µs, socket-verify-µs) stays readable when
// the absolute times do not.
func BenchmarkUncachedPaired(b *testing.B) {
	s, sock := uncachedService(b)
	if err := s.Listen(); err != nil {
		b.Fatal(err)
	}
	stop := uncachedRun(b, s)
	defer stop()
	ctx := context.Background()
	req := encode("alice", "secret", "imap", "")
	buf := make([]byte, 64)
	var verify, decide, socket, dDecide, dSocket []float64
	for b.Loop() {
		t0 := time.Now()
		if ok, err := password.Verify(uncachedSHA512, "secret"); !ok || err != nil {
			b.Fatalf("Verify = %v, %v", ok, err)
		}
		t1 := time.Now()
		if r := s.Authenticate(ctx, "alice", "", "imap", "secret"); !r.OK {
			b.Fatalf("Authenticate = %+v", r)
		}
		t2 := time.Now()
		if reply := uncachedAsk(b, sock, req, buf); reply != "OK" {
			b.Fatalf("reply %q", reply)
		}
		t3 := time.Now()
		v, d, k := t1.Sub(t0).Seconds()*1e6, t2.Sub(t1).Seconds()*1e6, t3.Sub(t2).Seconds()*1e6
		verify, decide, socket = append(verify, v), append(decide, d), append(socket, k)
		dDecide, dSocket = append(dDecide, d-v), append(dSocket, k-v)
	}
	median := func(x []float64) float64 {
		slices.Sort(x)
		return x[len(x)/2]
	}
	b.ReportMetric(median(verify), "verify-µs")
	b.ReportMetric(median(decide), "decide-µs")
	b.ReportMetric(median(socket), "socket-µs")
	b.ReportMetric(median(dDecide), "decide-verify-µs")
	b.ReportMetric(median(dSocket), "socket-verify-µs")
	b.ReportMetric(0, "ns/op")
}

// uncachedRun runs s (serving and writing the audit) until the returned
// function is called.
func uncachedRun(b *testing.B, s *Service) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Second) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	}
}

func uncachedAsk(b *testing.B, sock string, req, buf []byte) string {
	c, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		b.Fatal(err)
	}
	n, err := io.ReadFull(c, buf[:2])
	if err != nil || n != 2 {
		b.Fatal(err)
	}
	l := int(buf[0])<<8 | int(buf[1])
	if _, err := io.ReadFull(c, buf[2:2+l]); err != nil {
		b.Fatal(err)
	}
	return string(buf[2 : 2+l])
}

// uncachedCPU starts counting the process's CPU time; the function it
// returns reports it per operation.
func uncachedCPU(b *testing.B) func() {
	start := uncachedRusage(b)
	return func() {
		b.ReportMetric(float64((uncachedRusage(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
	}
}

func uncachedRusage(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
