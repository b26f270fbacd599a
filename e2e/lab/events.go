package lab

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// pipelineTimeout bounds a whole pipeline: thousands of small commands.
const pipelineTimeout = 2 * time.Minute

// Pipeline sends cmds (without tags and CRLF) without waiting between them
// (RFC 3501 §5.5: a client may send another command before the previous
// one completed) and returns their replies, in order, once the last one
// has completed. Cyrus runs them one after the other, so the pipeline is
// as fast as Cyrus can go: tests use it for bursts of events. Commands are
// written on their own goroutine while the replies are read, so neither
// side stalls on a full socket buffer. An I/O error ends the pipeline.
func (c *IMAPClient) Pipeline(cmds []string) ([]*IMAPReply, error) {
	if len(cmds) == 0 {
		return nil, nil
	}
	_ = c.conn.SetDeadline(time.Now().Add(pipelineTimeout)) // errors show on Write
	first := c.tag + 1
	c.tag += len(cmds)
	werr := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(c.conn, 64<<10)
		for i, cmd := range cmds {
			if _, err := fmt.Fprintf(w, "a%d %s\r\n", first+i, cmd); err != nil {
				werr <- err
				return
			}
		}
		werr <- w.Flush()
	}()
	replies := make([]*IMAPReply, len(cmds))
	cur := &IMAPReply{}
	for done := 0; done < len(cmds); {
		resp, err := c.readResponse()
		if err != nil {
			c.conn.Close() // ends the writer too
			<-werr
			return nil, err
		}
		switch {
		case strings.HasPrefix(resp.Text, "* "):
			resp.Text = resp.Text[2:]
			cur.Untagged = append(cur.Untagged, resp)
		case strings.HasPrefix(resp.Text, "a"):
			tag, rest, _ := strings.Cut(resp.Text, " ")
			n, err := strconv.Atoi(tag[1:])
			if err != nil || n < first || n >= first+len(cmds) || replies[n-first] != nil {
				c.conn.Close()
				<-werr
				return nil, fmt.Errorf("unexpected tagged response %q", resp.Text)
			}
			cur.Status, cur.Text, _ = strings.Cut(rest, " ")
			replies[n-first] = cur
			cur = &IMAPReply{}
			done++
		default:
			c.conn.Close()
			<-werr
			return nil, fmt.Errorf("unexpected response %q", resp.Text)
		}
	}
	if err := <-werr; err != nil && err != io.EOF {
		return nil, err
	}
	return replies, nil
}
