package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen bounds organisation names and labels shown in tables.
const MaxNameLen = 64

// Org is an organisation: the unit that owns domains and decides who is
// "inside" for vacation replies.
type Org struct {
	ID      int64     `json:"id"`
	Name    string    `json:"name"`
	Domains int       `json:"domains"`
	Created time.Time `json:"created"`
}

// CheckName validates a free-form name (organisation, label): 1 to
// MaxNameLen bytes of printable UTF-8, no leading or trailing space.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return malformed("name must be 1 to %d bytes", MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return malformed("name: invalid UTF-8")
	}
	if strings.TrimSpace(name) != name {
		return malformed("name %q has leading or trailing space", name)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return malformed("name %q has a non-printable character", name)
		}
	}
	return nil
}

// AddOrg creates an organisation. Names compare case-insensitively.
func (s *Store) AddOrg(ctx context.Context, name string) (Org, error) {
	if err := CheckName(name); err != nil {
		return Org{}, fmt.Errorf("organisation: %w", err)
	}
	o := Org{Name: name, Created: fromUnix(now())}
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "INSERT INTO organisations (name, created) VALUES (?, ?)", name, o.Created.Unix())
		if isUnique(err) {
			return fmt.Errorf("organisation %q: %w", name, ErrExists)
		} else if err != nil {
			return err
		}
		o.ID, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return Org{}, fmt.Errorf("add organisation: %w", err)
	}
	return o, nil
}

// DeleteOrg removes an organisation that owns no domains.
func (s *Store) DeleteOrg(ctx context.Context, name string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		var id int64
		var n int
		err := tx.QueryRowContext(ctx, `SELECT o.id, (SELECT count(*) FROM domains d WHERE d.org_id = o.id)
			FROM organisations o WHERE o.name = ?`, name).Scan(&id, &n)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("organisation %q: %w", name, ErrNotFound)
		} else if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("organisation %q owns %d domain(s): %w", name, n, ErrInUse)
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM organisations WHERE id = ?", id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete organisation: %w", err)
	}
	return nil
}

// Orgs lists organisations by name.
func (s *Store) Orgs(ctx context.Context) ([]Org, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT o.id, o.name, o.created,
		(SELECT count(*) FROM domains d WHERE d.org_id = o.id)
		FROM organisations o ORDER BY o.name`)
	if err != nil {
		return nil, fmt.Errorf("list organisations: %w", err)
	}
	defer rows.Close()
	var out []Org
	for rows.Next() {
		var o Org
		var created int64
		if err := rows.Scan(&o.ID, &o.Name, &created, &o.Domains); err != nil {
			return nil, fmt.Errorf("list organisations: %w", err)
		}
		o.Created = fromUnix(created)
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list organisations: %w", err)
	}
	return out, nil
}
