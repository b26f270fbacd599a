package main

// The doctor's wire probes: pure functions over a connection, each the
// smallest harmless exchange that proves a peer speaks its protocol.
// Every read is bounded in bytes here and in time by the caller's deadline.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"cyrus-sidecar/services/listen"
)

const (
	// maxProbeLine bounds one reply line; RFC 5321 §4.5.3.1.5 allows 512
	// bytes, and Cyrus's IMAP CAPABILITY line is under 1 KiB.
	maxProbeLine = 8192
	// maxProbeLines bounds the lines of one reply (LHLO, CAPABILITY).
	maxProbeLines = 100
	// maxSASLReply bounds a saslauthd reply (MAX_REQ_LEN in saslauthd.h).
	maxSASLReply = 1024
	// maxNetstringReply bounds a socketmap reply (Postfix's limit is
	// 100000 bytes, socketmap_table(5)).
	maxNetstringReply = 100000
	// probeLogin names the doctor in the saslauthd request it sends.
	probeLogin = "cyrus-sidecar-doctor"
)

var (
	errProbeSyntax  = errors.New("malformed reply")
	errProbeTooLong = errors.New("reply over the size limit")
)

// dialProbe connects to a "unix:/path" or "host:port" address with the
// probe deadline set on the connection.
func dialProbe(addr string, timeout time.Duration) (net.Conn, error) {
	network, a := listen.Split(addr)
	conn, err := net.DialTimeout(network, a, timeout)
	if err != nil {
		return nil, err
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// readLine reads one line of at most max bytes and returns it without its
// line end.
func readLine(r *bufio.Reader, max int) (string, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > max {
			return "", fmt.Errorf("%w: line longer than %d bytes", errProbeTooLong, max)
		}
		if err == nil {
			return strings.TrimRight(string(line), "\r\n"), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
	}
}

// smtpReply is one SMTP/LMTP reply.
type smtpReply struct {
	code  int
	lines []string // text after "NNN-" / "NNN "
}

func (r smtpReply) String() string {
	return strconv.Itoa(r.code) + " " + strings.Join(r.lines, " / ")
}

// readSMTPReply reads one reply (RFC 5321 §4.2): "NNN-text" lines and a
// last "NNN text" line, all with the same code.
func readSMTPReply(r *bufio.Reader) (smtpReply, error) {
	var rep smtpReply
	for i := 0; ; i++ {
		if i == maxProbeLines {
			return rep, fmt.Errorf("%w: more than %d lines", errProbeTooLong, maxProbeLines)
		}
		line, err := readLine(r, maxProbeLine)
		if err != nil {
			return rep, err
		}
		if len(line) < 3 || (len(line) > 3 && line[3] != '-' && line[3] != ' ') {
			return rep, fmt.Errorf("%w: %q", errProbeSyntax, clip(line))
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 200 || code > 599 || (i > 0 && code != rep.code) {
			return rep, fmt.Errorf("%w: %q", errProbeSyntax, clip(line))
		}
		rep.code = code
		text := ""
		if len(line) > 4 {
			text = line[4:]
		}
		rep.lines = append(rep.lines, text)
		if len(line) == 3 || line[3] == ' ' {
			return rep, nil
		}
	}
}

// lmtpInfo is what an LMTP server showed of itself.
type lmtpInfo struct {
	greeting string   // the 220 line's text
	exts     []string // LHLO extension lines ("SIZE 0", "PIPELINING", ...)
}

// lmtpProbe reads the greeting, says LHLO (RFC 2033 §4.1) and QUIT.
func lmtpProbe(rw io.ReadWriter, hostname string) (lmtpInfo, error) {
	var info lmtpInfo
	r := bufio.NewReaderSize(rw, 4096)
	rep, err := readSMTPReply(r)
	if err != nil {
		return info, fmt.Errorf("greeting: %w", err)
	}
	if rep.code != 220 {
		return info, fmt.Errorf("greeting: %s", clip(rep.String()))
	}
	info.greeting = rep.lines[0]
	if _, err := io.WriteString(rw, "LHLO "+hostname+"\r\n"); err != nil {
		return info, fmt.Errorf("LHLO: %w", err)
	}
	if rep, err = readSMTPReply(r); err != nil {
		return info, fmt.Errorf("LHLO: %w", err)
	}
	if rep.code != 250 {
		return info, fmt.Errorf("LHLO: %s", clip(rep.String()))
	}
	info.exts = rep.lines[1:]
	// A courtesy QUIT; the answer changes nothing.
	if _, err := io.WriteString(rw, "QUIT\r\n"); err == nil {
		_, _ = readSMTPReply(r) // the connection ends either way
	}
	return info, nil
}

// hasExt reports whether LHLO announced keyword (case-insensitive, the
// keyword being the first word of the line), and returns its parameters.
func (i lmtpInfo) hasExt(keyword string) (params string, ok bool) {
	for _, e := range i.exts {
		k, p, _ := strings.Cut(e, " ")
		if strings.EqualFold(k, keyword) {
			return p, true
		}
	}
	return "", false
}

// saslauthdProbe sends one request that can never succeed, a login with an
// empty password (saslauthd's ipc_unix.c refuses it before any lookup), and
// returns the reply. It costs the responder no password verification, no
// failure delay and no audit row.
func saslauthdProbe(rw io.ReadWriter) (string, error) {
	var req []byte
	for _, f := range []string{probeLogin, "", "doctor", ""} { // login, password, service, realm
		req = binary.BigEndian.AppendUint16(req, uint16(len(f)))
		req = append(req, f...)
	}
	if _, err := rw.Write(req); err != nil {
		return "", fmt.Errorf("write request: %w", err)
	}
	var hdr [2]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return "", fmt.Errorf("read reply: %w", err)
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > maxSASLReply {
		return "", fmt.Errorf("read reply: %w: %d bytes", errProbeTooLong, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(rw, buf); err != nil {
		return "", fmt.Errorf("read reply: %w", err)
	}
	return string(buf), nil
}

// socketmapProbe asks one socketmap lookup ("<map> <key>" as a netstring)
// and returns the reply's status and data.
func socketmapProbe(rw io.ReadWriter, mapName, key string) (status, data string, err error) {
	q := mapName + " " + key
	if _, err := io.WriteString(rw, strconv.Itoa(len(q))+":"+q+","); err != nil {
		return "", "", fmt.Errorf("write request: %w", err)
	}
	reply, err := readNetstringReply(bufio.NewReaderSize(rw, 4096))
	if err != nil {
		return "", "", fmt.Errorf("read reply: %w", err)
	}
	status, data, _ = strings.Cut(reply, " ")
	return status, data, nil
}

// readNetstringReply reads "<len>:<bytes>," of at most maxNetstringReply
// bytes.
func readNetstringReply(r *bufio.Reader) (string, error) {
	n := 0
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) && i > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if b == ':' && i > 0 {
			break
		}
		if b < '0' || b > '9' || i >= 6 {
			return "", fmt.Errorf("%w: bad netstring length", errProbeSyntax)
		}
		n = n*10 + int(b-'0')
	}
	if n > maxNetstringReply {
		return "", fmt.Errorf("%w: %d bytes", errProbeTooLong, n)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", io.ErrUnexpectedEOF
	}
	if buf[n] != ',' {
		return "", fmt.Errorf("%w: netstring without ','", errProbeSyntax)
	}
	return string(buf[:n]), nil
}

// imapInfo is what an IMAP server showed before login.
type imapInfo struct {
	greeting string   // the greeting after "* OK "
	caps     []string // CAPABILITY, as sent
}

// has reports whether the capability (case-insensitive) was announced.
func (i imapInfo) has(capability string) bool {
	for _, c := range i.caps {
		if strings.EqualFold(c, capability) {
			return true
		}
	}
	return false
}

// authMechs lists the AUTH= mechanisms.
func (i imapInfo) authMechs() []string {
	var out []string
	for _, c := range i.caps {
		if len(c) > 5 && strings.EqualFold(c[:5], "AUTH=") {
			out = append(out, strings.ToUpper(c[5:]))
		}
	}
	return out
}

// imapProbe reads the greeting, asks CAPABILITY (RFC 3501 §6.1.1) and
// logs out.
func imapProbe(rw io.ReadWriter) (imapInfo, error) {
	var info imapInfo
	r := bufio.NewReaderSize(rw, 4096)
	line, err := readLine(r, maxProbeLine)
	if err != nil {
		return info, fmt.Errorf("greeting: %w", err)
	}
	switch {
	case strings.HasPrefix(line, "* OK "):
		info.greeting = line[len("* OK "):]
	case strings.HasPrefix(line, "* PREAUTH "):
		info.greeting = line[len("* PREAUTH "):]
	default: // "* BYE": RFC 3501 §7.1.5, the server refuses us
		return info, fmt.Errorf("greeting: %q", clip(line))
	}
	// Cyrus puts its capabilities in the greeting's response code; CAPABILITY
	// below lists them again, so the report keeps the text after it.
	if strings.HasPrefix(info.greeting, "[") {
		if _, text, ok := strings.Cut(info.greeting, "] "); ok {
			info.greeting = text
		}
	}
	if _, err := io.WriteString(rw, "d1 CAPABILITY\r\n"); err != nil {
		return info, fmt.Errorf("CAPABILITY: %w", err)
	}
	for i := 0; ; i++ {
		if i == maxProbeLines {
			return info, fmt.Errorf("CAPABILITY: %w: more than %d lines", errProbeTooLong, maxProbeLines)
		}
		line, err := readLine(r, maxProbeLine)
		if err != nil {
			return info, fmt.Errorf("CAPABILITY: %w", err)
		}
		if rest, ok := strings.CutPrefix(line, "* CAPABILITY "); ok {
			info.caps = append(info.caps, strings.Fields(rest)...)
			continue
		}
		if rest, ok := strings.CutPrefix(line, "d1 "); ok {
			if !strings.HasPrefix(rest, "OK") {
				return info, fmt.Errorf("CAPABILITY: %q", clip(line))
			}
			break
		}
		// Any other untagged response is not ours to judge.
	}
	// LOGOUT's answer changes nothing; the connection closes either way.
	if _, err := io.WriteString(rw, "d2 LOGOUT\r\n"); err == nil {
		for range maxProbeLines {
			line, err := readLine(r, maxProbeLine)
			if err != nil || strings.HasPrefix(line, "d2 ") {
				break
			}
		}
	}
	return info, nil
}

// clip shortens peer text for a report line and makes it printable, so a
// peer cannot forge report lines.
func clip(s string) string {
	const max = 120
	b := []rune(strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, s))
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
