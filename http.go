package main

import (
	"context"
	"errors"
	"fmt"
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

// httpService is the one HTTP listener ([http] listen): the metrics page
// and, as they are enabled, the other HTTP endpoints. Each registers its
// routes on mux before Listen.
type httpService struct {
	cfg *Config
	mux *http.ServeMux
	log *slog.Logger
	ln  net.Listener
}

// newHTTPService returns nil when nothing is served over HTTP.
func newHTTPService(cfg *Config, services []named, st *store.Store, log *slog.Logger) (*httpService, error) {
	h := &httpService{cfg: cfg, mux: http.NewServeMux(), log: log}
	routes := 0
	if cfg.Metrics.Enabled {
		reg, err := metricsRegistry(services, st)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		// The library writes the exposition format (escaping, histogram
		// series, content negotiation), which we would otherwise get
		// subtly wrong.
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
			MaxRequestsInFlight: 4, // a scrape is cheap, a flood of them is not
			Timeout:             10 * time.Second,
		}))
		routes++
	}
	for _, s := range services {
		if r, ok := s.svc.(interface{ Routes(mux *http.ServeMux) }); ok {
			r.Routes(h.mux)
			routes++
		}
	}
	if routes == 0 {
		return nil, nil
	}
	return h, nil
}

// metricsRegistry registers the collectors of every service that has
// some, the shared ones, the store's health and the Go runtime's.
func metricsRegistry(services []named, st *store.Store) (*prometheus.Registry, error) {
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
	return reg, nil
}

func (h *httpService) Listen() error {
	ln, err := listen.Listen(string(h.cfg.HTTP.Listen), listen.Options{Mode: 0o660})
	if err != nil {
		return err
	}
	h.ln = ln
	h.log.Info("listening", "addr", string(h.cfg.HTTP.Listen))
	return nil
}

func (h *httpService) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           h.mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// No WriteTimeout: an event stream stays open for hours; each
		// handler bounds its own writes.
		IdleTimeout:    time.Minute,
		MaxHeaderBytes: 8 << 10,
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
		BaseContext:    func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(h.ln) }()
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

// Reload has nothing to apply: the address and the switches need a
// restart (warnRestart says so).
func (h *httpService) Reload(*Config) {}
