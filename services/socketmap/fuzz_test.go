package socketmap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/store"
)

// mapStore answers from memory: the fuzz target exercises the protocol
// loop, not SQLite.
type mapStore struct{}

func (mapStore) Generation(context.Context) (int64, error) { return 1, nil }

func (mapStore) Resolve(_ context.Context, _ store.Canon, a store.Address) (store.Resolution, error) {
	r := store.Resolution{Address: a, Hosted: a.Domain() == "example.com", Org: "Acme"}
	if r.Hosted && a.Local() == "alice" {
		r.Kind, r.Users = store.KindUser, []string{a.String()}
	}
	return r, nil
}

func (mapStore) Domain(_ context.Context, name string) (store.Domain, error) {
	if name == "example.com" {
		return store.Domain{Name: name, Org: "Acme"}, nil
	}
	return store.Domain{}, store.ErrNotFound
}

// FuzzServe feeds arbitrary bytes to one connection and checks the
// protocol's promises: the output is a sequence of well-formed netstrings,
// exactly one reply per complete request, plus at most one PERM for bad
// framing after which the connection is closed; no panic, no hang.
func FuzzServe(f *testing.F) {
	for _, tt := range netstringTests {
		f.Add([]byte(tt.in))
	}
	f.Add([]byte("25:mailbox alice@example.com,17:domain example.com,5:frob ,"))
	f.Add([]byte("0:,8:mailbox ,"))
	c, _ := store.NewCanon("example.com", "+")
	cfg := DefaultConfig("")
	cfg.ReadTimeout, cfg.IdleTimeout, cfg.WriteTimeout = time.Second, time.Second, time.Second
	s := New(cfg, mapStore{}, c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.Fuzz(func(t *testing.T, in []byte) {
		// Count the complete requests a correct parser sees.
		want := 0
		framingErr := false
		r := bufio.NewReader(bytes.NewReader(in))
		for {
			_, err := readNetstring(r, MaxRequest)
			if err != nil {
				framingErr = errors.Is(err, errSyntax) || errors.Is(err, errTooLarge)
				break
			}
			want++
		}
		client, server := socketPair(t)
		defer client.Close()
		done := make(chan struct{})
		go func() { s.serveConn(context.Background(), server); close(done) }()
		// Write, then half-close: the Exim ${readsocket} style.
		go func() { client.Write(in); client.CloseWrite() }()
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		var out bytes.Buffer
		io.Copy(&out, client)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("serveConn did not return for %q", in)
		}
		rr := bufio.NewReader(&out)
		got, perm := 0, 0
		for {
			b, err := readNetstring(rr, MaxReply)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("reply stream for %q is not netstrings: %v (%q)", in, err, out.Bytes())
			}
			if string(b) == "PERM bad netstring framing" {
				perm++
			} else {
				got++
			}
		}
		if got != want || perm > 1 || (perm == 1) != framingErr {
			t.Fatalf("%q: %d replies and %d PERM for %d requests (framing error %v)", in, got, perm, want, framingErr)
		}
	})
}

// socketPair is a connected pair of UNIX stream sockets, which (unlike
// net.Pipe) buffer and half-close like the real thing.
func socketPair(t *testing.T) (client *net.UnixConn, server net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close() // FileConn dups the descriptor
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]).(*net.UnixConn), conn(fds[1])
}
