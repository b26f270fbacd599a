package socketmap

import (
	"bytes"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/services/listen"
)

// The map label is the map's role, not its configured name, so that the
// label set stays bounded whatever clients ask for.
var mapKinds = [...]string{"mailbox", "domain", "alias", "sender_login", "unknown"}

var statuses = [...]string{statusOK, statusNotFound, statusTemp, statusPerm}

var (
	requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "socketmap", Name: "requests_total",
		Help: "Requests answered, by map (its role: mailbox, domain, alias, sender_login, or unknown) and status (OK, NOTFOUND, TEMP, PERM).",
	}, []string{"map", "status"})
	latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: listen.Namespace, Subsystem: "socketmap", Name: "request_duration_seconds",
		Help:    "Time from a whole request to its answer, by map.",
		Buckets: listen.LatencyBuckets,
	}, []string{"map"})
	cacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "socketmap", Name: "cache_lookups_total",
		Help: "Answer cache lookups, by result (hit or miss).",
	}, []string{"result"})
	badFraming = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "socketmap", Name: "bad_requests_total",
		Help: "Requests with bad netstring framing (answered PERM, connection closed).",
	})

	cacheHit, cacheMiss = cacheLookups.WithLabelValues("hit"), cacheLookups.WithLabelValues("miss")

	// Children resolved once, indexed like mapKinds and statuses: the hot
	// path must not hash label values per request.
	requestsBy [len(mapKinds)][len(statuses)]prometheus.Counter
	latencyBy  [len(mapKinds)]prometheus.Observer
)

func init() {
	for i, m := range mapKinds {
		latencyBy[i] = latency.WithLabelValues(m)
		for j, st := range statuses {
			requestsBy[i][j] = requests.WithLabelValues(m, st)
		}
	}
}

// observe counts one answered request that began at start.
func observe(cfg *Config, req []byte, status string, start time.Time) {
	name, _, _ := bytes.Cut(req, []byte(" "))
	m := len(mapKinds) - 1
	for i, n := range [...]string{cfg.Maps.Mailbox, cfg.Maps.Domain, cfg.Maps.Alias, cfg.Maps.SenderLogin} {
		if string(name) == n {
			m = i
			break
		}
	}
	st := len(statuses) - 1
	for i, s := range statuses {
		if s == status {
			st = i
			break
		}
	}
	requestsBy[m][st].Inc()
	latencyBy[m].Observe(time.Since(start).Seconds())
}

// Collectors are the responder's metrics, for serve to register.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{requests, latency, cacheLookups, badFraming,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Subsystem: "socketmap", Name: "cache_entries",
			Help: "Answers in the cache (emptied on every store change).",
		}, func() float64 { return float64(s.cache.len()) }),
	}
}
