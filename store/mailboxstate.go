package store

import (
	"context"
	"database/sql"
	"fmt"
)

// MailboxState is what the events reconciler last reported for one mailbox
// of an account. Like SieveState it is a service's bookkeeping, not
// directory data: writing it does not change Generation.
type MailboxState struct {
	Mailbox       string // as the account sees it, UTF-8
	MailboxID     string // Cyrus's uniqueid; "" when unknown
	UIDValidity   uint32
	UIDNext       uint32
	Messages      uint32
	Unseen        uint32
	HighestModseq uint64
	// Subscribed: 0 unknown, 1 not subscribed, 2 subscribed.
	Subscribed uint8
}

// MailboxStates returns account's recorded mailboxes by name; none for an
// account never reconciled.
func (s *Store) MailboxStates(ctx context.Context, account string) ([]MailboxState, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT mailbox, mailbox_id, uidvalidity, uidnext, messages, unseen, highestmodseq, subscribed
		FROM mailbox_state WHERE account = ? ORDER BY mailbox`, account)
	if err != nil {
		return nil, fmt.Errorf("mailbox states of %s: %w", account, err)
	}
	defer rows.Close()
	var out []MailboxState
	for rows.Next() {
		var m MailboxState
		var modseq int64
		if err := rows.Scan(&m.Mailbox, &m.MailboxID, &m.UIDValidity, &m.UIDNext, &m.Messages, &m.Unseen, &modseq, &m.Subscribed); err != nil {
			return nil, fmt.Errorf("mailbox states of %s: %w", account, err)
		}
		m.HighestModseq = uint64(modseq)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("mailbox states of %s: %w", account, err)
	}
	return out, nil
}

// SetMailboxStates replaces all of account's recorded mailboxes with
// states, in one transaction.
func (s *Store) SetMailboxStates(ctx context.Context, account string, states []MailboxState) error {
	if account == "" {
		return malformed("set mailbox states: empty account")
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM mailbox_state WHERE account = ?`, account); err != nil {
			return err
		}
		st, err := tx.PrepareContext(ctx, `INSERT INTO mailbox_state
			(account, mailbox, mailbox_id, uidvalidity, uidnext, messages, unseen, highestmodseq, subscribed)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, m := range states {
			if _, err := st.ExecContext(ctx, account, m.Mailbox, m.MailboxID, m.UIDValidity, m.UIDNext,
				m.Messages, m.Unseen, int64(m.HighestModseq), m.Subscribed); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set mailbox states of %s: %w", account, err)
	}
	return nil
}

// ScopedAccounts lists the enabled users of every domain an enabled
// webhook consumer receives events for (its listed domains and its
// organisation's), by address: the accounts the events reconciler sweeps.
func (s *Store) ScopedAccounts(ctx context.Context) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT u.address FROM users u JOIN domains d ON d.id = u.domain_id
		WHERE u.disabled = 0 AND (
			d.name IN (SELECT cd.domain FROM consumer_domains cd JOIN consumers c ON c.id = cd.consumer_id WHERE c.enabled = 1)
			OR d.org_id IN (SELECT c.org_id FROM consumers c WHERE c.enabled = 1 AND c.org_id IS NOT NULL))
		ORDER BY u.address`)
	if err != nil {
		return nil, fmt.Errorf("scoped accounts: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, fmt.Errorf("scoped accounts: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scoped accounts: %w", err)
	}
	return out, nil
}
