"""Example: how a Python orchestrator records a completed run in runstore,
reads a task's history back and follows the change feed.

Needs the generated stubs on sys.path (see README.md), e.g.

    PYTHONPATH=gen python client.py 127.0.0.1:50051 run-summary.json 2026-01-05T19:26:37.274Z
"""
import json
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from orchestrator.persistence.v1 import persistence_pb2 as pb
from orchestrator.persistence.v1 import persistence_pb2_grpc as pb_grpc


class RunNotPersisted(Exception):
    """CompleteRun was accepted, but at least one of the two writes failed.

    `error` is the failed write to act on (the manifest's when both failed);
    `retryable` says whether repeating the same CompleteRun may succeed
    (repeating is always safe: it replaces the snapshot entry and rewrites
    the manifest); `attempts` is how many calls were made.
    """

    def __init__(self, response: pb.CompleteRunResponse):
        self.response = response
        self.outcome = pb.Outcome.Name(response.outcome)
        self.error = response.primary_error
        self.retryable = self.error.retryable
        self.attempts = 1
        super().__init__(
            f"{self.outcome}: {pb.WriteTarget.Name(self.error.target)} "
            f"{self.error.code}: {self.error.message} "
            f"(retryable={self.retryable}, location={self.error.location})"
        )


def complete_run(stub: pb_grpc.PersistenceServiceStub, task_id: str, run_id: str,
                 timestamp: str, summary_json: str, timeout: float = 30.0) -> pb.CompleteRunResponse:
    """Records a run in one call; returns the response when both writes are durable.

    Raises RunNotPersisted when a write failed (see its `retryable`), and
    grpc.RpcError when the call itself failed: INVALID_ARGUMENT for a bad
    request (nothing written; do not retry), RESOURCE_EXHAUSTED for an
    oversized summary or load shedding, UNAVAILABLE while the server shuts
    down, DEADLINE_EXCEEDED after `timeout` seconds.
    """
    request = pb.CompleteRunRequest(task_id=task_id, run_id=run_id,
                                    timestamp=timestamp, summary_json=summary_json)
    response = stub.CompleteRun(request, timeout=timeout)
    if response.outcome != pb.OUTCOME_ALL_WRITTEN:
        raise RunNotPersisted(response)
    return response


def complete_run_with_retry(stub: pb_grpc.PersistenceServiceStub, task_id: str, run_id: str,
                            timestamp: str, summary_json: str, *, timeout: float = 30.0,
                            attempts: int = 5, base_delay: float = 0.2, max_delay: float = 5.0,
                            sleep: Callable[[float], None] = time.sleep) -> pb.CompleteRunResponse:
    """Records a run at its end, retrying while runstore says a retry may succeed.

    `timeout` (seconds) is the deadline of the whole call: every attempt and
    every wait between them. A retry sends the same ids, so it replaces the
    snapshot entry and rewrites the manifest; nothing is recorded twice.
    Waits double from `base_delay` up to `max_delay`, each jittered to between
    half and all of that, so callers that failed together do not retry together.

    Returns the response once both writes are durable. Otherwise raises the
    error to alert on: RunNotPersisted when primary_error is not retryable,
    the attempts are used up, or the next attempt would start after the
    deadline; grpc.RpcError at once when a call itself failed
    (INVALID_ARGUMENT, DEADLINE_EXCEEDED, UNAVAILABLE, ...).
    """
    deadline = time.monotonic() + timeout
    attempt = 1
    while True:
        try:
            return complete_run(stub, task_id, run_id, timestamp, summary_json,
                                timeout=deadline - time.monotonic())
        except RunNotPersisted as e:
            e.attempts = attempt
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if not e.retryable or attempt >= attempts or time.monotonic() + delay >= deadline:
                raise
        sleep(delay)
        attempt += 1


def iter_runs(stub: pb_grpc.PersistenceServiceStub, task_id: str, *, page_size: int = 100,
              timeout: float = 10.0) -> Iterator[pb.RunEntry]:
    """Yields every run of a task's history, oldest first, one page per call.

    Each page is a GetTaskSnapshot call of at most `page_size` runs with its
    own `timeout` (seconds); the next page is asked for with the previous
    page's next_page_token until that is empty. Raises grpc.RpcError, e.g.
    NOT_FOUND when the task has no recorded runs.
    """
    page_token = ""
    while True:
        page = stub.GetTaskSnapshot(
            pb.GetTaskSnapshotRequest(task_id=task_id, page_size=page_size, page_token=page_token),
            timeout=timeout)
        yield from page.runs
        page_token = page.next_page_token
        if not page_token:
            return


class RunWatch:
    """A WatchRuns stream whose every read has a bound.

    grpcio's stream iterator blocks until the next message or the end of the
    call, with no bound but the call's deadline, so a thread reads the stream
    into a queue and `next` waits at most its `timeout`. Open it with
    `watch_runs`; leave it with `close` (or a `with` block), which cancels
    the call.
    """

    def __init__(self, stub: pb_grpc.PersistenceServiceStub, task_prefix: str = "",
                 after: str = "", *, timeout: float | None = None):
        self.call = stub.WatchRuns(pb.WatchRunsRequest(task_prefix=task_prefix, after=after),
                                   timeout=timeout)
        self.started = threading.Event()
        self._items: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            # The response headers: the server has taken the call, so a watch
            # from now will see every change committed after this.
            self.call.initial_metadata()
            self.started.set()
            for response in self.call:
                self._items.put(response.event)
        except grpc.RpcError as e:
            self._items.put(e)  # the stream's end: its status
        finally:
            self.started.set()

    def next(self, timeout: float) -> pb.RunEvent:
        """The next event, waiting at most `timeout` seconds (TimeoutError
        after that). Raises the call's grpc.RpcError once the stream has
        ended: e.g. INVALID_ARGUMENT for a malformed `after`, OUT_OF_RANGE
        when events after it were pruned, ABORTED for a watcher that fell
        behind and UNAVAILABLE at server shutdown (both with the cursor to
        resume after in the message)."""
        try:
            item = self._items.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError(f"no WatchRuns event within {timeout} s") from None
        if isinstance(item, grpc.RpcError):
            self._items.put(item)  # the end stays the end for later reads
            raise item
        return item

    def take(self, count: int, timeout: float) -> list[pb.RunEvent]:
        """The next `count` events, all within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        return [self.next(deadline - time.monotonic()) for _ in range(count)]

    def close(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Cancels the call (if it is still running) and waits, at most
        `timeout` seconds, for the reader to finish; returns the call's final
        code (CANCELLED for a watch ended here)."""
        self.call.cancel()
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise TimeoutError(f"WatchRuns reader still running {timeout} s after cancel")
        return self.call.code()

    def __enter__(self) -> "RunWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def watch_runs(stub: pb_grpc.PersistenceServiceStub, task_prefix: str = "", after: str = "", *,
               timeout: float | None = None, start_timeout: float = 10.0) -> RunWatch:
    """Opens the change feed of tasks whose id starts with `task_prefix`
    (literal bytes; empty for all) and returns once the server has taken the
    call, so a watch from now (no `after`) sees every change committed after
    this returns. With `after`, an event's cursor, it resumes exactly after
    that event. `timeout` (seconds) is the deadline of the whole stream; None
    for none, as a long-lived watcher wants. Store each event's cursor once
    it is handled, and resume from it after a failure.
    """
    watch = RunWatch(stub, task_prefix, after, timeout=timeout)
    if not watch.started.wait(start_timeout):
        watch.close()
        raise TimeoutError(f"WatchRuns not started within {start_timeout} s")
    return watch


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    addr, path, timestamp = argv[1:]
    with open(path, encoding="utf-8") as f:
        summary_json = f.read()  # sent as read: never re-serialise it
    summary = json.loads(summary_json)
    task_id, run_id = summary["taskId"], summary["runId"]
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        try:
            response = complete_run_with_retry(stub, task_id, run_id, timestamp, summary_json,
                                               timeout=30.0)
        except RunNotPersisted as e:
            # Given up: not retryable, or still failing. Alert with what and where.
            print(f"run {task_id}/{run_id} not persisted after {e.attempts} attempt(s): {e}",
                  file=sys.stderr)
            return 75 if e.retryable else 1  # EX_TEMPFAIL: worth running again later
        except grpc.RpcError as e:
            print(f"run {task_id}/{run_id} not persisted: {e.code().name}: {e.details()}",
                  file=sys.stderr)
            return 1
    for status in (response.snapshot, response.manifest):
        print(f"{pb.WriteTarget.Name(status.target)}: {status.location} "
              f"({status.bytes} bytes, {status.duration_micros} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
