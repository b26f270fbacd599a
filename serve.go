package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oklog/run"
	"golang.org/x/sys/unix"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/services/lmtp"
	"cyrus-sidecar/services/saslauthd"
	"cyrus-sidecar/services/socketmap"
	"cyrus-sidecar/services/vacation"
	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// service is what every supervised part of serve implements (STYLE.md §2):
// Listen binds before READY=1 so a bad address fails the start, Run serves
// until ctx is cancelled and drains within the grace period, Reload takes a
// new validated configuration.
type service interface {
	Listen() error
	Run(ctx context.Context) error
	Reload(cfg *Config)
}

type named struct {
	name string
	svc  service
}

func cmdServe(args []string, std stdio, getenv func(string) string) error {
	c := newCommand("serve", "serve [-config FILE]", std, getenv)
	pos, err := c.parse(args)
	if err != nil {
		return err
	}
	if err := c.want(pos, 0, 0, "no arguments"); err != nil {
		return err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	path := configPath(*c.config, getenv, systemConfigPath)
	cfg, err := loadConfig(path, getenv, cwd)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	level.Set(slog.Level(cfg.Log.Level))
	log := newLogger(std.err, cfg.Log.Format, level)
	sd := newNotifier(getenv("NOTIFY_SOCKET"), log)
	return serve(cfg, path, log, level, sd, getenv, cwd)
}

func newLogger(w interface{ Write([]byte) (int, error) }, format string, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// serve runs the services until SIGINT or SIGTERM, reloading on SIGHUP.
func serve(cfg *Config, path string, log *slog.Logger, level *slog.LevelVar, sd *notifier, getenv func(string) string, cwd string) error {
	source := path
	if source == "" {
		source = "built-in defaults"
	}
	if getenv("GOMEMLIMIT") == "" {
		// A soft heap limit: argon2id allocates a fresh buffer per verify
		// (19 MiB by default), and the default GC pacing lets the heap
		// double before collecting. GOMEMLIMIT in the environment wins.
		debug.SetMemoryLimit(softMemoryLimit)
	}
	log.Info("starting", "version", version(), "config", source, "store", cfg.Store.Path,
		"state_dir", cfg.StateDir, "runtime_dir", cfg.RuntimeDir, "default_domain", cfg.Cyrus.DefaultDomain)
	st, err := store.Open(context.Background(), cfg.Store.Path,
		store.Options{MaxReaders: cfg.Store.MaxReaders, BusyTimeout: cfg.Store.BusyTimeout})
	if err != nil {
		return err
	}
	defer st.Close()
	// After the store, whose directory (often the runtime directory's
	// parent, ./var) must be created private first.
	if err := os.MkdirAll(cfg.RuntimeDir, 0o755); err != nil {
		return fmt.Errorf("runtime directory: %w", err)
	}

	var current atomic.Pointer[Config]
	current.Store(cfg)
	canon, err := cfg.Canon()
	if err != nil {
		return err
	}
	services := []named{
		{"audit", newHousekeeper(cfg, st, log.With("service", "audit"))},
		// The saslauthd, lmtp and vacation services join here as their
		// issues land.
	}
	if cfg.Saslauthd.Enabled {
		svc, err := newSaslauthdService(cfg, st, canon, log.With("service", "saslauthd"), &current)
		if err != nil {
			return err
		}
		services = append(services, named{"saslauthd", svc})
	}
	if cfg.LMTP.Enabled {
		services = append(services, named{"lmtp", &lmtpService{
			lmtp.New(cfg.LMTP, string(cfg.Cyrus.LMTP), st, canon, log.With("service", "lmtp")), &current}})
	}
	if cfg.Socketmap.Enabled {
		services = append(services, named{"socketmap", &socketmapService{
			socketmap.New(cfg.Socketmap, st, canon, log.With("service", "socketmap")), &current}})
	}

	if cfg.Vacation.Enabled {
		services = append(services, named{"vacation", newVacationService(cfg, st, canon, log.With("service", "vacation"))})
	}
	if cfg.Events.Enabled {
		svc, err := newEventsService(cfg, st, canon, log.With("service", "events"))
		if err != nil {
			return err
		}
		services = append(services, named{"events", svc})
	}
	if h, err := newHTTPService(cfg, services, st, log.With("service", "http")); err != nil {
		return fmt.Errorf("http: %w", err)
	} else if h != nil {
		services = append(services, named{"http", h})
	}

	var g run.Group
	g.Add(stopOnSignal(syscall.SIGINT, syscall.SIGTERM))
	g.Add(reloadOnHUP(log, sd, func() {
		next, err := loadConfig(path, getenv, cwd)
		if err != nil {
			log.Error("reload failed, keeping the running configuration", "err", err)
			return
		}
		warnRestart(log, current.Load(), next)
		level.Set(slog.Level(next.Log.Level))
		for _, s := range services {
			s.svc.Reload(next)
		}
		current.Store(next)
		log.Info("configuration reloaded", "config", source)
	}))
	if err := useActivation(log, getenv, services); err != nil {
		return err
	}
	// running counts the services whose Run has not returned, for the
	// watchdog's self-check.
	var running atomic.Int32
	for _, s := range services {
		if err := s.svc.Listen(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		running.Add(1)
		g.Add(func() error {
			defer running.Add(-1)
			if err := s.svc.Run(ctx); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: stopped unexpectedly", s.name)
		}, func(error) { cancel() })
	}

	// The last actor only notices the group stopping, so that the wait
	// below can bound the drain by shutdown_grace.
	stopping := make(chan struct{})
	stopCtx, stopCancel := context.WithCancel(context.Background())
	g.Add(func() error { <-stopCtx.Done(); return nil }, func(error) {
		sd.notify("STOPPING=1")
		close(stopping)
		stopCancel()
	})

	if every := watchdogInterval(getenv); every > 0 {
		n := int32(len(services))
		check := func(ctx context.Context) error {
			if r := running.Load(); r != n {
				return fmt.Errorf("%d of %d services have stopped", n-r, n)
			}
			_, err := st.Generation(ctx)
			return err
		}
		ctx, cancel := context.WithCancel(context.Background())
		g.Add(func() error { sd.watchdog(ctx, every, check); return nil }, func(error) { cancel() })
		log.Info("watchdog enabled", "ping_every", every.String())
	}

	sd.notify("READY=1")
	log.Info("ready", "services", len(services))
	done := make(chan error, 1)
	go func() { done <- g.Run() }()
	select {
	case err = <-done:
	case <-stopping:
		grace := current.Load().Serve.ShutdownGrace
		select {
		case err = <-done:
		case <-time.After(grace + drainSlack):
			return fmt.Errorf("services still running %s after shutdown began (serve.shutdown_grace)", grace)
		}
	}
	if _, ok := errors.AsType[run.SignalError](err); ok {
		log.Info("stopped on signal", "signal", err.Error())
		return nil
	}
	return err
}

// useActivation gives each service the sockets systemd passed under its
// name (socket activation); those services do not bind their configured
// addresses. Sockets under a name no enabled service has are logged and
// closed.
func useActivation(log *slog.Logger, getenv func(string) string, services []named) error {
	passed, err := listenFDs(getenv)
	if err != nil {
		return err
	}
	for _, s := range services {
		if lns := passed.streams[s.name]; len(lns) > 0 {
			if u, ok := s.svc.(interface{ UseListeners([]net.Listener) }); ok {
				delete(passed.streams, s.name)
				for _, ln := range lns {
					log.Info("listening on a socket from systemd", "service", s.name, "addr", ln.Addr().String())
				}
				u.UseListeners(lns)
			}
		}
		if pcs := passed.dgrams[s.name]; len(pcs) > 0 {
			if u, ok := s.svc.(interface{ UsePacketConns([]net.PacketConn) error }); ok {
				delete(passed.dgrams, s.name)
				for _, pc := range pcs {
					log.Info("receiving on a socket from systemd", "service", s.name, "addr", pc.LocalAddr().String())
				}
				if err := u.UsePacketConns(pcs); err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
			}
		}
	}
	for _, name := range passed.names() {
		var addrs []net.Addr
		for _, ln := range passed.streams[name] {
			addrs = append(addrs, ln.Addr())
		}
		for _, pc := range passed.dgrams[name] {
			addrs = append(addrs, pc.LocalAddr())
		}
		for _, a := range addrs {
			log.Warn("closing a socket from systemd that no enabled service uses (FileDescriptorName= must be one of "+
				strings.Join(activationNames, ", ")+")", "name", name, "addr", a.String())
		}
		passed.close(name)
	}
	return nil
}

// softMemoryLimit keeps the heap of a busy responder near its live size;
// see the README's note on memory.
const softMemoryLimit = 64 << 20

// drainSlack is what serve allows beyond shutdown_grace for the services
// to notice it and close what is left (a quota check may still run its
// timeout of a few seconds).
const drainSlack = 5 * time.Second

// socketmapService adapts the socketmap responder to serve's service.
type socketmapService struct {
	*socketmap.Service
	cfg *atomic.Pointer[Config]
}

func (s *socketmapService) Run(ctx context.Context) error {
	// The grace of the configuration current when the drain begins, as
	// serve's own wait uses; a reload may have changed it since the start.
	return s.Service.Run(ctx, func() time.Duration { return s.cfg.Load().Serve.ShutdownGrace })
}

func (s *socketmapService) Reload(cfg *Config) { s.Service.Reload(cfg.Socketmap) }

// lmtpService adapts the LMTP proxy to serve's service.
type lmtpService struct {
	*lmtp.Service
	cfg *atomic.Pointer[Config]
}

func (s *lmtpService) Run(ctx context.Context) error {
	return s.Service.Run(ctx, func() time.Duration { return s.cfg.Load().Serve.ShutdownGrace })
}

func (s *lmtpService) Reload(cfg *Config) { s.Service.Reload(cfg.LMTP) }

// vacationService adapts the vacation reconciler to serve's service.
type vacationService struct{ *vacation.Service }

func newVacationService(cfg *Config, st *store.Store, canon store.Canon, log *slog.Logger) vacationService {
	network, addr := listen.Split(string(cfg.Cyrus.ManageSieve))
	relation := ""
	if cfg.LMTP.Enabled {
		relation = cfg.LMTP.RelationHeader
	}
	file := cfg.Cyrus.AdminPasswordFile
	return vacationService{vacation.New(cfg.Vacation, vacation.Cyrus{
		Network: network, Addr: addr, Admin: cfg.Cyrus.AdminUser, Relation: relation,
		Password: func() (string, error) { return readSecretFile(file) },
	}, st, canon, log)}
}

func (s vacationService) Reload(cfg *Config) { s.Service.Reload(cfg.Vacation) }

// readSecretFile reads a one-line secret, without its line end.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// saslauthdService adapts the saslauthd responder to serve's service; it
// loads the token keys at start and on every reload.
type saslauthdService struct {
	*saslauthd.Service
	cfg *atomic.Pointer[Config]
	log *slog.Logger
}

func newSaslauthdService(cfg *Config, st *store.Store, canon store.Canon, log *slog.Logger, current *atomic.Pointer[Config]) (*saslauthdService, error) {
	keys, err := saslauthd.LoadTokenKeys(cfg.Saslauthd.TokenKeys)
	if err != nil {
		return nil, fmt.Errorf("saslauthd token keys: %w", err)
	}
	h, err := password.New(cfg.Password.Params())
	if err != nil {
		return nil, err
	}
	return &saslauthdService{saslauthd.New(cfg.Saslauthd, keys, st, canon, h, log), current, log}, nil
}

func (s *saslauthdService) Run(ctx context.Context) error {
	return s.Service.Run(ctx, s.cfg.Load().Serve.ShutdownGrace)
}

func (s *saslauthdService) Reload(cfg *Config) {
	keys, err := saslauthd.LoadTokenKeys(cfg.Saslauthd.TokenKeys)
	if err != nil {
		// Keep serving with the keys we have: a bad key file must not
		// log everybody out.
		s.log.Error("token keys not reloaded, keeping the running ones", "err", err)
		return
	}
	s.Service.Reload(cfg.Saslauthd, keys)
}

// stopOnSignal is run.SignalHandler with the handler installed at once, not
// when the group starts: READY=1 goes out before g.Run, and a SIGTERM that
// follows it must already be caught.
func stopOnSignal(sigs ...os.Signal) (func() error, func(error)) {
	ctx, cancel := context.WithCancel(context.Background())
	c := make(chan os.Signal, 1)
	signal.Notify(c, sigs...)
	return func() error {
			defer signal.Stop(c)
			select {
			case sig := <-c:
				return run.SignalError{Signal: sig}
			case <-ctx.Done():
				return nil
			}
		}, func(error) {
			cancel()
		}
}

// reloadOnHUP is a run.Group actor calling apply on every SIGHUP, framed by
// the RELOADING=1 / READY=1 notifications systemd's Type=notify-reload
// expects.
func reloadOnHUP(log *slog.Logger, sd *notifier, apply func()) (func() error, func(error)) {
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return func() error {
			defer signal.Stop(hup)
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-hup:
					log.Info("reloading on SIGHUP")
					sd.notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
					apply()
					sd.notify("READY=1")
				}
			}
		}, func(error) {
			cancel()
		}
}

// warnRestart logs the settings a reload cannot apply to a running process.
func warnRestart(log *slog.Logger, old, next *Config) {
	type kv struct {
		key      string
		old, new any
	}
	for _, d := range []kv{
		{"store.path", old.Store.Path, next.Store.Path},
		{"store.max_readers", old.Store.MaxReaders, next.Store.MaxReaders},
		{"store.busy_timeout", old.Store.BusyTimeout, next.Store.BusyTimeout},
		{"cyrus.default_domain", old.Cyrus.DefaultDomain, next.Cyrus.DefaultDomain},
		{"cyrus.detail_separator", old.Cyrus.DetailSeparator, next.Cyrus.DetailSeparator},
		{"cyrus.lmtp", old.Cyrus.LMTP, next.Cyrus.LMTP},
		{"cyrus.managesieve", old.Cyrus.ManageSieve, next.Cyrus.ManageSieve},
		{"cyrus.admin_user", old.Cyrus.AdminUser, next.Cyrus.AdminUser},
		{"cyrus.admin_password_file", old.Cyrus.AdminPasswordFile, next.Cyrus.AdminPasswordFile},
		{"password", old.Password, next.Password},
		{"saslauthd.enabled", old.Saslauthd.Enabled, next.Saslauthd.Enabled},
		{"lmtp.enabled", old.LMTP.Enabled, next.LMTP.Enabled},
		{"socketmap.enabled", old.Socketmap.Enabled, next.Socketmap.Enabled},
		{"vacation.enabled", old.Vacation.Enabled, next.Vacation.Enabled},
		{"events.enabled", old.Events.Enabled, next.Events.Enabled},
		{"cyrus.imap", old.Cyrus.IMAP, next.Cyrus.IMAP},
		{"metrics.enabled", old.Metrics.Enabled, next.Metrics.Enabled},
		{"http.listen", old.HTTP.Listen, next.HTTP.Listen},
	} {
		if d.old != d.new {
			log.Warn("restart required for a changed setting", "key", d.key, "running", d.old, "file", d.new)
		}
	}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, for MONOTONIC_USEC.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1e3
}
