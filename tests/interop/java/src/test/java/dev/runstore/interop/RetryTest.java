package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.runstore.interop.RunstoreClient.RunNotPersistedException;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import orchestrator.persistence.v1.CompleteRunRequest;
import orchestrator.persistence.v1.CompleteRunResponse;
import orchestrator.persistence.v1.GetManifestRequest;
import orchestrator.persistence.v1.Outcome;
import orchestrator.persistence.v1.WriteTarget;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The retry helper against failures it should retry: the server shutting down (UNAVAILABLE calls)
 * and a database another process keeps locked (an ABORTED, retryable primary_error). Each test
 * runs its own server.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class RetryTest {
  @TempDir Path tmp;

  /** One retry the listener saw. */
  record Retry(int failedAttempt, Duration backoff, RuntimeException cause) {}

  @Test
  void retriesUnavailableWhileTheServerShutsDownThenGivesUp() throws Exception {
    Fixture fixture = Fixture.load();
    List<Retry> retries = new CopyOnWriteArrayList<>();
    try (RunstoreServer server =
            RunstoreServer.start(tmp.resolve("data"), "--shutdown-delay", "2s");
        Connection connection = Connection.open(server)) {
      RunstoreClient client = new RunstoreClient(connection.channel(), Connection.RPC_DEADLINE);

      server.terminate();
      // During the delay the server still answers: NOT_SERVING, and UNAVAILABLE for new calls.
      connection.waitFor("", ServingStatus.NOT_SERVING);

      StatusRuntimeException error =
          assertThrows(
              StatusRuntimeException.class,
              () ->
                  client.completeRunWithRetry(
                      fixture.taskId(), fixture.runId(), Fixture.FINISHED_AT, fixture.text(),
                      InteropTest.QUICK_RETRY,
                      (attempt, backoff, cause) ->
                          retries.add(new Retry(attempt, backoff, cause))));

      assertEquals(Status.Code.UNAVAILABLE, error.getStatus().getCode(), error::toString);
      int attempts = InteropTest.QUICK_RETRY.maxAttempts();
      assertEquals(attempts - 1, retries.size(), "retries before giving up");
      Duration backoff = InteropTest.QUICK_RETRY.initialBackoff();
      for (int i = 0; i < retries.size(); i++) {
        Retry retry = retries.get(i);
        assertEquals(i + 1, retry.failedAttempt());
        // Exponential, with equal jitter: between half the backoff and all of it.
        assertTrue(
            retry.backoff().compareTo(backoff.dividedBy(2)) >= 0
                && retry.backoff().compareTo(backoff) <= 0,
            () -> "backoff " + retry.backoff() + " of retry " + retry.failedAttempt());
        assertInstanceOf(StatusRuntimeException.class, retry.cause());
        backoff = backoff.multipliedBy(2);
      }
      assertSameRequests(attempts, connection.completeRunRequests());
    } // exit code 0 once the delay is over
  }

  @Test
  void retriesARetryableWriteFailureUntilItIsWritten() throws Exception {
    Fixture fixture = Fixture.load();
    Path data = tmp.resolve("data");
    List<Retry> retries = new ArrayList<>();
    try (RunstoreServer server =
            RunstoreServer.start(data, "--lock-timeout", "200ms", "--health-interval", "200ms");
        Connection connection = Connection.open(server);
        // Another process holds the database's write lock longer than --lock-timeout: the
        // server's writes fail with ABORTED, retryable, and it turns unready.
        Database.WriteLock lock = Database.holdWriteLock(data)) {
      connection.waitFor(InteropTest.SERVICE, ServingStatus.NOT_SERVING);
      connection.waitFor("", ServingStatus.SERVING); // liveness does not follow storage
      RunstoreClient client = new RunstoreClient(connection.channel(), Connection.RPC_DEADLINE);

      CompleteRunResponse response =
          client.completeRunWithRetry(
              fixture.taskId(), fixture.runId(), Fixture.FINISHED_AT, fixture.text(),
              InteropTest.QUICK_RETRY,
              (attempt, backoff, cause) -> {
                retries.add(new Retry(attempt, backoff, cause));
                // The other process commits while the client backs off.
                lock.close();
              });

      assertEquals(Outcome.OUTCOME_ALL_WRITTEN, response.getOutcome());
      assertEquals(1, retries.size(), "retries");
      RunNotPersistedException first =
          assertInstanceOf(RunNotPersistedException.class, retries.get(0).cause());
      assertTrue(first.retryable(), first::getMessage);
      assertEquals(Outcome.OUTCOME_NONE_WRITTEN, first.outcome());
      assertEquals(WriteTarget.WRITE_TARGET_MANIFEST, first.primaryError().getTarget(),
          "the manifest's failure comes first");
      assertEquals("ABORTED", first.primaryError().getCode());
      assertEquals("manifests/" + fixture.taskId() + "/" + fixture.runId(),
          first.primaryError().getLocation());
      assertEquals("ABORTED", first.response().getSnapshot().getCode());
      assertTrue(first.response().getSnapshot().getRetryable(), "snapshot retryable");
      assertSameRequests(2, connection.completeRunRequests());

      String stored =
          connection
              .persistence()
              .getManifest(
                  GetManifestRequest.newBuilder()
                      .setTaskId(fixture.taskId())
                      .setRunId(fixture.runId())
                      .build())
              .getSummaryJson();
      assertEquals(fixture.text(), stored);
      connection.waitFor(InteropTest.SERVICE, ServingStatus.SERVING);
    }
  }

  /** Every attempt sent the same request: same ids, timestamp and summary. */
  static void assertSameRequests(int attempts, List<CompleteRunRequest> requests) {
    assertEquals(attempts, requests.size(), "CompleteRun attempts");
    for (CompleteRunRequest request : requests) {
      assertEquals(requests.get(0), request, "a retry repeats the request");
    }
  }
}
