"""Example: how a Python orchestrator records a completed run in runstore.

Needs the generated stubs on sys.path (see README.md), e.g.

    PYTHONPATH=gen python client.py 127.0.0.1:50051 run-summary.json 2026-01-05T19:26:37.274Z
"""
import json
import sys

import grpc

from orchestrator.persistence.v1 import persistence_pb2 as pb
from orchestrator.persistence.v1 import persistence_pb2_grpc as pb_grpc


class RunNotPersisted(Exception):
    """CompleteRun was accepted, but at least one of the two writes failed.

    `error` is the failed write to act on (the manifest's when both failed);
    `retryable` says whether repeating the same CompleteRun may succeed
    (repeating is always safe: it replaces the snapshot entry and rewrites
    the manifest).
    """

    def __init__(self, response: pb.CompleteRunResponse):
        self.response = response
        self.outcome = pb.Outcome.Name(response.outcome)
        self.error = response.primary_error
        self.retryable = self.error.retryable
        super().__init__(
            f"{self.outcome}: {pb.WriteTarget.Name(self.error.target)} "
            f"{self.error.code}: {self.error.message} "
            f"(retryable={self.retryable}, location={self.error.location})"
        )


def complete_run(stub: pb_grpc.PersistenceServiceStub, task_id: str, run_id: str,
                 timestamp: str, summary_json: str, timeout: float = 30.0) -> pb.CompleteRunResponse:
    """Records a run; returns the response when both writes are durable.

    Raises RunNotPersisted when a write failed (see its `retryable`), and
    grpc.RpcError when the call itself failed: INVALID_ARGUMENT for a bad
    request (nothing written; do not retry), RESOURCE_EXHAUSTED for an
    oversized summary or load shedding, UNAVAILABLE while the server shuts
    down, DEADLINE_EXCEEDED after `timeout` seconds.
    """
    request = pb.CompleteRunRequest(task_id=task_id, run_id=run_id,
                                    timestamp=timestamp, summary_json=summary_json)
    response = stub.CompleteRun(request, timeout=timeout)
    if response.outcome != pb.ALL_WRITTEN:
        raise RunNotPersisted(response)
    return response


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    addr, path, timestamp = argv[1:]
    with open(path, encoding="utf-8") as f:
        summary_json = f.read()
    summary = json.loads(summary_json)
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        try:
            response = complete_run(stub, summary["taskId"], summary["runId"], timestamp, summary_json)
        except RunNotPersisted as e:
            print(f"not persisted: {e}", file=sys.stderr)
            return 75 if e.retryable else 1  # EX_TEMPFAIL: try again later
        except grpc.RpcError as e:
            print(f"call failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    for status in (response.snapshot, response.manifest):
        print(f"{pb.WriteTarget.Name(status.target)}: {status.location} "
              f"({status.bytes} bytes, {status.duration_micros} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
