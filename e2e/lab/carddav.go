package lab

// CardDAV (RFC 6352) against Cyrus 3.6's httpd, enough to fill a user's
// address book for Sieve's extlists (RFC 6134 ":addrbook:Default").

import (
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

const (
	// httpTimeout bounds each CardDAV request, reply body included.
	httpTimeout = 30 * time.Second
	// maxHTTPErrorBody is how much of a refusal's body goes into the
	// failure message.
	maxHTTPErrorBody = 4 << 10
	// defaultAddressBook is the collection Cyrus creates for every user
	// (imap/http_carddav.c DEFAULT_ADDRBOOK) and extlists' ":addrbook:Default"
	// names (imap/lmtp_sieve.c get_addrbook_mbentry).
	defaultAddressBook = "Default"
)

// AddContact stores a vCard 3.0 (RFC 2426: UID, N, FN, EMAIL) for email in
// user's default address book, authenticating as user with HTTP Basic. A
// user without a domain is in DefaultDomain. It needs CyrusOptions.CardDAV
// and user's INBOX (CreateMailbox).
//
// Cyrus creates the address book home and "Default" at the user's first
// authenticated request (http_carddav.c my_carddav_auth), so the PUT is
// the only request. In 3.6 the PROPFIND hrefs of that collection read
// "<local>.Default/" for a user in the default domain, but the mailbox is
// user.<local>.#addressbooks.Default and PUT goes to ".../Default/".
// Sieve's lookup compares the envelope sender with the card's EMAIL
// without regard to case (dav_db.c: vcard_emails.email COLLATE NOCASE).
func (c *Cyrus) AddContact(t testing.TB, user, password, email string) {
	t.Helper()
	if c.HTTPAddr == "" {
		t.Fatal("AddContact: Cyrus started without CyrusOptions.CardDAV")
	}
	if !strings.Contains(user, "@") {
		user += "@" + c.DefaultDomain
	}
	uid := "lab-" + strings.ToLower(rand.Text())
	card := strings.Join([]string{
		"BEGIN:VCARD",
		"VERSION:3.0",
		"UID:" + uid,
		"N:;" + email + ";;;",
		"FN:" + email,
		"EMAIL;TYPE=INTERNET:" + email,
		"END:VCARD",
	}, "\r\n") + "\r\n" // RFC 2426 §4: CRLF line ends
	u := (&url.URL{
		Scheme: "http",
		Host:   c.HTTPAddr,
		Path:   "/dav/addressbooks/user/" + user + "/" + defaultAddressBook + "/" + uid + ".vcf",
	}).String()

	ctx, cancel := context.WithTimeout(t.Context(), httpTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, strings.NewReader(card))
	if err != nil {
		t.Fatalf("carddav PUT %s: %v", u, err)
	}
	req.SetBasicAuth(user, password)
	req.Header.Set("Content-Type", "text/vcard; charset=utf-8")
	req.Header.Set("If-None-Match", "*") // RFC 7232 §3.2: create, never overwrite
	// One connection per request: httpd runs prefork=0, a child per
	// connection, and none should be left idle when master stops.
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: httpTimeout}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("carddav PUT %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPErrorBody))
	if err != nil {
		t.Fatalf("carddav PUT %s: %s, reading the body: %v", u, resp.Status, err)
	}
	// RFC 6352 §6.3.2 (RFC 4918 §9.7): 201 for a new resource, 204 for a
	// replaced one.
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusNoContent {
		t.Fatalf("carddav PUT %s as %s: %s\n%s", u, user, resp.Status, body)
	}
}
