package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"cyrus-sidecar/store"
)

// Limits on the values copied from an event into an Event. Cyrus's own
// are looser; these keep one event from carrying a novel to consumers.
const (
	maxUIDSet   = 16 << 10 // a sparse uidset after a bulk STORE
	maxFlags    = 128
	maxFlagLen  = 256
	maxShortStr = 256 // service, actor, mailboxID
)

// Errors of Parse, matched with errors.Is.
var (
	// ErrMalformed is a body or URI that Cyrus would not send: not a JSON
	// object, no event name, a mailbox event without a usable uri.
	ErrMalformed = errors.New("malformed event")
	// ErrIgnored is an event that is well formed but not passed on; the
	// error is an *IgnoredError with the reason.
	ErrIgnored = errors.New("event ignored")
)

// Reasons in IgnoredError, also the reason label of events_ignored_total.
const (
	ReasonEventType   = "event_type"   // Login, Logout, Quota*, CalendarAlarm, unknown names
	ReasonMailboxType = "mailbox_type" // vnd.cmu.mbtype not in ParseOptions.MailboxTypes
	ReasonNoOwner     = "no_owner"     // user/ without a user: the #sieve mailbox
	ReasonDeleted     = "deleted"      // a mailbox under the DELETED prefix
	ReasonClass       = "class"        // a datagram that is not class EVENT
)

// IgnoredError says why an event was not passed on.
type IgnoredError struct{ Reason string }

func (e *IgnoredError) Error() string        { return "event ignored: " + e.Reason }
func (e *IgnoredError) Is(target error) bool { return target == ErrIgnored }

func ignored(reason string) error { return &IgnoredError{reason} }

// ParseOptions describe the Cyrus namespace the events come from. The
// zero value is not valid; start from DefaultParseOptions.
type ParseOptions struct {
	// AltNamespace is imapd.conf's altnamespace: a user's folders sit
	// beside INBOX ("Projects") rather than under it ("INBOX/Projects").
	AltNamespace bool `toml:"altnamespace"`
	// HierarchySep is "/" (unixhierarchysep: yes, Debian's default) or ".".
	HierarchySep string `toml:"hierarchy_separator"`
	// MailboxTypes are the vnd.cmu.mbtype values passed on: "e" (mail);
	// add "c" and "a" for calendars and address books (events-anchors §1.4).
	MailboxTypes []string `toml:"mailbox_types"`
	// DeletedPrefix is imapd.conf's deletedprefix: mailboxes under it are
	// delete_mode: delayed leftovers, not user folders.
	DeletedPrefix string `toml:"deleted_prefix"`
}

// DefaultParseOptions match Debian 12's Cyrus 3.6 defaults.
func DefaultParseOptions() ParseOptions {
	return ParseOptions{HierarchySep: "/", MailboxTypes: []string{"e"}, DeletedPrefix: "DELETED"}
}

// Validate returns every problem as "key: message" lines, joined.
func (o ParseOptions) Validate() error {
	var errs []error
	if o.HierarchySep != "/" && o.HierarchySep != "." {
		errs = append(errs, fmt.Errorf("hierarchy_separator: must be \"/\" (unixhierarchysep: yes) or \".\", got %q", o.HierarchySep))
	}
	if len(o.MailboxTypes) == 0 {
		errs = append(errs, errors.New("mailbox_types: must name at least one type, such as \"e\""))
	}
	for _, t := range o.MailboxTypes {
		if len(t) != 1 || t[0] < 'a' || t[0] > 'z' {
			errs = append(errs, fmt.Errorf("mailbox_types: %q is not a Cyrus mailbox type letter (e, c, a, ...)", t))
		}
	}
	if strings.ContainsAny(o.DeletedPrefix, "/.@") {
		errs = append(errs, fmt.Errorf("deleted_prefix: must be one level, got %q", o.DeletedPrefix))
	}
	return errors.Join(errs...)
}

// Parser turns Cyrus event bodies into Events. It is safe for concurrent
// use.
type Parser struct {
	canon store.Canon
	opts  ParseOptions
}

// NewParser returns a Parser that canonicalises owners and ACL identifiers
// with c (its default domain is Cyrus's defaultdomain).
func NewParser(c store.Canon, opts ParseOptions) (*Parser, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("events parser: %w", err)
	}
	// Without a default domain, a URL without a domain (a default-domain
	// user's, §1.4) names no account we know: canonicalising it fails and
	// the event is dropped as malformed.
	return &Parser{canon: c, opts: opts}, nil
}

// eventTypes maps Cyrus's event names (event_to_name(), mboxevent.c:1794;
// RFC 5423 §4 plus vnd.cmu ones) onto ours (events-anchors §4.2).
var eventTypes = map[string]string{
	"MessageNew":          TypeMessageAdded,
	"MessageAppend":       TypeMessageAdded,
	"vnd.cmu.MessageCopy": TypeMessageAdded,
	"vnd.cmu.MessageMove": TypeMessageAdded,
	"MessageExpunge":      TypeMessageRemoved,
	"MessageExpire":       TypeMessageRemoved,
	"FlagsSet":            TypeMessageFlags,
	"FlagsClear":          TypeMessageFlags,
	"MessageRead":         TypeMessageFlags,
	"MessageTrash":        TypeMessageFlags,
	"MailboxCreate":       TypeMailboxCreated,
	"MailboxDelete":       TypeMailboxDeleted,
	"MailboxRename":       TypeMailboxRenamed,
	"AclChange":           TypeMailboxACL,
	"MailboxSubscribe":    TypeMailboxSubscription,
	"MailboxUnSubscribe":  TypeMailboxSubscription,
	"MailboxModseq":       TypeMailboxChanged,
}

// rawEvent is the part of Cyrus's JSON we read. Nothing that names a
// subject, a sender or content (vnd.cmu.envelope, messageContent,
// bodyStructure, vnd.cmu.midset) is even decoded. Unknown fields are
// ignored, and a field of an unexpected type reads as absent, so a later
// Cyrus adding or retyping fields degrades rather than breaks (§4.5).
type rawEvent struct {
	Event        jsonString `json:"event"`
	Timestamp    jsonString `json:"timestamp"`
	Service      jsonString `json:"service"`
	URI          jsonString `json:"uri"`
	MailboxID    jsonString `json:"mailboxID"`
	OldMailboxID jsonString `json:"oldMailboxID"`
	User         jsonString `json:"user"`
	UIDSet       jsonString `json:"uidset"`
	OldUIDSet    jsonString `json:"vnd.cmu.oldUidset"`
	FlagNames    jsonString `json:"flagNames"`
	MBType       jsonString `json:"vnd.cmu.mbtype"`
	ACL          jsonString `json:"vnd.cmu.mailboxACL"`
	Modseq       jsonUint   `json:"modseq"`
	UIDNext      jsonUint   `json:"uidnext"`
	Messages     jsonUint   `json:"messages"`
	Unseen       jsonUint   `json:"vnd.cmu.unseenMessages"`
}

// ParseDatagram decodes one datagram from notifysocket and parses its
// event, counting what it drops in the package's metrics. received is when
// the datagram arrived, the time of an event without a timestamp.
func (p *Parser) ParseDatagram(b []byte, received time.Time) ([]Event, error) {
	d, err := DecodeDatagram(b)
	if err != nil {
		droppedMalformed.Inc()
		return nil, err
	}
	if d.Class != ClassEvent {
		ignoredBy(ReasonClass).Inc()
		return nil, ignored(ReasonClass)
	}
	evs, err := p.Parse(d.Message, received)
	if ie, ok := errors.AsType[*IgnoredError](err); ok {
		ignoredBy(ie.Reason).Inc()
	} else if err != nil {
		droppedMalformed.Inc()
	}
	return evs, err
}

// Parse turns one event body (the JSON of a class EVENT datagram) into
// Events: usually one, two for a vnd.cmu.MessageMove (added in the
// destination, removed from the source) and for a rename across owners.
// received is the time of an event without a usable timestamp.
func (p *Parser) Parse(body []byte, received time.Time) ([]Event, error) {
	if len(body) > MaxDatagram {
		return nil, malformedf("body of %d bytes", len(body))
	}
	var raw rawEvent
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, malformedf("json: %v", err)
	}
	name, ok := raw.Event.get()
	if !ok || name == "" {
		return nil, malformedf("no event name")
	}
	typ, known := eventTypes[name]
	if !known {
		return nil, ignored(ReasonEventType) // Login, Logout, Quota*, CalendarAlarm, new names
	}
	if t, ok := raw.MBType.get(); ok && !p.keepType(t) {
		return nil, ignored(ReasonMailboxType)
	}
	uri, ok := raw.URI.get()
	if !ok {
		return nil, malformedf("%s without uri", name)
	}
	ref, err := p.ParseURI(uri)
	if err != nil {
		return nil, err
	}
	ev := Event{
		Type:        typ,
		Account:     ref.Account,
		Mailbox:     ref.Mailbox,
		UIDValidity: ref.UIDValidity,
		Time:        received.UTC(),
		CyrusEvent:  name,
	}
	if ts, ok := raw.Timestamp.get(); ok {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			ev.Time = t.UTC()
		}
	}
	// In 3.6 mailboxID is the uniqueid; Kolab-era samples put a URL there
	// (§1.4), which is no key.
	if id, ok := raw.MailboxID.get(); ok && isToken(id) {
		ev.MailboxID = id
	}
	ev.Service = shortString(raw.Service)
	if actor, ok := raw.User.get(); ok && actor != "" {
		if a, err := p.canon.Login(actor, ""); err == nil {
			ev.Actor = a.String()
		} else {
			ev.Actor = shortString(raw.User) // "admin"-style ids without a domain still say who
		}
	}
	ev.UIDs = uidSet(raw.UIDSet)
	if ev.UIDs == "" && ref.UID != 0 {
		ev.UIDs = strconv.FormatUint(uint64(ref.UID), 10) // MessageNew carries ;UID=n instead
	}
	ev.Modseq, _ = raw.Modseq.get()
	ev.UIDNext = raw.UIDNext.uint32()
	if n, ok := raw.Messages.get(); ok && n <= math.MaxUint32 {
		v := uint32(n)
		ev.Messages = &v
	}
	if n, ok := raw.Unseen.get(); ok && n <= math.MaxUint32 {
		v := uint32(n)
		ev.Unseen = &v
	}
	ev.Flags = flagList(raw.FlagNames)
	switch name {
	case "MessageRead":
		ev.Flags = orDefault(ev.Flags, `\Seen`)
	case "MessageTrash":
		ev.Flags = orDefault(ev.Flags, `\Deleted`)
	case "MailboxSubscribe", "MailboxUnSubscribe":
		sub := name == "MailboxSubscribe"
		ev.Subscribed = &sub
	}

	// A missing or unreadable ACL leaves the owner alone (§4.3).
	acl, _ := raw.ACL.get()
	ev.Readers, _ = ACLReaders(p.canon, ref.Account, acl)
	if typ == TypeMailboxSubscription {
		// A subscription is the subscriber's own list, not a change to
		// the folder: only the subscriber (the actor) is told, never the
		// folder's owner or its other readers.
		ev.Readers = nil
		if ev.Actor != "" && strings.Contains(ev.Actor, "@") {
			ev.Readers = []string{ev.Actor}
		}
	}

	out := []Event{ev}
	switch name {
	case "vnd.cmu.MessageMove":
		// The source is oldMailboxID, a URL in 3.6 (§1.3); Cyrus sends
		// no ACL for it, so only its owner is told.
		if src, ok := p.oldRef(raw); ok {
			rm := Event{Type: TypeMessageRemoved, Account: src.Account, Mailbox: src.Mailbox,
				UIDValidity: src.UIDValidity, UIDs: uidSet(raw.OldUIDSet), Actor: ev.Actor,
				Service: ev.Service, Time: ev.Time, CyrusEvent: name}
			rm.Readers, _ = ACLReaders(p.canon, src.Account, "")
			out = append(out, rm)
		}
	case "MailboxRename":
		src, ok := p.oldRef(raw)
		switch {
		case !ok:
		case src.Account == ev.Account:
			out[0].OldMailbox = src.Mailbox
		default:
			// Renamed to another owner (an admin RENAME user/a/X user/b/X):
			// the old owner sees it go, the new one sees it arrive; neither
			// learns the other's folder name.
			out[0].Type = TypeMailboxCreated
			gone := Event{Type: TypeMailboxDeleted, Account: src.Account, Mailbox: src.Mailbox,
				UIDValidity: src.UIDValidity, MailboxID: ev.MailboxID, Actor: ev.Actor,
				Service: ev.Service, Time: ev.Time, CyrusEvent: name}
			gone.Readers, _ = ACLReaders(p.canon, src.Account, "")
			out = append(out, gone)
		}
	}
	return out, nil
}

// oldRef parses oldMailboxID, which 3.6 fills with the old mailbox's URL
// for renames and moves.
func (p *Parser) oldRef(raw rawEvent) (MailboxRef, bool) {
	s, ok := raw.OldMailboxID.get()
	if !ok {
		return MailboxRef{}, false
	}
	ref, err := p.ParseURI(s)
	return ref, err == nil
}

func (p *Parser) keepType(t string) bool {
	for _, k := range p.opts.MailboxTypes {
		if t == k {
			return true
		}
	}
	return false
}

// uidSet keeps an IMAP sequence set of UIDs (RFC 3501 §9, sequence-set)
// and drops anything else.
func uidSet(s jsonString) string {
	v, ok := s.get()
	if !ok || v == "" || len(v) > maxUIDSet {
		return ""
	}
	for i := 0; i < len(v); i++ {
		if b := v[i]; !(b >= '0' && b <= '9' || b == ':' || b == ',' || b == '*') {
			return ""
		}
	}
	return v
}

// flagList splits flagNames ("\Flagged $Label1", space-separated) and
// keeps flags that are IMAP atoms (RFC 3501 §9, flag), bounded.
func flagList(s jsonString) []string {
	v, ok := s.get()
	if !ok {
		return nil
	}
	var flags []string
	for f := range strings.FieldsSeq(v) {
		if len(flags) == maxFlags {
			break
		}
		if len(f) <= maxFlagLen && isFlag(f) {
			flags = append(flags, f)
		}
	}
	return flags
}

func isFlag(f string) bool {
	name := strings.TrimPrefix(f, `\`)
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if b <= 0x20 || b >= 0x7f || strings.IndexByte(`(){%*"\]`, b) >= 0 {
			return false
		}
	}
	return true
}

func orDefault(flags []string, def string) []string {
	if len(flags) > 0 {
		return flags
	}
	return []string{def}
}

// isToken accepts a Cyrus uniqueid: short, printable ASCII, no spaces.
func isToken(s string) bool {
	if s == "" || len(s) > maxShortStr {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return !strings.Contains(s, "://")
}

// shortString returns a printable, bounded string value, or "".
func shortString(s jsonString) string {
	v, ok := s.get()
	if !ok || len(v) > maxShortStr || hasControl(v) {
		return ""
	}
	return v
}

// jsonString is a JSON string; any other JSON value reads as absent.
type jsonString struct {
	v  string
	ok bool
}

func (s *jsonString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		s.ok = json.Unmarshal(b, &s.v) == nil
	}
	return nil
}

func (s jsonString) get() (string, bool) { return s.v, s.ok }

// jsonUint is a non-negative JSON integer (or a string holding one); any
// other JSON value reads as absent.
type jsonUint struct {
	v  uint64
	ok bool
}

func (u *jsonUint) UnmarshalJSON(b []byte) error {
	b = bytes.Trim(b, `"`)
	n, err := strconv.ParseUint(string(b), 10, 64)
	u.v, u.ok = n, err == nil
	return nil
}

func (u jsonUint) get() (uint64, bool) { return u.v, u.ok }

// uint32 is the value when it fits, else 0 (absent).
func (u jsonUint) uint32() uint32 {
	if !u.ok || u.v > math.MaxUint32 {
		return 0
	}
	return uint32(u.v)
}
