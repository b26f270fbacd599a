package lmtp

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"cyrus-sidecar/store"
)

// cacheEntries bounds the recipient cache; when full it starts over.
const cacheEntries = 50_000

// cache keeps recipient resolutions for one store generation: any committed
// change, from any process (the CLI included), empties it before the next
// lookup, so a callout never sees a stale answer.
type cache struct {
	mu      sync.Mutex
	gen     int64
	entries map[string]store.Resolution
	orgs    map[string]string // domain -> organisation, "" when not hosted
}

// current empties the cache when the store has moved on (or it is full);
// c.mu is held.
func (c *cache) current(gen int64) {
	if c.gen != gen || len(c.entries)+len(c.orgs) >= cacheEntries {
		c.gen, c.entries, c.orgs = gen, make(map[string]store.Resolution), make(map[string]string)
	}
}

// resolve looks a recipient up, through the cache.
func (s *Service) resolve(ctx context.Context, a store.Address) (store.Resolution, error) {
	gen, err := s.st.Generation(ctx)
	if err != nil {
		return store.Resolution{}, err
	}
	key := a.String() // the +detail does not change who it is
	c := &s.cache
	c.mu.Lock()
	c.current(gen)
	r, ok := c.entries[key]
	c.mu.Unlock()
	if ok {
		cacheHit.Inc()
		return r, nil
	}
	cacheMiss.Inc()
	r, err = s.st.Resolve(ctx, s.canon, a)
	if err != nil {
		return r, err
	}
	c.mu.Lock()
	if c.gen == gen {
		c.entries[key] = r
	}
	c.mu.Unlock()
	return r, nil
}

// domainOrg is the organisation owning a domain ("" when it is not
// hosted), through the cache: every delivery asks it about its sender.
func (s *Service) domainOrg(ctx context.Context, domain string) (string, error) {
	gen, err := s.st.Generation(ctx)
	if err != nil {
		return "", err
	}
	c := &s.cache
	c.mu.Lock()
	c.current(gen)
	org, ok := c.orgs[domain]
	c.mu.Unlock()
	if ok {
		return org, nil
	}
	d, err := s.st.Domain(ctx, domain)
	if errors.Is(err, store.ErrNotFound) {
		org = ""
	} else if err != nil {
		return "", err
	} else {
		org = d.Org
	}
	c.mu.Lock()
	if c.gen == gen {
		c.orgs[domain] = org
	}
	c.mu.Unlock()
	return org, nil
}

// idle is called when a session has no transaction any more: during the
// shutdown drain, its wait for the next command ends now (frontConn.Read
// then closes it) rather than at the end of the grace.
func (s *Service) idle(c net.Conn) {
	if s.draining.Load() {
		c.SetReadDeadline(time.Now())
	}
}

// conns tracks open client connections so that the drain can wake the idle
// ones (those that have not even sent LHLO included).
type conns struct {
	mu  sync.Mutex
	all map[*frontConn]struct{}
}

func (cs *conns) add(c *frontConn) {
	cs.mu.Lock()
	if cs.all == nil {
		cs.all = make(map[*frontConn]struct{})
	}
	cs.all[c] = struct{}{}
	cs.mu.Unlock()
}

func (cs *conns) remove(c *frontConn) {
	cs.mu.Lock()
	delete(cs.all, c)
	cs.mu.Unlock()
}

// wakeIdle ends the wait of every connection outside a transaction.
func (cs *conns) wakeIdle() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for c := range cs.all {
		if !c.busy.Load() {
			c.SetReadDeadline(time.Now())
		}
	}
}
