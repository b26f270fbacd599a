-- Schema version 3: delivery of mailbox events (docs/events.md): webhook
-- consumers, their outbox, and the per-account event log behind Server-Sent
-- Events.

-- A consumer is a groupware (or any program) that receives signed webhooks
-- for the domains it is scoped to: its own list, its organisation's
-- domains, or both. The signing secret must be stored in clear (as the
-- "whsec_<base64>" text shown once at `consumer add`): HMAC signing needs
-- the key itself, unlike a password check. The store file is already
-- private to the service (mode 0640).
CREATE TABLE consumers (
	id      INTEGER PRIMARY KEY,
	name    TEXT NOT NULL UNIQUE COLLATE NOCASE,
	url     TEXT NOT NULL,
	secret  TEXT NOT NULL,
	-- Deleting the organisation narrows the scope to the listed domains,
	-- never widens it.
	org_id  INTEGER REFERENCES organisations(id) ON DELETE SET NULL,
	enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
	-- envelope: the consumer opted in to subjects and senders, fetched
	-- from IMAP for message.added (events-anchors §4.2).
	envelope INTEGER NOT NULL DEFAULT 0 CHECK (envelope IN (0, 1)),
	created INTEGER NOT NULL
);

CREATE TABLE consumer_domains (
	consumer_id INTEGER NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
	domain      TEXT NOT NULL,  -- canonical domain name, hosted when added
	PRIMARY KEY (consumer_id, domain)
);

-- Consumers are configuration that serve caches by Generation, like the
-- directory: an admin's `consumer add` in another process must reach it.
CREATE TRIGGER consumers_ai AFTER INSERT ON consumers BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER consumers_au AFTER UPDATE ON consumers BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER consumers_ad AFTER DELETE ON consumers BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER consumer_domains_ai AFTER INSERT ON consumer_domains BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER consumer_domains_ad AFTER DELETE ON consumer_domains BEGIN UPDATE generation SET n = n + 1; END;

-- The tables below are the event service's own traffic, written in bursts:
-- no triggers, so they never change Generation and flush no cache.

-- webhook_outbox holds every webhook not yet acknowledged with a 2xx. seq
-- is the enqueue order, and so the delivery order within one (consumer,
-- mailbox); id is the webhook-id header, the same on every attempt. Times
-- are Unix milliseconds here (retries start well under a second apart).
CREATE TABLE webhook_outbox (
	seq             INTEGER PRIMARY KEY,
	id              TEXT NOT NULL UNIQUE,
	consumer_id     INTEGER NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
	mailbox         TEXT NOT NULL,  -- ordering key: mailbox id, else owner and name
	payload         TEXT NOT NULL,  -- the exact body sent (signed per attempt)
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_ms INTEGER NOT NULL,
	created_ms      INTEGER NOT NULL,
	last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_outbox_key ON webhook_outbox(consumer_id, mailbox, seq);
-- Due order: DueWebhooks walks this index and stops at its LIMIT.
CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_ms, seq);

-- account_seqs numbers each account's events: last is the last sequence
-- number handed out (it never goes back, even when every row is pruned),
-- pruned the highest one removed by retention. A reader resuming after a
-- sequence below pruned has missed events and must resync.
CREATE TABLE account_seqs (
	account TEXT PRIMARY KEY,
	last    INTEGER NOT NULL,
	pruned  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- account_events is the log Server-Sent Events replays from: one row per
-- event and account allowed to see it (owner and ACL readers).
CREATE TABLE account_events (
	account TEXT NOT NULL,
	seq     INTEGER NOT NULL,
	at      INTEGER NOT NULL,
	event   TEXT NOT NULL,  -- the event's JSON, as sent
	PRIMARY KEY (account, seq)
) WITHOUT ROWID;
CREATE INDEX account_events_at ON account_events(at);

-- mailbox_state is what the events reconciler last reported per mailbox
-- of an account (docs/events.md, "Closing the gaps"): it compares Cyrus's
-- LIST-STATUS with these rows and reports the differences.
CREATE TABLE mailbox_state (
	account        TEXT NOT NULL,
	mailbox        TEXT NOT NULL,  -- as the account sees it, UTF-8
	mailbox_id     TEXT NOT NULL,  -- Cyrus's uniqueid, '' when unknown
	uidvalidity    INTEGER NOT NULL,
	uidnext        INTEGER NOT NULL,
	messages       INTEGER NOT NULL,
	unseen         INTEGER NOT NULL,
	highestmodseq  INTEGER NOT NULL,
	PRIMARY KEY (account, mailbox)
) WITHOUT ROWID;
