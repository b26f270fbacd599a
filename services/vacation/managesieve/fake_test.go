package managesieve

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeDeadline bounds a fake server's whole life, so that no test can
// leave its goroutine behind.
const fakeDeadline = 10 * time.Second

// fake is a scripted ManageSieve server on a loopback TCP port (sockets
// buffer, so the server may write while the client pipelines, as with a
// real server). A transcript has one step per line, leading tabs ignored:
//
//	S: text    send text CRLF
//	S= "go"    send the Go-quoted bytes as they are
//	C: text    expect the client's next line to be text
//	C= "go"    expect exactly these bytes next
//	TLS        TLS handshake as the server
//	CLOSE      close the connection
//
// After the last step it reads until the client closes.
type fake struct {
	addr    string
	done    chan error
	lenient bool // the client is meant to abort, so errors are expected
}

// newFake starts a fake for one connection; cleanup waits for it and
// reports its errors.
func newFake(t *testing.T, srvTLS *tls.Config, transcript string) *fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() {
		defer ln.Close()
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(fakeDeadline))
		conn, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			f.done <- nil // closed by cleanup: the client never connected, as some tests want
			return
		}
		if err != nil {
			f.done <- fmt.Errorf("accept: %w", err)
			return
		}
		f.done <- f.run(conn, srvTLS, transcript)
	}()
	t.Cleanup(func() {
		ln.Close() // a test that never connected
		if err := <-f.done; err != nil && !f.lenient {
			t.Errorf("fake server: %v", err)
		}
	})
	return f
}

func (f *fake) run(conn net.Conn, srvTLS *tls.Config, transcript string) error {
	defer func() { conn.Close() }()
	conn.SetDeadline(time.Now().Add(fakeDeadline))
	br := bufio.NewReader(conn)
	for _, step := range strings.Split(strings.TrimSpace(transcript), "\n") {
		step = strings.TrimLeft(step, "\t")
		if step == "" {
			continue
		}
		verb, arg, _ := strings.Cut(step, " ")
		var err error
		switch verb {
		case "S:":
			_, err = io.WriteString(conn, arg+"\r\n")
		case "S=":
			_, err = io.WriteString(conn, unquote(arg))
		case "C:":
			var got string
			if got, err = br.ReadString('\n'); err == nil && got != arg+"\r\n" {
				err = fmt.Errorf("client sent %q; want %q", got, arg+"\r\n")
			}
		case "C=":
			want := unquote(arg)
			got := make([]byte, len(want))
			if _, err = io.ReadFull(br, got); err == nil && string(got) != want {
				err = fmt.Errorf("client sent %q; want %q", got, want)
			}
		case "TLS":
			if br.Buffered() > 0 {
				return fmt.Errorf("client sent data before the TLS handshake")
			}
			tc := tls.Server(conn, srvTLS)
			err = tc.Handshake()
			conn, br = tc, bufio.NewReader(tc)
		case "CLOSE":
			return conn.Close()
		default:
			return fmt.Errorf("bad transcript step %q", step)
		}
		if err != nil {
			return fmt.Errorf("step %q: %w", step, err)
		}
	}
	if rest, err := io.ReadAll(br); len(rest) > 0 {
		return fmt.Errorf("client sent %q after the transcript (%v)", rest, err)
	}
	return nil
}

func unquote(s string) string {
	u, err := strconv.Unquote(s)
	if err != nil {
		panic(fmt.Sprintf("transcript: bad Go string %s", s))
	}
	return u
}

// connect starts a fake with transcript (greeting included) and opens a
// Client to it over NewClient; the client is closed at cleanup.
func connect(t *testing.T, transcript string, opt Options) (*Client, *fake) {
	t.Helper()
	f := newFake(t, nil, transcript)
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(conn, opt)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, f
}

// testTLS returns a server config with a fresh self-signed certificate for
// sieve.test and 127.0.0.1, and a client config that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sieve.test"},
		DNSNames:              []string{"sieve.test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	return server, &tls.Config{RootCAs: pool, ServerName: "sieve.test"}
}
