package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cyrus-sidecar/store"
)

// testStore is a real store in a temp dir with a small directory.
func testStore(t testing.TB) (*store.Store, store.Canon) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "s.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c, _ := store.NewCanon("example.com", "+")
	a := func(s string) store.Address {
		x, err := c.Exact(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	st.AddOrg(ctx, "Acme")
	st.AddDomain(ctx, "example.com", "Acme")
	st.AddOrg(ctx, "Other")
	st.AddDomain(ctx, "other.org", "Other")
	for _, u := range []string{"alice@example.com", "bob@example.com", "carol@other.org"} {
		if _, err := st.AddUser(ctx, store.NewUser{Address: a(u)}); err != nil {
			t.Fatal(err)
		}
	}
	st.SetDisabled(ctx, a("bob@example.com"), true)
	st.AddAlias(ctx, a("sales@example.com"), []store.Address{a("alice@example.com"), a("friend@outside.org")})
	st.SetCatchAll(ctx, "other.org", a("carol@other.org"))
	return st, c
}

// start runs the responder on a temp UNIX socket until the test ends.
func start(t testing.TB, st Store, c store.Canon, mod func(*Config)) (*Service, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "sm.sock")
	cfg := DefaultConfig("")
	cfg.Listen = []string{"unix:" + sock}
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	s := New(cfg, st, c, log)
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func() time.Duration { return 2 * time.Second }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, sock
}

func dial(t testing.TB, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func ask(t testing.TB, c net.Conn, r *bufio.Reader, req string) string {
	t.Helper()
	if _, err := c.Write(appendNetstring(nil, req)); err != nil {
		t.Fatal(err)
	}
	b, err := readNetstring(r, MaxReply)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	return string(b)
}

func TestMaps(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, nil)
	conn := dial(t, sock)
	r := bufio.NewReader(conn)
	tests := []struct{ req, want string }{
		{"mailbox alice@example.com", "OK alice@example.com"},
		{"mailbox Alice@Example.COM", "OK Alice@Example.COM"}, // echoed as sent, like smmapd
		{"mailbox alice", "OK alice"},                         // default domain
		{"mailbox alice+folder@example.com", "OK alice+folder@example.com"},
		{"mailbox sales@example.com", "OK sales@example.com"},
		{"mailbox anyone@other.org", "OK anyone@other.org"}, // catch-all
		{"mailbox bob@example.com", "NOTFOUND mailbox disabled"},
		{"mailbox nobody@example.com", "NOTFOUND no such mailbox"},
		{"mailbox x@outside.org", "NOTFOUND domain not hosted"},
		{"mailbox a b@example.com", "NOTFOUND malformed address"},
		{"mailbox ", "NOTFOUND "},
		{"domain example.com", "OK Acme"},
		{"domain OTHER.org", "OK Other"},
		{"domain outside.org", "NOTFOUND domain not hosted"},
		{"alias sales@example.com", "OK alice@example.com,friend@outside.org"},
		{"alias Sales+x@example.com", "OK alice@example.com,friend@outside.org"},
		{"alias alice@example.com", "NOTFOUND no alias"},
		{"alias who@other.org", "OK carol@other.org"},
		{"sender_login alice@example.com", "OK alice@example.com,alice"},
		{"sender_login sales@example.com", "OK alice@example.com,alice"},
		{"sender_login carol@other.org", "OK carol@other.org"},
		{"sender_login who@other.org", "NOTFOUND no login may send as this address"},
		{"sender_login bob@example.com", "NOTFOUND no login may send as this address"},
		{"frob alice@example.com", "PERM unknown map"},
		{"", "PERM missing map name"},
	}
	for _, tt := range tests {
		if got := ask(t, conn, r, tt.req); got != tt.want {
			t.Errorf("%q = %q, want %q", tt.req, got, tt.want)
		}
	}
}

// TestSeesStoreEdits: the cache never answers from before a change.
func TestSeesStoreEdits(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, nil)
	conn := dial(t, sock)
	r := bufio.NewReader(conn)
	if got := ask(t, conn, r, "mailbox dave@example.com"); !strings.HasPrefix(got, "NOTFOUND") {
		t.Fatalf("before: %q", got)
	}
	a, _ := c.Address("dave@example.com")
	if _, err := st.AddUser(context.Background(), store.NewUser{Address: a}); err != nil {
		t.Fatal(err)
	}
	if got := ask(t, conn, r, "mailbox dave@example.com"); got != "OK dave@example.com" {
		t.Errorf("after AddUser: %q", got)
	}
	st.SetDisabled(context.Background(), a, true)
	if got := ask(t, conn, r, "mailbox dave@example.com"); got != "NOTFOUND mailbox disabled" {
		t.Errorf("after disable: %q", got)
	}
}

func TestPipelined(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, nil)
	conn := dial(t, sock)
	var req []byte
	for i := range 50 {
		req = appendNetstring(req, fmt.Sprintf("mailbox u%d@example.com", i))
		req = appendNetstring(req, "mailbox alice@example.com")
	}
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for i := range 50 {
		for _, want := range []string{"NOTFOUND no such mailbox", "OK alice@example.com"} {
			got, err := readNetstring(r, MaxReply)
			if err != nil || string(got) != want {
				t.Fatalf("reply %d: %q, %v; want %q", i, got, err, want)
			}
		}
	}
}

// TestHalfClose is Exim's ${readsocket}: write, shut down the write side,
// read to EOF.
func TestHalfClose(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, nil)
	conn := dial(t, sock).(*net.UnixConn)
	conn.Write(appendNetstring(nil, "mailbox alice@example.com"))
	conn.CloseWrite()
	all, err := io.ReadAll(conn)
	if err != nil || string(all) != "20:OK alice@example.com," {
		t.Errorf("half-close: %q, %v", all, err)
	}
}

func TestBadFraming(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, nil)
	for _, in := range []string{"x5:hello,", "05:hello,", "10001:", "5:hellox", "25:mailbox alice@example.com,garbage"} {
		conn := dial(t, sock)
		conn.Write([]byte(in))
		all, _ := io.ReadAll(conn) // the server closes after its answer
		want := "26:PERM bad netstring framing,"
		if strings.HasPrefix(in, "25:") {
			want = "20:OK alice@example.com," + want
		}
		if string(all) != want {
			t.Errorf("%q: got %q, want %q", in, all, want)
		}
	}
	// EOF mid-request: no reply, just closed.
	conn := dial(t, sock)
	conn.Write([]byte("25:mailbox al"))
	conn.(*net.UnixConn).CloseWrite()
	if all, _ := io.ReadAll(conn); len(all) != 0 {
		t.Errorf("EOF mid-request: got %q", all)
	}
}

type brokenStore struct{ Store }

func (brokenStore) Generation(context.Context) (int64, error) {
	return 0, errors.New("database is locked")
}

// TestStoreTrouble: our trouble is TEMP, never NOTFOUND (which Postfix would
// turn into a bounce) nor PERM (a configuration error to Postfix).
func TestStoreTrouble(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, brokenStore{st}, c, nil)
	conn := dial(t, sock)
	r := bufio.NewReader(conn)
	for _, req := range []string{"mailbox alice@example.com", "alias x@example.com", "domain example.com"} {
		if got := ask(t, conn, r, req); got != "TEMP store unavailable" {
			t.Errorf("%q with a broken store = %q", req, got)
		}
	}
}

func TestConnectionLimit(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, func(c *Config) { c.MaxConns = 2 })
	var held []net.Conn
	for range 2 {
		conn := dial(t, sock)
		r := bufio.NewReader(conn)
		ask(t, conn, r, "mailbox alice@example.com") // surely accepted
		held = append(held, conn)
	}
	conn := dial(t, sock)
	conn.Write(appendNetstring(nil, "mailbox alice@example.com"))
	all, _ := io.ReadAll(conn)
	if string(all) != "25:TEMP too many connections," {
		t.Errorf("over the limit: %q", all)
	}
	held[0].Close()
	// The slot frees once the server has read the EOF: retry until then.
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn = dial(t, sock)
		// A refused connection may be closed before our write lands:
		// the reply already sent is what counts.
		conn.Write(appendNetstring(nil, "mailbox alice@example.com"))
		b, _ := readNetstring(bufio.NewReader(conn), MaxReply)
		got := string(b)
		if got == "OK alice@example.com" {
			break
		}
		if got != "TEMP too many connections" || time.Now().After(deadline) {
			t.Fatalf("after a slot freed: %q", got)
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })
	conn := dial(t, sock)
	start := time.Now()
	if all, _ := io.ReadAll(conn); len(all) != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("idle connection: got %q after %v", all, time.Since(start))
	}
}

// TestClientNeverReads: a client that pipelines requests and never reads
// its answers is dropped after write_timeout; others are served meanwhile.
func TestClientNeverReads(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, func(c *Config) { c.WriteTimeout = 300 * time.Millisecond })
	hog := dial(t, sock)
	go func() {
		req := appendNetstring(nil, "alias sales@example.com")
		for {
			if _, err := hog.Write(req); err != nil {
				return
			}
		}
	}()
	conn := dial(t, sock)
	if got := ask(t, conn, bufio.NewReader(conn), "mailbox alice@example.com"); got != "OK alice@example.com" {
		t.Errorf("while another client hogs: %q", got)
	}
}

func TestManyConnections(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, func(c *Config) { c.MaxConns = 2000 })
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := range 1000 {
		wg.Go(func() {
			conn, err := net.Dial("unix", sock)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			key := fmt.Sprintf("mailbox u%d@example.com", i%7)
			if i%2 == 0 {
				key = "mailbox alice@example.com"
			}
			conn.Write(appendNetstring(nil, key))
			got, err := readNetstring(bufio.NewReader(conn), MaxReply)
			if err != nil || (!strings.HasPrefix(string(got), "OK ") && !strings.HasPrefix(string(got), "NOTFOUND ")) {
				errs <- fmt.Errorf("%s: %q, %v", key, got, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestShutdownClosesIdle(t *testing.T) {
	st, c := testStore(t)
	sock := filepath.Join(t.TempDir(), "sm.sock")
	cfg := DefaultConfig("")
	cfg.Listen = []string{"unix:" + sock}
	s := New(cfg, st, c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func() time.Duration { return 5 * time.Second }) }()
	conn := dial(t, sock)
	ask(t, conn, bufio.NewReader(conn), "mailbox alice@example.com")
	start := time.Now()
	cancel()
	if err := <-done; err != nil || time.Since(start) > 2*time.Second {
		t.Errorf("Run after cancel: %v after %v (an idle connection must not hold shutdown)", err, time.Since(start))
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file left behind: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig("/run/x")
	c.Listen = []string{"relative.sock"}
	c.SocketMode = "999"
	c.Maps.Alias = "mailbox"
	c.IdleTimeout = 0
	err := c.Validate()
	for _, want := range []string{"listen: must be", "socket_mode: must be an octal mode", `maps.alias: "mailbox" is already the name of maps.mailbox`, "idle_timeout: must be between"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want %q", err, want)
		}
	}
}

// TestShutdownGrace: a connection stuck writing to a client that never
// reads is closed when the grace period ends; Run does not wait for it.
func TestShutdownGrace(t *testing.T) {
	st, c := testStore(t)
	sock := filepath.Join(t.TempDir(), "sm.sock")
	cfg := DefaultConfig("")
	cfg.Listen = []string{"unix:" + sock}
	cfg.WriteTimeout = time.Minute
	s := New(cfg, st, c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func() time.Duration { return 300 * time.Millisecond }) }()
	hog := dial(t, sock)
	req := appendNetstring(nil, "alias sales@example.com")
	go func() {
		for {
			if _, err := hog.Write(req); err != nil {
				return
			}
		}
	}()
	// Wait until the server is blocked writing: its replies fill the
	// socket buffers because nobody reads them.
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if d := time.Since(start); err != nil || d < 250*time.Millisecond || d > 3*time.Second {
			t.Errorf("Run returned %v after %v, want nil after about the 300ms grace", err, d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still waiting for a stuck connection 10s after shutdown")
	}
}

// TestReplyBeforePartialRequest: a reply is sent before the server waits
// for the rest of a request that has only partly arrived.
func TestReplyBeforePartialRequest(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, nil)
	conn := dial(t, sock)
	conn.Write(append(appendNetstring(nil, "mailbox alice@example.com"), "25:mailbox al"...))
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(conn)
	if got, err := readNetstring(r, MaxReply); err != nil || string(got) != "OK alice@example.com" {
		t.Fatalf("first reply: %q, %v (held back while the next request is incomplete?)", got, err)
	}
	conn.Write([]byte("ice@example.com,"))
	if got, err := readNetstring(r, MaxReply); err != nil || string(got) != "OK alice@example.com" {
		t.Errorf("second reply: %q, %v", got, err)
	}
}

// TestReloadRenamesMap: after a reload that renames a map, the cache does
// not answer for the old name.
func TestReloadRenamesMap(t *testing.T) {
	st, c := testStore(t)
	s, sock := start(t, st, c, nil)
	conn := dial(t, sock)
	r := bufio.NewReader(conn)
	if got := ask(t, conn, r, "mailbox alice@example.com"); got != "OK alice@example.com" {
		t.Fatalf("before: %q", got)
	}
	cfg := *s.cfg.Load()
	cfg.Maps.Mailbox = "virtual"
	s.Reload(cfg)
	if got := ask(t, conn, r, "mailbox alice@example.com"); got != "PERM unknown map" {
		t.Errorf("old name after reload: %q", got)
	}
	if got := ask(t, conn, r, "virtual alice@example.com"); got != "OK alice@example.com" {
		t.Errorf("new name after reload: %q", got)
	}
}

// TestBigBatchAfterPause: a batch whose replies overflow the write buffer,
// sent after a pause longer than write_timeout, is answered in full (the
// write deadline is renewed before bufio writes through by itself).
func TestBigBatchAfterPause(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, func(c *Config) { c.WriteTimeout = 200 * time.Millisecond })
	conn := dial(t, sock)
	r := bufio.NewReader(conn)
	ask(t, conn, r, "mailbox alice@example.com")
	time.Sleep(300 * time.Millisecond) // longer than write_timeout
	var req []byte
	for range 300 {
		req = appendNetstring(req, "alias sales@example.com")
	}
	go conn.Write(req)
	for i := range 300 {
		got, err := readNetstring(r, MaxReply)
		if err != nil || string(got) != "OK alice@example.com,friend@outside.org" {
			t.Fatalf("reply %d: %q, %v", i, got, err)
		}
	}
}

// TestNeverReadingClientDropped: a client that sends and never reads is
// disconnected after about write_timeout, freeing its slot.
func TestNeverReadingClientDropped(t *testing.T) {
	st, c := testStore(t)
	_, sock := start(t, st, c, func(c *Config) { c.WriteTimeout = 200 * time.Millisecond })
	conn := dial(t, sock)
	req := appendNetstring(nil, "alias sales@example.com")
	start := time.Now()
	for {
		conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write(req); err != nil {
			break // the server closed its side: we were dropped
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("a client that never reads was not dropped within 10s")
		}
	}
}
