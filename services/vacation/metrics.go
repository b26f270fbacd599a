package vacation

import (
	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/services/listen"
)

var (
	passes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "vacation", Name: "passes_total",
		Help: "Reconcile passes (after a store change, a timer, or a retry falling due).",
	})
	passLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: listen.Namespace, Subsystem: "vacation", Name: "pass_duration_seconds",
		Help:    "Time of a reconcile pass, its ManageSieve sessions included.",
		Buckets: listen.LatencyBuckets,
	})
	jobResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "vacation", Name: "jobs_total",
		Help: "Addresses brought in step with Cyrus, by action (install or remove) and result (ok or error).",
	}, []string{"action", "result"})
)

// Collectors are the reconciler's metrics, for serve to register.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{passes, passLatency, jobResults,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Subsystem: "vacation", Name: "backlog",
			Help: "Addresses whose last attempt failed and that wait for a retry (their vacation is not in step with Cyrus).",
		}, func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return float64(len(s.retry))
		}),
	}
}
