package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cyrus-sidecar/store"
)

// The Standard Webhooks test vector, from the reference libraries' tests:
// standard-webhooks/standard-webhooks, libraries/go/webhook_test.go
// (TestWebhookSign; the same values are in libraries/javascript and the
// other libraries' sign tests), and the invalid signature those tests use.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorPayload   = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	vectorWrongSig  = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
)

func TestSignTestVector(t *testing.T) {
	for _, secret := range []string{vectorSecret, strings.TrimPrefix(vectorSecret, "whsec_")} {
		key, err := ParseSecret(secret)
		if err != nil {
			t.Fatal(err)
		}
		if got := Sign(key, vectorID, time.Unix(vectorTimestamp, 0), []byte(vectorPayload)); got != vectorSignature {
			t.Errorf("Sign(%s) = %s, want %s", secret, got, vectorSignature)
		}
	}
}

func TestVerify(t *testing.T) {
	key, _ := ParseSecret(vectorSecret)
	ts := time.Unix(vectorTimestamp, 0)
	hdr := func(sig string) http.Header {
		h := http.Header{}
		h.Set(HeaderID, vectorID)
		h.Set(HeaderTimestamp, "1614265330")
		if sig != "" {
			h.Set(HeaderSignature, sig)
		}
		return h
	}
	tests := []struct {
		name string
		h    http.Header
		body string
		now  time.Time
		want error
	}{
		{"valid", hdr(vectorSignature), vectorPayload, ts, nil},
		// Key rotation: several space-separated signatures, one valid.
		{"multi", hdr(vectorWrongSig + " v2,x " + vectorSignature), vectorPayload, ts, nil},
		{"wrong", hdr(vectorWrongSig), vectorPayload, ts, ErrBadSignature},
		{"partial", hdr("v1,"), vectorPayload, ts, ErrBadSignature},
		{"body changed", hdr(vectorSignature), `{"test": 2432232315}`, ts, ErrBadSignature},
		{"missing", hdr(""), vectorPayload, ts, ErrNoSignature},
		{"too old", hdr(vectorSignature), vectorPayload, ts.Add(DefaultTolerance + time.Second), ErrTimestamp},
		{"too new", hdr(vectorSignature), vectorPayload, ts.Add(-DefaultTolerance - time.Second), ErrTimestamp},
	}
	for _, tt := range tests {
		if err := Verify(key, tt.h, []byte(tt.body), tt.now, DefaultTolerance); !errors.Is(err, tt.want) {
			t.Errorf("%s: Verify = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	cfg := DefaultDeliveryConfig()
	for n, want := range map[int]time.Duration{1: 5 * time.Second, 2: 10 * time.Second, 5: 80 * time.Second, 30: time.Hour} {
		for range 20 {
			if got := backoff(&cfg, n); got < want/2 || got > want {
				t.Errorf("backoff(%d) = %s, want within [%s, %s]", n, got, want/2, want)
			}
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := retryAfter("120", now); got != 2*time.Minute {
		t.Errorf("Retry-After 120 = %s", got)
	}
	if got := retryAfter(now.Add(time.Minute).Format(http.TimeFormat), now); got != time.Minute {
		t.Errorf("Retry-After date = %s", got)
	}
}

// deliveryEnv is a store with Acme (example.com) and Other (other.net), users in
// both, and a Dispatcher with fast retries.
type deliveryEnv struct {
	st    *store.Store
	d     *Dispatcher
	canon store.Canon
}

func newDeliveryEnv(t *testing.T, tune func(*DeliveryConfig)) *deliveryEnv {
	t.Helper()
	ctx := t.Context()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "store.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	canon, err := store.NewCanon("example.com", "+")
	if err != nil {
		t.Fatal(err)
	}
	for _, od := range [][2]string{{"Acme", "example.com"}, {"Other", "other.net"}} {
		if _, err := st.AddOrg(ctx, od[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := st.AddDomain(ctx, od[1], od[0]); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"alice@example.com", "bob@example.com", "dave@other.net"} {
		a, _ := canon.Address(u)
		if _, err := st.AddUser(ctx, store.NewUser{Address: a}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := DefaultDeliveryConfig()
	cfg.RetryMin, cfg.RetryMax, cfg.Poll = 10*time.Millisecond, 40*time.Millisecond, 10*time.Millisecond
	cfg.WebhookTimeout = 5 * time.Second
	if tune != nil {
		tune(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(deliveryLogWriter{t}, nil))
	}
	return &deliveryEnv{st: st, d: NewDispatcher(cfg, st, log), canon: canon}
}

type deliveryLogWriter struct{ t *testing.T }

func (w deliveryLogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// run runs the dispatcher until the test ends.
func (e *deliveryEnv) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func (e *deliveryEnv) consumer(t *testing.T, name, url, org string, doms ...string) []byte {
	t.Helper()
	sec, err := store.GenerateWebhookSecret()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.AddConsumer(t.Context(), store.NewConsumer{Name: name, URL: url, Secret: sec, Org: org, Domains: doms}); err != nil {
		t.Fatal(err)
	}
	key, err := ParseSecret(sec.Reveal())
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// hookRequest is one request a test hookEndpoint saw.
type hookRequest struct {
	path   string
	header http.Header
	body   []byte
	ev     Event
	at     time.Time
}

// hookEndpoint records requests and answers each with answer's status.
type hookEndpoint struct {
	mu     sync.Mutex
	got    []hookRequest
	answer func(r hookRequest, n int) int // n: requests so far, this one included
}

func (ep *hookEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var p struct {
		Data Event `json:"data"`
	}
	json.Unmarshal(body, &p)
	rec := hookRequest{path: r.URL.Path, header: r.Header.Clone(), body: body, ev: p.Data, at: time.Now()}
	ep.mu.Lock()
	ep.got = append(ep.got, rec)
	n := len(ep.got)
	ep.mu.Unlock()
	status := http.StatusOK
	if ep.answer != nil {
		status = ep.answer(rec, n)
	}
	if status == 0 { // hang until the sender gives up
		<-r.Context().Done()
		return
	}
	w.WriteHeader(status)
}

func (ep *hookEndpoint) requests() []hookRequest {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return slices.Clone(ep.got)
}

// waitDelivery polls cond for up to 20 s (two shared cores under -race).
func waitDelivery(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func (e *deliveryEnv) pending(t *testing.T) int {
	t.Helper()
	cs, err := e.st.Consumers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range cs {
		n += c.Pending
	}
	return n
}

func testEvent(typ, account, mailbox string, readers ...string) Event {
	return Event{Type: typ, Account: account, Mailbox: mailbox, MailboxID: account + "/" + mailbox,
		CyrusEvent: "MessageNew", Readers: readers}
}

func TestWebhookRetrySameID(t *testing.T) {
	e := newDeliveryEnv(t, nil)
	ep := &hookEndpoint{answer: func(_ hookRequest, n int) int {
		if n == 1 {
			return http.StatusInternalServerError
		}
		return http.StatusNoContent
	}}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	key := e.consumer(t, "groupware", srv.URL+"/hook", "Acme")
	e.run(t)
	if err := e.d.Publish(t.Context(), []Event{testEvent(TypeMessageAdded, "alice@example.com", "INBOX", "alice@example.com")}); err != nil {
		t.Fatal(err)
	}
	waitDelivery(t, "two attempts and an empty outbox", func() bool { return len(ep.requests()) >= 2 && e.pending(t) == 0 })
	got := ep.requests()
	if len(got) != 2 {
		t.Fatalf("%d requests, want 2", len(got))
	}
	id := got[0].header.Get(HeaderID)
	if !strings.HasPrefix(id, "msg_") || got[1].header.Get(HeaderID) != id {
		t.Errorf("webhook-id %q then %q: want the same msg_ id", id, got[1].header.Get(HeaderID))
	}
	for i, r := range got {
		if err := Verify(key, r.header, r.body, time.Now(), DefaultTolerance); err != nil {
			t.Errorf("attempt %d: %v", i+1, err)
		}
		if r.header.Get("Content-Type") != "application/json" || r.path != "/hook" {
			t.Errorf("attempt %d: content type %q, path %q", i+1, r.header.Get("Content-Type"), r.path)
		}
	}
	var p struct {
		Type      string          `json:"type"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(got[1].body, &p); err != nil || p.Type != TypeMessageAdded || p.Timestamp.IsZero() ||
		got[1].ev.Account != "alice@example.com" || got[1].ev.Mailbox != "INBOX" || strings.Contains(string(p.Data), "readers") {
		t.Errorf("payload %s (%v)", got[1].body, err)
	}
}

// TestWebhookOrderPerMailbox: while INBOX's first webhook keeps failing,
// INBOX's second waits, and another mailbox's goes ahead.
func TestWebhookOrderPerMailbox(t *testing.T) {
	e := newDeliveryEnv(t, nil)
	fails := 3
	ep := &hookEndpoint{}
	ep.answer = func(r hookRequest, _ int) int {
		if r.ev.UIDs == "1" && r.ev.Mailbox == "INBOX" {
			ep.mu.Lock()
			defer ep.mu.Unlock()
			if fails > 0 {
				fails--
				return http.StatusServiceUnavailable
			}
		}
		return http.StatusOK
	}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	e.consumer(t, "groupware", srv.URL, "", "example.com")
	e.run(t)
	mk := func(mailbox, uids string) Event {
		x := testEvent(TypeMessageAdded, "alice@example.com", mailbox, "alice@example.com")
		x.UIDs = uids
		return x
	}
	if err := e.d.Publish(t.Context(), []Event{mk("INBOX", "1"), mk("INBOX", "2"), mk("Sent", "1")}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Publish(t.Context(), []Event{mk("INBOX", "3")}); err != nil {
		t.Fatal(err)
	}
	waitDelivery(t, "every webhook delivered", func() bool { return e.pending(t) == 0 })
	var inbox []string
	sentAt, inbox2At := time.Time{}, time.Time{}
	for _, r := range ep.requests() {
		if r.ev.Mailbox == "INBOX" {
			inbox = append(inbox, r.ev.UIDs)
			if r.ev.UIDs == "2" {
				inbox2At = r.at
			}
		} else {
			sentAt = r.at
		}
	}
	if want := []string{"1", "1", "1", "1", "2", "3"}; !slices.Equal(inbox, want) {
		t.Errorf("INBOX order %v, want %v", inbox, want)
	}
	if !sentAt.Before(inbox2At) {
		t.Errorf("Sent waited for INBOX's failing webhook")
	}
}

func TestWebhookTimeout(t *testing.T) {
	e := newDeliveryEnv(t, func(c *DeliveryConfig) { c.WebhookTimeout = 200 * time.Millisecond })
	ep := &hookEndpoint{answer: func(_ hookRequest, n int) int {
		if n == 1 {
			return 0 // hang
		}
		return http.StatusOK
	}}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	e.consumer(t, "groupware", srv.URL, "Acme")
	e.run(t)
	if err := e.d.Publish(t.Context(), []Event{testEvent(TypeMessageFlags, "bob@example.com", "INBOX", "bob@example.com")}); err != nil {
		t.Fatal(err)
	}
	waitDelivery(t, "delivery after a timeout", func() bool { return len(ep.requests()) >= 2 && e.pending(t) == 0 })
	got := ep.requests()
	if len(got) != 2 || got[0].header.Get(HeaderID) != got[1].header.Get(HeaderID) {
		t.Errorf("%d requests, ids %q %q", len(got), got[0].header.Get(HeaderID), got[len(got)-1].header.Get(HeaderID))
	}
}

// TestWebhookScope: a consumer gets the events of its domains (listed or
// its organisation's), judged by the owner and by every reader.
func TestWebhookScope(t *testing.T) {
	e := newDeliveryEnv(t, nil)
	ep := &hookEndpoint{}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	e.consumer(t, "acme", srv.URL+"/acme", "Acme")
	e.consumer(t, "other", srv.URL+"/other", "", "other.net")
	e.run(t)
	evs := []Event{
		testEvent(TypeMessageAdded, "alice@example.com", "INBOX", "alice@example.com"),
		testEvent(TypeMessageAdded, "dave@other.net", "INBOX", "dave@other.net"),
		testEvent(TypeMessageAdded, "bob@example.com", "Shared", "bob@example.com", "dave@other.net"),
		testEvent(TypeMessageAdded, "", "shared/team", "dave@other.net"),
		testEvent(TypeMessageAdded, "eve@elsewhere.example", "INBOX", "eve@elsewhere.example"),
	}
	if err := e.d.Publish(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	waitDelivery(t, "every webhook delivered", func() bool { return len(ep.requests()) >= 5 && e.pending(t) == 0 })
	got := map[string][]string{}
	for _, r := range ep.requests() {
		got[r.path] = append(got[r.path], r.ev.Account+" "+r.ev.Mailbox)
	}
	for path, want := range map[string][]string{
		"/acme":  {"alice@example.com INBOX", "bob@example.com Shared"},
		"/other": {" shared/team", "bob@example.com Shared", "dave@other.net INBOX"},
	} {
		slices.Sort(got[path])
		if !slices.Equal(got[path], want) {
			t.Errorf("%s got %q, want %q", path, got[path], want)
		}
	}
	if len(ep.requests()) != 5 {
		t.Errorf("%d webhooks, want 5", len(ep.requests()))
	}
}

// TestWebhookGiveUp: after max_age the backlog of a mailbox becomes one
// resync webhook, which is delivered once the hookEndpoint recovers.
func TestWebhookGiveUp(t *testing.T) {
	e := newDeliveryEnv(t, func(c *DeliveryConfig) { c.MaxAge = 300 * time.Millisecond })
	ep := &hookEndpoint{answer: func(r hookRequest, _ int) int {
		if r.ev.Type == TypeResync {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	}}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	e.consumer(t, "groupware", srv.URL, "Acme")
	e.run(t)
	var evs []Event
	for range 3 {
		evs = append(evs, testEvent(TypeMessageAdded, "alice@example.com", "INBOX", "alice@example.com"))
	}
	if err := e.d.Publish(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	waitDelivery(t, "a resync delivered", func() bool {
		rs := ep.requests()
		return len(rs) > 0 && rs[len(rs)-1].ev.Type == TypeResync && e.pending(t) == 0
	})
	ids := map[string]bool{}
	for _, r := range ep.requests() {
		ids[r.header.Get(HeaderID)] = true
	}
	last := ep.requests()[len(ep.requests())-1]
	if len(ids) != 2 || last.ev.Account != "alice@example.com" || last.ev.Mailbox != "INBOX" || last.ev.MailboxID == "" {
		t.Errorf("ids %v (want the first event's and the resync's), resync %+v", ids, last.ev)
	}
}

func TestDeliveryConfigValidate(t *testing.T) {
	if err := DefaultDeliveryConfig().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	c := DefaultDeliveryConfig()
	c.RetryMin, c.RetryMax, c.MaxStreams, c.TokenService = time.Minute, time.Second, 0, "Events!"
	err := c.Validate()
	for _, want := range []string{"retry_max: must not be below", "max_streams: must be between", "token_service:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q", err, want)
		}
	}
}

// failingAcks is a store whose MarkDelivered fails while fail says so;
// it records how many acknowledgements each call that went through had.
type failingAcks struct {
	*store.Store
	mu    sync.Mutex
	fail  func() bool // under mu
	calls []int
}

func (f *failingAcks) MarkDelivered(ctx context.Context, acks ...store.Ack) error {
	f.mu.Lock()
	fail := f.fail()
	if !fail {
		f.calls = append(f.calls, len(acks))
	}
	f.mu.Unlock()
	if fail {
		return errors.New("disk I/O error (test)")
	}
	return f.Store.MarkDelivered(ctx, acks...)
}

// ackEnv runs a dispatcher over st with 16 attempts at once, a consumer
// that answers 200, and n webhooks published over boxes mailboxes of alice
// (UIDs 0, 1, ... per mailbox, in order).
func ackEnv(t *testing.T, e *deliveryEnv, st Store, n, boxes int) *hookEndpoint {
	t.Helper()
	e.d = NewDispatcher(*e.d.config(), st, e.d.log)
	ep := &hookEndpoint{}
	srv := httptest.NewServer(ep)
	t.Cleanup(srv.Close)
	e.consumer(t, "groupware", srv.URL, "", "example.com")
	var evs []Event
	for i := range n {
		x := testEvent(TypeMessageAdded, "alice@example.com", fmt.Sprint("box", i%boxes), "alice@example.com")
		x.UIDs = fmt.Sprint(i / boxes)
		evs = append(evs, x)
	}
	if err := e.d.Publish(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	e.run(t)
	return ep
}

// onceEach fails the test for a webhook-id seen twice and returns the
// UIDs each mailbox got, in order.
func onceEach(t *testing.T, got []hookRequest) map[string][]string {
	t.Helper()
	ids := map[string]bool{}
	order := map[string][]string{}
	for _, r := range got {
		if id := r.header.Get(HeaderID); ids[id] {
			t.Errorf("webhook %s sent twice", id)
		} else {
			ids[id] = true
		}
		order[r.ev.Mailbox] = append(order[r.ev.Mailbox], r.ev.UIDs)
	}
	return order
}

// TestWebhookAcksBatched: acknowledgements are deleted together, several
// per transaction when deliveries end together; while deleting them fails,
// no webhook is sent twice and each mailbox stays in order, and once the
// store recovers the outbox empties.
func TestWebhookAcksBatched(t *testing.T) {
	e := newDeliveryEnv(t, func(c *DeliveryConfig) { c.WebhookConcurrency, c.WebhookPerConsumer = 16, 16 })
	failures := 3
	fl := &failingAcks{Store: e.st, fail: func() bool { failures--; return failures >= 0 }}
	ep := ackEnv(t, e, fl, 60, 6)
	waitDelivery(t, "every webhook delivered and recorded", func() bool { return e.pending(t) == 0 })
	got := ep.requests()
	order := onceEach(t, got)
	if len(got) != 60 {
		t.Errorf("%d requests, want 60", len(got))
	}
	for box, uids := range order {
		if want := []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}; !slices.Equal(uids, want) {
			t.Errorf("%s: order %v, want %v", box, uids, want)
		}
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	total, most := 0, 0
	for _, n := range fl.calls {
		total += n
		most = max(most, n)
	}
	if total != 60 || most < 2 {
		t.Errorf("deletes per call %v: want 60 in all and several in one (the failed calls' held back, at least)", fl.calls)
	}
}

// TestWebhookGone: a 410 Gone disables the consumer at once (no retries,
// nothing more sent to it), its other webhooks stay queued, another consumer
// goes on, and enabling it sends one resync in place of the backlog.
func TestWebhookGone(t *testing.T) {
	// One attempt per consumer at a time: the other mailboxes' webhooks wait
	// in the dispatcher's queue when the 410 comes, and must not be sent.
	e := newDeliveryEnv(t, func(c *DeliveryConfig) { c.WebhookPerConsumer = 1 })
	gone := true
	var mu sync.Mutex
	ep := &hookEndpoint{answer: func(hookRequest, int) int {
		mu.Lock()
		defer mu.Unlock()
		if gone {
			return http.StatusGone
		}
		return http.StatusOK
	}}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	other := &hookEndpoint{}
	srv2 := httptest.NewServer(other)
	defer srv2.Close()
	e.consumer(t, "groupware", srv.URL, "Acme")
	e.consumer(t, "crm", srv2.URL, "Acme")
	e.run(t)
	mk := func(mailbox, uids string) Event {
		x := testEvent(TypeMessageAdded, "alice@example.com", mailbox, "alice@example.com")
		x.UIDs = uids
		return x
	}
	if err := e.d.Publish(t.Context(), []Event{mk("INBOX", "1"), mk("Sent", "2"), mk("Drafts", "3")}); err != nil {
		t.Fatal(err)
	}
	// Consumers are listed by name: crm, groupware.
	waitDelivery(t, "groupware disabled and crm served", func() bool {
		cs, _ := e.st.Consumers(t.Context())
		return len(cs) == 2 && !cs[1].Enabled && len(other.requests()) == 3
	})
	cs, _ := e.st.Consumers(t.Context())
	if cs[1].Name != "groupware" || !strings.HasPrefix(cs[1].DisabledReason, "410 Gone from its URL at ") || cs[1].Pending != 3 || !cs[0].Enabled {
		t.Errorf("after a 410: %+v", cs)
	}
	time.Sleep(100 * time.Millisecond) // several retry_max: a retry would show now
	if n := len(ep.requests()); n != 1 {
		t.Errorf("%d requests to the gone endpoint, want 1", n)
	}
	if err := e.d.Publish(t.Context(), []Event{mk("INBOX", "4")}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	gone = false
	mu.Unlock()
	if err := e.st.SetConsumerEnabled(t.Context(), "groupware", true, "", ResyncAllBody(time.Now())); err != nil {
		t.Fatal(err)
	}
	waitDelivery(t, "the backlog after enabling", func() bool { return e.pending(t) == 0 })
	// The kept backlog (2, 3) and event 4, which came while it was disabled,
	// are replaced by one resync of everything.
	var uids []string
	resyncs := 0
	for _, r := range ep.requests() {
		if r.ev.Type == TypeResync {
			resyncs++
			if r.ev.Account != "" || r.ev.Mailbox != "" {
				t.Errorf("resync after enable names %q %q, want neither", r.ev.Account, r.ev.Mailbox)
			}
			continue
		}
		uids = append(uids, r.ev.UIDs)
	}
	if len(uids) != 1 || resyncs != 1 {
		t.Errorf("groupware got %v and %d resyncs, want the one attempt that got the 410 and 1 resync", uids, resyncs)
	}
	if cs, _ := e.st.Consumers(t.Context()); !cs[1].Enabled || cs[1].DisabledReason != "" {
		t.Errorf("after enable: %+v", cs[1])
	}
}

// TestWebhookRotation: after a rotation with a grace time, a webhook
// verifies with the new secret and with the old one (two signatures); with
// no grace only the new one signs.
func TestWebhookRotation(t *testing.T) {
	e := newDeliveryEnv(t, nil)
	ep := &hookEndpoint{}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	oldKey := e.consumer(t, "groupware", srv.URL, "Acme")
	e.run(t)
	send := func(n int) hookRequest {
		t.Helper()
		if err := e.d.Publish(t.Context(), []Event{testEvent(TypeMessageAdded, "alice@example.com", "INBOX", "alice@example.com")}); err != nil {
			t.Fatal(err)
		}
		waitDelivery(t, "a webhook", func() bool { return len(ep.requests()) == n && e.pending(t) == 0 })
		return ep.requests()[n-1]
	}
	rotate := func(grace time.Duration) []byte {
		t.Helper()
		sec, err := store.GenerateWebhookSecret()
		if err != nil {
			t.Fatal(err)
		}
		if err := e.st.RotateConsumerSecret(t.Context(), "groupware", sec, grace); err != nil {
			t.Fatal(err)
		}
		key, _ := ParseSecret(sec.Reveal())
		return key
	}
	if r := send(1); len(strings.Fields(r.header.Get(HeaderSignature))) != 1 || Verify(oldKey, r.header, r.body, time.Now(), DefaultTolerance) != nil {
		t.Fatalf("before rotation: %q", r.header.Get(HeaderSignature))
	}
	newKey := rotate(time.Hour)
	r := send(2)
	if n := len(strings.Fields(r.header.Get(HeaderSignature))); n != 2 {
		t.Errorf("during the grace time: %d signatures, want 2", n)
	}
	for name, key := range map[string][]byte{"new": newKey, "old": oldKey} {
		if err := Verify(key, r.header, r.body, time.Now(), DefaultTolerance); err != nil {
			t.Errorf("during the grace time, the %s secret: %v", name, err)
		}
	}
	newest := rotate(0)
	r = send(3)
	if err := Verify(newest, r.header, r.body, time.Now(), DefaultTolerance); err != nil || len(strings.Fields(r.header.Get(HeaderSignature))) != 1 {
		t.Errorf("after a rotation without grace: %q, %v", r.header.Get(HeaderSignature), err)
	}
	for name, key := range map[string][]byte{"previous": newKey, "first": oldKey} {
		if err := Verify(key, r.header, r.body, time.Now(), DefaultTolerance); err == nil {
			t.Errorf("the %s secret still verifies after a rotation without grace", name)
		}
	}
}

// TestWebhookAcksHeldThenRecorded: while deletes fail, deliveries stop once
// maxHeldAcks acknowledgements are held; when the store recovers, the poll
// records them and delivery resumes until the outbox is empty, without a
// webhook sent twice.
func TestWebhookAcksHeldThenRecorded(t *testing.T) {
	e := newDeliveryEnv(t, func(c *DeliveryConfig) { c.WebhookConcurrency, c.WebhookPerConsumer = 16, 16 })
	var down atomic.Bool
	down.Store(true)
	ep := ackEnv(t, e, &failingAcks{Store: e.st, fail: down.Load}, 600, 60)
	waitDelivery(t, "the held acknowledgements' bound reached", func() bool { return len(ep.requests()) >= maxHeldAcks })
	time.Sleep(100 * time.Millisecond) // several polls
	if n := len(ep.requests()); n > maxHeldAcks+16 {
		t.Errorf("%d webhooks sent while none could be recorded; want at most %d", n, maxHeldAcks+16)
	}
	down.Store(false)
	waitDelivery(t, "the outbox empty after the store recovered", func() bool { return e.pending(t) == 0 })
	if got := ep.requests(); len(got) != 600 {
		t.Errorf("%d requests, want 600", len(got))
	} else {
		onceEach(t, got)
	}
}
