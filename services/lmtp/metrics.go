package lmtp

import (
	"errors"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/services/listen"
)

var (
	rcpts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "lmtp", Name: "rcpt_total",
		Help: "RCPT commands answered (callouts included), by result: accepted, unknown (550 5.1.1), disabled (550 5.2.1), not_hosted (550 5.7.1), malformed (553), refused_by_cyrus (a quota check's refusal relayed), deferred (451: store or Cyrus trouble).",
	}, []string{"result"})
	recipients = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "lmtp", Name: "recipients_total",
		Help: "Per-recipient statuses after DATA/BDAT, by result: delivered (Cyrus said 2xx), deferred (4xx, ours or Cyrus's), rejected (5xx).",
	}, []string{"result"})
	deliveryLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: listen.Namespace, Subsystem: "lmtp", Name: "delivery_duration_seconds",
		Help:    "Time from the client's end of data to every recipient's status (what the MTA waits for after its final dot).",
		Buckets: listen.LatencyBuckets,
	})
	receivedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "lmtp", Name: "received_bytes_total",
		Help: "Message bytes taken in (before the relation header is added).",
	})
	cacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "lmtp", Name: "cache_lookups_total",
		Help: "Recipient resolution cache lookups, by result (hit or miss).",
	}, []string{"result"})

	cacheHit, cacheMiss = cacheLookups.WithLabelValues("hit"), cacheLookups.WithLabelValues("miss")
)

// rcptResult is the rcpt_total label of Rcpt's answer.
func rcptResult(err error) string {
	if err == nil {
		return "accepted"
	}
	var e *smtp.SMTPError
	if !errors.As(err, &e) {
		return "deferred"
	}
	switch {
	case e.Code/100 == 2:
		return "accepted"
	case e == errMalformed:
		return "malformed"
	case e == errUnknown:
		return "unknown"
	case e == errDisabled:
		return "disabled"
	case e == errNotHosted:
		return "not_hosted"
	case e.Code/100 == 4 && e.EnhancedCode[1] != 2:
		return "deferred" // ours, or Cyrus unreachable (4.4.x); 4.2.x is Cyrus's quota verdict
	}
	return "refused_by_cyrus"
}

// statusResult is the recipients_total label of a recipient's status.
func statusResult(err error) string {
	code := 250
	var e *smtp.SMTPError
	if errors.As(err, &e) {
		code = e.Code
	} else if err != nil {
		code = 451
	}
	switch code / 100 {
	case 2:
		return "delivered"
	case 5:
		return "rejected"
	}
	return "deferred"
}

// countingStatus counts each status on its way to go-smtp.
type countingStatus struct {
	smtp.StatusCollector
	n int
}

func (c *countingStatus) SetStatus(rcpt string, err error) {
	c.n++
	recipients.WithLabelValues(statusResult(err)).Inc()
	c.StatusCollector.SetStatus(rcpt, err)
}

// observeCyrus records a round trip to lmtpd; err is ours (no verdict).
func observeCyrus(op string, start time.Time, err error) {
	listen.ObserveCyrus("lmtp", op, start, err)
}

// Collectors are the proxy's metrics, for serve to register.
func (s *Service) Collectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Subsystem: "lmtp", Name: name, Help: help}, f)
	}
	return []prometheus.Collector{rcpts, recipients, deliveryLatency, receivedBytes, cacheLookups,
		gauge("cyrus_connections_open", "Connections to Cyrus lmtpd open now (busy, idle and being dialled).",
			func() float64 { return float64(s.up.stats().open) }),
		gauge("cyrus_connections_idle", "Connections to Cyrus lmtpd idle in the pool.",
			func() float64 { return float64(s.up.stats().idle) }),
	}
}
