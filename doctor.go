package main

// `cyrus-sidecar doctor`: what an admin would check by hand after
// installing or changing anything, in one run. It reads the configuration,
// the store and Cyrus's imapd.conf, walks the permissions of every socket
// the peers must reach, asks each running service a harmless question and
// probes Cyrus the way its own test clients (imtest, lmtptest, sivtest)
// do. Each failure comes with the line to add to imapd.conf, cyrus.conf,
// the sidecar's configuration, Exim or Postfix.
//
// Nothing is written to Cyrus: IMAP sees CAPABILITY and LOGOUT, lmtpd
// LHLO and QUIT, timsieved AUTHENTICATE and LOGOUT. Probes run one after
// the other, each bounded in time and bytes.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/store"
)

const (
	// probeTimeout bounds one probe's dial and each of its exchanges.
	probeTimeout = 5 * time.Second
	// authTimeout bounds a ManageSieve login: Cyrus answers a refused
	// login only after a fixed delay of about 3 s (cyrus-lab-facts §3),
	// and our own saslauthd adds its failure delay.
	authTimeout = 15 * time.Second
	// defaultImapdConf is where Debian's Cyrus reads its configuration.
	defaultImapdConf = "/etc/imapd.conf"
	// defaultSaslauthdPath is libsasl's compiled-in saslauthd socket on
	// Debian, used by Cyrus when imapd.conf has no sasl_saslauthd_path.
	defaultSaslauthdPath = "/var/run/saslauthd/mux"
)

// Check outcomes. Only statusFail makes doctor exit 1.
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "FAIL"
)

// check is one line of the report.
type check struct {
	Name   string   `json:"name"`
	Status string   `json:"status"`
	Detail string   `json:"detail"`
	Fixes  []string `json:"fixes,omitempty"`
}

// report is everything doctor found, in the order it looked.
type report struct {
	Checks   []check `json:"checks"`
	Failed   int     `json:"failed"`
	Warnings int     `json:"warnings"`
}

// doctor runs the checks; later checks use what earlier ones found.
type doctor struct {
	ctx       context.Context
	cfg       *Config
	cfgFlag   string // " -config FILE" for the commands in fixes, or ""
	canon     store.Canon
	st        *store.Store      // nil when the store did not open
	imapd     map[string]string // imapd.conf; nil when not read
	cyrusUser string            // the system user Cyrus's processes run as
	adminPW   string            // "" when the password file was unreadable
	user      string            // a real user from the store, for the proxy login
	rep       report
}

func cmdDoctor(args []string, std stdio, getenv func(string) string) error {
	c := newCommand("doctor", "doctor [-json] [-imapd-conf FILE] [-cyrus-user NAME] [-config FILE]", std, getenv).withJSON()
	imapdConf := c.fs.String("imapd-conf", defaultImapdConf, "Cyrus's imapd.conf `file`, cross-checked against the configuration")
	cyrusUser := c.fs.String("cyrus-user", "cyrus", "the system `user` Cyrus runs as (whose access to the saslauthd socket is checked)")
	pos, err := c.parse(args)
	if err != nil {
		return err
	}
	if err := c.want(pos, 0, 0, "no arguments"); err != nil {
		return err
	}
	d := &doctor{ctx: context.Background(), cyrusUser: *cyrusUser}
	defer func() {
		if d.st != nil {
			d.st.Close()
		}
	}()
	d.run(configPath(*c.config, getenv, systemConfigPath), getenv, *imapdConf, *imapdConf != defaultImapdConf)
	if *c.jsonOut {
		if err := c.printJSON(d.rep); err != nil {
			return err
		}
	} else if err := d.rep.write(std.out); err != nil {
		return err
	}
	if d.rep.Failed > 0 {
		return fmt.Errorf("doctor: %d %s failed", d.rep.Failed, plural(d.rep.Failed, "check", "checks"))
	}
	return nil
}

// run does every check in order.
func (d *doctor) run(path string, getenv func(string) string, imapdConf string, imapdExplicit bool) {
	if !d.loadConfig(path, getenv) {
		return // nothing else can be checked without a configuration
	}
	d.openStore()
	d.readImapdConf(imapdConf, imapdExplicit)
	d.checkImapdConf()
	reconcile := d.cfg.Events.Enabled && d.cfg.Events.Reconcile.Enabled
	if d.cfg.Vacation.Enabled || reconcile {
		d.checkAdminSecret()
	}
	if d.cfg.Saslauthd.Enabled {
		d.checkSaslauthd()
	}
	if d.cfg.LMTP.Enabled {
		for _, a := range d.cfg.LMTP.Listen {
			d.checkLMTPListener(a)
		}
		d.checkLMTPForExim()
	}
	if d.cfg.Socketmap.Enabled {
		for _, a := range d.cfg.Socketmap.Listen {
			d.checkSocketmapListener(a)
		}
	}
	if d.cfg.LMTP.Enabled {
		d.checkCyrusLMTP()
	}
	if d.cfg.Events.Enabled || d.imapd["event_notifier"] != "" {
		socket := ""
		if d.cfg.Events.Enabled {
			socket = d.cfg.Events.Ingest.Socket
		}
		d.checkEventOptions(socket)
	}
	d.checkCyrusIMAP()
	if reconcile {
		d.checkIMAPAdmin()
	}
	if d.cfg.Vacation.Enabled {
		d.checkManageSieve()
	}
}

// add records one check.
func (d *doctor) add(name, status, detail string, fixes ...string) {
	d.rep.Checks = append(d.rep.Checks, check{Name: name, Status: status, Detail: detail, Fixes: fixes})
	switch status {
	case statusFail:
		d.rep.Failed++
	case statusWarn:
		d.rep.Warnings++
	}
}

func (d *doctor) loadConfig(path string, getenv func(string) string) bool {
	cwd, err := os.Getwd()
	if err == nil {
		d.cfg, err = loadConfig(path, getenv, cwd)
	}
	if err == nil {
		d.canon, err = d.cfg.Canon()
	}
	shown := path
	if shown == "" {
		shown = "(none: built-in defaults)"
	}
	if err != nil {
		// A config error has a line per problem; the report keeps one
		// line per check, so the problems are joined.
		d.add("config", statusFail, strings.ReplaceAll(err.Error(), "\n", "; "),
			"cyrus-sidecar check-config -config "+orDefault(path, "FILE")+"   (lists every problem with its key)")
		return false
	}
	if path != "" {
		d.cfgFlag = " -config " + path
	}
	d.add("config", statusOK, shown+": valid; services "+d.enabledServices())
	return true
}

func (d *doctor) enabledServices() string {
	var on []string
	for _, s := range []struct {
		name string
		on   bool
	}{{"saslauthd", d.cfg.Saslauthd.Enabled}, {"lmtp", d.cfg.LMTP.Enabled}, {"socketmap", d.cfg.Socketmap.Enabled}, {"vacation", d.cfg.Vacation.Enabled}} {
		if s.on {
			on = append(on, s.name)
		}
	}
	if len(on) == 0 {
		return "none"
	}
	return strings.Join(on, ", ")
}

// openStore opens the store without creating it and counts what is in it.
// Opening brings an older schema up to date, as every admin command does.
func (d *doctor) openStore() {
	path := d.cfg.Store.Path
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.add("store", statusFail, "no store at "+path,
			"cyrus-sidecar org add NAME"+d.cfgFlag+"   (the first add command creates the store; or set store.path to serve's store)")
		return
	case err != nil:
		d.add("store", statusFail, err.Error(), d.storeAccessFixes()...)
		return
	case !fi.Mode().IsRegular():
		d.add("store", statusFail, path+" is not a regular file", "config: [store] path = \"/var/lib/cyrus-sidecar/store.db\"")
		return
	}
	if err := accessible(path, 4|2); err != nil {
		d.add("store", statusFail, err.Error(), d.storeAccessFixes()...)
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, probeTimeout+d.cfg.Store.BusyTimeout)
	defer cancel()
	st, err := store.Open(ctx, path, store.Options{MaxReaders: 1, BusyTimeout: d.cfg.Store.BusyTimeout})
	if err != nil {
		fixes := d.storeAccessFixes()
		if errors.Is(err, store.ErrSchema) {
			fixes = []string{"upgrade cyrus-sidecar: the store was written by a newer version"}
		}
		d.add("store", statusFail, err.Error(), fixes...)
		return
	}
	counts, err := d.storeCounts(ctx, st)
	if err != nil {
		st.Close()
		d.add("store", statusFail, err.Error(), d.storeAccessFixes()...)
		return
	}
	d.st = st
	d.user = counts.user
	status, fixes := statusOK, []string(nil)
	detail := fmt.Sprintf("%s: schema %d; %d %s, %d %s, %d %s", path, counts.schema,
		counts.orgs, plural(counts.orgs, "organisation", "organisations"),
		counts.domains, plural(counts.domains, "domain", "domains"),
		counts.users, plural(counts.users, "user", "users"))
	if dd := d.cfg.Cyrus.DefaultDomain; dd != "" && !counts.hasDefault {
		status = statusWarn
		detail += "; cyrus.default_domain " + dd + " is not hosted"
		fixes = []string{"cyrus-sidecar domain add " + dd + " -org NAME"}
	} else if counts.domains == 0 {
		status = statusWarn
		detail += "; every RCPT and login is refused until a domain is added"
		fixes = []string{"cyrus-sidecar domain add DOMAIN -org NAME"}
	}
	d.add("store", status, detail, fixes...)
	d.checkBackup()
}

// backupMaxAge is how old the backup timer's copy may get: it runs daily,
// up to an hour late, and catches up after a boot.
const backupMaxAge = 48 * time.Hour

// checkBackup reports the age of the copy cyrus-sidecar-backup.service
// keeps beside the store (backup/store.db), when there is one: a timer
// that stopped running is otherwise noticed only on the day it is needed.
func (d *doctor) checkBackup() {
	path := filepath.Join(filepath.Dir(d.cfg.Store.Path), "backup", "store.db")
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return // no backup timer, or backups go elsewhere
	}
	if err != nil {
		d.add("backup", statusWarn, err.Error())
		return
	}
	age := time.Since(fi.ModTime())
	detail := fmt.Sprintf("%s: %s old, written %s", path, age.Round(time.Minute), fi.ModTime().UTC().Format("2006-01-02 15:04Z"))
	if age > backupMaxAge {
		d.add("backup", statusWarn, detail+": the daily backup has not run",
			"systemctl status cyrus-sidecar-backup.timer cyrus-sidecar-backup.service   (and journalctl -u cyrus-sidecar-backup.service)")
		return
	}
	d.add("backup", statusOK, detail)
}

// storeAccessFixes are the fixes for a store this process cannot use.
func (d *doctor) storeAccessFixes() []string {
	p := d.cfg.Store.Path
	return []string{
		"run doctor as the user serve runs as: sudo -u cyrus-sidecar cyrus-sidecar doctor" + d.cfgFlag,
		"chown cyrus-sidecar:cyrus-sidecar " + p + " && chmod 0640 " + p,
	}
}

// storeSummary is what the store line reports.
type storeSummary struct {
	schema, orgs, domains, users int
	hasDefault                   bool
	user                         string // the first enabled user, not the admin
}

func (d *doctor) storeCounts(ctx context.Context, st *store.Store) (storeSummary, error) {
	var s storeSummary
	var err error
	if s.schema, err = st.SchemaVersion(ctx); err != nil {
		return s, fmt.Errorf("store schema version: %w", err)
	}
	orgs, err := st.Orgs(ctx)
	if err != nil {
		return s, err
	}
	domains, err := st.Domains(ctx)
	if err != nil {
		return s, err
	}
	users, err := st.Users(ctx, "")
	if err != nil {
		return s, err
	}
	s.orgs, s.domains, s.users = len(orgs), len(domains), len(users)
	for _, dom := range domains {
		s.hasDefault = s.hasDefault || dom.Name == d.cfg.Cyrus.DefaultDomain
	}
	admin, _ := d.canon.Login(d.cfg.Cyrus.AdminUser, "") // a malformed admin name matches nobody
	for _, u := range users {
		if !u.Disabled && u.Address != admin.String() {
			s.user = u.Address
			break
		}
	}
	return s, nil
}

// write prints the report: one line per check, its fixes below it, and a
// summary.
func (r report) write(w io.Writer) error {
	var b strings.Builder
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-4s  %-20s  %s\n", c.Status, c.Name, c.Detail)
		for _, f := range c.Fixes {
			fmt.Fprintf(&b, "      fix: %s\n", f)
		}
	}
	ok := len(r.Checks) - r.Failed - r.Warnings
	fmt.Fprintf(&b, "\n%d ok, %d %s, %d failed\n", ok, r.Warnings, plural(r.Warnings, "warning", "warnings"), r.Failed)
	_, err := io.WriteString(w, b.String())
	return err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// sockPath returns the file of a "unix:" address, or "" for TCP.
func sockPath(addr string) string {
	if network, p := listen.Split(addr); network == "unix" {
		return p
	}
	return ""
}
