//go:build integration

package lmtp

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"cyrus-sidecar/services/listen"
)

// metricDelta returns how much counter c has grown since the call.
func metricDelta(c prometheus.Metric) func() float64 {
	value := func() float64 {
		var m dto.Metric
		if err := c.Write(&m); err != nil {
			panic(err)
		}
		return m.GetCounter().GetValue()
	}
	start := value()
	return func() float64 { return value() - start }
}

// cyrusRequest is the shared cyrus_requests_total series for the proxy.
func cyrusRequest(op, result string) prometheus.Metric {
	for _, c := range listen.Collectors() {
		if v, ok := c.(*prometheus.CounterVec); ok {
			if m, err := v.GetMetricWithLabelValues("lmtp", op, result); err == nil {
				return m.(prometheus.Metric)
			}
		}
	}
	panic("no cyrus_requests_total")
}
