package events

// Server-Sent Events (WHATWG HTML §9.2): a user's groupware or browser
// follows the events of every mailbox the user may read.
//
//	POST /events/ticket   Authorization: Basic base64(user ":" sso-token)
//	                      (or Bearer sso-token with ?user=ADDRESS)
//	                      -> {"ticket": "...", "expires": "..."}
//	GET  /events?ticket=T[&lastEventId=N]   (or the Last-Event-ID header)
//	                      -> text/event-stream: id = the account's sequence
//	                         number, event = the type, data = the Event JSON
//
// EventSource cannot send an Authorization header, so the single sign-on
// token is traded for a ticket: random, single use, short-lived, kept in
// memory only. A reconnect needs a new ticket and passes the last id seen.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"cyrus-sidecar/store"
)

const (
	// ticketBytes is 256 random bits.
	ticketBytes = 32
	// maxTicketsPerUser bounds one account's outstanding tickets, so one
	// user cannot fill the table.
	maxTicketsPerUser = 16
	// replayPage is how many logged events are read at a time on resume.
	replayPage = 500
	// maxRequestBody bounds what is read of a ticket request's body.
	maxRequestBody = 4 << 10
	// maxLastEventID bounds the Last-Event-ID text (a decimal int64).
	maxLastEventID = 19
)

// TokenVerifier checks a single sign-on token minted for user (canonical)
// and service at now; main wires it to saslauthd.VerifyToken with the
// configured keys and token_max_ttl.
type TokenVerifier func(token, user, service string, now time.Time) error

// Handler serves POST /events/ticket and GET /events. canon canonicalises
// the user named in a ticket request, as the saslauthd responder does.
func (d *Dispatcher) Handler(canon store.Canon, verify TokenVerifier) http.Handler {
	s := &sse{d: d, canon: canon, verify: verify, tickets: map[string]ticket{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /events/ticket", s.ticket)
	mux.HandleFunc("GET /events", s.stream)
	return mux
}

type sse struct {
	d      *Dispatcher
	canon  store.Canon
	verify TokenVerifier

	mu      sync.Mutex
	tickets map[string]ticket
}

type ticket struct {
	account string
	expires time.Time
}

// ticket trades a single sign-on token for a stream ticket. Every failure
// is the same 401; the log says which.
func (s *sse) ticket(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	cfg := s.d.config()
	now := s.d.now()
	account, err := s.authenticate(r, cfg, now)
	if err != nil {
		s.d.log.Info("event ticket refused", "remote", r.RemoteAddr, "reason", err)
		w.Header().Set("WWW-Authenticate", `Basic realm="events", charset="UTF-8"`)
		http.Error(w, "authentication failed", http.StatusUnauthorized)
		return
	}
	var raw [ticketBytes]byte
	rand.Read(raw[:]) // crypto/rand never fails: it crashes the program instead
	t := base64.RawURLEncoding.EncodeToString(raw[:])
	exp := now.Add(cfg.TicketTTL)
	if err := s.addTicket(t, ticket{account, exp}, cfg.MaxTickets, now); err != nil {
		s.d.log.Warn("event ticket refused", "user", account, "reason", err)
		w.Header().Set("Retry-After", strconv.Itoa(int(cfg.TicketTTL/time.Second)))
		http.Error(w, "too many outstanding tickets, try later", http.StatusServiceUnavailable)
		return
	}
	s.d.log.Info("event ticket issued", "user", account)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(struct {
		Ticket  string    `json:"ticket"`
		Expires time.Time `json:"expires"`
	}{t, exp.UTC()})
}

// authenticate returns the canonical account a ticket request proves.
func (s *sse) authenticate(r *http.Request, cfg *DeliveryConfig, now time.Time) (string, error) {
	user, token, ok := r.BasicAuth()
	if !ok {
		h := r.Header.Get("Authorization")
		if len(h) < 7 || !strings.EqualFold(h[:7], "Bearer ") {
			return "", errors.New("no Basic or Bearer authorization")
		}
		token, user = strings.TrimSpace(h[7:]), r.URL.Query().Get("user")
	}
	if user == "" || token == "" {
		return "", errors.New("user or token missing")
	}
	a, err := s.canon.Login(user, "")
	if err != nil {
		return "", fmt.Errorf("user: %w", err)
	}
	if err := s.verify(token, a.String(), cfg.TokenService, now); err != nil {
		return "", fmt.Errorf("user %s: %w", a, err)
	}
	// As for any token login: the user must exist, be enabled and be
	// allowed the service (docs/sso-tokens.md).
	u, err := s.d.st.User(r.Context(), a)
	switch {
	case err != nil:
		return "", fmt.Errorf("user %s: %w", a, err)
	case u.Disabled:
		return "", fmt.Errorf("user %s is disabled", a)
	case !u.Allows(cfg.TokenService):
		return "", fmt.Errorf("user %s may not use %s", a, cfg.TokenService)
	}
	return a.String(), nil
}

func (s *sse) addTicket(t string, tk ticket, maxTickets int, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := 0
	for k, v := range s.tickets {
		if !now.Before(v.expires) {
			delete(s.tickets, k)
		} else if v.account == tk.account {
			mine++
		}
	}
	if mine >= maxTicketsPerUser {
		return fmt.Errorf("%d outstanding tickets", mine)
	}
	if len(s.tickets) >= maxTickets {
		return fmt.Errorf("%d outstanding tickets in all (max_tickets)", len(s.tickets))
	}
	s.tickets[t] = tk
	return nil
}

// takeTicket consumes a ticket: it works once, before it expires.
func (s *sse) takeTicket(t string, now time.Time) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tk, ok := s.tickets[t]
	delete(s.tickets, t)
	if !ok || !now.Before(tk.expires) {
		return "", false
	}
	return tk.account, true
}

// stream serves one event stream.
func (s *sse) stream(w http.ResponseWriter, r *http.Request) {
	cfg := s.d.config()
	account, ok := s.takeTicket(r.URL.Query().Get("ticket"), s.d.now())
	if !ok {
		http.Error(w, "no valid ticket (POST /events/ticket first; each ticket works once)", http.StatusUnauthorized)
		return
	}
	last, resume, err := lastEventID(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// Where to start: after the client's id, or after the last event
	// logged before this point (read before registering, and replayed
	// after, so an event published in between is not missed).
	cursor := last
	if !resume {
		p, err := s.d.st.AccountEventsAfter(r.Context(), account, 0, 0)
		if err != nil {
			s.d.log.Warn("event stream failed", "user", account, "err", err)
			http.Error(w, "temporary failure", http.StatusServiceUnavailable)
			return
		}
		cursor = p.Last
	}
	st, err := s.d.hub.add(account, cfg.MaxStreams, cfg.MaxStreamsPerUser, cfg.StreamBuffer)
	if err != nil {
		s.d.log.Warn("event stream refused", "user", account, "reason", err)
		http.Error(w, "too many open streams", http.StatusTooManyRequests)
		return
	}
	s.d.m.streams.Inc()
	defer s.d.m.streams.Dec()
	defer s.d.hub.remove(st)
	s.d.log.Info("event stream opened", "user", account, "after", cursor, "resume", resume)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	out := &sseWriter{w: w, rc: http.NewResponseController(w), timeout: cfg.WriteTimeout}
	w.WriteHeader(http.StatusOK)
	if out.comment("ok") != nil {
		return
	}
	// Registered first, replayed second: whatever is published meanwhile
	// is in the log or in the buffer, or both (seq filters those).
	if cursor, err = s.replay(r.Context(), out, account, cursor); err != nil {
		s.d.log.Info("event stream closed", "user", account, "reason", err)
		return
	}
	ping := time.NewTicker(cfg.Ping)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			s.d.log.Info("event stream closed", "user", account, "reason", "client left")
			return
		case <-st.kicked:
			s.d.log.Info("event stream closed", "user", account, "reason", st.why)
			return
		case <-ping.C:
			err = out.comment("ping")
		case e := <-st.ch:
			switch {
			case e.seq <= cursor: // already replayed
			case e.seq == cursor+1:
				if err = out.event(e.seq, e.typ, e.data); err == nil {
					cursor = e.seq
				}
			default: // a gap: the log has it
				cursor, err = s.replay(r.Context(), out, account, cursor)
			}
		}
		if err != nil {
			s.d.log.Info("event stream closed", "user", account, "reason", err)
			return
		}
	}
}

// replay writes the logged events after cursor, or a resync when they are
// no longer all kept, and returns the new cursor.
func (s *sse) replay(ctx context.Context, out *sseWriter, account string, cursor int64) (int64, error) {
	for {
		p, err := s.d.st.AccountEventsAfter(ctx, account, cursor, replayPage)
		if err != nil {
			return cursor, err
		}
		if p.Expired {
			data, _ := json.Marshal(Event{Type: TypeResync, Account: account, Time: s.d.now().UTC(), CyrusEvent: "resync"})
			if err := out.event(p.Last, TypeResync, data); err != nil {
				return cursor, err
			}
			cursor = p.Last
			continue
		}
		for _, e := range p.Events {
			var t struct {
				Type string `json:"type"`
			}
			_ = json.Unmarshal(e.Event, &t) // we wrote it; a bad row is still sent, typeless
			if err := out.event(e.Seq, t.Type, e.Event); err != nil {
				return cursor, err
			}
			cursor = e.Seq
		}
		if len(p.Events) < replayPage {
			return cursor, nil
		}
	}
}

// lastEventID reads where to resume: the Last-Event-ID header (an
// EventSource reconnecting) or the lastEventId parameter (a new ticket).
func lastEventID(r *http.Request) (int64, bool, error) {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("lastEventId")
	}
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || len(v) > maxLastEventID {
		return 0, false, errors.New("the last event id (Last-Event-ID or lastEventId) must be a decimal number")
	}
	return n, true, nil
}

// sseWriter writes the event stream format, each write with a deadline so
// a client that stops reading is cut off instead of holding a goroutine.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	buf     []byte
}

func (o *sseWriter) event(seq int64, typ string, data []byte) error {
	b := append(o.buf[:0], "id: "...)
	b = strconv.AppendInt(b, seq, 10)
	if typ != "" {
		b = append(b, "\nevent: "...)
		b = append(b, sseField(typ)...)
	}
	b = append(b, "\ndata: "...)
	b = append(b, sseField(string(data))...) // compact JSON: one line
	b = append(b, "\n\n"...)
	o.buf = b
	return o.flush(b)
}

func (o *sseWriter) comment(text string) error {
	return o.flush([]byte(": " + text + "\n\n"))
}

func (o *sseWriter) flush(b []byte) error {
	if err := o.rc.SetWriteDeadline(time.Now().Add(o.timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if _, err := o.w.Write(b); err != nil {
		return err
	}
	return o.rc.Flush()
}

// sseField keeps a value on one line: a CR or LF would end the field and
// let the rest be read as another field.
func sseField(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
}
