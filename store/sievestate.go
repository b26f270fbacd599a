package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// maxSieveError bounds a stored error message: Cyrus's ManageSieve answers
// can quote a whole script back.
const maxSieveError = 1000

// SieveState is what the vacation service last did for an address in Cyrus.
// It is the service's own bookkeeping, not part of the directory: writing it
// does not change Generation, so it flushes no cache.
type SieveState struct {
	Address string `json:"address"`
	// ScriptHash is the hex SHA-256 of the script installed; "" = nothing
	// of ours is installed.
	ScriptHash string `json:"script_hash"`
	// Mode is how our script is hooked in: "wrapper" (our wrapper is the
	// active script), "include" (an include line was added to the user's
	// active script), "report" (policy report-only: nothing activated) or
	// "" (not at all).
	Mode string `json:"mode"`
	// PrevActive is the user's active script before we changed anything
	// ("" = none), to restore.
	PrevActive  string    `json:"prev_active"`
	InstalledAt time.Time `json:"installed_at,omitzero"`
	AttemptedAt time.Time `json:"attempted_at,omitzero"`
	LastError   string    `json:"last_error"`
}

// SieveState returns what is recorded for address, or the zero SieveState
// when nothing is.
func (s *Store) SieveState(ctx context.Context, address string) (SieveState, error) {
	sts, err := s.querySieveStates(ctx, "WHERE address = ?", address)
	if err != nil {
		return SieveState{}, fmt.Errorf("get sieve state: %w", err)
	}
	if len(sts) == 0 {
		return SieveState{}, nil
	}
	return sts[0], nil
}

// SieveStates lists every recorded state by address, including those of
// addresses that are no longer users (what is installed there must still
// be removed).
func (s *Store) SieveStates(ctx context.Context) ([]SieveState, error) {
	sts, err := s.querySieveStates(ctx, "ORDER BY address")
	if err != nil {
		return nil, fmt.Errorf("list sieve states: %w", err)
	}
	return sts, nil
}

// SetSieveState records st, replacing what was recorded for st.Address.
// LastError is cut to maxSieveError bytes.
func (s *Store) SetSieveState(ctx context.Context, st SieveState) error {
	switch {
	case st.Address == "":
		return malformed("set sieve state: empty address")
	case st.Mode != "" && st.Mode != "wrapper" && st.Mode != "include" && st.Mode != "report":
		return malformed("set sieve state of %s: mode %q: want wrapper, include, report or empty", st.Address, st.Mode)
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO sieve_state (address, script_hash, mode, prev_active, installed_at, attempted_at, last_error)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (address) DO UPDATE SET script_hash = excluded.script_hash, mode = excluded.mode,
			prev_active = excluded.prev_active, installed_at = excluded.installed_at,
			attempted_at = excluded.attempted_at, last_error = excluded.last_error`,
			st.Address, st.ScriptHash, st.Mode, st.PrevActive, unixOrZero(st.InstalledAt), unixOrZero(st.AttemptedAt),
			cutUTF8(st.LastError, maxSieveError))
		return err
	})
	if err != nil {
		return fmt.Errorf("set sieve state of %s: %w", st.Address, err)
	}
	return nil
}

// DeleteSieveState forgets what was recorded for address (nothing of ours
// is left there); forgetting nothing is not an error.
func (s *Store) DeleteSieveState(ctx context.Context, address string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "DELETE FROM sieve_state WHERE address = ?", address)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete sieve state of %s: %w", address, err)
	}
	return nil
}

func (s *Store) querySieveStates(ctx context.Context, where string, args ...any) ([]SieveState, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT address, script_hash, mode, prev_active, installed_at, attempted_at, last_error
		FROM sieve_state `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SieveState
	for rows.Next() {
		var st SieveState
		var installed, attempted int64
		if err := rows.Scan(&st.Address, &st.ScriptHash, &st.Mode, &st.PrevActive, &installed, &attempted, &st.LastError); err != nil {
			return nil, err
		}
		st.InstalledAt, st.AttemptedAt = fromUnix(installed), fromUnix(attempted)
		out = append(out, st)
	}
	return out, rows.Err()
}

// cutUTF8 shortens s to at most max bytes without leaving a partial
// character at the end (or any invalid UTF-8 anywhere).
func cutUTF8(s string, max int) string {
	if len(s) > max {
		s = s[:max]
	}
	return strings.ToValidUTF8(s, "")
}
