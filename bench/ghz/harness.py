#!/usr/bin/env python3
"""Helpers of the ghz harness (bench/run, bench/ghz/smoke): the JSON work.

usage:
  harness.py listen-addr SERVER_LOG
  harness.py render-complete-run CONFIG FIXTURE OUT [--ids-from CONFIG]
  harness.py check REPORT LABEL
  harness.py verify-writes REPORT DATA_DIR SERVER_LOG OUT
  harness.py summary RESULTS_DIR DATA_DIR SCENARIO...

Standard library only, so a fresh machine needs nothing but python3.
"""
import json
import sqlite3
import math
import os
import platform
import subprocess
import sys

NS_PER_MS = 1e6


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def listen_addr(log_path):
    """Prints the address of the server's JSON `listening` line; exit 1 if none yet."""
    try:
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("message") == "listening":
                    print(record["addr"])
                    return 0
    except FileNotFoundError:
        pass
    return 1


def replace_key(value, key, new):
    """Sets `key` to `new` wherever it occurs in a JSON document."""
    if isinstance(value, dict):
        return {k: (new if k == key else replace_key(v, key, new)) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_key(v, key, new) for v in value]
    return value


def render_complete_run(config_path, fixture_path, out_path, ids_from=None):
    """Writes a CompleteRun config whose summary_json is the fixture run summary.

    The summary names the request's own ids and timestamp: the config's
    template actions (e.g. {{.RequestNumber}}) are copied into it, and ghz
    expands them once per call, so the server's "taskId/runId must equal the
    request's" rule holds for every call.
    """
    config = load(config_path)
    data = config["data"]
    if ids_from:
        source = load(ids_from)["data"]
        data["task_id"], data["run_id"] = source["task_id"], source["run_id"]
    summary = load(fixture_path)
    summary["taskId"] = data["task_id"]
    summary["timestamp"] = data["timestamp"]
    summary = replace_key(summary, "runId", data["run_id"])
    data["summary_json"] = json.dumps(summary, ensure_ascii=False)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    return 0


def ok_count(report):
    return report.get("statusCodeDistribution", {}).get("OK", 0)


def check(report_path, label):
    """Passes when ghz saw at least one call and every call returned OK."""
    report = load(report_path)
    statuses = report.get("statusCodeDistribution") or {}
    errors = report.get("errorDistribution") or {}
    count = report.get("count", 0)
    problems = []
    if count <= 0:
        problems.append("no calls made")
    if set(statuses) - {"OK"}:
        problems.append(f"status codes {statuses}")
    if errors:
        worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
        more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
        problems.append("errors " + "; ".join(f"{n}x {msg}" for msg, n in worst) + more)
    verdict = "FAIL" if problems else "ok"
    print(f"{verdict:4} {label}: {count} calls, {report.get('rps', 0):.0f} rps, "
          f"p50 {fmt_ms(percentile_ms(report, 50))} ms, p99 {fmt_ms(percentile_ms(report, 99))} ms"
          + (f" -- {'; '.join(problems)}" if problems else ""))
    return 1 if problems else 0


def count_manifests(data_dir):
    """Rows in the manifests table of the data dir's SQLite database, read
    in a read-only connection (the server may still be running: WAL)."""
    path = os.path.join(data_dir, "runstore.db")
    if not os.path.exists(path):
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM manifests").fetchone()[0]
    finally:
        db.close()


def count_not_fully_written(log_path):
    """Counts the server's "run not fully written" warnings (a FAILED write)."""
    total = 0
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("message") == "run not fully written":
                total += 1
    return total


def verify_writes(report_path, data_dir, log_path, out_path):
    """CompleteRun answers OK even when a write failed, so check the storage.

    Every OK call of a scenario names a distinct run, so the data dir must hold
    exactly one manifest per OK call, and the server must have logged no
    partially written run (which also catches a failed snapshot write).
    """
    ok = ok_count(load(report_path))
    manifests = count_manifests(data_dir)
    partial = count_not_fully_written(log_path)
    verified = manifests == ok and partial == 0
    result = {"ok_calls": ok, "manifests": manifests, "not_fully_written": partial,
              "verified": verified}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    verdict = "ok" if verified else "FAIL"
    print(f"{verdict:4} writes: {manifests} manifests stored for {ok} OK calls, "
          f"{partial} runs not fully written")
    return 0 if verified else 1


def percentile_ms(report, pct):
    for row in report.get("latencyDistribution") or []:
        if row.get("percentage") == pct:
            return row["latency"] / NS_PER_MS
    return float("nan")


def fmt_ms(value):
    """Milliseconds with two decimals; "n/a" when ghz gave no latency (no OK call)."""
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def machine(data_dir):
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        df = subprocess.run(["df", "-T", data_dir], capture_output=True, text=True, check=True)
        fields = df.stdout.splitlines()[-1].split()
        filesystem = f"{fields[1]} ({fields[0]}, mounted on {fields[-1]})"
    except (OSError, subprocess.CalledProcessError, IndexError):
        filesystem = "unknown"
    return cpus, model, filesystem


def ratio(a, b):
    if not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}"


def summary(results_dir, data_dir, scenarios):
    rows, reports = [], {}
    for name in scenarios:
        report_path = os.path.join(results_dir, f"{name}.json")
        if not os.path.exists(report_path):
            rows.append(f"| {name} | — | — | — | — | no report | — | — |")
            continue
        report = reports[name] = load(report_path)
        count = report.get("count", 0)
        errors = count - ok_count(report)
        # ghz ends with "normal" when --total is reached, "cancel" when the
        # harness stopped it at BENCH_DURATION.
        ended = {"normal": "count cap", "cancel": "duration"}.get(report.get("endReason"), report.get("endReason"))
        writes = "—"
        writes_path = os.path.join(results_dir, f"{name}.writes.json")
        if os.path.exists(writes_path):
            w = load(writes_path)
            mark = "ok" if w["verified"] else "**MISMATCH**"
            writes = f"{mark}: {w['manifests']} manifests / {w['ok_calls']} OK, {w['not_fully_written']} partial"
        rows.append(f"| {name} | {report.get('rps', 0):.0f} | {fmt_ms(percentile_ms(report, 50))} | "
                    f"{fmt_ms(percentile_ms(report, 95))} | {fmt_ms(percentile_ms(report, 99))} | "
                    f"{errors}/{count} | {ended} | {writes} |")

    def rps(name):
        return reports.get(name, {}).get("rps", 0)

    def p50(name):
        return percentile_ms(reports[name], 50) if name in reports else 0

    many_c, many_s = "complete-run-many-tasks-concurrent", "complete-run-many-tasks-sequential"
    hot_c, hot_s = "complete-run-hot-task-concurrent", "complete-run-hot-task-sequential"
    ratios = [
        f"| many tasks: concurrent / sequential RPS | {ratio(rps(many_c), rps(many_s))} |",
        f"| many tasks: concurrent / sequential p50 | {ratio(p50(many_c), p50(many_s))} |",
        f"| hot task: concurrent / sequential RPS | {ratio(rps(hot_c), rps(hot_s))} |",
        f"| hot task: concurrent / sequential p50 | {ratio(p50(hot_c), p50(hot_s))} |",
        f"| CompleteRun (many tasks, concurrent) RPS / health RPS | {ratio(rps(many_c), rps('health'))} |",
        f"| hot task / many tasks RPS (concurrent) | {ratio(rps(hot_c), rps(many_c))} |",
        f"| hot task / many tasks RPS (sequential) | {ratio(rps(hot_s), rps(many_s))} |",
    ]

    cpus, model, filesystem = machine(data_dir)
    any_report = next(iter(reports.values()), {})
    options = any_report.get("options", {})
    env = os.environ
    lines = [
        "# runstore ghz benchmark",
        "",
        f"Machine: {cpus} CPUs ({model}); data dir filesystem: {filesystem}; "
        f"ghz and the server share the machine.",
        f"Load: concurrency {options.get('concurrency', '?')}, connections {options.get('connections', '?')}, "
        f"duration {env.get('BENCH_DURATION', '?')}, count cap {env.get('BENCH_TOTAL', '?')} per scenario; "
        f"ghz {env.get('GHZ_VERSION', '?')}; server on 127.0.0.1, fresh data dir per scenario.",
        "",
        "| scenario | RPS | p50 ms | p95 ms | p99 ms | errors/total | ended by | writes verified |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        *rows,
        "",
        "Ratios (same run):",
        "",
        "| ratio | value |",
        "| --- | ---: |",
        *ratios,
        "",
        "p50 ratios below 1 mean the concurrent mode answers faster. \"writes verified\": "
        "rows in the manifests table vs OK calls, and the server's \"run not fully written\" "
        "warnings (CompleteRun is OK at the gRPC level even when a write failed).",
    ]
    print("\n".join(lines))
    return 0


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "listen-addr" and len(args) == 1:
        return listen_addr(*args)
    if cmd == "render-complete-run" and len(args) in (3, 5):
        ids_from = args[4] if len(args) == 5 and args[3] == "--ids-from" else None
        if len(args) == 5 and ids_from is None:
            sys.exit(__doc__)
        return render_complete_run(args[0], args[1], args[2], ids_from)
    if cmd == "check" and len(args) == 2:
        return check(*args)
    if cmd == "verify-writes" and len(args) == 4:
        return verify_writes(*args)
    if cmd == "summary" and len(args) >= 3:
        return summary(args[0], args[1], args[2:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
