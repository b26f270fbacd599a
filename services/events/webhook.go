package events

// Webhooks in the Standard Webhooks v1 format
// (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md):
// a JSON body {"type", "timestamp", "data"} POSTed with the headers
// webhook-id (the same on every attempt: the consumer's idempotency key),
// webhook-timestamp (this attempt, Unix seconds) and webhook-signature
// ("v1," and the base64 HMAC-SHA256 of "id.timestamp.body" under the
// consumer's secret).

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"cyrus-sidecar/store"
)

// The Standard Webhooks headers.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

const (
	// maxResponseRead is how much of a consumer's answer is read (and
	// discarded) so the connection can be reused; the rest is dropped.
	maxResponseRead = 4 << 10
	// recordTimeout bounds the store write after an attempt, which runs
	// even during shutdown so a finished delivery is not sent again.
	recordTimeout = 5 * time.Second
	// DefaultTolerance is the replay window Standard Webhooks verifiers
	// apply to webhook-timestamp.
	DefaultTolerance = 5 * time.Minute
)

// Verification failures.
var (
	ErrNoSignature  = errors.New("webhook: missing id, timestamp or signature header")
	ErrBadSignature = errors.New("webhook: no signature matches")
	ErrTimestamp    = errors.New("webhook: timestamp outside the tolerance")
)

// ParseSecret decodes a signing secret, "whsec_" and standard base64 (the
// prefix is optional, as the reference libraries accept it).
func ParseSecret(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, store.WebhookSecretPrefix))
	if err != nil || len(key) == 0 {
		return nil, errors.New("webhook secret: not whsec_ and base64")
	}
	return key, nil
}

// Sign returns the webhook-signature value for one attempt: "v1," and the
// base64 HMAC-SHA256 of id, '.', the timestamp in Unix seconds, '.', body.
func Sign(key []byte, id string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write(strconv.AppendInt(nil, ts.Unix(), 10))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Verify checks a received webhook as a consumer should: one of the
// space-separated v1 signatures matches (in constant time) and the
// timestamp is within tolerance of now. It is what our tests and
// docs/events.md's example hold the sender to.
func Verify(key []byte, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, tsText, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	if id == "" || tsText == "" || sigs == "" {
		return ErrNoSignature
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return ErrTimestamp
	}
	t := time.Unix(ts, 0)
	if now.Sub(t) > tolerance || t.Sub(now) > tolerance {
		return ErrTimestamp
	}
	want := []byte(Sign(key, id, t, body))
	for sig := range strings.FieldsSeq(sigs) {
		if hmac.Equal([]byte(sig), want) {
			return nil
		}
	}
	return ErrBadSignature
}

// webhookPayload is the Standard Webhooks body: data is the Event.
type webhookPayload struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

func webhookBody(typ string, at time.Time, data []byte) ([]byte, error) {
	return json.Marshal(webhookPayload{Type: typ, Timestamp: at.UTC(), Data: data})
}

// whKey identifies a webhook ordering queue.
type whKey struct {
	consumer int64
	mailbox  string
}

// runWebhooks sends due webhooks until ctx is cancelled: at most
// WebhookConcurrency at once, WebhookPerConsumer per consumer, and one per
// (consumer, mailbox), which keeps each mailbox's webhooks in order.
//
// The outbox is read in batches (DueWebhooks) only when nothing fetched is
// left to start; after a delivery the same mailbox's next webhook is looked
// up by its key (NextWebhook, one index probe). Reading the due list after
// every attempt made draining n webhooks cost O(n²).
//
// Acknowledged webhooks are deleted by this loop, not by the attempts: every
// acknowledgement that arrived while it was busy goes in one transaction
// (group commit), before the outbox is read again. Until then their seqs
// are held in acked, by sequence number and webhook-id (SQLite hands a
// deleted row's seq to the next insert, so a seq alone could name another
// webhook by then), and a due list never hands out one of them twice.
func (d *Dispatcher) runWebhooks(ctx context.Context) {
	inflight := map[whKey]bool{}
	perConsumer := map[int64]int{}
	var pending []store.Webhook // fetched, due, not yet started
	queued := map[whKey]bool{}  // keys in pending
	acked := map[int64]string{} // delivered, row not yet deleted: seq -> webhook-id
	// Each attempt reports its end here exactly once; the buffer holds
	// every attempt that can be in flight, so reporting never blocks.
	finished := make(chan whDone, 1024)
	n := 0 // attempts in flight
	timer := time.NewTimer(0)
	defer timer.Stop()
	refill := true
	done := func(f whDone) {
		delete(inflight, f.key)
		if perConsumer[f.key.consumer]--; perConsumer[f.key.consumer] <= 0 {
			delete(perConsumer, f.key.consumer)
		}
		n--
		if f.result == attemptGone {
			// Nothing more goes to a consumer that is gone: drop what was
			// fetched for it (the outbox keeps it).
			kept := pending[:0]
			for _, w := range pending {
				if w.ConsumerID == f.key.consumer {
					delete(queued, whKey{w.ConsumerID, w.Mailbox})
					continue
				}
				kept = append(kept, w)
			}
			clear(pending[len(kept):])
			pending = kept
		}
		if f.result != attemptDelivered {
			return
		}
		acked[f.seq] = f.id
		if queued[f.key] {
			return
		}
		w, ok, err := d.st.NextWebhook(ctx, f.key.consumer, f.key.mailbox, f.seq, d.now())
		if err != nil && ctx.Err() == nil {
			d.log.Warn("webhook outbox read failed", "err", err)
		}
		if ok {
			pending = append(pending, w)
			queued[f.key] = true
		}
	}
	for {
		select {
		case <-ctx.Done():
			for ; n > 0; n-- {
				if f := <-finished; f.result == attemptDelivered {
					acked[f.seq] = f.id
				}
			}
			// A delivery that ended is recorded even now, so that it is
			// not sent again after the restart.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
			d.markDelivered(rctx, acked)
			cancel()
			return
		case f := <-finished:
			done(f)
			for more := true; more; { // and every other that has ended meanwhile
				select {
				case f := <-finished:
					done(f)
				default:
					more = false
				}
			}
			d.markDelivered(ctx, acked)
		case <-d.wake:
			refill = true
		case <-timer.C:
			refill = true
			timer.Reset(d.config().Poll)
			// Acknowledgements whose delete failed are retried here too:
			// with maxHeldAcks reached nothing else ends to trigger it, and
			// the queue may stay non-empty (successors are only read).
			d.markDelivered(ctx, acked)
		}
		cfg := d.config()
		limit := min(cfg.WebhookConcurrency, cap(finished))
		if refill && len(pending) == 0 && n < limit {
			refill = false
			// Rows still in acked (their delete failed) are the heads of
			// their mailboxes in the outbox: not due again.
			d.markDelivered(ctx, acked)
			due, err := d.st.DueWebhooks(ctx, d.now(), webhookBatch)
			if err != nil && ctx.Err() == nil {
				d.log.Warn("webhook outbox read failed", "err", err)
				refill = true // the timer tries again
			}
			for _, w := range due {
				k := whKey{w.ConsumerID, w.Mailbox}
				if id, held := acked[w.Seq]; held && id == w.ID {
					continue
				}
				if !inflight[k] && !queued[k] {
					pending = append(pending, w)
					queued[k] = true
				}
			}
			if len(due) == webhookBatch {
				refill = true // more may be due once these are started
			}
		}
		// Start what the limits allow, in fetch order; the rest waits. While
		// acknowledgements cannot be recorded (the store is failing), start
		// nothing more: they would only pile up (each poll retries them).
		if len(acked) >= maxHeldAcks {
			limit = 0
		}
		kept := pending[:0]
		for _, w := range pending {
			k := whKey{w.ConsumerID, w.Mailbox}
			if n >= limit || inflight[k] || perConsumer[k.consumer] >= cfg.WebhookPerConsumer {
				kept = append(kept, w)
				continue
			}
			delete(queued, k)
			inflight[k] = true
			perConsumer[k.consumer]++
			n++
			go func() {
				finished <- whDone{k, w.Seq, w.ID, d.attempt(ctx, cfg, w)}
			}()
		}
		clear(pending[len(kept):])
		pending = kept
	}
}

// whDone is an attempt's end.
type whDone struct {
	key    whKey
	seq    int64
	id     string
	result attemptResult
}

// attemptResult is how an attempt ended.
type attemptResult int

const (
	attemptFailed    attemptResult = iota // retried later, or shutdown
	attemptDelivered                      // the consumer said 2xx
	attemptGone                           // 410 Gone: the consumer was disabled
)

// maxHeldAcks bounds the acknowledgements held while their delete fails.
const maxHeldAcks = 4 * webhookBatch

// markDelivered deletes the acknowledged webhooks in one transaction and
// forgets them. When that fails they stay in acked for the next call (and
// out of the due lists meanwhile); a restart before that sends them again,
// with the same webhook-id.
func (d *Dispatcher) markDelivered(ctx context.Context, acked map[int64]string) {
	if len(acked) == 0 {
		return
	}
	seqs := make([]store.Ack, 0, len(acked))
	for seq, id := range acked {
		seqs = append(seqs, store.Ack{Seq: seq, ID: id})
	}
	if err := d.st.MarkDelivered(ctx, seqs...); err != nil {
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			d.log.Error("webhooks delivered but not recorded: a restart before the next try sends them again", "count", len(seqs), "err", err)
		}
		return
	}
	clear(acked)
}

// attempt makes one delivery attempt and records a failure; it reports
// how it ended (runWebhooks records a delivery).
func (d *Dispatcher) attempt(ctx context.Context, cfg *DeliveryConfig, w store.Webhook) attemptResult {
	now := d.now()
	status, retryAfter, err := d.post(ctx, cfg, w, now)
	if ctx.Err() != nil {
		return attemptFailed // shutdown: unknown outcome, sent again later with the same id
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	log := d.log.With("consumer", w.Consumer, "webhook_id", w.ID, "attempts", w.Attempts+1)
	if err == nil && status >= 200 && status <= 299 {
		d.m.attempts.WithLabelValues("ok").Inc()
		return attemptDelivered
	}
	result := attemptFailed
	d.m.attempts.WithLabelValues("failed").Inc()
	reason := fmt.Sprintf("status %d", status)
	if err != nil {
		reason = err.Error()
	}
	if err == nil && status == http.StatusGone {
		// RFC 9110 §15.5.11: the endpoint is gone, likely for good. Stop
		// sending to it instead of retrying for max_age; its webhooks stay
		// queued for when an admin enables it again (or deletes it).
		// Only the consumer this attempt went to, and only if nobody
		// enabled it (again) since the attempt started: ids are reused.
		why := fmt.Sprintf("410 Gone from its URL at %s", now.UTC().Format(time.RFC3339))
		if did, err := d.st.DisableConsumer(rctx, w.ConsumerID, w.URL, now, why); err != nil {
			log.Error("consumer answered 410 Gone but could not be disabled", "err", err)
		} else if did {
			d.m.disabled.Inc()
			result = attemptGone
			log.Warn("consumer answered 410 Gone: disabled, its webhooks kept; enable it again with cyrus-sidecar consumer enable")
		}
	}
	if now.Sub(w.Created) >= cfg.MaxAge {
		id, dropped, err := d.st.ReplaceWebhookBacklog(rctx, w.ConsumerID, w.Mailbox, resyncBody(w.Payload, now))
		if err != nil {
			log.Error("webhook backlog not replaced", "err", err)
			return result
		}
		d.m.resyncs.Inc()
		log.Warn("webhook undeliverable for max_age: backlog replaced by a resync", "reason", reason,
			"dropped", dropped, "resync_id", id, "max_age", cfg.MaxAge.String())
		return result
	}
	next := now.Add(max(backoff(cfg, w.Attempts+1), min(retryAfter, cfg.RetryMax)))
	log.Info("webhook attempt failed", "reason", reason, "next", next.UTC().Format(time.RFC3339))
	if err := d.st.MarkFailed(rctx, store.Ack{Seq: w.Seq, ID: w.ID}, next, reason); err != nil {
		log.Error("webhook failure not recorded", "err", err)
	}
	return result
}

// post sends w once and returns the status and any Retry-After.
func (d *Dispatcher) post(ctx context.Context, cfg *DeliveryConfig, w store.Webhook, now time.Time) (int, time.Duration, error) {
	key, err := ParseSecret(w.Secret.Reveal())
	if err != nil {
		return 0, 0, err
	}
	sig := Sign(key, w.ID, now, w.Payload)
	if w.OldSecret != "" && now.Before(w.OldSecretUntil) {
		// During a rotation both keys sign, space-separated, the new one
		// first: a receiver with either key accepts the webhook.
		if old, err := ParseSecret(w.OldSecret.Reveal()); err == nil {
			sig += " " + Sign(old, w.ID, now, w.Payload)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(w.Payload))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "cyrus-sidecar")
	req.Header.Set(HeaderID, w.ID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(HeaderSignature, sig)
	resp, err := d.client.Do(req)
	if err != nil {
		// The URL may carry a consumer's key in its query: keep it out of
		// the stored error and the log.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s", cfg.WebhookTimeout)
		}
		return 0, 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseRead)) // best effort, for connection reuse
	return resp.StatusCode, retryAfter(resp.Header.Get("Retry-After"), now), nil
}

// backoff is the pause before attempt number n+1 (n >= 1 failures so far):
// RetryMin doubled per failure, at most RetryMax, with "equal jitter" (half
// fixed, half random) so consumers recovering from an outage are not hit
// by every sender at once.
func backoff(cfg *DeliveryConfig, n int) time.Duration {
	d := cfg.RetryMin
	for i := 1; i < n && d < cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, cfg.RetryMax)
	return d/2 + rand.N(d/2+1)
}

// retryAfter reads a Retry-After header (RFC 9110 §10.2.3: seconds or an
// HTTP date); 0 when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 32); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// ResyncAllBody is the webhook a consumer gets when it is enabled again:
// a resync naming no account or mailbox, which says "sync everything in
// your scope" (what happened while it was disabled was not queued for it).
func ResyncAllBody(now time.Time) []byte {
	data, _ := json.Marshal(Event{Type: TypeResync, Time: now.UTC(), CyrusEvent: "resync"}) // an Event always marshals
	body, _ := webhookBody(TypeResync, now, data)
	return body
}

// resyncBody is the webhook that replaces an undeliverable backlog: a
// resync for the mailbox of the webhook that could not be delivered.
func resyncBody(failed []byte, now time.Time) []byte {
	var p struct {
		Data Event `json:"data"`
	}
	_ = json.Unmarshal(failed, &p) // a resync without names still says "sync everything"
	ev := Event{Type: TypeResync, Account: p.Data.Account, Mailbox: p.Data.Mailbox, MailboxID: p.Data.MailboxID,
		Time: now.UTC(), CyrusEvent: "resync"}
	data, _ := json.Marshal(ev)                   // an Event always marshals
	body, _ := webhookBody(TypeResync, now, data) // so does its envelope
	return body
}
