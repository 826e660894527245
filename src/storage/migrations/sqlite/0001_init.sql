-- runstore schema, version 1. Table names and keys are part of the contract
-- (operators query them; tests place faults in them). Every primary key and
-- unique constraint starts with task_id, so the schema can be distributed by
-- task id.

-- One row per task: the task's recording sequence, drawn by every snapshot
-- write in the same transaction as the entry it numbers. The row with the
-- empty task id (never a valid task id) is the readiness probe's.
CREATE TABLE tasks (
    task_id  TEXT    NOT NULL PRIMARY KEY,
    last_seq INTEGER NOT NULL
);

-- A task's run history: one row per run, replaced when the run is written
-- again (which gives it a new, larger seq: it counts as recorded last).
CREATE TABLE snapshot_entries (
    task_id       TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    timestamp     TEXT    NOT NULL, -- as sent
    instant_secs  INTEGER NOT NULL, -- the instant it names: Unix seconds
    instant_nanos INTEGER NOT NULL, -- and nanoseconds within the second
    seq           INTEGER NOT NULL, -- recording order within the task
    summary_json  TEXT    NOT NULL,
    PRIMARY KEY (task_id, run_id)
);

-- The task's order: pages are keyset seeks on it, whatever the history's length.
CREATE INDEX snapshot_entries_order
    ON snapshot_entries (task_id, instant_secs, instant_nanos, seq);

-- One manifest per run, the summary stored as sent.
CREATE TABLE manifests (
    task_id       TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    summary_json  TEXT    NOT NULL,
    timestamp     TEXT    NOT NULL,
    instant_secs  INTEGER NOT NULL,
    instant_nanos INTEGER NOT NULL,
    sha256        TEXT    NOT NULL, -- lowercase hex of summary_json's bytes
    written_at    TEXT    NOT NULL, -- RFC 3339, UTC, microseconds
    PRIMARY KEY (task_id, run_id)
);
