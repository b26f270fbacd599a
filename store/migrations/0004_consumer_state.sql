-- Why a consumer is disabled, '' while it is enabled: its endpoint
-- answered 410 Gone (RFC 9110 §15.5.11: gone, likely for good) and the
-- dispatcher stopped sending, or an admin disabled it. Its webhooks stay in
-- the outbox until it is enabled again or deleted.
ALTER TABLE consumers ADD COLUMN disabled_reason TEXT NOT NULL DEFAULT '';
-- When it was last created or enabled (Unix ms): a 410 from an attempt that
-- started before then is about an endpoint the admin has since set right
-- (or about a deleted consumer whose id was given to this one).
ALTER TABLE consumers ADD COLUMN enabled_at INTEGER NOT NULL DEFAULT 0;
-- Secret rotation (consumer rotate): the previous secret still signs, next
-- to the new one, until old_secret_until (Unix seconds), so the receiver can
-- switch its key at any moment within that time (Standard Webhooks: several
-- space-separated signatures, any one of which may match).
ALTER TABLE consumers ADD COLUMN old_secret TEXT NOT NULL DEFAULT '';
ALTER TABLE consumers ADD COLUMN old_secret_until INTEGER NOT NULL DEFAULT 0;
-- Whether the account had the mailbox subscribed when the events reconciler
-- last looked: 0 unknown (rows from before this column, or a server that
-- did not say), 1 not subscribed, 2 subscribed. It reports a change between
-- two known values as mailbox.subscription (a lost MailboxSubscribe).
ALTER TABLE mailbox_state ADD COLUMN subscribed INTEGER NOT NULL DEFAULT 0;
