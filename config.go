package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"cyrus-sidecar/services/events"
	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/services/lmtp"
	"cyrus-sidecar/services/saslauthd"
	"cyrus-sidecar/services/socketmap"
	"cyrus-sidecar/services/vacation"
	"cyrus-sidecar/store"
	"cyrus-sidecar/store/password"
)

// systemConfigPath is read when neither -config nor $CYRUS_SIDECAR_CONFIG
// names a file and it exists.
const systemConfigPath = "/etc/cyrus-sidecar/config.toml"

// Config is the whole TOML file: one section per concern. config.example.toml
// documents every key; a test keeps the two in step.
type Config struct {
	Store    StoreConfig    `toml:"store"`
	Cyrus    CyrusConfig    `toml:"cyrus"`
	Password PasswordConfig `toml:"password"`
	Log      LogConfig      `toml:"log"`
	Serve    ServeConfig    `toml:"serve"`
	Audit    AuditConfig    `toml:"audit"`
	HTTP     HTTPConfig     `toml:"http"`
	Metrics  MetricsConfig  `toml:"metrics"`

	Saslauthd saslauthd.Config `toml:"saslauthd"`
	LMTP      lmtp.Config      `toml:"lmtp"`
	Socketmap socketmap.Config `toml:"socketmap"`
	Vacation  vacation.Config  `toml:"vacation"`
	Events    events.Config    `toml:"events"`

	// Where defaults put state and sockets: systemd's StateDirectory and
	// RuntimeDirectory, else ./var and ./var/run. Not keys: the environment.
	StateDir   string `toml:"-"`
	RuntimeDir string `toml:"-"`
}

// StoreConfig is [store].
type StoreConfig struct {
	Path        string        `toml:"path"`
	BusyTimeout time.Duration `toml:"busy_timeout"`
	MaxReaders  int           `toml:"max_readers"`
}

// CyrusConfig is [cyrus]: the Cyrus installation we sit beside.
type CyrusConfig struct {
	DefaultDomain     string `toml:"default_domain"`
	DetailSeparator   string `toml:"detail_separator"`
	LMTP              Addr   `toml:"lmtp"`
	IMAP              Addr   `toml:"imap"`
	ManageSieve       Addr   `toml:"managesieve"`
	AdminUser         string `toml:"admin_user"`
	AdminPasswordFile string `toml:"admin_password_file"`
}

// PasswordConfig is [password]: argon2id parameters for new hashes.
type PasswordConfig struct {
	Time      uint32 `toml:"time"`
	MemoryKiB uint32 `toml:"memory_kib"`
	Threads   uint8  `toml:"threads"`
}

// Params converts to the password package's parameters.
func (p PasswordConfig) Params() password.Params {
	return password.Params{Time: p.Time, MemoryKiB: p.MemoryKiB, Threads: p.Threads}
}

// LogConfig is [log].
type LogConfig struct {
	Level  LogLevel `toml:"level"`
	Format string   `toml:"format"`
}

// LogLevel is slog.Level with an error message that lists the choices.
type LogLevel slog.Level

// UnmarshalText accepts debug, info, warn and error.
func (l *LogLevel) UnmarshalText(b []byte) error {
	var v slog.Level
	if err := v.UnmarshalText(b); err != nil {
		return fmt.Errorf("must be \"debug\", \"info\", \"warn\" or \"error\", got %q", b)
	}
	*l = LogLevel(v)
	return nil
}

// ServeConfig is [serve]: the process as a whole.
type ServeConfig struct {
	ShutdownGrace time.Duration `toml:"shutdown_grace"`
}

// AuditConfig is [audit]: the login audit's retention.
type AuditConfig struct {
	Retention     time.Duration `toml:"retention"`
	MaxRows       int           `toml:"max_rows"`
	PruneInterval time.Duration `toml:"prune_interval"`
}

// HTTPConfig is [http]: the one HTTP listener, for the metrics page and
// the events stream. It binds only when one of them is enabled.
type HTTPConfig struct {
	Listen Addr `toml:"listen"`
	// AllowRemote lets listen be a non-loopback address. The metrics page
	// names no user, but it tells whoever reaches it how busy every
	// service is and when logins fail.
	AllowRemote bool `toml:"allow_remote"`
}

// MetricsConfig is [metrics]: the Prometheus page at /metrics, off by
// default.
type MetricsConfig struct {
	Enabled bool `toml:"enabled"`
}

// Addr is a listen or connect address: "unix:/absolute/path" or "host:port".
type Addr string

// check explains what is wrong with a, or returns "".
func (a Addr) check() string { return listen.Check(string(a)) }

// defaultConfig is the configuration without a file. getenv is os.Getenv in
// production; cwd anchors ./var.
func defaultConfig(getenv func(string) string, cwd string) *Config {
	state := firstDir(getenv("STATE_DIRECTORY"))
	if state == "" {
		state = filepath.Join(cwd, "var")
	}
	runtime := firstDir(getenv("RUNTIME_DIRECTORY"))
	if runtime == "" {
		runtime = filepath.Join(cwd, "var", "run")
	}
	p := password.DefaultParams()
	return &Config{
		StateDir:   state,
		RuntimeDir: runtime,
		Store: StoreConfig{
			Path:        filepath.Join(state, "store.db"),
			BusyTimeout: 5 * time.Second,
			MaxReaders:  4,
		},
		Cyrus: CyrusConfig{
			DetailSeparator:   "+",
			LMTP:              "unix:/run/cyrus/socket/lmtp",
			IMAP:              "127.0.0.1:143",
			ManageSieve:       "127.0.0.1:4190",
			AdminUser:         "cyrus-sidecar",
			AdminPasswordFile: "/etc/cyrus-sidecar/admin.secret",
		},
		Password: PasswordConfig{Time: p.Time, MemoryKiB: p.MemoryKiB, Threads: p.Threads},
		Log:      LogConfig{Level: LogLevel(slog.LevelInfo), Format: "json"},
		Serve:    ServeConfig{ShutdownGrace: 10 * time.Second},
		Audit:    AuditConfig{Retention: 90 * 24 * time.Hour, MaxRows: 1_000_000, PruneInterval: time.Hour},
		HTTP:     HTTPConfig{Listen: "127.0.0.1:9325"},

		Saslauthd: saslauthd.DefaultConfig(runtime),
		LMTP:      lmtp.DefaultConfig(),
		Socketmap: socketmap.DefaultConfig(runtime),
		Vacation:  vacation.DefaultConfig(),
		Events:    events.DefaultConfig(runtime),
	}
}

// firstDir takes the first of systemd's colon-separated directory list.
func firstDir(s string) string {
	first, _, _ := strings.Cut(s, ":")
	return first
}

// configPath picks the file: the -config flag, else $CYRUS_SIDECAR_CONFIG,
// else the system file when it exists, else none (built-in defaults).
func configPath(flagValue string, getenv func(string) string, system string) string {
	if flagValue != "" {
		return flagValue
	}
	if p := getenv("CYRUS_SIDECAR_CONFIG"); p != "" {
		return p
	}
	if _, err := os.Stat(system); err == nil {
		return system
	}
	return ""
}

// loadConfig reads and validates path over the defaults ("" = defaults only).
// Every problem is reported at once, one per line, each naming the file and
// the key.
func loadConfig(path string, getenv func(string) string, cwd string) (*Config, error) {
	cfg := defaultConfig(getenv, cwd)
	if path == "" {
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("built-in defaults: %w", err)
		}
		return cfg, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("config file %s does not exist (copy config.example.toml there, or pass -config)", path)
		}
		return nil, err // *fs.PathError names the file
	}
	var m map[string]any
	if _, err := toml.Decode(string(data), &m); err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("%s:%d: %s", path, perr.Position.Line, perr.Message)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	errs := decodeInto(m, cfg)
	errs = append(errs, cfg.validate()...)
	if len(errs) > 0 {
		lines := make([]string, len(errs))
		for i, e := range errs {
			lines[i] = path + ": " + e.Error()
		}
		return nil, errors.New(strings.Join(lines, "\n"))
	}
	return cfg, nil
}

// Validate checks values that decoded but make no sense.
func (c *Config) Validate() error {
	errs := c.validate()
	if len(errs) == 0 {
		return nil
	}
	var out []error
	for _, e := range errs {
		out = append(out, e)
	}
	return errors.Join(out...)
}

func (c *Config) validate() []fieldError {
	var errs []fieldError
	bad := func(key, format string, args ...any) {
		errs = append(errs, fieldError{key, fmt.Sprintf(format, args...)})
	}
	if !filepath.IsAbs(c.Store.Path) {
		bad("store.path", "must be an absolute path, got %q", c.Store.Path)
	} else if strings.ContainsAny(c.Store.Path, "?#") {
		bad("store.path", "must not contain '?' or '#', got %q", c.Store.Path)
	}
	if c.Store.BusyTimeout < 10*time.Millisecond || c.Store.BusyTimeout > time.Minute {
		bad("store.busy_timeout", "must be between 10ms and 1m, got %s", c.Store.BusyTimeout)
	}
	if c.Store.MaxReaders < 1 || c.Store.MaxReaders > 64 {
		bad("store.max_readers", "must be between 1 and 64, got %d", c.Store.MaxReaders)
	}
	if _, err := store.NewCanon(c.Cyrus.DefaultDomain, ""); err != nil {
		bad("cyrus.default_domain", "must be a domain name such as \"example.com\" (Cyrus's defaultdomain), got %q", c.Cyrus.DefaultDomain)
	}
	if _, err := store.NewCanon("", c.Cyrus.DetailSeparator); err != nil {
		bad("cyrus.detail_separator", "must be \"+\" (the only separator Cyrus lmtpd knows) or \"\" for none, got %q", c.Cyrus.DetailSeparator)
	}
	for _, a := range []struct {
		key  string
		addr Addr
	}{{"cyrus.lmtp", c.Cyrus.LMTP}, {"cyrus.imap", c.Cyrus.IMAP}, {"cyrus.managesieve", c.Cyrus.ManageSieve}} {
		if msg := a.addr.check(); msg != "" {
			bad(a.key, "%s", msg)
		}
	}
	if c.Cyrus.AdminUser == "" {
		bad("cyrus.admin_user", "must be set: the account listed in Cyrus's `admins`")
	}
	if !filepath.IsAbs(c.Cyrus.AdminPasswordFile) {
		bad("cyrus.admin_password_file", "must be an absolute path, got %q", c.Cyrus.AdminPasswordFile)
	}
	if err := c.Password.Params().Validate(); err != nil {
		// The password package names each parameter by its key here.
		for _, e := range unjoin(err) {
			field, msg, _ := strings.Cut(e.Error(), ": ")
			bad("password."+field, "%s", msg)
		}
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		bad("log.format", "must be \"json\" or \"text\", got %q", c.Log.Format)
	}
	if c.Serve.ShutdownGrace < time.Second || c.Serve.ShutdownGrace > 5*time.Minute {
		bad("serve.shutdown_grace", "must be between 1s and 5m, got %s", c.Serve.ShutdownGrace)
	}
	if c.Audit.Retention < time.Hour {
		bad("audit.retention", "must be at least 1h, got %s", c.Audit.Retention)
	}
	if c.Audit.MaxRows < 0 {
		bad("audit.max_rows", "must be 0 (no cap) or more, got %d", c.Audit.MaxRows)
	}
	if c.Audit.PruneInterval < time.Minute {
		bad("audit.prune_interval", "must be at least 1m, got %s", c.Audit.PruneInterval)
	}
	if msg := c.HTTP.Listen.check(); msg != "" {
		bad("http.listen", "%s", msg)
	} else if msg := listen.CheckListen(string(c.HTTP.Listen)); msg != "" && !c.HTTP.AllowRemote {
		bad("http.listen", "%s; or set http.allow_remote = true", msg)
	}
	// Each service validates its own section, keys relative to it.
	for _, sec := range []struct {
		name string
		err  error
	}{{"saslauthd", c.Saslauthd.Validate()}, {"lmtp", c.LMTP.Validate()}, {"socketmap", c.Socketmap.Validate()}, {"vacation", c.Vacation.Validate()}, {"events", c.Events.Validate()}} {
		if sec.err == nil {
			continue
		}
		for _, e := range unjoin(sec.err) {
			key, msg, _ := strings.Cut(e.Error(), ": ")
			bad(sec.name+"."+key, "%s", msg)
		}
	}
	return errs
}

// Canon builds the one address canonicalisation from [cyrus].
func (c *Config) Canon() (store.Canon, error) {
	return store.NewCanon(c.Cyrus.DefaultDomain, c.Cyrus.DetailSeparator)
}

// unjoin splits an errors.Join result back into its errors.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
