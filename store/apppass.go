package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// App passwords are random secrets a user gives one mail client (a phone,
// a calendar app), each limited to some services and optionally expiring,
// so that losing a device means deleting one of them, not changing the
// password everywhere.
//
// A generated password is 30 characters from appPassAlphabet in six groups
// of five, such as "k7mzq-3hx9p-tcw2a-ve8nd-r4ujb-y6gfs": 30 × 5 = 150 bits of
// entropy, 35 bytes as shown.
const (
	// appPassAlphabet is the 32 lower-case letters and digits left after
	// dropping the ones people confuse when they copy by hand: 0 and o,
	// 1 and l. 32 symbols make each one exactly 5 random bits.
	appPassAlphabet = "abcdefghijkmnpqrstuvwxyz23456789"
	appPassGroups   = 6
	appPassGroupLen = 5
	// appHashPrefix marks an app-password hash: the prefix then the hex
	// SHA-256 of the normalised password (see normaliseAppPassword).
	appHashPrefix = "$sctapp$"

	// MaxAppPasswords bounds one user's app passwords. A login is checked
	// against each of them, so this also bounds the work of one login
	// (100 SHA-256 digests, well under a millisecond).
	MaxAppPasswords = 100
)

// ErrLimit is returned when an addition would exceed a fixed limit (such as
// MaxAppPasswords); the wrapping error names the limit. Unlike ErrInUse it
// is cured by removing other objects, not this one's dependents.
var ErrLimit = errors.New("limit reached")

// AppPassword is one of a user's app passwords. Hash never leaves the
// process: it prints as "***" and is absent from JSON.
type AppPassword struct {
	ID       int64     `json:"id"`
	User     string    `json:"user"`
	Label    string    `json:"label"`
	Hash     Secret    `json:"-"`
	Services []string  `json:"services"`         // ["*"] = every service the user may use
	Expires  time.Time `json:"expires,omitzero"` // zero (absent) = never
	Created  time.Time `json:"created"`
	LastUsed time.Time `json:"last_used,omitzero"` // zero (absent) = never used
}

// Allows reports whether the app password may be used for service, as the
// client names it (see User.Allows). The user's own services still apply:
// a login needs both to allow the service.
func (p AppPassword) Allows(service string) bool {
	return slices.Contains(p.Services, AllServices) || slices.Contains(p.Services, strings.ToLower(service))
}

// Expired reports whether the app password no longer works at now: from
// its expiry time on.
func (p AppPassword) Expired(now time.Time) bool {
	return !p.Expires.IsZero() && !now.Before(p.Expires)
}

// GenerateAppPassword makes a new app password and its hash for
// AddAppPassword. The plain text is shown to the admin once and never
// stored.
//
// The hash is a single SHA-256, not the slow KDF user passwords get. A slow
// KDF makes each guess expensive for someone who stole the hashes, which
// matters when people choose the passwords and a dictionary finds them. Here
// there is nothing to guess smartly: finding a preimage of one hash means
// trying 2^149 candidates on average, out of reach at any hashing speed. For
// the same reason no salt is needed: no table can be precomputed over 2^150
// inputs, and two equal hashes would mean two equal random passwords. What
// this buys is verification in about a microsecond, so a login can be
// checked against all of a user's app passwords on every request, without a
// cache that would have to forget a deleted one, and without a place in the
// pool of slow verifications.
func GenerateAppPassword() (plain string, hash Secret, err error) {
	var raw [appPassGroups * appPassGroupLen]byte
	// crypto/rand.Read does not fail on supported platforms (Go 1.24+ aborts
	// the program instead); the error is kept for the signature's sake.
	if _, err := rand.Read(raw[:]); err != nil {
		return "", "", fmt.Errorf("generate app password: %w", err)
	}
	var b strings.Builder
	for i, r := range raw {
		if i > 0 && i%appPassGroupLen == 0 {
			b.WriteByte('-')
		}
		// 256 is a multiple of 32: the low 5 bits are uniform, no bias.
		b.WriteByte(appPassAlphabet[r%byte(len(appPassAlphabet))])
	}
	plain = b.String()
	return plain, hashAppPassword(plain), nil
}

// VerifyAppPassword reports whether plain is the app password behind hash,
// in constant time with respect to the hash. Letter case, '-' and spaces in
// plain are ignored, as a phone keyboard may capitalise the first letter and
// people drop or add the separators. A hash that is not an app-password
// hash matches nothing.
func VerifyAppPassword(hash Secret, plain string) bool {
	want, ok := strings.CutPrefix(hash.Reveal(), appHashPrefix)
	if !ok || len(want) != hex.EncodedLen(sha256.Size) {
		return false
	}
	wantSum, err := hex.DecodeString(want)
	if err != nil {
		return false
	}
	got := sha256.Sum256([]byte(normaliseAppPassword(plain)))
	return subtle.ConstantTimeCompare(got[:], wantSum) == 1
}

// CouldBeAppPassword reports whether plain has the shape of an app password
// once normalised (appPassGroups × appPassGroupLen characters of
// appPassAlphabet). Every app password has it, so a login whose password
// does not can skip looking them up: no other string can match one's hash
// short of a SHA-256 preimage.
func CouldBeAppPassword(plain string) bool {
	n := 0
	for i := 0; i < len(plain); i++ {
		c := plain[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if strings.IndexByte(appPassAlphabet, c) < 0 {
			return false
		}
		n++
	}
	return n == appPassGroups*appPassGroupLen
}

func hashAppPassword(plain string) Secret {
	sum := sha256.Sum256([]byte(normaliseAppPassword(plain)))
	return Secret(appHashPrefix + hex.EncodeToString(sum[:]))
}

// normaliseAppPassword is what the digest covers: the password with ASCII
// letters lower-cased and '-' and spaces removed. Part of the stored format.
func normaliseAppPassword(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '-' || r == ' ':
			return -1
		case 'A' <= r && r <= 'Z':
			return r + ('a' - 'A')
		}
		return r
	}, s)
}

// isAppHash reports whether h has the app-password hash format.
func isAppHash(h Secret) bool {
	rest, ok := strings.CutPrefix(h.Reveal(), appHashPrefix)
	if !ok || len(rest) != hex.EncodedLen(sha256.Size) {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// AddAppPassword gives an existing user an app password. label names it
// for the admin (CheckName rules; unique per user, compared ignoring ASCII
// case so that "del -label phone" cannot be ambiguous); hash comes from
// GenerateAppPassword; services nil means all the user's services; a zero
// expires means never. An expiry in the past is stored as given (such a
// password never works), so an import or a test can record one.
func (s *Store) AddAppPassword(ctx context.Context, user Address, label string, hash Secret, services []string, expires time.Time) (AppPassword, error) {
	if err := CheckName(label); err != nil {
		return AppPassword{}, fmt.Errorf("add app password: label: %w", err)
	}
	if !isAppHash(hash) {
		return AppPassword{}, malformed("add app password: hash is not an app-password hash (make one with GenerateAppPassword)")
	}
	if services == nil {
		services = []string{AllServices}
	}
	if len(services) == 0 {
		// Allowing nothing is surely a mistake; allowing everything
		// instead would fail in the wrong direction.
		return AppPassword{}, malformed("add app password: empty service list (nil means all)")
	}
	for _, svc := range services {
		if strings.Contains(svc, ",") {
			return AppPassword{}, malformed("add app password: service %q: one name per element", svc)
		}
	}
	services, err := ParseServices(strings.Join(services, ","))
	if err != nil {
		return AppPassword{}, fmt.Errorf("add app password: %w", err)
	}
	var exp int64
	if !expires.IsZero() {
		if exp = expires.Unix(); exp <= 0 {
			return AppPassword{}, malformed("add app password: expiry %s is before 1970", expires.UTC().Format(time.RFC3339))
		}
	}
	p := AppPassword{User: user.String(), Label: label, Hash: hash, Services: services,
		Expires: fromUnix(exp), Created: fromUnix(now())}
	err = s.write(ctx, func(tx *sql.Tx) error {
		uid, err := appPassUserID(ctx, tx, user)
		if err != nil {
			return err
		}
		var n, same int
		if err := tx.QueryRowContext(ctx, `SELECT count(*), count(CASE WHEN label = ? COLLATE NOCASE THEN 1 END)
			FROM app_passwords WHERE user_id = ?`, label, uid).Scan(&n, &same); err != nil {
			return err
		}
		if same > 0 {
			return fmt.Errorf("app password %q of %s: %w", label, user, ErrExists)
		}
		if n >= MaxAppPasswords {
			return fmt.Errorf("user %s already has %d app passwords: %w", user, n, ErrLimit)
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO app_passwords (user_id, label, hash, services, expires, created)
			VALUES (?, ?, ?, ?, ?, ?)`, uid, label, hash.Reveal(), strings.Join(services, ","), exp, p.Created.Unix())
		if isUnique(err) { // cannot happen after the check above; kept for safety
			return fmt.Errorf("app password %q of %s: %w", label, user, ErrExists)
		} else if err != nil {
			return err
		}
		p.ID, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return AppPassword{}, fmt.Errorf("add app password: %w", err)
	}
	return p, nil
}

// DeleteAppPassword removes one of a user's app passwords by label
// (ignoring ASCII case). Logins with it fail from the next request on.
func (s *Store) DeleteAppPassword(ctx context.Context, user Address, label string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		uid, err := appPassUserID(ctx, tx, user)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM app_passwords WHERE user_id = ? AND label = ? COLLATE NOCASE", uid, label)
		if err != nil {
			return err
		}
		return mustAffect(res, fmt.Errorf("app password %q of %s: %w", label, user, ErrNotFound))
	})
	if err != nil {
		return fmt.Errorf("delete app password: %w", err)
	}
	return nil
}

// AppPasswords lists a user's app passwords by label; an unknown user is
// ErrNotFound, a user without any an empty list.
func (s *Store) AppPasswords(ctx context.Context, user Address) ([]AppPassword, error) {
	// One query answers both questions (does the user exist, what do they
	// have): the LEFT JOIN yields one row of NULLs for a user with none.
	rows, err := s.appPassStmt.QueryContext(ctx, user.String())
	if err != nil {
		return nil, fmt.Errorf("list app passwords: %w", err)
	}
	defer rows.Close()
	var out []AppPassword
	found := false
	for rows.Next() {
		found = true
		var id sql.NullInt64
		var hash, services string
		var expires, created, lastUsed int64
		p := AppPassword{User: user.String()}
		if err := rows.Scan(&id, &p.Label, &hash, &services, &expires, &created, &lastUsed); err != nil {
			return nil, fmt.Errorf("list app passwords: %w", err)
		}
		if !id.Valid {
			continue // the user has none
		}
		p.ID, p.Hash, p.Services = id.Int64, Secret(hash), strings.Split(services, ",")
		p.Expires, p.Created, p.LastUsed = fromUnix(expires), fromUnix(created), fromUnix(lastUsed)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list app passwords: %w", err)
	}
	if !found {
		return nil, fmt.Errorf("user %s: %w", user, ErrNotFound)
	}
	return out, nil
}

// appPasswordsOf is AppPasswords' query, prepared at Open
// (Store.appPassStmt).
const appPasswordsOf = `SELECT a.id, coalesce(a.label, ''), coalesce(a.hash, ''), coalesce(a.services, ''),
	coalesce(a.expires, 0), coalesce(a.created, 0), coalesce(a.last_used, 0)
	FROM users u LEFT JOIN app_passwords a ON a.user_id = u.id
	WHERE u.address = ? ORDER BY a.label COLLATE NOCASE, a.label`

// TouchAppPassword records that app password id was used at at (zero: now).
// The time only moves forward, so concurrent logins cannot set it back. It
// does not change Generation (the schema's trigger ignores last_used), so a
// login does not flush the caches of every service. Each call is a write
// transaction: a busy caller should coalesce.
func (s *Store) TouchAppPassword(ctx context.Context, id int64, at time.Time) error {
	if at.IsZero() {
		at = time.Now()
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE app_passwords SET last_used = max(last_used, ?) WHERE id = ?", at.Unix(), id)
		if err != nil {
			return err
		}
		return mustAffect(res, fmt.Errorf("app password %d: %w", id, ErrNotFound))
	})
	if err != nil {
		return fmt.Errorf("touch app password: %w", err)
	}
	return nil
}

// appPassUserID finds a user's row inside a write transaction.
func appPassUserID(ctx context.Context, tx *sql.Tx, a Address) (int64, error) {
	var id int64
	err := tx.QueryRowContext(ctx, "SELECT id FROM users WHERE address = ?", a.String()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("user %s: %w", a, ErrNotFound)
	}
	return id, err
}
