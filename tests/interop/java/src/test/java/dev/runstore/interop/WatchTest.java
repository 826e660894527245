package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.runstore.interop.RunstoreClient.RunWatch;
import io.grpc.Status;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.util.HashSet;
import java.util.List;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import orchestrator.persistence.v1.DeleteRunRequest;
import orchestrator.persistence.v1.DeleteRunResponse;
import orchestrator.persistence.v1.Outcome;
import orchestrator.persistence.v1.RunEvent;
import orchestrator.persistence.v1.RunEventKind;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * WatchRuns, the change feed, through {@link RunstoreClient#watchRuns}: the real server on
 * 127.0.0.1:0 with a fresh data dir, which must exit 0 on SIGTERM afterwards.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS) // a backstop: every read and wait is bounded anyway
class WatchTest {
  /** For the events a test expects. */
  static final Duration WATCH_WAIT = Duration.ofSeconds(30);
  /** In which no further event may arrive. */
  static final Duration QUIET_WAIT = Duration.ofMillis(500);
  /** The deadline of each WatchRuns stream. */
  static final Duration STREAM_BUDGET = Duration.ofSeconds(60);
  /** How long a cancelled stream may take to end. */
  static final Duration END_WAIT = Duration.ofSeconds(10);

  @TempDir Path tmp;

  RunstoreServer server;
  Connection connection;
  RunstoreClient client;

  @BeforeEach
  void start() throws Exception {
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

  /** What a test compares of an event. */
  record Seen(RunEventKind kind, String taskId, String runId, String timestamp) {
    static List<Seen> of(List<RunEvent> events) {
      return events.stream()
          .map(e -> new Seen(e.getKind(), e.getTaskId(), e.getRunId(), e.getTimestamp()))
          .toList();
    }
  }

  @Test
  void followsChangesInCommitOrderAndResumesExactlyAfterACursor() throws Exception {
    String prefix = "java-watch-" + UUID.randomUUID().toString().substring(0, 12) + "-";
    String task = prefix + "task";
    String other = prefix.substring(0, prefix.length() - 1) + "_other"; // outside the prefix
    Instant at1 = Instant.parse("2026-01-05T19:26:37.274Z");
    Instant at2 = Instant.parse("2026-01-05T19:30:00Z");

    List<RunEvent> events;
    // From now: watchRuns returns once the server has taken the call.
    try (RunWatch watch = client.watchRuns(prefix, "", STREAM_BUDGET)) {
      client.completeRun(task, "r1", at1, json(task, "r1"));
      client.completeRun(task, "r2", at2, json(task, "r2"));
      client.completeRun(other, "r1", at1, json(other, "r1"));
      DeleteRunResponse deleted =
          connection
              .persistence()
              .deleteRun(DeleteRunRequest.newBuilder().setTaskId(task).setRunId("r1").build());
      assertEquals(Outcome.OUTCOME_ALL_WRITTEN, deleted.getOutcome());
      assertTrue(deleted.getFound(), "found");

      events = watch.take(3, WATCH_WAIT);
      Optional<RunEvent> more = watch.next(QUIET_WAIT);
      assertFalse(more.isPresent(), () -> "exactly three events, then " + more); // not `other`
      assertEquals(Status.Code.CANCELLED, watch.cancel(END_WAIT).getCode());
    }

    // RunstoreClient.completeRun sends the instant as ISO_INSTANT, i.e. Instant.toString().
    assertEquals(
        List.of(
            new Seen(RunEventKind.RUN_EVENT_KIND_COMPLETED, task, "r1", at1.toString()),
            new Seen(RunEventKind.RUN_EVENT_KIND_COMPLETED, task, "r2", at2.toString()),
            new Seen(RunEventKind.RUN_EVENT_KIND_DELETED, task, "r1", at1.toString())),
        Seen.of(events));
    HashSet<String> cursors = new HashSet<>();
    for (RunEvent event : events) {
      assertFalse(event.getCursor().isEmpty(), () -> "cursor of " + event);
      cursors.add(event.getCursor());
      OffsetDateTime.parse(event.getRecordedAt()); // RFC 3339, or DateTimeParseException
    }
    assertEquals(3, cursors.size(), "distinct cursors");

    // Resumed exactly after the first event: the second and the third.
    List<RunEvent> again;
    try (RunWatch resumed = client.watchRuns(prefix, events.get(0).getCursor(), STREAM_BUDGET)) {
      again = resumed.take(2, WATCH_WAIT);
      Optional<RunEvent> more = resumed.next(QUIET_WAIT);
      assertFalse(more.isPresent(), () -> "exactly two events, then " + more);
      assertEquals(Status.Code.CANCELLED, resumed.cancel(END_WAIT).getCode());
    }
    assertEquals(Seen.of(events.subList(1, 3)), Seen.of(again));
    assertEquals(
        events.subList(1, 3).stream().map(RunEvent::getCursor).toList(),
        again.stream().map(RunEvent::getCursor).toList());
  }

  static String json(String taskId, String runId) {
    return "{\"taskId\":\"" + taskId + "\",\"runId\":\"" + runId + "\"}";
  }
}
