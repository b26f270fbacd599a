-- Why a consumer is disabled, '' while it is enabled: its endpoint
-- answered 410 Gone (RFC 9110 §15.5.11: gone, likely for good) and the
-- dispatcher stopped sending, or an admin disabled it. Its webhooks stay in
-- the outbox until it is enabled again or deleted.
ALTER TABLE consumers ADD COLUMN disabled_reason TEXT NOT NULL DEFAULT '';
