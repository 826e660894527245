"""Python interop tests: the real runstore binary, a real grpcio channel."""
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import complete_run
from orchestrator.persistence.v1 import persistence_pb2 as pb
from orchestrator.persistence.v1 import persistence_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[3]
RUNSTORE_BIN = os.environ.get("RUNSTORE_BIN", str(REPO / "target/release/runstore"))
FIXTURE = REPO.parent / "shared/fixtures/run-summary.json"
TIMESTAMP = "2026-01-05T19:26:37.274Z"
SERVICE = "orchestrator.persistence.v1.PersistenceService"


@pytest.fixture
def server(tmp_path):
    """Starts `runstore serve` on a free port; yields its address."""
    proc = subprocess.Popen(
        [RUNSTORE_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
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
    assert completed.outcome == pb.ALL_WRITTEN
    assert not completed.HasField("primary_error")
    for status, target in ((completed.snapshot, pb.SNAPSHOT), (completed.manifest, pb.MANIFEST)):
        assert status.target == target
        assert status.state == pb.WRITTEN
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
    assert complete_run(stub, task_id, run_id, TIMESTAMP, text).outcome == pb.ALL_WRITTEN


def test_health_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    # NOT_SERVING until the first storage probe succeeds: watch, bounded, for SERVING.
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    try:
        assert any(r.status == health_pb2.HealthCheckResponse.SERVING for r in watch)
    finally:
        watch.cancel()
    for service in ("", SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
