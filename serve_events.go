package main

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"cyrus-sidecar/services/events"
	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/services/saslauthd"
	"cyrus-sidecar/store"
)

// eventsService adapts the events bridge to serve's service; it keeps the
// token keys its streams accept, reloaded with the configuration.
type eventsService struct {
	*events.Service
	keys   atomic.Pointer[saslauthd.TokenKeys]
	maxTTL atomic.Int64
	log    *slog.Logger
}

func newEventsService(cfg *Config, st *store.Store, canon store.Canon, log *slog.Logger) (*eventsService, error) {
	e := &eventsService{log: log}
	if err := e.loadKeys(cfg); err != nil {
		return nil, fmt.Errorf("events: saslauthd token keys: %w", err)
	}
	network, addr := listen.Split(string(cfg.Cyrus.IMAP))
	file := cfg.Cyrus.AdminPasswordFile
	cy := events.ReconcileCyrus{Network: network, Addr: addr, Admin: cfg.Cyrus.AdminUser,
		Password: func() (string, error) { return readSecretFile(file) }}
	verify := func(token, user, service string, now time.Time) error {
		return saslauthd.VerifyToken(*e.keys.Load(), token, user, service, now, time.Duration(e.maxTTL.Load()))
	}
	svc, err := events.New(cfg.Events, cy, st, canon, verify, log)
	if err != nil {
		return nil, err
	}
	e.Service = svc
	return e, nil
}

// loadKeys takes the single sign-on keys of [saslauthd]: the events stream
// accepts the same tokens, minted for service "events".
func (e *eventsService) loadKeys(cfg *Config) error {
	keys, err := saslauthd.LoadTokenKeys(cfg.Saslauthd.TokenKeys)
	if err != nil {
		return err
	}
	e.keys.Store(&keys)
	e.maxTTL.Store(int64(cfg.Saslauthd.TokenMaxTTL))
	return nil
}

func (e *eventsService) Reload(cfg *Config) {
	if err := e.loadKeys(cfg); err != nil {
		e.log.Error("token keys not reloaded, keeping the running ones", "err", err)
	}
	e.Service.Reload(cfg.Events)
}
