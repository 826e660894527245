-- runstore schema, version 3: the change feed behind WatchRuns. One row per
-- change, appended in the transaction of the change itself: COMPLETED with
-- every manifest write, DELETED with a DeleteRun that removed something,
-- EXPIRED with retention's removal. Keyed by its cursor, not by task_id
-- (distributed, it stays on the coordinator).
--
-- Cursors are drawn under SQLite's write lock, which every writer (of every
-- process) holds to its commit, so they become visible in cursor order and
-- a reader may take "cursor > last seen". AUTOINCREMENT: a cursor is never
-- drawn twice, even after the newest events were pruned.
CREATE TABLE run_events (
    cursor      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ('COMPLETED', 'DELETED', 'EXPIRED')),
    task_id     TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    timestamp   TEXT NOT NULL, -- the run's, as sent
    recorded_at TEXT NOT NULL  -- RFC 3339, UTC, microseconds
);

-- Pruning (--event-retention) walks the oldest events in cursor order and
-- stops at the first young one, so it needs no index of its own.

-- Where pruning has reached: a cursor at or before it may have missed
-- pruned events (OUT_OF_RANGE). One row.
CREATE TABLE run_events_pruned (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    up_to      INTEGER NOT NULL
);
INSERT INTO run_events_pruned (id, up_to) VALUES (1, 0);
