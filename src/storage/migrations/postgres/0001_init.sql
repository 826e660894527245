-- runstore schema, version 1, PostgreSQL. The same tables and keys as on
-- SQLite (see ../sqlite/0001_init.sql). Ids compare by their UTF-8 bytes
-- (COLLATE "C"), whatever the database's locale. Every primary key and
-- unique constraint starts with task_id, so the tables can be distributed
-- by task id (Citus: create_distributed_table(..., 'task_id')).

-- One row per task. Each snapshot write draws the task's next sequence
-- number here, in the statement that writes the entry: the row lock it
-- takes orders the task's writers across replicas, so sequence order is
-- commit order within a task.
CREATE TABLE tasks (
    task_id  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE snapshot_entries (
    task_id       TEXT COLLATE "C" NOT NULL,
    run_id        TEXT COLLATE "C" NOT NULL,
    timestamp     TEXT    NOT NULL, -- as sent
    instant_secs  BIGINT  NOT NULL, -- the instant it names: Unix seconds
    instant_nanos INTEGER NOT NULL, -- and nanoseconds within the second
    seq           BIGINT  NOT NULL, -- recording order within the task
    summary_json  TEXT    NOT NULL,
    PRIMARY KEY (task_id, run_id)
);

CREATE INDEX snapshot_entries_order
    ON snapshot_entries (task_id, instant_secs, instant_nanos, seq);

CREATE TABLE manifests (
    task_id       TEXT COLLATE "C" NOT NULL,
    run_id        TEXT COLLATE "C" NOT NULL,
    summary_json  TEXT        NOT NULL, -- as sent (TEXT, not JSONB, which would normalise it)
    timestamp     TEXT        NOT NULL,
    instant_secs  BIGINT      NOT NULL,
    instant_nanos INTEGER     NOT NULL,
    sha256        TEXT        NOT NULL,
    written_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, run_id)
);
