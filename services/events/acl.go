package events

import (
	"slices"
	"strings"

	"cyrus-sidecar/store"
)

const (
	// maxACL bounds the ACL string looked at; Cyrus's whole datagram is
	// capped at MaxDatagram anyway.
	maxACL = 32 << 10
	// maxReaders bounds the identifiers taken from one ACL.
	maxReaders = 1000
)

// ACLReaders returns who may see the events of a mailbox owned by owner
// (a canonical address; "" for a shared folder) whose ACL is acl, Cyrus's
// vnd.cmu.mailboxACL ("id TAB rights TAB ...", sent with every mailbox
// event, events-anchors §1.4 and §4.3): the owner, plus every identifier
// whose rights, less its negative rights ("-id"), hold both l (lookup) and
// r (read, RFC 4314 §2.1). Never "anyone" or "anonymous": such folders are
// for whoever subscribes, not broadcast. "group:" identifiers are dropped
// (expanding them needs a directory; the owner still gets the event).
// Identifiers are canonicalised with c as logins, so "bob" becomes
// bob@<defaultdomain>; one that is not a valid user id is dropped. When acl
// cannot be parsed the result is the owner alone and ok is false.
// The result is sorted, without duplicates.
func ACLReaders(c store.Canon, owner, acl string) (readers []string, ok bool) {
	ownerOnly := func() []string {
		if owner == "" {
			return nil
		}
		return []string{owner}
	}
	entries, ok := splitACL(acl)
	if !ok {
		return ownerOnly(), false
	}
	// RFC 4314 §2: effective rights are the positive rights less the
	// negative ones of the same identifier.
	pos := map[string]string{}
	neg := map[string]string{}
	for _, e := range entries {
		if id, isNeg := strings.CutPrefix(e.id, "-"); isNeg {
			neg[id] += e.rights
		} else {
			pos[e.id] += e.rights
		}
	}
	readers = ownerOnly()
	for id, rights := range pos {
		if !hasRight(rights, neg[id], 'l') || !hasRight(rights, neg[id], 'r') {
			continue
		}
		switch {
		case id == "anyone" || id == "anonymous":
			continue // never broadcast (§4.3)
		case strings.HasPrefix(id, "group:"):
			continue // needs group expansion; not done here
		}
		a, err := c.Login(id, "")
		if err != nil {
			continue // not a user id Cyrus could log in as
		}
		readers = append(readers, a.String())
		if len(readers) >= maxReaders {
			break
		}
	}
	slices.Sort(readers)
	return slices.Compact(readers), true
}

type aclEntry struct{ id, rights string }

// splitACL parses "id TAB rights TAB id TAB rights TAB" (Cyrus writes a
// trailing TAB; a missing one is tolerated). An empty identifier, an odd
// field count or control bytes make it unparseable.
func splitACL(acl string) ([]aclEntry, bool) {
	if acl == "" || len(acl) > maxACL {
		return nil, false
	}
	fields := strings.Split(strings.TrimSuffix(acl, "\t"), "\t")
	if len(fields)%2 != 0 {
		return nil, false
	}
	entries := make([]aclEntry, 0, len(fields)/2)
	for i := 0; i < len(fields); i += 2 {
		id, rights := fields[i], fields[i+1]
		if id == "" || id == "-" || hasControl(id) || !validRights(rights) {
			return nil, false
		}
		entries = append(entries, aclEntry{id, rights})
	}
	return entries, true
}

// hasRight reports whether right is in pos and not in neg.
func hasRight(pos, neg string, right byte) bool {
	return strings.IndexByte(pos, right) >= 0 && strings.IndexByte(neg, right) < 0
}

// validRights accepts RFC 4314 rights letters and Cyrus's digit rights
// (custom rights 0-9); an empty set is allowed ("id TAB TAB").
func validRights(r string) bool {
	for i := 0; i < len(r); i++ {
		if b := r[i]; !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9') {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
