//go:build integration

package events

// The ingest and parser against real Cyrus 3.6 (e2e/lab): Cyrus sends its
// mailbox events to our socket as user cyrus, and IMAP and LMTP actions
// come out as normalised, authorised events (events-anchors §1.3, §4.6).

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
	"cyrus-sidecar/store"
)

// ingestLabTimeout bounds the wait for each expected event; the machine
// is shared, Cyrus forks a process per connection.
const ingestLabTimeout = 30 * time.Second

// labEvents collects what the pump emits.
type labEvents struct {
	t   *testing.T
	ch  chan Event
	all []Event
}

// await waits until an event matching want has arrived and returns it.
func (l *labEvents) await(what string, want func(Event) bool) Event {
	l.t.Helper()
	for _, ev := range l.all {
		if want(ev) {
			return ev
		}
	}
	timeout := time.After(ingestLabTimeout)
	for {
		select {
		case ev := <-l.ch:
			l.all = append(l.all, ev)
			l.t.Logf("event %s %s %q %s readers=%q", ev.CyrusEvent, ev.Type, ev.Account, ev.Mailbox, ev.Readers)
			if want(ev) {
				return ev
			}
		case <-timeout:
			l.t.Fatalf("no %s within %v; got %d events", what, ingestLabTimeout, len(l.all))
		}
	}
}

func is(cyrusEvent, account, mailbox string) func(Event) bool {
	return func(ev Event) bool {
		return ev.CyrusEvent == cyrusEvent && ev.Account == account && ev.Mailbox == mailbox
	}
}

func TestIngestCyrus(t *testing.T) {
	users := map[string]string{"alice": "alice-pw", "bob": "bob-pw", "carol@other.org": "carol-pw"}
	c := lab.StartCyrus(t, lab.CyrusOptions{Users: users, Conf: map[string]string{
		"event_notifier":           "pusher",
		"event_groups":             "message mailbox flags subscription",
		"event_extra_params":       "timestamp service uidnext modseq messages flagNames vnd.cmu.unseenMessages",
		"event_exclude_specialuse": "none",
	}})
	cyrusUID, err := LookupUID("cyrus")
	if err != nil {
		t.Fatal(err)
	}
	// The lab's master starts as root and runs its services as cyrus
	// (cyrus-lab-facts §2): datagrams come from cyrus's uid, through group
	// mail on a 0660 socket. notifysocket is the lab's default path.
	cfg := DefaultIngestConfig(c.Dir)
	cfg.Socket, cfg.RelaySocket = c.NotifySocket, ""
	in, err := NewIngest(cfg, cyrusUID, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Listen(); err != nil {
		t.Fatal(err)
	}
	canon, err := store.NewCanon(c.DefaultDomain, "+")
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewParser(canon, DefaultParseOptions())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := &labEvents{t: t, ch: make(chan Event, 1024)}
	runDone, pumpDone := make(chan error, 1), make(chan error, 1)
	go func() { runDone <- in.Run(ctx) }()
	go func() {
		pumpDone <- in.Pump(ctx, p, NewCoalescer(DefaultCoalesceConfig()), func(ev Event) { events.ch <- ev })
	}()
	t.Cleanup(func() {
		cancel()
		for _, ch := range []chan error{runDone, pumpDone} {
			if err := <-ch; err != nil {
				t.Errorf("ingest: %v", err)
			}
		}
	})
	for u := range users {
		c.CreateMailbox(t, u)
	}
	const alice, bob, carol = "alice@example.com", "bob@example.com", "carol@other.org"
	events.await("MailboxCreate of alice's INBOX", is("MailboxCreate", alice, "INBOX"))
	events.await("MailboxCreate of carol's INBOX", is("MailboxCreate", carol, "INBOX"))

	// LMTP delivery: MessageNew with ;UID= in the URL.
	msg := []byte("From: x@outside.org\r\nSubject: very secret subject\r\n\r\nhello\r\n")
	if r := c.Deliver(t, "x@outside.org", []string{alice, carol}, msg); !strings.HasPrefix(r[0], "250") || !strings.HasPrefix(r[1], "250") {
		t.Fatalf("deliver: %q", r)
	}
	ev := events.await("MessageNew for alice", is("MessageNew", alice, "INBOX"))
	if ev.Type != TypeMessageAdded || ev.UIDs != "1" || ev.MailboxID == "" || ev.UIDValidity == 0 || !slices.Equal(ev.Readers, []string{alice}) {
		t.Errorf("alice's MessageNew: %+v", ev)
	}
	ev = events.await("MessageNew for carol", is("MessageNew", carol, "INBOX"))
	if !slices.Equal(ev.Readers, []string{carol}) || ev.Service != "lmtpunix" {
		t.Errorf("carol's MessageNew: %+v", ev)
	}

	cl := lab.DialIMAP(t, c.IMAPAddr)
	cl.Login(t, "alice", users["alice"])
	imap := func(cmd string) {
		t.Helper()
		if r := cl.Cmd(t, cmd); !r.OK() {
			t.Fatalf("imap %s: %s", strings.SplitN(cmd, "\r\n", 2)[0], r)
		}
	}
	imap(`CREATE "INBOX/Projects"`)
	events.await("MailboxCreate", is("MailboxCreate", alice, "INBOX/Projects"))
	imap(`SUBSCRIBE "INBOX/Projects"`)
	ev = events.await("MailboxSubscribe", is("MailboxSubscribe", alice, "INBOX/Projects"))
	if ev.Subscribed == nil || !*ev.Subscribed || !slices.Equal(ev.Readers, []string{alice}) {
		t.Errorf("MailboxSubscribe: %+v", ev)
	}
	// APPEND with a non-synchronising literal (LITERAL+ is advertised).
	appended := "Subject: appended\r\n\r\nbody\r\n"
	imap(fmt.Sprintf("APPEND \"INBOX/Projects\" (\\Seen) {%d+}\r\n%s", len(appended), appended))
	ev = events.await("MessageAppend", is("MessageAppend", alice, "INBOX/Projects"))
	if ev.Type != TypeMessageAdded || ev.Messages == nil || *ev.Messages != 1 || ev.UIDNext != 2 {
		t.Errorf("MessageAppend: %+v", ev)
	}
	imap("SELECT INBOX")
	imap(`STORE 1 +FLAGS (\Flagged $Label1)`)
	ev = events.await("FlagsSet", is("FlagsSet", alice, "INBOX"))
	if ev.Type != TypeMessageFlags || !slices.Contains(ev.Flags, `\Flagged`) || ev.UIDs != "1" {
		t.Errorf("FlagsSet: %+v", ev)
	}
	imap(`STORE 1 +FLAGS (\Deleted)`)
	events.await("MessageTrash", is("MessageTrash", alice, "INBOX"))
	imap("EXPUNGE")
	ev = events.await("MessageExpunge", is("MessageExpunge", alice, "INBOX"))
	if ev.Type != TypeMessageRemoved || ev.UIDs != "1" {
		t.Errorf("MessageExpunge: %+v", ev)
	}

	// An ACL change takes effect at once: bob reads the folder's events
	// from the AclChange on, never before.
	imap(`SETACL "INBOX/Projects" bob lr`)
	ev = events.await("AclChange", is("AclChange", alice, "INBOX/Projects"))
	if ev.Type != TypeMailboxACL || !slices.Equal(ev.Readers, []string{alice, bob}) {
		t.Errorf("AclChange readers %q, want alice and bob", ev.Readers)
	}
	// IMAP names are modified UTF-7 (RFC 3501 §5.1.3); the event's URL is
	// percent-encoded UTF-8 (§1.4), and Mailbox is plain UTF-8.
	imap(`RENAME "INBOX/Projects" "INBOX/Archiv M&APw-ll"`)
	ev = events.await("MailboxRename", is("MailboxRename", alice, "INBOX/Archiv Müll"))
	if ev.Type != TypeMailboxRenamed || ev.OldMailbox != "INBOX/Projects" || !slices.Equal(ev.Readers, []string{alice, bob}) {
		t.Errorf("MailboxRename: %+v", ev)
	}
	imap(`DELETE "INBOX/Archiv M&APw-ll"`)
	events.await("MailboxDelete", is("MailboxDelete", alice, "INBOX/Archiv Müll"))
	cl.Logout(t)

	// Authorisation across everything seen: the owner always reads, no
	// one reads another user's mailbox without an ACL naming them, and
	// nothing carries the subject.
	for _, ev := range events.all {
		checkInvariants(t, ev)
		for _, r := range ev.Readers {
			if r != ev.Account && !(r == bob && strings.HasPrefix(ev.Mailbox, "INBOX/")) && ev.Type != TypeMailboxSubscription {
				t.Errorf("%s on %s %s: reader %s", ev.CyrusEvent, ev.Account, ev.Mailbox, r)
			}
		}
		if ev.Account == alice && slices.Contains(ev.Readers, carol) || ev.Account == carol && slices.Contains(ev.Readers, alice) {
			t.Errorf("cross-user event %+v", ev)
		}
		if ev.CyrusEvent != "AclChange" && ev.Mailbox == "INBOX/Projects" && slices.Contains(ev.Readers, bob) &&
			ev.Time.Before(events.all[slices.IndexFunc(events.all, is("AclChange", alice, "INBOX/Projects"))].Time) {
			t.Errorf("bob read %s before the ACL granted it", ev.CyrusEvent)
		}
	}
	if n := counterValue(droppedUID); n != 0 {
		t.Errorf("%v datagrams dropped for their uid: Cyrus's did not match", n)
	}
	if fi, err := os.Stat(c.NotifySocket); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, %v", fi.Mode(), err)
	}
}
