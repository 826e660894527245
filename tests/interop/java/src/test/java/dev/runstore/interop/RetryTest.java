package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.runstore.interop.RunstoreClient.RunNotPersistedException;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
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
 * and storage that refuses writes (a retryable primary_error). Each test runs its own server.
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
    Files.createDirectories(data.resolve("runs"));
    Files.createDirectories(data.resolve("tasks"));
    // Read-only storage, the one way to refuse root's writes: a bind mount remounted read-only.
    assumeTrue(system("mount", "--bind", data.toString(), data.toString()),
        "needs root: cannot bind-mount the data dir");
    try {
      assumeTrue(system("mount", "-o", "remount,ro,bind", data.toString()),
          "cannot remount the data dir read-only");
      List<Retry> retries = new ArrayList<>();
      try (RunstoreServer server = RunstoreServer.start(data, "--health-interval", "200ms");
          Connection connection = new Connection(server.address())) {
        connection.waitFor("", ServingStatus.NOT_SERVING);
        RunstoreClient client = new RunstoreClient(connection.channel(), Connection.RPC_DEADLINE);

        CompleteRunResponse response =
            client.completeRunWithRetry(
                fixture.taskId(), fixture.runId(), Fixture.FINISHED_AT, fixture.text(),
                InteropTest.QUICK_RETRY,
                (attempt, backoff, cause) -> {
                  retries.add(new Retry(attempt, backoff, cause));
                  // The operator frees the storage while the client backs off.
                  if (!system("mount", "-o", "remount,rw,bind", data.toString())) {
                    fail("cannot remount the data dir read-write");
                  }
                });

        assertEquals(Outcome.OUTCOME_ALL_WRITTEN, response.getOutcome());
        assertEquals(1, retries.size(), "retries");
        RunNotPersistedException first =
            assertInstanceOf(RunNotPersistedException.class, retries.get(0).cause());
        assertTrue(first.retryable(), first::getMessage);
        assertEquals(Outcome.OUTCOME_NONE_WRITTEN, first.outcome());
        assertEquals(WriteTarget.WRITE_TARGET_MANIFEST, first.primaryError().getTarget(),
            "the manifest's failure comes first");
        assertEquals("UNAVAILABLE", first.primaryError().getCode());
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
        connection.waitFor("", ServingStatus.SERVING);
      }
    } finally {
      if (!system("umount", data.toString())) {
        system("umount", "-l", data.toString());
      }
    }
  }

  /** Every attempt sent the same request: same ids, timestamp and summary. */
  static void assertSameRequests(int attempts, List<CompleteRunRequest> requests) {
    assertEquals(attempts, requests.size(), "CompleteRun attempts");
    for (CompleteRunRequest request : requests) {
      assertEquals(requests.get(0), request, "a retry repeats the request");
    }
  }

  /** Runs a short system command, bounded; true when it exits 0. */
  static boolean system(String... command) {
    try {
      Process process = new ProcessBuilder(command).redirectErrorStream(true).start();
      process.getOutputStream().close();
      if (!process.waitFor(10, TimeUnit.SECONDS)) {
        process.destroyForcibly();
        return false;
      }
      String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
      if (process.exitValue() != 0) {
        System.err.println(String.join(" ", command) + ": " + output.strip());
        return false;
      }
      return true;
    } catch (IOException e) {
      return false;
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return false;
    }
  }
}
