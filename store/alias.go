package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// MaxAliasTargets bounds one alias's expansion.
const MaxAliasTargets = 1000

// Alias forwards an address in a hosted domain to one or more targets:
// local users or outside addresses.
type Alias struct {
	ID      int64     `json:"id"`
	Address string    `json:"address"`
	Domain  string    `json:"domain"`
	Targets []string  `json:"targets"`
	Created time.Time `json:"created"`
}

// AddAlias creates the alias or adds targets to an existing one; targets it
// already has are kept once, in their first position.
func (s *Store) AddAlias(ctx context.Context, a Address, targets []Address) (Alias, error) {
	if len(targets) == 0 {
		return Alias{}, malformed("add alias %s: no targets", a)
	}
	if err := checkReserved(a); err != nil {
		return Alias{}, fmt.Errorf("add alias: %w", err)
	}
	addr := a.String()
	err := s.write(ctx, func(tx *sql.Tx) error {
		did, err := domainID(ctx, tx, a.Domain())
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM users WHERE address = ?", addr).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%s is a user: %w", addr, ErrExists)
		}
		var id int64
		err = tx.QueryRowContext(ctx, "SELECT id FROM aliases WHERE address = ?", addr).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			res, err := tx.ExecContext(ctx, "INSERT INTO aliases (address, domain_id, created) VALUES (?, ?, ?)", addr, did, now())
			if err != nil {
				return err
			}
			if id, err = res.LastInsertId(); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		var pos int
		if err := tx.QueryRowContext(ctx, "SELECT coalesce(max(pos), 0), count(*) FROM alias_targets WHERE alias_id = ?", id).Scan(&pos, &n); err != nil {
			return err
		}
		for _, t := range targets {
			if t.String() == addr {
				return malformed("alias %s cannot point to itself", addr)
			}
			if n >= MaxAliasTargets {
				return malformed("alias %s: more than %d targets", addr, MaxAliasTargets)
			}
			pos++
			res, err := tx.ExecContext(ctx, "INSERT OR IGNORE INTO alias_targets (alias_id, pos, target) VALUES (?, ?, ?)", id, pos, t.String())
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k > 0 { // RowsAffected cannot fail on SQLite
				n++
			}
		}
		return nil
	})
	if err != nil {
		return Alias{}, fmt.Errorf("add alias: %w", err)
	}
	return s.Alias(ctx, a)
}

// DeleteAlias removes the given targets from the alias, or the whole alias
// when targets is empty or none would remain. It reports whether the alias
// itself is gone.
func (s *Store) DeleteAlias(ctx context.Context, a Address, targets []Address) (gone bool, err error) {
	addr := a.String()
	err = s.write(ctx, func(tx *sql.Tx) error {
		var id int64
		err := tx.QueryRowContext(ctx, "SELECT id FROM aliases WHERE address = ?", addr).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("alias %s: %w", addr, ErrNotFound)
		} else if err != nil {
			return err
		}
		for _, t := range targets {
			res, err := tx.ExecContext(ctx, "DELETE FROM alias_targets WHERE alias_id = ? AND target = ?", id, t.String())
			if err != nil {
				return err
			}
			if err := mustAffect(res, fmt.Errorf("alias %s has no target %s: %w", addr, t, ErrNotFound)); err != nil {
				return err
			}
		}
		var left int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM alias_targets WHERE alias_id = ?", id).Scan(&left); err != nil {
			return err
		}
		if len(targets) == 0 || left == 0 {
			gone = true
			_, err = tx.ExecContext(ctx, "DELETE FROM aliases WHERE id = ?", id)
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("delete alias: %w", err)
	}
	return gone, nil
}

// Alias returns one alias with its targets in the order they were added.
func (s *Store) Alias(ctx context.Context, a Address) (Alias, error) {
	as, err := s.queryAliases(ctx, "WHERE a.address = ?", a.String())
	if err != nil {
		return Alias{}, fmt.Errorf("get alias: %w", err)
	}
	if len(as) == 0 {
		return Alias{}, fmt.Errorf("alias %s: %w", a, ErrNotFound)
	}
	return as[0], nil
}

// Aliases lists aliases by address, all or those of one domain.
func (s *Store) Aliases(ctx context.Context, domain string) ([]Alias, error) {
	where, args := "", []any{}
	if domain != "" {
		where, args = "WHERE d.name = ?", []any{domain}
	}
	as, err := s.queryAliases(ctx, where, args...)
	if err != nil {
		return nil, fmt.Errorf("list aliases: %w", err)
	}
	return as, nil
}

func (s *Store) queryAliases(ctx context.Context, where string, args ...any) ([]Alias, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT a.id, a.address, d.name, a.created, t.target
		FROM aliases a JOIN domains d ON d.id = a.domain_id JOIN alias_targets t ON t.alias_id = a.id
		`+where+` ORDER BY a.address, t.pos`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Alias
	for rows.Next() {
		var al Alias
		var created int64
		var target string
		if err := rows.Scan(&al.ID, &al.Address, &al.Domain, &created, &target); err != nil {
			return nil, err
		}
		if n := len(out); n > 0 && out[n-1].ID == al.ID {
			out[n-1].Targets = append(out[n-1].Targets, target)
			continue
		}
		al.Created = fromUnix(created)
		al.Targets = []string{target}
		out = append(out, al)
	}
	return out, rows.Err()
}
