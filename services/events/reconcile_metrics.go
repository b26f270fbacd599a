package events

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/services/listen"
)

var (
	rcAccountsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "reconcile_accounts_total",
		Help: "Accounts reconciled against Cyrus IMAP, by result (ok or error; errors are retried with backoff).",
	}, []string{"result"})
	rcLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "reconcile_account_duration_seconds",
		Help:    "Time of one account's reconcile: IMAP login, LIST-STATUS, publish and save.",
		Buckets: listen.LatencyBuckets,
	})
	rcReported = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "reconcile_reported_total",
		Help: "Mailbox changes the reconciler reported (gaps in Cyrus's events, or first passes).",
	})
	rcOK, rcErr = rcAccountsTotal.WithLabelValues("ok"), rcAccountsTotal.WithLabelValues("error")
)

// observeReconcile counts one account's pass that began at start.
func observeReconcile(start time.Time, reported int, err error) {
	if err != nil {
		rcErr.Inc()
	} else {
		rcOK.Inc()
		rcReported.Add(float64(reported))
	}
	rcLatency.Observe(time.Since(start).Seconds())
}

// Collectors are the reconciler's metrics, with its backlog read at
// scrape time: accounts waiting for a pass, and those failing.
func (r *Reconciler) Collectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Subsystem: "events", Name: name, Help: help}, f)
	}
	return []prometheus.Collector{rcAccountsTotal, rcLatency, rcReported,
		gauge("reconcile_backlog", "Accounts waiting for a reconcile pass (marked dirty or due in the sweep).",
			func() float64 {
				r.mu.Lock()
				defer r.mu.Unlock()
				return float64(len(r.dirty))
			}),
		gauge("reconcile_failing", "Accounts whose last reconcile failed and that wait for a retry.",
			func() float64 {
				r.mu.Lock()
				defer r.mu.Unlock()
				return float64(len(r.retry))
			}),
	}
}
