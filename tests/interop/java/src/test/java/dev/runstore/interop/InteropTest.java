package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import dev.runstore.interop.RunstoreClient.RetryPolicy;
import dev.runstore.interop.RunstoreClient.RunNotPersistedException;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.protobuf.StatusProto;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import orchestrator.persistence.v1.CompleteRunResponse;
import orchestrator.persistence.v1.GetManifestRequest;
import orchestrator.persistence.v1.GetManifestResponse;
import orchestrator.persistence.v1.GetTaskSnapshotRequest;
import orchestrator.persistence.v1.GetTaskSnapshotResponse;
import orchestrator.persistence.v1.Outcome;
import orchestrator.persistence.v1.RunEntry;
import orchestrator.persistence.v1.WriteState;
import orchestrator.persistence.v1.WriteStatus;
import orchestrator.persistence.v1.WriteTarget;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The real runstore binary and a real grpc-java channel: each test gets its own server on
 * 127.0.0.1:0 with a fresh data dir, which must exit 0 on SIGTERM afterwards.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS) // a backstop: every RPC and wait is bounded anyway
class InteropTest {
  static final String SERVICE = "orchestrator.persistence.v1.PersistenceService";

  /** Fast enough for tests; the shape is RetryPolicy.DEFAULT's. */
  static final RetryPolicy QUICK_RETRY =
      new RetryPolicy(4, Duration.ofMillis(50), Duration.ofMillis(400), 2.0);

  @TempDir Path tmp;

  Fixture fixture;
  RunstoreServer server;
  Connection connection;
  RunstoreClient client;

  @BeforeEach
  void start() throws Exception {
    fixture = Fixture.load();
    server = RunstoreServer.start(tmp.resolve("data"));
    connection = Connection.open(server);
    client = new RunstoreClient(connection.channel(), Connection.RPC_DEADLINE);
  }

  @AfterEach
  void stop() throws Exception {
    try {
      if (connection != null) {
        connection.close();
      }
    } finally {
      if (server != null) {
        server.close(); // SIGTERM, exit code 0
      }
    }
  }

  CompleteRunResponse recordFixture() {
    return client.completeRun(
        fixture.taskId(), fixture.runId(), Fixture.FINISHED_AT, fixture.text());
  }

  @Test
  void completeRunWritesBoth() {
    CompleteRunResponse response = recordFixture();

    assertEquals(Outcome.OUTCOME_ALL_WRITTEN, response.getOutcome());
    assertFalse(response.hasPrimaryError(), "primary_error is unset when both were written");
    assertWritten(response.getSnapshot(), WriteTarget.WRITE_TARGET_SNAPSHOT);
    assertWritten(response.getManifest(), WriteTarget.WRITE_TARGET_MANIFEST);
    assertEquals(fixture.bytes().length, response.getManifest().getBytes(), "manifest bytes");
    assertEquals(
        "manifests/" + fixture.taskId() + "/" + fixture.runId(),
        response.getManifest().getLocation());
    assertEquals(
        "snapshot_entries/" + fixture.taskId() + "/" + fixture.runId(),
        response.getSnapshot().getLocation());
  }

  static void assertWritten(WriteStatus status, WriteTarget target) {
    assertEquals(target, status.getTarget());
    assertEquals(WriteState.WRITE_STATE_WRITTEN, status.getState(), target + " state");
    assertEquals("OK", status.getCode(), target + " code");
    assertEquals("", status.getMessage(), target + " message");
    assertFalse(status.getLocation().isEmpty(), target + " location");
  }

  @Test
  void getManifestReturnsTheBytesAsSent() throws NoSuchAlgorithmException {
    recordFixture();

    GetManifestResponse manifest =
        connection
            .persistence()
            .getManifest(
                GetManifestRequest.newBuilder()
                    .setTaskId(fixture.taskId())
                    .setRunId(fixture.runId())
                    .build());

    assertEquals(fixture.taskId(), manifest.getTaskId());
    assertEquals(fixture.runId(), manifest.getRunId());
    // The UTF-8 bytes on the wire, not just an equal-looking String.
    assertArrayEquals(fixture.bytes(), manifest.getSummaryJsonBytes().toByteArray());
    assertEquals(fixture.text(), manifest.getSummaryJson());
    String sha256 =
        HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(fixture.bytes()));
    assertEquals(sha256, manifest.getSha256());
    assertFalse(manifest.getWrittenAt().isEmpty(), "written_at");
    assertTrue(manifest.getSummaryJson().contains("ünïcödé"), "non-ASCII text survives");

    // An integer above 2^53 loses precision in a JSON double; it must come back as the text sent.
    List<String> beyondDouble = integersAbove2To53(fixture.text());
    assertTrue(beyondDouble.contains("9007199254740993"), "fixture carries 2^53 + 1");
    for (String literal : beyondDouble) {
      assertTrue(
          Pattern.compile("\\b" + literal + "\\b").matcher(manifest.getSummaryJson()).find(),
          () -> literal + " did not survive literally");
    }
  }

  /** The integer literals in {@code text} greater than 2^53. */
  static List<String> integersAbove2To53(String text) {
    BigInteger limit = BigInteger.TWO.pow(53);
    List<String> found = new ArrayList<>();
    Matcher digits = Pattern.compile("\\d{16,}").matcher(text);
    while (digits.find()) {
      if (new BigInteger(digits.group()).compareTo(limit) > 0) {
        found.add(digits.group());
      }
    }
    return found;
  }

  @Test
  void getTaskSnapshotListsTheRun() {
    recordFixture();

    GetTaskSnapshotResponse snapshot =
        connection
            .persistence()
            .getTaskSnapshot(
                GetTaskSnapshotRequest.newBuilder().setTaskId(fixture.taskId()).build());

    assertEquals(fixture.taskId(), snapshot.getTaskId());
    assertEquals(Fixture.TIMESTAMP, snapshot.getLastRunAt());
    assertEquals(1, snapshot.getRunsCount(), "runs");
    RunEntry run = snapshot.getRuns(0);
    assertEquals(fixture.runId(), run.getRunId());
    assertEquals(Fixture.TIMESTAMP, run.getTimestamp());
    assertEquals(fixture.text(), run.getSummaryJson());
    assertEquals("", snapshot.getNextPageToken());
  }

  @ParameterizedTest(name = "{0}")
  @ValueSource(strings = {"CompleteRun", "GetManifest", "GetTaskSnapshot"})
  void anInvalidTaskIdIsInvalidArgumentNamingTheField(String rpc) {
    String badTaskId = "a/b";
    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () -> {
              switch (rpc) {
                case "CompleteRun" ->
                    client.completeRun(badTaskId, "r1", Fixture.FINISHED_AT, "{}");
                case "GetManifest" -> connection.persistence().getManifest(
                    GetManifestRequest.newBuilder().setTaskId(badTaskId).setRunId("r1").build());
                case "GetTaskSnapshot" -> client.runHistory(badTaskId, 0);
                default -> throw new IllegalArgumentException(rpc);
              }
            });

    assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode(), error::toString);
    assertTrue(error.getStatus().getDescription().contains("task_id"),
        () -> "message names the field: " + error.getStatus().getDescription());
    assertEquals(List.of("task_id"), badRequestFields(error), "google.rpc.BadRequest fields");

    // The channel and the server carry on.
    assertEquals(Outcome.OUTCOME_ALL_WRITTEN, recordFixture().getOutcome());
  }

  /** The fields named by the google.rpc.BadRequest detail of a gRPC error. */
  static List<String> badRequestFields(StatusRuntimeException error) {
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    List<String> fields = new ArrayList<>();
    if (status == null) {
      return fields;
    }
    for (Any detail : status.getDetailsList()) {
      if (detail.is(BadRequest.class)) {
        try {
          detail.unpack(BadRequest.class).getFieldViolationsList()
              .forEach(v -> fields.add(v.getField()));
        } catch (InvalidProtocolBufferException e) {
          throw new AssertionError(e);
        }
      }
    }
    return fields;
  }

  @Test
  void healthReportsServingForTheServerAndTheService() {
    for (String service : List.of("", SERVICE)) {
      connection.waitFor(service, ServingStatus.SERVING);
      ServingStatus status =
          connection
              .health()
              .check(HealthCheckRequest.newBuilder().setService(service).build())
              .getStatus();
      assertEquals(ServingStatus.SERVING, status, "Check(\"" + service + "\")");
    }
  }

  // --- the example client's three jobs ---------------------------------------------------------

  @Test
  void aLongHistoryIsReadPageByPage() {
    String task = "paging-task";
    Instant base = Instant.parse("2026-01-05T10:00:00Z");
    int runs = 5;
    // Recorded out of order: the history comes back in the order of the instants.
    for (int i : new int[] {3, 0, 4, 1, 2}) {
      client.completeRun(task, "run-" + i, base.plusSeconds(60L * i), "{\"n\":" + i + "}");
    }

    GetTaskSnapshotResponse firstPage =
        connection
            .persistence()
            .getTaskSnapshot(
                GetTaskSnapshotRequest.newBuilder().setTaskId(task).setPageSize(2).build());
    assertEquals(2, firstPage.getRunsCount(), "a page holds page_size runs");
    assertNotEquals("", firstPage.getNextPageToken(), "more than one page");
    assertEquals("2026-01-05T10:04:00Z", firstPage.getLastRunAt(), "latest of all pages");

    List<RunEntry> history = client.runHistory(task, 2);

    assertEquals(runs, history.size(), "one entry per run, across pages");
    for (int i = 0; i < runs; i++) {
      RunEntry run = history.get(i);
      assertEquals("run-" + i, run.getRunId());
      assertEquals(base.plusSeconds(60L * i).toString(), run.getTimestamp());
      assertEquals("{\"n\":" + i + "}", run.getSummaryJson());
    }
    // Repeating a run id replaces its entry, it does not add one.
    client.completeRun(task, "run-2", base.plusSeconds(120), "{\"n\":2,\"again\":true}");
    List<RunEntry> again = client.runHistory(task, 2);
    assertEquals(runs, again.size());
    assertEquals("{\"n\":2,\"again\":true}", again.get(2).getSummaryJson());

    assertEquals(List.of(), client.runHistory("no-such-task", 2), "a task with no runs");
  }

  @Test
  void retryReturnsTheFirstSuccessWithoutRetrying() throws InterruptedException {
    List<RuntimeException> retried = new ArrayList<>();

    CompleteRunResponse response =
        client.completeRunWithRetry(
            fixture.taskId(), fixture.runId(), Fixture.FINISHED_AT, fixture.text(),
            QUICK_RETRY, (attempt, backoff, cause) -> retried.add(cause));

    assertEquals(Outcome.OUTCOME_ALL_WRITTEN, response.getOutcome());
    assertEquals(List.of(), retried);
    assertEquals(1, connection.completeRunRequests().size(), "CompleteRun calls");
  }

  @Test
  void retryGivesUpAtOnceOnInvalidArgument() {
    List<RuntimeException> retried = new ArrayList<>();

    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                client.completeRunWithRetry(
                    "a/b", fixture.runId(), Fixture.FINISHED_AT, fixture.text(),
                    QUICK_RETRY, (attempt, backoff, cause) -> retried.add(cause)));

    assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode());
    assertFalse(RunstoreClient.isRetryable(error));
    assertEquals(List.of(), retried);
    assertEquals(1, connection.completeRunRequests().size(), "CompleteRun calls");
  }

  @Test
  void retryGivesUpAtOnceOnANonRetryableWriteFailure() {
    // A trigger refuses the task's manifests: the manifest write fails FAILED_PRECONDITION, not
    // retryable, while the snapshot is written.
    Database.refuseWrites(server.dataDir(), "manifests", fixture.taskId());
    List<RuntimeException> retried = new ArrayList<>();

    RunNotPersistedException error =
        assertThrows(
            RunNotPersistedException.class,
            () ->
                client.completeRunWithRetry(
                    fixture.taskId(), fixture.runId(), Fixture.FINISHED_AT, fixture.text(),
                    QUICK_RETRY, (attempt, backoff, cause) -> retried.add(cause)));

    assertEquals(Outcome.OUTCOME_MANIFEST_FAILED, error.outcome());
    WriteStatus primary = error.primaryError();
    assertEquals(WriteTarget.WRITE_TARGET_MANIFEST, primary.getTarget());
    assertEquals(WriteState.WRITE_STATE_FAILED, primary.getState());
    assertEquals("FAILED_PRECONDITION", primary.getCode());
    assertEquals("manifests/" + fixture.taskId() + "/" + fixture.runId(), primary.getLocation());
    assertTrue(primary.getMessage().contains("injected fault"), primary::getMessage);
    assertFalse(error.retryable());
    assertWritten(error.response().getSnapshot(), WriteTarget.WRITE_TARGET_SNAPSHOT);
    assertEquals(List.of(), retried);
    assertEquals(1, connection.completeRunRequests().size(), "CompleteRun calls");

    // Once the trigger is gone, the same call writes both.
    Database.allowWrites(server.dataDir(), "manifests");
    assertEquals(Outcome.OUTCOME_ALL_WRITTEN, recordFixture().getOutcome());
  }

  @Test
  void theEndOfRunToolRecordsASummaryFile() throws Exception {
    int code =
        RunstoreClient.run(new String[] {
            server.address(), fixture.taskId(), fixture.runId(), Fixture.TIMESTAMP,
            Fixture.path().toString()});
    assertEquals(0, code, "exit code");

    GetManifestResponse manifest =
        connection
            .persistence()
            .getManifest(
                GetManifestRequest.newBuilder()
                    .setTaskId(fixture.taskId())
                    .setRunId(fixture.runId())
                    .build());
    assertArrayEquals(fixture.bytes(), manifest.getSummaryJson().getBytes(StandardCharsets.UTF_8));

    int invalid =
        RunstoreClient.run(new String[] {
            server.address(), "a/b", fixture.runId(), Fixture.TIMESTAMP,
            Fixture.path().toString()});
    assertEquals(1, invalid, "exit code for a rejected request");
  }
}
