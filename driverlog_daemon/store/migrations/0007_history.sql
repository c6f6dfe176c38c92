-- History as DriverLog answers it: the registered CI accounts' comments kept for re-judging, the registries
-- applied, the history imports (first start, registry changes) as entries of the ingestion ledger, and why each
-- mark transition happened.

-- Every review message of a registered CI account the daemon has read (stream, backfill, import, replay), whether
-- or not it gave a verdict: a registry change judges them again without asking Gerrit. One row per natural key, as
-- verifications (whichever source delivered it first). body: the message as Gerrit wrote it, UTF-8, at most
-- 64 KiB (truncated = 1 beyond), zlib-compressed (RFC 1950; Python: zlib.decompress(body).decode()). approvals:
-- the event's approvals as JSON, only for a message without its "Patch Set N:" line (older servers): the vote
-- rule reads them then.
CREATE TABLE ci_comments (
    id              INTEGER PRIMARY KEY,
    ci_account      TEXT NOT NULL,
    change_number   INTEGER NOT NULL,
    patch_set       INTEGER NOT NULL,
    comment_sha256  TEXT NOT NULL,
    comment_time    INTEGER NOT NULL,
    project         TEXT NOT NULL,
    branch          TEXT NOT NULL,
    change_status   TEXT,
    review_url      TEXT,
    change_id       TEXT,
    body            BLOB NOT NULL,
    approvals       TEXT,
    truncated       INTEGER NOT NULL DEFAULT 0,
    received_at     REAL NOT NULL,
    source          TEXT NOT NULL
);
CREATE UNIQUE INDEX ci_comments_key ON ci_comments (ci_account, change_number, patch_set, comment_sha256);

-- Each registry applied (at start, on reload, by replay) when it differs from the one before: what the file's
-- rows were judged by, and what a change is compared with. document: the registry's bytes, zlib-compressed.
CREATE TABLE registry_versions (
    id           INTEGER PRIMARY KEY,
    sha256       TEXT NOT NULL,
    source       TEXT NOT NULL,
    applied_at   REAL NOT NULL,
    drivers      INTEGER NOT NULL,
    ci_bindings  INTEGER NOT NULL,
    ci_accounts  INTEGER NOT NULL,
    document     BLOB NOT NULL
);

-- The history imports: the first start's (kind 'first') and each registry change's ('registry'), with what they
-- asked of Gerrit and found. An entry of the ingestion ledger beside the backfills.
CREATE TABLE imports (
    id                 INTEGER PRIMARY KEY,
    kind               TEXT NOT NULL CHECK (kind IN ('first', 'registry')),
    registry_version   INTEGER REFERENCES registry_versions (id),
    since              INTEGER NOT NULL,   -- Gerrit's time the window starts at ([history] days ago)
    search_floor       INTEGER,            -- the mark search reaches no further back (NULL: no limit)
    news_since         INTEGER,            -- 'first': from when what it finds is news, not history (a day before)
    started_at         REAL NOT NULL,
    finished_at        REAL,
    bindings           INTEGER NOT NULL,   -- CI bindings (drivers with a CI) it imports for
    bindings_done      INTEGER NOT NULL DEFAULT 0,
    queries            INTEGER NOT NULL DEFAULT 0,
    commands           INTEGER NOT NULL DEFAULT 0,
    changes_read       INTEGER NOT NULL DEFAULT 0,
    ci_messages        INTEGER NOT NULL DEFAULT 0,
    recovered          INTEGER NOT NULL DEFAULT 0,   -- verifications only it delivered
    already_present    INTEGER NOT NULL DEFAULT 0,
    rejudged           INTEGER NOT NULL DEFAULT 0,   -- verifications a registry change added, changed or removed
    throttled_seconds  REAL NOT NULL DEFAULT 0,
    attempts           INTEGER NOT NULL DEFAULT 0,   -- steps that failed (retried)
    last_error         TEXT
);

-- What an import still has to do, one row a unit, so that a restart resumes where it stopped:
--   account  (name: a CI account)  phase window -> search -> done; position: how far back the search has read
--                                  (Gerrit's time: the next page is the rows updated at or before it)
--   project  (name: a review project)  phase window -> done (its merged changes over the window)
--   rejudge  (name: a drivers.id)  phase first -> final -> done (judged again from the kept comments, at once and
--                                  once the import's queries are done)
-- drivers: the drivers.id (JSON) an account's mark search is for; reread_since: rows updated since then are read
-- again when a phase ends (those that moved while it paged).
CREATE TABLE import_work (
    import_id     INTEGER NOT NULL REFERENCES imports (id),
    kind          TEXT NOT NULL CHECK (kind IN ('account', 'project', 'rejudge')),
    name          TEXT NOT NULL,
    drivers       TEXT NOT NULL DEFAULT '[]',
    phase         TEXT NOT NULL,
    position      INTEGER,
    reread_since  INTEGER,
    finished_at   REAL,
    PRIMARY KEY (import_id, kind, name)
) WITHOUT ROWID;

-- The accounts and review projects whose window a finished import covered, and from when: while they stay in the
-- registry, the file holds all they did since (a registry change then searches only further back).
CREATE TABLE imported (
    kind   TEXT NOT NULL CHECK (kind IN ('account', 'project')),
    name   TEXT NOT NULL,
    since  INTEGER NOT NULL,
    at     REAL NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

-- Why each transition happened: 'verification' (a CI result), 'merge' (a change merged at a patch set a CI had
-- judged), 'import' (the first start's import: history, not news) or 'registry' (a registry change).
ALTER TABLE mark_transitions ADD COLUMN cause TEXT;
UPDATE mark_transitions SET cause = CASE WHEN at > comment_time THEN 'merge' ELSE 'verification' END;

-- A retraction is queued only to the hooks its transition was queued to (it is news to nobody else).
CREATE INDEX webhook_outbox_transition ON webhook_outbox (transition_id);
