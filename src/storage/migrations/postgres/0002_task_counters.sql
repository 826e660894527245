-- runstore schema, version 2, PostgreSQL: as ../sqlite/0002_task_counters.sql.
-- ListTasks reads each task's run count and latest timestamp from its `tasks` row, which every snapshot write and
-- every delete keeps current in the same transaction, so listing never
-- aggregates. A task whose last run is deleted loses its row (its recording
-- sequence starts again, which nothing can observe: it has no entries).
ALTER TABLE tasks ADD COLUMN run_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN last_run_at TEXT; -- NULL only for the probe's row

UPDATE tasks SET
    run_count = (SELECT count(*) FROM snapshot_entries e WHERE e.task_id = tasks.task_id),
    last_run_at = (SELECT e.timestamp FROM snapshot_entries e WHERE e.task_id = tasks.task_id
                   ORDER BY e.instant_secs DESC, e.instant_nanos DESC, e.seq DESC LIMIT 1);
DELETE FROM tasks WHERE run_count = 0 AND task_id <> '';

-- A snapshot write, in one round trip, in the caller's transaction. It
-- first locks the task's row (creating it if need be), held to the commit,
-- so writers and deleters of one task, on any replica, commit in sequence
-- order; a VOLATILE function takes a fresh snapshot per statement under READ
-- COMMITTED, so what it reads after the lock is every earlier commit of the
-- task, and the counters are exact. Then one update of the row (sequence,
-- count, latest timestamp: the new run's, or the latest of the others when
-- it is later) and the entry's upsert. Every transaction locks the task row
-- before any entry: no deadlock.
CREATE FUNCTION runstore_write_snapshot(
    p_task_id TEXT, p_run_id TEXT, p_timestamp TEXT,
    p_instant_secs BIGINT, p_instant_nanos INTEGER, p_summary_json TEXT
) RETURNS VOID LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_seq BIGINT;
    v_replaced BOOLEAN;
    v_other RECORD;
    v_last TEXT := p_timestamp;
BEGIN
    PERFORM 1 FROM tasks WHERE task_id = p_task_id FOR UPDATE;
    IF NOT FOUND THEN
        -- Waits for a concurrent creator of the row, then locks it.
        INSERT INTO tasks (task_id, last_seq) VALUES (p_task_id, 0) ON CONFLICT DO NOTHING;
        PERFORM 1 FROM tasks WHERE task_id = p_task_id FOR UPDATE;
    END IF;
    v_replaced := EXISTS (SELECT 1 FROM snapshot_entries
                          WHERE task_id = p_task_id AND run_id = p_run_id);
    -- The new entry sorts after every other of its instant (largest seq).
    SELECT timestamp, instant_secs, instant_nanos INTO v_other FROM snapshot_entries
    WHERE task_id = p_task_id AND run_id <> p_run_id
    ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC LIMIT 1;
    IF FOUND AND (v_other.instant_secs, v_other.instant_nanos) > (p_instant_secs, p_instant_nanos) THEN
        v_last := v_other.timestamp;
    END IF;
    UPDATE tasks SET
        last_seq = last_seq + 1,
        run_count = run_count + CASE WHEN v_replaced THEN 0 ELSE 1 END,
        last_run_at = v_last
    WHERE task_id = p_task_id
    RETURNING last_seq INTO v_seq;

    INSERT INTO snapshot_entries
        (task_id, run_id, timestamp, instant_secs, instant_nanos, seq, summary_json)
    VALUES (p_task_id, p_run_id, p_timestamp, p_instant_secs, p_instant_nanos, v_seq, p_summary_json)
    ON CONFLICT (task_id, run_id) DO UPDATE SET
        timestamp = excluded.timestamp,
        instant_secs = excluded.instant_secs,
        instant_nanos = excluded.instant_nanos,
        seq = excluded.seq,
        summary_json = excluded.summary_json;
END $$;

-- After a delete: takes one from the task's run count and its latest
-- timestamp from the top of the order index (one seek); drops the row of a
-- task left without runs. The caller holds the task row's lock.
CREATE FUNCTION runstore_forget_run(p_task_id TEXT)
RETURNS VOID LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE tasks SET
        run_count = run_count - 1,
        last_run_at = (SELECT timestamp FROM snapshot_entries WHERE task_id = p_task_id
                       ORDER BY instant_secs DESC, instant_nanos DESC, seq DESC LIMIT 1)
    WHERE task_id = p_task_id;
    DELETE FROM tasks WHERE task_id = p_task_id AND run_count <= 0;
END $$;
