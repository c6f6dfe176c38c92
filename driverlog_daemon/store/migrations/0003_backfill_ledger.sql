-- The ingestion ledger: what each backfill cost Gerrit and recovered, and which backfill closed each gap.
CREATE TABLE backfills (
    id                 INTEGER PRIMARY KEY,
    server             TEXT NOT NULL,
    trigger            TEXT NOT NULL,
    since              INTEGER NOT NULL,
    started_at         REAL NOT NULL,
    finished_at        REAL NOT NULL,
    queries            INTEGER NOT NULL,
    commands           INTEGER NOT NULL,
    repasses           INTEGER NOT NULL,
    changes_read       INTEGER NOT NULL,
    ci_messages        INTEGER NOT NULL,
    recovered          INTEGER NOT NULL,
    already_present    INTEGER NOT NULL,
    throttled_seconds  REAL NOT NULL DEFAULT 0
);
ALTER TABLE gaps ADD COLUMN closed_by INTEGER REFERENCES backfills (id);
