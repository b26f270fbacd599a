package main

// The doctor's checks of imapd.conf, the admin secret and the sidecar's
// own listeners. Cyrus's services are probed in doctor_cyrus.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"cyrus-sidecar/services/saslauthd"
	"cyrus-sidecar/store/password"
)

// maxSecret bounds the admin password file read.
const maxSecret = 4096

// readImapdConf reads Cyrus's configuration for the cross-checks. The
// default file may be absent (Cyrus on another host); a file named with
// -imapd-conf must be there.
func (d *doctor) readImapdConf(path string, explicit bool) {
	f, err := os.Open(path)
	if err != nil {
		if isNotExist(err) && !explicit {
			d.add("imapd.conf", statusWarn, path+" does not exist, so Cyrus's settings are not cross-checked",
				"cyrus-sidecar doctor -imapd-conf /path/to/imapd.conf   (where Cyrus runs on this host)")
			return
		}
		d.add("imapd.conf", statusFail, err.Error(), "cyrus-sidecar doctor -imapd-conf /path/to/imapd.conf")
		return
	}
	defer f.Close()
	conf, err := parseImapdConf(f)
	if err != nil {
		d.add("imapd.conf", statusFail, fmt.Sprintf("%s: %v", path, err))
		return
	}
	d.imapd = conf
	d.add("imapd.conf", statusOK, fmt.Sprintf("%s: %d settings", path, len(conf)))
}

// checkImapdConf compares what Cyrus is told with what the sidecar is.
func (d *doctor) checkImapdConf() {
	if d.imapd == nil {
		return
	}
	ours := d.cfg.Cyrus.DefaultDomain
	if theirs := d.imapd["defaultdomain"]; !strings.EqualFold(theirs, ours) {
		d.add("imapd.defaultdomain", statusFail, fmt.Sprintf("Cyrus's defaultdomain is %q, cyrus.default_domain is %q: logins and addresses would be read differently", theirs, ours),
			"imapd.conf: defaultdomain: "+orDefault(ours, "example.com"),
			fmt.Sprintf("or config: [cyrus] default_domain = %q", theirs))
	} else {
		d.add("imapd.defaultdomain", statusOK, fmt.Sprintf("%q, as cyrus.default_domain", theirs))
	}
	if d.cfg.Saslauthd.Enabled {
		method, path := d.imapdSASL()
		ours := sockPath(d.cfg.Saslauthd.Listen)
		switch {
		case ours == "":
			d.add("imapd.sasl", statusWarn, "saslauthd.listen is TCP; Cyrus reaches saslauthd only over a UNIX socket",
				`config: [saslauthd] listen = "unix:/run/cyrus-sidecar/saslauthd/mux"`)
		case !slices.Contains(strings.Fields(method), "saslauthd") || filepath.Clean(path) != filepath.Clean(ours):
			d.add("imapd.sasl", statusFail, fmt.Sprintf("Cyrus checks passwords with sasl_pwcheck_method %q at %s, not through serve's socket %s", method, path, ours),
				"imapd.conf: sasl_pwcheck_method: saslauthd",
				"imapd.conf: sasl_saslauthd_path: "+ours)
		default:
			d.add("imapd.sasl", statusOK, "sasl_pwcheck_method: saslauthd, sasl_saslauthd_path: "+path+" (serve's socket)")
		}
	}
	if d.cfg.Vacation.Enabled {
		admins := strings.Fields(d.imapd["admins"])
		if d.isAdmin(admins) {
			d.add("imapd.admins", statusOK, fmt.Sprintf("%s is in admins", d.cfg.Cyrus.AdminUser))
		} else {
			d.add("imapd.admins", statusFail, fmt.Sprintf("%s is not in admins (%q): timsieved refuses its proxy login", d.cfg.Cyrus.AdminUser, d.imapd["admins"]),
				"imapd.conf: admins: "+strings.Join(append(admins, d.cfg.Cyrus.AdminUser), " "))
		}
	}
}

// imapdSASL returns Cyrus's password check method and saslauthd socket.
func (d *doctor) imapdSASL() (method, path string) {
	method = orDefault(d.imapd["sasl_pwcheck_method"], "auxprop") // Cyrus's default
	path = orDefault(d.imapd["sasl_saslauthd_path"], defaultSaslauthdPath)
	return method, path
}

// isAdmin compares admin_user with each admins entry the way Cyrus does:
// canonical user ids, so "admin" and "admin@<defaultdomain>" are one.
func (d *doctor) isAdmin(admins []string) bool {
	want, err := d.canon.Login(d.cfg.Cyrus.AdminUser, "")
	if err != nil {
		return false
	}
	for _, a := range admins {
		if got, err := d.canon.Login(a, ""); err == nil && got == want {
			return true
		}
	}
	return false
}

// usesOurSaslauthd reports whether Cyrus checks passwords through serve:
// as imapd.conf says, or, without it, whenever the responder is on.
func (d *doctor) usesOurSaslauthd() bool {
	if !d.cfg.Saslauthd.Enabled {
		return false
	}
	if d.imapd == nil {
		return true
	}
	method, path := d.imapdSASL()
	ours := sockPath(d.cfg.Saslauthd.Listen)
	return slices.Contains(strings.Fields(method), "saslauthd") && ours != "" && filepath.Clean(path) == filepath.Clean(ours)
}

// checkAdminSecret reads cyrus.admin_password_file and, when Cyrus asks
// serve for passwords, checks it against the store as the responder would
// (saslauthd.Check: no failure delay, no audit).
func (d *doctor) checkAdminSecret() {
	file, admin := d.cfg.Cyrus.AdminPasswordFile, d.cfg.Cyrus.AdminUser
	createFix := fmt.Sprintf("install -m 0640 -g cyrus-sidecar /dev/null %s, then put the password of %s in it (one line)", file, admin)
	pw, err := readSecret(file)
	switch {
	case err != nil:
		fix := createFix
		if errors.Is(err, fs.ErrPermission) {
			fix = "chgrp cyrus-sidecar " + file + " && chmod 0640 " + file + "   (and run doctor as serve's user or root)"
		}
		d.add("cyrus.admin.secret", statusFail, err.Error(), fix)
		return
	case pw == "":
		d.add("cyrus.admin.secret", statusFail, file+" is empty", createFix)
		return
	}
	d.adminPW = pw
	if d.st == nil || !d.usesOurSaslauthd() {
		d.add("cyrus.admin.secret", statusOK, file+": readable")
		return
	}
	h, err := password.New(d.cfg.Password.Params())
	if err != nil {
		d.add("cyrus.admin.secret", statusFail, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, authTimeout)
	defer cancel()
	// Token keys play no part: the file holds a password, not a token.
	r := saslauthd.Check(ctx, d.cfg.Saslauthd, nil, d.st, d.canon, h, admin, "sieve", pw)
	who := orDefault(r.User, admin)
	if r.OK {
		d.add("cyrus.admin.secret", statusOK, fmt.Sprintf("%s: the store accepts it for %s (service sieve)", file, who))
		return
	}
	var fix string
	switch {
	case strings.Contains(r.Reason, "unknown"):
		fix = fmt.Sprintf("cyrus-sidecar user add %s -password-stdin < %s", who, file)
	case strings.Contains(r.Reason, "disabled"):
		fix = "cyrus-sidecar user enable " + who
	case strings.Contains(r.Reason, "service"):
		fix = fmt.Sprintf("cyrus-sidecar user set %s -services '*'", who)
	default:
		fix = fmt.Sprintf("cyrus-sidecar user passwd %s -password-stdin < %s", who, file)
	}
	d.add("cyrus.admin.secret", statusFail, fmt.Sprintf("%s: the store refuses it for %s: %s", file, who, r.Reason), fix)
}

// readSecret reads a one-line secret file, bounded.
func readSecret(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecret)) // a local file, bounded
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimRight(line, "\r"), nil
}

// checkSocketFile reports a listener's socket file and its directory.
func (d *doctor) checkSocketFile(service, path string) {
	name := service + ".socket"
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); err != nil {
		d.add(name, statusWarn, fmt.Sprintf("%s does not exist; serve creates it when its parent is writable", dir),
			"install -d -m 0755 "+dir)
		return
	}
	var st syscall.Stat_t
	err := syscall.Lstat(path, &st)
	if err == nil && st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		d.add(name, statusFail, path+" exists and is not a socket: serve cannot listen there", "rm "+path+"   (after checking what it is)")
		return
	}
	if err != nil {
		if werr := accessible(dir, permWrite|permSearch); werr != nil {
			d.add(name, statusWarn, fmt.Sprintf("no socket yet, and %s is not writable by %s: serve must run as a user who may create it", dir, whoami()),
				"chown cyrus-sidecar "+dir)
			return
		}
		d.add(name, statusOK, fmt.Sprintf("no socket yet; %s is writable", dir))
		return
	}
	b := blocker{path: path, st: &st}
	d.add(name, statusOK, "socket "+b.describe()[len(path)+1:]+" in "+dir)
}

// notRunning explains a listener that did not answer.
func (d *doctor) notRunning(service, addr string, err error) {
	name := service + ".serve"
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		d.add(name, statusFail, fmt.Sprintf("nothing answers on %s: serve is not running, or not with this configuration", addr),
			"systemctl start cyrus-sidecar   (then: journalctl -u cyrus-sidecar)",
			fmt.Sprintf("with socket activation: systemctl enable --now cyrus-sidecar-%s.socket", service))
	case errors.Is(err, syscall.EACCES):
		d.add(name, statusFail, fmt.Sprintf("%s: %v (doctor runs as %s)", addr, err, whoami()),
			"run doctor as root or as serve's user: sudo cyrus-sidecar doctor")
	case errors.Is(err, os.ErrDeadlineExceeded):
		d.add(name, statusFail, fmt.Sprintf("%s: no answer within %s: serve is overloaded or hung", addr, probeTimeout),
			"journalctl -u cyrus-sidecar")
	default:
		d.add(name, statusFail, fmt.Sprintf("%s: %v", addr, err), "journalctl -u cyrus-sidecar")
	}
}

// checkSaslauthd: the socket, whether serve answers on it and whether
// Cyrus's user may connect to it.
func (d *doctor) checkSaslauthd() {
	addr := d.cfg.Saslauthd.Listen
	path := sockPath(addr)
	if path != "" {
		d.checkSocketFile("saslauthd", path)
	}
	if conn, err := dialProbe(addr, probeTimeout); err != nil {
		d.notRunning("saslauthd", addr, err)
	} else {
		reply, err := saslauthdProbe(conn)
		conn.Close()
		switch {
		case err != nil:
			d.notRunning("saslauthd", addr, err)
		case strings.HasPrefix(reply, "NO"):
			d.add("saslauthd.serve", statusOK, fmt.Sprintf("%s answers NO to an empty password, as it should", addr))
		default:
			d.add("saslauthd.serve", statusFail, fmt.Sprintf("%s answered %q to an empty password: not cyrus-sidecar, or a broken responder", addr, clip(reply)),
				"check what listens there: ss -xlp | grep "+path)
		}
	}
	if path != "" {
		d.checkReach("saslauthd", d.cyrusUser, d.cyrusUser, path, statusFail, "cyrus-sidecar-saslauthd.socket")
	}
}

// checkReach walks path's permissions for the system user; status is what a
// refusal is worth (FAIL for Cyrus, warn for an MTA that may not be used).
func (d *doctor) checkReach(service, label, userName, path, status, unit string) {
	name := service + "." + label
	id, err := lookupIdentity(userName)
	if err != nil {
		if status == statusFail {
			d.add(name, statusWarn, fmt.Sprintf("no system user %s: %v", userName, err), "cyrus-sidecar doctor -cyrus-user NAME   (the user Cyrus runs as)")
		}
		return // an MTA that is not installed
	}
	b := reachSocket(path, id)
	switch {
	case b == nil:
		d.add(name, statusOK, fmt.Sprintf("user %s can connect to %s", userName, path))
	case b.missing:
		d.add(name, statusWarn, fmt.Sprintf("cannot tell whether user %s may connect: %s does not exist", userName, b.path))
	default:
		if b.acl {
			status = statusWarn
		}
		d.add(name, status, fmt.Sprintf("user %s cannot connect to %s: %s", userName, path, b.describe()), reachFixes(b, id, service, unit)...)
	}
}

// checkLMTPListener: the proxy greets and answers LHLO.
func (d *doctor) checkLMTPListener(addr string) {
	path := sockPath(addr)
	if path != "" {
		d.checkSocketFile("lmtp", path)
	}
	conn, err := dialProbe(addr, probeTimeout)
	if err != nil {
		d.notRunning("lmtp", addr, err)
		return
	}
	defer conn.Close()
	info, err := lmtpProbe(conn, "cyrus-sidecar-doctor")
	if err != nil {
		d.notRunning("lmtp", addr, err)
		return
	}
	d.add("lmtp.serve", statusOK, fmt.Sprintf("%s answers LHLO: %s", addr, clip(info.greeting)))
}

// checkLMTPForExim warns when Exim is here but the proxy has no TCP
// listener: Exim makes recipient callouts only over TCP (DESIGN, service 2).
func (d *doctor) checkLMTPForExim() {
	for _, a := range d.cfg.LMTP.Listen {
		if sockPath(a) == "" {
			return
		}
	}
	if !eximInstalled() {
		return
	}
	d.add("lmtp.exim", statusWarn, "Exim is installed, and its recipient callouts need LMTP over TCP; the proxy listens only on UNIX sockets",
		`config: [lmtp] listen = ["127.0.0.1:2003", ...]`,
		"Exim: SIDECAR_LMTP_PORT = 2003 and the cyrus_sidecar_lmtp transport of docs/lmtp.md")
}

// checkSocketmapListener: one domain lookup, and whether the MTAs' users
// may connect.
func (d *doctor) checkSocketmapListener(addr string) {
	path := sockPath(addr)
	if path != "" {
		d.checkSocketFile("socketmap", path)
	}
	mapName, key := d.cfg.Socketmap.Maps.Domain, orDefault(d.cfg.Cyrus.DefaultDomain, "example.com")
	if mapName == "" {
		mapName, key = d.cfg.Socketmap.Maps.Mailbox, "postmaster@"+key
	}
	if mapName == "" {
		mapName, key = "cyrus-sidecar-doctor", "probe" // PERM: an unknown map, still an answer
	}
	conn, err := dialProbe(addr, probeTimeout)
	if err != nil {
		d.notRunning("socketmap", addr, err)
	} else {
		status, data, err := socketmapProbe(conn, mapName, key)
		conn.Close()
		lookup := fmt.Sprintf("%s %s", mapName, key)
		switch {
		case err != nil:
			d.notRunning("socketmap", addr, err)
		case status == "OK" || status == "NOTFOUND" || (status == "PERM" && mapName == "cyrus-sidecar-doctor"):
			d.add("socketmap.serve", statusOK, fmt.Sprintf("%s answers %q: %s", addr, lookup, strings.TrimSpace(status+" "+clip(data))))
		case status == "TEMP":
			d.add("socketmap.serve", statusFail, fmt.Sprintf("%s answers %q: TEMP %s: serve cannot read its store", addr, lookup, clip(data)),
				"journalctl -u cyrus-sidecar")
		default:
			d.add("socketmap.serve", statusFail, fmt.Sprintf("%s answers %q: %s %s", addr, lookup, clip(status), clip(data)))
		}
	}
	if path == "" {
		return
	}
	// The MTAs' users, where they exist: which MTA asks is not known, so a
	// refusal is a warning.
	for _, mta := range []struct{ label, user string }{{"postfix", "postfix"}, {"exim", "Debian-exim"}} {
		d.checkReach("socketmap", mta.label, mta.user, path, statusWarn, "cyrus-sidecar-socketmap.socket")
	}
}

// eximInstalled reports whether Exim is on this host.
func eximInstalled() bool {
	for _, name := range []string{"exim4", "exim"} {
		if _, err := exec.LookPath(name); err == nil {
			return true
		}
	}
	_, err := os.Stat("/usr/sbin/exim4")
	return err == nil
}

// whoami names the user doctor runs as.
func whoami() string { return userName(uint32(os.Getuid())) }
