package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Webhook consumers: programs (groupware, mostly) that receive the mailbox
// events of some domains as signed webhooks (docs/events.md).
const (
	// WebhookSecretPrefix starts a signing secret as shown to admins, the
	// Standard Webhooks serialisation: "whsec_" then standard base64.
	WebhookSecretPrefix = "whsec_"
	// webhookSecretLen is 256 random bits; Standard Webhooks asks for 24
	// to 64 bytes.
	webhookSecretLen = 32
	// MaxConsumerURL bounds a webhook URL.
	MaxConsumerURL = 2000
	// MaxConsumerDomains bounds the explicit domain list of one consumer.
	MaxConsumerDomains = 1000
)

// Consumer is a webhook consumer. Secret never leaves the process by
// accident: it prints as "***" and is absent from JSON.
type Consumer struct {
	ID     int64  `json:"id"`
	Name   string `json:"name"`
	URL    string `json:"url"`
	Secret Secret `json:"-"`
	// Org is the organisation whose domains are in scope ("" = none), and
	// Domains the domains listed for the consumer itself.
	Org     string   `json:"organisation,omitempty"`
	Domains []string `json:"domains"`
	// Scope is every domain whose events the consumer receives: Domains
	// plus the organisation's domains at the time of the read.
	Scope   []string `json:"scope"`
	Enabled bool     `json:"enabled"`
	// DisabledReason says why a disabled consumer is (a 410 Gone from its
	// endpoint, or an admin); "" while enabled.
	DisabledReason string `json:"disabled_reason,omitempty"`
	// OldSecretUntil is when the secret before the last rotation stops
	// signing; zero when it does not (any more).
	OldSecretUntil time.Time `json:"old_secret_until,omitzero"`
	// Envelope: the consumer opted in to the subjects and senders of new
	// messages (docs/events.md, "Subjects and senders").
	Envelope bool      `json:"envelope"`
	Created  time.Time `json:"created"`
	// Pending counts webhooks in the outbox not yet acknowledged.
	Pending int `json:"pending"`
}

// NewConsumer is what AddConsumer needs.
type NewConsumer struct {
	Name string
	URL  string // http or https
	// Secret comes from GenerateWebhookSecret.
	Secret Secret
	// Org and Domains (canonical, hosted) scope the consumer; at least one
	// is required.
	Org     string
	Domains []string
	// Envelope opts in to subjects and senders of new messages.
	Envelope bool
}

// GenerateWebhookSecret makes a new signing secret, "whsec_" and the
// standard base64 of 32 random bytes. It is shown to the admin once, for the
// consumer's configuration, and stored: signing needs it.
func GenerateWebhookSecret() (Secret, error) {
	var raw [webhookSecretLen]byte
	if _, err := rand.Read(raw[:]); err != nil { // never fails on Go 1.24+
		return "", fmt.Errorf("generate webhook secret: %w", err)
	}
	return Secret(WebhookSecretPrefix + base64.StdEncoding.EncodeToString(raw[:])), nil
}

// CheckConsumerURL accepts an absolute http or https URL with a host and
// no user information (a password in a URL would be printed by list).
func CheckConsumerURL(s string) error {
	if len(s) > MaxConsumerURL {
		return malformed("url longer than %d bytes", MaxConsumerURL)
	}
	u, err := url.Parse(s)
	if err != nil {
		return malformed("url %q: %v", trunc(s), err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return malformed("url %q: must start with https:// or http://", trunc(s))
	}
	if u.Host == "" {
		return malformed("url %q: no host", trunc(s))
	}
	if u.User != nil {
		return malformed("url %q: must not contain a user or password (the webhooks are signed instead)", trunc(s))
	}
	return nil
}

// AddConsumer creates a webhook consumer. The organisation must exist
// (ErrNotFound) and the domains be hosted (ErrNotHosted); the name is
// unique ignoring ASCII case (ErrExists).
func (s *Store) AddConsumer(ctx context.Context, nc NewConsumer) (Consumer, error) {
	if err := CheckName(nc.Name); err != nil {
		return Consumer{}, fmt.Errorf("add consumer: name: %w", err)
	}
	if err := CheckConsumerURL(nc.URL); err != nil {
		return Consumer{}, fmt.Errorf("add consumer: %w", err)
	}
	if rest, ok := strings.CutPrefix(nc.Secret.Reveal(), WebhookSecretPrefix); !ok || len(rest) < 32 {
		return Consumer{}, malformed("add consumer: secret is not a whsec_ secret (make one with GenerateWebhookSecret)")
	}
	doms := slices.Clone(nc.Domains)
	slices.Sort(doms)
	doms = slices.Compact(doms)
	if nc.Org == "" && len(doms) == 0 {
		return Consumer{}, malformed("add consumer: no scope: name an organisation, domains or both")
	}
	if len(doms) > MaxConsumerDomains {
		return Consumer{}, fmt.Errorf("add consumer: more than %d domains: %w", MaxConsumerDomains, ErrLimit)
	}
	c := Consumer{Name: nc.Name, URL: nc.URL, Secret: nc.Secret, Domains: doms, Enabled: true, Envelope: nc.Envelope, Created: fromUnix(now())}
	err := s.write(ctx, func(tx *sql.Tx) error {
		var orgID sql.NullInt64
		if nc.Org != "" {
			err := tx.QueryRowContext(ctx, "SELECT id, name FROM organisations WHERE name = ?", nc.Org).Scan(&orgID, &c.Org)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("organisation %q: %w", nc.Org, ErrNotFound)
			} else if err != nil {
				return err
			}
		}
		for _, d := range doms {
			if _, err := domainID(ctx, tx, d); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, "INSERT INTO consumers (name, url, secret, org_id, envelope, created, enabled_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
			c.Name, c.URL, c.Secret.Reveal(), orgID, c.Envelope, c.Created.Unix(), time.Now().UnixMilli())
		if isUnique(err) {
			return fmt.Errorf("consumer %q: %w", c.Name, ErrExists)
		} else if err != nil {
			return err
		}
		if c.ID, err = res.LastInsertId(); err != nil {
			return err
		}
		for _, d := range doms {
			if _, err := tx.ExecContext(ctx, "INSERT INTO consumer_domains (consumer_id, domain) VALUES (?, ?)", c.ID, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Consumer{}, fmt.Errorf("add consumer: %w", err)
	}
	return c, nil
}

// DelConsumer removes a consumer (name ignoring ASCII case) with its
// undelivered webhooks.
func (s *Store) DelConsumer(ctx context.Context, name string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM consumers WHERE name = ?", name)
		if err != nil {
			return err
		}
		return mustAffect(res, fmt.Errorf("consumer %q: %w", name, ErrNotFound))
	})
	if err != nil {
		return fmt.Errorf("delete consumer: %w", err)
	}
	return nil
}

// SetConsumerEnabled enables or disables a consumer (name ignoring ASCII
// case), with why when disabling (a consumer already disabled keeps its
// first reason, a 410 say). A disabled consumer gets no new webhooks and
// keeps its outbox. Enabling one that was disabled replaces that backlog
// with resync, in one transaction: what happened while it was disabled was
// not queued for it, so it has to sync everything anyway, and stale events
// arriving after that sync would only send it syncing again.
func (s *Store) SetConsumerEnabled(ctx context.Context, name string, enabled bool, reason string, resync []byte) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		var id int64
		var was bool
		err := tx.QueryRowContext(ctx, "SELECT id, enabled FROM consumers WHERE name = ?", name).Scan(&id, &was)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("consumer %q: %w", name, ErrNotFound)
		}
		if err != nil || was == enabled {
			return err
		}
		if !enabled {
			_, err = tx.ExecContext(ctx, "UPDATE consumers SET enabled = 0, disabled_reason = ? WHERE id = ?", cutUTF8(reason, maxWebhookError), id)
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE consumers SET enabled = 1, disabled_reason = '', enabled_at = ? WHERE id = ?", time.Now().UnixMilli(), id); err != nil {
			return err
		}
		if resync == nil {
			return nil
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM webhook_outbox WHERE consumer_id = ?", id); err != nil {
			return err
		}
		_, err = enqueueWebhooks(ctx, tx, []NewWebhook{{ConsumerID: id, Payload: resync}}, time.Now())
		return err
	})
	if err != nil {
		return fmt.Errorf("set consumer: %w", err)
	}
	return nil
}

// RotateConsumerSecret gives a consumer (name ignoring ASCII case) a new
// signing secret. Until now+grace its webhooks are signed with both the new
// and the current one, so the receiver can switch keys at any moment in that
// time; a rotation within the grace of the last one drops the oldest key.
// grace 0 retires the current secret at once.
func (s *Store) RotateConsumerSecret(ctx context.Context, name string, secret Secret, grace time.Duration) error {
	if rest, ok := strings.CutPrefix(secret.Reveal(), WebhookSecretPrefix); !ok || len(rest) < 32 {
		return malformed("rotate consumer secret: not a whsec_ secret (make one with GenerateWebhookSecret)")
	}
	if grace < 0 {
		return malformed("rotate consumer secret: negative grace")
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		old, until := "secret", time.Now().Add(grace).Unix()
		if grace == 0 {
			old, until = "''", 0
		}
		res, err := tx.ExecContext(ctx, "UPDATE consumers SET old_secret = "+old+", old_secret_until = ?, secret = ? WHERE name = ?",
			until, secret.Reveal(), name)
		if err != nil {
			return err
		}
		return mustAffect(res, fmt.Errorf("consumer %q: %w", name, ErrNotFound))
	})
	if err != nil {
		return fmt.Errorf("rotate consumer secret: %w", err)
	}
	return nil
}

// DisableConsumer is the dispatcher's, after a 410 Gone from url to an
// attempt that started at since: it disables consumer id if it still sends
// to url and nobody created or enabled it after since (ids are reused, and
// an admin may have set the endpoint right meanwhile). It reports whether
// it did.
func (s *Store) DisableConsumer(ctx context.Context, id int64, url string, since time.Time, reason string) (bool, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE consumers SET enabled = 0, disabled_reason = ? WHERE id = ? AND url = ? AND enabled = 1 AND enabled_at <= ?",
			cutUTF8(reason, maxWebhookError), id, url, since.UnixMilli())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("disable consumer: %w", err)
	}
	return n == 1, nil
}

// Consumers lists the consumers by name, each with its scope resolved and
// its outbox backlog counted.
func (s *Store) Consumers(ctx context.Context) ([]Consumer, error) {
	// One read transaction: the scope and the list agree with each other.
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("list consumers: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT c.id, c.name, c.url, c.secret, coalesce(o.name, ''), c.enabled, c.disabled_reason,
		CASE WHEN c.old_secret != '' AND c.old_secret_until > unixepoch() THEN c.old_secret_until ELSE 0 END, c.envelope, c.created,
		(SELECT count(*) FROM webhook_outbox w WHERE w.consumer_id = c.id)
		FROM consumers c LEFT JOIN organisations o ON o.id = c.org_id ORDER BY c.name`)
	if err != nil {
		return nil, fmt.Errorf("list consumers: %w", err)
	}
	var out []Consumer
	byID := map[int64]int{}
	for rows.Next() {
		var c Consumer
		var secret string
		var created, oldUntil int64
		if err := rows.Scan(&c.ID, &c.Name, &c.URL, &secret, &c.Org, &c.Enabled, &c.DisabledReason, &oldUntil, &c.Envelope, &created, &c.Pending); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list consumers: %w", err)
		}
		c.Secret, c.Created = Secret(secret), fromUnix(created)
		if oldUntil > 0 {
			c.OldSecretUntil = fromUnix(oldUntil)
		}
		c.Domains, c.Scope = []string{}, []string{}
		byID[c.ID] = len(out)
		out = append(out, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list consumers: %w", err)
	}
	// Listed domains first, then the organisation's: both into Scope.
	rows, err = tx.QueryContext(ctx, `SELECT consumer_id, domain, 1 FROM consumer_domains
		UNION ALL SELECT c.id, d.name, 0 FROM consumers c JOIN domains d ON d.org_id = c.org_id
		ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("list consumers: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var d string
		var listed bool
		if err := rows.Scan(&id, &d, &listed); err != nil {
			return nil, fmt.Errorf("list consumers: %w", err)
		}
		i, ok := byID[id]
		if !ok {
			continue
		}
		if listed {
			out[i].Domains = append(out[i].Domains, d)
		}
		if n := len(out[i].Scope); n == 0 || out[i].Scope[n-1] != d {
			out[i].Scope = append(out[i].Scope, d)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list consumers: %w", err)
	}
	return out, nil
}
