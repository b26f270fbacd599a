package imap

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// UniqueIDEntry is the Cyrus metadata entry holding a mailbox's uniqueid,
// the "mailboxID" of Cyrus's events (stable across RENAME).
const UniqueIDEntry = "/shared/vendor/cmu/cyrus-imapd/uniqueid"

// StatusItem is a set of STATUS data items (RFC 3501 §6.3.10, RFC 7162
// §3.1.6 HIGHESTMODSEQ).
type StatusItem uint8

// The STATUS items this client asks for and parses.
const (
	StatusMessages StatusItem = 1 << iota
	StatusUIDNext
	StatusUIDValidity
	StatusUnseen
	StatusHighestModseq
)

// statusNames are the items' wire names, in the order sent.
var statusNames = []struct {
	item StatusItem
	name string
}{
	{StatusMessages, "MESSAGES"}, {StatusUIDNext, "UIDNEXT"}, {StatusUIDValidity, "UIDVALIDITY"},
	{StatusUnseen, "UNSEEN"}, {StatusHighestModseq, "HIGHESTMODSEQ"},
}

// Status is a mailbox's STATUS response. Has says which items the server
// sent; the others are zero.
type Status struct {
	Has           StatusItem
	Messages      uint32
	UIDNext       uint32
	UIDValidity   uint32
	Unseen        uint32
	HighestModseq uint64
}

// Mailbox is one LIST response with what LIST-STATUS and LIST-METADATA
// returned for it.
type Mailbox struct {
	// Name is the name decoded from modified UTF-7 to UTF-8, "INBOX" in
	// upper case whatever case the server used (RFC 3501 §5.1); the wire
	// form when it is not valid modified UTF-7.
	Name string
	Raw  string // the name as on the wire
	// Delim is the hierarchy delimiter; "" for NIL (a flat namespace).
	Delim   string
	Attrs   []string // name attributes as sent ("\HasNoChildren", "\Noselect", ...)
	OldName string   // RFC 5258 §6 / RFC 9051 OLDNAME, decoded; "" when none
	// Status is nil when the server sent no STATUS for the mailbox (RFC
	// 5819: not for \NoSelect or \NonExistent ones, nor when it failed).
	Status *Status
	// Metadata holds the requested entries the server had values for.
	Metadata map[string]string
}

// HasAttr reports whether the mailbox has the name attribute a (such as
// `\Noselect`), compared without regard to case as RFC 3501 asks.
func (m *Mailbox) HasAttr(a string) bool {
	for _, x := range m.Attrs {
		if strings.EqualFold(x, a) {
			return true
		}
	}
	return false
}

// ListOptions say what List asks for.
type ListOptions struct {
	Reference string // the reference name; usually ""
	Pattern   string // the mailbox pattern; "*" for all
	// Status asks for these STATUS items with each mailbox (RETURN
	// (STATUS ...), RFC 5819; needs LIST-STATUS).
	Status StatusItem
	// Metadata asks for these entries with each mailbox (RETURN
	// (METADATA ...), LIST-METADATA; needs that capability).
	Metadata []string
	// Subscribed asks for the \Subscribed attribute on each mailbox the
	// user subscribed to (RETURN (SUBSCRIBED), RFC 5258 §3.2; needs
	// LIST-EXTENDED).
	Subscribed bool
}

// List runs LIST (RFC 3501 §6.3.8) with the RETURN options of RFC 5258
// and returns the mailboxes in the order the server listed them.
func (c *Client) List(ctx context.Context, opt ListOptions) ([]Mailbox, error) {
	const op = "LIST"
	ref, err := quote(opt.Reference)
	if err != nil {
		return nil, fmt.Errorf("imap: %s: %w", op, err)
	}
	pat, err := quote(opt.Pattern)
	if err != nil {
		return nil, fmt.Errorf("imap: %s: %w", op, err)
	}
	cmd := "LIST " + ref + " " + pat
	var ret []string
	if opt.Subscribed {
		ret = append(ret, "SUBSCRIBED")
	}
	if opt.Status != 0 {
		var items []string
		for _, s := range statusNames {
			if opt.Status&s.item != 0 {
				items = append(items, s.name)
			}
		}
		ret = append(ret, "STATUS ("+strings.Join(items, " ")+")")
	}
	if len(opt.Metadata) > 0 {
		var entries []string
		for _, e := range opt.Metadata {
			q, err := quote(e)
			if err != nil {
				return nil, fmt.Errorf("imap: %s: %w", op, err)
			}
			entries = append(entries, q)
		}
		ret = append(ret, "METADATA ("+strings.Join(entries, " ")+")")
	}
	if len(ret) > 0 {
		cmd += " RETURN (" + strings.Join(ret, " ") + ")"
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var l lister
	if _, err := c.do(ctx, op, []byte(cmd), l.add, nil); err != nil {
		return nil, err
	}
	return l.boxes, nil
}

// lister collects LIST, STATUS and METADATA responses by wire name.
type lister struct {
	boxes []Mailbox
	index map[string]int // Raw -> position in boxes
}

// add takes one data response of a LIST command; others are ignored
// (RFC 3501 §7: a client must accept unsolicited responses).
func (l *lister) add(resp *response) error {
	switch resp.name {
	case "LIST":
		m, err := parseList(resp.fields)
		if err != nil {
			return err
		}
		if l.index == nil {
			l.index = make(map[string]int)
		}
		if i, ok := l.index[m.Raw]; ok {
			l.boxes[i] = mergeList(l.boxes[i], m)
			return nil
		}
		l.index[m.Raw] = len(l.boxes)
		l.boxes = append(l.boxes, m)
	case "STATUS":
		name, st, err := parseStatus(resp.fields)
		if err != nil {
			return err
		}
		if i, ok := l.index[name]; ok {
			l.boxes[i].Status = &st
		}
	case "METADATA":
		name, md, err := parseMetadata(resp.fields)
		if err != nil {
			return err
		}
		if i, ok := l.index[name]; ok && len(md) > 0 {
			if l.boxes[i].Metadata == nil {
				l.boxes[i].Metadata = make(map[string]string, len(md))
			}
			for k, v := range md {
				l.boxes[i].Metadata[k] = v
			}
		}
	}
	return nil
}

// mergeList keeps what came with an earlier LIST for the same name.
func mergeList(old, m Mailbox) Mailbox {
	m.Status, m.Metadata = old.Status, old.Metadata
	return m
}

// parseList parses mailbox-list (RFC 3501 §9, RFC 5258 §9):
//
//	"(" [mbx-list-flags] ")" SP (DQUOTE QUOTED-CHAR DQUOTE / nil) SP mailbox
//	[SP "(" mbox-list-extended-item *(SP mbox-list-extended-item) ")"]
func parseList(f []value) (Mailbox, error) {
	var m Mailbox
	if len(f) < 3 || len(f) > 4 || f[0].kind != vList {
		return m, fmt.Errorf("%w: LIST response shape", errSyntax)
	}
	for _, a := range f[0].list {
		if a.kind != vAtom {
			return m, fmt.Errorf("%w: LIST attribute", errSyntax)
		}
		m.Attrs = append(m.Attrs, a.s)
	}
	switch {
	case f[1].kind == vNil:
	case f[1].kind == vString && len(f[1].s) == 1:
		m.Delim = f[1].s
	default:
		return m, fmt.Errorf("%w: LIST delimiter", errSyntax)
	}
	raw, err := astring(f[2])
	if err != nil {
		return m, fmt.Errorf("%w: LIST mailbox name", err)
	}
	m.Raw, m.Name = raw, displayName(raw)
	if len(f) == 4 {
		ext := f[3]
		if ext.kind != vList || len(ext.list)%2 != 0 {
			return m, fmt.Errorf("%w: LIST extended items", errSyntax)
		}
		for i := 0; i < len(ext.list); i += 2 {
			tag, err := astring(ext.list[i])
			if err != nil {
				return m, fmt.Errorf("%w: LIST extended item tag", err)
			}
			// OLDNAME ("old") names the mailbox before a rename.
			if v := ext.list[i+1]; strings.EqualFold(tag, "OLDNAME") && v.kind == vList && len(v.list) == 1 {
				if old, err := astring(v.list[0]); err == nil {
					m.OldName = displayName(old)
				}
			}
		}
	}
	return m, nil
}

// parseStatus parses `STATUS mailbox "(" [status-att-list] ")"` (RFC 3501
// §7.2.4). Items we do not know, MAILBOXID (RFC 8474) among them, are
// skipped, whatever their value's shape.
func parseStatus(f []value) (string, Status, error) {
	var st Status
	if len(f) != 2 || f[1].kind != vList || len(f[1].list)%2 != 0 {
		return "", st, fmt.Errorf("%w: STATUS response shape", errSyntax)
	}
	name, err := astring(f[0])
	if err != nil {
		return "", st, fmt.Errorf("%w: STATUS mailbox name", err)
	}
	items := f[1].list
	for i := 0; i < len(items); i += 2 {
		if items[i].kind != vAtom {
			return "", st, fmt.Errorf("%w: STATUS item name", errSyntax)
		}
		item, v := strings.ToUpper(items[i].s), items[i+1]
		var dst32 *uint32
		var bit StatusItem
		switch item {
		case "MESSAGES":
			dst32, bit = &st.Messages, StatusMessages
		case "UIDNEXT":
			dst32, bit = &st.UIDNext, StatusUIDNext
		case "UIDVALIDITY":
			dst32, bit = &st.UIDValidity, StatusUIDValidity
		case "UNSEEN":
			dst32, bit = &st.Unseen, StatusUnseen
		case "HIGHESTMODSEQ":
			// RFC 7162 mod-sequence-valzer: 0..2^63-1.
			n, err := number(v, 63)
			if err != nil {
				return "", st, fmt.Errorf("%w: STATUS %s", err, item)
			}
			st.HighestModseq, st.Has = n, st.Has|StatusHighestModseq
			continue
		default:
			continue
		}
		n, err := number(v, 32)
		if err != nil {
			return "", st, fmt.Errorf("%w: STATUS %s", err, item)
		}
		*dst32, st.Has = uint32(n), st.Has|bit
	}
	return name, st, nil
}

// parseMetadata parses `METADATA mailbox "(" entry SP value ... ")"`
// (RFC 5464 §4.4.1); NIL values are left out.
func parseMetadata(f []value) (string, map[string]string, error) {
	if len(f) != 2 {
		return "", nil, fmt.Errorf("%w: METADATA response shape", errSyntax)
	}
	name, err := astring(f[0])
	if err != nil {
		return "", nil, fmt.Errorf("%w: METADATA mailbox name", err)
	}
	// RFC 5464 also allows the unsolicited form "METADATA mbox entry
	// entry..." (no values): nothing to take from it.
	if f[1].kind != vList {
		return name, nil, nil
	}
	items := f[1].list
	if len(items)%2 != 0 {
		return "", nil, fmt.Errorf("%w: METADATA entry without a value", errSyntax)
	}
	md := make(map[string]string, len(items)/2)
	for i := 0; i < len(items); i += 2 {
		entry, err := astring(items[i])
		if err != nil {
			return "", nil, fmt.Errorf("%w: METADATA entry", err)
		}
		switch v := items[i+1]; v.kind {
		case vNil:
		case vString, vAtom:
			md[entry] = v.s
		default:
			return "", nil, fmt.Errorf("%w: METADATA value", errSyntax)
		}
	}
	return name, md, nil
}

// Namespace is one namespace descriptor (RFC 2342 §5).
type Namespace struct {
	Prefix string // decoded from modified UTF-7
	Delim  string // "" for NIL
}

// Namespaces are the user's personal, other users' and shared namespaces.
type Namespaces struct {
	Personal, Other, Shared []Namespace
}

// Namespace runs NAMESPACE (RFC 2342, part of RFC 9051).
func (c *Client) Namespace(ctx context.Context) (Namespaces, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ns Namespaces
	var perr error
	got := false
	_, err := c.do(ctx, "NAMESPACE", []byte("NAMESPACE"), func(resp *response) error {
		if resp.name != "NAMESPACE" {
			return nil
		}
		ns, perr = parseNamespace(resp.fields)
		got = true
		return perr
	}, nil)
	if err != nil {
		return Namespaces{}, err
	}
	if !got {
		return Namespaces{}, c.fail(fmt.Errorf("imap: NAMESPACE: %w: no NAMESPACE response", errSyntax))
	}
	return ns, nil
}

// parseNamespace parses `NAMESPACE nsp SP nsp SP nsp` where each is NIL or
// a list of ( prefix SP delim *(extension) ).
func parseNamespace(f []value) (Namespaces, error) {
	var ns Namespaces
	if len(f) != 3 {
		return ns, fmt.Errorf("%w: NAMESPACE response shape", errSyntax)
	}
	dst := []*[]Namespace{&ns.Personal, &ns.Other, &ns.Shared}
	for i, v := range f {
		if v.kind == vNil {
			continue
		}
		if v.kind != vList {
			return ns, fmt.Errorf("%w: NAMESPACE list", errSyntax)
		}
		for _, d := range v.list {
			if d.kind != vList || len(d.list) < 2 || d.list[0].kind != vString {
				return ns, fmt.Errorf("%w: NAMESPACE descriptor", errSyntax)
			}
			n := Namespace{Prefix: displayName(d.list[0].s)}
			switch dl := d.list[1]; {
			case dl.kind == vNil:
			case dl.kind == vString && len(dl.s) == 1:
				n.Delim = dl.s
			default:
				return ns, fmt.Errorf("%w: NAMESPACE delimiter", errSyntax)
			}
			*dst[i] = append(*dst[i], n)
		}
	}
	return ns, nil
}

// astring takes an atom or string (RFC 3501 astring).
func astring(v value) (string, error) {
	if v.kind != vAtom && v.kind != vString {
		return "", errSyntax
	}
	return v.s, nil
}

// number parses an atom as an unsigned number of at most bits bits.
func number(v value, bits int) (uint64, error) {
	if v.kind != vAtom || v.s == "" || strings.Trim(v.s, "0123456789") != "" {
		return 0, errSyntax
	}
	n, err := strconv.ParseUint(v.s, 10, bits)
	if err != nil {
		return 0, errSyntax
	}
	return n, nil
}

// displayName decodes a wire name for display and comparison: modified
// UTF-7 to UTF-8, INBOX upper-cased; the wire form if it does not decode.
func displayName(raw string) string {
	if strings.EqualFold(raw, "INBOX") {
		return "INBOX"
	}
	if s, err := DecodeName(raw); err == nil {
		return s
	}
	return raw
}
