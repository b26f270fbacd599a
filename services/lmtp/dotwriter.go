package lmtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

const (
	// maxBodyLine is the longest body line, in bytes as sent (after
	// dot-stuffing, without its CRLF), that Cyrus reads in one piece.
	// spool_copy_msg (imap/spool.c) reads with prot_fgets into 8190 bytes,
	// so 8189 at a time, and treats the start of every piece as the start
	// of a line: in a longer line a '.' just after the 8189th byte is
	// unstuffed, and ".\r\n" there ends the message, so that the rest of
	// the body is read as LMTP commands (seen with 3.6.1,
	// TestUpstreamCyrusLongLine). RFC 5321 §4.5.3.1.6 allows 998 bytes and
	// Exim sends no more (message_linelength_limit); go-smtp does not limit
	// BDAT lines, hence the check here.
	maxBodyLine = 8189
	// bodyChunk is how much of the body is read and scanned at a time.
	bodyChunk = 32 << 10
)

// Refusals of the body. The terminating "." has not been written after
// either; the caller must close the connection.
var (
	// errBareLineEnding: RFC 5321 §2.3.8 allows CR and LF only together.
	// Cyrus drops a lone CR before it looks for the end of the data
	// (spool_copy_msg), so "\r\n\r.\r\n" would end the message early there.
	errBareLineEnding = errors.New("bare CR or LF in message body")
	// errBodyLineTooLong: see maxBodyLine.
	errBodyLineTooLong = errors.New("message body line too long for Cyrus")
)

// dotStuffer is the state of writeDotStuffed between read chunks.
type dotStuffer struct {
	w         *bufio.Writer
	lineStart bool  // the next byte starts a line
	heldCR    bool  // the chunk ended in CR; its LF must come first in the next
	lineLen   int   // bytes of the current line written so far
	off       int64 // body bytes consumed, for error messages (never content)
}

// writeDotStuffed writes body to w as DATA content (RFC 5321 §4.5.2): a '.'
// starting a line is doubled, a missing final CRLF is added and ".\r\n"
// ends it. The body must use CRLF line ends only and no line may be longer
// than maxBodyLine; otherwise it returns errBareLineEnding or errBodyLineTooLong.
// On any error the final ".\r\n" has not been written, and w may hold part
// of the body: the caller must abandon the connection.
//
// The body is scanned for line ends with bytes.IndexByte and copied in runs
// of whole lines, not byte by byte.
func writeDotStuffed(w *bufio.Writer, body io.Reader) error {
	d := dotStuffer{w: w, lineStart: true}
	buf := make([]byte, bodyChunk)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if err := d.write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read body: %w", rerr)
		}
	}
	if d.heldCR {
		return fmt.Errorf("%w: CR at the end, byte %d", errBareLineEnding, d.off-1)
	}
	// An empty body stays empty; a last line without CRLF gets one.
	end := ".\r\n"
	if !d.lineStart {
		end = "\r\n.\r\n"
	}
	if _, err := w.WriteString(end); err != nil {
		return fmt.Errorf("write body: %w", err)
	}
	return nil
}

// write stuffs and writes one chunk of the body: the lines are checked
// one by one, but written in runs that break only where a dot is doubled.
func (d *dotStuffer) write(p []byte) error {
	start := d.off
	d.off += int64(len(p))
	if d.heldCR {
		// The CR of the previous chunk must be the first half of a CRLF.
		if p[0] != '\n' {
			return fmt.Errorf("%w: CR at byte %d", errBareLineEnding, start-1)
		}
		if _, err := d.w.WriteString("\r\n"); err != nil {
			return fmt.Errorf("write body: %w", err)
		}
		d.heldCR, d.lineStart, d.lineLen = false, true, 0
		p = p[1:]
		start++
	}
	written := 0 // p[:written] is out
	for i := 0; i < len(p); {
		if d.lineStart {
			d.lineStart = false
			if p[i] == '.' {
				if err := d.put(p[written:i], true); err != nil {
					return err
				}
				written = i
				d.lineLen = 1
			}
		}
		lf := bytes.IndexByte(p[i:], '\n')
		if lf < 0 {
			// No line end in the rest: a final CR waits for its LF.
			end := len(p)
			if p[end-1] == '\r' {
				end--
				d.heldCR = true
			}
			if err := d.content(p[i:end], start+int64(i)); err != nil {
				return err
			}
			return d.put(p[written:end], false)
		}
		lf += i
		if lf == i || p[lf-1] != '\r' {
			return fmt.Errorf("%w: LF at byte %d", errBareLineEnding, start+int64(lf))
		}
		if err := d.content(p[i:lf-1], start+int64(i)); err != nil {
			return err
		}
		d.lineStart, d.lineLen = true, 0
		i = lf + 1
	}
	return d.put(p[written:], false)
}

// put writes run and then, with dot, the stuffing '.'.
func (d *dotStuffer) put(run []byte, dot bool) error {
	_, err := d.w.Write(run)
	if err == nil && dot {
		err = d.w.WriteByte('.')
	}
	if err != nil {
		return fmt.Errorf("write body: %w", err)
	}
	return nil
}

// content checks a stretch of line content (no LF, and any CR in it is
// bare) and counts it toward the line's length.
func (d *dotStuffer) content(p []byte, start int64) error {
	if i := bytes.IndexByte(p, '\r'); i >= 0 {
		return fmt.Errorf("%w: CR at byte %d", errBareLineEnding, start+int64(i))
	}
	d.lineLen += len(p)
	if d.lineLen > maxBodyLine {
		return fmt.Errorf("%w: line at byte %d longer than %d bytes", errBodyLineTooLong, start, maxBodyLine)
	}
	return nil
}
