-- runstore schema, version 3, PostgreSQL: the change feed behind WatchRuns,
-- as ../sqlite/0003_run_events.sql, with one difference that matters.
--
-- A sequence's values are drawn in one order and committed in another: a
-- reader that takes "id > last seen" skips a transaction that drew a smaller
-- id and commits late. So the cursor is (tx, id): tx is the writing
-- transaction's id (pg_current_xact_id), and a reader only takes events whose
-- tx is below the xmin of its snapshot: every transaction below xmin has
-- ended, and every transaction that starts later draws a larger tx, so the
-- events below xmin are final, in (tx, id) order. An event of a transaction
-- still in flight is held back until it ends, never skipped.
CREATE TABLE run_events (
    tx          BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    id          BIGINT GENERATED ALWAYS AS IDENTITY,
    kind        TEXT NOT NULL CHECK (kind IN ('COMPLETED', 'DELETED', 'EXPIRED')),
    task_id     TEXT COLLATE "C" NOT NULL,
    run_id      TEXT COLLATE "C" NOT NULL,
    timestamp   TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tx, id)
);

CREATE INDEX run_events_recorded_at ON run_events (recorded_at);

CREATE TABLE run_events_pruned (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    tx    BIGINT NOT NULL,
    up_to BIGINT NOT NULL
);
INSERT INTO run_events_pruned (id, tx, up_to) VALUES (1, 0, 0);
