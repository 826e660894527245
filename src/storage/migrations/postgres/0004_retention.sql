-- runstore schema, version 4, PostgreSQL: retention, as
-- ../sqlite/0004_retention.sql, plus its functions. Every function locks a
-- task's row before touching its records, the order every writer of the
-- task follows; a step that spans several tasks locks them in task id
-- order, and every other transaction holds at most one task's lock, so no
-- step can deadlock with a writer or with another replica's step.
CREATE INDEX snapshot_entries_by_instant ON snapshot_entries (instant_secs, instant_nanos);
CREATE INDEX manifests_by_instant ON manifests (instant_secs, instant_nanos);

-- Removes both records of a run where they name an instant before
-- (p_before_secs, p_before_nanos), keeps the task's counters and appends an
-- event of p_kind when either record went. Statements of a VOLATILE
-- function each see every commit before them, so after the caller's lock
-- the conditions are checked against the latest state: a run rewritten
-- with a younger timestamp since it was chosen stays. The caller holds the
-- task row's lock.
CREATE FUNCTION runstore_remove_run(
    p_task_id TEXT, p_run_id TEXT, p_kind TEXT, p_before_secs BIGINT, p_before_nanos INTEGER
) RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_entry TEXT;
    v_manifest TEXT;
BEGIN
    DELETE FROM snapshot_entries
    WHERE task_id = p_task_id AND run_id = p_run_id
      AND (instant_secs, instant_nanos) < (p_before_secs, p_before_nanos)
    RETURNING timestamp INTO v_entry;
    DELETE FROM manifests
    WHERE task_id = p_task_id AND run_id = p_run_id
      AND (instant_secs, instant_nanos) < (p_before_secs, p_before_nanos)
    RETURNING timestamp INTO v_manifest;
    IF v_entry IS NOT NULL THEN
        PERFORM runstore_forget_run(p_task_id);
    END IF;
    IF v_entry IS NULL AND v_manifest IS NULL THEN
        RETURN FALSE;
    END IF;
    INSERT INTO run_events (kind, task_id, run_id, timestamp)
    VALUES (p_kind, p_task_id, p_run_id, COALESCE(v_manifest, v_entry));
    RETURN TRUE;
END $$;

-- DeleteRun, now through runstore_remove_run with no instant bound (same
-- signature and behaviour as version 3's).
CREATE OR REPLACE FUNCTION runstore_delete_run(p_task_id TEXT, p_run_id TEXT)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM tasks WHERE task_id = p_task_id FOR UPDATE;
    RETURN runstore_remove_run(p_task_id, p_run_id, 'DELETED', 9223372036854775807, 2147483647);
END $$;

-- One step of --retain-for: up to p_limit runs whose entry or manifest
-- names an instant before the horizon (two seeks on the by-instant
-- indexes), each removed with its EXPIRED event. `candidates` tells the
-- caller whether another step may find more.
CREATE FUNCTION runstore_expire_before(
    p_secs BIGINT, p_nanos INTEGER, p_limit INTEGER, OUT candidates INTEGER, OUT expired INTEGER
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v RECORD;
BEGIN
    candidates := 0;
    expired := 0;
    FOR v IN
        SELECT task_id, run_id FROM (
            (SELECT task_id, run_id FROM snapshot_entries
             WHERE (instant_secs, instant_nanos) < (p_secs, p_nanos)
             ORDER BY instant_secs, instant_nanos LIMIT p_limit)
            UNION
            (SELECT task_id, run_id FROM manifests
             WHERE (instant_secs, instant_nanos) < (p_secs, p_nanos)
             ORDER BY instant_secs, instant_nanos LIMIT p_limit)
        ) victims
        ORDER BY task_id, run_id LIMIT p_limit
    LOOP
        candidates := candidates + 1;
        PERFORM 1 FROM tasks WHERE task_id = v.task_id FOR UPDATE;
        IF runstore_remove_run(v.task_id, v.run_id, 'EXPIRED', p_secs, p_nanos) THEN
            expired := expired + 1;
        END IF;
    END LOOP;
END $$;

-- One task's part of --retain-runs: removes its oldest runs beyond the
-- newest p_keep (p_keep >= 1, so its latest timestamp stays), at most
-- p_limit, each with its EXPIRED event. Returns how many it removed.
CREATE FUNCTION runstore_expire_beyond(p_task_id TEXT, p_keep BIGINT, p_limit INTEGER)
RETURNS INTEGER LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_count BIGINT;
    v RECORD;
    n INTEGER := 0;
BEGIN
    SELECT run_count INTO v_count FROM tasks WHERE task_id = p_task_id FOR UPDATE;
    IF NOT FOUND OR v_count <= p_keep THEN
        RETURN 0;
    END IF;
    FOR v IN
        SELECT run_id FROM snapshot_entries WHERE task_id = p_task_id
        ORDER BY instant_secs, instant_nanos, seq LIMIT LEAST(v_count - p_keep, p_limit)
    LOOP
        IF runstore_remove_run(p_task_id, v.run_id, 'EXPIRED', 9223372036854775807, 2147483647) THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END $$;
