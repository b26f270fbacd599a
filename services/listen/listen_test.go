package listen

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	for a, want := range map[string]string{
		"unix:/run/x.sock":                  "",
		"127.0.0.1:2003":                    "",
		"[::1]:2003":                        "",
		"unix:run/x.sock":                   "must be absolute",
		"unix:/" + strings.Repeat("a", 120): "the limit is 107",
		"localhost":                         "must be \"unix:/absolute/path\" or \"host:port\"",
		":2003":                             "must be \"unix:/absolute/path\" or \"host:port\"",
		"127.0.0.1:0":                       "port must be 1 to 65535",
		"":                                  "must be set",
	} {
		if got := Check(a); (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("Check(%q) = %q, want %q", a, got, want)
		}
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "sub", "s.sock")
	ln, err := Listen("unix:"+sock, Options{Mode: 0o660})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, %v", fi.Mode().Perm(), err)
	}
	// A live owner: refuse.
	if _, err := Listen("unix:"+sock, Options{}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second Listen on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	// A stale file from a crash: replaced.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err = Listen("unix:"+sock, Options{})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln.Close()
	// Not a socket: refuse, never delete an admin's file.
	os.WriteFile(sock, []byte("x"), 0o644)
	if _, err := Listen("unix:"+sock, Options{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file: %v", err)
	}
}

func TestCheckListen(t *testing.T) {
	for a, ok := range map[string]bool{"127.0.0.1:2004": true, "[::1]:2004": true, "localhost:2004": true,
		"unix:/run/x": true, "0.0.0.0:2004": false, "192.0.2.1:2004": false, "[::]:2004": false, "mail.example.com:2004": false} {
		if got := CheckListen(a) == ""; got != ok {
			t.Errorf("CheckListen(%q) ok = %v, want %v (%s)", a, got, ok, CheckListen(a))
		}
	}
}

func TestMode(t *testing.T) {
	if m, err := Mode("0660"); err != nil || m != 0o660 {
		t.Errorf("Mode(0660) = %v, %v", m, err)
	}
	for _, bad := range []string{"660x", "1777", "", "rw"} {
		if _, err := Mode(bad); err == nil {
			t.Errorf("Mode(%q) accepted", bad)
		}
	}
}

func TestServer(t *testing.T) {
	ln, err := Listen("unix:"+filepath.Join(t.TempDir(), "s.sock"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	srv := &Server{
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Slots: make(chan struct{}, 1),
		Busy:  func(c net.Conn) { c.Write([]byte("busy")) },
		Handle: func(ctx context.Context, c net.Conn) {
			c.Write([]byte("hello"))
			// Ignores shutdown, like a request stuck on a silent
			// client: only closing the connection ends it.
			c.Read(make([]byte, 1))
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- srv.Serve(ctx, ln, func() time.Duration { return 200 * time.Millisecond }) }()
	first, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(first, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("first: %q, %v", buf, err)
	}
	second, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(second); string(b) != "busy" {
		t.Errorf("over the limit: %q", b)
	}
	start := time.Now()
	cancel()
	select {
	case n := <-done:
		if n != 1 || time.Since(start) > 5*time.Second {
			t.Errorf("Serve closed %d connections after %v, want 1 after the 200ms grace", n, time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}
