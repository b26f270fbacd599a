package lab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// imapTimeout bounds one command and its responses.
	imapTimeout = 30 * time.Second
	// maxIMAPLine and maxIMAPLiteral bound what the client accepts from the
	// server; test messages are small.
	maxIMAPLine    = 64 << 10
	maxIMAPLiteral = 64 << 20
)

// IMAPClient is a minimal IMAP4rev1 client for tests (RFC 3501): tagged
// commands, untagged responses with literals, LOGIN with quoted strings.
// It sends no literals and does no AUTHENTICATE; use Do with raw text for
// anything else. A client is used by one goroutine at a time.
type IMAPClient struct {
	conn     net.Conn
	r        *bufio.Reader
	tag      int
	Greeting string // the server's greeting line, without CRLF
}

// IMAPResponse is one untagged response. Text is the response without the
// leading "* " and the final CRLF; literals stay in it as their "{n}" markers
// (followed by CRLF and the rest of the line) and their bytes are in
// Literals, in order.
type IMAPResponse struct {
	Text     string
	Literals [][]byte
}

// IMAPReply is the result of one command.
type IMAPReply struct {
	Untagged []IMAPResponse
	Status   string // OK, NO or BAD
	Text     string // the tagged line after the status
}

// OK reports whether the command completed with OK.
func (r *IMAPReply) OK() bool { return r.Status == "OK" }

// String renders the reply's tagged line, for test messages.
func (r *IMAPReply) String() string { return r.Status + " " + r.Text }

// DialIMAP connects to addr (host:port), reads the greeting, which must be
// OK, and closes the connection at cleanup.
func DialIMAP(t testing.TB, addr string) *IMAPClient {
	t.Helper()
	c, err := dialIMAP(addr, imapTimeout)
	if err != nil {
		t.Fatalf("imap %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialIMAP is DialIMAP without a test, for readiness polling.
func dialIMAP(addr string, timeout time.Duration) (*IMAPClient, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &IMAPClient{conn: conn, r: bufio.NewReader(conn)}
	_ = conn.SetDeadline(time.Now().Add(timeout)) // cannot fail on a fresh conn
	line, err := c.readLine()
	if err == nil && !strings.HasPrefix(line, "* OK") {
		err = fmt.Errorf("greeting %q", line)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.Greeting = line
	return c, nil
}

// Login logs in with LOGIN and quoted strings, failing the test unless OK.
func (c *IMAPClient) Login(t testing.TB, user, password string) {
	t.Helper()
	// The password is in the command; report only the reply.
	if r := c.Cmd(t, "LOGIN "+IMAPQuote(user)+" "+IMAPQuote(password)); !r.OK() {
		t.Fatalf("imap LOGIN %s: %s", user, r)
	}
}

// Cmd sends one command (without tag and CRLF) and returns the reply,
// failing the test on I/O errors. NO and BAD are returned for the caller.
func (c *IMAPClient) Cmd(t testing.TB, cmd string) *IMAPReply {
	t.Helper()
	r, err := c.Do(cmd)
	if err != nil {
		verb, _, _ := strings.Cut(cmd, " ")
		t.Fatalf("imap %s: %v", verb, err)
	}
	return r
}

// Do is Cmd returning an error instead of failing the test, for use outside
// the test goroutine.
func (c *IMAPClient) Do(cmd string) (*IMAPReply, error) {
	c.tag++
	tag := "a" + strconv.Itoa(c.tag)
	_ = c.conn.SetDeadline(time.Now().Add(imapTimeout)) // errors show on Write
	if _, err := io.WriteString(c.conn, tag+" "+cmd+"\r\n"); err != nil {
		return nil, err
	}
	reply := &IMAPReply{}
	for {
		resp, err := c.readResponse()
		if err != nil {
			return nil, err
		}
		switch {
		case strings.HasPrefix(resp.Text, "* "):
			resp.Text = resp.Text[2:]
			reply.Untagged = append(reply.Untagged, resp)
		case strings.HasPrefix(resp.Text, tag+" "):
			reply.Status, reply.Text, _ = strings.Cut(resp.Text[len(tag)+1:], " ")
			return reply, nil
		default:
			// Continuation requests ("+ ...") are for literals and SASL,
			// which this client does not send.
			return nil, fmt.Errorf("unexpected response %q", resp.Text)
		}
	}
}

// Logout sends LOGOUT and closes the connection.
func (c *IMAPClient) Logout(t testing.TB) {
	t.Helper()
	c.Cmd(t, "LOGOUT")
	c.Close()
}

// Close closes the connection.
func (c *IMAPClient) Close() error { return c.conn.Close() }

// IMAPQuote renders s as an IMAP quoted string (RFC 3501 §4.3).
func IMAPQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

var errIMAPLimit = errors.New("imap response over limit")

// readResponse reads one response line, and after each line ending in a
// literal marker "{n}" the n bytes and the line's continuation (RFC 3501
// §4.3).
func (c *IMAPClient) readResponse() (IMAPResponse, error) {
	var resp IMAPResponse
	var text strings.Builder
	for {
		line, err := c.readLine()
		if err != nil {
			return resp, err
		}
		text.WriteString(line)
		n, ok := literalSize(line)
		if !ok {
			resp.Text = text.String()
			return resp, nil
		}
		if n > maxIMAPLiteral {
			return resp, fmt.Errorf("%w: literal of %d bytes", errIMAPLimit, n)
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(c.r, lit); err != nil {
			return resp, err
		}
		resp.Literals = append(resp.Literals, lit)
		text.WriteString("\r\n")
	}
}

// readLine reads one CRLF-terminated line and returns it without CRLF.
func (c *IMAPClient) readLine() (string, error) {
	var buf []byte
	for {
		chunk, isPrefix, err := c.r.ReadLine()
		if err != nil {
			return "", err
		}
		buf = append(buf, chunk...)
		if len(buf) > maxIMAPLine {
			return "", fmt.Errorf("%w: line longer than %d bytes", errIMAPLimit, maxIMAPLine)
		}
		if !isPrefix {
			return string(bytes.TrimSuffix(buf, []byte("\r"))), nil
		}
	}
}

// literalSize parses a trailing "{n}" (or the non-synchronising "{n+}").
func literalSize(line string) (int, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(line[i+1:len(line)-1], "+"))
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
