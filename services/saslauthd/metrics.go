package saslauthd

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/services/listen"
)

// Result labels of requests_total: what the client was told, and why.
const (
	resultOK          = "ok"          // OK
	resultRejected    = "rejected"    // NO: the credentials, the user or the service
	resultUnavailable = "unavailable" // NO: the store or an internal error
	resultOverloaded  = "overloaded"  // NO: no verify worker free in time
	resultMalformed   = "malformed"   // NO: a request or login that can never succeed
)

var (
	requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "saslauthd", Name: "requests_total",
		Help: "Authentication requests answered, by result: ok, rejected (wrong password, unknown or disabled user, service not allowed), unavailable (store trouble), overloaded (verify pool full), malformed.",
	}, []string{"result"})
	latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: listen.Namespace, Subsystem: "saslauthd", Name: "request_duration_seconds",
		Help:    "Time from a whole request to its decision, the failure delay included, by result.",
		Buckets: listen.LatencyBuckets,
	}, []string{"result"})
	cacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "saslauthd", Name: "cache_lookups_total",
		Help: "Verification cache lookups, by result (hit or miss).",
	}, []string{"result"})
	verifyWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: listen.Namespace, Subsystem: "saslauthd", Name: "verify_wait_seconds",
		Help:    "Waits for a verify worker when all were busy (timeouts included; their count is requests_total{result=\"overloaded\"}).",
		Buckets: listen.LatencyBuckets,
	})
	auditDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "saslauthd", Name: "audit_dropped_total",
		Help: "Login audit records dropped because the audit queue was full.",
	})
	delays = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "saslauthd", Name: "failure_delays_total",
		Help: "Requests held back by the failure brake (recent failures for the same login).",
	})

	// Children resolved once: WithLabelValues hashes its labels on every
	// call, a cost the cached-login path should not carry.
	cacheHit, cacheMiss = cacheLookups.WithLabelValues("hit"), cacheLookups.WithLabelValues("miss")
)

// counted pairs a result's counter and histogram.
type counted struct {
	n   prometheus.Counter
	lat prometheus.Observer
}

var results = func() map[string]counted {
	m := map[string]counted{}
	for _, r := range []string{resultOK, resultRejected, resultUnavailable, resultOverloaded, resultMalformed} {
		m[r] = counted{requests.WithLabelValues(r), latency.WithLabelValues(r)}
	}
	return m
}()

// observe counts one answered request that began at start.
func observe(result string, start time.Time) {
	c := results[result]
	c.n.Inc()
	c.lat.Observe(time.Since(start).Seconds())
}

// resultOf is the metrics label of a decision.
func resultOf(r Result) string {
	switch {
	case r.OK:
		return resultOK
	case r.Reason == reasonOverloaded:
		return resultOverloaded
	case r.Reason == reasonStore || r.Reason == reasonInternalError:
		return resultUnavailable
	case r.Reason == reasonMalformed:
		return resultMalformed
	}
	return resultRejected
}

// Collectors are the responder's metrics, for serve to register: the
// package's counters, and gauges read from this Service at scrape time.
func (s *Service) Collectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Subsystem: "saslauthd", Name: name, Help: help}, f)
	}
	return []prometheus.Collector{requests, latency, cacheLookups, verifyWait, auditDropped, delays,
		gauge("verify_busy", "Verify workers busy now (password hashes being checked).",
			func() float64 { return float64(len(s.au.workers)) }),
		gauge("verify_workers", "Verify workers configured (verify_workers).",
			func() float64 { return float64(cap(s.au.workers)) }),
		gauge("cache_entries", "Entries in the verification cache.",
			func() float64 { return float64(s.au.cache.len()) }),
		gauge("failure_brake_tracked", "Logins the failure brake is tracking.",
			func() float64 { return float64(s.lim.len()) }),
	}
}
