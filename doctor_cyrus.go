package main

// The doctor's probes of Cyrus: lmtpd, imapd and timsieved, as Cyrus's own
// test clients (lmtptest, imtest, sivtest) would see them, and the admin's
// proxy login. Nothing here writes to Cyrus.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/services/vacation/managesieve"
)

// sieveNeeds are the Sieve extensions the vacation script requires
// (services/vacation/render.go): vacation always, date and relational for
// a vacation with start or end dates.
var sieveNeeds = []string{"vacation", "date", "relational"}

// cyrusService is how cyrus.conf's SERVICES line for a service looks.
func cyrusServiceLine(name, cmd, addr string) string {
	_, a := listen.Split(addr)
	return fmt.Sprintf("cyrus.conf SERVICES: %s cmd=%q listen=%q prefork=0", name, cmd, a)
}

// checkCyrusLMTP: lmtpd greets and answers LHLO where the proxy delivers.
func (d *doctor) checkCyrusLMTP() {
	addr := string(d.cfg.Cyrus.LMTP)
	path := sockPath(addr)
	serviceFixes := []string{cyrusServiceLine("lmtp", "lmtpd -a", addr) + "   (-a: pre-authorised; loopback only)"}
	if path != "" {
		serviceFixes = []string{cyrusServiceLine("lmtpunix", "lmtpd", addr), "imapd.conf: lmtpsocket: " + path}
	}
	conn, err := dialProbe(addr, probeTimeout)
	if err != nil {
		d.cyrusDown("cyrus.lmtp", addr, err, serviceFixes,
			"usermod -a -G mail cyrus-sidecar   (or SupplementaryGroups=mail in cyrus-sidecar.service: Cyrus's socket directory is group mail)")
		return
	}
	defer conn.Close()
	info, err := lmtpProbe(conn, orDefault(d.cfg.LMTP.Hostname, "cyrus-sidecar-doctor"))
	if err != nil {
		d.add("cyrus.lmtp", statusFail, fmt.Sprintf("%s: %v", addr, err), serviceFixes...)
		return
	}
	var exts []string
	for _, e := range info.exts {
		// Cyrus ends its LHLO reply with "Ok SESSIONID=<...>": no
		// extension, and different each time.
		if k, _, _ := strings.Cut(e, " "); !strings.EqualFold(k, "Ok") {
			exts = append(exts, clip(e))
		}
	}
	detail := fmt.Sprintf("%s: %s; LHLO: %s", addr, clip(info.greeting), strings.Join(exts, ", "))
	// Facts §4: without -a, lmtpd on TCP wants AUTH before MAIL (430);
	// pre-authorised it offers only AUTH EXTERNAL.
	if auth, ok := info.hasExt("AUTH"); ok && !slices.Contains(strings.Fields(strings.ToUpper(auth)), "EXTERNAL") {
		d.add("cyrus.lmtp", statusFail, detail+": lmtpd wants authentication here, the proxy delivers without",
			cyrusServiceLine("lmtp", "lmtpd -a", addr)+"   (-a: pre-authorised; loopback only)",
			`or the UNIX socket: config: [cyrus] lmtp = "unix:/run/cyrus/socket/lmtp"`)
		return
	}
	d.add("cyrus.lmtp", statusOK, detail)
}

// cyrusDown explains a Cyrus service we could not connect to.
func (d *doctor) cyrusDown(name, addr string, err error, serviceFixes []string, accessFix string) {
	switch {
	case errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission):
		d.add(name, statusFail, fmt.Sprintf("%s: %v (doctor runs as %s)", addr, err, whoami()), accessFix)
	case errors.Is(err, os.ErrDeadlineExceeded):
		d.add(name, statusFail, fmt.Sprintf("%s: no answer within %s", addr, probeTimeout), "journalctl -u cyrus-imapd")
	default:
		d.add(name, statusFail, fmt.Sprintf("%s: %v: is Cyrus running, with this service?", addr, unwrapOp(err)), serviceFixes...)
	}
}

// unwrapOp drops *net.OpError's "dial unix /path:" prefix, which the
// report line already says.
func unwrapOp(err error) error {
	var sys *os.SyscallError
	if errors.As(err, &sys) {
		return sys.Err
	}
	return err
}

// checkCyrusIMAP: the greeting and CAPABILITY.
func (d *doctor) checkCyrusIMAP() {
	addr := string(d.cfg.Cyrus.IMAP)
	conn, err := dialProbe(addr, probeTimeout)
	if err != nil {
		d.cyrusDown("cyrus.imap", addr, err, []string{cyrusServiceLine("imap", "imapd", addr)}, "")
		return
	}
	defer conn.Close()
	info, err := imapProbe(conn)
	if err != nil {
		d.add("cyrus.imap", statusFail, fmt.Sprintf("%s: %v", addr, err), cyrusServiceLine("imap", "imapd", addr))
		return
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	mechs := info.authMechs()
	plain := slices.Contains(mechs, "PLAIN") && !info.has("LOGINDISABLED")
	detail := fmt.Sprintf("%s: %s; LITERAL+ %s, AUTH=%s, STARTTLS %s", addr, clip(info.greeting),
		yes(info.has("LITERAL+")), orDefault(strings.Join(mechs, ","), "(none)"), yes(info.has("STARTTLS")))
	if !plain {
		// Cyrus offers PLAIN without TLS only with allowplaintext.
		d.add("cyrus.imap", statusWarn, detail+": no AUTH=PLAIN without TLS",
			"imapd.conf: allowplaintext: yes   (where imapd listens on loopback only)",
			"imapd.conf: sasl_mech_list: PLAIN LOGIN")
		return
	}
	d.add("cyrus.imap", statusOK, detail)
}

// checkManageSieve: timsieved's capabilities, then the admin's login acting
// for a real user, as the vacation service logs in.
func (d *doctor) checkManageSieve() {
	addr := string(d.cfg.Cyrus.ManageSieve)
	serviceFix := cyrusServiceLine("sieve", "timsieved", addr)
	cl, err := d.dialSieve(addr)
	if err != nil {
		d.cyrusDown("cyrus.managesieve", addr, unwrapOp(err), []string{serviceFix}, "")
		return
	}
	caps := cl.Capabilities()
	cl.Logout() // unauthenticated: nothing for timsieved to crash on
	var missing []string
	for _, ext := range sieveNeeds {
		if !caps.HasExtension(ext) {
			missing = append(missing, ext)
		}
	}
	detail := fmt.Sprintf("%s: %s; SASL %s; SIEVE: %d extensions, %s", addr, clip(caps.Implementation),
		orDefault(strings.Join(caps.SASL, " "), "(none)"), len(caps.Sieve), strings.Join(sieveNeeds, ", "))
	switch {
	case !slices.Contains(upper(caps.SASL), "PLAIN"):
		fixes := []string{"imapd.conf: sasl_mech_list: PLAIN LOGIN"}
		if !caps.StartTLS {
			fixes = append(fixes, "imapd.conf: allowplaintext: yes   (timsieved on loopback only)")
		}
		d.add("cyrus.managesieve", statusFail, detail+": no SASL PLAIN, which the vacation service logs in with", fixes...)
	case slices.Contains(missing, "vacation"):
		d.add("cyrus.managesieve", statusFail, fmt.Sprintf("%s: Sieve lacks %s", addr, strings.Join(missing, ", ")),
			"imapd.conf: sieve_extensions: fileinto reject vacation vacation-seconds imap4flags envelope relational date include")
	case len(missing) > 0:
		d.add("cyrus.managesieve", statusWarn, fmt.Sprintf("%s: Sieve lacks %s: vacations with start or end dates cannot be installed", addr, strings.Join(missing, ", ")),
			"imapd.conf: sieve_extensions: ... relational date")
	default:
		d.add("cyrus.managesieve", statusOK, detail)
	}
	d.checkAdminLogin(addr)
}

func (d *doctor) dialSieve(addr string) (*managesieve.Client, error) {
	ctx, cancel := context.WithTimeout(d.ctx, probeTimeout)
	defer cancel()
	network, a := listen.Split(addr)
	// authTimeout per command: a refused login takes Cyrus about 3 s.
	return managesieve.Dial(ctx, network, a, managesieve.Options{Timeout: authTimeout})
}

// checkAdminLogin logs in as the admin acting for a user of the store
// (RFC 4616 authzid), as the vacation service does; when that fails, a
// second login as the admin alone tells a wrong password from a missing
// `admins` entry.
func (d *doctor) checkAdminLogin(addr string) {
	admin := d.cfg.Cyrus.AdminUser
	if d.adminPW == "" {
		return // cyrus.admin.secret has failed already
	}
	login := func(authzid string) (string, error) {
		cl, err := d.dialSieve(addr)
		if err != nil {
			return "", err
		}
		if err := cl.AuthenticatePlain(authzid, admin, d.adminPW); err != nil {
			cl.Logout()
			return "", err
		}
		owner := cl.Capabilities().Owner
		// LOGOUT, never a bare close: timsieved 3.6.1/3.6.2 crash on an
		// authenticated client that just hangs up (cyrus-imapd#4537).
		return owner, cl.Logout()
	}
	if d.user == "" {
		if _, err := login(""); err != nil {
			d.add("cyrus.admin", statusFail, fmt.Sprintf("%s refused %s: %v", addr, admin, err), d.passwordFixes()...)
			return
		}
		d.add("cyrus.admin", statusWarn, fmt.Sprintf("%s logs in; no user in the store to act for, so the proxy login was not tried", admin),
			"cyrus-sidecar user add ADDRESS, then run doctor again")
		return
	}
	owner, err := login(d.user)
	if err == nil {
		d.add("cyrus.admin", statusOK, fmt.Sprintf("%s logs in acting for %s (OWNER %s)", admin, d.user, orDefault(owner, "-")))
		return
	}
	var refusal *managesieve.Error
	if !errors.As(err, &refusal) {
		d.add("cyrus.admin", statusFail, fmt.Sprintf("login as %s for %s: %v", admin, d.user, err))
		return
	}
	admins := "imapd.conf: admins: " + strings.Join(append(strings.Fields(d.imapd["admins"]), admin), " ") + "   (read by each new Cyrus process)"
	if _, ownErr := login(""); ownErr == nil {
		d.add("cyrus.admin", statusFail, fmt.Sprintf("%s logs in, but may not act for %s (%v): not in Cyrus's admins", admin, d.user, err), admins)
		return
	}
	// A non-admin without a mailbox cannot log in to timsieved at all, so
	// both logins fail then too. When the password is known good and
	// Cyrus reaches serve, what is left is the admins entry.
	if d.passed("cyrus.admin.secret") && d.usesOurSaslauthd() && d.passed("saslauthd.serve") && d.passed("saslauthd."+d.cyrusUser) {
		d.add("cyrus.admin", statusFail, fmt.Sprintf("%s may not act for %s (%v), though the store accepts its password: not in Cyrus's admins", admin, d.user, err), admins)
		return
	}
	d.add("cyrus.admin", statusFail, fmt.Sprintf("Cyrus refused the password of %s (%v)", admin, err), d.passwordFixes()...)
}

// passed reports whether the named check ran and came out ok.
func (d *doctor) passed(name string) bool {
	ran := false
	for _, c := range d.rep.Checks {
		if c.Name == name {
			ran = true
			if c.Status != statusOK {
				return false
			}
		}
	}
	return ran
}

// passwordFixes are what makes Cyrus accept the admin's password.
func (d *doctor) passwordFixes() []string {
	admin, file := d.cfg.Cyrus.AdminUser, d.cfg.Cyrus.AdminPasswordFile
	if a, err := d.canon.Login(admin, ""); err == nil {
		admin = a.String() // as the store knows it
	}
	fixes := []string{fmt.Sprintf("cyrus-sidecar user passwd %s -password-stdin < %s   (when Cyrus asks serve)", admin, file)}
	if p := sockPath(d.cfg.Saslauthd.Listen); d.cfg.Saslauthd.Enabled && p != "" {
		fixes = append(fixes, "imapd.conf: sasl_pwcheck_method: saslauthd", "imapd.conf: sasl_saslauthd_path: "+p)
	}
	return fixes
}

func upper(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToUpper(s)
	}
	return out
}
