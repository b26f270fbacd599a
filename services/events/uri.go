package events

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxURI bounds an event's uri: Cyrus's MAX_MAILBOX_NAME (490 bytes),
// percent-encoded at most three times over, plus the host and parameters.
const maxURI = 4096

// MailboxRef is where an event happened, parsed from its RFC 5092 IMAP URL.
type MailboxRef struct {
	// Account is the owner's canonical address; "" for a shared folder.
	Account string
	// Mailbox is the folder in the owner's namespace: "INBOX",
	// "INBOX/Projects" (or "Projects" with altnamespace), or the shared
	// folder's name ("shared/team", with "@domain" outside the default
	// domain).
	Mailbox     string
	UIDValidity uint32 // ;UIDVALIDITY=, 0 when absent
	UID         uint32 // /;UID=, 0 when absent
}

// ParseURI parses an event's uri. Cyrus writes it in the admin namespace
// whatever altnamespace says (mboxevent_setnamespace forces isadmin,
// events-anchors §1.4): "user/alice/Projects" for a default-domain user,
// "user/carol/Projects@other.org" (the domain after the whole name, as
// mbname_extname writes it; "user/carol%40other.org" for the INBOX),
// "shared/team". Names are percent-encoded UTF-8 (RFC 5092 §6, enc-mailbox).
// A URL naming no owner under user/ (the #sieve mailbox, §1.4) or a deleted
// mailbox is an IgnoredError; anything else unusable is ErrMalformed.
func (p *Parser) ParseURI(uri string) (MailboxRef, error) {
	var ref MailboxRef
	encMailbox, params, err := splitIMAPURL(uri)
	if err != nil {
		return ref, err
	}
	name, err := url.PathUnescape(encMailbox)
	if err != nil {
		return ref, malformedf("uri: mailbox: %v", err)
	}
	if err := checkName(name); err != nil {
		return ref, err
	}
	for _, kv := range params {
		key, val, _ := strings.Cut(kv, "=")
		var dst *uint32
		switch strings.ToUpper(key) {
		case "UIDVALIDITY":
			dst = &ref.UIDValidity
		case "UID":
			dst = &ref.UID
		default:
			continue // SECTION, PARTIAL, URLAUTH: nothing we use
		}
		// RFC 5092 §11: nz-number.
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil || n == 0 || val[0] == '+' {
			return ref, malformedf("uri: %s=%q is not a number", key, truncPeer([]byte(val)))
		}
		*dst = uint32(n)
	}
	if err := p.mapName(name, &ref); err != nil {
		return MailboxRef{}, err
	}
	return ref, nil
}

// mapName turns an admin-namespace mailbox name into owner and folder.
func (p *Parser) mapName(name string, ref *MailboxRef) error {
	sep := p.opts.HierarchySep
	// mbname_from_extname (admin, virtdomains): the domain follows the last
	// '@' of the whole name; the default domain is never written.
	domain := ""
	if i := strings.LastIndexByte(name, '@'); i >= 0 {
		name, domain = name[:i], name[i+1:]
		if domain == "" {
			return malformedf("uri: mailbox name ends in '@'")
		}
	}
	boxes := strings.Split(name, sep)
	for _, b := range boxes {
		if b == "" {
			return malformedf("uri: empty level in mailbox name")
		}
	}
	if p.opts.DeletedPrefix != "" && boxes[0] == p.opts.DeletedPrefix {
		return ignored(ReasonDeleted)
	}
	if boxes[0] != "user" {
		// Shared folder: no owner; readers come from the ACL alone. The
		// domain stays in the name so that two domains' shared/team differ.
		ref.Mailbox = name
		if domain != "" {
			canonDomain, err := p.canon.Domain(domain)
			if err != nil {
				return malformedf("uri: shared folder domain: %v", err)
			}
			if canonDomain != p.canon.DefaultDomain() {
				ref.Mailbox += "@" + canonDomain
			}
		}
		return nil
	}
	if len(boxes) < 2 {
		return ignored(ReasonNoOwner) // "user" alone: the #sieve mailbox's URL (§1.4, B9)
	}
	local := boxes[1]
	if sep == "." {
		// With the netnews separator Cyrus writes a '.' in a user name as
		// '^' (mboxname.c, _append_intbuf / unixhierarchysep: no).
		local = strings.ReplaceAll(local, "^", ".")
	}
	owner, err := p.canon.Login(local, domain)
	if err != nil {
		return malformedf("uri: owner: %v", err)
	}
	ref.Account = owner.String()
	folders := boxes[2:]
	switch {
	case len(folders) == 0:
		ref.Mailbox = "INBOX"
	case p.opts.AltNamespace:
		// altnamespace: the user's folders sit beside INBOX.
		ref.Mailbox = strings.Join(folders, sep)
	default:
		ref.Mailbox = "INBOX" + sep + strings.Join(folders, sep)
	}
	return nil
}

// splitIMAPURL splits "imap://host/enc-mailbox;UIDVALIDITY=n/;UID=n" (RFC
// 5092 §6, imessagepart) into the encoded mailbox and its ";"-parameters.
// A ';' or '?' inside a name is always percent-encoded (bchar has neither),
// so the first one ends the mailbox.
func splitIMAPURL(uri string) (encMailbox string, params []string, err error) {
	if len(uri) > maxURI {
		return "", nil, malformedf("uri longer than %d bytes", maxURI)
	}
	const scheme = "imap://"
	if len(uri) < len(scheme) || !strings.EqualFold(uri[:len(scheme)], scheme) {
		return "", nil, malformedf("uri is not an imap:// URL")
	}
	_, path, ok := strings.Cut(uri[len(scheme):], "/")
	if !ok || path == "" {
		return "", nil, malformedf("uri names no mailbox")
	}
	path, _, _ = strings.Cut(path, "?") // a search (imessagelist): not sent for events
	encMailbox, rest, _ := strings.Cut(path, ";")
	// ".../;UID=n" without UIDVALIDITY leaves the mailbox ending in '/'.
	encMailbox = strings.TrimSuffix(encMailbox, "/")
	if encMailbox == "" {
		return "", nil, malformedf("uri names no mailbox")
	}
	for p := range strings.SplitSeq(rest, ";") {
		if p = strings.TrimSuffix(p, "/"); p != "" {
			params = append(params, p)
		}
	}
	return encMailbox, params, nil
}

// checkName rejects decoded names no Cyrus mailbox has: invalid UTF-8 and
// control characters (which would otherwise reach logs and consumers).
func checkName(name string) error {
	if !utf8.ValidString(name) {
		return malformedf("uri: mailbox name is not UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return malformedf("uri: control character %U in mailbox name", r)
		}
	}
	return nil
}

// malformedf is an ErrMalformed with the reason.
func malformedf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}
