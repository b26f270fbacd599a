package store

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// eventsStore has Acme (example.com, example.org) and Other (other.net).
func eventsStore(t *testing.T) *Store {
	t.Helper()
	st, _ := openTest(t)
	ctx := t.Context()
	for _, o := range []string{"Acme", "Other"} {
		if _, err := st.AddOrg(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for d, o := range map[string]string{"example.com": "Acme", "example.org": "Acme", "other.net": "Other"} {
		if _, err := st.AddDomain(ctx, d, o); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func addConsumer(t *testing.T, st *Store, name, org string, doms ...string) Consumer {
	t.Helper()
	sec, err := GenerateWebhookSecret()
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.AddConsumer(t.Context(), NewConsumer{Name: name, URL: "https://groupware.example/hook", Secret: sec, Org: org, Domains: doms})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConsumers(t *testing.T) {
	ctx := t.Context()
	st := eventsStore(t)
	sec, err := GenerateWebhookSecret()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sec.Reveal(), WebhookSecretPrefix))
	if !strings.HasPrefix(sec.Reveal(), "whsec_") || err != nil || len(raw) != 32 {
		t.Fatalf("GenerateWebhookSecret = %q (%d bytes, %v)", sec.Reveal(), len(raw), err)
	}
	if fmt.Sprint(sec) != "***" {
		t.Errorf("a secret prints as %q", fmt.Sprint(sec))
	}
	bad := []struct {
		name string
		nc   NewConsumer
		want error
	}{
		{"no scope", NewConsumer{Name: "x", URL: "https://a.example/", Secret: sec}, ErrMalformed},
		{"bad url", NewConsumer{Name: "x", URL: "ftp://a.example/", Secret: sec, Org: "Acme"}, ErrMalformed},
		{"url with password", NewConsumer{Name: "x", URL: "https://u:p@a.example/", Secret: sec, Org: "Acme"}, ErrMalformed},
		{"bad secret", NewConsumer{Name: "x", URL: "https://a.example/", Secret: "hunter2", Org: "Acme"}, ErrMalformed},
		{"unknown org", NewConsumer{Name: "x", URL: "https://a.example/", Secret: sec, Org: "Nope"}, ErrNotFound},
		{"unhosted domain", NewConsumer{Name: "x", URL: "https://a.example/", Secret: sec, Domains: []string{"nope.example"}}, ErrNotHosted},
	}
	for _, tt := range bad {
		if _, err := st.AddConsumer(ctx, tt.nc); !errors.Is(err, tt.want) {
			t.Errorf("%s: AddConsumer = %v, want %v", tt.name, err, tt.want)
		}
	}
	gen, _ := st.Generation(ctx)
	addConsumer(t, st, "groupware", "acme")
	addConsumer(t, st, "crm", "", "other.net", "example.com", "other.net")
	if _, err := st.AddConsumer(ctx, NewConsumer{Name: "CRM", URL: "https://a.example/", Secret: sec, Org: "Acme"}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate name: %v, want ErrExists", err)
	}
	if g, _ := st.Generation(ctx); g == gen {
		t.Errorf("adding consumers did not move Generation: serve would not see them")
	}
	cs, err := st.Consumers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].Name != "crm" || cs[1].Name != "groupware" {
		t.Fatalf("Consumers = %+v", cs)
	}
	if !slices.Equal(cs[0].Domains, []string{"example.com", "other.net"}) || !slices.Equal(cs[0].Scope, cs[0].Domains) || cs[0].Org != "" {
		t.Errorf("crm = %+v", cs[0])
	}
	if len(cs[1].Domains) != 0 || !slices.Equal(cs[1].Scope, []string{"example.com", "example.org"}) || cs[1].Org != "Acme" || !cs[1].Enabled || cs[1].Envelope {
		t.Errorf("groupware = %+v", cs[1])
	}
	if !strings.HasPrefix(cs[1].Secret.Reveal(), "whsec_") {
		t.Errorf("secret not stored: %q", cs[1].Secret.Reveal())
	}
	// The organisation's domains are read live.
	if _, err := st.AddDomain(ctx, "example.net", "Acme"); err != nil {
		t.Fatal(err)
	}
	if cs, _ = st.Consumers(ctx); !slices.Equal(cs[1].Scope, []string{"example.com", "example.net", "example.org"}) {
		t.Errorf("after a new Acme domain: scope %v", cs[1].Scope)
	}
	// The subjects-and-senders opt-in is stored and read back.
	if _, err := st.AddConsumer(ctx, NewConsumer{Name: "mailapp", URL: "https://a.example/", Secret: sec, Org: "Acme", Envelope: true}); err != nil {
		t.Fatal(err)
	}
	if cs, _ = st.Consumers(ctx); len(cs) != 3 || cs[2].Name != "mailapp" || !cs[2].Envelope || cs[0].Envelope || cs[1].Envelope {
		t.Errorf("after adding mailapp with Envelope: %+v", cs)
	}
	if err := st.DelConsumer(ctx, "GROUPWARE"); err != nil {
		t.Fatal(err)
	}
	if err := st.DelConsumer(ctx, "groupware"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

func TestWebhookOutboxOrder(t *testing.T) {
	ctx := t.Context()
	st := eventsStore(t)
	a := addConsumer(t, st, "a", "Acme")
	b := addConsumer(t, st, "b", "Acme")
	ids, err := st.EnqueueWebhooks(ctx, []NewWebhook{
		{a.ID, "m1", []byte(`1`)}, {a.ID, "m1", []byte(`2`)}, {a.ID, "m2", []byte(`3`)},
		{b.ID, "m1", []byte(`4`)}, {9999, "m1", []byte(`gone`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 5 || ids[4] != "" || !strings.HasPrefix(ids[0], "msg_") || len(ids[0]) != 30 || strings.Contains(ids[0], ".") {
		t.Fatalf("ids = %q", ids)
	}
	payloads := func(ws []Webhook) (out []string) {
		for _, w := range ws {
			out = append(out, string(w.Payload))
		}
		slices.Sort(out)
		return out
	}
	now := time.Now()
	due, err := st.DueWebhooks(ctx, now, 100)
	if err != nil {
		t.Fatal(err)
	}
	// Only the head of each (consumer, mailbox).
	if got := payloads(due); !slices.Equal(got, []string{"1", "3", "4"}) {
		t.Fatalf("due = %v, want heads 1 3 4", got)
	}
	first := due[slices.IndexFunc(due, func(w Webhook) bool { return string(w.Payload) == "1" })]
	if first.ID != ids[0] || first.URL != "https://groupware.example/hook" || first.Consumer != "a" || !strings.HasPrefix(first.Secret.Reveal(), "whsec_") {
		t.Errorf("head = %+v", first)
	}
	// A failing head holds back its successor, and only its successor.
	if err := st.MarkFailed(ctx, Ack{first.Seq, first.ID}, now.Add(time.Hour), strings.Repeat("x", 2000)); err != nil {
		t.Fatal(err)
	}
	due, _ = st.DueWebhooks(ctx, now, 100)
	if got := payloads(due); !slices.Equal(got, []string{"3", "4"}) {
		t.Errorf("after failure: due = %v, want 3 4", got)
	}
	due, _ = st.DueWebhooks(ctx, now.Add(2*time.Hour), 100)
	i := slices.IndexFunc(due, func(w Webhook) bool { return w.Seq == first.Seq })
	if i < 0 || due[i].Attempts != 1 || due[i].ID != first.ID || len(due[i].LastError) != maxWebhookError {
		t.Fatalf("retried head = %+v", due)
	}
	if err := st.MarkDelivered(ctx, Ack{first.Seq, first.ID}); err != nil {
		t.Fatal(err)
	}
	due, _ = st.DueWebhooks(ctx, now, 100)
	if got := payloads(due); !slices.Equal(got, []string{"2", "3", "4"}) {
		t.Errorf("after delivery: due = %v, want 2 3 4", got)
	}
	// The next of a mailbox after a given one, whether or not that one's
	// row is gone yet: 2 after 1 (deleted), nothing after 2.
	if w, ok, err := st.NextWebhook(ctx, a.ID, "m1", first.Seq, now); err != nil || !ok || string(w.Payload) != "2" {
		t.Errorf("NextWebhook after 1 = %q, %v, %v; want 2", w.Payload, ok, err)
	}
	second := due[slices.IndexFunc(due, func(w Webhook) bool { return string(w.Payload) == "2" })]
	if w, ok, err := st.NextWebhook(ctx, a.ID, "m1", second.Seq, now); err != nil || ok {
		t.Errorf("NextWebhook after 2 = %q, %v, %v; want none", w.Payload, ok, err)
	}
	if w, ok, err := st.NextWebhook(ctx, a.ID, "m1", 0, now); err != nil || !ok || w.Seq != second.Seq {
		t.Errorf("NextWebhook after 0 = %q, %v, %v; want 2", w.Payload, ok, err)
	}
	// Several acknowledgements in one call, one of them already gone.
	if err := st.MarkDelivered(ctx); err != nil {
		t.Errorf("MarkDelivered of none: %v", err)
	}
	// Giving up on a mailbox: its backlog becomes one webhook.
	id, dropped, err := st.ReplaceWebhookBacklog(ctx, a.ID, "m1", []byte(`resync`))
	if err != nil || dropped != 1 || id == "" {
		t.Fatalf("ReplaceWebhookBacklog = %q, %d, %v", id, dropped, err)
	}
	due, _ = st.DueWebhooks(ctx, now.Add(time.Second), 100)
	if got := payloads(due); !slices.Equal(got, []string{"3", "4", "resync"}) {
		t.Errorf("after replace: due = %v", got)
	}
	if due, _ := st.DueWebhooks(ctx, now, 1); len(due) != 1 {
		t.Errorf("limit 1: %d rows", len(due))
	}
	cs, _ := st.Consumers(ctx)
	if cs[0].Pending != 2 || cs[1].Pending != 1 {
		t.Errorf("pending = %d, %d; want 2, 1", cs[0].Pending, cs[1].Pending)
	}
	// Deleting the consumer deletes its outbox.
	if err := st.DelConsumer(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	due, _ = st.DueWebhooks(ctx, now.Add(time.Second), 100)
	if got := payloads(due); !slices.Equal(got, []string{"4"}) {
		t.Errorf("after deleting a: due = %v", got)
	}
	// Several at once, with rows already gone among them.
	if err := st.MarkDelivered(ctx, Ack{first.Seq, first.ID}, Ack{due[0].Seq, due[0].ID}, Ack{1 << 40, "msg_x"}); err != nil {
		t.Fatal(err)
	}
	if due, _ := st.DueWebhooks(ctx, now.Add(time.Second), 100); len(due) != 0 {
		t.Errorf("after delivering 4 with two gone rows: due = %v", payloads(due))
	}
}

func TestAccountEvents(t *testing.T) {
	ctx := t.Context()
	st := eventsStore(t)
	gen, _ := st.Generation(ctx)
	old := time.Now().Add(-48 * time.Hour)
	var evs []NewAccountEvent
	for i := range 5 {
		evs = append(evs, NewAccountEvent{Account: "alice@example.com", At: old, Event: fmt.Appendf(nil, `{"n":%d}`, i)},
			NewAccountEvent{Account: "bob@example.com", Event: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	seqs, err := st.AppendAccountEvents(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seqs, []int64{1, 1, 2, 2, 3, 3, 4, 4, 5, 5}) {
		t.Errorf("seqs = %v", seqs)
	}
	if seqs, _ = st.AppendAccountEvents(ctx, []NewAccountEvent{{Account: "alice@example.com", Event: []byte(`{"n":5}`)}}); seqs[0] != 6 {
		t.Errorf("next alice seq = %v, want 6", seqs)
	}
	if g, _ := st.Generation(ctx); g != gen {
		t.Errorf("logging events moved Generation: every cache would flush")
	}
	p, err := st.AccountEventsAfter(ctx, "alice@example.com", 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if p.Expired || p.Last != 6 || len(p.Events) != 2 || p.Events[0].Seq != 3 || string(p.Events[1].Event) != `{"n":3}` {
		t.Errorf("after 2, limit 2: %+v", p)
	}
	if p, _ := st.AccountEventsAfter(ctx, "carol@example.com", 0, 10); p.Expired || p.Last != 0 || len(p.Events) != 0 {
		t.Errorf("no events: %+v", p)
	}
	if p, _ := st.AccountEventsAfter(ctx, "alice@example.com", 7, 10); !p.Expired {
		t.Errorf("after a number never handed out: %+v, want Expired", p)
	}
	n, err := st.PruneEvents(ctx, time.Now().Add(-24*time.Hour))
	if err != nil || n != 5 {
		t.Fatalf("PruneEvents = %d, %v; want 5", n, err)
	}
	for _, after := range []int64{0, 4} {
		if p, _ := st.AccountEventsAfter(ctx, "alice@example.com", after, 10); !p.Expired || p.Last != 6 {
			t.Errorf("after %d, below the pruned 5: %+v, want Expired", after, p)
		}
	}
	if p, _ := st.AccountEventsAfter(ctx, "alice@example.com", 5, 10); p.Expired || len(p.Events) != 1 || p.Events[0].Seq != 6 {
		t.Errorf("after 5: %+v", p)
	}
	if p, _ := st.AccountEventsAfter(ctx, "bob@example.com", 0, 10); p.Expired || len(p.Events) != 5 {
		t.Errorf("bob untouched: %+v", p)
	}
	// Numbers never go back, even with every row pruned.
	if _, err := st.PruneEvents(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if seqs, _ = st.AppendAccountEvents(ctx, []NewAccountEvent{{Account: "alice@example.com", Event: []byte(`{}`)}}); seqs[0] != 7 {
		t.Errorf("after pruning all: seq %v, want 7", seqs)
	}
	if _, err := st.AppendAccountEvents(ctx, []NewAccountEvent{{Event: []byte(`{}`)}}); err == nil {
		t.Errorf("an event without account was logged")
	}
}

// BenchmarkRecordEvents: a burst of 100 events, each for two readers and
// one consumer, in one transaction.
func BenchmarkRecordEvents(b *testing.B) {
	st, _ := openTest(b)
	ctx := b.Context()
	for b.Loop() {
		var evs []NewAccountEvent
		var hooks []NewWebhook
		for i := range 100 {
			evs = append(evs, NewAccountEvent{Account: "alice@example.com", Event: []byte(`{"type":"message.added"}`)},
				NewAccountEvent{Account: "bob@example.com", Event: []byte(`{"type":"message.added"}`)})
			hooks = append(hooks, NewWebhook{ConsumerID: 1, Mailbox: fmt.Sprint(i % 5), Payload: []byte(`{}`)})
		}
		if _, err := st.RecordEvents(ctx, evs, hooks); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConsumerEnabled: disabling keeps the outbox and says why (the first
// reason stays); enabling a disabled consumer replaces its outbox with the
// given resync, enabling an enabled one does nothing; the dispatcher's
// DisableConsumer acts once, only for the URL it sent to and only when the
// consumer was not enabled after the attempt started.
func TestConsumerEnabled(t *testing.T) {
	ctx := t.Context()
	st := eventsStore(t)
	a := addConsumer(t, st, "a", "Acme")
	if _, err := st.EnqueueWebhooks(ctx, []NewWebhook{{a.ID, "m1", []byte(`1`)}}); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Hour) // an attempt that started before the consumer existed
	if did, err := st.DisableConsumer(ctx, a.ID, a.URL, before, "stale"); err != nil || did {
		t.Errorf("DisableConsumer for an attempt older than the consumer = %v, %v; want false", did, err)
	}
	if did, err := st.DisableConsumer(ctx, a.ID, "https://elsewhere.example/", time.Now(), "other url"); err != nil || did {
		t.Errorf("DisableConsumer for another URL = %v, %v; want false", did, err)
	}
	did, err := st.DisableConsumer(ctx, a.ID, a.URL, time.Now(), "410 Gone from its URL")
	if err != nil || !did {
		t.Fatalf("DisableConsumer = %v, %v", did, err)
	}
	if did, err := st.DisableConsumer(ctx, a.ID, a.URL, time.Now(), "again"); err != nil || did {
		t.Errorf("second DisableConsumer = %v, %v; want false", did, err)
	}
	if err := st.SetConsumerEnabled(ctx, "a", false, "disabled by an admin", nil); err != nil {
		t.Fatal(err)
	}
	cs, _ := st.Consumers(ctx)
	if cs[0].Enabled || cs[0].DisabledReason != "410 Gone from its URL" || cs[0].Pending != 1 {
		t.Errorf("disabled: %+v", cs[0])
	}
	if due, _ := st.DueWebhooks(ctx, time.Now(), 10); len(due) != 0 {
		t.Errorf("a disabled consumer's webhooks are due: %v", due)
	}
	if err := st.SetConsumerEnabled(ctx, "A", true, "", []byte(`resync`)); err != nil {
		t.Fatal(err)
	}
	if err := st.SetConsumerEnabled(ctx, "a", true, "", []byte(`resync`)); err != nil { // already enabled: no second resync
		t.Fatal(err)
	}
	cs, _ = st.Consumers(ctx)
	due, _ := st.DueWebhooks(ctx, time.Now().Add(time.Second), 10)
	var got []string
	for _, w := range due {
		got = append(got, w.Mailbox+":"+string(w.Payload))
	}
	slices.Sort(got)
	if !cs[0].Enabled || cs[0].DisabledReason != "" || !slices.Equal(got, []string{":resync"}) {
		t.Errorf("enabled: %+v, due %v (want the resync alone)", cs[0], got)
	}
	if did, err := st.DisableConsumer(ctx, a.ID, a.URL, time.Now().Add(-time.Minute), "a 410 from before the enable"); err != nil || did {
		t.Errorf("DisableConsumer for an attempt older than the enable = %v, %v; want false", did, err)
	}
	if err := st.SetConsumerEnabled(ctx, "a", false, "disabled by an admin", nil); err != nil {
		t.Fatal(err)
	}
	if cs, _ := st.Consumers(ctx); cs[0].Enabled || cs[0].DisabledReason != "disabled by an admin" {
		t.Errorf("admin disable: %+v", cs[0])
	}
	if err := st.SetConsumerEnabled(ctx, "nobody", true, "", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown consumer: %v", err)
	}
}

// TestRotateConsumerSecret: the previous secret rides along with the
// outbox rows until its time is up; a rotation without grace drops it; a
// second rotation keeps only the one before it.
func TestRotateConsumerSecret(t *testing.T) {
	ctx := t.Context()
	st := eventsStore(t)
	a := addConsumer(t, st, "a", "Acme")
	if _, err := st.EnqueueWebhooks(ctx, []NewWebhook{{a.ID, "m1", []byte(`1`)}}); err != nil {
		t.Fatal(err)
	}
	head := func() Webhook {
		t.Helper()
		due, err := st.DueWebhooks(ctx, time.Now().Add(time.Second), 10)
		if err != nil || len(due) != 1 {
			t.Fatalf("due: %v, %v", due, err)
		}
		if w, ok, err := st.NextWebhook(ctx, a.ID, "m1", 0, time.Now().Add(time.Second)); err != nil || !ok || w.OldSecret != due[0].OldSecret || w.Secret != due[0].Secret {
			t.Errorf("NextWebhook reads the secrets otherwise than DueWebhooks: %v, %v", ok, err)
		}
		return due[0]
	}
	if w := head(); w.Secret != a.Secret || w.OldSecret != "" {
		t.Fatalf("before: secret %v, old %q", w.Secret == a.Secret, w.OldSecret)
	}
	s1, _ := GenerateWebhookSecret()
	if err := st.RotateConsumerSecret(ctx, "A", s1, time.Hour); err != nil {
		t.Fatal(err)
	}
	w := head()
	if w.Secret != s1 || w.OldSecret != a.Secret || time.Until(w.OldSecretUntil) < 59*time.Minute {
		t.Errorf("after rotate: new %v, old %v, until %v", w.Secret == s1, w.OldSecret == a.Secret, w.OldSecretUntil)
	}
	if cs, _ := st.Consumers(ctx); time.Until(cs[0].OldSecretUntil) < 59*time.Minute {
		t.Errorf("Consumers: old secret until %v", cs[0].OldSecretUntil)
	}
	s2, _ := GenerateWebhookSecret()
	if err := st.RotateConsumerSecret(ctx, "a", s2, time.Hour); err != nil {
		t.Fatal(err)
	}
	if w := head(); w.Secret != s2 || w.OldSecret != s1 {
		t.Errorf("second rotate: the previous secret is not the old one")
	}
	s3, _ := GenerateWebhookSecret()
	if err := st.RotateConsumerSecret(ctx, "a", s3, 0); err != nil {
		t.Fatal(err)
	}
	if w := head(); w.Secret != s3 || w.OldSecret != "" {
		t.Errorf("rotate without grace keeps an old secret")
	}
	if cs, _ := st.Consumers(ctx); !cs[0].OldSecretUntil.IsZero() {
		t.Errorf("Consumers after rotate without grace: %v", cs[0].OldSecretUntil)
	}
	for _, bad := range []struct {
		sec   Secret
		grace time.Duration
		name  string
	}{{"nope", time.Hour, "a"}, {s1, -time.Second, "a"}, {s1, time.Hour, "nobody"}} {
		if err := st.RotateConsumerSecret(ctx, bad.name, bad.sec, bad.grace); err == nil {
			t.Errorf("RotateConsumerSecret(%q, %v): no error", bad.name, bad.grace)
		}
	}
}

// TestAckAfterSeqReuse: SQLite gives a deleted row's seq to the next
// insert, so an acknowledgement held while its delete waits may name
// another consumer's webhook by then: it must not delete that one.
func TestAckAfterSeqReuse(t *testing.T) {
	ctx := t.Context()
	st := eventsStore(t)
	a := addConsumer(t, st, "a", "Acme")
	b := addConsumer(t, st, "b", "Acme")
	if _, err := st.EnqueueWebhooks(ctx, []NewWebhook{{a.ID, "m1", []byte(`A`)}}); err != nil {
		t.Fatal(err)
	}
	due, _ := st.DueWebhooks(ctx, time.Now(), 10)
	held := Ack{due[0].Seq, due[0].ID} // a said 2xx; the delete waits
	if err := st.DelConsumer(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.EnqueueWebhooks(ctx, []NewWebhook{{b.ID, "m9", []byte(`B`)}}); err != nil {
		t.Fatal(err)
	}
	due, _ = st.DueWebhooks(ctx, time.Now().Add(time.Second), 10)
	if len(due) != 1 || due[0].Seq != held.Seq {
		t.Fatalf("SQLite did not reuse seq %d (got %v): the premise of this test changed", held.Seq, due)
	}
	if err := st.MarkDelivered(ctx, held); err != nil {
		t.Fatal(err)
	}
	if due, _ := st.DueWebhooks(ctx, time.Now().Add(time.Second), 10); len(due) != 1 || string(due[0].Payload) != "B" {
		t.Errorf("b's webhook was deleted by a's stale acknowledgement: due %v", due)
	}
}

// TestMailboxStates: the reconciler's bookkeeping round trip, the
// subscription state included, replaced whole per account.
func TestMailboxStates(t *testing.T) {
	ctx := t.Context()
	st := eventsStore(t)
	want := []MailboxState{
		{Mailbox: "INBOX", MailboxID: "i1", UIDValidity: 7, UIDNext: 5, Messages: 4, Unseen: 1, HighestModseq: 1 << 40, Subscribed: 2},
		{Mailbox: "INBOX/Müll", UIDValidity: 8, UIDNext: 1, Subscribed: 1},
		{Mailbox: "INBOX/Old", UIDValidity: 9},
	}
	if err := st.SetMailboxStates(ctx, "alice@example.com", want); err != nil {
		t.Fatal(err)
	}
	if err := st.SetMailboxStates(ctx, "bob@example.com", want[:1]); err != nil {
		t.Fatal(err)
	}
	got, err := st.MailboxStates(ctx, "alice@example.com")
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("MailboxStates = %+v, %v; want %+v", got, err, want)
	}
	if err := st.SetMailboxStates(ctx, "alice@example.com", want[2:]); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.MailboxStates(ctx, "alice@example.com"); !slices.Equal(got, want[2:]) {
		t.Errorf("after replacing: %+v", got)
	}
	if got, _ := st.MailboxStates(ctx, "bob@example.com"); len(got) != 1 {
		t.Errorf("another account's states changed: %+v", got)
	}
}
