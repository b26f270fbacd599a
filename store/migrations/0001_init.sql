-- Schema version 1: the directory (organisations, domains, users, aliases),
-- credentials, vacation settings, installed Sieve state and the login audit.
-- Times are stored as Unix seconds (INTEGER, UTC); addresses are stored in
-- the canonical form produced by store.Canon.

CREATE TABLE organisations (
	id      INTEGER PRIMARY KEY,
	name    TEXT NOT NULL UNIQUE COLLATE NOCASE,
	created INTEGER NOT NULL
);

CREATE TABLE domains (
	id       INTEGER PRIMARY KEY,
	name     TEXT NOT NULL UNIQUE,
	org_id   INTEGER NOT NULL REFERENCES organisations(id) ON DELETE RESTRICT,
	catchall TEXT NOT NULL DEFAULT '',  -- canonical target address, '' = none
	created  INTEGER NOT NULL
);
CREATE INDEX domains_org ON domains(org_id);

CREATE TABLE users (
	id            INTEGER PRIMARY KEY,
	address       TEXT NOT NULL UNIQUE,  -- local@domain, canonical
	domain_id     INTEGER NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
	password_hash TEXT NOT NULL DEFAULT '',  -- '' = no password login
	disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
	services      TEXT NOT NULL DEFAULT '*', -- comma list of service names, '*' = all
	display_name  TEXT NOT NULL DEFAULT '',
	created       INTEGER NOT NULL,
	updated       INTEGER NOT NULL
);
CREATE INDEX users_domain ON users(domain_id);

CREATE TABLE aliases (
	id        INTEGER PRIMARY KEY,
	address   TEXT NOT NULL UNIQUE,
	domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
	created   INTEGER NOT NULL
);
CREATE INDEX aliases_domain ON aliases(domain_id);

CREATE TABLE alias_targets (
	alias_id INTEGER NOT NULL REFERENCES aliases(id) ON DELETE CASCADE,
	pos      INTEGER NOT NULL,  -- keeps the order the admin gave
	target   TEXT NOT NULL,
	PRIMARY KEY (alias_id, pos),
	UNIQUE (alias_id, target)
);

CREATE TABLE app_passwords (
	id        INTEGER PRIMARY KEY,
	user_id   INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	label     TEXT NOT NULL,
	hash      TEXT NOT NULL,
	services  TEXT NOT NULL DEFAULT '*',
	expires   INTEGER NOT NULL DEFAULT 0,  -- 0 = never
	created   INTEGER NOT NULL,
	last_used INTEGER NOT NULL DEFAULT 0,
	UNIQUE (user_id, label)
);

CREATE TABLE vacations (
	user_id           INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
	state             TEXT NOT NULL DEFAULT 'off' CHECK (state IN ('off', 'on', 'scheduled')),
	start_at          INTEGER NOT NULL DEFAULT 0,
	end_at            INTEGER NOT NULL DEFAULT 0,
	subject           TEXT NOT NULL DEFAULT '',
	internal_text     TEXT NOT NULL DEFAULT '',
	external_text     TEXT NOT NULL DEFAULT '',
	external_audience TEXT NOT NULL DEFAULT 'all' CHECK (external_audience IN ('all', 'known', 'none')),
	interval_days     INTEGER NOT NULL DEFAULT 7,
	from_address      TEXT NOT NULL DEFAULT '',
	updated           INTEGER NOT NULL
);

-- What the vacation service last installed into Cyrus. Keyed by address,
-- not user id: after a user is deleted we still need to know what to remove.
CREATE TABLE sieve_state (
	address      TEXT PRIMARY KEY,
	script_hash  TEXT NOT NULL DEFAULT '',
	installed_at INTEGER NOT NULL DEFAULT 0,
	attempted_at INTEGER NOT NULL DEFAULT 0,
	last_error   TEXT NOT NULL DEFAULT ''
);

CREATE TABLE login_audit (
	id       INTEGER PRIMARY KEY,
	at       INTEGER NOT NULL,
	login    TEXT NOT NULL,
	service  TEXT NOT NULL,
	result   TEXT NOT NULL,  -- ok | fail
	reason   TEXT NOT NULL DEFAULT '',
	client   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX login_audit_at ON login_audit(at);
CREATE INDEX login_audit_login ON login_audit(login, at);

-- generation counts committed changes to the directory and credentials, the
-- data a long-running reader caches. The triggers below bump it; the audit
-- log, last-use times and sieve_state do not, so a login does not flush every
-- cache in the process.
CREATE TABLE generation (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	n  INTEGER NOT NULL
);
INSERT INTO generation (id, n) VALUES (1, 1);

CREATE TRIGGER organisations_ai AFTER INSERT ON organisations BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER organisations_au AFTER UPDATE ON organisations BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER organisations_ad AFTER DELETE ON organisations BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER domains_ai AFTER INSERT ON domains BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER domains_au AFTER UPDATE ON domains BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER domains_ad AFTER DELETE ON domains BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER users_ai AFTER INSERT ON users BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER users_au AFTER UPDATE ON users BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER users_ad AFTER DELETE ON users BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER aliases_ai AFTER INSERT ON aliases BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER aliases_au AFTER UPDATE ON aliases BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER aliases_ad AFTER DELETE ON aliases BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER alias_targets_ai AFTER INSERT ON alias_targets BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER alias_targets_au AFTER UPDATE ON alias_targets BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER alias_targets_ad AFTER DELETE ON alias_targets BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER app_passwords_ai AFTER INSERT ON app_passwords BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER app_passwords_au AFTER UPDATE OF user_id, label, hash, services, expires ON app_passwords BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER app_passwords_ad AFTER DELETE ON app_passwords BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER vacations_ai AFTER INSERT ON vacations BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER vacations_au AFTER UPDATE ON vacations BEGIN UPDATE generation SET n = n + 1; END;
CREATE TRIGGER vacations_ad AFTER DELETE ON vacations BEGIN UPDATE generation SET n = n + 1; END;
