"""Compressed calls from grpcio: gzip requests and replies, exact bytes back.

grpcio does not show a reply's grpc-encoding, so the calls go through a
byte-counting proxy on loopback: compressed, the ~2 KiB fixture takes well
under its own size on the wire; uncompressed (the control) it cannot.
"""
import hashlib
import json
import socket
import threading

import grpc
import pytest

from orchestrator.persistence.v1 import persistence_pb2 as pb
from orchestrator.persistence.v1 import persistence_pb2_grpc as pb_grpc
# The suite's server fixture (and the fixture it depends on), reused as is.
from test_interop import FIXTURE, TIMESTAMP, data_dir, server  # noqa: F401


class CountingProxy:
    """Forwards TCP connections to `upstream`, counting bytes each way."""

    def __init__(self, upstream):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.to_server = 0
        self.to_client = 0
        self.lock = threading.Lock()
        self.pumps = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                pump = threading.Thread(target=self._pump, args=(src, dst, up), daemon=True)
                self.pumps.append(pump)
                pump.start()

    def _pump(self, src, dst, up):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                with self.lock:
                    if up:
                        self.to_server += len(data)
                    else:
                        self.to_client += len(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        """Stops accepting and waits for open connections to finish."""
        self.listener.close()
        for pump in self.pumps:
            pump.join(timeout=10)


@pytest.fixture
def proxy(server):
    p = CountingProxy(server)
    yield p
    p.close()


@pytest.fixture
def fixture_summary():
    """The fixture summary: (text, taskId, runId)."""
    text = FIXTURE.read_text(encoding="utf-8")
    doc = json.loads(text)
    return text, doc["taskId"], doc["runId"]


def round_trip(channel, text, task_id, run_id, **per_call):
    """CompleteRun then GetManifest; asserts the exact bytes come back."""
    stub = pb_grpc.PersistenceServiceStub(channel)
    reply = stub.CompleteRun(
        pb.CompleteRunRequest(task_id=task_id, run_id=run_id, timestamp=TIMESTAMP,
                              summary_json=text),
        timeout=30, **per_call,
    )
    assert reply.outcome == pb.OUTCOME_ALL_WRITTEN, reply.primary_error
    assert reply.manifest.state == pb.WRITE_STATE_WRITTEN
    assert reply.manifest.bytes == len(text.encode("utf-8"))
    m = stub.GetManifest(pb.GetManifestRequest(task_id=task_id, run_id=run_id),
                         timeout=10, **per_call)
    assert m.summary_json.encode("utf-8") == text.encode("utf-8")
    assert m.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_gzip_channel_round_trips_the_fixture(proxy, fixture_summary):
    text, task_id, run_id = fixture_summary
    # Every request gzipped; gzip listed in grpc-accept-encoding, so the
    # server gzips its replies too.
    with grpc.insecure_channel(proxy.addr, compression=grpc.Compression.Gzip) as channel:
        round_trip(channel, text, task_id, run_id)
    proxy.close()
    size = len(text.encode("utf-8"))
    # Everything on the connection (preface, settings, headers, both calls)
    # in each direction, against the summary alone.
    assert proxy.to_server < size, (proxy.to_server, size)
    assert proxy.to_client < size, (proxy.to_client, size)


def test_per_call_gzip_on_a_plain_channel(proxy, fixture_summary):
    text, task_id, run_id = fixture_summary
    with grpc.insecure_channel(proxy.addr) as channel:
        round_trip(channel, text, task_id, run_id, compression=grpc.Compression.Gzip)
    proxy.close()
    assert proxy.to_server < len(text.encode("utf-8")), proxy.to_server


def test_plain_channel_sends_plain_requests_and_gets_gzipped_replies(proxy, fixture_summary):
    text, task_id, run_id = fixture_summary
    with grpc.insecure_channel(proxy.addr) as channel:
        round_trip(channel, text, task_id, run_id)
    proxy.close()
    size = len(text.encode("utf-8"))
    # Control: an uncompressed request carries the whole summary.
    assert proxy.to_server > size, (proxy.to_server, size)
    # grpcio lists gzip in grpc-accept-encoding on every call, compression
    # or not, so the server gzips its replies to any grpcio client.
    assert proxy.to_client < size, (proxy.to_client, size)
