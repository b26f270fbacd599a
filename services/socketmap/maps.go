package socketmap

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"cyrus-sidecar/store"
)

// Statuses of the socketmap protocol (Sendmail's socket map; Postfix
// socketmap_table(5)). Postfix turns PERM into a configuration error of its
// own, so PERM is only for requests that can never work (unknown map, bad
// framing); our trouble is TEMP, never NOTFOUND.
const (
	// lookupTimeout bounds one store lookup once it has begun.
	lookupTimeout = 5 * time.Second
	// maxCachedRequest: longer requests hold no valid address (an address
	// is at most 254 bytes plus a map name), so caching them would only
	// let a client fill memory with 10 KB keys.
	maxCachedRequest = 384
)

const (
	statusOK       = "OK"
	statusNotFound = "NOTFOUND"
	statusTemp     = "TEMP"
	statusPerm     = "PERM"
)

// answer computes the reply to one request (a netstring's payload, "map
// key"). It never fails: every outcome is a status. A cached answer is
// found by the request bytes themselves, with no allocation and no parsing.
func (s *Service) answer(ctx context.Context, cfg *Config, req []byte) (status, data string) {
	gen, genErr := s.st.Generation(ctx)
	if genErr == nil {
		if e, ok := s.cache.get(gen, cfg, req); ok {
			cacheHit.Inc()
			return s.withQuota(ctx, e)
		}
		cacheMiss.Inc()
	}
	r := string(req)
	mapName, key, _ := strings.Cut(r, " ")
	var kind string
	switch {
	case mapName == "":
		return statusPerm, "missing map name"
	case mapName == cfg.Maps.Mailbox:
		kind = "mailbox"
	case mapName == cfg.Maps.Domain:
		kind = "domain"
	case mapName == cfg.Maps.Alias:
		kind = "alias"
	case mapName == cfg.Maps.SenderLogin:
		kind = "sender_login"
	default:
		return statusPerm, "unknown map"
	}
	// postsrsd#141: the null sender arrives as an empty key; it names
	// nothing, and asking the store would only cost time.
	if key == "" {
		return statusNotFound, ""
	}
	if genErr != nil {
		s.log.Warn("store unavailable", "err", genErr)
		return statusTemp, "store unavailable"
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	e, err := s.lookup(lctx, kind, key)
	if err != nil {
		s.log.Warn("lookup failed", "map", kind, "err", err)
		return statusTemp, "store unavailable"
	}
	if len(e.data) > MaxReply-len(e.status)-1 {
		s.log.Warn("reply over the socketmap limit", "map", kind, "bytes", len(e.data))
		return statusTemp, "reply too long"
	}
	if len(r) <= maxCachedRequest {
		s.cache.put(gen, cfg, r, e)
	}
	return s.withQuota(ctx, e)
}

// withQuota applies the optional quota check to a store answer. Quota
// changes with every delivery, not with the store: asked each time, never
// cached. Only Cyrus's over-quota verdicts are relayed; whether the user
// exists is the store's call.
func (s *Service) withQuota(ctx context.Context, e entry) (status, data string) {
	q := s.quota.Load()
	if q == nil || e.user == "" {
		return e.status, e.data
	}
	qs, qd, err := q.check(ctx, e.user)
	switch {
	case err != nil:
		s.log.Warn("quota check failed", "err", err)
		return statusTemp, "quota check unavailable"
	case (qs == statusTemp || qs == statusPerm) && strings.Contains(strings.ToLower(qd), "quota"):
		// Cyrus says PERM with lmtp_over_quota_perm_failure, but to
		// Postfix PERM is its own configuration error, not a reject
		// of the recipient: TEMP defers the mail, as Cyrus's 452
		// would, until the mailbox has room again.
		return statusTemp, qd
	}
	return e.status, e.data
}

// lookup answers from the store; err is only the store's own trouble.
func (s *Service) lookup(ctx context.Context, kind, key string) (entry, error) {
	status, data, user, err := s.resolve(ctx, kind, key)
	return entry{status, data, user}, err
}

// resolve does lookup's work; user is the mailbox owner a quota check would
// ask about (the mailbox map's deliverable users only).
func (s *Service) resolve(ctx context.Context, kind, key string) (status, data, user string, err error) {
	if kind == "domain" {
		name, err := s.canon.Domain(key)
		if err != nil {
			return statusNotFound, "malformed domain", "", nil
		}
		d, err := s.st.Domain(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return statusNotFound, "domain not hosted", "", nil
		} else if err != nil {
			return "", "", "", err
		}
		return statusOK, d.Org, "", nil
	}
	a, err := s.canon.Address(key)
	if err != nil {
		return statusNotFound, "malformed address", "", nil
	}
	r, err := s.st.Resolve(ctx, s.canon, a)
	if err != nil {
		return "", "", "", err
	}
	if !r.Hosted {
		return statusNotFound, "domain not hosted", "", nil
	}
	switch kind {
	case "mailbox":
		// smmapd's answer: the key itself, as sent, when mail is accepted.
		switch {
		case r.Deliverable() && r.Kind == store.KindUser:
			return statusOK, key, r.Address.String(), nil
		case r.Deliverable():
			return statusOK, key, "", nil
		case r.Kind == store.KindUser:
			return statusNotFound, "mailbox disabled", "", nil
		}
		return statusNotFound, "no such mailbox", "", nil
	case "alias":
		// For Postfix virtual_alias_maps, which sends whole keys only: the
		// +detail and the catch-all are ours to apply. A user's own
		// address is not an alias (Postfix then delivers it as is).
		if r.Kind == store.KindAlias || r.Kind == store.KindCatchAll {
			return statusOK, strings.Join(r.Targets, ","), "", nil
		}
		return statusNotFound, "no alias", "", nil
	case "sender_login":
		// For smtpd_sender_login_maps: who may send as this address. A
		// catch-all gives nobody the right to send as every address.
		if (r.Kind == store.KindUser || r.Kind == store.KindAlias) && len(r.Users) > 0 {
			// Postfix compares the SASL login literally, and users of the
			// default domain may log in without it ("alice"), as Cyrus
			// allows: both spellings are that user.
			logins := make([]string, 0, 2*len(r.Users))
			for _, u := range r.Users {
				logins = append(logins, u)
				if local, ok := strings.CutSuffix(u, "@"+s.canon.DefaultDomain()); ok && s.canon.DefaultDomain() != "" {
					logins = append(logins, local)
				}
			}
			return statusOK, strings.Join(logins, ","), "", nil
		}
		return statusNotFound, "no login may send as this address", "", nil
	}
	return statusPerm, "unknown map", "", nil
}

// cache keeps answers for one store generation, keyed by the request
// ("map key"): any committed change, from any process, empties it before the
// next lookup (Store.Generation), so it never serves a stale answer.
type cache struct {
	mu      sync.RWMutex
	gen     int64
	cfg     *Config // answers depend on the map names: a reload starts over
	entries map[string]entry
}

// entry is one answer; user is set when a quota check applies.
type entry struct{ status, data, user string }

func (c *cache) get(gen int64, cfg *Config, req []byte) (entry, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.gen != gen || c.cfg != cfg {
		return entry{}, false
	}
	e, ok := c.entries[string(req)] // no allocation: the compiler sees the lookup
	return e, ok
}

func (c *cache) put(gen int64, cfg *Config, key string, e entry) {
	if cfg.CacheEntries <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.cfg != cfg || len(c.entries) >= cfg.CacheEntries {
		// A new generation, or full: start over rather than track ages.
		c.gen, c.cfg, c.entries = gen, cfg, make(map[string]entry)
	}
	c.entries[key] = e
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
