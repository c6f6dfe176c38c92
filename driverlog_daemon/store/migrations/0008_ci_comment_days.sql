-- Why a CI does not count: per CI account, project and day (comment_time / 86400), how many of its review messages
-- the file keeps and the newest one's time. Beside driver_days (the verifications a driver got a day), the comments
-- of a driver's CI account on its review project that gave the driver no verdict are their difference; the
-- account's comments on other projects are the ones no driver of it reports on. Kept current by the writer with
-- ci_comments, filled here from the comments kept before.
CREATE TABLE ci_comment_days (
    ci_account         TEXT NOT NULL,
    project            TEXT NOT NULL,
    day                INTEGER NOT NULL,
    comments           INTEGER NOT NULL,
    last_comment_time  INTEGER NOT NULL,
    PRIMARY KEY (ci_account, project, day)
) WITHOUT ROWID;
INSERT INTO ci_comment_days (ci_account, project, day, comments, last_comment_time)
SELECT ci_account, project, comment_time / 86400, count(*), max(comment_time) FROM ci_comments GROUP BY 1, 2, 3;

-- A CI account's newest comments on a project: the driver page's "latest comments that gave no verdict".
CREATE INDEX ci_comments_recent ON ci_comments (ci_account, project, comment_time);
