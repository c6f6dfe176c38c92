-- Webhooks: every mark transition (or retraction of one) a hook's filters pass is queued here in the transaction
-- that recorded it; the daemon's delivery threads POST the oldest pending one of each (hook, driver, release) and
-- mark it delivered, or retry it with backoff until the hook's retry_for_hours, then mark it dead.
CREATE TABLE webhook_outbox (
    id               INTEGER PRIMARY KEY,
    hook             TEXT NOT NULL,     -- the [[webhook]]'s name
    kind             TEXT NOT NULL,     -- transition | retraction
    transition_id    TEXT NOT NULL,     -- mark_transitions.id (gone, for a retraction)
    driver_id        INTEGER NOT NULL,
    release          TEXT NOT NULL,
    at               INTEGER NOT NULL,  -- the transition's time
    body             TEXT NOT NULL,     -- the JSON payload, as signed and sent
    queued_at        REAL NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_status      INTEGER,           -- the last HTTP status (NULL: no answer)
    last_error       TEXT,
    delivered_at     REAL,
    dead_at          REAL
);
-- A hook's pending deliveries, in queue order per driver and release.
CREATE INDEX webhook_outbox_pending ON webhook_outbox (hook, driver_id, release, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
