package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"cyrus-sidecar/store"
)

// housekeeper keeps the login audit within its retention and watches that
// the store stays readable. It is the first supervised service of serve and
// the model the protocol services follow.
type housekeeper struct {
	cfg atomic.Pointer[AuditConfig]
	st  *store.Store
	log *slog.Logger
}

func newHousekeeper(cfg *Config, st *store.Store, log *slog.Logger) *housekeeper {
	h := &housekeeper{st: st, log: log}
	a := cfg.Audit
	h.cfg.Store(&a)
	return h
}

// Listen has nothing to bind.
func (h *housekeeper) Listen() error { return nil }

// Reload takes the new retention; the next round uses it.
func (h *housekeeper) Reload(cfg *Config) {
	a := cfg.Audit
	h.cfg.Store(&a)
}

// Run prunes at start and then every prune_interval until ctx ends. It
// returns an error, stopping serve (systemd restarts it), when the store
// file was replaced under the process.
func (h *housekeeper) Run(ctx context.Context) error {
	check := time.NewTicker(fileCheckInterval)
	defer check.Stop()
	for {
		if err := h.st.CheckFile(); err != nil {
			return err
		}
		h.round(ctx)
		prune := time.NewTimer(h.cfg.Load().PruneInterval)
	wait:
		for {
			select {
			case <-ctx.Done():
				prune.Stop()
				return nil
			case <-check.C:
				if err := h.st.CheckFile(); err != nil {
					prune.Stop()
					return err
				}
			case <-prune.C:
				break wait
			}
		}
	}
}

// fileCheckInterval is how often the store file's identity is checked: a
// restore by renaming a file over it must stop serve (systemd restarts it)
// before the two files' WAL and shared-memory names get mixed up. Stopping
// serve before a restore is what the docs ask; this is the safety net.
const fileCheckInterval = 5 * time.Second

func (h *housekeeper) round(ctx context.Context) {
	a := h.cfg.Load()
	if err := h.st.Ping(ctx); err != nil {
		if ctx.Err() == nil {
			h.log.Warn("store unreadable", "err", err)
		}
		return
	}
	n, err := h.st.PruneAudit(ctx, time.Now().Add(-a.Retention), a.MaxRows)
	switch {
	case err != nil && ctx.Err() == nil:
		h.log.Warn("audit prune failed", "err", err)
	case n > 0:
		h.log.Info("audit pruned", "deleted", n, "retention", a.Retention.String(), "max_rows", a.MaxRows)
	}
}
