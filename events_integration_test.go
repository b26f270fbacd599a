//go:build integration

package main

// The events feature end to end, as docs/events.md documents it and the
// issue accepts it: real Cyrus 3.6, configured with the page's imapd.conf
// snippet, sends its mailbox events to the real `cyrus-sidecar serve`
// binary, which delivers them as Standard Webhooks to consumers added with
// `cyrus-sidecar consumer add` and as Server-Sent Events to users holding
// tokens from `cyrus-sidecar token issue`, over [http] listen on a UNIX
// socket. Cyrus logs everyone in (users, and the admin the reconciler and
// ManageSieve use) through serve's own saslauthd responder.
//
//	TestEventsEndToEnd  every kind of change on private and shared folders,
//	                    LMTP delivery and Sieve fileinto: the right event
//	                    reaches the right consumers and streams, no one else.
//	TestEventsRestart   serve stopped while mail arrives: the start-up
//	                    reconcile reports exactly the changed mailboxes, to
//	                    the consumer and to a stream that resumes.
//	TestEventsFlood     a burst far larger than the ring while the sidecar
//	                    is stalled: Cyrus never waits, the drops are counted
//	                    and every affected mailbox is reported afterwards.
//	TestEventsEnvelopeOptIn  subjects and senders reach the one consumer
//	                    that opted in (consumer add -envelope), fetched
//	                    without setting \Seen; no one else sees them.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"database/sql"

	_ "modernc.org/sqlite" // the test holds the store's write lock in TestEventsFlood

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/services/events"
	"cyrus-sidecar/services/vacation/managesieve"
)

const (
	// evWait bounds the wait for one expected event, log line or stream:
	// two shared cores, a race-enabled serve, Cyrus forking per connection.
	evWait = 30 * time.Second
	// evQuiet is how long the tests wait before concluding that something
	// did NOT arrive: the coalesce window (200 ms, a MailboxModseq is held
	// that long), a publish batch (20 ms) and a webhook round trip, with a
	// wide margin for the busy machine.
	evQuiet = 1500 * time.Millisecond
)

// The accounts, each in the store with its password; Cyrus's `admins`
// entry "admin" is admin@example.com there.
const (
	alice = "alice@example.com"
	bob   = "bob@example.com"
	carol = "carol@example.com"
	dave  = "dave@other.org"
	admin = "admin@example.com"
)

var evPasswords = map[string]string{alice: "alice pw", bob: "bob pw", carol: "carol pw", dave: "dave pw"}

// evLabOptions vary the set-up per test.
type evLabOptions struct {
	ringSize    int    // [events.ingest] ring_size; 0 = the default
	busyTimeout string // [store] busy_timeout; "" = the default
	mailboxes   []string
	consumers   []evConsumer
}

type evConsumer struct{ name, org, path string }

// evLab is one Cyrus, one store and configuration, and serve.
type evLab struct {
	dir, cfg, bin    string
	httpSock, notify string
	adminPW          string
	opts             evLabOptions
	cy               *lab.Cyrus
	serve            *evServe
	hooks            *hookRecorder
	sinks            []*received // where events may arrive, for step's marks
	absent           []absentCheck
	consumerSinks    map[string]*received
	serveRuns        int
}

// startEvLab writes the configuration, fills the store (organisations Acme
// with example.com and Other with other.org, the users), starts Cyrus with
// docs/events.md's imapd.conf lines and serve, creates the mailboxes as the
// admin and adds the webhook consumers with the real CLI.
func startEvLab(t *testing.T, o evLabOptions) *evLab {
	t.Helper()
	// Cyrus (user cyrus) must enter the directory to reach the sockets;
	// t.TempDir is 0700 and its path may be too long for a UNIX socket.
	dir, err := os.MkdirTemp("/tmp", "ev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l := &evLab{dir: dir, cfg: filepath.Join(dir, "config.toml"), bin: buildBinary(t),
		httpSock: filepath.Join(dir, "http.sock"), notify: filepath.Join(dir, "notify"),
		adminPW: rand.Text(), opts: o, consumerSinks: map[string]*received{}}

	l.cy = lab.StartCyrus(t, lab.CyrusOptions{
		SASLSocket: filepath.Join(dir, "mux"), AdminPassword: l.adminPW,
		Conf: eventsIMAPDConf(t, l.notify),
	})
	l.writeConfig(t)
	mustRun(t, l.cfg, "", "org", "add", "Acme")
	mustRun(t, l.cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, l.cfg, "", "org", "add", "Other")
	mustRun(t, l.cfg, "", "domain", "add", "other.org", "-org", "Other")
	for _, a := range slices.Sorted(maps.Keys(evPasswords)) {
		mustRun(t, l.cfg, evPasswords[a]+"\n", "user", "add", a, "-password-stdin")
	}
	mustRun(t, l.cfg, l.adminPW+"\n", "user", "add", admin, "-password-stdin")

	l.serve = l.startServe(t)
	adm := l.cy.AdminIMAP(t)
	for _, a := range []string{alice, bob, carol, dave} {
		l.imap(t, adm, "CREATE "+lab.IMAPQuote(l.cy.Mailbox(a)))
	}
	l.imap(t, adm, o.mailboxes...)
	adm.Logout(t)

	l.hooks = newHookRecorder(t)
	for _, c := range o.consumers {
		l.addConsumer(t, c)
	}
	return l
}

// eventsIMAPDConf returns docs/events.md's imapd.conf lines as overrides
// for the lab's imapd.conf, with one substitution: notifysocket, which the
// page sets to the production path (/run/cyrus-sidecar/notify, serve's
// default [events.ingest] socket under systemd's RuntimeDirectory), is the
// test's own socket, the same path serve's configuration binds. Every other
// line (event_notifier, event_groups, event_extra_params,
// event_exclude_specialuse) is used exactly as documented, so the test also
// shows that this set does not crash Cyrus 3.6.1.
func eventsIMAPDConf(t *testing.T, socket string) map[string]string {
	t.Helper()
	conf := map[string]string{}
	for line := range strings.Lines(lab.DocSnippet(t, "docs/events.md", "imapd-conf")) {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("docs/events.md imapd-conf: line %q is not \"key: value\"", line)
		}
		conf[k] = v
	}
	if conf["notifysocket"] != "/run/cyrus-sidecar/notify" || conf["event_notifier"] == "" || conf["event_groups"] == "" {
		t.Fatalf("docs/events.md imapd-conf changed: %v", conf)
	}
	conf["notifysocket"] = socket
	return conf
}

// writeConfig writes serve's configuration: the store, Cyrus's IMAP for
// the reconciler (as admin), saslauthd for Cyrus with a token key, the
// events on the lab's notify socket, [http] on a UNIX socket with metrics.
func (l *evLab) writeConfig(t *testing.T) {
	t.Helper()
	secret, key := filepath.Join(l.dir, "admin.secret"), filepath.Join(l.dir, "groupware.key")
	raw := make([]byte, 32)
	rand.Read(raw)
	writeFiles(t, map[string]string{secret: l.adminPW + "\n", key: base64.StdEncoding.EncodeToString(raw) + "\n"})
	busy, ring := "5s", 8192
	if l.opts.busyTimeout != "" {
		busy = l.opts.busyTimeout
	}
	if l.opts.ringSize != 0 {
		ring = l.opts.ringSize
	}
	// The reconciler's periodic sweep is put out of the way (10m): the
	// start-up sweep and the dirty marks are what TestEventsRestart and
	// TestEventsFlood show, and TestEventsEndToEnd asserts the events
	// Cyrus sent. Debug logging: the reconciler logs a pass without
	// changes at debug only, and TestEventsRestart waits for those.
	conf := fmt.Sprintf(`[store]
path = %q
busy_timeout = %q
[cyrus]
default_domain = "example.com"
imap = %q
managesieve = %q
admin_user = "admin"
admin_password_file = %q
[password]
time = 1
memory_kib = 8192
[log]
level = "debug"
[saslauthd]
listen = "unix:%s"
socket_mode = "0666"
[saslauthd.token_keys]
groupware = %q
[lmtp]
enabled = false
[socketmap]
enabled = false
[vacation]
enabled = false
[http]
listen = "unix:%s"
[metrics]
enabled = true
[events]
enabled = true
[events.ingest]
socket = %q
# The lab's Cyrus master starts as root and runs its services as cyrus
# (cyrus-lab-facts §2), as Debian's does.
cyrus_user = "cyrus"
relay_socket = ""
ring_size = %d
[events.reconcile]
interval = "10m"
`, filepath.Join(l.dir, "store.db"), busy, l.cy.IMAPAddr, l.cy.SieveAddr, secret,
		filepath.Join(l.dir, "mux"), key, l.httpSock, l.notify, ring)
	if err := os.WriteFile(l.cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cli runs the built binary as an admin would, with the lab's
// configuration, and returns its standard output.
func (l *evLab) cli(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.bin, append(args, "-config", l.cfg)...)
	cmd.Env = filteredEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cyrus-sidecar %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// addConsumer adds a webhook consumer with `cyrus-sidecar consumer add`
// (and extra flags) and gives the recorder the secret the command printed.
func (l *evLab) addConsumer(t *testing.T, c evConsumer, extra ...string) *received {
	t.Helper()
	out := l.cli(t, append([]string{"consumer", "add", c.name, "-url", l.hooks.srv.URL + c.path, "-org", c.org}, extra...)...)
	var secret string
	for f := range strings.FieldsSeq(out) {
		if strings.HasPrefix(f, "whsec_") {
			secret = f
		}
	}
	key, err := events.ParseSecret(secret)
	if err != nil {
		t.Fatalf("consumer add printed no usable secret: %v\n%s", err, out)
	}
	r := l.hooks.add(c.path, "webhooks of "+c.name, key)
	l.consumerSinks[c.name] = r
	l.sinks = append(l.sinks, r)
	return r
}

// imap runs each command on cl, failing the test unless it is OK.
func (l *evLab) imap(t *testing.T, cl *lab.IMAPClient, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if r := cl.Cmd(t, c); !r.OK() {
			first, _, _ := strings.Cut(c, "\r\n")
			t.Fatalf("imap %s: %s", first, r)
		}
	}
}

// login opens an IMAP session as account with its password, through
// Cyrus and serve's saslauthd.
func (l *evLab) login(t *testing.T, account string) *lab.IMAPClient {
	t.Helper()
	cl := lab.DialIMAP(t, l.cy.IMAPAddr)
	cl.Login(t, account, evPasswords[account])
	return cl
}

// deliver delivers one message over Cyrus's LMTP socket to each rcpt,
// which must all be accepted, and returns how long it took.
func (l *evLab) deliver(t *testing.T, subject string, rcpts ...string) time.Duration {
	t.Helper()
	msg := fmt.Sprintf("From: sender@outside.example\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%d.%s@lab>\r\n\r\nbody\r\n",
		rcpts[0], subject, time.Now().UnixNano(), rand.Text()[:8])
	start := time.Now()
	replies := l.cy.Deliver(t, "sender@outside.example", rcpts, []byte(msg))
	d := time.Since(start)
	for i, r := range replies {
		if !strings.HasPrefix(r, "250") {
			t.Fatalf("lmtp to %s: %s", rcpts[i], r)
		}
	}
	return d
}

func appendCmd(mailbox, msg string) string {
	// LITERAL+ (Cyrus advertises it): the literal goes with the command.
	return fmt.Sprintf("APPEND %s {%d+}\r\n%s", lab.IMAPQuote(mailbox), len(msg), msg)
}

// evMessage is a small message for APPEND; its subject must never leave
// the sidecar (docs/events.md: "No subject and no sender").
func evMessage(n int) string {
	return fmt.Sprintf("From: alice@example.com\r\nSubject: %s %d\r\n\r\nbody %d\r\n", secretSubject, n, n)
}

const secretSubject = "Quarterly figures, confidential"

// ---- serve ------------------------------------------------------------------

// evServe is one run of `cyrus-sidecar serve`; its JSON log lines are
// kept (serve must never block on a full pipe) for waitLog and, when the
// test fails, for the log.
type evServe struct {
	d       *daemon
	mu      sync.Mutex
	logs    []map[string]any
	changed chan struct{}
	done    chan struct{} // stderr closed: the process is gone
}

func (l *evLab) startServe(t *testing.T) *evServe {
	t.Helper()
	l.serveRuns++
	n := l.serveRuns
	// startServe binds its sd_notify socket in the directory it is given:
	// one per run, since the last run's stays bound until cleanup.
	run := filepath.Join(l.dir, fmt.Sprintf("run%d", n))
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &evServe{d: startServe(t, run, "-config", l.cfg), changed: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for m := range s.d.logs {
			s.mu.Lock()
			s.logs = append(s.logs, m)
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			s.dump(t, n)
		}
	})
	s.waitLog(t, 0, "ready", nil)
	return s
}

// waitLog waits for a log line with msg (and for which match, if given,
// is true) at or after index from, and returns its index.
func (s *evServe) waitLog(t *testing.T, from int, msg string, match func(map[string]any) bool) int {
	t.Helper()
	deadline := time.NewTimer(evWait)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		logs, ch := s.logs, s.changed
		s.mu.Unlock()
		for i := from; i < len(logs); i++ {
			if logs[i]["msg"] == msg && (match == nil || match(logs[i])) {
				return i
			}
		}
		select {
		case <-ch:
		case <-s.done:
			t.Fatalf("serve exited before logging %q", msg)
		case <-deadline.C:
			t.Fatalf("serve did not log %q within %v", msg, evWait)
		}
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (s *evServe) stop(t *testing.T) {
	t.Helper()
	if err := s.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.waitLog(t, 0, "stopped on signal", nil)
	select {
	case <-s.done:
	case <-time.After(evWait):
		t.Fatalf("serve did not exit within %v of SIGTERM", evWait)
	}
	if err := s.d.cmd.Wait(); err != nil {
		t.Errorf("serve exit after SIGTERM: %v", err)
	}
}

// dump logs serve's warnings and errors (debug lines are too many).
func (s *evServe) dump(t *testing.T, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, m := range s.logs {
		if lvl, _ := m["level"].(string); lvl == "WARN" || lvl == "ERROR" {
			line, _ := json.Marshal(m)
			fmt.Fprintf(&b, "%s\n", line)
		}
	}
	t.Logf("serve run %d (%d log lines): warnings and errors:\n%s", n, len(s.logs), b.String())
}

// ---- where events arrive ----------------------------------------------------

// received is what one sink got, in arrival order: the webhooks of one
// consumer (deduplicated by webhook-id: delivery is at least once) or one
// user's stream.
type received struct {
	name    string
	mu      sync.Mutex
	evs     []events.Event
	ids     []string // webhook-id, or the stream's id
	raw     []string // the bodies or data lines, for the leak check
	seen    map[string]bool
	changed chan struct{}
}

func newReceived(name string) *received {
	return &received{name: name, seen: map[string]bool{}, changed: make(chan struct{})}
}

func (r *received) add(id string, ev events.Event, raw string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[id] {
		return
	}
	r.seen[id] = true
	r.evs, r.ids, r.raw = append(r.evs, ev), append(r.ids, id), append(r.raw, raw)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *received) snapshot() ([]events.Event, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs), r.changed
}

func (r *received) all() []events.Event {
	evs, _ := r.snapshot()
	return evs
}

func (r *received) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.evs)
}

// await waits until an event at index from or later matches w, and
// returns it.
func (r *received) await(t *testing.T, from int, what string, w want) events.Event {
	t.Helper()
	deadline := time.NewTimer(evWait)
	defer deadline.Stop()
	for {
		evs, ch := r.snapshot()
		for _, e := range evs[from:] {
			if w.match(e) {
				return e
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%s: %s got no %s within %v; since the action it got:\n%s", what, r.name, w, evWait, evList(evs[from:]))
		}
	}
}

// want describes an expected event; empty fields match anything except
// account, which matches exactly ("" is a shared folder).
type want struct {
	typ, account, mailbox, cyrus string
	check                        func(events.Event) error
	same                         *events.Event // when set, only this very event matches
}

func (w want) match(e events.Event) bool {
	if w.same != nil {
		return sameEvent(*w.same, e)
	}
	return e.Type == w.typ && e.Account == w.account && e.Mailbox == w.mailbox && (w.cyrus == "" || e.CyrusEvent == w.cyrus)
}

func (w want) String() string {
	if w.same != nil {
		return "the same " + evString(*w.same)
	}
	s := fmt.Sprintf("%s %q %s", w.typ, w.account, w.mailbox)
	if w.cyrus != "" {
		s += " (" + w.cyrus + ")"
	}
	return s
}

func evString(e events.Event) string {
	s := fmt.Sprintf("%s %s %q %s", e.CyrusEvent, e.Type, e.Account, e.Mailbox)
	if e.UIDs != "" {
		s += " uids=" + e.UIDs
	}
	if e.OldMailbox != "" {
		s += " from=" + e.OldMailbox
	}
	return s + " at " + e.Time.Format("15:04:05.000")
}

func evList(evs []events.Event) string {
	if len(evs) == 0 {
		return "  (nothing)"
	}
	var b strings.Builder
	for _, e := range evs {
		b.WriteString("  " + evString(e) + "\n")
	}
	return b.String()
}

// sameEvent reports whether a and b are the same event as consumers see
// it: webhooks and streams carry the same JSON (Readers is never sent).
func sameEvent(a, b events.Event) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// expect is one expected event of a step: it must reach every sink in to,
// and (checked at the end, after a quiet period) none in not.
type expect struct {
	w       want
	to, not []*received
}

type absentCheck struct {
	what string
	ev   events.Event
	not  []*received
}

// step runs action and waits, in each sink of each expectation, for the
// expected event to arrive after what the sink had before the action. It
// returns the events found (from the first sink of each).
func (l *evLab) step(t *testing.T, what string, action func(), exps ...expect) []events.Event {
	t.Helper()
	marks := map[*received]int{}
	for _, s := range l.sinks {
		marks[s] = s.len()
	}
	action()
	var found []events.Event
	for _, x := range exps {
		var first events.Event
		for i, s := range x.to {
			if i == 0 {
				first = s.await(t, marks[s], what, x.w)
				if x.w.check != nil {
					if err := x.w.check(first); err != nil {
						t.Errorf("%s: %s: %v", what, evString(first), err)
					}
				}
				continue
			}
			// The other sinks must get that very event (same JSON), not
			// just one like it: a MOVE, say, removes twice (see there).
			same := x.w
			same.same = &first
			s.await(t, marks[s], what, same)
		}
		l.absent = append(l.absent, absentCheck{what, first, x.not})
		found = append(found, first)
	}
	return found
}

// checkAbsent reports every expected event that reached a sink it must
// not reach. Call it after a quiet period.
func (l *evLab) checkAbsent(t *testing.T) {
	t.Helper()
	for _, a := range l.absent {
		for _, s := range a.not {
			for _, e := range s.all() {
				if sameEvent(a.ev, e) {
					t.Errorf("%s: %s reached %s", a.what, evString(e), s.name)
				}
			}
		}
	}
}

// ---- webhooks ---------------------------------------------------------------

// hookRecorder is the consumers' HTTP endpoint on loopback. Each path is
// one consumer; each request's signature is checked with that consumer's
// secret (events.Verify, as docs/events.md tells consumers to) before it
// is recorded; problems are collected for the test to report.
type hookRecorder struct {
	srv      *httptest.Server
	mu       sync.Mutex
	keys     map[string][]byte
	sinks    map[string]*received
	verified int
	problems []string
}

func newHookRecorder(t *testing.T) *hookRecorder {
	t.Helper()
	h := &hookRecorder{keys: map[string][]byte{}, sinks: map[string]*received{}}
	h.srv = httptest.NewServer(h)
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookRecorder) add(path, name string, key []byte) *received {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := newReceived(name)
	h.keys[path], h.sinks[path] = key, r
	return r
}

func (h *hookRecorder) problem(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.problems = append(h.problems, fmt.Sprintf(format, args...))
}

func (h *hookRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	// serve may send to a consumer as soon as `consumer add` committed,
	// before the test has read the printed secret and registered the
	// path (a start-up reconcile, say): wait for it a little.
	var key []byte
	var sink *received
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		h.mu.Lock()
		key, sink = h.keys[r.URL.Path], h.sinks[r.URL.Path]
		h.mu.Unlock()
		if sink != nil || time.Now().After(deadline) {
			break
		}
	}
	switch {
	case err != nil:
		h.problem("%s: reading the body: %v", r.URL.Path, err)
		return
	case sink == nil:
		h.problem("webhook to unknown path %s", r.URL.Path)
		http.NotFound(w, r)
		return
	case r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json":
		h.problem("%s: %s with Content-Type %q", r.URL.Path, r.Method, r.Header.Get("Content-Type"))
	}
	// Over the raw body, before parsing, as the page says.
	if err := events.Verify(key, r.Header, body, time.Now(), events.DefaultTolerance); err != nil {
		h.problem("%s: webhook %s: %v", r.URL.Path, r.Header.Get(events.HeaderID), err)
		http.Error(w, "bad signature", http.StatusBadRequest)
		return
	}
	var p struct {
		Type      string          `json:"type"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}
	var ev events.Event
	if err := json.Unmarshal(body, &p); err != nil || json.Unmarshal(p.Data, &ev) != nil || p.Type != ev.Type || p.Timestamp.IsZero() {
		h.problem("%s: body %s: %v", r.URL.Path, body, err)
	}
	h.mu.Lock()
	h.verified++
	h.mu.Unlock()
	sink.add(r.Header.Get(events.HeaderID), ev, string(body))
	w.WriteHeader(http.StatusNoContent)
}

// check reports the problems seen so far.
func (h *hookRecorder) check(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.problems {
		t.Errorf("webhook: %s", p)
	}
	if h.verified == 0 {
		t.Errorf("no webhook was received")
	}
}

// ---- Server-Sent Events -----------------------------------------------------

// sseStream is one GET /events, read on its own goroutine.
type sseStream struct {
	*received
	user    string
	mu      sync.Mutex
	lastID  int64
	badIDs  []string // ids that did not follow the previous one by 1
	ok      chan struct{}
	done    chan struct{} // the stream ended
	endedBy error
}

// unixHTTP is an HTTP client for serve's [http] listen socket.
func unixHTTP(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// openStream mints a token for user with `cyrus-sidecar token issue
// -service events`, trades it for a ticket (POST /events/ticket, Basic
// user:token) and opens the stream, resuming after lastID when it is not
// negative. It returns once the stream is registered (the ": ok" comment).
func (l *evLab) openStream(t *testing.T, user string, lastID int64) *sseStream {
	t.Helper()
	token := strings.TrimSpace(l.cli(t, "token", "issue", user, "-service", "events", "-ttl", "10m"))
	cl := unixHTTP(l.httpSock)
	ctx, cancel := context.WithTimeout(context.Background(), evWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://sidecar/events/ticket", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, token)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("POST /events/ticket as %s: %v", user, err)
	}
	var tk struct {
		Ticket  string    `json:"ticket"`
		Expires time.Time `json:"expires"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&tk)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || tk.Ticket == "" {
		t.Fatalf("POST /events/ticket as %s: %s, %+v, %v", user, resp.Status, tk, err)
	}

	q := url.Values{"ticket": {tk.Ticket}}
	if lastID >= 0 {
		q.Set("lastEventId", strconv.FormatInt(lastID, 10))
	}
	sctx, scancel := context.WithCancel(context.Background())
	req, err = http.NewRequestWithContext(sctx, http.MethodGet, "http://sidecar/events?"+q.Encode(), nil)
	if err != nil {
		scancel()
		t.Fatal(err)
	}
	resp, err = cl.Do(req)
	if err != nil {
		scancel()
		t.Fatalf("GET /events as %s: %v", user, err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		scancel()
		t.Fatalf("GET /events as %s: %s %q", user, resp.Status, resp.Header.Get("Content-Type"))
	}
	s := &sseStream{received: newReceived("stream of " + user), user: user, lastID: lastID,
		ok: make(chan struct{}), done: make(chan struct{})}
	go s.read(resp.Body)
	t.Cleanup(func() {
		scancel()
		<-s.done
	})
	select {
	case <-s.ok:
	case <-s.done:
		t.Fatalf("stream of %s ended before \": ok\": %v", user, s.endedBy)
	case <-time.After(evWait):
		t.Fatalf("stream of %s: no \": ok\" within %v", user, evWait)
	}
	l.sinks = append(l.sinks, s.received)
	return s
}

// read parses the text/event-stream (WHATWG HTML §9.2.6) until it ends.
func (s *sseStream) read(body io.ReadCloser) {
	defer close(s.done)
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var id, typ, data string
	okSeen := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != "" {
				s.dispatch(id, typ, data)
			}
			id, typ, data = "", "", ""
		case strings.HasPrefix(line, ":"):
			if !okSeen && strings.TrimSpace(line[1:]) == "ok" {
				okSeen = true
				close(s.ok)
			}
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				id = value
			case "event":
				typ = value
			case "data":
				data += value
			}
		}
	}
	s.mu.Lock()
	s.endedBy = sc.Err()
	s.mu.Unlock()
}

func (s *sseStream) dispatch(id, typ, data string) {
	var ev events.Event
	n, err := strconv.ParseInt(id, 10, 64)
	s.mu.Lock()
	// docs/events.md: "id is the account's own sequence number:
	// contiguous"; the first after a fresh start may be anything.
	if err != nil || (s.lastID >= 0 && n != s.lastID+1) {
		s.badIDs = append(s.badIDs, fmt.Sprintf("%q after %d", id, s.lastID))
	}
	s.lastID = n
	s.mu.Unlock()
	if json.Unmarshal([]byte(data), &ev) != nil || ev.Type != typ {
		ev = events.Event{Type: "unparsed event: " + typ + " " + data}
	}
	s.add(id, ev, data)
}

func (s *sseStream) checkIDs(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.badIDs) > 0 {
		t.Errorf("%s: ids not contiguous: %q", s.name, s.badIDs)
	}
}

// ended reports whether the stream has ended (serve closed it).
func (s *sseStream) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// checkNoLeak reports a sink whose payloads carry the messages' subject.
func checkNoLeak(t *testing.T, sinks ...*received) {
	t.Helper()
	for _, s := range sinks {
		s.mu.Lock()
		for _, r := range s.raw {
			if strings.Contains(r, "Quarterly") || strings.Contains(r, "sender@outside") {
				t.Errorf("%s: a payload carries the subject or the sender: %s", s.name, r)
			}
		}
		s.mu.Unlock()
	}
}

// ---- metrics ----------------------------------------------------------------

// metricValue returns the value of one series on the metrics page
// ("name{labels}"), or -1 when it is not there.
func metricValue(page, series string) float64 {
	for line := range strings.Lines(page) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

const (
	metricOverflow = `cyrus_sidecar_events_dropped_total{reason="overflow"}`
	metricUID      = `cyrus_sidecar_events_dropped_total{reason="uid"}`
	metricReceived = `cyrus_sidecar_events_received_total`
)

// ---- the tests --------------------------------------------------------------

// TestEventsEndToEnd: with Cyrus configured as docs/events.md says, each
// kind of change produces the documented event, and it reaches exactly the
// sinks that may see it:
//
//   - consumer "gw" (org Acme: example.com) gets every event of a folder
//     whose owner or a reader is in example.com, and nothing of other.org;
//     consumer "ot" (org Other) gets dave's and nothing of Acme's;
//   - alice's stream gets her own folders' events and the shared folder's
//     (she has lr on shared/team), never bob's or dave's private ones;
//   - bob's stream gets his own and the shared folder's, and alice's
//     INBOX/Projects only while alice's ACL grants him lr;
//   - dave's stream gets only his own;
//   - a (un)subscription reaches only the subscriber (and the consumer).
//
// Each expected event is awaited (bounded) after its action; what must not
// arrive is checked at the end after a quiet period, both per action (the
// very event, by its JSON) and as invariants over everything received.
func TestEventsEndToEnd(t *testing.T) {
	start := time.Now()
	l := startEvLab(t, evLabOptions{
		mailboxes: []string{
			// The shared folder, as the admin creates it: alice may do
			// everything, bob may read (and keep \Seen).
			"CREATE shared/team",
			"SETACL shared/team alice lrswipkxtecdan",
			"SETACL shared/team bob lrs",
		},
		consumers: []evConsumer{{"gw", "Acme", "/hook"}, {"ot", "Other", "/other"}},
	})
	gw, ot := l.consumerSinks["gw"], l.consumerSinks["ot"]

	// bob's Sieve script, uploaded over ManageSieve by the admin acting
	// for bob (proxy authorisation, as the vacation service does).
	bobS := l.login(t, bob)
	l.imap(t, bobS, `CREATE "INBOX/Lists"`)
	ms, err := managesieve.Dial(t.Context(), "tcp", l.cy.SieveAddr, managesieve.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ms.AuthenticatePlain(bob, "admin", l.adminPW); err != nil {
		t.Fatalf("ManageSieve as admin for bob: %v", err)
	}
	if err := ms.PutScript("lists", "require [\"fileinto\"];\r\nfileinto \"INBOX/Lists\";\r\n"); err != nil {
		t.Fatalf("PUTSCRIPT: %v", err)
	}
	if err := ms.SetActive("lists"); err != nil {
		t.Fatalf("SETACTIVE: %v", err)
	}
	ms.Logout()

	sa, sb, sd := l.openStream(t, alice, -1), l.openStream(t, bob, -1), l.openStream(t, dave, -1)
	A, B, D := sa.received, sb.received, sd.received
	t.Logf("set-up (Cyrus, store, serve, mailboxes, consumers, Sieve, 3 streams): %v", time.Since(start))
	start = time.Now()

	// Who may see what.
	alicePrivate := func(w want) expect { return expect{w, []*received{gw, A}, []*received{ot, B, D}} }
	shared := func(w want) expect { return expect{w, []*received{gw, A, B}, []*received{ot, D}} }
	aliceOnly := func(w want) expect { return expect{w, []*received{gw, A}, []*received{ot, B, D}} } // her subscriptions
	imapActor := func(e events.Event) error {
		if e.Actor != alice || e.Service != "imap" {
			return fmt.Errorf("actor %q service %q, want %s imap", e.Actor, e.Service, alice)
		}
		return nil
	}
	added := func(uids string, messages uint32) func(events.Event) error {
		return func(e events.Event) error {
			if e.UIDs != uids || e.Messages == nil || *e.Messages != messages || e.MailboxID == "" || e.UIDValidity == 0 || e.Modseq == 0 {
				return fmt.Errorf("uids %q messages %v mailboxId %q uidValidity %d modseq %d; want uids %s, %d messages and ids",
					e.UIDs, e.Messages, e.MailboxID, e.UIDValidity, e.Modseq, uids, messages)
			}
			return imapActor(e)
		}
	}
	subscribed := func(on bool) func(events.Event) error {
		return func(e events.Event) error {
			if e.Subscribed == nil || *e.Subscribed != on {
				return fmt.Errorf("subscribed %v, want %v", e.Subscribed, on)
			}
			return nil
		}
	}
	flagged := func(flag string) func(events.Event) error {
		return func(e events.Event) error {
			if !slices.Contains(e.Flags, flag) || e.UIDs == "" {
				return fmt.Errorf("flags %q uids %q, want %s", e.Flags, e.UIDs, flag)
			}
			return nil
		}
	}

	// ---- alice's private folders ----
	as := l.login(t, alice)
	run := func(cmds ...string) func() { return func() { l.imap(t, as, cmds...) } }
	l.step(t, "CREATE", run(`CREATE "INBOX/Projects"`),
		alicePrivate(want{typ: events.TypeMailboxCreated, account: alice, mailbox: "INBOX/Projects", cyrus: "MailboxCreate", check: imapActor}))
	l.step(t, "SUBSCRIBE", run(`SUBSCRIBE "INBOX/Projects"`),
		aliceOnly(want{typ: events.TypeMailboxSubscription, account: alice, mailbox: "INBOX/Projects", check: subscribed(true)}))
	l.step(t, "APPEND", run(appendCmd("INBOX/Projects", evMessage(1))),
		alicePrivate(want{typ: events.TypeMessageAdded, account: alice, mailbox: "INBOX/Projects", cyrus: "MessageAppend", check: added("1", 1)}))
	l.step(t, "STORE +FLAGS", run(`SELECT "INBOX/Projects"`, `STORE 1 +FLAGS (\Flagged)`),
		alicePrivate(want{typ: events.TypeMessageFlags, account: alice, mailbox: "INBOX/Projects", cyrus: "FlagsSet", check: flagged(`\Flagged`)}))
	l.step(t, "COPY", run(`CREATE "INBOX/Archive"`, `COPY 1 "INBOX/Archive"`),
		alicePrivate(want{typ: events.TypeMailboxCreated, account: alice, mailbox: "INBOX/Archive"}),
		alicePrivate(want{typ: events.TypeMessageAdded, account: alice, mailbox: "INBOX/Archive", cyrus: "vnd.cmu.MessageCopy", check: added("1", 1)}))
	// MOVE: added in the destination, removed from the source. Cyrus
	// sends MessageExpunge on the source, and the parser adds a
	// message.removed from the move's oldMailboxID: either will do, so
	// the expectation names no Cyrus event.
	l.step(t, "MOVE", run(`MOVE 1 "INBOX/Archive"`),
		alicePrivate(want{typ: events.TypeMessageAdded, account: alice, mailbox: "INBOX/Archive", cyrus: "vnd.cmu.MessageMove", check: added("2", 2)}),
		alicePrivate(want{typ: events.TypeMessageRemoved, account: alice, mailbox: "INBOX/Projects"}))
	l.step(t, "STORE \\Deleted, EXPUNGE", run(`SELECT "INBOX/Archive"`, `STORE 1 +FLAGS (\Deleted)`, "EXPUNGE"),
		alicePrivate(want{typ: events.TypeMessageFlags, account: alice, mailbox: "INBOX/Archive", cyrus: "MessageTrash", check: flagged(`\Deleted`)}),
		alicePrivate(want{typ: events.TypeMessageRemoved, account: alice, mailbox: "INBOX/Archive", cyrus: "MessageExpunge"}))
	l.step(t, "RENAME", run("SELECT INBOX", `RENAME "INBOX/Archive" "INBOX/Old"`),
		alicePrivate(want{typ: events.TypeMailboxRenamed, account: alice, mailbox: "INBOX/Old", cyrus: "MailboxRename",
			check: func(e events.Event) error {
				if e.OldMailbox != "INBOX/Archive" {
					return fmt.Errorf("oldMailbox %q", e.OldMailbox)
				}
				return nil
			}}))
	// The ACL takes effect at once, both ways: bob reads INBOX/Projects
	// from the grant on, and nothing from the revocation on (not even the
	// revocation itself: its event carries the new ACL).
	grant := l.step(t, "SETACL bob lr", run(`SETACL "INBOX/Projects" bob lr`),
		expect{want{typ: events.TypeMailboxACL, account: alice, mailbox: "INBOX/Projects", cyrus: "AclChange"}, []*received{gw, A, B}, []*received{ot, D}})[0]
	l.step(t, "APPEND while bob may read", run(appendCmd("INBOX/Projects", evMessage(2))),
		expect{want{typ: events.TypeMessageAdded, account: alice, mailbox: "INBOX/Projects", cyrus: "MessageAppend", check: added("2", 1)}, []*received{gw, A, B}, []*received{ot, D}})
	revoke := l.step(t, "DELETEACL bob", run(`DELETEACL "INBOX/Projects" bob`),
		alicePrivate(want{typ: events.TypeMailboxACL, account: alice, mailbox: "INBOX/Projects", cyrus: "AclChange"}))[0]
	l.step(t, "APPEND after the revocation", run(appendCmd("INBOX/Projects", evMessage(3))),
		alicePrivate(want{typ: events.TypeMessageAdded, account: alice, mailbox: "INBOX/Projects", cyrus: "MessageAppend", check: added("3", 2)}))
	l.step(t, "DELETE", run(`DELETE "INBOX/Old"`),
		alicePrivate(want{typ: events.TypeMailboxDeleted, account: alice, mailbox: "INBOX/Old", cyrus: "MailboxDelete"}))
	l.step(t, "UNSUBSCRIBE", run(`UNSUBSCRIBE "INBOX/Projects"`),
		aliceOnly(want{typ: events.TypeMailboxSubscription, account: alice, mailbox: "INBOX/Projects", check: subscribed(false)}))

	// ---- the shared folder (owner "", readers from its ACL: alice, bob) ----
	l.step(t, "CREATE shared", run(`CREATE "shared/team/sub"`),
		shared(want{typ: events.TypeMailboxCreated, account: "", mailbox: "shared/team/sub", cyrus: "MailboxCreate", check: imapActor}))
	l.step(t, "SUBSCRIBE shared", run(`SUBSCRIBE "shared/team"`),
		aliceOnly(want{typ: events.TypeMailboxSubscription, account: "", mailbox: "shared/team", check: subscribed(true)}))
	l.step(t, "SUBSCRIBE shared by bob", func() { l.imap(t, bobS, `SUBSCRIBE "shared/team"`) },
		expect{want{typ: events.TypeMailboxSubscription, account: "", mailbox: "shared/team", check: subscribed(true)}, []*received{gw, B}, []*received{A, ot, D}})
	l.step(t, "APPEND shared", run(appendCmd("shared/team", evMessage(4))),
		shared(want{typ: events.TypeMessageAdded, account: "", mailbox: "shared/team", cyrus: "MessageAppend", check: added("1", 1)}))
	l.step(t, "STORE +FLAGS shared", run(`SELECT "shared/team"`, `STORE 1 +FLAGS (\Flagged)`),
		shared(want{typ: events.TypeMessageFlags, account: "", mailbox: "shared/team", cyrus: "FlagsSet", check: flagged(`\Flagged`)}))
	l.step(t, "COPY shared", run(`COPY 1 "shared/team/sub"`),
		shared(want{typ: events.TypeMessageAdded, account: "", mailbox: "shared/team/sub", cyrus: "vnd.cmu.MessageCopy", check: added("1", 1)}))
	// The parser's own message.removed for a move's source carries no ACL
	// (Cyrus sends none for oldMailboxID), so for a shared source only
	// Cyrus's MessageExpunge, with the ACL, is told.
	l.step(t, "MOVE shared", run(`MOVE 1 "shared/team/sub"`),
		shared(want{typ: events.TypeMessageAdded, account: "", mailbox: "shared/team/sub", cyrus: "vnd.cmu.MessageMove", check: added("2", 2)}),
		shared(want{typ: events.TypeMessageRemoved, account: "", mailbox: "shared/team", cyrus: "MessageExpunge"}))
	l.step(t, "EXPUNGE shared", run(`SELECT "shared/team/sub"`, `STORE 1:* +FLAGS (\Deleted)`, "EXPUNGE"),
		shared(want{typ: events.TypeMessageFlags, account: "", mailbox: "shared/team/sub", cyrus: "MessageTrash"}),
		shared(want{typ: events.TypeMessageRemoved, account: "", mailbox: "shared/team/sub", cyrus: "MessageExpunge"}))
	l.step(t, "RENAME shared", run("SELECT INBOX", `RENAME "shared/team/sub" "shared/team/sub2"`),
		shared(want{typ: events.TypeMailboxRenamed, account: "", mailbox: "shared/team/sub2", cyrus: "MailboxRename",
			check: func(e events.Event) error {
				if e.OldMailbox != "shared/team/sub" {
					return fmt.Errorf("oldMailbox %q", e.OldMailbox)
				}
				return nil
			}}))
	l.step(t, "SETACL shared", run(`SETACL "shared/team/sub2" carol lr`),
		shared(want{typ: events.TypeMailboxACL, account: "", mailbox: "shared/team/sub2", cyrus: "AclChange"}))
	l.step(t, "DELETE shared", run(`DELETE "shared/team/sub2"`),
		shared(want{typ: events.TypeMailboxDeleted, account: "", mailbox: "shared/team/sub2", cyrus: "MailboxDelete"}))
	l.step(t, "UNSUBSCRIBE shared", run(`UNSUBSCRIBE "shared/team"`),
		aliceOnly(want{typ: events.TypeMailboxSubscription, account: "", mailbox: "shared/team", check: subscribed(false)}))
	as.Logout(t)
	bobS.Logout(t)

	// ---- delivery ----
	lmtp := func(uids string) func(events.Event) error {
		return func(e events.Event) error {
			if e.Service != "lmtpunix" || e.UIDs != uids || e.Messages == nil {
				return fmt.Errorf("service %q uids %q messages %v, want lmtpunix, %s", e.Service, e.UIDs, e.Messages, uids)
			}
			return nil
		}
	}
	l.step(t, "LMTP to alice", func() { l.deliver(t, secretSubject, alice) },
		alicePrivate(want{typ: events.TypeMessageAdded, account: alice, mailbox: "INBOX", cyrus: "MessageNew", check: lmtp("1")}))
	l.step(t, "LMTP to bob, Sieve fileinto", func() { l.deliver(t, secretSubject, bob) },
		expect{want{typ: events.TypeMessageAdded, account: bob, mailbox: "INBOX/Lists", cyrus: "MessageNew", check: lmtp("1")}, []*received{gw, B}, []*received{A, ot, D}})

	// ---- another organisation ----
	l.step(t, "LMTP to dave", func() { l.deliver(t, secretSubject, dave) },
		expect{want{typ: events.TypeMessageAdded, account: dave, mailbox: "INBOX", cyrus: "MessageNew", check: lmtp("1")}, []*received{ot, D}, []*received{gw, A, B}})
	ds := l.login(t, dave)
	l.step(t, "CREATE by dave", func() { l.imap(t, ds, `CREATE "INBOX/Private"`) },
		expect{want{typ: events.TypeMailboxCreated, account: dave, mailbox: "INBOX/Private", cyrus: "MailboxCreate"}, []*received{ot, D}, []*received{gw, A, B}})
	ds.Logout(t)
	t.Logf("%d steps, each event awaited in every sink: %v", len(l.absent), time.Since(start))

	// Nothing more may arrive that should not: wait out the coalescing
	// window and the delivery, then check everything received.
	time.Sleep(evQuiet)
	l.checkAbsent(t)
	for _, e := range gw.all() {
		if strings.HasSuffix(e.Account, "@other.org") || e.Actor == dave {
			t.Errorf("consumer gw (Acme) got dave's %s", evString(e))
		}
	}
	for _, e := range ot.all() {
		if !strings.HasSuffix(e.Account, "@other.org") {
			t.Errorf("consumer ot (Other) got %s", evString(e))
		}
	}
	for _, e := range D.all() {
		if e.Account != dave {
			t.Errorf("dave's stream got %s", evString(e))
		}
	}
	for _, e := range A.all() {
		if e.Account != alice && !(e.Account == "" && strings.HasPrefix(e.Mailbox, "shared/")) ||
			e.Type == events.TypeMailboxSubscription && e.Actor != alice {
			t.Errorf("alice's stream got %s (actor %s)", evString(e), e.Actor)
		}
	}
	for _, e := range B.all() {
		granted := e.Account == alice && e.Mailbox == "INBOX/Projects" && !e.Time.Before(grant.Time) && e.Time.Before(revoke.Time)
		if e.Account != bob && !(e.Account == "" && strings.HasPrefix(e.Mailbox, "shared/")) && !granted ||
			e.Type == events.TypeMailboxSubscription && e.Actor != bob {
			t.Errorf("bob's stream got %s (actor %s)", evString(e), e.Actor)
		}
	}
	// Sieve filed bob's message: nothing arrived in his INBOX.
	for _, e := range gw.all() {
		if e.Account == bob && e.Mailbox == "INBOX" && e.Type == events.TypeMessageAdded {
			t.Errorf("fileinto: a message.added in bob's INBOX: %s", evString(e))
		}
	}
	for _, s := range []*sseStream{sa, sb, sd} {
		s.checkIDs(t)
	}
	checkNoLeak(t, gw, ot, A, B, D)
	l.hooks.check(t)
	page := scrape(t, l.httpSock)
	if v := metricValue(page, metricUID); v != 0 {
		t.Errorf("%s = %v: Cyrus's datagrams did not come from cyrus_user's uid", metricUID, v)
	}
	if v := metricValue(page, metricOverflow); v != 0 {
		t.Errorf("%s = %v, want 0", metricOverflow, v)
	}
	t.Logf("received: gw %d, ot %d webhooks; streams alice %d, bob %d, dave %d events; %s %v",
		gw.len(), ot.len(), A.len(), B.len(), D.len(), metricReceived, metricValue(page, metricReceived))
}

// reconcileKinds renders a sink's reconciler events since index from as
// sorted "account type mailbox" lines.
func reconcileKinds(evs []events.Event) string {
	var lines []string
	for _, e := range evs {
		if e.CyrusEvent == events.CyrusEventReconcile {
			lines = append(lines, e.Account+" "+e.Type+" "+e.Mailbox)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// waitCount waits until at least n events since from satisfy keep.
func waitCount(t *testing.T, r *received, from, n int, what string, keep func(events.Event) bool) []events.Event {
	t.Helper()
	deadline := time.NewTimer(evWait)
	defer deadline.Stop()
	for {
		evs, ch := r.snapshot()
		var got []events.Event
		for _, e := range evs[from:] {
			if keep(e) {
				got = append(got, e)
			}
		}
		if len(got) >= n {
			return got
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%s: %s got %d of %d within %v:\n%s", what, r.name, len(got), n, evWait, evList(evs[from:]))
		}
	}
}

func isReconcile(e events.Event) bool { return e.CyrusEvent == events.CyrusEventReconcile }

// restartForBaseline restarts serve so that its start-up sweep runs with
// the consumers and mailboxes in place (the first serve started before
// either existed), and waits until that first-ever pass has reported
// every mailbox of the scoped accounts once (want lines, as
// reconcileKinds renders them). It returns each mailbox's modseq.
func (l *evLab) restartForBaseline(t *testing.T, gw *received, want string) map[string]uint64 {
	t.Helper()
	l.serve.stop(t)
	mark := gw.len()
	l.serve = l.startServe(t)
	n := strings.Count(want, "\n") + 1
	got := waitCount(t, gw, mark, n, "baseline", isReconcile)
	if kinds := reconcileKinds(got); kinds != want {
		t.Fatalf("first-ever reconcile:\n%s\nwant\n%s", kinds, want)
	}
	modseq := map[string]uint64{}
	for _, e := range got {
		if e.FromModseq != 0 || e.Modseq == 0 {
			t.Errorf("baseline %s: fromModseq %d modseq %d; want none (never reported) and the current", evString(e), e.FromModseq, e.Modseq)
		}
		modseq[e.Account+" "+e.Mailbox] = e.Modseq
	}
	return modseq
}

// TestEventsRestart: serve stopped while mail arrives, then started: its
// start-up reconcile reports every changed mailbox (mailbox.changed,
// cyrusEvent "reconcile", fromModseq = the modseq reported before) and
// nothing for the unchanged ones, to the webhook consumer and to alice's
// stream resumed with lastEventId.
func TestEventsRestart(t *testing.T) {
	l := startEvLab(t, evLabOptions{
		mailboxes: []string{
			"CREATE user/alice/Projects", "CREATE user/bob/Lists", "CREATE user/alice/Quiet",
			// LMTP to alice+Projects@ needs the p right for the poster.
			"SETACL user/alice/Projects anyone p",
		},
		consumers: []evConsumer{{"gw", "Acme", "/hook"}},
	})
	gw := l.consumerSinks["gw"]
	l.checkDoctor(t)
	before := l.restartForBaseline(t, gw, strings.Join([]string{
		"alice@example.com mailbox.changed INBOX",
		"alice@example.com mailbox.changed INBOX/Projects",
		"alice@example.com mailbox.changed INBOX/Quiet",
		"bob@example.com mailbox.changed INBOX",
		"bob@example.com mailbox.changed INBOX/Lists",
		"carol@example.com mailbox.changed INBOX",
	}, "\n"))
	// alice follows her events; the baseline is in her log (ids 1-3),
	// replayed from the start.
	sa := l.openStream(t, alice, 0)
	waitCount(t, sa.received, 0, 3, "alice's baseline", isReconcile)
	sa.mu.Lock()
	lastID := sa.lastID
	sa.mu.Unlock()

	l.serve.stop(t)
	if !sa.ended() {
		select {
		case <-sa.done:
		case <-time.After(evWait):
			t.Fatalf("alice's stream still open after serve stopped")
		}
	}
	// Mail while the sidecar is down: Cyrus's events are lost (nobody
	// is bound to notifysocket), only the reconciler can tell.
	l.deliver(t, secretSubject, alice)
	l.deliver(t, secretSubject, "alice+Projects@example.com")
	l.deliver(t, secretSubject, bob)

	mark := gw.len()
	start := time.Now()
	l.serve = l.startServe(t)
	got := waitCount(t, gw, mark, 3, "after the restart", isReconcile)
	t.Logf("start-up reconcile reported %d changes in %v", len(got), time.Since(start))
	// The whole sweep, unchanged accounts included, is over once each
	// scoped account's pass has been logged; then wait out delivery.
	for _, a := range []string{alice, bob, carol} {
		l.serve.waitLog(t, 0, "reconciled", func(m map[string]any) bool { return m["account"] == a })
	}
	time.Sleep(evQuiet)
	after := gw.all()[mark:]
	want := strings.Join([]string{
		"alice@example.com mailbox.changed INBOX",
		"alice@example.com mailbox.changed INBOX/Projects",
		"bob@example.com mailbox.changed INBOX",
	}, "\n")
	if kinds := reconcileKinds(after); kinds != want || len(after) != 3 {
		t.Fatalf("webhooks after the restart:\n%s\nwant exactly\n%s", evList(after), want)
	}
	for _, e := range after {
		key := e.Account + " " + e.Mailbox
		if e.FromModseq != before[key] || e.Modseq <= e.FromModseq || e.Messages == nil || *e.Messages != 1 || e.UIDNext != 2 {
			t.Errorf("%s: fromModseq %d modseq %d messages %v uidNext %d; want from %d (reported before the stop), higher, 1 message, uidNext 2",
				evString(e), e.FromModseq, e.Modseq, e.Messages, e.UIDNext, before[key])
		}
	}

	// alice resumes: a new token and ticket, lastEventId = the last id
	// she saw. She gets her two changes, and nothing of bob's.
	sa2 := l.openStream(t, alice, lastID)
	resumed := waitCount(t, sa2.received, 0, 2, "alice's resumed stream", isReconcile)
	time.Sleep(evQuiet)
	if kinds := reconcileKinds(resumed); kinds != "alice@example.com mailbox.changed INBOX\nalice@example.com mailbox.changed INBOX/Projects" || sa2.len() != 2 {
		t.Errorf("alice's resumed stream:\n%s", evList(sa2.all()))
	}
	sa.checkIDs(t)
	sa2.checkIDs(t)
	checkNoLeak(t, gw, sa.received, sa2.received)
	l.hooks.check(t)
}

// TestEventsFlood: a burst of events far larger than the ring while the
// sidecar cannot keep up. The stall is made the way a real one happens
// (events-anchors §4.5: "SQLite lock, slow disk"): the test holds the
// store's write lock, so Publish waits, the parser's queue to it (4096
// events) fills, then the ring (ring_size = 16, the smallest allowed), and
// from then on datagrams are dropped, counted and their accounts marked
// for re-check. (Publish gives up on a batch after 10 s, which frees 256
// places in the queue; the burst refills them at once.) Cyrus must not
// notice: while datagrams are being dropped, a SELECT of the flooded
// mailbox and LMTP deliveries answer at once, and the whole burst
// completes before the lock is released. After the release every
// affected mailbox is reported.
//
// The burst that fills the queue is dave's: SUBSCRIBE/UNSUBSCRIBE, one
// event each, never merged by the coalescer (message events beyond 20 per
// mailbox and 200 ms are, so no message flood fills 4096 places), and no
// consumer has other.org in scope, so the queued events do not become
// thousands of webhooks. Once the ring overflows, alice's INBOX gets a
// flag storm (STOREs, whose events Cyrus sends holding the mailbox lock:
// the case that froze the mailbox when a listener stopped reading,
// events-anchors §1.5 B5) and the probes run, the burst still going.
func TestEventsFlood(t *testing.T) {
	l := startEvLab(t, evLabOptions{
		ringSize: 16,
		// Publish waits for the lock as long as it may (its own limit is
		// 10 s), so the queue stays full.
		busyTimeout: "30s",
		mailboxes: []string{
			"CREATE user/alice/Projects", "SETACL user/alice/Projects anyone p",
			"CREATE user/dave/Flood@other.org",
		},
		consumers: []evConsumer{{"gw", "Acme", "/hook"}},
	})
	gw := l.consumerSinks["gw"]
	// Two messages in alice's INBOX for the flag storm, before the
	// baseline.
	l.deliver(t, "first", alice)
	l.deliver(t, "second", alice)
	before := l.restartForBaseline(t, gw, strings.Join([]string{
		"alice@example.com mailbox.changed INBOX",
		"alice@example.com mailbox.changed INBOX/Projects",
		"bob@example.com mailbox.changed INBOX",
		"carol@example.com mailbox.changed INBOX",
	}, "\n"))

	// Sessions are opened first: logins are not what is measured.
	ds, af, ap := l.login(t, dave), l.login(t, alice), l.login(t, alice)
	l.imap(t, af, "SELECT INBOX")

	db, err := sql.Open("sqlite", "file:"+filepath.Join(l.dir, "store.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lock, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatalf("taking the store's write lock: %v", err)
	}
	locked := time.Now()
	mark := gw.len()
	released := false
	release := func() {
		if !released {
			released = true
			if _, err := lock.ExecContext(context.Background(), "ROLLBACK"); err != nil {
				t.Errorf("releasing the store's write lock: %v", err)
			}
		}
	}
	defer release()
	dropped0 := metricValue(scrape(t, l.httpSock), metricOverflow)

	// dave's burst, in pipelined chunks until the probes are done.
	const chunk, maxChunks = 500, 40
	subs := make([]string, 0, chunk)
	for range chunk / 2 {
		subs = append(subs, `SUBSCRIBE "INBOX/Flood"`, `UNSUBSCRIBE "INBOX/Flood"`)
	}
	var stop atomic.Bool
	var burstErr error
	var sentMu sync.Mutex
	sent := 0
	burstDone := make(chan struct{})
	go func() {
		defer close(burstDone)
		for i := 0; i < maxChunks && !stop.Load(); i++ {
			if _, burstErr = pipeline(ds, subs); burstErr != nil {
				return
			}
			sentMu.Lock()
			sent += len(subs)
			sentMu.Unlock()
		}
	}()
	defer func() { stop.Store(true); <-burstDone }()

	// Wait for the overflow: 4096 + 16 events at Cyrus's pace. A few
	// drops come early (a ring of 16 overflows whenever the parser is
	// descheduled for a moment); hundreds mean the parser is blocked.
	const sustained = 300
	overflowAt := time.Now()
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if v := metricValue(scrape(t, l.httpSock), metricOverflow); v >= dropped0+sustained {
			break
		}
		select {
		case <-burstDone:
			t.Fatalf("the burst ended (%v) without overflowing the ring", burstErr)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d datagrams dropped within 2m of the burst", sustained)
		}
	}
	t.Logf("%d datagrams dropped %v after the store was locked (%d commands sent by then)", sustained, time.Since(overflowAt), sentNow(&sentMu, &sent))

	// Now, with datagrams being dropped: the flag storm on alice's INBOX,
	// and meanwhile a SELECT of it and deliveries, each answering at once.
	const prompt = 2 * time.Second
	flags := make([]string, 0, 200)
	for range 100 {
		flags = append(flags, `STORE 1:2 +FLAGS (\Flagged)`, `STORE 1:2 -FLAGS (\Flagged)`)
	}
	var storm time.Duration
	var stormErr error
	stormDone := make(chan struct{})
	go func() { defer close(stormDone); storm, stormErr = pipeline(af, flags) }()
	sel := time.Now()
	l.imap(t, ap, "SELECT INBOX")
	if d := time.Since(sel); d > prompt {
		t.Errorf("SELECT of the flooded INBOX took %v while events were being dropped", d)
	}
	for _, rcpt := range []string{alice, "alice+Projects@example.com", bob} {
		if d := l.deliver(t, secretSubject, rcpt); d > prompt {
			t.Errorf("LMTP delivery to %s took %v while events were being dropped", rcpt, d)
		}
	}
	<-stormDone
	if stormErr != nil {
		t.Fatalf("flag storm: %v", stormErr)
	}
	page := scrape(t, l.httpSock)
	dropped1 := metricValue(page, metricOverflow)
	select {
	case <-burstDone:
		t.Errorf("the burst (%d commands, %v) ended before the probes did: they may not have met a full ring", sent, burstErr)
	default:
	}
	stop.Store(true)
	<-burstDone
	if burstErr != nil {
		t.Fatalf("burst: %v", burstErr)
	}
	// Cyrus never waited: the whole burst went through with the sidecar
	// stalled.
	held := time.Since(locked)
	t.Logf("with the store locked for %v: %d (un)subscriptions, 200 STOREs in %v, 3 deliveries, a SELECT; %s %v",
		held, sent, storm, metricOverflow, dropped1)
	release()
	start := time.Now()

	// Every affected mailbox in a consumer's scope is reported: alice's
	// INBOX (flag storm and a delivery), INBOX/Projects and bob's INBOX (a
	// delivery each). Whatever of their events met a full ring is covered
	// by the reconciler (their accounts were marked on the drops), what
	// got into the queue is published late: either way the consumer is
	// told, and the reconciler's last word is the mailbox's state now.
	affected := []string{"alice@example.com INBOX", "alice@example.com INBOX/Projects", "bob@example.com INBOX"}
	now := map[string]uint64{}
	for _, a := range []string{alice, bob} {
		cl := l.login(t, a)
		for _, m := range []string{"INBOX", "INBOX/Projects"} {
			if a == bob && m != "INBOX" {
				continue
			}
			r := cl.Cmd(t, "STATUS "+lab.IMAPQuote(m)+" (HIGHESTMODSEQ)")
			if !r.OK() || len(r.Untagged) == 0 {
				t.Fatalf("STATUS %s as %s: %s", m, a, r)
			}
			_, v, _ := strings.Cut(r.Untagged[0].Text, "HIGHESTMODSEQ ")
			n, err := strconv.ParseUint(strings.TrimRight(v, ")"), 10, 64)
			if err != nil {
				t.Fatalf("STATUS %s as %s: %q", m, a, r.Untagged[0].Text)
			}
			now[a+" "+m] = n
		}
		cl.Logout(t)
	}
	reported := func(key string, evs []events.Event) (latest uint64, by []string) {
		for _, e := range evs {
			if e.Account+" "+e.Mailbox != key {
				continue
			}
			latest = max(latest, e.Modseq)
			by = append(by, e.CyrusEvent)
		}
		return latest, by
	}
	deadline := time.NewTimer(evWait)
	defer deadline.Stop()
	for {
		evs, ch := gw.snapshot()
		evs = evs[mark:]
		done := true
		for _, k := range affected {
			if latest, _ := reported(k, evs); latest < now[k] {
				done = false
			}
		}
		if done {
			break
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("after the stall, not every affected mailbox was reported up to its modseq %v within %v; got:\n%s", now, evWait, evList(evs))
		}
	}
	t.Logf("every affected mailbox reported up to its current modseq %v after the lock was released", time.Since(start))
	evs := gw.all()[mark:]
	rec := 0
	for _, k := range affected {
		_, by := reported(k, evs)
		t.Logf("%s (modseq %d before, %d now) reported by %d events: %v", k, before[k], now[k], len(by), slices.Compact(slices.Sorted(slices.Values(by))))
		if slices.Contains(by, events.CyrusEventReconcile) {
			rec++
		}
	}
	if rec == 0 {
		t.Errorf("no affected mailbox was reported by the reconciler: the drops marked no account")
	}
	for _, e := range evs {
		if e.Account == carol || strings.HasSuffix(e.Account, "@other.org") {
			t.Errorf("after the stall, an unaffected or out-of-scope mailbox was reported: %s", evString(e))
		}
	}
	checkNoLeak(t, gw)
	l.hooks.check(t)
}

// pipeline runs cmds on cl without waiting between them; every one must
// succeed.
func pipeline(cl *lab.IMAPClient, cmds []string) (time.Duration, error) {
	start := time.Now()
	replies, err := cl.Pipeline(cmds)
	if err != nil {
		return 0, err
	}
	for i, r := range replies {
		if !r.OK() {
			return 0, fmt.Errorf("%s: %s", cmds[i], r)
		}
	}
	return time.Since(start), nil
}

func sentNow(mu *sync.Mutex, n *int) int {
	mu.Lock()
	defer mu.Unlock()
	return *n
}

// checkDoctor runs `cyrus-sidecar doctor` against the lab: the documented
// event options pass its event checks, and the reconciler's IMAP proxy
// login works. (Other checks may fail here: the lab is not a production
// layout; only the events lines are asserted.)
func (l *evLab) checkDoctor(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.bin, "doctor", "-json", "-config", l.cfg, "-imapd-conf", l.cy.ConfPath)
	cmd.Env = filteredEnv()
	out, _ := cmd.Output() // exit 1 when some other check fails
	var rep struct {
		Checks []struct{ Name, Status, Detail string }
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("doctor -json: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, c := range rep.Checks {
		switch {
		case c.Name == "events.imap_admin" && c.Status != "ok",
			c.Name == "imapd.events" && c.Status == "FAIL":
			t.Errorf("doctor %s: %s %s", c.Name, c.Status, c.Detail)
		case c.Name == "imapd.events" && c.Status == "warn" && !strings.Contains(c.Detail, "max_dgram_qlen"):
			t.Errorf("doctor %s: %s %s (only the host's datagram queue may warn)", c.Name, c.Status, c.Detail)
		}
		seen[c.Name] = true
	}
	if !seen["imapd.events"] || !seen["events.imap_admin"] {
		t.Errorf("doctor ran no events checks:\n%s", out)
	}
}

// TestEventsEnvelopeOptIn (issue 8): of two consumers in alice's scope,
// only the one added with -envelope gets the subject and sender of a new
// message, decoded from RFC 2047; the other consumer and alice's stream
// get the event without them, and the fetch left the message unseen.
func TestEventsEnvelopeOptIn(t *testing.T) {
	l := startEvLab(t, evLabOptions{consumers: []evConsumer{{"gw", "Acme", "/hook"}}})
	gw := l.consumerSinks["gw"]
	mail := l.addConsumer(t, evConsumer{"mail", "Acme", "/mail"}, "-envelope")
	if out := l.cli(t, "consumer", "list"); !strings.Contains(out, "ENVELOPE") {
		t.Errorf("consumer list:\n%s", out)
	}
	sa := l.openStream(t, alice, -1)

	msg := "From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@outside.example>\r\nTo: Alice <alice@example.com>\r\n" +
		"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?= and figures\r\nDate: Sun, 22 Nov 2026 02:34:52 +0100\r\n" +
		"Message-ID: <opt-in.1@lab>\r\n\r\nbody\r\n"
	for _, r := range l.cy.Deliver(t, "juergen@outside.example", []string{alice}, []byte(msg)) {
		if !strings.HasPrefix(r, "250") {
			t.Fatalf("lmtp: %s", r)
		}
	}
	got := mail.await(t, 0, "delivery", want{typ: events.TypeMessageAdded, account: alice, mailbox: "INBOX"})
	if len(got.Envelopes) != 1 || got.EnvelopeError != "" {
		t.Fatalf("opted-in webhook: envelopes %+v, error %q", got.Envelopes, got.EnvelopeError)
	}
	env := got.Envelopes[0]
	if env.Subject != "Grüße aus Köln and figures" || !slices.Equal(env.From, []string{"Jürgen Müller <juergen@outside.example>"}) ||
		!slices.Equal(env.To, []string{"Alice <alice@example.com>"}) || env.MessageID != "<opt-in.1@lab>" ||
		env.Date != "2026-11-22T02:34:52+01:00" || strconv.FormatUint(uint64(env.UID), 10) != got.UIDs {
		t.Errorf("envelope %+v of uids %s", env, got.UIDs)
	}
	// The same event, without envelopes, for the others.
	plain := got
	plain.Envelopes = nil
	gw.await(t, 0, "delivery", want{same: &plain})
	sa.await(t, 0, "delivery", want{same: &plain})
	for _, s := range []*received{gw, sa.received} {
		s.mu.Lock()
		for _, r := range s.raw {
			if strings.Contains(r, "envelope") || strings.Contains(r, "juergen") || strings.Contains(r, "figures") {
				t.Errorf("%s: a payload carries the envelope: %s", s.name, r)
			}
		}
		s.mu.Unlock()
	}
	// EXAMINE is read-only: the message is still unseen.
	cl := l.login(t, alice)
	if r := cl.Cmd(t, "STATUS INBOX (MESSAGES UNSEEN)"); !r.OK() || len(r.Untagged) != 1 || !strings.Contains(r.Untagged[0].Text, "MESSAGES 1 UNSEEN 1") {
		t.Errorf("STATUS INBOX after the fetch: %+v", r)
	}
	cl.Logout(t)
	l.hooks.check(t)
	sa.checkIDs(t)
}
