-- The cursor becomes a low-water mark: last_event_time is the Gerrit time up to which every CI result is proven to
-- be in the database; newest_event_time is the newest event seen. Gaps are the windows not proven yet.
ALTER TABLE stream_state ADD COLUMN newest_event_time INTEGER;
UPDATE stream_state SET newest_event_time = last_event_time;

CREATE TABLE gaps (
    id          INTEGER PRIMARY KEY,
    server      TEXT NOT NULL,
    since       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    opened_at   REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    closed_at   REAL
);
CREATE INDEX gaps_open ON gaps (server, since) WHERE closed_at IS NULL;

-- Change state, for the changes of the registry's review projects. Times are Gerrit's (*_time).
CREATE TABLE changes (
    change_number     INTEGER PRIMARY KEY,
    project           TEXT NOT NULL,
    branch            TEXT NOT NULL,
    status            TEXT CHECK (status IN ('NEW', 'MERGED', 'ABANDONED')),
    status_time       INTEGER NOT NULL DEFAULT 0,
    current_patch_set INTEGER,
    merged_patch_set  INTEGER,
    merged_time       INTEGER,
    last_update_time  INTEGER NOT NULL
);
CREATE INDEX changes_merge_unknown ON changes (change_number) WHERE status = 'MERGED' AND merged_patch_set IS NULL;

-- DriverLog's "CI tested" mark: per driver and release, the newest verification on the patch set that merged.
-- Newest by comment time, then (for equal times, whatever the arrival order) change number, patch set and comment
-- hash. Every candidate only ever adds to the set, so the mark is a running maximum.
CREATE TABLE driver_marks (
    driver_id        INTEGER NOT NULL REFERENCES drivers (id),
    release          TEXT NOT NULL,
    verification_id  INTEGER NOT NULL REFERENCES verifications (id),
    result           TEXT NOT NULL,
    comment_time     INTEGER NOT NULL,
    change_number    INTEGER NOT NULL,
    patch_set        INTEGER NOT NULL,
    comment_sha256   TEXT NOT NULL,
    PRIMARY KEY (driver_id, release)
);
CREATE INDEX driver_marks_release ON driver_marks (release);

CREATE TRIGGER verifications_update_mark AFTER INSERT ON verifications
WHEN NEW.release != '' AND EXISTS (SELECT 1 FROM changes c WHERE c.change_number = NEW.change_number
                                                            AND c.merged_patch_set = NEW.patch_set)
BEGIN
    INSERT INTO driver_marks (driver_id, release, verification_id, result, comment_time, change_number, patch_set, comment_sha256)
    VALUES (NEW.driver_id, NEW.release, NEW.id, NEW.result, NEW.comment_time, NEW.change_number, NEW.patch_set,
            NEW.comment_sha256)
    
    ON CONFLICT (driver_id, release) DO UPDATE SET
        verification_id = excluded.verification_id, result = excluded.result,
        comment_time = excluded.comment_time, change_number = excluded.change_number,
        patch_set = excluded.patch_set, comment_sha256 = excluded.comment_sha256
    WHERE (excluded.comment_time, excluded.change_number, excluded.patch_set, excluded.comment_sha256)
        > (driver_marks.comment_time, driver_marks.change_number, driver_marks.patch_set,
           driver_marks.comment_sha256);
END;

CREATE TRIGGER changes_merged_insert AFTER INSERT ON changes WHEN NEW.merged_patch_set IS NOT NULL
BEGIN 
    INSERT INTO driver_marks (driver_id, release, verification_id, result, comment_time, change_number, patch_set, comment_sha256)
    SELECT v.driver_id, v.release, v.id, v.result, v.comment_time, v.change_number, v.patch_set, v.comment_sha256
    FROM verifications v
    WHERE v.change_number = NEW.change_number AND v.patch_set = NEW.merged_patch_set AND v.release != ''
    
    ON CONFLICT (driver_id, release) DO UPDATE SET
        verification_id = excluded.verification_id, result = excluded.result,
        comment_time = excluded.comment_time, change_number = excluded.change_number,
        patch_set = excluded.patch_set, comment_sha256 = excluded.comment_sha256
    WHERE (excluded.comment_time, excluded.change_number, excluded.patch_set, excluded.comment_sha256)
        > (driver_marks.comment_time, driver_marks.change_number, driver_marks.patch_set,
           driver_marks.comment_sha256);
END;

CREATE TRIGGER changes_merged_update AFTER UPDATE OF merged_patch_set ON changes
WHEN NEW.merged_patch_set IS NOT NULL AND NEW.merged_patch_set IS NOT OLD.merged_patch_set
BEGIN 
    INSERT INTO driver_marks (driver_id, release, verification_id, result, comment_time, change_number, patch_set, comment_sha256)
    SELECT v.driver_id, v.release, v.id, v.result, v.comment_time, v.change_number, v.patch_set, v.comment_sha256
    FROM verifications v
    WHERE v.change_number = NEW.change_number AND v.patch_set = NEW.merged_patch_set AND v.release != ''
    
    ON CONFLICT (driver_id, release) DO UPDATE SET
        verification_id = excluded.verification_id, result = excluded.result,
        comment_time = excluded.comment_time, change_number = excluded.change_number,
        patch_set = excluded.patch_set, comment_sha256 = excluded.comment_sha256
    WHERE (excluded.comment_time, excluded.change_number, excluded.patch_set, excluded.comment_sha256)
        > (driver_marks.comment_time, driver_marks.change_number, driver_marks.patch_set,
           driver_marks.comment_sha256);
END;

CREATE VIEW driverlog_marks AS
SELECT
    d.id                                            AS driver_id,
    d.project_id                                    AS project_id,
    d.vendor                                        AS vendor,
    d.name                                          AS driver,
    d.ci_account                                    AS ci_account,
    m.release                                       AS release,
    m.result                                        AS result,
    v.evidence                                      AS evidence,
    m.comment_time                                  AS comment_time,
    datetime(m.comment_time, 'unixepoch')           AS comment_at,
    v.review_url                                    AS review_url,
    m.change_number                                 AS change_number,
    m.patch_set                                     AS patch_set,
    datetime(c.merged_time, 'unixepoch')            AS merged_at,
    d.removed_at IS NOT NULL                        AS removed
FROM driver_marks m
JOIN drivers d ON d.id = m.driver_id
JOIN verifications v ON v.id = m.verification_id
LEFT JOIN changes c ON c.change_number = m.change_number;

-- From a version-1 file: what the verifications say of their changes (the status at comment time). A change
-- seen MERGED has an unknown merged patch set until the next backfill asks Gerrit (changes_merge_unknown).
WITH newest AS (
    SELECT change_number, project, branch, change_status, max(comment_time) AS t
    FROM verifications GROUP BY change_number
), seen AS (
    SELECT change_number, max(patch_set) AS ps,
           min(CASE WHEN change_status = 'MERGED' THEN comment_time END) AS merged_by
    FROM verifications GROUP BY change_number
)
INSERT INTO changes (change_number, project, branch, status, status_time, current_patch_set, merged_patch_set,
                     merged_time, last_update_time)
SELECT n.change_number, n.project, n.branch,
       CASE WHEN s.merged_by IS NOT NULL THEN 'MERGED'
            WHEN n.change_status IN ('NEW', 'ABANDONED') THEN n.change_status END,
       n.t, s.ps, NULL, s.merged_by, n.t
FROM newest n JOIN seen s ON s.change_number = n.change_number WHERE true;
