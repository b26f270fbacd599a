//go:build integration

package events

// The reconciler against real Cyrus 3.6: proxy-auth logins as the lab's
// admin, LIST-STATUS with LIST-METADATA, and the changes LMTP deliveries,
// flags, CREATE, DELETE and RENAME make.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/services/events/imap"
)

var rcUsers = map[string]string{"alice": "alice-pw", "bob": "bob-pw", "carol@other.org": "carol-pw"}

// rcAccounts are the accounts as the store names them (canonical).
var rcAccounts = []string{"alice@example.com", "bob@example.com", "carol@other.org"}

type rcLab struct {
	cy  *lab.Cyrus
	st  *MemStateStore
	pub *rcPublished
	r   *Reconciler
	log *slog.Logger
}

func rcStartLab(t *testing.T) *rcLab {
	t.Helper()
	cy := lab.StartCyrus(t, lab.CyrusOptions{Users: rcUsers})
	for u := range rcUsers {
		cy.CreateMailbox(t, u)
	}
	adm := cy.AdminIMAP(t)
	for _, c := range []string{
		"CREATE user/alice/Projects", `CREATE "user/alice/M&APw-ll Ordner"`, "CREATE user/bob/Lists",
		// LMTP to alice+Projects needs the p right for the poster.
		"SETACL user/alice/Projects anyone p",
		"CREATE shared", "CREATE shared/team", "SETACL shared/team alice lrs",
	} {
		if r := adm.Cmd(t, c); !r.OK() {
			t.Fatalf("imap %s: %s", c, r)
		}
	}
	adm.Logout(t)
	// A message in carol's INBOX to flag later.
	rcDeliver(t, cy, "carol@other.org")

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	l := &rcLab{cy: cy, st: &MemStateStore{}, pub: &rcPublished{}, log: log}
	l.st.SetAccounts(rcAccounts...)
	l.r = l.newReconciler(t)
	return l
}

func (l *rcLab) newReconciler(t *testing.T) *Reconciler {
	t.Helper()
	cfg := DefaultReconcileConfig()
	cfg.DirtyDelay, cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, 100*time.Millisecond, time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cy := ReconcileCyrus{Network: "tcp", Addr: l.cy.IMAPAddr, Admin: l.cy.Admin,
		Password: func() (string, error) { return l.cy.AdminPassword, nil }}
	return NewReconciler(cfg, cy, l.st, l.pub.publish, l.log)
}

func rcDeliver(t *testing.T, cy *lab.Cyrus, rcpt string) {
	t.Helper()
	msg := fmt.Sprintf("From: x@outside.org\r\nTo: %s\r\nSubject: reconcile test\r\nMessage-ID: <%d@lab>\r\n\r\nbody\r\n", rcpt, time.Now().UnixNano())
	for _, reply := range cy.Deliver(t, "x@outside.org", []string{rcpt}, []byte(msg)) {
		if !strings.HasPrefix(reply, "250") {
			t.Fatalf("lmtp to %s: %s", rcpt, reply)
		}
	}
}

// userIMAP logs in as user with its password and runs cmds, each of which
// must succeed.
func rcUserIMAP(t *testing.T, cy *lab.Cyrus, user string, cmds ...string) {
	t.Helper()
	cl := lab.DialIMAP(t, cy.IMAPAddr)
	cl.Login(t, user, rcUsers[user])
	for _, c := range cmds {
		if r := cl.Cmd(t, c); !r.OK() {
			t.Fatalf("imap as %s: %s: %s", user, c, r)
		}
	}
	cl.Logout(t)
}

// passAll reconciles every account once and returns the events by
// account.
func (l *rcLab) passAll(t *testing.T) map[string][]Event {
	t.Helper()
	out := map[string][]Event{}
	for _, a := range rcAccounts {
		evs, err := l.r.ReconcileAccount(t.Context(), a)
		if err != nil {
			t.Fatalf("ReconcileAccount(%s): %v", a, err)
		}
		if len(evs) > 0 {
			out[a] = evs
		}
	}
	l.pub.take()
	return out
}

// rcKinds renders events as sorted "account type mailbox" lines.
func rcKinds(byAccount map[string][]Event) string {
	var lines []string
	for a, evs := range byAccount {
		for _, e := range evs {
			s := a + " " + e.Type + " " + e.Mailbox
			if e.OldMailbox != "" {
				s += " from " + e.OldMailbox
			}
			lines = append(lines, s)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// modseqOf returns a mailbox's stored HIGHESTMODSEQ.
func (l *rcLab) modseqOf(t *testing.T, account, mailbox string) uint64 {
	t.Helper()
	states, _ := l.st.LoadReconcileState(context.Background(), account)
	for _, s := range states {
		if s.Mailbox == mailbox {
			return s.HighestModseq
		}
	}
	t.Fatalf("no stored state for %s %s in %+v", account, mailbox, states)
	return 0
}

func TestReconcileCyrus(t *testing.T) {
	l := rcStartLab(t)

	// Baseline: every personal mailbox once, as changed without
	// fromModseq; shared folders never.
	got := rcKinds(l.passAll(t))
	want := strings.Join([]string{
		"alice@example.com mailbox.changed INBOX",
		"alice@example.com mailbox.changed INBOX/Müll Ordner",
		"alice@example.com mailbox.changed INBOX/Projects",
		"bob@example.com mailbox.changed INBOX",
		"bob@example.com mailbox.changed INBOX/Lists",
		"carol@other.org mailbox.changed INBOX",
	}, "\n")
	if got != want {
		t.Fatalf("baseline:\n%s\nwant\n%s", got, want)
	}
	for _, s := range []string{"INBOX", "INBOX/Projects"} {
		states, _ := l.st.LoadReconcileState(t.Context(), "alice@example.com")
		i := slices.IndexFunc(states, func(st ReconcileState) bool { return st.Mailbox == s })
		if i < 0 || len(states[i].MailboxID) != 24 || states[i].UIDValidity == 0 {
			t.Errorf("alice %s state %+v: want a uniqueid and UIDVALIDITY", s, states)
		}
	}
	if evs := l.passAll(t); len(evs) != 0 {
		t.Fatalf("second pass without changes: %s", rcKinds(evs))
	}

	before := map[string]uint64{
		"alice INBOX":          l.modseqOf(t, "alice@example.com", "INBOX"),
		"alice INBOX/Projects": l.modseqOf(t, "alice@example.com", "INBOX/Projects"),
		"bob INBOX":            l.modseqOf(t, "bob@example.com", "INBOX"),
		"bob INBOX/Archive":    l.modseqOf(t, "bob@example.com", "INBOX/Lists"), // renamed below
		"carol INBOX":          l.modseqOf(t, "carol@other.org", "INBOX"),
	}
	rcDeliver(t, l.cy, "alice@example.com")
	rcDeliver(t, l.cy, "bob@example.com")
	rcDeliver(t, l.cy, "alice+Projects@example.com")
	rcUserIMAP(t, l.cy, "carol@other.org", "SELECT INBOX", `STORE 1 +FLAGS (\Flagged)`)
	rcUserIMAP(t, l.cy, "bob", "CREATE INBOX/New", "RENAME INBOX/Lists INBOX/Archive")
	rcUserIMAP(t, l.cy, "alice", `DELETE "INBOX/M&APw-ll Ordner"`)

	start := time.Now()
	byAccount := l.passAll(t)
	t.Logf("pass over %d accounts after the changes: %v", len(rcAccounts), time.Since(start))
	got = rcKinds(byAccount)
	want = strings.Join([]string{
		"alice@example.com mailbox.changed INBOX",
		"alice@example.com mailbox.changed INBOX/Projects",
		"alice@example.com mailbox.deleted INBOX/Müll Ordner",
		"bob@example.com mailbox.changed INBOX",
		"bob@example.com mailbox.changed INBOX/Archive", // RENAME raises the modseq
		"bob@example.com mailbox.created INBOX/New",
		"bob@example.com mailbox.renamed INBOX/Archive from INBOX/Lists",
		"carol@other.org mailbox.changed INBOX",
	}, "\n")
	if got != want {
		t.Fatalf("after changes:\n%s\nwant\n%s", got, want)
	}
	// From/To modseqs: from what was notified to what Cyrus has now.
	short := map[string]string{"alice@example.com": "alice", "bob@example.com": "bob", "carol@other.org": "carol"}
	for a, evs := range byAccount {
		for _, e := range evs {
			if e.Type != TypeMailboxChanged {
				continue
			}
			key := short[a] + " " + e.Mailbox
			if e.FromModseq != before[key] || e.Modseq <= e.FromModseq || e.Modseq != l.modseqOf(t, a, e.Mailbox) {
				t.Errorf("%s: modseq %d -> %d; want from %d to the stored %d", key, e.FromModseq, e.Modseq, before[key], l.modseqOf(t, a, e.Mailbox))
			}
		}
	}
	if e := byAccount["alice@example.com"][0]; *e.Messages != 1 || *e.Unseen != 1 || e.UIDNext != 2 {
		t.Errorf("alice INBOX counts: messages %d unseen %d uidnext %d; want 1 1 2", *e.Messages, *e.Unseen, e.UIDNext)
	}
	if e := byAccount["carol@other.org"][0]; *e.Messages != 1 || *e.Unseen != 1 {
		t.Errorf("carol INBOX after \\Flagged: messages %d unseen %d; want 1 1", *e.Messages, *e.Unseen)
	}
	if evs := l.passAll(t); len(evs) != 0 {
		t.Fatalf("pass after reporting: %s", rcKinds(evs))
	}

	// A subscription change whose event was lost (no event_notifier in
	// this lab): reported once, with its direction.
	for _, c := range []struct {
		cmd string
		on  bool
	}{{"SUBSCRIBE INBOX/Projects", true}, {"UNSUBSCRIBE INBOX/Projects", false}} {
		rcUserIMAP(t, l.cy, "alice", c.cmd)
		byAccount := l.passAll(t)
		if got := rcKinds(byAccount); got != "alice@example.com mailbox.subscription INBOX/Projects" {
			t.Fatalf("after %s:\n%s", c.cmd, got)
		}
		if e := byAccount["alice@example.com"][0]; e.Subscribed == nil || *e.Subscribed != c.on || e.MailboxID == "" {
			t.Errorf("after %s: %+v", c.cmd, e)
		}
	}
	if evs := l.passAll(t); len(evs) != 0 {
		t.Fatalf("pass after the subscriptions: %s", rcKinds(evs))
	}

	// Time per user pass: login, NAMESPACE, LIST-STATUS, LOGOUT.
	const n = 50
	start = time.Now()
	for range n {
		if _, err := l.r.ReconcileAccount(t.Context(), "alice@example.com"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("reconcile pass for one user with 2 personal folders (+2 shared, skipped): %v per pass (mean of %d, sequential)", time.Since(start)/n, n)

	// The LIST-STATUS command alone, in one session (the anchors' 2.1 ms).
	cl, err := imap.Dial(t.Context(), "tcp", l.cy.IMAPAddr, imap.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Logout(context.Background())
	if err := cl.AuthenticatePlain(t.Context(), "alice@example.com", l.cy.Admin, l.cy.AdminPassword); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for range n {
		boxes, err := cl.List(t.Context(), imap.ListOptions{Pattern: "*", Status: rcStatusItems, Metadata: []string{imap.UniqueIDEntry}})
		if err != nil || len(boxes) != 4 {
			t.Fatalf("List = %d mailboxes, %v", len(boxes), err)
		}
	}
	t.Logf("LIST-STATUS with uniqueid for 4 mailboxes (2 personal, 2 shared): %v per command", time.Since(start)/n)
}

// The sidecar stopped while mail arrived, then started: Run's start-up
// sweep reports every changed mailbox, and nothing else.
func TestReconcileCyrusRestart(t *testing.T) {
	l := rcStartLab(t)
	l.passAll(t) // the state notified before the stop

	// Stopped: mail arrives, a folder appears.
	rcDeliver(t, l.cy, "alice@example.com")
	rcDeliver(t, l.cy, "alice+Projects@example.com")
	rcDeliver(t, l.cy, "carol@other.org")
	rcUserIMAP(t, l.cy, "bob", "CREATE INBOX/Later")

	l.r = l.newReconciler(t) // a new process with the stored state
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- l.r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	rcWaitFor(t, "start-up sweep", func() bool { return l.pub.count() >= 4 })
	t.Logf("start-up sweep reported %d events in %v", l.pub.count(), time.Since(start))
	time.Sleep(200 * time.Millisecond) // anything more would show now
	got := rcKinds(rcGroup(l.pub.take()))
	want := strings.Join([]string{
		"alice@example.com mailbox.changed INBOX",
		"alice@example.com mailbox.changed INBOX/Projects",
		"bob@example.com mailbox.created INBOX/Later",
		"carol@other.org mailbox.changed INBOX",
	}, "\n")
	if got != want {
		t.Fatalf("after restart:\n%s\nwant\n%s", got, want)
	}
	// MarkDirty after a dropped event: reported within DirtyDelay and a pass.
	rcDeliver(t, l.cy, "bob@example.com")
	l.r.MarkDirty("bob@example.com")
	rcWaitFor(t, "dirty pass", func() bool { return l.pub.count() == 1 })
	if got := rcKinds(rcGroup(l.pub.take())); got != "bob@example.com mailbox.changed INBOX" {
		t.Fatalf("after MarkDirty: %s", got)
	}
}

func rcGroup(evs []Event) map[string][]Event {
	m := map[string][]Event{}
	for _, e := range evs {
		m[e.Account] = append(m[e.Account], e)
	}
	return m
}
