package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"cyrus-sidecar/services/events/imap"
	"cyrus-sidecar/services/listen"
)

// eventSafeSet is the imapd.conf event configuration verified on Debian 12's
// Cyrus 3.6.1 (events-anchors.md §1.7); notifysocket is the sidecar's.
var eventSafeSet = []string{
	"event_notifier: sidecar",
	"event_groups: message mailbox flags subscription",
	"event_extra_params: timestamp service uidnext modseq messages flagNames vnd.cmu.unseenMessages vnd.cmu.sessionId vnd.fastmail.clientId vnd.cmu.emailid",
	"event_exclude_specialuse: none",
}

// eventCheck is one finding about Cyrus's event options.
type eventCheck struct {
	status, detail string
	fixes          []string
}

// checkEventOptions reports on imapd.conf's event options, when events
// are on in Cyrus (event_notifier set) or wanted by the sidecar.
func (d *doctor) checkEventOptions(notifySocket string) {
	if d.imapd == nil {
		return
	}
	for _, c := range eventOptions(d.imapd, notifySocket, dgramQueueLen()) {
		d.add("imapd.events", c.status, c.detail, c.fixes...)
	}
}

// eventOptions checks the options against what crashes or silences Cyrus
// 3.6 (events-anchors.md §1.5): an extra parameter Cyrus cannot fill for
// some event type aborts imapd or lmtpd on an assertion (B1, B2), a large
// one makes the datagram too big to send (B3), and \Junk folders send
// nothing by default (B7). qlen is net.unix.max_dgram_qlen, or -1.
func eventOptions(conf map[string]string, notifySocket string, qlen int) []eventCheck {
	safe := func(extra ...string) []string { return append(extra, eventSafeSet...) }
	notifier := conf["event_notifier"]
	if notifier == "" {
		return []eventCheck{{statusFail, "event_notifier is not set: Cyrus sends no mailbox events",
			safe("imapd.conf: notifysocket: " + notifySocket)}}
	}
	groups := strings.Fields(orDefault(conf["event_groups"], "message mailbox"))
	extras := strings.Fields(orDefault(conf["event_extra_params"], "timestamp"))
	has := func(list []string, v string) bool {
		return slices.ContainsFunc(list, func(s string) bool { return strings.EqualFold(s, v) })
	}
	var out []eventCheck
	// B1: verified on 3.6.1 for jmapStates with subscription (imapd dies on
	// UNSUBSCRIBE) and jmapStates/counters with quota (on SETQUOTA); the
	// conv* counters are filled by the same code.
	for _, x := range extras {
		lx := strings.ToLower(x)
		if lx != "vnd.fastmail.jmapstates" && lx != "vnd.fastmail.counters" && !strings.HasPrefix(lx, "vnd.fastmail.conv") {
			continue
		}
		for _, g := range []string{"subscription", "quota"} {
			if has(groups, g) {
				out = append(out, eventCheck{statusFail,
					fmt.Sprintf("event_extra_params %s with event_groups %s makes Cyrus 3.6 imapd abort (cyrus-imapd#3831)", x, g),
					safe()})
			}
		}
	}
	if has(extras, "messageContent") {
		out = append(out, eventCheck{statusFail,
			"event_extra_params messageContent makes every LMTP delivery fail in Cyrus 3.6 (cyrus-imapd#5490)", safe()})
	}
	for _, x := range []string{"vnd.cmu.envelope", "bodyStructure", "vnd.fastmail.jmapEmail", "vnd.cmu.midset"} {
		if has(extras, x) {
			out = append(out, eventCheck{statusWarn,
				fmt.Sprintf("event_extra_params %s can push an event over Cyrus's 21 KB datagram limit, and Cyrus then drops it", x),
				[]string{"imapd.conf: remove " + x + " from event_extra_params"}})
		}
	}
	switch ex := conf["event_exclude_specialuse"]; {
	case strings.EqualFold(ex, "all"):
		out = append(out, eventCheck{statusWarn, "event_exclude_specialuse: ALL silences every folder but INBOX",
			[]string{"imapd.conf: event_exclude_specialuse: none"}})
	case ex == "" || has(strings.Fields(ex), `\Junk`):
		out = append(out, eventCheck{statusWarn, `event_exclude_specialuse leaves \Junk folders without events (Cyrus's default)`,
			[]string{"imapd.conf: event_exclude_specialuse: none"}})
	}
	if sock := conf["notifysocket"]; notifySocket != "" && sock != notifySocket {
		out = append(out, eventCheck{statusFail,
			fmt.Sprintf("Cyrus sends events to notifysocket %q, not to the sidecar's %s", orDefault(sock, "{configdirectory}/socket/notify"), notifySocket),
			[]string{"imapd.conf: notifysocket: " + notifySocket,
				`cyrus.conf SERVICES: notify cmd="notifyd" listen="/run/cyrus/socket/notifyd" proto="udp" prefork=1   (Sieve notify keeps working through the sidecar's relay)`}})
	}
	if qlen >= 0 && qlen < 512 {
		out = append(out, eventCheck{statusWarn,
			fmt.Sprintf("net.unix.max_dgram_qlen is %d: a burst of more events than that makes Cyrus wait, holding the mailbox lock", qlen),
			[]string{"sysctl -w net.unix.max_dgram_qlen=512   (and in /etc/sysctl.d/)"}})
	}
	if len(out) == 0 {
		out = append(out, eventCheck{statusOK, fmt.Sprintf("no option Cyrus 3.6 crashes or drops on: event_notifier %s, groups %s, extras %s",
			notifier, strings.Join(groups, " "), strings.Join(extras, " ")), nil})
	}
	return out
}

// dgramQueueLen reads net.unix.max_dgram_qlen, -1 when it cannot.
func dgramQueueLen() int {
	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// checkIMAPAdmin logs in to Cyrus IMAP as the admin acting for a user of
// the store, as the events reconciler does (RFC 4616 authzid), and logs
// out.
func (d *doctor) checkIMAPAdmin() {
	if d.adminPW == "" {
		return // cyrus.admin.secret has failed already
	}
	admin, addr := d.cfg.Cyrus.AdminUser, string(d.cfg.Cyrus.IMAP)
	if d.user == "" {
		d.add("events.imap_admin", statusWarn, "no user in the store to act for, so the reconciler's login was not tried",
			"cyrus-sidecar user add ADDRESS, then run doctor again")
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, 15*time.Second)
	defer cancel()
	network, a := listen.Split(addr)
	cl, err := imap.Dial(ctx, network, a, imap.Options{Timeout: 10 * time.Second})
	if err != nil {
		d.add("events.imap_admin", statusFail, fmt.Sprintf("%s: %v", addr, err),
			"config: [cyrus] imap = the address of Cyrus's imapd (cyrus.conf SERVICES: imap listen=...)")
		return
	}
	defer cl.Close()
	if err := cl.AuthenticatePlain(ctx, d.user, admin, d.adminPW); err != nil {
		d.add("events.imap_admin", statusFail, fmt.Sprintf("%s acting for %s: %v", admin, d.user, err),
			"imapd.conf: admins: "+strings.Join(append(strings.Fields(d.imapd["admins"]), admin), " ")+"   (and the password: cyrus.admin.secret)")
		return
	}
	cl.Logout(ctx)
	d.add("events.imap_admin", statusOK, fmt.Sprintf("%s logs in to %s acting for %s, as the reconciler does", admin, addr, d.user))
}
