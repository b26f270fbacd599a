package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits on vacation settings. The texts become Sieve strings inside every
// user's script, which Cyrus compiles on each change (sieve_maxscriptsize
// defaults to 32 KiB), and the subject a header line (RFC 5322 §2.1.1: at
// most 998 octets per line).
const (
	MaxVacationText     = 16 << 10
	MaxVacationSubject  = 1000
	MaxVacationDays     = 365
	DefaultVacationDays = 7 // RFC 5230 §4.1's suggested default
)

// Vacation is a user's out-of-office settings.
type Vacation struct {
	Address string `json:"address"`
	// State is "off", "on" (no dates) or "scheduled" (Start, End or both).
	State string `json:"state"`
	// Start and End bound a scheduled vacation, in UTC to the second; zero
	// is open (from now, or until turned off).
	Start time.Time `json:"start,omitzero"`
	End   time.Time `json:"end,omitzero"`
	// Subject of the replies; "" lets Cyrus say "Auto: " and the original.
	Subject string `json:"subject"`
	// InternalText goes to senders in the user's organisation (see
	// OrgDomains), ExternalText to the others that Audience admits.
	InternalText string `json:"internal_text"`
	ExternalText string `json:"external_text"`
	// Audience is which outside senders get a reply: "all", "known" or
	// "none".
	Audience string `json:"external_audience"`
	// Days is how long a sender is not answered again (RFC 5230 :days).
	Days int `json:"days"`
	// From is the replies' From address; "" lets Cyrus use the recipient.
	From string `json:"from,omitempty"`
	// Period changes whenever a new absence starts (off to on or
	// scheduled, or new dates) and stays across edits of the texts: the
	// Sieve :handle is made from it. SetVacation computes it.
	Period  string    `json:"period"`
	Updated time.Time `json:"updated"`
}

// Active reports whether the vacation is on or scheduled.
func (v Vacation) Active() bool { return v.State == "on" || v.State == "scheduled" }

// SetVacation stores a user's vacation settings, creating or replacing them
// (ErrNotFound when there is no such user, ErrMalformed for invalid
// settings). Start and End are kept in UTC to the second. The Period is
// computed: a fresh one when an absence starts or its dates change, the
// stored one otherwise; v.Period is ignored.
func (s *Store) SetVacation(ctx context.Context, a Address, v Vacation) error {
	v.Start, v.End = vacationTime(v.Start), vacationTime(v.End)
	if err := v.check(); err != nil {
		return fmt.Errorf("set vacation of %s: %w", a, err)
	}
	start, end := unixOrZero(v.Start), unixOrZero(v.End)
	err := s.write(ctx, func(tx *sql.Tx) error {
		uid, err := userIDTx(ctx, tx, a)
		if err != nil {
			return err
		}
		var oldState, period string
		var oldStart, oldEnd int64
		err = tx.QueryRowContext(ctx, "SELECT state, start_at, end_at, period FROM vacations WHERE user_id = ?", uid).
			Scan(&oldState, &oldStart, &oldEnd, &period)
		if errors.Is(err, sql.ErrNoRows) {
			oldState = "off"
		} else if err != nil {
			return err
		}
		if v.Active() && (oldState == "off" || oldStart != start || oldEnd != end || period == "") {
			period = newPeriod()
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO vacations (user_id, state, start_at, end_at, subject, internal_text,
			external_text, external_audience, interval_days, from_address, period, updated)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, start_at = excluded.start_at,
			end_at = excluded.end_at, subject = excluded.subject, internal_text = excluded.internal_text,
			external_text = excluded.external_text, external_audience = excluded.external_audience,
			interval_days = excluded.interval_days, from_address = excluded.from_address,
			period = excluded.period, updated = excluded.updated`,
			uid, v.State, start, end, v.Subject, v.InternalText, v.ExternalText, v.Audience, v.Days, v.From, period, now())
		return err
	})
	if err != nil {
		return fmt.Errorf("set vacation: %w", err)
	}
	return nil
}

// VacationOff turns a user's vacation off, keeping the texts for next
// time and forgetting the dates. A user without vacation settings is left
// as is; an unknown user is ErrNotFound.
func (s *Store) VacationOff(ctx context.Context, a Address) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		uid, err := userIDTx(ctx, tx, a)
		if err != nil {
			return err
		}
		// Only a real change bumps the generation.
		_, err = tx.ExecContext(ctx, `UPDATE vacations SET state = 'off', start_at = 0, end_at = 0, updated = ?
			WHERE user_id = ? AND (state != 'off' OR start_at != 0 OR end_at != 0)`, now(), uid)
		return err
	})
	if err != nil {
		return fmt.Errorf("vacation off: %w", err)
	}
	return nil
}

const vacationSelect = `SELECT u.address, v.state, v.start_at, v.end_at, v.subject, v.internal_text, v.external_text,
	v.external_audience, v.interval_days, v.from_address, v.period, v.updated`

// Vacation returns a user's vacation settings: ErrNotFound, naming which,
// when there is no such user or the user has never had any.
func (s *Store) Vacation(ctx context.Context, a Address) (Vacation, error) {
	// The LEFT JOIN tells the two kinds of not-found apart in one query.
	vs, err := s.queryVacations(ctx, vacationSelect+`, v.user_id IS NOT NULL
		FROM users u LEFT JOIN vacations v ON v.user_id = u.id WHERE u.address = ?`, a.String())
	if err != nil {
		return Vacation{}, fmt.Errorf("get vacation: %w", err)
	}
	if len(vs) == 0 {
		return Vacation{}, fmt.Errorf("user %s: %w", a, ErrNotFound)
	}
	if vs[0].State == "" {
		return Vacation{}, fmt.Errorf("vacation of %s: %w", a, ErrNotFound)
	}
	return vs[0], nil
}

// Vacations lists every user's vacation settings, in any state, by
// address: the vacation service's work list.
func (s *Store) Vacations(ctx context.Context) ([]Vacation, error) {
	vs, err := s.queryVacations(ctx, vacationSelect+`, 1
		FROM vacations v JOIN users u ON u.id = v.user_id ORDER BY u.address`)
	if err != nil {
		return nil, fmt.Errorf("list vacations: %w", err)
	}
	return vs, nil
}

// queryVacations scans vacationSelect rows with a last column saying
// whether the vacation columns are there (rows of a LEFT JOIN); a row
// without them comes back with an empty State.
func (s *Store) queryVacations(ctx context.Context, q string, args ...any) ([]Vacation, error) {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Vacation
	for rows.Next() {
		var v Vacation
		var state, subject, internal, external, audience, from, period sql.NullString
		var start, end, days, updated sql.NullInt64
		var present bool
		if err := rows.Scan(&v.Address, &state, &start, &end, &subject, &internal, &external,
			&audience, &days, &from, &period, &updated, &present); err != nil {
			return nil, err
		}
		if present {
			v.State, v.Subject, v.InternalText, v.ExternalText = state.String, subject.String, internal.String, external.String
			v.Audience, v.Days, v.From, v.Period = audience.String, int(days.Int64), from.String, period.String
			v.Start, v.End, v.Updated = fromUnix(start.Int64), fromUnix(end.Int64), fromUnix(updated.Int64)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// check validates settings whose times vacationTime has normalised.
func (v Vacation) check() error {
	switch v.State {
	case "off", "on", "scheduled":
	default:
		return malformed("state %q: want off, on or scheduled", v.State)
	}
	switch v.Audience {
	case "all", "known", "none":
	default:
		return malformed("external audience %q: want all, known or none", v.Audience)
	}
	if v.Days < 1 || v.Days > MaxVacationDays {
		return malformed("days %d: want 1 to %d", v.Days, MaxVacationDays)
	}
	for _, t := range []struct {
		name string
		t    time.Time
	}{{"start", v.Start}, {"end", v.End}} {
		if !t.t.IsZero() && t.t.Unix() <= 0 {
			return malformed("%s %s is not after 1970", t.name, t.t.Format(time.RFC3339))
		}
	}
	if !v.Start.IsZero() && !v.End.IsZero() && !v.Start.Before(v.End) {
		return malformed("start %s is not before end %s", v.Start.Format(time.RFC3339), v.End.Format(time.RFC3339))
	}
	switch {
	case v.State == "scheduled" && v.Start.IsZero() && v.End.IsZero():
		return malformed("a scheduled vacation needs a start or an end (without dates it is on)")
	case v.State == "on" && (!v.Start.IsZero() || !v.End.IsZero()):
		return malformed("a vacation with dates is scheduled, not on")
	}
	if err := checkText("subject", v.Subject, MaxVacationSubject, false); err != nil {
		return err
	}
	if err := checkText("internal text", v.InternalText, MaxVacationText, true); err != nil {
		return err
	}
	if err := checkText("external text", v.ExternalText, MaxVacationText, true); err != nil {
		return err
	}
	// RFC 5230 §4: the reason is required; an empty one would send an
	// empty message.
	if v.Active() && v.InternalText == "" {
		return malformed("internal text is empty")
	}
	if v.Active() && v.ExternalText == "" && v.Audience != "none" {
		return malformed("external text is empty (or set the external audience to none)")
	}
	return checkFrom(v.From)
}

// checkText accepts UTF-8 of at most max bytes without NUL (Sieve strings
// cannot hold it, RFC 5228 §2.4.2) and, unless multiline, without any
// control character: a subject is one header line, and Cyrus cuts it at
// the first control character (lmtp_sieve.c send_response).
func checkText(name, s string, max int, multiline bool) error {
	switch {
	case len(s) > max:
		return malformed("%s is %d bytes, more than %d", name, len(s), max)
	case !utf8.ValidString(s):
		return malformed("%s is not valid UTF-8", name)
	case strings.IndexByte(s, 0) >= 0:
		return malformed("%s contains a NUL byte", name)
	}
	if !multiline && strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return malformed("%s contains a line break or control character", name)
	}
	return nil
}

// checkFrom accepts "" or a plain addr-spec: no display name, comments,
// spaces or quoting, which a Sieve :from would pass on to the header.
func checkFrom(s string) error {
	if s == "" {
		return nil
	}
	at := strings.LastIndexByte(s, '@')
	if len(s) > MaxAddress || at <= 0 || at == len(s)-1 || !utf8.ValidString(s) ||
		strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || strings.ContainsRune(`"<>()[],;:\`, r) }) {
		return malformed("from %q is not a plain address such as alice@example.com", trunc(s))
	}
	return nil
}

// vacationTime is t in UTC to the second, the stored precision, so that a
// value read back compares equal.
func vacationTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Second)
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// newPeriod is 8 random bytes in hex.
func newPeriod() string {
	var b [8]byte
	rand.Read(b[:]) // never fails (Go 1.24+: aborts the program instead)
	return hex.EncodeToString(b[:])
}

// userIDTx finds a user's row inside a transaction.
func userIDTx(ctx context.Context, tx *sql.Tx, a Address) (int64, error) {
	var id int64
	err := tx.QueryRowContext(ctx, "SELECT id FROM users WHERE address = ?", a.String()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("user %s: %w", a, ErrNotFound)
	}
	return id, err
}

// AddressesOf is every address that reaches the user a: its own, and every
// alias whose expansion (as Resolve follows it: nested aliases up to
// maxAliasDepth, +detail targets included) reaches a; sorted, unique.
// Catch-alls are left out: they would make every unknown address "ours".
// A disabled user is reached by no alias, so gets only its own address.
// At most maxExpandedUsers aliases are considered.
func (s *Store) AddressesOf(ctx context.Context, c Canon, a Address) ([]string, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", a, err)
	}
	defer tx.Rollback() // read-only: nothing to commit
	if _, err := userIDTx(ctx, tx, a); err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", a, err)
	}
	user := a.String()
	// Walk backwards from the user to the aliases that may reach it, as
	// deep as the expansion goes forwards...
	seen := map[string]bool{user: true}
	var candidates []string
	frontier := []string{user}
	for depth := 1; depth <= maxAliasDepth && len(frontier) > 0; depth++ {
		var next []string
		for _, n := range frontier {
			names, err := aliasesNaming(ctx, tx, c, n)
			if err != nil {
				return nil, fmt.Errorf("addresses of %s: %w", a, err)
			}
			for _, al := range names {
				if !seen[al] && len(candidates)+len(next) < maxExpandedUsers {
					seen[al] = true
					next = append(next, al)
				}
			}
		}
		candidates = append(candidates, next...)
		frontier = next
	}
	// ...then keep those whose forward expansion, the resolver's own,
	// really reaches it: the one answer every service gives.
	out := []string{user}
	for _, al := range candidates {
		x := expander{ctx: ctx, tx: tx, c: c, seen: map[string]bool{al: true}}
		_, _, targets, err := x.lookup(al)
		if err == nil {
			err = x.expand(targets, 1)
		}
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", a, err)
		}
		if slices.Contains(x.users, user) {
			out = append(out, al)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// aliasesNaming lists the aliases with a target that is addr, with or
// without a +detail.
func aliasesNaming(ctx context.Context, tx *sql.Tx, c Canon, addr string) ([]string, error) {
	q, args := "t.target = ?", []any{addr}
	if c.separators != "" {
		// Targets keep their detail ("alice+sales@example.com"): take the
		// range of targets starting "alice+", then check each below.
		local, _, _ := strings.Cut(addr, "@")
		q, args = q+" OR (t.target >= ? AND t.target < ?)", append(args, local+"+", local+",") // ',' follows '+'
	}
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT a.address, t.target FROM alias_targets t
		JOIN aliases a ON a.id = t.alias_id WHERE `+q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var alias, target string
		if err := rows.Scan(&alias, &target); err != nil {
			return nil, err
		}
		if t, err := c.Address(target); err == nil && t.String() == addr {
			out = append(out, alias)
		}
	}
	return out, rows.Err()
}

// OrgDomains lists the domains of the organisation that owns a's domain,
// sorted: the senders a vacation treats as internal. ErrNotHosted when the
// domain is not ours.
func (s *Store) OrgDomains(ctx context.Context, a Address) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT d2.name FROM domains d JOIN domains d2 ON d2.org_id = d.org_id
		WHERE d.name = ? ORDER BY d2.name`, a.Domain())
	if err != nil {
		return nil, fmt.Errorf("organisation domains of %s: %w", a, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, fmt.Errorf("organisation domains of %s: %w", a, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("organisation domains of %s: %w", a, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("organisation domains: %s: %w", a.Domain(), ErrNotHosted)
	}
	return out, nil
}
