"""Python interop tests: the real runstore binary, a real grpcio channel."""
import hashlib
import itertools
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from contextlib import closing
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import (RunNotPersisted, complete_run, complete_run_with_retry, iter_runs,
                    watch_runs)
from orchestrator.persistence.v1 import persistence_pb2 as pb
from orchestrator.persistence.v1 import persistence_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
RUNSTORE_BIN = os.environ.get("RUNSTORE_BIN", str(REPO / "target/release/runstore"))
FIXTURE = REPO / "tests/fixtures/run-summary.json"
TIMESTAMP = "2026-01-05T19:26:37.274Z"
SERVICE = "orchestrator.persistence.v1.PersistenceService"
DATABASE = "runstore.db"  # the server's SQLite database, inside its data dir


@pytest.fixture
def data_dir(tmp_path):
    """The server's data directory."""
    return tmp_path / "data"


@pytest.fixture
def server(data_dir):
    """Starts `runstore serve` on a free port; yields its address."""
    proc = subprocess.Popen(
        [RUNSTORE_BIN, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir", str(data_dir),
         "--log-format", "json"],
        stdout=subprocess.PIPE, text=True, encoding="utf-8",
    )
    addr = queue.Queue()

    def drain():  # reports the listen address, then keeps the pipe from filling up
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "listening":
                addr.put(event["addr"])
        addr.put(None)  # stdout closed: the server exited

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        listening = addr.get(timeout=30)
        assert listening, f"runstore exited before listening (exit code {proc.wait(timeout=30)})"
        # Ready once the persistence service's health is SERVING (readiness:
        # NOT_SERVING until its first storage probe write succeeds; liveness,
        # "", is SERVING from the start).
        with grpc.insecure_channel(listening) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
            try:
                assert any(r.status == health_pb2.HealthCheckResponse.SERVING for r in watch)
            finally:
                watch.cancel()
        yield listening
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            reader.join(timeout=30)
    assert code == 0, f"runstore exited with {code} after SIGTERM"


def refuse_writes(data_dir, table, task_id):
    """Makes every write of `task_id` to `table` fail for good: a trigger that
    RAISEs on INSERT and UPDATE (a rewritten run is an upsert), created in the
    running server's database. The server sees it on its next statement; a
    RAISE is a constraint failure, so the write is FAILED_PRECONDITION, not
    retryable, and the call's other write is unaffected."""
    with closing(sqlite3.connect(data_dir / DATABASE, timeout=10, isolation_level=None)) as db:
        for event in ("INSERT", "UPDATE"):
            db.execute(f"""
                CREATE TRIGGER doomed_{table}_{event.lower()} BEFORE {event} ON {table}
                WHEN NEW.task_id = '{task_id}'
                BEGIN SELECT RAISE(ABORT, 'injected fault'); END""")


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.PersistenceServiceStub(channel)


@pytest.fixture(scope="module")
def summary():
    """The fixture summary: (text, taskId, runId)."""
    text = FIXTURE.read_text(encoding="utf-8")
    doc = json.loads(text)
    return text, doc["taskId"], doc["runId"]


@pytest.fixture
def completed(stub, summary):
    text, task_id, run_id = summary
    return complete_run(stub, task_id, run_id, TIMESTAMP, text)


def test_complete_run_writes_both(completed, summary):
    assert completed.outcome == pb.OUTCOME_ALL_WRITTEN
    assert not completed.HasField("primary_error")
    for status, target in ((completed.snapshot, pb.WRITE_TARGET_SNAPSHOT),
                           (completed.manifest, pb.WRITE_TARGET_MANIFEST)):
        assert status.target == target
        assert status.state == pb.WRITE_STATE_WRITTEN
        assert status.code == "OK"
        assert status.message == ""
        assert status.location
    assert completed.manifest.bytes == len(summary[0].encode("utf-8"))


def test_get_manifest_returns_summary_byte_for_byte(stub, completed, summary):
    text, task_id, run_id = summary
    m = stub.GetManifest(pb.GetManifestRequest(task_id=task_id, run_id=run_id), timeout=10)
    assert (m.task_id, m.run_id) == (task_id, run_id)
    assert m.summary_json.encode("utf-8") == text.encode("utf-8")
    assert m.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert m.written_at
    assert "ünïcödé" in m.summary_json
    # Integers beyond 2^53 lose precision in a JSON double; the text is stored as sent.
    big = [n for n in re.findall(r"\d{16,}", text) if int(n) > 2**53]
    assert big, "fixture should carry an integer larger than 2^53"
    for n in big:
        assert re.search(rf"\b{n}\b", m.summary_json), n


def test_get_task_snapshot_lists_the_run(stub, completed, summary):
    text, task_id, run_id = summary
    snap = stub.GetTaskSnapshot(pb.GetTaskSnapshotRequest(task_id=task_id), timeout=10)
    assert snap.task_id == task_id
    assert snap.last_run_at == TIMESTAMP
    assert [(r.run_id, r.timestamp, r.summary_json) for r in snap.runs] == [(run_id, TIMESTAMP, text)]
    assert snap.next_page_token == ""


# The server's default --max-summary-bytes: 4 MiB - 64 KiB, so that a manifest
# at the limit, and a snapshot page holding it, fit the 4 MiB default receive
# limit of gRPC clients.
DEFAULT_MAX_SUMMARY_BYTES = 4 * 1024 * 1024 - 64 * 1024
GRPCIO_DEFAULT_RECEIVE_BYTES = 4 * 1024 * 1024


def summary_of_size(task_id, run_id, size):
    """A JSON object of exactly `size` bytes carrying the ids:
    {"taskId":...,"runId":...,"padding":"xxx..."}."""
    head = json.dumps({"taskId": task_id, "runId": run_id}, separators=(",", ":"))[:-1] + ',"padding":"'
    tail = '"}'
    assert size >= len(head) + len(tail)
    return head + "x" * (size - len(head) - len(tail)) + tail


def test_largest_summary_reads_back_with_default_limits(stub):
    """A summary of exactly the server's default limit (4,128,768 bytes) is
    written and reads back byte for byte through GetManifest and
    GetTaskSnapshot; one byte more is RESOURCE_EXHAUSTED and writes nothing.
    `stub` is on a channel at grpcio's default limits (no
    grpc.max_receive_message_length: 4 MiB receive; send unlimited), and the
    server runs with its default --max-summary-bytes."""
    task_id = "py-largest"
    text = summary_of_size(task_id, "at-limit", DEFAULT_MAX_SUMMARY_BYTES)
    assert len(text.encode("utf-8")) == DEFAULT_MAX_SUMMARY_BYTES
    written = complete_run(stub, task_id, "at-limit", TIMESTAMP, text, timeout=60)
    assert written.snapshot.state == pb.WRITE_STATE_WRITTEN
    assert written.manifest.state == pb.WRITE_STATE_WRITTEN

    m = stub.GetManifest(pb.GetManifestRequest(task_id=task_id, run_id="at-limit"), timeout=60)
    assert m.summary_json.encode("utf-8") == text.encode("utf-8")
    assert m.ByteSize() <= GRPCIO_DEFAULT_RECEIVE_BYTES
    snap = stub.GetTaskSnapshot(pb.GetTaskSnapshotRequest(task_id=task_id, page_size=1), timeout=60)
    assert [(r.run_id, r.summary_json.encode("utf-8")) for r in snap.runs] == [
        ("at-limit", text.encode("utf-8"))]
    assert snap.ByteSize() <= GRPCIO_DEFAULT_RECEIVE_BYTES

    # One byte more: the server refuses it, naming its limit, and writes nothing.
    over = summary_of_size(task_id, "over-limit", DEFAULT_MAX_SUMMARY_BYTES + 1)
    with pytest.raises(grpc.RpcError) as err:
        complete_run(stub, task_id, "over-limit", TIMESTAMP, over, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(DEFAULT_MAX_SUMMARY_BYTES) in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.GetManifest(pb.GetManifestRequest(task_id=task_id, run_id="over-limit"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    ids = stub.GetTaskSnapshot(pb.GetTaskSnapshotRequest(task_id=task_id, omit_summaries=True),
                               timeout=10)
    assert [r.run_id for r in ids.runs] == ["at-limit"]


@pytest.mark.parametrize("call", [
    lambda stub: stub.CompleteRun(pb.CompleteRunRequest(
        task_id="../escape", run_id="r1", timestamp=TIMESTAMP, summary_json="{}"), timeout=10),
    lambda stub: stub.GetManifest(pb.GetManifestRequest(task_id="../escape", run_id="r1"), timeout=10),
    lambda stub: stub.GetTaskSnapshot(pb.GetTaskSnapshotRequest(task_id="../escape"), timeout=10),
], ids=["CompleteRun", "GetManifest", "GetTaskSnapshot"])
def test_invalid_task_id_is_rejected(stub, summary, call):
    with pytest.raises(grpc.RpcError) as err:
        call(stub)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_id" in err.value.details()
    # The channel and the server carry on.
    text, task_id, run_id = summary
    assert complete_run(stub, task_id, run_id, TIMESTAMP, text).outcome == pb.OUTCOME_ALL_WRITTEN


def test_health_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    # Readiness is NOT_SERVING until the first storage probe succeeds: watch,
    # bounded, for SERVING.
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    try:
        assert any(r.status == health_pb2.HealthCheckResponse.SERVING for r in watch)
    finally:
        watch.cancel()
    for service in ("", SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


# --- The client helpers the README quotes -----------------------------------


def test_readme_code_is_client_code():
    """Every Python block the README shows before "Running the tests" is
    client.py's code, verbatim (indented as in a function body or not)."""
    readme = (HERE / "README.md").read_text(encoding="utf-8").split("\n## Running the tests")[0]
    source = (HERE / "client.py").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, flags=re.S | re.M)
    assert len(blocks) >= 3
    for block in blocks:
        assert any(textwrap.indent(block, " " * n) in source for n in (0, 4, 8)), block
    for name in ("complete_run_with_retry", "iter_runs"):
        assert any(f"def {name}(" in block for block in blocks), name


class Recording:
    """Forwards to a stub (or answers with scripted CompleteRun responses)
    and records every call: (method, request, timeout)."""

    def __init__(self, stub=None, responses=()):
        self.stub, self.responses, self.calls = stub, list(responses), []

    def CompleteRun(self, request, timeout=None):
        self.calls.append(("CompleteRun", request, timeout))
        if self.stub is not None:
            return self.stub.CompleteRun(request, timeout=timeout)
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]

    def GetTaskSnapshot(self, request, timeout=None):
        self.calls.append(("GetTaskSnapshot", request, timeout))
        return self.stub.GetTaskSnapshot(request, timeout=timeout)


def no_sleep(delay):
    raise AssertionError(f"retried (slept {delay} s) where it should not have")


def failed(code="UNAVAILABLE", retryable=True):
    """A CompleteRun response whose manifest write failed."""
    error = pb.WriteStatus(target=pb.WRITE_TARGET_MANIFEST, state=pb.WRITE_STATE_FAILED, code=code,
                           message="injected", retryable=retryable, location="manifests/t/r")
    ok = pb.WriteStatus(target=pb.WRITE_TARGET_SNAPSHOT, state=pb.WRITE_STATE_WRITTEN, code="OK")
    return pb.CompleteRunResponse(snapshot=ok, manifest=error, outcome=pb.OUTCOME_MANIFEST_FAILED,
                                  primary_error=error)


WRITTEN_REPLY = pb.CompleteRunResponse(outcome=pb.OUTCOME_ALL_WRITTEN)


def test_retry_returns_at_once_on_success(stub, summary):
    text, task_id, run_id = summary
    recording = Recording(stub)
    response = complete_run_with_retry(recording, task_id, run_id, TIMESTAMP, text, sleep=no_sleep)
    assert response.outcome == pb.OUTCOME_ALL_WRITTEN
    [(_, request, timeout)] = recording.calls
    assert (request.task_id, request.run_id, request.summary_json) == (task_id, run_id, text)
    assert 0 < timeout <= 30.0


def test_retry_raises_at_once_on_a_non_retryable_write(stub, data_dir):
    # A trigger refuses the task's manifests: FAILED_PRECONDITION, not
    # retryable. The snapshot is still written.
    refuse_writes(data_dir, "manifests", "blocked")
    recording = Recording(stub)
    with pytest.raises(RunNotPersisted) as err:
        complete_run_with_retry(recording, "blocked", "r1", TIMESTAMP, "{}", sleep=no_sleep)
    e = err.value
    assert (e.outcome, e.retryable, e.attempts) == ("OUTCOME_MANIFEST_FAILED", False, 1)
    assert (e.error.target, e.error.state) == (pb.WRITE_TARGET_MANIFEST, pb.WRITE_STATE_FAILED)
    assert e.error.code == "FAILED_PRECONDITION"
    assert e.error.location == "manifests/blocked/r1"
    assert "injected fault" in e.error.message
    assert e.response.snapshot.state == pb.WRITE_STATE_WRITTEN
    assert e.response.snapshot.location == "snapshot_entries/blocked/r1"
    assert len(recording.calls) == 1


def test_retry_raises_at_once_on_invalid_argument(stub):
    recording = Recording(stub)
    with pytest.raises(grpc.RpcError) as err:
        complete_run_with_retry(recording, "a/b", "r1", TIMESTAMP, "{}", sleep=no_sleep)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_id" in err.value.details()
    assert len(recording.calls) == 1


def test_retry_passes_the_deadline(stub, summary):
    # A deadline that passed a second ago fails every time: grpcio does not
    # start the call. (timeout=0 would not: the call sometimes goes through.)
    text, task_id, run_id = summary
    recording = Recording(stub)
    with pytest.raises(grpc.RpcError) as err:
        complete_run_with_retry(recording, task_id, run_id, TIMESTAMP, text, timeout=-1.0,
                                sleep=no_sleep)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(recording.calls) == 1


def test_retry_backs_off_with_the_same_request():
    recording = Recording(responses=[failed(), failed(code="RESOURCE_EXHAUSTED"), WRITTEN_REPLY])
    slept = []
    response = complete_run_with_retry(recording, "t", "r", TIMESTAMP, "{}", base_delay=0.2,
                                       sleep=slept.append)
    assert response is WRITTEN_REPLY
    requests = [request for _, request, _ in recording.calls]
    assert requests == [pb.CompleteRunRequest(task_id="t", run_id="r", timestamp=TIMESTAMP,
                                              summary_json="{}")] * 3
    # Exponential, jittered to between half and all of 0.2 s, 0.4 s.
    assert len(slept) == 2
    assert 0.1 <= slept[0] <= 0.2 and 0.2 <= slept[1] <= 0.4
    # One deadline for the whole call: each attempt gets what is left of it.
    timeouts = [timeout for _, _, timeout in recording.calls]
    assert 0 < timeouts[2] <= timeouts[1] <= timeouts[0] <= 30.0


def test_retry_gives_up_after_its_attempts():
    recording = Recording(responses=[failed()])
    slept = []
    with pytest.raises(RunNotPersisted) as err:
        complete_run_with_retry(recording, "t", "r", TIMESTAMP, "{}", attempts=4, base_delay=0.2,
                                max_delay=0.3, sleep=slept.append)
    assert (err.value.retryable, err.value.attempts) == (True, 4)
    assert len(recording.calls) == 4
    assert len(slept) == 3
    assert 0.1 <= slept[0] <= 0.2 and all(0.15 <= d <= 0.3 for d in slept[1:])  # capped


def test_retry_gives_up_when_the_next_attempt_would_miss_the_deadline():
    recording = Recording(responses=[failed()])
    with pytest.raises(RunNotPersisted) as err:
        complete_run_with_retry(recording, "t", "r", TIMESTAMP, "{}", timeout=1.0, base_delay=10.0,
                                sleep=no_sleep)
    assert err.value.retryable
    assert len(recording.calls) == 1


def test_iter_runs_reads_every_page_in_order(stub):
    task_id = "paged"
    stamps = [f"2026-01-05T19:26:3{i}.000Z" for i in range(5)]
    for i in (3, 0, 4, 1, 2):  # recorded out of order; read back by timestamp
        run_id = f"run-{i}"
        summary_json = json.dumps({"taskId": task_id, "runId": run_id})
        complete_run_with_retry(stub, task_id, run_id, stamps[i], summary_json, timeout=10.0)

    recording = Recording(stub)
    # At most 10: a client that lost its page token would repeat page 1 forever.
    read = itertools.islice(iter_runs(recording, task_id, page_size=2), 10)
    runs = [(r.run_id, r.timestamp) for r in read]

    assert runs == [(f"run-{i}", stamps[i]) for i in range(5)]
    pages = [request for _, request, _ in recording.calls]
    assert [p.page_size for p in pages] == [2, 2, 2]
    assert pages[0].page_token == "" and pages[1].page_token and pages[2].page_token
    assert pages[1].page_token != pages[2].page_token
    assert all(timeout == 10.0 for _, _, timeout in recording.calls)


def test_iter_runs_of_an_unknown_task_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        list(iter_runs(stub, "never-ran"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def run_cli(*args):
    """client.py as a command, bounded: (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(HERE / "gen")}
    done = subprocess.run([sys.executable, str(HERE / "client.py"), *args], env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_cli_records_the_fixture(server, stub, summary):
    text, task_id, run_id = summary
    code, out, err = run_cli(server, str(FIXTURE), TIMESTAMP)
    assert code == 0, err
    assert f"WRITE_TARGET_SNAPSHOT: snapshot_entries/{task_id}/{run_id} " in out
    assert f"WRITE_TARGET_MANIFEST: manifests/{task_id}/{run_id} " in out
    m = stub.GetManifest(pb.GetManifestRequest(task_id=task_id, run_id=run_id), timeout=10)
    assert m.summary_json == text


def test_cli_alerts_when_the_run_is_not_persisted(server, data_dir, summary):
    _, task_id, run_id = summary
    refuse_writes(data_dir, "manifests", task_id)
    code, _, err = run_cli(server, str(FIXTURE), TIMESTAMP)
    assert code == 1
    assert f"run {task_id}/{run_id} not persisted after 1 attempt(s)" in err
    assert "FAILED_PRECONDITION" in err
    assert f"location=manifests/{task_id}/{run_id}" in err


# --- WatchRuns: the change feed ---------------------------------------------

WATCH_WAIT = 30.0  # seconds for the events a test expects
QUIET_WAIT = 0.5  # seconds in which no further event may arrive


def event_tuple(event):
    return (pb.RunEventKind.Name(event.kind), event.task_id, event.run_id, event.timestamp)


def test_watch_runs_follows_changes_in_commit_order_and_resumes_after_a_cursor(stub):
    prefix = f"py-watch-{uuid.uuid4().hex[:12]}-"
    task = prefix + "task"
    other = prefix[:-1] + "_other"  # all of the prefix but its last byte: outside it
    stamps = {"r1": "2026-01-05T19:26:37.274Z", "r2": "2026-01-05T19:30:00+01:00"}

    # From now: watch_runs returns once the server has taken the call.
    with watch_runs(stub, task_prefix=prefix, timeout=60) as watch:
        for task_id, run_id, stamp in ((task, "r1", stamps["r1"]), (task, "r2", stamps["r2"]),
                                       (other, "r1", stamps["r1"])):
            complete_run(stub, task_id, run_id, stamp,
                         json.dumps({"taskId": task_id, "runId": run_id}))
        deleted = stub.DeleteRun(pb.DeleteRunRequest(task_id=task, run_id="r1"), timeout=10)
        assert deleted.outcome == pb.OUTCOME_ALL_WRITTEN
        assert deleted.found

        events = watch.take(3, timeout=WATCH_WAIT)
        with pytest.raises(TimeoutError):
            watch.next(timeout=QUIET_WAIT)  # exactly three: nothing of the other task
        assert watch.close() == grpc.StatusCode.CANCELLED

    assert [event_tuple(e) for e in events] == [
        ("RUN_EVENT_KIND_COMPLETED", task, "r1", stamps["r1"]),
        ("RUN_EVENT_KIND_COMPLETED", task, "r2", stamps["r2"]),
        ("RUN_EVENT_KIND_DELETED", task, "r1", stamps["r1"]),
    ]
    for event in events:
        assert event.cursor
        recorded_at = datetime.fromisoformat(event.recorded_at)
        assert recorded_at.utcoffset() is not None, event.recorded_at
    assert len({e.cursor for e in events}) == 3

    # Resumed exactly after the first event: the second and the third.
    with watch_runs(stub, task_prefix=prefix, after=events[0].cursor, timeout=60) as resumed:
        again = resumed.take(2, timeout=WATCH_WAIT)
        with pytest.raises(TimeoutError):
            resumed.next(timeout=QUIET_WAIT)
        assert resumed.close() == grpc.StatusCode.CANCELLED
    assert [event_tuple(e) for e in again] == [event_tuple(e) for e in events[1:]]
    assert [e.cursor for e in again] == [e.cursor for e in events[1:]]


def test_watch_runs_with_a_malformed_cursor_is_invalid_argument(stub):
    with watch_runs(stub, after="not-a-cursor", timeout=10) as watch:
        with pytest.raises(grpc.RpcError) as err:
            watch.next(timeout=WATCH_WAIT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after" in err.value.details()
