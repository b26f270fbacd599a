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
	if _, known := l.fails[key]; !known && len(l.fails) >= maxTracked && !l.evict(now) {
		// Full of keys with several recent failures: leave those alone
		// (a flood of junk logins must not wipe a victim's brake) and
		// do not track this one.
		return
	}
	f := l.fails[key]
	if now.Sub(f.last) > l.window {
		f.n = 0
	}
	f.n++
	f.last = now
	l.fails[key] = f
}

// evict makes room for one key: something past the window, else a key
// with a single failure, looking at a bounded sample (map order is random).
// It must be called with l.mu held.
func (l *limiter) evict(now time.Time) bool {
	seen := 0
	for k, f := range l.fails {
		if now.Sub(f.last) > l.window || f.n <= 1 {
			delete(l.fails, k)
			return true
		}
		if seen++; seen >= 256 {
			break
		}
	}
	return false
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

func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.fails)
}
