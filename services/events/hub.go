package events

import (
	"errors"
	"fmt"
	"sync"
)

// hub fans published events out to the open streams of their accounts.
// Sending never blocks: a stream whose buffer is full is disconnected, and
// its client resumes from the log with Last-Event-ID, so nothing is lost
// and a slow client never delays the others or Publish.
type hub struct {
	mu      sync.Mutex
	streams map[string]map[*stream]struct{}
	total   int
	closed  bool
	kicked  func() // counts slow-client disconnects
}

// stream is one open event stream.
type stream struct {
	account string
	ch      chan streamEvent
	kicked  chan struct{} // closed when the stream must end
	why     string        // set before kicked is closed
}

type streamEvent struct {
	seq  int64
	typ  string
	data []byte
}

var errShutdown = errors.New("shutting down")

func newHub() *hub {
	return &hub{streams: map[string]map[*stream]struct{}{}}
}

// add opens a stream for account within the limits.
func (h *hub) add(account string, maxTotal, maxPerUser, buffer int) (*stream, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return nil, errShutdown
	case h.total >= maxTotal:
		return nil, fmt.Errorf("%d streams open (max_streams)", h.total)
	case len(h.streams[account]) >= maxPerUser:
		return nil, fmt.Errorf("%d streams open for the user (max_streams_per_user)", len(h.streams[account]))
	}
	s := &stream{account: account, ch: make(chan streamEvent, buffer), kicked: make(chan struct{})}
	if h.streams[account] == nil {
		h.streams[account] = map[*stream]struct{}{}
	}
	h.streams[account][s] = struct{}{}
	h.total++
	return s, nil
}

// remove forgets a stream; it may already be gone.
func (h *hub) remove(s *stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.drop(s)
}

// drop removes s; h.mu is held.
func (h *hub) drop(s *stream) {
	m := h.streams[s.account]
	if _, ok := m[s]; !ok {
		return
	}
	delete(m, s)
	if len(m) == 0 {
		delete(h.streams, s.account)
	}
	h.total--
}

// send queues e on every stream of account, disconnecting those that are
// full.
func (h *hub) send(account string, e streamEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.streams[account] {
		select {
		case s.ch <- e:
		default:
			h.kick(s, "client too slow: buffer full")
			if h.kicked != nil {
				h.kicked()
			}
		}
	}
}

// kick ends s; h.mu is held.
func (h *hub) kick(s *stream, why string) {
	h.drop(s)
	s.why = why
	close(s.kicked)
}

// closeAll ends every stream and refuses new ones (shutdown).
func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for _, m := range h.streams {
		for s := range m {
			h.kick(s, "shutting down")
		}
	}
}

// accounts lists the accounts with an open stream.
func (h *hub) accounts() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.streams))
	for a, ss := range h.streams {
		if len(ss) > 0 {
			out = append(out, a)
		}
	}
	return out
}
