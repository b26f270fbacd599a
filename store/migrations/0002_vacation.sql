-- Schema version 2: what the vacation service needs beyond version 1.

-- period names one absence: the Sieve vacation :handle (RFC 5230 §4.2) is
-- built from it, so a sender answered during one absence is answered again
-- in the next, but not after every edit of the text. Rows from version 1
-- get one now: a vacation already on must not render with an empty handle.
ALTER TABLE vacations ADD COLUMN period TEXT NOT NULL DEFAULT '';
UPDATE vacations SET period = lower(hex(randomblob(8)));

-- mode is how our script is hooked into the user's Sieve ('' = not at all);
-- prev_active the script that was active before we touched anything, to
-- restore when the vacation ends.
ALTER TABLE sieve_state ADD COLUMN mode TEXT NOT NULL DEFAULT ''
	CHECK (mode IN ('', 'wrapper', 'include', 'report'));
ALTER TABLE sieve_state ADD COLUMN prev_active TEXT NOT NULL DEFAULT '';

-- Which aliases name an address (store.AddressesOf, and DeleteUser's
-- dangling-alias report) without a scan of every target.
CREATE INDEX alias_targets_target ON alias_targets(target);
