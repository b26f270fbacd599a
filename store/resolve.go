package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
)

// Limits on alias expansion: a loop or a huge list must not turn one lookup
// into unbounded work.
const (
	maxAliasDepth    = 8
	maxExpandedUsers = 1000
)

// Kind says what a recipient address is in the store.
type Kind int

// Kinds of recipients.
const (
	KindNone     Kind = iota // nothing by that name (the domain may still be ours)
	KindUser                 // a user's own address
	KindAlias                // an alias
	KindCatchAll             // no user or alias, but the domain has a catch-all
)

func (k Kind) String() string {
	return [...]string{"none", "user", "alias", "catch-all"}[k]
}

// Resolution is what the store knows about one recipient address: the one
// answer every service gives (LMTP RCPT, socketmap maps, vacation aliases).
type Resolution struct {
	Address  Address
	Hosted   bool   // the domain is one of ours
	Org      string // its organisation, when hosted
	Kind     Kind
	Disabled bool     // KindUser: the user is disabled
	Targets  []string // KindAlias, KindCatchAll: where mail goes, as stored
	// Users are the enabled local users the address reaches, following
	// aliases (up to maxAliasDepth deep) and the catch-all; the user
	// itself for KindUser. Sorted, no duplicates.
	Users []string
	// Remote are the targets outside our domains the address reaches.
	Remote []string
}

// Deliverable reports whether mail to the address is accepted: an enabled
// user, or an alias or catch-all that reaches at least one enabled user or
// outside address (one whose targets are all disabled or gone would accept
// mail only to bounce it later).
func (r Resolution) Deliverable() bool {
	switch r.Kind {
	case KindUser:
		return !r.Disabled
	case KindAlias, KindCatchAll:
		return len(r.Users)+len(r.Remote) > 0
	}
	return false
}

// Resolve looks a canonical recipient up, in one read transaction so that
// the answer is consistent even while an admin edits the store. c turns
// stored targets back into addresses for the expansion.
func (s *Store) Resolve(ctx context.Context, c Canon, a Address) (Resolution, error) {
	r := Resolution{Address: a}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return r, fmt.Errorf("resolve %s: %w", a, err)
	}
	defer tx.Rollback() // read-only: nothing to commit
	var catchall string
	err = tx.QueryRowContext(ctx, `SELECT o.name, d.catchall FROM domains d JOIN organisations o ON o.id = d.org_id
		WHERE d.name = ?`, a.Domain()).Scan(&r.Org, &catchall)
	if errors.Is(err, sql.ErrNoRows) {
		return r, nil
	} else if err != nil {
		return r, fmt.Errorf("resolve %s: %w", a, err)
	}
	r.Hosted = true
	x := expander{ctx: ctx, tx: tx, c: c, seen: map[string]bool{}}
	kind, disabled, targets, err := x.lookup(a.String())
	if err != nil {
		return r, fmt.Errorf("resolve %s: %w", a, err)
	}
	switch {
	case kind != KindNone:
		r.Kind, r.Disabled, r.Targets = kind, disabled, targets
	case catchall != "":
		r.Kind, r.Targets = KindCatchAll, []string{catchall}
	default:
		return r, nil
	}
	if kind == KindUser {
		if !disabled {
			r.Users = []string{a.String()}
		}
		return r, nil
	}
	x.seen[a.String()] = true
	if err := x.expand(r.Targets, 1); err != nil {
		return r, fmt.Errorf("resolve %s: %w", a, err)
	}
	r.Users, r.Remote = x.users, x.remote
	slices.Sort(r.Users)
	return r, nil
}

// expander follows alias targets to local users.
type expander struct {
	ctx    context.Context
	tx     *sql.Tx
	c      Canon
	seen   map[string]bool
	users  []string
	remote []string
}

// lookup finds an address among users and aliases.
func (x *expander) lookup(addr string) (kind Kind, disabled bool, targets []string, err error) {
	err = x.tx.QueryRowContext(x.ctx, "SELECT disabled FROM users WHERE address = ?", addr).Scan(&disabled)
	if err == nil {
		return KindUser, disabled, nil, nil
	} else if !errors.Is(err, sql.ErrNoRows) {
		return KindNone, false, nil, err
	}
	rows, err := x.tx.QueryContext(x.ctx, `SELECT t.target FROM aliases a JOIN alias_targets t ON t.alias_id = a.id
		WHERE a.address = ? ORDER BY t.pos`, addr)
	if err != nil {
		return KindNone, false, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return KindNone, false, nil, err
		}
		targets = append(targets, t)
	}
	if err := rows.Err(); err != nil {
		return KindNone, false, nil, err
	}
	if len(targets) > 0 {
		return KindAlias, false, targets, nil
	}
	return KindNone, false, nil, nil
}

func (x *expander) expand(targets []string, depth int) error {
	if depth > maxAliasDepth {
		return nil // deeper nesting reaches nobody more; not an error
	}
	for _, t := range targets {
		if len(x.users)+len(x.remote) >= maxExpandedUsers {
			return nil // enough
		}
		a, err := x.c.Address(t) // the +detail does not change who it is
		if err != nil {
			// Not a mailbox name by Cyrus's rules: only an outside
			// address can be that (targets are checked on entry).
			x.remote = append(x.remote, t)
			continue
		}
		if x.seen[a.String()] {
			continue // a loop, or twice
		}
		x.seen[a.String()] = true
		var hosted int
		if err := x.tx.QueryRowContext(x.ctx, "SELECT count(*) FROM domains WHERE name = ?", a.Domain()).Scan(&hosted); err != nil {
			return err
		}
		if hosted == 0 {
			x.remote = append(x.remote, t)
			continue
		}
		kind, disabled, next, err := x.lookup(a.String())
		if err != nil {
			return err
		}
		switch {
		case kind == KindUser && !disabled:
			x.users = append(x.users, a.String())
		case kind == KindAlias:
			if err := x.expand(next, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}
