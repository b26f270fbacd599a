// Package events turns Cyrus's mailbox events (RFC 5423, sent by Cyrus 3.6
// on notifysocket) into signed webhooks and Server-Sent Events for
// groupware: every change in every folder, authorised by the mailbox ACL,
// with the gaps Cyrus leaves closed by IMAP re-checks. Events are hints: a
// consumer syncs through IMAP (CONDSTORE/QRESYNC) when told a folder
// changed.
package events

import "time"

// The stable event types consumers see; Cyrus's names map onto them
// (docs/events.md has the table).
const (
	TypeMessageAdded        = "message.added"
	TypeMessageRemoved      = "message.removed"
	TypeMessageFlags        = "message.flags"
	TypeMailboxCreated      = "mailbox.created"
	TypeMailboxDeleted      = "mailbox.deleted"
	TypeMailboxRenamed      = "mailbox.renamed"
	TypeMailboxACL          = "mailbox.acl"
	TypeMailboxSubscription = "mailbox.subscription"
	TypeMailboxChanged      = "mailbox.changed" // something changed; sync this folder
	TypeResync              = "resync"          // events were lost: sync everything
)

// Event is one normalised change, as consumers receive it (JSON). It names
// no subject and no sender, except in the webhooks of consumers that opted
// in (Envelopes; envelope.go).
type Event struct {
	Type string `json:"type"`
	// Account is the canonical address of the mailbox's owner; "" for a
	// shared folder.
	Account string `json:"account,omitempty"`
	// Mailbox is the folder in the owner's namespace ("INBOX",
	// "INBOX/Projects"; shared folders as "shared/team").
	Mailbox string `json:"mailbox"`
	// MailboxID is Cyrus's uniqueid: stable across renames.
	MailboxID   string `json:"mailboxId,omitempty"`
	OldMailbox  string `json:"oldMailbox,omitempty"` // mailbox.renamed: the old name
	UIDValidity uint32 `json:"uidValidity,omitempty"`
	UIDs        string `json:"uids,omitempty"` // an IMAP sequence set of UIDs
	Modseq      uint64 `json:"modseq,omitempty"`
	// FromModseq is set on a mailbox.changed from the reconciler: the
	// HIGHESTMODSEQ last reported (for FETCH ... CHANGEDSINCE).
	FromModseq uint64   `json:"fromModseq,omitempty"`
	UIDNext    uint32   `json:"uidNext,omitempty"`
	Messages   *uint32  `json:"messages,omitempty"`
	Unseen     *uint32  `json:"unseen,omitempty"`
	Flags      []string `json:"flags,omitempty"`
	Subscribed *bool    `json:"subscribed,omitempty"` // mailbox.subscription
	// Actor is who caused it (Cyrus's "user"; the admin for admin
	// actions), and Service the Cyrus service (imap, lmtpunix, ...).
	Actor   string    `json:"actor,omitempty"`
	Service string    `json:"service,omitempty"`
	Time    time.Time `json:"time"`
	// CyrusEvent is Cyrus's own name (MessageNew, vnd.cmu.MessageMove,
	// MailboxModseq, ...), "coalesced" for the one mailbox.changed that
	// stands for a storm of events on a mailbox, or "reconcile" for the
	// reconciler's.
	CyrusEvent string `json:"cyrusEvent"`
	// Envelopes are the new messages' subjects and senders: only in a
	// message.added webhook to a consumer that opted in, never in the
	// event log or the streams. EnvelopeError says why some or all are
	// missing (EnvelopeUnavailable, EnvelopeIncomplete).
	Envelopes     []MessageEnvelope `json:"envelopes,omitempty"`
	EnvelopeError string            `json:"envelopeError,omitempty"`

	// Readers are the canonical addresses allowed to see this event: the
	// owner and ACL holders with the l and r rights, never "anyone".
	// Not sent.
	Readers []string `json:"-"`
}
