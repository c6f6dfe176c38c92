CREATE TABLE drivers (
    id               INTEGER PRIMARY KEY,
    project_id       TEXT NOT NULL,
    vendor           TEXT NOT NULL,
    name             TEXT NOT NULL,
    review_project   TEXT NOT NULL,
    ci_account       TEXT,
    success_pattern  TEXT,
    failure_pattern  TEXT,
    description      TEXT NOT NULL DEFAULT '',
    wiki             TEXT NOT NULL DEFAULT '',
    releases         TEXT NOT NULL DEFAULT '[]',
    first_seen_at    REAL NOT NULL,
    updated_at       REAL NOT NULL,
    removed_at       REAL,
    UNIQUE (project_id, vendor, name)
);
CREATE INDEX drivers_ci_account ON drivers (ci_account);

CREATE TABLE verifications (
    id              INTEGER PRIMARY KEY,
    driver_id       INTEGER NOT NULL REFERENCES drivers (id),
    ci_account      TEXT NOT NULL,
    change_number   INTEGER NOT NULL,
    patch_set       INTEGER NOT NULL,
    comment_sha256  TEXT NOT NULL,
    comment_time    INTEGER NOT NULL,
    result          TEXT NOT NULL CHECK (result IN ('success', 'failure')),
    evidence        TEXT NOT NULL,
    project         TEXT NOT NULL,
    branch          TEXT NOT NULL,
    release         TEXT NOT NULL DEFAULT '',
    change_status   TEXT,
    review_url      TEXT,
    change_id       TEXT,
    received_at     REAL NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('stream', 'backfill', 'replay')),
    UNIQUE (driver_id, change_number, patch_set, ci_account, comment_sha256)
);
CREATE INDEX verifications_driver_time ON verifications (driver_id, comment_time DESC);
CREATE INDEX verifications_change ON verifications (change_number, patch_set);

CREATE TABLE driver_status (
    driver_id                    INTEGER NOT NULL REFERENCES drivers (id),
    release                      TEXT NOT NULL,
    last_verification_id         INTEGER NOT NULL REFERENCES verifications (id),
    last_result                  TEXT NOT NULL,
    last_comment_time            INTEGER NOT NULL,
    last_success_verification_id INTEGER REFERENCES verifications (id),
    last_success_time            INTEGER,
    verifications                INTEGER NOT NULL DEFAULT 0,
    successes                    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (driver_id, release)
);
CREATE INDEX driver_status_release ON driver_status (release);

-- Newest by comment time (then by row id), never by arrival: results may arrive out of order.
CREATE TRIGGER verifications_update_status AFTER INSERT ON verifications
BEGIN
    INSERT INTO driver_status (driver_id, release, last_verification_id, last_result, last_comment_time,
                               last_success_verification_id, last_success_time, verifications, successes)
    VALUES (NEW.driver_id, NEW.release, NEW.id, NEW.result, NEW.comment_time,
            CASE WHEN NEW.result = 'success' THEN NEW.id END,
            CASE WHEN NEW.result = 'success' THEN NEW.comment_time END,
            1, NEW.result = 'success')
    ON CONFLICT (driver_id, release) DO UPDATE SET
        last_verification_id = CASE WHEN NEW.comment_time >= last_comment_time
                                    THEN NEW.id ELSE last_verification_id END,
        last_result = CASE WHEN NEW.comment_time >= last_comment_time
                           THEN NEW.result ELSE last_result END,
        last_comment_time = MAX(last_comment_time, NEW.comment_time),
        last_success_verification_id = CASE
            WHEN NEW.result = 'success' AND (last_success_time IS NULL OR NEW.comment_time >= last_success_time)
            THEN NEW.id ELSE last_success_verification_id END,
        last_success_time = CASE
            WHEN NEW.result = 'success' AND (last_success_time IS NULL OR NEW.comment_time >= last_success_time)
            THEN NEW.comment_time ELSE last_success_time END,
        verifications = verifications + 1,
        successes = successes + (NEW.result = 'success');
END;

CREATE TABLE stream_state (
    server           TEXT PRIMARY KEY,
    last_event_time  INTEGER NOT NULL,
    updated_at       REAL NOT NULL
);

CREATE VIEW driver_ci_status AS
SELECT
    d.id                                            AS driver_id,
    d.project_id                                    AS project_id,
    d.vendor                                        AS vendor,
    d.name                                          AS driver,
    d.ci_account                                    AS ci_account,
    s.release                                       AS release,
    s.last_result                                   AS last_result,
    datetime(s.last_comment_time, 'unixepoch')      AS last_result_at,
    datetime(s.last_success_time, 'unixepoch')      AS last_success_at,
    v.evidence                                      AS evidence,
    v.review_url                                    AS review_url,
    v.change_number                                 AS change_number,
    v.patch_set                                     AS patch_set,
    s.verifications                                 AS verifications,
    s.successes                                     AS successes,
    d.removed_at IS NOT NULL                        AS removed
FROM driver_status s
JOIN drivers d ON d.id = s.driver_id
JOIN verifications v ON v.id = s.last_verification_id;
