package managesieve

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// syncTag is the NOOP tag that marks the end of what the server sends
// after AUTHENTICATE (RFC 5804 §2.13: OK (TAG "x")).
const syncTag = "sidecar-auth-sync"

// AuthenticatePlain logs in with SASL PLAIN (RFC 4616) and its initial
// response (RFC 5804 §2.1): authcid proves itself with password and acts
// as authzid ("" = itself). A NO is an *Error carrying the server's text.
// Neither password nor the encoded response ever appears in an error.
//
// Afterwards the capabilities are read again with CAPABILITY; they now
// include OWNER. Capabilities the server sends unasked after the OK
// (RFC 5804 §2.1, when a security layer was negotiated; Cyrus does so only
// then) are told apart by a tagged NOOP sent first, and skipped.
func (c *Client) AuthenticatePlain(authzid, authcid, password string) error {
	const op = "AUTHENTICATE PLAIN"
	if strings.ContainsRune(authzid+authcid+password, 0) || authcid == "" || password == "" {
		return fmt.Errorf("%s: %w: empty authcid or password, or NUL in a field", op, errArg)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx := context.Background()
	ir := base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + authcid + "\x00" + password))
	line := append(appendString([]byte(`AUTHENTICATE "PLAIN" `), ir), "\r\n"...)
	resp, err := c.authExchange(ctx, op, line)
	if err != nil {
		return err
	}
	if err := c.check(op, resp); err != nil {
		return err
	}
	if c.caps.Version == "" {
		return nil // a pre-RFC 5804 server may know neither NOOP nor CAPABILITY
	}
	// Pipelined, so that one round trip tells capabilities the server
	// sent unasked (they come before the tagged NOOP reply) from the reply
	// to CAPABILITY.
	sync := append(appendString([]byte("NOOP "), syncTag), "\r\n"...)
	if err := c.send(ctx, op, append(sync, "CAPABILITY\r\n"...)); err != nil {
		return err
	}
	resp, err = c.recv(op)
	if err != nil {
		return err
	}
	tag := renderCode([]token{{tAtom, "TAG"}, {tString, syncTag}})
	if resp.code != tag && resp.kind == "OK" && len(resp.data) > 0 {
		// Unasked capabilities; CAPABILITY's reply below supersedes them.
		if resp, err = c.recv(op); err != nil {
			return err
		}
	}
	// resp answers NOOP. A server may refuse the tag with NO, which does
	// no harm; BYE ends the session.
	if resp.kind == "BYE" {
		return c.check(op, resp)
	}
	return c.readCapabilities(ctx, "CAPABILITY", nil)
}

// authExchange sends AUTHENTICATE and reads up to its final line. A
// challenge (a data line) is answered with "*", which cancels
// (RFC 5804 §2.1): PLAIN with an initial response has nothing to answer.
func (c *Client) authExchange(ctx context.Context, op string, line []byte) (*response, error) {
	if err := c.send(ctx, op, line); err != nil {
		return nil, err
	}
	c.r.reset()
	for cancelled := false; ; cancelled = true {
		toks, err := c.r.readLine()
		if err != nil {
			return nil, c.fail(fmt.Errorf("%s: read reply: %w", op, err))
		}
		resp, err := parseFinal(toks)
		if err != nil {
			return nil, c.fail(fmt.Errorf("%s: read reply: %w", op, err))
		}
		if resp != nil && !cancelled {
			return resp, nil
		}
		if resp != nil && resp.kind != "OK" {
			return nil, c.check(op+": server sent a challenge, cancelled", resp)
		}
		if resp != nil || cancelled {
			return nil, c.fail(fmt.Errorf("%s: %w: OK or challenge after cancel", op, errSyntax))
		}
		if _, err := c.conn.Write([]byte("\"*\"\r\n")); err != nil {
			return nil, c.fail(fmt.Errorf("%s: write: %w", op, err))
		}
	}
}

// ListScripts lists the user's scripts (RFC 5804 §2.7):
// *(sieve-name [SP "ACTIVE"] CRLF) response-oks.
func (c *Client) ListScripts() ([]Script, error) {
	resp, err := c.cmd("LISTSCRIPTS", []byte("LISTSCRIPTS\r\n"))
	if err != nil {
		return nil, err
	}
	return parseScripts(resp.data)
}

// parseScripts reads LISTSCRIPTS data lines.
func parseScripts(data [][]token) ([]Script, error) {
	scripts := make([]Script, 0, len(data))
	for _, l := range data {
		ok := l[0].kind == tString && (len(l) == 1 ||
			len(l) == 2 && l[1].kind == tAtom && strings.EqualFold(l[1].val, "ACTIVE"))
		if !ok {
			// The stream is still in step: the final line was read.
			return nil, fmt.Errorf("LISTSCRIPTS: %w: line %s", errSyntax, describe(l))
		}
		scripts = append(scripts, Script{Name: l[0].val, Active: len(l) == 2})
	}
	return scripts, nil
}

// GetScript returns a script's content, byte for byte (RFC 5804 §2.9).
func (c *Client) GetScript(name string) (string, error) {
	op := "GETSCRIPT " + strconv.Quote(name)
	if err := checkName(name); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	resp, err := c.cmd(op, line("GETSCRIPT", name))
	if err != nil {
		return "", err
	}
	if len(resp.data) != 1 || len(resp.data[0]) != 1 || resp.data[0][0].kind != tString {
		return "", fmt.Errorf("%s: %w: want one string before OK, got %d lines", op, errSyntax, len(resp.data))
	}
	return resp.data[0][0].val, nil
}

// PutScript stores a script under name, replacing one of that name; the
// server checks it first and refuses a bad one with NO and its parser's
// text (RFC 5804 §2.6). Replacing the active script keeps it active.
func (c *Client) PutScript(name, content string) error {
	op := "PUTSCRIPT " + strconv.Quote(name)
	if err := checkName(name); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := checkScript(content); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	b := appendString([]byte("PUTSCRIPT "), name)
	b = append(appendLiteral(append(b, ' '), content), "\r\n"...)
	return c.simple(op, b)
}

// CheckScript asks the server to check a script without storing it
// (RFC 5804 §2.12). OK (WARNINGS) is success.
func (c *Client) CheckScript(content string) error {
	const op = "CHECKSCRIPT"
	if err := checkScript(content); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return c.simple(op, append(appendLiteral([]byte("CHECKSCRIPT "), content), "\r\n"...))
}

// SetActive makes name the active script; "" deactivates all
// (RFC 5804 §2.8).
func (c *Client) SetActive(name string) error {
	op := "SETACTIVE " + strconv.Quote(name)
	if name != "" {
		if err := checkName(name); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return c.simple(op, line("SETACTIVE", name))
}

// DeleteScript deletes a script; servers refuse the active one with
// NO (ACTIVE) (RFC 5804 §2.10).
func (c *Client) DeleteScript(name string) error {
	op := "DELETESCRIPT " + strconv.Quote(name)
	if err := checkName(name); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return c.simple(op, line("DELETESCRIPT", name))
}

// RenameScript renames a script, keeping it active if it was
// (RFC 5804 §2.11.1).
func (c *Client) RenameScript(old, new string) error {
	op := "RENAMESCRIPT " + strconv.Quote(old) + " " + strconv.Quote(new)
	for _, n := range []string{old, new} {
		if err := checkName(n); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return c.simple(op, line("RENAMESCRIPT", old, new))
}

// HaveSpace asks whether a script of size octets may be stored under name
// (RFC 5804 §2.5); a NO (QUOTA/...) *Error says why not.
func (c *Client) HaveSpace(name string, size int) error {
	op := fmt.Sprintf("HAVESPACE %q %d", name, size)
	if err := checkName(name); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	// RFC 5804 §4: number = 0..4294967295.
	if size < 0 || int64(size) > 1<<32-1 {
		return fmt.Errorf("%s: %w: size out of range", op, errArg)
	}
	b := appendString([]byte("HAVESPACE "), name)
	b = strconv.AppendInt(append(b, ' '), int64(size), 10)
	return c.simple(op, append(b, "\r\n"...))
}

// Noop does nothing on the server (RFC 5804 §2.13); it keeps the session
// alive or checks that it is.
func (c *Client) Noop() error {
	return c.simple("NOOP", []byte("NOOP\r\n"))
}

// simple runs a command whose reply has no data lines.
func (c *Client) simple(op string, b []byte) error {
	resp, err := c.cmd(op, b)
	if err != nil {
		return err
	}
	if len(resp.data) > 0 {
		// The stream is still in step: the final line was read.
		return fmt.Errorf("%s: %w: unexpected data before OK", op, errSyntax)
	}
	return nil
}

// line builds `VERB arg arg CRLF` with each argument as a string.
func line(verb string, args ...string) []byte {
	b := []byte(verb)
	for _, a := range args {
		b = appendString(append(b, ' '), a)
	}
	return append(b, "\r\n"...)
}

// checkScript refuses scripts over maxScript before sending them.
func checkScript(content string) error {
	if len(content) > maxScript {
		return fmt.Errorf("%w: script of %d bytes, at most %d", errArg, len(content), maxScript)
	}
	return nil
}
