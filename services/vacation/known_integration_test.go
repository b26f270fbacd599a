//go:build integration

package vacation

// The audience "known" against real Cyrus 3.6 with its CardDAV module: the
// script's `envelope :list "from" ":addrbook:Default"` (RFC 6134) is looked
// up in the user's default address book (imap/lmtp_sieve.c listcompare),
// so external senders in it get the external reply and nobody else does.
// render_integration_test.go has the negative half (an empty book) and
// the compile failure without httpmodules: carddav.

import (
	"context"
	"testing"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/services/vacation/managesieve"
)

func TestVacationKnownCardDAV(t *testing.T) {
	c := lab.StartCyrus(t, lab.CyrusOptions{
		CardDAV: true,
		Users:   map[string]string{labAlice: labAlicePassword},
	})
	c.CreateMailbox(t, labAlice)
	c.AddContact(t, labAlice, labAlicePassword, "friend@outside.example")
	// Stored in mixed case, mailed in lower case: Cyrus compares without
	// regard to case (dav_db.c vcard_emails.email COLLATE NOCASE).
	c.AddContact(t, labAlice, labAlicePassword, "Partner@Outside.Example")
	// A colleague in the book: the internal text all the same.
	c.AddContact(t, labAlice, labAlicePassword, "booked@example.com")

	in := Input{
		Settings: Settings{
			State:        "on",
			Subject:      "Out of office",
			InternalText: "INTERNAL: I am away; Bob covers for me.\n",
			ExternalText: "EXTERNAL: I am away and will answer after my return.\n",
			Audience:     "known",
			Days:         MinDays,
		},
		User:           labAlice,
		Addresses:      []string{labAlice},
		OrgDomains:     []string{"example.com"},
		RelationHeader: testRelationHeader,
		Period:         "known-1",
	}
	installKnown(t, c, in)

	l := &renderLab{c: c} // deliver and expect only; install is ours
	external := func(sender string) labMsg { return labMsg{sender: sender, relation: "external"} }
	internal := func(sender string) labMsg { return labMsg{sender: sender, relation: "internal"} }

	// The positive case first: it shows replies are sent before Deliver
	// returns, so the "none" checks after it mean something.
	l.expect(t, in, external("friend@outside.example"), in.ExternalText)
	l.expect(t, in, external("stranger@outside.example"), "")
	l.expect(t, in, labMsg{sender: "unmarked@outside.example"}, "") // no header: external
	l.expect(t, in, external("partner@outside.example"), in.ExternalText)
	l.expect(t, in, internal("mate@example.com"), in.InternalText)
	l.expect(t, in, internal("booked@example.com"), in.InternalText)
	l.expect(t, in, external("friend@outside.example"), "") // once per sender and period
}

// installKnown renders in with the extensions alice's timsieved announces
// and makes it her active script over ManageSieve.
func installKnown(t *testing.T, c *lab.Cyrus, in Input) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), sieveTimeout)
	defer cancel()
	cl, err := managesieve.Dial(ctx, "tcp", c.SieveAddr, managesieve.Options{Timeout: sieveTimeout})
	if err != nil {
		t.Fatalf("managesieve: %v", err)
	}
	if err := cl.AuthenticatePlain("", labAlice, labAlicePassword); err != nil {
		cl.Close() // not logged in: a bare close is safe
		t.Fatalf("managesieve AUTHENTICATE as %s: %v", labAlice, err)
	}
	// Always LOGOUT: timsieved 3.6.1 crashes when a logged-in client just
	// goes away (managesieve package doc).
	defer func() {
		if err := cl.Logout(); err != nil {
			t.Errorf("managesieve LOGOUT: %v", err)
		}
	}()
	in.Extensions = cl.Capabilities().Sieve
	script, err := Render(in)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	if err := cl.PutScript(labScript, script); err != nil {
		t.Fatalf("PUTSCRIPT: %v\n%s", err, script)
	}
	if err := cl.SetActive(labScript); err != nil {
		t.Fatalf("SETACTIVE: %v", err)
	}
}
