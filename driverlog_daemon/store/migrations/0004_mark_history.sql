-- CI health: each mark's history (transitions), the candidates it is made of, and daily counts per driver.
--
-- mark_candidates: every verification that can make a mark (its release known, its change merged, at the merged
-- patch set), with the moment it became eligible: max(comment time, merge time). Kept in the same transaction as
-- driver_marks: by the store for each batch's new verifications, by the triggers below for merges.
CREATE TABLE mark_candidates (
    verification_id  INTEGER PRIMARY KEY REFERENCES verifications (id),
    driver_id        INTEGER NOT NULL,
    release          TEXT NOT NULL,
    effective_time   INTEGER NOT NULL,
    comment_time     INTEGER NOT NULL,
    result           TEXT NOT NULL,
    change_number    INTEGER NOT NULL,
    patch_set        INTEGER NOT NULL,
    comment_sha256   TEXT NOT NULL
);
CREATE INDEX mark_candidates_by_time ON mark_candidates (driver_id, release, effective_time);
CREATE INDEX mark_candidates_change ON mark_candidates (change_number);  -- a merge's candidates, by its change

-- The pairs whose history must be computed again from `since` (effective time) on: the writer does it before the
-- transaction that marked them commits, and empties this table.
CREATE TABLE marks_dirty (
    driver_id  INTEGER NOT NULL,
    release    TEXT NOT NULL,
    since      INTEGER NOT NULL,
    PRIMARY KEY (driver_id, release)
) WITHOUT ROWID;

CREATE TABLE mark_transitions (
    id               TEXT PRIMARY KEY,
    driver_id        INTEGER NOT NULL REFERENCES drivers (id),
    release          TEXT NOT NULL,
    from_result      TEXT,
    to_result        TEXT NOT NULL,
    at               INTEGER NOT NULL,
    change_number    INTEGER NOT NULL,
    patch_set        INTEGER NOT NULL,
    comment_time     INTEGER NOT NULL,
    verification_id  INTEGER NOT NULL
);
CREATE INDEX mark_transitions_pair ON mark_transitions (driver_id, release, at);
CREATE INDEX mark_transitions_at ON mark_transitions (at DESC);

-- Runs and passes per driver and UTC day (comment time): the health's pass rates and the 90-day chart.
CREATE TABLE driver_days (
    driver_id  INTEGER NOT NULL,
    day        INTEGER NOT NULL,
    runs       INTEGER NOT NULL,
    passes     INTEGER NOT NULL,
    PRIMARY KEY (driver_id, day)
) WITHOUT ROWID;

-- A backfill whose gap was older than backfill_max_age_hours: what is older was not recovered (the horizon).
ALTER TABLE backfills ADD COLUMN capped INTEGER NOT NULL DEFAULT 0;

-- A new verification's day count, and its candidacy when its change has merged at its patch set, are written by
-- the store once per batch, for all the batch's new rows at once (store.py); merges found later by triggers. The
-- mark itself (driver_marks) is now the best candidate of each pair the batch touched, written with its history:
-- the per-row triggers of version 2 that kept it go.
DROP TRIGGER verifications_update_mark;
DROP TRIGGER changes_merged_insert;
DROP TRIGGER changes_merged_update;

-- A change merges (or its merged patch set becomes known): its verifications at that patch set become candidates.
-- (ON CONFLICT DO NOTHING, not INSERT OR IGNORE: a trigger fired by an upsert takes the upsert's conflict policy.)
CREATE TRIGGER changes_candidates_insert AFTER INSERT ON changes WHEN NEW.merged_patch_set IS NOT NULL
BEGIN
    INSERT INTO mark_candidates (verification_id, driver_id, release, effective_time, comment_time, result,
                                           change_number, patch_set, comment_sha256)
    SELECT v.id, v.driver_id, v.release, max(v.comment_time, coalesce(NEW.merged_time, v.comment_time)),
           v.comment_time, v.result, v.change_number, v.patch_set, v.comment_sha256
    FROM verifications v
    WHERE v.change_number = NEW.change_number AND v.patch_set = NEW.merged_patch_set AND v.release != ''
    ON CONFLICT (verification_id) DO NOTHING;
    INSERT INTO marks_dirty (driver_id, release, since)
    SELECT driver_id, release, min(effective_time) FROM mark_candidates WHERE change_number = NEW.change_number
    GROUP BY driver_id, release
    ON CONFLICT (driver_id, release) DO UPDATE SET since = min(since, excluded.since);
END;

-- The merged patch set becomes known, or the merge time is corrected: candidates and their effective times follow,
-- and their pairs are computed again from the new times (a merge time only ever moves earlier: the earliest said).
CREATE TRIGGER changes_candidates_update AFTER UPDATE OF merged_patch_set, merged_time ON changes
WHEN NEW.merged_patch_set IS NOT NULL AND (NEW.merged_patch_set IS NOT OLD.merged_patch_set
                                           OR NEW.merged_time IS NOT OLD.merged_time)
BEGIN
    UPDATE mark_candidates SET effective_time = max(comment_time, coalesce(NEW.merged_time, comment_time))
    WHERE change_number = NEW.change_number;
    INSERT INTO mark_candidates (verification_id, driver_id, release, effective_time, comment_time, result,
                                           change_number, patch_set, comment_sha256)
    SELECT v.id, v.driver_id, v.release, max(v.comment_time, coalesce(NEW.merged_time, v.comment_time)),
           v.comment_time, v.result, v.change_number, v.patch_set, v.comment_sha256
    FROM verifications v
    WHERE v.change_number = NEW.change_number AND v.patch_set = NEW.merged_patch_set AND v.release != ''
    ON CONFLICT (verification_id) DO NOTHING;
    INSERT INTO marks_dirty (driver_id, release, since)
    SELECT driver_id, release, min(effective_time) FROM mark_candidates WHERE change_number = NEW.change_number
    GROUP BY driver_id, release
    ON CONFLICT (driver_id, release) DO UPDATE SET since = min(since, excluded.since);
END;

-- From a version-3 file: the candidates and daily counts of the data already there; every pair's history is then
-- computed by the store when it opens the file (marks_dirty from the beginning of time).
INSERT INTO mark_candidates (verification_id, driver_id, release, effective_time, comment_time, result, change_number,
                             patch_set, comment_sha256)
SELECT v.id, v.driver_id, v.release, max(v.comment_time, coalesce(c.merged_time, v.comment_time)), v.comment_time,
       v.result, v.change_number, v.patch_set, v.comment_sha256
FROM verifications v JOIN changes c ON c.change_number = v.change_number AND c.merged_patch_set = v.patch_set
WHERE v.release != '';
INSERT INTO marks_dirty (driver_id, release, since)
SELECT driver_id, release, 0 FROM mark_candidates GROUP BY driver_id, release;
INSERT INTO driver_days (driver_id, day, runs, passes)
SELECT driver_id, comment_time / 86400, count(*), sum(result = 'success') FROM verifications
GROUP BY driver_id, comment_time / 86400;
