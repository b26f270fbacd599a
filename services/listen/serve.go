package listen

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Server is the accept loop every service shares: a connection limit with
// a fast, well-formed refusal, accept errors retried with a growing pause
// (never fatal), and a drain that lets connections finish within the grace
// period and then closes what is left.
type Server struct {
	// Name labels the connection metrics ("saslauthd", "lmtp", ...).
	Name string
	Log  *slog.Logger
	// Slots bounds open connections; its capacity is the limit.
	Slots chan struct{}
	// Busy answers a connection over the limit in the protocol's "try
	// later" words (a write deadline of a second is already set). The
	// caller closes it.
	Busy func(c net.Conn)
	// Handle serves one connection; ctx ends when shutdown begins.
	Handle func(ctx context.Context, c net.Conn)
}

// Serve accepts on ln until ctx is cancelled (closing ln), then waits for
// the connections at most grace() (read when the drain begins, so a reload
// counts) and closes those still open. It returns the number it closed.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace func() time.Duration) int {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	accepted, refused := connsAccepted.WithLabelValues(s.Name), connsRefused.WithLabelValues(s.Name)
	open := connsOpen.WithLabelValues(s.Name)
	var conns connSet
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if ctx.Err() != nil {
			if c != nil {
				c.Close()
			}
			break
		}
		if err != nil {
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.Log.Warn("accept failed, retrying", "err", err, "pause", pause.String())
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
			continue
		}
		pause = 0
		select {
		case s.Slots <- struct{}{}:
		default:
			refused.Inc()
			s.Log.Warn("connection limit reached", "max_connections", cap(s.Slots))
			c.SetWriteDeadline(time.Now().Add(time.Second))
			s.Busy(c)
			c.Close()
			continue
		}
		accepted.Inc()
		open.Inc()
		conns.add(c)
		conns.wg.Go(func() {
			defer func() { <-s.Slots; open.Dec() }()
			defer conns.remove(c)
			s.Handle(ctx, c)
		})
	}
	done := make(chan struct{})
	go func() { conns.wg.Wait(); close(done) }()
	select {
	case <-done:
		return 0
	case <-time.After(grace()):
		n := conns.closeAll()
		connsDropped.WithLabelValues(s.Name).Add(float64(n))
		s.Log.Warn("shutdown grace over, connections closed", "dropped", n)
		<-done
		return n
	}
}

// connSet tracks open connections so that the drain can close the ones
// still busy when the grace period ends.
type connSet struct {
	wg sync.WaitGroup
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func (cs *connSet) add(c net.Conn) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.m == nil {
		cs.m = make(map[net.Conn]struct{})
	}
	cs.m[c] = struct{}{}
}

func (cs *connSet) remove(c net.Conn) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.m, c)
}

func (cs *connSet) closeAll() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for c := range cs.m {
		c.Close()
	}
	return len(cs.m)
}
