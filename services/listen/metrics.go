package listen

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every metric name.
const Namespace = "cyrus_sidecar"

// LatencyBuckets (seconds) span a cached answer (tens of µs) to a Cyrus
// round trip at its timeout; Prometheus's default buckets start at 5 ms,
// above most of our answers.
var LatencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// The collectors are package-level and registered by serve only when the
// metrics listener is on; updating one that is not registered costs an
// atomic add, so the services update them unconditionally.
var (
	connsAccepted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_total",
		Help: "Client connections accepted, by service.",
	}, []string{"service"})
	connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_refused_total",
		Help: "Client connections refused at max_connections with the protocol's try-later answer, by service.",
	}, []string{"service"})
	connsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "connections_open",
		Help: "Client connections open now, by service.",
	}, []string{"service"})
	connsDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_dropped_total",
		Help: "Client connections closed because the shutdown grace ran out, by service.",
	}, []string{"service"})
	cyrusRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "cyrus_requests_total",
		Help: "Round trips to Cyrus (lmtp: LMTP deliveries and quota checks; socketmap: smmapd quota checks; vacation: ManageSieve sessions), by service, operation and result (ok or error: Cyrus unreachable, timed out or answered garbage).",
	}, []string{"service", "op", "result"})
	cyrusLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "cyrus_request_duration_seconds",
		Help:    "Time of a round trip to Cyrus, by service and operation.",
		Buckets: LatencyBuckets,
	}, []string{"service", "op"})
)

// Collectors are the shared metrics, for serve to register.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{connsAccepted, connsRefused, connsOpen, connsDropped, cyrusRequests, cyrusLatency}
}

// ObserveCyrus records one round trip to Cyrus that began at start; err
// is our failure to get an answer, not a refusal Cyrus answered.
func ObserveCyrus(service, op string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	cyrusRequests.WithLabelValues(service, op, result).Inc()
	cyrusLatency.WithLabelValues(service, op).Observe(time.Since(start).Seconds())
}
