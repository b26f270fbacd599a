package saslauthd

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"hash"
	"sync"
	"time"
)

// cacheTTL bounds how long a verification is trusted even with no change in
// the store (a hash scheme upgrade or an app password's expiry come sooner).
const cacheTTL = time.Hour

// verifyCache remembers successful verifications so that a repeat login
// costs an HMAC instead of a password hash. Keys are HMAC-SHA256 under a key
// made at start and never stored: the cache holds no password and no plain
// hash of one. Every entry belongs to one store generation: any change to a
// user, password, app password or domain (from any process) makes every
// older entry a miss on the very next request. cyrus-sasl's cache keeps an
// old password working for 8 hours; this one for zero requests.
type verifyCache struct {
	mu      sync.RWMutex
	max     int
	entries map[[32]byte]cacheEntry
	pool    sync.Pool // *keyer: a hash.Hash keyed with the process key
}

// keyer is an HMAC with scratch space for its input, so that computing a
// key allocates nothing (writing each field through hash.Hash copied it to
// the heap).
type keyer struct {
	h   hash.Hash
	buf []byte
}

type cacheEntry struct {
	gen     int64
	expires time.Time
}

func newVerifyCache(max int) *verifyCache {
	key := make([]byte, 32)
	rand.Read(key) // never fails (crypto/rand panics rather than return short)
	c := &verifyCache{max: max, entries: make(map[[32]byte]cacheEntry)}
	c.pool.New = func() any { return &keyer{h: hmac.New(sha256.New, key), buf: make([]byte, 0, 1024)} }
	return c
}

// key derives an entry's key from what was checked. Fields are
// length-prefixed so that no two different triples collide.
func (c *verifyCache) key(user, service, password string) (k [32]byte) {
	kr := c.pool.Get().(*keyer)
	b := kr.buf[:0]
	for _, f := range [...]string{user, service, password} {
		b = append(b, byte(len(f)>>8), byte(len(f)))
		b = append(b, f...)
	}
	kr.h.Reset()
	kr.h.Write(b)
	kr.h.Sum(k[:0])
	clear(b) // the password was in it
	if cap(b) <= 4096 {
		kr.buf = b[:0]
	}
	c.pool.Put(kr)
	return k
}

func (c *verifyCache) hit(k [32]byte, gen int64, now time.Time) bool {
	if c.max <= 0 {
		return false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.entries[k]
	return ok && e.gen == gen && now.Before(e.expires)
}

func (c *verifyCache) put(k [32]byte, gen int64, expires time.Time) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		clear(c.entries) // simple bound; a refill costs one verify per user
	}
	c.entries[k] = cacheEntry{gen, expires}
}

func (c *verifyCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
