package lab

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// maxSASLField bounds one counted string; saslauthd's own limit is
	// MAX_REQ_LEN (1024) in saslauthd/saslauthd.h.
	maxSASLField = 1024
	// saslConnTimeout bounds one request/reply exchange. Cyrus opens a new
	// connection per authentication and waits for the reply without a
	// timeout (facts §3), so the responder always answers or closes.
	saslConnTimeout = 10 * time.Second
)

// SASLRequest is what the lab's saslauthd responder received in one request.
// The password is never recorded.
type SASLRequest struct {
	Login, Service, Realm string
	OK                    bool // whether the responder answered OK
}

// saslResponder is a small saslauthd in the test process: it answers OK
// when login@realm (realm "" meaning the default domain, as Cyrus sends it)
// has the password in users.
type saslResponder struct {
	ln            net.Listener
	defaultDomain string
	users         map[string]string // canonical login@domain -> password
	wg            sync.WaitGroup

	mu   sync.Mutex
	reqs []SASLRequest
}

// startSASL listens on path (a UNIX socket connectable by every user, since
// Cyrus's processes run as cyrus) and serves until stop.
func startSASL(t testing.TB, path, defaultDomain string, users map[string]string) *saslResponder {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("saslauthd responder: %v", err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		ln.Close()
		t.Fatalf("saslauthd responder: %v", err)
	}
	s := &saslResponder{ln: ln, defaultDomain: defaultDomain, users: make(map[string]string)}
	for login, pw := range users {
		s.users[s.canonical(login, "")] = pw
	}
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // closed by stop
			}
			s.wg.Go(func() { s.serve(conn) })
		}
	})
	return s
}

// canonical lower-cases login and puts it in realm, or in the default domain
// when neither names one.
func (s *saslResponder) canonical(login, realm string) string {
	login = strings.ToLower(login)
	if i := strings.LastIndexByte(login, '@'); i >= 0 {
		login, realm = login[:i], login[i+1:]
	}
	if realm == "" {
		realm = s.defaultDomain
	}
	return login + "@" + strings.ToLower(realm)
}

// serve answers one request; saslauthd closes after each reply.
func (s *saslResponder) serve(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(saslConnTimeout)) // cannot fail on a fresh conn
	r := bufio.NewReader(conn)
	var f [4]string // login, password, service, realm
	for i := range f {
		v, err := readCounted(r)
		if err != nil {
			return // a broken request gets no answer, like saslauthd
		}
		f[i] = v
	}
	// libsasl from 2.1.28 on may add the client address as a fifth string,
	// written in the same write as the rest; take it if it is there.
	if r.Buffered() > 0 {
		if _, err := readCounted(r); err != nil {
			return
		}
	}
	pw, known := s.users[s.canonical(f[0], f[3])]
	ok := known && pw == f[1]
	s.mu.Lock()
	s.reqs = append(s.reqs, SASLRequest{Login: f[0], Service: f[2], Realm: f[3], OK: ok})
	s.mu.Unlock()
	reply := "NO"
	if ok {
		reply = "OK"
	}
	_ = writeCounted(conn, reply) // the peer went away; nothing to tell
}

// requests returns a copy of what was received so far.
func (s *saslResponder) requests() []SASLRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SASLRequest(nil), s.reqs...)
}

// stop closes the listener and waits for every connection goroutine; each
// is bounded by saslConnTimeout.
func (s *saslResponder) stop() {
	s.ln.Close()
	s.wg.Wait()
}

var errSASLField = errors.New("saslauthd field too long")

// readCounted reads a saslauthd counted string: 2-byte big-endian length,
// then that many bytes.
func readCounted(r *bufio.Reader) (string, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > maxSASLField {
		return "", fmt.Errorf("%w: %d bytes", errSASLField, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	return string(buf), nil
}

// writeCounted writes s as one counted string in one write.
func writeCounted(w io.Writer, s string) error {
	buf := binary.BigEndian.AppendUint16(nil, uint16(len(s)))
	_, err := w.Write(append(buf, s...))
	return err
}
