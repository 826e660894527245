-- runstore schema, version 4: retention. `--retain-for` finds the runs
-- whose timestamp is older than its horizon across all tasks with a seek on
-- these indexes, never a scan, in both tables: a manifest whose snapshot
-- write failed expires too. (`--retain-runs` walks `tasks` and each task's
-- order index, which exist already.) Not unique, so not bound to lead with
-- task_id.
CREATE INDEX snapshot_entries_by_instant ON snapshot_entries (instant_secs, instant_nanos);
CREATE INDEX manifests_by_instant ON manifests (instant_secs, instant_nanos);
