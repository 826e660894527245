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
