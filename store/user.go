package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"
)

// AllServices is the services value that allows every service.
const AllServices = "*"

// User is a mailbox owner who can log in.
type User struct {
	ID           int64     `json:"id"`
	Address      string    `json:"address"`
	Domain       string    `json:"domain"`
	Org          string    `json:"organisation"`
	PasswordHash Secret    `json:"-"` // never printed
	HasPassword  bool      `json:"has_password"`
	Disabled     bool      `json:"disabled"`
	Services     []string  `json:"services"` // ["*"] = all
	DisplayName  string    `json:"display_name,omitempty"`
	Created      time.Time `json:"created"`
	Updated      time.Time `json:"updated"`
}

// Allows reports whether the user may use service (as the client names it:
// Cyrus sends "imap", "pop", "sieve", "HTTP"; Postfix "smtp").
func (u User) Allows(service string) bool {
	return slices.Contains(u.Services, AllServices) || slices.Contains(u.Services, strings.ToLower(service))
}

// NewUser is what AddUser needs.
type NewUser struct {
	Address      Address
	PasswordHash Secret   // "" = no password login (tokens or app passwords only)
	Services     []string // nil = all
	DisplayName  string
}

// ParseServices turns "imap,sieve" into a checked, lower-cased, sorted list;
// "" and "*" mean all services.
func ParseServices(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" || strings.TrimSpace(s) == AllServices {
		return []string{AllServices}, nil
	}
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" || len(f) > 32 || strings.Trim(f, "abcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return nil, malformed("service %q: use names like imap, pop, sieve, http, smtp", f)
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out, nil
}

// AddUser creates a user in a hosted domain. An alias with the same address
// is a conflict: RCPT and login lookups must have one answer.
func (s *Store) AddUser(ctx context.Context, nu NewUser) (User, error) {
	if nu.Address.IsZero() {
		return User{}, malformed("add user: empty address")
	}
	if err := checkReserved(nu.Address); err != nil {
		return User{}, fmt.Errorf("add user: %w", err)
	}
	if nu.Services == nil {
		nu.Services = []string{AllServices}
	}
	if nu.DisplayName != "" {
		if err := CheckName(nu.DisplayName); err != nil {
			return User{}, fmt.Errorf("add user: display name: %w", err)
		}
	}
	addr := nu.Address.String()
	t := now()
	err := s.write(ctx, func(tx *sql.Tx) error {
		did, err := domainID(ctx, tx, nu.Address.Domain())
		if err != nil {
			return err
		}
		if err := noAlias(ctx, tx, addr); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO users (address, domain_id, password_hash, services, display_name, created, updated)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, addr, did, string(nu.PasswordHash), strings.Join(nu.Services, ","), nu.DisplayName, t, t)
		if isUnique(err) {
			return fmt.Errorf("user %s: %w", addr, ErrExists)
		}
		return err
	})
	if err != nil {
		return User{}, fmt.Errorf("add user: %w", err)
	}
	return s.User(ctx, nu.Address)
}

func noAlias(ctx context.Context, tx *sql.Tx, addr string) error {
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM aliases WHERE address = ?", addr).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%s is an alias: %w", addr, ErrExists)
	}
	return nil
}

const userSelect = `SELECT u.id, u.address, d.name, o.name, u.password_hash, u.disabled, u.services,
	u.display_name, u.created, u.updated
	FROM users u JOIN domains d ON d.id = u.domain_id JOIN organisations o ON o.id = d.org_id`

// userByAddress is User's query, prepared at Open (Store.userStmt).
const userByAddress = userSelect + " WHERE u.address = ?"

// User looks a user up by canonical address.
func (s *Store) User(ctx context.Context, a Address) (User, error) {
	rows, err := s.userStmt.QueryContext(ctx, a.String())
	if err != nil {
		return User{}, fmt.Errorf("get user: %w", err)
	}
	us, err := scanUsers(rows)
	if err != nil {
		return User{}, fmt.Errorf("get user: %w", err)
	}
	if len(us) == 0 {
		return User{}, fmt.Errorf("user %s: %w", a, ErrNotFound)
	}
	return us[0], nil
}

// Users lists users by address, all or those of one domain.
func (s *Store) Users(ctx context.Context, domain string) ([]User, error) {
	q, args := userSelect+" ORDER BY d.name, u.address", []any{}
	if domain != "" {
		q, args = userSelect+" WHERE d.name = ? ORDER BY u.address", []any{domain}
	}
	us, err := s.queryUsers(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return us, nil
}

func (s *Store) queryUsers(ctx context.Context, q string, args ...any) ([]User, error) {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return scanUsers(rows)
}

// scanUsers reads the rows of a userSelect query and closes them.
func scanUsers(rows *sql.Rows) ([]User, error) {
	defer rows.Close()
	var out []User
	for rows.Next() {
		var u User
		var services, hash string
		var created, updated int64
		if err := rows.Scan(&u.ID, &u.Address, &u.Domain, &u.Org, &hash, &u.Disabled, &services,
			&u.DisplayName, &created, &updated); err != nil {
			return nil, err
		}
		u.PasswordHash, u.HasPassword = Secret(hash), hash != ""
		u.Services = strings.Split(services, ",")
		u.Created, u.Updated = fromUnix(created), fromUnix(updated)
		out = append(out, u)
	}
	return out, rows.Err()
}

// SetPassword replaces a user's password hash ("" removes password login).
func (s *Store) SetPassword(ctx context.Context, a Address, hash Secret) error {
	return s.updateUser(ctx, "set password", a, "password_hash = ?", string(hash))
}

// SetDisabled disables or re-enables a user's logins and deliveries.
func (s *Store) SetDisabled(ctx context.Context, a Address, disabled bool) error {
	return s.updateUser(ctx, "set disabled", a, "disabled = ?", disabled)
}

// SetServices replaces the services a user may log in to.
func (s *Store) SetServices(ctx context.Context, a Address, services []string) error {
	return s.updateUser(ctx, "set services", a, "services = ?", strings.Join(services, ","))
}

func (s *Store) updateUser(ctx context.Context, op string, a Address, set string, v any) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE users SET "+set+", updated = ? WHERE address = ?", v, now(), a.String())
		if err != nil {
			return err
		}
		return mustAffect(res, fmt.Errorf("user %s: %w", a, ErrNotFound))
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// DeleteUser removes a user with their app passwords and vacation settings.
// It returns the aliases that still name the user as a target, which the
// caller should report: they now point nowhere.
func (s *Store) DeleteUser(ctx context.Context, a Address) ([]string, error) {
	var dangling []string
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM users WHERE address = ?", a.String())
		if err != nil {
			return err
		}
		if err := mustAffect(res, fmt.Errorf("user %s: %w", a, ErrNotFound)); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT a.address FROM aliases a JOIN alias_targets t ON t.alias_id = a.id
			WHERE t.target = ? ORDER BY a.address`, a.String())
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				return err
			}
			dangling = append(dangling, s)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("delete user: %w", err)
	}
	return dangling, nil
}

// SetDisplayName replaces a user's display name.
func (s *Store) SetDisplayName(ctx context.Context, a Address, name string) error {
	if name != "" {
		if err := CheckName(name); err != nil {
			return fmt.Errorf("set display name: %w", err)
		}
	}
	return s.updateUser(ctx, "set display name", a, "display_name = ?", name)
}

// checkReserved refuses the user names Cyrus gives a meaning of its own
// (canonify_userid maps them to its anonymous and anyone identities), so
// that no account of ours can ever be one of them.
func checkReserved(a Address) error {
	switch a.Local() {
	case "anyone", "anybody", "anonymous":
		return malformed("%q is reserved by Cyrus", a.Local())
	}
	return nil
}

// ReplacePasswordHash swaps a user's hash only if it is still old: a login
// upgrading the hash scheme must never undo a password change that an admin
// made meanwhile. It reports whether the hash was replaced.
func (s *Store) ReplacePasswordHash(ctx context.Context, a Address, old, next Secret) (bool, error) {
	var done bool
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE users SET password_hash = ?, updated = ? WHERE address = ? AND password_hash = ?",
			string(next), now(), a.String(), string(old))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		done = n == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("replace password hash: %w", err)
	}
	return done, nil
}
