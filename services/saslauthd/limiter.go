package saslauthd

import (
	"sync"
	"time"
)

// maxTracked bounds the failure table: an attacker cycling through
// millions of logins must not grow it without end.
const maxTracked = 100_000

// limiter slows down repeated failures for one key (a login, or a login
// from one client address): each recent failure doubles the delay, up to a
// cap, and a success or a quiet window clears it. There is never a lockout:
// an attacker must not be able to lock the real user out.
type limiter struct {
	mu     sync.Mutex
	fails  map[string]failState
	base   time.Duration
	max    time.Duration
	window time.Duration
}

type failState struct {
	n    int
	last time.Time
}

func newLimiter(base, max, window time.Duration) *limiter {
	return &limiter{fails: make(map[string]failState), base: base, max: max, window: window}
}

// delay is how long to wait before answering an attempt for key.
func (l *limiter) delay(key string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.fails[key]
	if !ok || now.Sub(f.last) > l.window || f.n == 0 {
		return 0
	}
	d := l.base
	for i := 1; i < f.n && d < l.max; i++ {
		d *= 2
	}
	return min(d, l.max)
}

func (l *limiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.fails) >= maxTracked {
		// Forget what is past the window; if that is not enough, start
		// over (the delays are a brake, not a record).
		for k, f := range l.fails {
			if now.Sub(f.last) > l.window {
				delete(l.fails, k)
			}
		}
		if len(l.fails) >= maxTracked {
			clear(l.fails)
		}
	}
	f := l.fails[key]
	if now.Sub(f.last) > l.window {
		f.n = 0
	}
	f.n++
	f.last = now
	l.fails[key] = f
}

func (l *limiter) success(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.fails, key)
}

func (l *limiter) set(base, max, window time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.base, l.max, l.window = base, max, window
}
