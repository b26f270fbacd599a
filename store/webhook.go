package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// The webhook outbox: every webhook stays here until its consumer answers
// 2xx, so a restart or a consumer's outage loses nothing (at least once).
// Its writes do not change Generation.

// maxWebhookError bounds a stored delivery error.
const maxWebhookError = 500

// webhookIDEncoding is Crockford's base32 alphabet in lower case: no '.',
// which Standard Webhooks forbids in an id (it delimits the signed content).
var webhookIDEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewWebhook is one webhook to enqueue for a consumer.
type NewWebhook struct {
	ConsumerID int64
	// Mailbox is the ordering key: webhooks with the same consumer and key
	// are sent one at a time, in enqueue order.
	Mailbox string
	Payload []byte // the exact body to send
}

// Webhook is an outbox row with what sending it needs.
type Webhook struct {
	Seq        int64  `json:"seq"`
	ID         string `json:"id"` // the webhook-id, the same on every attempt
	ConsumerID int64  `json:"consumer_id"`
	Consumer   string `json:"consumer"`
	URL        string `json:"url"`
	Secret     Secret `json:"-"`
	// OldSecret, until OldSecretUntil, is the consumer's previous secret
	// after a rotation: it signs too, so the receiver may switch keys at
	// any moment in between. "" when there is none.
	OldSecret      Secret    `json:"-"`
	OldSecretUntil time.Time `json:"-"`
	Mailbox        string    `json:"mailbox"`
	Payload        []byte    `json:"-"`
	// Attempts counts the failed attempts so far.
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	Created     time.Time `json:"created"`
	LastError   string    `json:"last_error,omitempty"`
}

// NewWebhookID makes a webhook-id: "msg_" and 26 base32 characters of a
// millisecond timestamp (48 bits, so ids sort roughly by time, which helps
// whoever reads a consumer's log) and 80 random bits.
func NewWebhookID(now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	rand.Read(b[6:]) // crypto/rand never fails: it crashes the program instead
	return "msg_" + webhookIDEncoding.EncodeToString(b[:])
}

// EnqueueWebhooks adds webhooks to the outbox in one transaction, due at
// once, and returns their ids in order ("" for one whose consumer no longer
// exists, which is skipped).
func (s *Store) EnqueueWebhooks(ctx context.Context, ws []NewWebhook) ([]string, error) {
	var ids []string
	err := s.write(ctx, func(tx *sql.Tx) error {
		var err error
		ids, err = enqueueWebhooks(ctx, tx, ws, time.Now())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue webhooks: %w", err)
	}
	return ids, nil
}

func enqueueWebhooks(ctx context.Context, tx *sql.Tx, ws []NewWebhook, now time.Time) ([]string, error) {
	if len(ws) == 0 {
		return nil, nil
	}
	// A consumer deleted since the caller looked is skipped, not an error
	// that would fail the whole batch.
	st, err := tx.PrepareContext(ctx, `INSERT INTO webhook_outbox (id, consumer_id, mailbox, payload, next_attempt_ms, created_ms)
		SELECT ?, id, ?, ?, ?, ? FROM consumers WHERE id = ?`)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ids := make([]string, len(ws))
	ms := now.UnixMilli()
	for i, w := range ws {
		id := NewWebhookID(now)
		res, err := st.ExecContext(ctx, id, w.Mailbox, string(w.Payload), ms, ms, w.ConsumerID)
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, err
		} else if n == 1 {
			ids[i] = id
		}
	}
	return ids, nil
}

// DueWebhooks returns up to limit webhooks that may be sent at now: for
// each (consumer, mailbox) only the oldest pending one, and only when its
// next attempt is due, so a later webhook never overtakes an earlier one
// that is still failing. Disabled consumers are skipped. Oldest due first.
func (s *Store) DueWebhooks(ctx context.Context, now time.Time, limit int) ([]Webhook, error) {
	// The correlated min(seq) is one probe of webhook_outbox_key per row.
	rows, err := s.r.QueryContext(ctx, `SELECT `+webhookColumns+`
		FROM webhook_outbox w JOIN consumers c ON c.id = w.consumer_id
		WHERE w.next_attempt_ms <= ? AND c.enabled = 1
		AND w.seq = (SELECT min(h.seq) FROM webhook_outbox h WHERE h.consumer_id = w.consumer_id AND h.mailbox = w.mailbox)
		ORDER BY w.next_attempt_ms, w.seq LIMIT ?`, now.UnixMilli(), limit)
	if err != nil {
		return nil, fmt.Errorf("due webhooks: %w", err)
	}
	defer rows.Close()
	var out []Webhook
	for rows.Next() {
		w, err := scanWebhook(rows)
		if err != nil {
			return nil, fmt.Errorf("due webhooks: %w", err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("due webhooks: %w", err)
	}
	return out, nil
}

// webhookColumns and scanWebhook are what DueWebhooks and NextWebhook read
// of an outbox row (w) and its consumer (c).
const webhookColumns = `w.seq, w.id, w.consumer_id, c.name, c.url, c.secret, c.old_secret, c.old_secret_until,
	w.mailbox, w.payload, w.attempts, w.next_attempt_ms, w.created_ms, w.last_error`

func scanWebhook(row interface{ Scan(...any) error }) (Webhook, error) {
	var w Webhook
	var secret, oldSecret, payload string
	var oldUntil, next, created int64
	if err := row.Scan(&w.Seq, &w.ID, &w.ConsumerID, &w.Consumer, &w.URL, &secret, &oldSecret, &oldUntil,
		&w.Mailbox, &payload, &w.Attempts, &next, &created, &w.LastError); err != nil {
		return Webhook{}, err
	}
	w.Secret, w.Payload = Secret(secret), []byte(payload)
	if oldSecret != "" {
		w.OldSecret, w.OldSecretUntil = Secret(oldSecret), fromUnix(oldUntil)
	}
	w.NextAttempt, w.Created = time.UnixMilli(next).UTC(), time.UnixMilli(created).UTC()
	return w, nil
}

// NextWebhook returns the oldest webhook queued for (consumerID, mailbox)
// after sequence number after, when it is due by now: the one to send after
// that mailbox's webhook after was delivered (whose row may not be deleted
// yet). ok is false when there is none or it is not due.
func (s *Store) NextWebhook(ctx context.Context, consumerID int64, mailbox string, after int64, now time.Time) (Webhook, bool, error) {
	w, err := scanWebhook(s.r.QueryRowContext(ctx, `SELECT `+webhookColumns+`
		FROM webhook_outbox w JOIN consumers c ON c.id = w.consumer_id
		WHERE w.consumer_id = ? AND w.mailbox = ? AND w.seq > ? AND c.enabled = 1
		ORDER BY w.seq LIMIT 1`, consumerID, mailbox, after))
	if errors.Is(err, sql.ErrNoRows) {
		return Webhook{}, false, nil
	}
	if err != nil {
		return Webhook{}, false, fmt.Errorf("next webhook: %w", err)
	}
	if w.NextAttempt.After(now) {
		return Webhook{}, false, nil
	}
	return w, true, nil
}

// Ack names an outbox row its consumer acknowledged: by seq and by
// webhook-id, since SQLite gives a deleted row's seq to the next insert
// (INTEGER PRIMARY KEY without AUTOINCREMENT), so that a seq held while its
// delete waits may name another webhook by then; the id never repeats.
type Ack struct {
	Seq int64
	ID  string
}

// MarkDelivered removes webhooks their consumers acknowledged, in one
// transaction: the dispatcher hands over every acknowledgement that came in
// while it was busy, so a burst costs one commit, not one per webhook. A row
// already gone (its consumer deleted meanwhile) is not an error.
func (s *Store) MarkDelivered(ctx context.Context, acks ...Ack) error {
	if len(acks) == 0 {
		return nil
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, "DELETE FROM webhook_outbox WHERE seq = ? AND id = ?")
		if err != nil {
			return err
		}
		defer st.Close()
		for _, a := range acks {
			if _, err := st.ExecContext(ctx, a.Seq, a.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark webhook delivered: %w", err)
	}
	return nil
}

// MarkFailed records a failed attempt: one more attempt, the next at next,
// and why (cut to a few hundred bytes).
func (s *Store) MarkFailed(ctx context.Context, a Ack, next time.Time, reason string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_ms = ?, last_error = ? WHERE seq = ? AND id = ?",
			next.UnixMilli(), cutUTF8(reason, maxWebhookError), a.Seq, a.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("mark webhook failed: %w", err)
	}
	return nil
}

// ReplaceWebhookBacklog gives up on a (consumer, mailbox): it drops every
// pending webhook for it and enqueues payload (a resync) in their place, in
// one transaction. It returns the new webhook's id and how many it dropped.
func (s *Store) ReplaceWebhookBacklog(ctx context.Context, consumerID int64, mailbox string, payload []byte) (string, int64, error) {
	var id string
	var dropped int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM webhook_outbox WHERE consumer_id = ? AND mailbox = ?", consumerID, mailbox)
		if err != nil {
			return err
		}
		if dropped, err = res.RowsAffected(); err != nil {
			return err
		}
		ids, err := enqueueWebhooks(ctx, tx, []NewWebhook{{ConsumerID: consumerID, Mailbox: mailbox, Payload: payload}}, time.Now())
		if err != nil {
			return err
		}
		if id = ids[0]; id == "" {
			return fmt.Errorf("consumer %d: %w", consumerID, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("replace webhook backlog: %w", err)
	}
	return id, dropped, nil
}
