package events

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"cyrus-sidecar/store"
)

const secretEnvSubject = "Grüße aus Köln"

// fakeEnvelopes answers envelope requests from a table and records them.
type fakeEnvelopes struct {
	mu    sync.Mutex
	calls []string // "account mailbox uids"
	err   error
}

func (f *fakeEnvelopes) fetch(_ context.Context, account string, reqs []envelopeReq) []envelopeResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	res := make([]envelopeResult, len(reqs))
	for i, r := range reqs {
		var uids []string
		for _, u := range r.uids {
			uids = append(uids, strconv.FormatUint(uint64(u), 10))
		}
		f.calls = append(f.calls, account+" "+r.mailbox+" "+strings.Join(uids, ","))
		if f.err != nil {
			res[i].err = f.err
			continue
		}
		// Only UID 5 still exists.
		if slices.Contains(r.uids, 5) {
			res[i].envs = []MessageEnvelope{{UID: 5, Subject: secretEnvSubject, From: []string{"Jürgen <j@outside.example>"}}}
		}
	}
	return res
}

// envelopeEnv: consumers plain (Acme), mail (Acme, opted in) and omail
// (other.net, opted in), a fake fetcher and a log kept in a buffer.
func envelopeEnv(t *testing.T) (*deliveryEnv, *fakeEnvelopes, *hookEndpoint, *bytes.Buffer) {
	t.Helper()
	e := newDeliveryEnv(t, nil)
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	e.d.log = slog.New(slog.NewJSONHandler(lockedWriter{&logMu, &logBuf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := &fakeEnvelopes{}
	e.d.fetchEnv = f.fetch
	ep := &hookEndpoint{}
	srv := httptest.NewServer(ep)
	t.Cleanup(srv.Close)
	for _, c := range []store.NewConsumer{
		{Name: "plain", URL: srv.URL + "/plain", Org: "Acme"},
		{Name: "mail", URL: srv.URL + "/mail", Org: "Acme", Envelope: true},
		{Name: "omail", URL: srv.URL + "/omail", Domains: []string{"other.net"}, Envelope: true},
	} {
		sec, err := store.GenerateWebhookSecret()
		if err != nil {
			t.Fatal(err)
		}
		c.Secret = sec
		if _, err := e.st.AddConsumer(t.Context(), c); err != nil {
			t.Fatal(err)
		}
	}
	e.run(t)
	return e, f, ep, &logBuf
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func added(account, uids string, uv uint32) Event {
	ev := testEvent(TypeMessageAdded, account, "INBOX", account)
	ev.UIDs, ev.UIDValidity = uids, uv
	return ev
}

func TestEnvelopeOptIn(t *testing.T) {
	e, f, ep, logBuf := envelopeEnv(t)
	evs := []Event{
		added("alice@example.com", "5:6", 7),
		testEvent(TypeMessageFlags, "alice@example.com", "INBOX", "alice@example.com"),
		added("dave@other.net", "1", 0), // UIDVALIDITY unknown: not fetched
		added("bob@example.com", "5", 9),
	}
	// A caller's Envelopes never pass through to anyone.
	evs[1].Envelopes = []MessageEnvelope{{UID: 1, Subject: "injected"}}
	if err := e.d.Publish(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	// plain: 3 Acme events; mail: the same 3; omail: dave's.
	waitDelivery(t, "every webhook delivered", func() bool { return len(ep.requests()) >= 7 && e.pending(t) == 0 })
	// One session per account; dave's was not asked for.
	if want := []string{"alice@example.com INBOX 5,6", "bob@example.com INBOX 5"}; !slices.Equal(f.calls, want) {
		t.Errorf("fetches %q, want %q", f.calls, want)
	}
	for _, r := range ep.requests() {
		body := string(r.body)
		switch {
		case r.path == "/mail" && r.ev.Type == TypeMessageAdded:
			if len(r.ev.Envelopes) != 1 || r.ev.Envelopes[0].Subject != secretEnvSubject || r.ev.Envelopes[0].UID != 5 ||
				r.ev.EnvelopeError != EnvelopeIncomplete && r.ev.Account == "alice@example.com" {
				t.Errorf("mail got %s", body)
			}
		case strings.Contains(body, "envelope") || strings.Contains(body, "injected"):
			t.Errorf("%s got envelopes: %s", r.path, body)
		}
	}
	// The event log behind the streams has none.
	for _, a := range []string{"alice@example.com", "bob@example.com"} {
		page, err := e.st.AccountEventsAfter(t.Context(), a, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page.Events {
			if bytes.Contains(ev.Event, []byte("envelope")) || bytes.Contains(ev.Event, []byte("Grüße")) {
				t.Errorf("event log of %s: %s", a, ev.Event)
			}
		}
	}
	if strings.Contains(logBuf.String(), "Grüße") || strings.Contains(logBuf.String(), "Jürgen") {
		t.Errorf("the log names a subject or sender:\n%s", logBuf)
	}
}

// TestEnvelopeUnavailable: when Cyrus cannot be read the event goes out
// at once, saying so.
func TestEnvelopeUnavailable(t *testing.T) {
	e, f, ep, _ := envelopeEnv(t)
	f.err = errors.New("imap: dial tcp 127.0.0.1:143: connection refused")
	if err := e.d.Publish(t.Context(), []Event{added("alice@example.com", "5", 7)}); err != nil {
		t.Fatal(err)
	}
	waitDelivery(t, "both webhooks delivered", func() bool { return len(ep.requests()) >= 2 && e.pending(t) == 0 })
	for _, r := range ep.requests() {
		want := ""
		if r.path == "/mail" {
			want = EnvelopeUnavailable
		}
		if r.ev.EnvelopeError != want || len(r.ev.Envelopes) != 0 {
			t.Errorf("%s got %s", r.path, r.body)
		}
	}
}

// TestEnvelopeNotWanted: without an opted-in consumer in scope, Publish
// never asks IMAP.
func TestEnvelopeNotWanted(t *testing.T) {
	e := newDeliveryEnv(t, nil)
	f := &fakeEnvelopes{}
	e.d.fetchEnv = f.fetch
	e.consumer(t, "plain", "http://127.0.0.1:1/", "Acme")
	if err := e.d.Publish(t.Context(), []Event{added("alice@example.com", "5", 7)}); err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 0 {
		t.Errorf("fetched %q", f.calls)
	}
}

func TestFirstUIDs(t *testing.T) {
	tests := []struct {
		in      string
		n       int
		want    []uint32
		cut, ok bool
	}{
		{"5", 20, []uint32{5}, false, true},
		{"3:5,9", 20, []uint32{3, 4, 5, 9}, false, true},
		{"5:3", 20, []uint32{3, 4, 5}, false, true},
		{"1:4294967295", 3, []uint32{1, 2, 3}, true, true},
		{"1,2,3", 3, []uint32{1, 2, 3}, false, true},
		{"1,2,3,4", 3, []uint32{1, 2, 3}, true, true},
		{"4294967295", 2, []uint32{4294967295}, false, true},
		{"1:*", 20, nil, false, false},
		{"0", 20, nil, false, false},
		{"", 20, nil, false, false},
		{"1,,2", 20, nil, false, false},
	}
	for _, tt := range tests {
		got, cut, ok := firstUIDs(tt.in, tt.n)
		if !slices.Equal(got, tt.want) || cut != tt.cut || ok != tt.ok {
			t.Errorf("firstUIDs(%q, %d) = %v, %v, %v; want %v, %v, %v", tt.in, tt.n, got, cut, ok, tt.want, tt.cut, tt.ok)
		}
	}
}
