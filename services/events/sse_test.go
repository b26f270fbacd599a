package events

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cyrus-sidecar/services/saslauthd"
)

// sseEnv serves the stream handler over a real store, with single sign-on
// tokens from the real saslauthd implementation.
type sseEnv struct {
	*deliveryEnv
	srv  *httptest.Server
	keys saslauthd.TokenKeys
	skew atomic.Int64 // added to the dispatcher's clock
}

func newSSEEnv(t *testing.T, tune func(*DeliveryConfig)) *sseEnv {
	t.Helper()
	e := &sseEnv{deliveryEnv: newDeliveryEnv(t, tune), keys: saslauthd.TokenKeys{"webmail": []byte(strings.Repeat("k", 32))}}
	e.d.now = func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) }
	a, _ := e.canon.Address("bob@example.com")
	if err := e.st.SetDisabled(t.Context(), a, true); err != nil {
		t.Fatal(err)
	}
	verify := func(token, user, service string, now time.Time) error {
		return saslauthd.VerifyToken(e.keys, token, user, service, now, time.Hour)
	}
	e.srv = httptest.NewServer(e.d.Handler(e.canon, verify))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *sseEnv) token(t *testing.T, user, service string, ttl time.Duration, now time.Time) string {
	t.Helper()
	tok, err := saslauthd.IssueToken(e.keys, "webmail", user, service, ttl, now)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// ticketReq posts a ticket request with the given Authorization and returns
// the status and the ticket.
func (e *sseEnv) ticketReq(t *testing.T, auth, query string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.srv.URL+"/events/ticket"+query, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Ticket  string    `json:"ticket"`
		Expires time.Time `json:"expires"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Ticket == "" || body.Expires.IsZero() {
			t.Fatalf("ticket answer: %+v, %v", body, err)
		}
	}
	return resp.StatusCode, body.Ticket
}

func basic(user, token string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+token))
}

// ticket gets a ticket for user with a fresh token.
func (e *sseEnv) ticket(t *testing.T, user string) string {
	t.Helper()
	code, tk := e.ticketReq(t, basic(user, e.token(t, user, "events", time.Minute, time.Now())), "")
	if code != http.StatusOK {
		t.Fatalf("ticket for %s: status %d", user, code)
	}
	return tk
}

// sseMsg is one event read from a stream.
type sseMsg struct {
	id    int64
	event string
	data  Event
}

// sseConn is an open stream.
type sseConn struct {
	t      *testing.T
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// open starts a stream; lastID "" means none, header puts it in
// Last-Event-ID instead of the query.
func (e *sseEnv) open(t *testing.T, tk, lastID string, header bool) (*sseConn, int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stop := time.AfterFunc(20*time.Second, cancel) // a hung read fails the test instead of hanging it
	t.Cleanup(func() { stop.Stop(); cancel() })
	q := url.Values{"ticket": {tk}}
	if lastID != "" && !header {
		q.Set("lastEventId", lastID)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/events?"+q.Encode(), nil)
	if lastID != "" && header {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, resp.StatusCode
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	c := &sseConn{t: t, resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	// The handler writes ": ok" once registered: from here on nothing
	// published is missed.
	if line, err := c.r.ReadString('\n'); err != nil || line != ": ok\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	return c, http.StatusOK
}

func (c *sseConn) close() { c.cancel(); c.resp.Body.Close() }

// next reads the next event, skipping comments.
func (c *sseConn) next() sseMsg {
	c.t.Helper()
	var m sseMsg
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("stream read: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "" && m.id != 0:
			return m
		case line == "" || strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			m.id, _ = strconv.ParseInt(line[4:], 10, 64)
		case strings.HasPrefix(line, "event: "):
			m.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(line[6:]), &m.data); err != nil {
				c.t.Fatalf("data %q: %v", line, err)
			}
		default:
			c.t.Fatalf("unexpected line %q", line)
		}
	}
}

func (e *sseEnv) publish(t *testing.T, evs ...Event) {
	t.Helper()
	if err := e.d.Publish(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
}

func uidEvent(account, uids string, readers ...string) Event {
	x := testEvent(TypeMessageAdded, account, "INBOX", readers...)
	x.UIDs = uids
	return x
}

func TestTicket(t *testing.T) {
	e := newSSEEnv(t, nil)
	now := time.Now()
	alice := "alice@example.com"
	tests := []struct {
		name, auth, query string
		want              int
	}{
		{"basic", basic("Alice", e.token(t, alice, "events", time.Minute, now)), "", 200},
		{"bearer", "Bearer " + e.token(t, alice, "events", time.Minute, now), "?user=alice%40example.com", 200},
		{"none", "", "", 401},
		{"bearer without user", "Bearer " + e.token(t, alice, "events", time.Minute, now), "", 401},
		{"forged", basic(alice, "sct1.webmail.1767225600.8PHy8_T19vf4-fr7.eHUtwN0u36oy8GG-4a7cz3nDIwiPADbj"), "", 401},
		{"password", basic(alice, "hunter2"), "", 401},
		{"other user's token", basic("dave@other.net", e.token(t, alice, "events", time.Minute, now)), "", 401},
		{"imap token", basic(alice, e.token(t, alice, "imap", time.Minute, now)), "", 401},
		{"expired token", basic(alice, e.token(t, alice, "events", time.Minute, now.Add(-time.Hour))), "", 401},
		{"disabled user", basic("bob@example.com", e.token(t, "bob@example.com", "events", time.Minute, now)), "", 401},
		{"unknown user", basic("zed@example.com", e.token(t, "zed@example.com", "events", time.Minute, now)), "", 401},
	}
	for _, tt := range tests {
		if code, _ := e.ticketReq(t, tt.auth, tt.query); code != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, code, tt.want)
		}
	}

	tk := e.ticket(t, alice)
	c, code := e.open(t, tk, "", false)
	if code != 200 {
		t.Fatalf("stream: %d", code)
	}
	c.close()
	if _, code := e.open(t, tk, "", false); code != http.StatusUnauthorized {
		t.Errorf("ticket used twice: %d, want 401", code)
	}
	if _, code := e.open(t, "made-up", "", false); code != http.StatusUnauthorized {
		t.Errorf("made-up ticket: %d, want 401", code)
	}
	tk = e.ticket(t, alice)
	e.skew.Store(int64(2 * time.Minute))
	if _, code := e.open(t, tk, "", false); code != http.StatusUnauthorized {
		t.Errorf("expired ticket: %d, want 401", code)
	}
	e.skew.Store(0)
	if _, code := e.open(t, e.ticket(t, alice), "x1", false); code != http.StatusBadRequest {
		t.Errorf("bad lastEventId: %d, want 400", code)
	}
}

// TestStreamResume: events published while the client was away are
// replayed from Last-Event-ID, in order, each once, then live ones follow.
func TestStreamResume(t *testing.T) {
	e := newSSEEnv(t, nil)
	alice := "alice@example.com"
	c, _ := e.open(t, e.ticket(t, alice), "", false)
	e.publish(t, uidEvent(alice, "1", alice), uidEvent(alice, "2", alice))
	e.publish(t, uidEvent(alice, "3", alice))
	for want := int64(1); want <= 3; want++ {
		m := c.next()
		if m.id != want || m.event != TypeMessageAdded || m.data.UIDs != strconv.FormatInt(want, 10) || m.data.Account != alice {
			t.Fatalf("live event %d: %+v", want, m)
		}
	}
	c.close()
	for i := 4; i <= 6; i++ {
		e.publish(t, uidEvent(alice, strconv.Itoa(i), alice))
	}
	for _, header := range []bool{false, true} {
		c, _ = e.open(t, e.ticket(t, alice), "3", header)
		for want := int64(4); want <= 6; want++ {
			if m := c.next(); m.id != want || m.data.UIDs != strconv.FormatInt(want, 10) {
				t.Fatalf("header %v: replayed %+v, want id %d", header, m, want)
			}
		}
		c.close()
	}
	// Resume, then live, with publishing racing the replay.
	c, _ = e.open(t, e.ticket(t, alice), "5", false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 7; i <= 40; i++ {
			e.d.Publish(context.Background(), []Event{uidEvent(alice, strconv.Itoa(i), alice)})
		}
	}()
	for want := int64(6); want <= 40; want++ {
		if m := c.next(); m.id != want || m.data.UIDs != strconv.FormatInt(want, 10) {
			t.Fatalf("resume then live: %+v, want id %d", m, want)
		}
	}
	<-done
	// Without an id, a stream starts with what comes next.
	c.close()
	c, _ = e.open(t, e.ticket(t, alice), "", false)
	e.publish(t, uidEvent(alice, "41", alice))
	if m := c.next(); m.id != 41 {
		t.Errorf("fresh stream: first event %+v, want id 41", m)
	}
}

// TestStreamResync: an id older than the retention window gets a resync
// carrying the current id, then the stream goes on from there.
func TestStreamResync(t *testing.T) {
	e := newSSEEnv(t, nil)
	alice := "alice@example.com"
	old := uidEvent(alice, "1", alice)
	old.Time = time.Now().Add(-48 * time.Hour)
	e.publish(t, old, old, old)
	if _, err := e.st.PruneEvents(t.Context(), time.Now().Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, last := range []string{"0", "1", "99"} {
		c, _ := e.open(t, e.ticket(t, alice), last, false)
		if m := c.next(); m.event != TypeResync || m.id != 3 || m.data.Type != TypeResync || m.data.Account != alice {
			t.Errorf("after %s: %+v, want resync with id 3", last, m)
		}
		c.close()
	}
	c, _ := e.open(t, e.ticket(t, alice), "3", false)
	e.publish(t, uidEvent(alice, "4", alice))
	if m := c.next(); m.id != 4 || m.event != TypeMessageAdded {
		t.Errorf("after resync point: %+v", m)
	}
}

// TestStreamIsolation: alice never sees bob's events (bob is re-enabled
// here), and an event both may read reaches both under their own ids.
func TestStreamIsolation(t *testing.T) {
	e := newSSEEnv(t, nil)
	alice, bob := "alice@example.com", "bob@example.com"
	a, _ := e.canon.Address(bob)
	if err := e.st.SetDisabled(t.Context(), a, false); err != nil {
		t.Fatal(err)
	}
	ca, _ := e.open(t, e.ticket(t, alice), "", false)
	cb, _ := e.open(t, e.ticket(t, bob), "", false)
	e.publish(t, uidEvent(bob, "1", bob), uidEvent(bob, "2", bob))
	e.publish(t, uidEvent(alice, "3", alice))
	e.publish(t, uidEvent(bob, "4", bob, alice)) // bob shared the folder with alice
	for _, want := range []sseMsg{{id: 1, data: Event{UIDs: "3"}}, {id: 2, data: Event{UIDs: "4"}}} {
		if m := ca.next(); m.id != want.id || m.data.UIDs != want.data.UIDs {
			t.Errorf("alice got %+v, want id %d uids %s", m, want.id, want.data.UIDs)
		}
	}
	for _, want := range []sseMsg{{id: 1, data: Event{UIDs: "1"}}, {id: 2, data: Event{UIDs: "2"}}, {id: 3, data: Event{UIDs: "4"}}} {
		if m := cb.next(); m.id != want.id || m.data.UIDs != want.data.UIDs {
			t.Errorf("bob got %+v, want id %d uids %s", m, want.id, want.data.UIDs)
		}
	}
	// alice replaying everything still sees only hers.
	ca.close()
	ca, _ = e.open(t, e.ticket(t, alice), "0", false)
	e.publish(t, uidEvent(bob, "5", bob))
	e.publish(t, uidEvent(alice, "6", alice))
	var got []string
	for range 3 {
		got = append(got, ca.next().data.UIDs)
	}
	if fmt.Sprint(got) != "[3 4 6]" {
		t.Errorf("alice's replay and live: %v, want [3 4 6]", got)
	}
}

func TestStreamLimits(t *testing.T) {
	e := newSSEEnv(t, func(c *DeliveryConfig) { c.MaxStreamsPerUser = 1 })
	alice := "alice@example.com"
	c, _ := e.open(t, e.ticket(t, alice), "", false)
	if _, code := e.open(t, e.ticket(t, alice), "", false); code != http.StatusTooManyRequests {
		t.Errorf("second stream: %d, want 429", code)
	}
	c.close()
	waitDelivery(t, "the first stream to end", func() bool {
		e.d.hub.mu.Lock()
		defer e.d.hub.mu.Unlock()
		return e.d.hub.total == 0
	})
	if c, code := e.open(t, e.ticket(t, alice), "", false); code != 200 {
		t.Errorf("after closing: %d", code)
	} else {
		c.close()
	}
}

// TestHubSlowStream: a full buffer disconnects the stream instead of
// blocking Publish; shutdown ends every stream and refuses new ones.
func TestHubSlowStream(t *testing.T) {
	h := newHub()
	kicked := 0
	h.kicked = func() { kicked++ }
	slow, _ := h.add("alice@example.com", 10, 10, 2)
	other, _ := h.add("bob@example.com", 10, 10, 2)
	for i := range 3 {
		h.send("alice@example.com", streamEvent{seq: int64(i + 1)})
	}
	select {
	case <-slow.kicked:
	default:
		t.Fatal("a full stream was not disconnected")
	}
	if kicked != 1 || h.total != 1 || !strings.Contains(slow.why, "slow") {
		t.Errorf("kicked %d, total %d, why %q", kicked, h.total, slow.why)
	}
	h.closeAll()
	select {
	case <-other.kicked:
	default:
		t.Error("closeAll left a stream open")
	}
	if _, err := h.add("carol@example.com", 10, 10, 2); err == nil {
		t.Error("a stream opened after closeAll")
	}
}

// TestStreamShutdown: Run's end closes open streams, so an HTTP server's
// Shutdown is not held up by them.
func TestStreamShutdown(t *testing.T) {
	e := newSSEEnv(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.d.Run(ctx); close(done) }()
	c, _ := e.open(t, e.ticket(t, "alice@example.com"), "", false)
	cancel()
	<-done
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			if _, err := c.r.ReadString('\n'); err != nil {
				return
			}
		}
	}()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream stayed open after Run returned")
	}
}

// TestStreamOutlivesReadTimeout: serve's HTTP server has a ReadTimeout
// (for the requests it reads); a stream must go on past it.
func TestStreamOutlivesReadTimeout(t *testing.T) {
	e := newSSEEnv(t, nil)
	e.srv.Close()
	srv := httptest.NewUnstartedServer(e.srv.Config.Handler)
	srv.Config.ReadTimeout = 200 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	e.srv = srv
	alice := "alice@example.com"
	c, _ := e.open(t, e.ticket(t, alice), "", false)
	defer c.close()
	for i := int64(1); i <= 3; i++ {
		time.Sleep(300 * time.Millisecond)
		e.publish(t, uidEvent(alice, strconv.FormatInt(i, 10), alice))
		if m := c.next(); m.id != i {
			t.Fatalf("%v after the stream opened, past the read timeout: %+v, want event %d", time.Duration(i)*300*time.Millisecond, m, i)
		}
	}
}
