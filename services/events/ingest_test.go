package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// ingestTestTimeout is generous: the machines are shared.
const ingestTestTimeout = 10 * time.Second

func testIngestConfig(t *testing.T) IngestConfig {
	t.Helper()
	cfg := DefaultIngestConfig(t.TempDir())
	cfg.SocketGroup = "" // the test user may not be in group mail
	cfg.RelaySocket = ""
	return cfg
}

// startIngest binds and runs an Ingest until the test ends.
func startIngest(t *testing.T, cfg IngestConfig, uid int) *Ingest {
	t.Helper()
	in, err := NewIngest(cfg, uid, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return in
}

func send(t *testing.T, path string, b []byte) {
	t.Helper()
	c, err := net.Dial("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

func eventDatagram(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata/events", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return wire(b)
}

// waitFor polls cond: counters are updated by the reader goroutine.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ingestTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIngestConfigValidate(t *testing.T) {
	if err := DefaultIngestConfig("/run/cyrus-sidecar").Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	bad := IngestConfig{Socket: "run/notify", SocketMode: "rw", RelaySocket: "/x/" + strings.Repeat("a", 120),
		RingSize: 1, RingBytes: 10, ReceiveBuffer: -1}
	err := bad.Validate()
	for _, key := range []string{"socket:", "socket_mode", "cyrus_user", "relay_socket", "ring_size", "ring_bytes", "receive_buffer"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Validate: %v; want a %s problem", err, key)
		}
	}
	same := DefaultIngestConfig("/run/x")
	same.RelaySocket = same.Socket
	if err := same.Validate(); err == nil || !strings.Contains(err.Error(), "relay_socket") {
		t.Errorf("relay to itself: %v", err)
	}
}

// TestIngestUID: datagrams are accepted only from the allowed uid. The
// test can only send as itself, so "allowed = ours" must accept and
// "allowed = another" must drop.
func TestIngestUID(t *testing.T) {
	body := eventDatagram(t, "messagenew-other-domain")
	t.Run("ours", func(t *testing.T) {
		in := startIngest(t, testIngestConfig(t), os.Getuid())
		fi, err := os.Stat(in.Addr())
		if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("socket mode %v, %v", fi.Mode(), err)
		}
		send(t, in.Addr(), body)
		ctx, cancel := context.WithTimeout(t.Context(), ingestTestTimeout)
		defer cancel()
		r, err := in.Next(ctx)
		if err != nil || string(r.Data) != string(body) || r.Received.IsZero() {
			t.Fatalf("Next = %q, %v", r.Data, err)
		}
	})
	t.Run("other", func(t *testing.T) {
		in := startIngest(t, testIngestConfig(t), os.Getuid()+1)
		before := counterValue(droppedUID)
		send(t, in.Addr(), body)
		waitFor(t, "uid drop", func() bool { return counterValue(droppedUID) > before })
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if r, err := in.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("datagram from another uid queued: %q, %v", r.Data, err)
		}
	})
}

// TestIngestOverflow fills the ring with nobody consuming: the writer
// (standing in for Cyrus) is never held up, drops are counted and the
// accounts remembered for the reconciler.
func TestIngestOverflow(t *testing.T) {
	cfg := testIngestConfig(t)
	cfg.RingSize = 16
	in := startIngest(t, cfg, os.Getuid())
	before := counterValue(droppedOverflow)
	c, err := net.Dial("unixgram", in.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	carol := eventDatagram(t, "messagenew-other-domain")
	alice := eventDatagram(t, "messagemove")
	const burst = 2000
	start := time.Now()
	for i := range burst {
		b := carol
		if i%2 == 1 {
			b = alice
		}
		// A write blocks only while the kernel queue is full, that is
		// while the reader is not draining it.
		c.SetWriteDeadline(time.Now().Add(ingestTestTimeout))
		if _, err := c.Write(b); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d datagrams written in %v", burst, elapsed)
	if elapsed > 5*time.Second {
		t.Errorf("burst of %d writes took %v: the reader held the writer up", burst, elapsed)
	}
	waitFor(t, "drops", func() bool { return counterValue(droppedOverflow)-before >= float64(burst-cfg.RingSize) })
	if got := len(in.ring); got != cfg.RingSize {
		t.Errorf("ring holds %d, want %d", got, cfg.RingSize)
	}
	d := in.TakeDirty(testParser(t, nil))
	if d.All || d.Shared || fmt.Sprint(d.Accounts) != "[alice@example.com carol@other.org]" {
		t.Errorf("TakeDirty = %+v", d)
	}
	if d := in.TakeDirty(testParser(t, nil)); d.All || len(d.Accounts) != 0 {
		t.Errorf("second TakeDirty = %+v, want empty", d)
	}
	// Draining frees the ring for new datagrams.
	ctx, cancel := context.WithTimeout(t.Context(), ingestTestTimeout)
	defer cancel()
	for range cfg.RingSize {
		if _, err := in.Next(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if in.bytes.Load() != 0 {
		t.Errorf("ring bytes %d after draining", in.bytes.Load())
	}
	send(t, in.Addr(), carol)
	if _, err := in.Next(ctx); err != nil {
		t.Fatalf("after draining: %v", err)
	}
}

func TestIngestOverflowUnattributed(t *testing.T) {
	in := &Ingest{dirty: map[string]struct{}{}}
	in.overflow(wire([]byte(`{"event":"MessageNew","uri":"imap://h/user/al\"ice"}`)))
	in.overflow(wire([]byte(`{"event":"MessageNew","uri":"imap://h/shared/team"}`)))
	d := in.TakeDirty(testParser(t, nil))
	if !d.All || !d.Shared {
		t.Errorf("TakeDirty = %+v, want All and Shared", d)
	}
}

// TestIngestRelay: a datagram of another class reaches notifyd's socket
// byte for byte; a missing notifyd is counted, never waited for.
func TestIngestRelay(t *testing.T) {
	dir := t.TempDir()
	notifyd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notifyd"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notifyd.Close()
	cfg := testIngestConfig(t)
	cfg.RelaySocket = filepath.Join(dir, "notifyd")
	in := startIngest(t, cfg, os.Getuid())
	for _, name := range []string{"sieve-notify.bin", "mailnotifier.bin"} {
		want, err := os.ReadFile(filepath.Join("testdata/datagrams", name))
		if err != nil {
			t.Fatal(err)
		}
		send(t, in.Addr(), want)
		buf := make([]byte, MaxDatagram)
		notifyd.SetReadDeadline(time.Now().Add(ingestTestTimeout))
		n, err := notifyd.Read(buf)
		if err != nil || string(buf[:n]) != string(want) {
			t.Fatalf("%s: notifyd got %q, %v; want %q", name, buf[:n], err, want)
		}
	}
	if len(in.ring) != 0 {
		t.Errorf("relayed datagrams queued as events")
	}
	notifyd.Close()
	before := counterValue(relayError)
	b, _ := os.ReadFile("testdata/datagrams/sieve-notify.bin")
	send(t, in.Addr(), b)
	waitFor(t, "relay error", func() bool { return counterValue(relayError) > before })
}

func TestIngestListen(t *testing.T) {
	cfg := testIngestConfig(t)
	in := startIngest(t, cfg, os.Getuid())
	// A live socket is refused, never stolen.
	other, err := NewIngest(cfg, os.Getuid(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Listen(); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second Listen: %v", err)
	}
	if _, err := os.Stat(in.Addr()); err != nil {
		t.Fatalf("the failed Listen removed the live socket: %v", err)
	}
	// A stale one (a crash) is replaced.
	stale := filepath.Join(t.TempDir(), "stale")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: stale, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	c.Close() // unixgram leaves the file behind
	cfg2 := testIngestConfig(t)
	cfg2.Socket = stale
	startIngest(t, cfg2, os.Getuid())
	// Not a socket: refused.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	cfg3 := testIngestConfig(t)
	cfg3.Socket = file
	in3, _ := NewIngest(cfg3, os.Getuid(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := in3.Listen(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a file: %v", err)
	}
}

// TestIngestUseConn: a socket handed over (systemd socket activation)
// works the same and is not removed at shutdown.
func TestIngestUseConn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "activated")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	in, err := NewIngest(testIngestConfig(t), os.Getuid(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := in.UseConn(conn); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	body := eventDatagram(t, "mailboxcreate")
	send(t, path, body)
	rctx, rcancel := context.WithTimeout(t.Context(), ingestTestTimeout)
	defer rcancel()
	if r, err := in.Next(rctx); err != nil || string(r.Data) != string(body) {
		t.Fatalf("Next = %q, %v", r.Data, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("activated socket removed: %v", err)
	}
}

// TestIngestPump runs the whole consumer side: datagrams in, parsed and
// merged events out, a lone MailboxModseq released after the window.
func TestIngestPump(t *testing.T) {
	in := startIngest(t, testIngestConfig(t), os.Getuid())
	p := testParser(t, nil)
	c := NewCoalescer(CoalesceConfig{Window: 50 * time.Millisecond, MaxPerWindow: 10})
	out := make(chan Event, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- in.Pump(ctx, p, c, func(ev Event) { out <- ev }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Pump: %v", err)
		}
	}()
	send(t, in.Addr(), eventDatagram(t, "mailboxmodseq-projects")) // held, then dropped by the append
	send(t, in.Addr(), eventDatagram(t, "messageappend"))
	send(t, in.Addr(), eventDatagram(t, "login-ignored"))
	send(t, in.Addr(), eventDatagram(t, "flagsset"))
	var got []string
	timeout := time.After(ingestTestTimeout)
	for len(got) < 2 {
		select {
		case ev := <-out:
			got = append(got, ev.CyrusEvent+" "+ev.Mailbox)
		case <-timeout:
			t.Fatalf("events so far: %v", got)
		}
	}
	if fmt.Sprint(got) != "[MessageAppend INBOX/Projects FlagsSet INBOX]" {
		t.Errorf("events %v", got)
	}
	// A MailboxModseq alone (no specific event near it) comes out once
	// its window has passed.
	send(t, in.Addr(), wire([]byte(`{"event":"MailboxModseq","uri":"imap://h/user/bob;UIDVALIDITY=5","user":"","vnd.cmu.mbtype":"e","vnd.cmu.mailboxACL":"bob\tlrswipkxtecdan\t"}`)))
	select {
	case ev := <-out:
		if ev.Type != TypeMailboxChanged || ev.Account != "bob@example.com" || ev.Mailbox != "INBOX" {
			t.Errorf("lone MailboxModseq came out as %+v", ev)
		}
	case <-time.After(ingestTestTimeout):
		t.Fatal("lone MailboxModseq never released")
	}
}

// counterValue reads a counter (the package's collectors are global, so
// tests compare before and after).
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
