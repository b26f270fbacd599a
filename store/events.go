package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The per-account event log behind Server-Sent Events: each account's
// events carry a sequence number of their own, contiguous (1, 2, 3, ...),
// so a client that resumes with the last number it saw gets exactly what it
// missed, and a client whose number fell out of the retention window is
// told so. Its writes do not change Generation.

// NewAccountEvent is one event to log under one account.
type NewAccountEvent struct {
	Account string    // canonical address of an account allowed to see it
	At      time.Time // zero: now
	Event   []byte    // the event's JSON
}

// AccountEvent is a logged event.
type AccountEvent struct {
	Account string
	Seq     int64
	At      time.Time
	Event   []byte
}

// AccountEventPage is what AccountEventsAfter found.
type AccountEventPage struct {
	Events []AccountEvent
	// Last is the account's last sequence number handed out (0: none yet).
	Last int64
	// Expired reports that events after the given sequence number are no
	// longer all kept (pruned by retention), or that the number is one this
	// store never handed out: the reader must resync and go on from Last.
	Expired bool
}

// AppendAccountEvents logs events in one transaction and returns the
// sequence number each got, in order.
func (s *Store) AppendAccountEvents(ctx context.Context, evs []NewAccountEvent) ([]int64, error) {
	seqs, err := s.RecordEvents(ctx, evs, nil)
	if err != nil {
		return nil, fmt.Errorf("append account events: %w", err)
	}
	return seqs, nil
}

// RecordEvents logs account events and enqueues webhooks in one
// transaction, so a burst costs one commit and a failure leaves neither. It
// returns the sequence number of each account event, in order; webhooks
// for consumers deleted meanwhile are skipped.
func (s *Store) RecordEvents(ctx context.Context, evs []NewAccountEvent, hooks []NewWebhook) ([]int64, error) {
	seqs := make([]int64, len(evs))
	err := s.write(ctx, func(tx *sql.Tx) error {
		if len(evs) > 0 {
			next, err := tx.PrepareContext(ctx, `INSERT INTO account_seqs (account, last) VALUES (?, 1)
				ON CONFLICT (account) DO UPDATE SET last = last + 1 RETURNING last`)
			if err != nil {
				return err
			}
			defer next.Close()
			ins, err := tx.PrepareContext(ctx, "INSERT INTO account_events (account, seq, at, event) VALUES (?, ?, ?, ?)")
			if err != nil {
				return err
			}
			defer ins.Close()
			for i, e := range evs {
				if e.Account == "" {
					return fmt.Errorf("event %d: no account", i)
				}
				if err := next.QueryRowContext(ctx, e.Account).Scan(&seqs[i]); err != nil {
					return err
				}
				at := e.At
				if at.IsZero() {
					at = time.Now()
				}
				if _, err := ins.ExecContext(ctx, e.Account, seqs[i], at.Unix(), string(e.Event)); err != nil {
					return err
				}
			}
		}
		_, err := enqueueWebhooks(ctx, tx, hooks, time.Now())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("record events: %w", err)
	}
	return seqs, nil
}

// AccountEventsAfter returns up to limit of account's events with a
// sequence number above after, in order. See AccountEventPage.Expired.
func (s *Store) AccountEventsAfter(ctx context.Context, account string, after int64, limit int) (AccountEventPage, error) {
	var p AccountEventPage
	// One read transaction: Last and the rows agree.
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return p, fmt.Errorf("account events: %w", err)
	}
	defer tx.Rollback()
	var pruned int64
	err = tx.QueryRowContext(ctx, "SELECT last, pruned FROM account_seqs WHERE account = ?", account).Scan(&p.Last, &pruned)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("account events: %w", err)
	}
	if after < pruned || after > p.Last || after < 0 {
		p.Expired = true
		return p, nil
	}
	rows, err := tx.QueryContext(ctx, "SELECT seq, at, event FROM account_events WHERE account = ? AND seq > ? ORDER BY seq LIMIT ?",
		account, after, limit)
	if err != nil {
		return p, fmt.Errorf("account events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		e := AccountEvent{Account: account}
		var at int64
		var ev string
		if err := rows.Scan(&e.Seq, &at, &ev); err != nil {
			return p, fmt.Errorf("account events: %w", err)
		}
		e.At, e.Event = fromUnix(at), []byte(ev)
		p.Events = append(p.Events, e)
	}
	if err := rows.Err(); err != nil {
		return p, fmt.Errorf("account events: %w", err)
	}
	return p, nil
}

// PruneEvents removes account events logged before before and records,
// per account, the highest sequence number removed, so that a later resume
// from below it is reported as Expired. It returns how many it removed.
func (s *Store) PruneEvents(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		// Per account through the indexes, not one scan of the whole log.
		rows, err := tx.QueryContext(ctx, "SELECT account, max(seq) FROM account_events WHERE at < ? GROUP BY account", before.Unix())
		if err != nil {
			return err
		}
		floors := map[string]int64{}
		for rows.Next() {
			var a string
			var seq int64
			if err := rows.Scan(&a, &seq); err != nil {
				rows.Close()
				return err
			}
			floors[a] = seq
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for a, floor := range floors {
			// Everything up to the newest old event goes, even a younger
			// row below it (after a clock step back): the floor is what
			// AccountEventsAfter checks.
			if _, err := tx.ExecContext(ctx, "UPDATE account_seqs SET pruned = max(pruned, ?) WHERE account = ?", floor, a); err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, "DELETE FROM account_events WHERE account = ? AND seq <= ?", a, floor)
			if err != nil {
				return err
			}
			k, err := res.RowsAffected()
			if err != nil {
				return err
			}
			n += k
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return n, nil
}
