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

CREATE TABLE run_events_pruned (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    tx    BIGINT NOT NULL,
    up_to BIGINT NOT NULL
);
INSERT INTO run_events_pruned (id, tx, up_to) VALUES (1, 0, 0);

-- DeleteRun, in one round trip: locks the task's row first (the order every
-- writer of the task follows), removes both records, keeps the counters and
-- appends the DELETED event when either record existed. Returns whether
-- one did.
CREATE FUNCTION runstore_delete_run(p_task_id TEXT, p_run_id TEXT)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_entry TEXT;
    v_manifest TEXT;
BEGIN
    PERFORM 1 FROM tasks WHERE task_id = p_task_id FOR UPDATE;
    DELETE FROM snapshot_entries WHERE task_id = p_task_id AND run_id = p_run_id
    RETURNING timestamp INTO v_entry;
    DELETE FROM manifests WHERE task_id = p_task_id AND run_id = p_run_id
    RETURNING timestamp INTO v_manifest;
    IF v_entry IS NOT NULL THEN
        PERFORM runstore_forget_run(p_task_id);
    END IF;
    IF v_entry IS NULL AND v_manifest IS NULL THEN
        RETURN FALSE;
    END IF;
    INSERT INTO run_events (kind, task_id, run_id, timestamp)
    VALUES ('DELETED', p_task_id, p_run_id, COALESCE(v_manifest, v_entry));
    RETURN TRUE;
END $$;
