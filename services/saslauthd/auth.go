package saslauthd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// Outcome reasons. The socket only ever says OK or NO; these go to the audit
// and to `cyrus-sidecar auth test`, which exists to say why.
const (
	reasonOK            = "ok"
	reasonMalformed     = "malformed login"
	reasonUnknown       = "unknown user"
	reasonAlias         = "alias login not allowed"
	reasonDisabled      = "user disabled"
	reasonService       = "service not allowed"
	reasonPassword      = "wrong password"
	reasonNoPassword    = "no password set"
	reasonAppService    = "app password not allowed for this service"
	reasonAppExpired    = "app password expired"
	reasonTokenExpired  = "token expired"
	reasonTokenInvalid  = "token invalid for this user and service"
	reasonTokenBad      = "malformed token"
	reasonTokenTooLong  = "token lifetime over the limit"
	reasonTokenIssuer   = "token issuer unknown"
	reasonOverloaded    = "overloaded: no verify worker free"
	reasonStore         = "store unavailable"
	reasonBadHash       = "stored hash unusable"
	reasonHashTooLong   = "password too long"
	reasonInternalError = "internal error"
)

// Store is the part of the store the responder uses.
type Store interface {
	Generation(ctx context.Context) (int64, error)
	User(ctx context.Context, a store.Address) (store.User, error)
	Resolve(ctx context.Context, c store.Canon, a store.Address) (store.Resolution, error)
	AppPasswords(ctx context.Context, user store.Address) ([]store.AppPassword, error)
	TouchAppPassword(ctx context.Context, id int64, at time.Time) error
	ReplacePasswordHash(ctx context.Context, a store.Address, old, next store.Secret) (bool, error)
	RecordLogins(ctx context.Context, es []store.LoginEvent) error
}

// Result is the decision for one attempt.
type Result struct {
	OK     bool
	User   string // canonical login, when it could be parsed
	Reason string // one of the reason constants
	Via    string // "password", "app password <label>", "token <issuer>", "cache"
}

// authenticator decides; the Service wraps it with the wire, the limits and
// the audit, and `auth test` calls it directly.
type authenticator struct {
	st      Store
	canon   store.Canon
	hasher  *password.Hasher
	cache   *verifyCache
	workers chan struct{} // verify slots
	cfg     func() *Config
	keys    func() TokenKeys
	now     func() time.Time
	rehash  func(a store.Address, old store.Secret, pw string) // nil: no rehash
}

// Authenticate checks one login as the client sent it. Trouble that is not
// the client's (store down, overload) is a NO with its own reason.
func (au *authenticator) Authenticate(ctx context.Context, login, realm, service, pw string) Result {
	a, err := au.canon.Login(login, realm)
	if err != nil {
		return Result{Reason: reasonMalformed}
	}
	return au.decide(ctx, a, service, pw)
}

// decide checks one login already canonicalised (the responder needs the
// canonical login before deciding, for the failure brake).
func (au *authenticator) decide(ctx context.Context, a store.Address, service, pw string) Result {
	return au.decideAs(ctx, a, a.String(), service, pw, au.now())
}

// decideAs is decide with a.String() and the time already at hand. It is
// the cache-hit path only, kept small: its frame and its callees' are the
// stack a connection's goroutine must grow to, and a miss goes on in
// decideUncached with frames of its own.
func (au *authenticator) decideAs(ctx context.Context, a store.Address, user, service, pw string, now time.Time) Result {
	service = strings.ToLower(service)
	gen, err := au.st.Generation(ctx)
	if err != nil {
		return Result{User: user, Reason: reasonStore}
	}
	ck := au.cache.key(user, service, pw)
	if au.cache.hit(ck, gen, now) {
		cacheHit.Inc()
		return Result{OK: true, User: user, Reason: reasonOK, Via: "cache"}
	}
	cacheMiss.Inc()
	return au.decideUncached(ctx, a, user, service, pw, gen, ck, now)
}

// decideUncached is decideAs after a cache miss. service is lower case.
//
//go:noinline
func (au *authenticator) decideUncached(ctx context.Context, a store.Address, user, service, pw string,
	gen int64, ck [32]byte, now time.Time) Result {
	r := Result{User: user}
	cfg := au.cfg()
	u, err := au.st.User(ctx, a)
	if errors.Is(err, store.ErrNotFound) && cfg.AllowAliasLogin {
		// With an alias login the account is the user the alias reaches.
		u, a, err = au.aliasUser(ctx, a)
		r.User = a.String()
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Cost what a real verify costs, so that timing does not tell
		// who exists.
		au.dummy(ctx, pw)
		r.Reason = reasonUnknown
		return r
	case err != nil:
		r.Reason = reasonStore
		return r
	}
	if u.Disabled {
		au.dummy(ctx, pw)
		r.Reason = reasonDisabled
		return r
	}
	if IsToken(pw) {
		// A token stands in for the password only: the user's allowed
		// services still apply.
		if r = au.token(r, pw, service, now); r.OK && !u.Allows(service) {
			r.OK, r.Reason, r.Via = false, reasonService, ""
		}
		return r
	}
	// App passwords are checked first: each is a SHA-256 of a random
	// secret, microseconds, where the user's own hash costs milliseconds.
	// A password that cannot be one (most of them) skips the query.
	if store.CouldBeAppPassword(pw) {
		if res, matched := au.appPassword(ctx, r, a, pw, service, gen, ck, now); matched {
			return res
		}
	}
	if !u.HasPassword {
		au.dummy(ctx, pw)
		r.Reason = reasonNoPassword
		return r
	}
	ok, reason := au.verify(ctx, u.PasswordHash, pw)
	if !ok {
		r.Reason = reason
		return r
	}
	if !u.Allows(service) {
		r.Reason = reasonService
		return r
	}
	if au.rehash != nil && cfg.RehashOnLogin && au.hasher.NeedsRehash(u.PasswordHash.Reveal()) {
		au.rehash(a, u.PasswordHash, pw)
	}
	au.cache.put(ck, gen, now.Add(cacheTTL))
	r.OK, r.Reason, r.Via = true, reasonOK, "password"
	return r
}

// aliasUser lets an alias that reaches exactly one enabled user log in as
// that user (allow_alias_login).
// It returns the user and the user's address; a, unchanged, when there is
// no such user.
func (au *authenticator) aliasUser(ctx context.Context, a store.Address) (store.User, store.Address, error) {
	res, err := au.st.Resolve(ctx, au.canon, a)
	if err != nil {
		return store.User{}, a, err
	}
	if res.Kind != store.KindAlias || len(res.Users) != 1 {
		return store.User{}, a, fmt.Errorf("alias %s: %w", a, store.ErrNotFound)
	}
	ua, err := au.canon.Login(res.Users[0], "")
	if err != nil {
		return store.User{}, a, fmt.Errorf("alias %s: %w", a, store.ErrNotFound)
	}
	u, err := au.st.User(ctx, ua)
	if err != nil {
		return u, a, err
	}
	return u, ua, nil
}

func (au *authenticator) token(r Result, tok, service string, now time.Time) Result {
	err := VerifyToken(au.keys(), tok, r.User, service, now, au.cfg().TokenMaxTTL)
	switch {
	case err == nil:
		r.OK, r.Reason, r.Via = true, reasonOK, "token"
	case errors.Is(err, errTokenExpired):
		r.Reason = reasonTokenExpired
	case errors.Is(err, errTokenTooLong):
		r.Reason = reasonTokenTooLong
	case errors.Is(err, errTokenIssuer):
		r.Reason = reasonTokenIssuer
	case errors.Is(err, errTokenMalformed):
		r.Reason = reasonTokenBad
	default:
		r.Reason = reasonTokenInvalid
	}
	return r
}

// appPassword checks pw against the user's app passwords (fast hashes of
// random secrets, see store.GenerateAppPassword). matched is false when none
// is that password, so that a user's real password of the same shape still
// gets checked.
func (au *authenticator) appPassword(ctx context.Context, r Result, a store.Address, pw, service string,
	gen int64, ck [32]byte, now time.Time) (Result, bool) {
	aps, err := au.st.AppPasswords(ctx, a)
	if err != nil {
		r.Reason = reasonStore
		return r, true
	}
	for _, ap := range aps {
		if !store.VerifyAppPassword(ap.Hash, pw) {
			continue
		}
		switch {
		case ap.Expired(now):
			r.Reason = reasonAppExpired
		case !ap.Allows(service):
			r.Reason = reasonAppService
		default:
			au.st.TouchAppPassword(ctx, ap.ID, now) // best effort: last-use is informational
			expires := now.Add(cacheTTL)
			if !ap.Expires.IsZero() && ap.Expires.Before(expires) {
				expires = ap.Expires
			}
			au.cache.put(ck, gen, expires)
			r.OK, r.Reason, r.Via = true, reasonOK, "app password "+ap.Label
		}
		return r, true
	}
	return r, false
}

// verify runs a password hash in a worker slot, waiting at most
// verify_queue_wait for one.
func (au *authenticator) verify(ctx context.Context, hash store.Secret, pw string) (bool, string) {
	if !au.acquire(ctx) {
		return false, reasonOverloaded
	}
	defer au.release()
	ok, err := password.Verify(hash.Reveal(), pw)
	switch {
	case errors.Is(err, password.ErrTooLong):
		return false, reasonHashTooLong
	case err != nil:
		return false, reasonBadHash
	case !ok:
		return false, reasonPassword
	}
	return true, reasonOK
}

// dummy spends a verify's time on a request that will fail anyway.
func (au *authenticator) dummy(ctx context.Context, pw string) {
	if !au.acquire(ctx) {
		return
	}
	defer au.release()
	au.hasher.DummyVerify(pw)
}

func (au *authenticator) acquire(ctx context.Context) bool {
	select {
	case au.workers <- struct{}{}:
		return true // a free worker: no timer, no wait to record
	default:
	}
	start := time.Now()
	defer func() { verifyWait.Observe(time.Since(start).Seconds()) }()
	t := time.NewTimer(au.cfg().VerifyQueueWait)
	defer t.Stop()
	select {
	case au.workers <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

func (au *authenticator) release() { <-au.workers }

// Check decides one attempt the way the responder would, without the wire,
// the failure delay, the cache, the audit or a rehash: for
// `cyrus-sidecar auth test`, which exists to say why.
func Check(ctx context.Context, cfg Config, keys TokenKeys, st Store, canon store.Canon, hasher *password.Hasher,
	login, service, pw string) Result {
	au := &authenticator{
		st: st, canon: canon, hasher: hasher,
		cache:   newVerifyCache(0),
		workers: make(chan struct{}, 1),
		cfg:     func() *Config { return &cfg },
		keys:    func() TokenKeys { return keys },
		now:     time.Now,
	}
	return au.Authenticate(ctx, login, "", service, pw)
}
