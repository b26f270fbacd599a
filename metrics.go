package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/store"
)

// metricsService serves the Prometheus page on [metrics] listen. The
// library writes the exposition format (escaping, histogram series,
// content negotiation), which we would otherwise get subtly wrong.
type metricsService struct {
	cfg *Config
	reg *prometheus.Registry
	log *slog.Logger
	ln  net.Listener
}

// newMetricsService registers the collectors of every service that has
// some, the shared ones, the store's health and the Go runtime's.
func newMetricsService(cfg *Config, services []named, st *store.Store, log *slog.Logger) (*metricsService, error) {
	reg := prometheus.NewRegistry()
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Name: "build_info", Help: "Always 1; the version is a label.",
			ConstLabels: prometheus.Labels{"version": version()},
		}, func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Name: "store_up",
			Help: "1 when the store answered a read within a second at scrape time, else 0.",
		}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if _, err := st.Generation(ctx); err != nil {
				return 0
			}
			return 1
		}),
	}
	cs = append(cs, listen.Collectors()...)
	for _, s := range services {
		if c, ok := s.svc.(interface{ Collectors() []prometheus.Collector }); ok {
			cs = append(cs, c.Collectors()...)
		}
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return &metricsService{cfg: cfg, reg: reg, log: log}, nil
}

func (m *metricsService) Listen() error {
	ln, err := listen.Listen(string(m.cfg.Metrics.Listen), listen.Options{Mode: 0o660})
	if err != nil {
		return err
	}
	m.ln = ln
	m.log.Info("listening", "addr", string(m.cfg.Metrics.Listen))
	return nil
}

func (m *metricsService) Run(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
		MaxRequestsInFlight: 4, // a scrape is cheap, a flood of them is not
		Timeout:             10 * time.Second,
	}))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(m.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Reload has nothing to apply: the address and the switch need a restart
// (warnRestart says so).
func (m *metricsService) Reload(*Config) {}
