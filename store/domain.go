package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Domain is a hosted mail domain, owned by one organisation.
type Domain struct {
	ID       int64     `json:"id"`
	Name     string    `json:"name"`
	Org      string    `json:"organisation"`
	CatchAll string    `json:"catchall,omitempty"`
	Users    int       `json:"users"`
	Aliases  int       `json:"aliases"`
	Created  time.Time `json:"created"`
}

// AddDomain hosts a domain (already canonical, see Canon.Domain) for an
// existing organisation.
func (s *Store) AddDomain(ctx context.Context, name, org string) (Domain, error) {
	d := Domain{Name: name, Created: fromUnix(now())}
	err := s.write(ctx, func(tx *sql.Tx) error {
		var orgID int64
		err := tx.QueryRowContext(ctx, "SELECT id, name FROM organisations WHERE name = ?", org).Scan(&orgID, &d.Org)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("organisation %q: %w", org, ErrNotFound)
		} else if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "INSERT INTO domains (name, org_id, created) VALUES (?, ?, ?)",
			name, orgID, d.Created.Unix())
		if isUnique(err) {
			var owner string
			// Name the owner, so the admin knows where it already lives.
			_ = tx.QueryRowContext(ctx, `SELECT o.name FROM domains d JOIN organisations o ON o.id = d.org_id
				WHERE d.name = ?`, name).Scan(&owner) // best effort: only improves the message
			return fmt.Errorf("domain %s (organisation %q): %w", name, owner, ErrExists)
		} else if err != nil {
			return err
		}
		d.ID, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return Domain{}, fmt.Errorf("add domain: %w", err)
	}
	return d, nil
}

// SetCatchAll sets (or with target "" clears) the address that receives mail
// for unknown local parts of the domain.
func (s *Store) SetCatchAll(ctx context.Context, domain string, target Address) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE domains SET catchall = ? WHERE name = ?", target.String(), domain)
		if err != nil {
			return err
		}
		return mustAffect(res, fmt.Errorf("domain %s: %w", domain, ErrNotFound))
	})
	if err != nil {
		return fmt.Errorf("set catch-all: %w", err)
	}
	return nil
}

// MoveDomain gives a domain, with its users and aliases, to another
// organisation.
func (s *Store) MoveDomain(ctx context.Context, domain, org string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		var orgID int64
		err := tx.QueryRowContext(ctx, "SELECT id FROM organisations WHERE name = ?", org).Scan(&orgID)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("organisation %q: %w", org, ErrNotFound)
		} else if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "UPDATE domains SET org_id = ? WHERE name = ?", orgID, domain)
		if err != nil {
			return err
		}
		return mustAffect(res, fmt.Errorf("domain %s: %w", domain, ErrNotFound))
	})
	if err != nil {
		return fmt.Errorf("move domain: %w", err)
	}
	return nil
}

// DeleteDomain stops hosting a domain that has no users or aliases left.
func (s *Store) DeleteDomain(ctx context.Context, name string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		var id int64
		var users, aliases int
		err := tx.QueryRowContext(ctx, `SELECT id,
			(SELECT count(*) FROM users u WHERE u.domain_id = d.id),
			(SELECT count(*) FROM aliases a WHERE a.domain_id = d.id)
			FROM domains d WHERE name = ?`, name).Scan(&id, &users, &aliases)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("domain %s: %w", name, ErrNotFound)
		} else if err != nil {
			return err
		}
		if users+aliases > 0 {
			return fmt.Errorf("domain %s has %d user(s) and %d alias(es): %w", name, users, aliases, ErrInUse)
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM domains WHERE id = ?", id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete domain: %w", err)
	}
	return nil
}

const domainSelect = `SELECT d.id, d.name, o.name, d.catchall, d.created,
	(SELECT count(*) FROM users u WHERE u.domain_id = d.id),
	(SELECT count(*) FROM aliases a WHERE a.domain_id = d.id)
	FROM domains d JOIN organisations o ON o.id = d.org_id`

// Domain returns one hosted domain.
func (s *Store) Domain(ctx context.Context, name string) (Domain, error) {
	rows, err := s.r.QueryContext(ctx, domainSelect+" WHERE d.name = ?", name)
	if err != nil {
		return Domain{}, fmt.Errorf("get domain: %w", err)
	}
	ds, err := scanDomains(rows)
	if err != nil {
		return Domain{}, fmt.Errorf("get domain: %w", err)
	}
	if len(ds) == 0 {
		return Domain{}, fmt.Errorf("domain %s: %w", name, ErrNotFound)
	}
	return ds[0], nil
}

// Domains lists hosted domains by name.
func (s *Store) Domains(ctx context.Context) ([]Domain, error) {
	rows, err := s.r.QueryContext(ctx, domainSelect+" ORDER BY d.name")
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	ds, err := scanDomains(rows)
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	return ds, nil
}

func scanDomains(rows *sql.Rows) ([]Domain, error) {
	defer rows.Close()
	var out []Domain
	for rows.Next() {
		var d Domain
		var created int64
		if err := rows.Scan(&d.ID, &d.Name, &d.Org, &d.CatchAll, &created, &d.Users, &d.Aliases); err != nil {
			return nil, err
		}
		d.Created = fromUnix(created)
		out = append(out, d)
	}
	return out, rows.Err()
}

// domainID finds a hosted domain inside a write transaction.
func domainID(ctx context.Context, tx *sql.Tx, name string) (int64, error) {
	var id int64
	err := tx.QueryRowContext(ctx, "SELECT id FROM domains WHERE name = ?", name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%s: %w", name, ErrNotHosted)
	}
	return id, err
}

// mustAffect turns "no row changed" into notFound.
func mustAffect(res sql.Result, notFound error) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return notFound
	}
	return nil
}
