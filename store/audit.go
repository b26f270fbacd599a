package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Login results recorded in the audit.
const (
	ResultOK   = "ok"
	ResultFail = "fail"
)

// LoginEvent is one authentication attempt, as the audit keeps it. It never
// holds a password.
type LoginEvent struct {
	At      time.Time `json:"at"`
	Login   string    `json:"login"` // canonical when it could be parsed, else as sent (truncated)
	Service string    `json:"service"`
	Result  string    `json:"result"`
	Reason  string    `json:"reason,omitempty"`
	Client  string    `json:"client,omitempty"`
}

// RecordLogin appends an attempt to the audit.
func (s *Store) RecordLogin(ctx context.Context, e LoginEvent) error {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO login_audit (at, login, service, result, reason, client)
		VALUES (?, ?, ?, ?, ?, ?)`, e.At.Unix(), trunc(e.Login), trunc(e.Service), e.Result, trunc(e.Reason), trunc(e.Client))
	if err != nil {
		return fmt.Errorf("record login: %w", err)
	}
	return nil
}

// RecordLogins appends a batch of attempts in one transaction: the
// saslauthd responder records every attempt, and one commit per login
// would cost more than the login itself.
func (s *Store) RecordLogins(ctx context.Context, es []LoginEvent) error {
	if len(es) == 0 {
		return nil
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		// The batch in chunks of the prepared sizes, largest first.
		args := make([]any, 0, auditChunks[0]*auditCols)
		for len(es) > 0 {
			i := 0
			for auditChunks[i] > len(es) {
				i++
			}
			n := auditChunks[i]
			args = args[:0]
			for _, e := range es[:n] {
				if e.At.IsZero() {
					e.At = time.Now()
				}
				args = append(args, e.At.Unix(), trunc(e.Login), trunc(e.Service), e.Result, trunc(e.Reason), trunc(e.Client))
			}
			if _, err := tx.StmtContext(ctx, s.auditStmts[i]).ExecContext(ctx, args...); err != nil {
				return err
			}
			es = es[n:]
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record logins: %w", err)
	}
	return nil
}

// Logins returns the newest attempts, all or for one login, newest first.
func (s *Store) Logins(ctx context.Context, login string, limit int) ([]LoginEvent, error) {
	return s.LoginsWhere(ctx, LoginFilter{Login: login, Limit: limit})
}

// LoginFilter selects audit entries; zero fields select everything.
type LoginFilter struct {
	Login   string // canonical login, as recorded
	Service string // as the client sent it (imap, sieve, ...)
	Result  string // ResultOK or ResultFail
	// Client is a client address as libsasl sends it, "IP;port", or the
	// IP alone for every port.
	Client string
	Since  time.Time // at or after (the audit keeps seconds)
	Limit  int       // the newest Limit entries; <= 0: 100
}

// LoginsWhere returns the newest attempts that f selects, newest first.
// With a login it reads the (login, at) index, otherwise the at index.
func (s *Store) LoginsWhere(ctx context.Context, f LoginFilter) ([]LoginEvent, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		where = append(where, cond)
		args = append(args, v)
	}
	if f.Login != "" {
		add("login = ?", f.Login)
	}
	if f.Service != "" {
		add("service = ?", f.Service)
	}
	if f.Result != "" {
		add("result = ?", f.Result)
	}
	if f.Client != "" {
		where = append(where, `(client = ? OR substr(client, 1, ?) = ?)`)
		// substr counts characters, not bytes.
		args = append(args, f.Client, utf8.RuneCountInString(f.Client)+1, f.Client+";")
	}
	if !f.Since.IsZero() {
		add("at >= ?", f.Since.Unix())
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q := "SELECT at, login, service, result, reason, client FROM login_audit"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := s.r.QueryContext(ctx, q+" ORDER BY at DESC, id DESC LIMIT ?", append(args, f.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("list logins: %w", err)
	}
	defer rows.Close()
	var out []LoginEvent
	for rows.Next() {
		var e LoginEvent
		var at int64
		if err := rows.Scan(&at, &e.Login, &e.Service, &e.Result, &e.Reason, &e.Client); err != nil {
			return nil, fmt.Errorf("list logins: %w", err)
		}
		e.At = fromUnix(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list logins: %w", err)
	}
	return out, nil
}

// PruneAudit enforces the audit's retention: entries older than before go,
// and of the rest only the newest maxRows stay (0 = no row cap). It deletes
// in batches so that a large backlog never holds the write lock for long.
func (s *Store) PruneAudit(ctx context.Context, before time.Time, maxRows int) (int64, error) {
	var total int64
	for {
		res, err := s.w.ExecContext(ctx, `DELETE FROM login_audit WHERE id IN (
			SELECT id FROM login_audit WHERE at < ? ORDER BY id LIMIT 1000)`, before.Unix())
		if err != nil {
			return total, fmt.Errorf("prune audit: %w", err)
		}
		n, _ := res.RowsAffected() // cannot fail on SQLite
		total += n
		if n < 1000 {
			break
		}
	}
	for maxRows > 0 {
		res, err := s.w.ExecContext(ctx, `DELETE FROM login_audit WHERE id IN (
			SELECT id FROM login_audit WHERE id <= (SELECT id FROM login_audit ORDER BY id DESC LIMIT 1 OFFSET ?)
			ORDER BY id LIMIT 1000)`, maxRows)
		if err != nil {
			return total, fmt.Errorf("prune audit: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		if n < 1000 {
			break
		}
	}
	return total, nil
}

// auditChunks are the row counts of the prepared audit INSERTs: the
// responder writes batches of up to 256, and any count is a sum of these.
var auditChunks = [...]int{256, 64, 16, 4, 1}

const auditCols = 6

// auditInsert is the multi-row INSERT of n login attempts.
func auditInsert(n int) string {
	q := make([]byte, 0, 96+n*16)
	q = append(q, "INSERT INTO login_audit (at, login, service, result, reason, client) VALUES "...)
	for i := range n {
		if i > 0 {
			q = append(q, ',')
		}
		q = append(q, "(?,?,?,?,?,?)"...)
	}
	return string(q)
}
