package dev.runstore.interop;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Consumer;
import orchestrator.persistence.v1.CompleteRunRequest;
import orchestrator.persistence.v1.CompleteRunResponse;
import orchestrator.persistence.v1.GetTaskSnapshotRequest;
import orchestrator.persistence.v1.GetTaskSnapshotResponse;
import orchestrator.persistence.v1.Outcome;
import orchestrator.persistence.v1.PersistenceServiceGrpc;
import orchestrator.persistence.v1.RunEntry;
import orchestrator.persistence.v1.RunEvent;
import orchestrator.persistence.v1.WatchRunsRequest;
import orchestrator.persistence.v1.WatchRunsResponse;
import orchestrator.persistence.v1.WriteStatus;

/**
 * How a Java orchestrator records a finished run in runstore, acts on a failed write, reads a
 * task's history and follows the change feed. One file on purpose: copy it next to stubs
 * generated from {@code persistence.proto} (see README.md).
 *
 * <p>Every call carries a deadline, so no method here blocks for longer than {@code deadline} per
 * RPC (plus the backoff sleeps of {@link #completeRunWithRetry}); every read of a {@link RunWatch}
 * has its own bound.
 */
public final class RunstoreClient {
  private final PersistenceServiceGrpc.PersistenceServiceBlockingStub stub;
  private final Duration deadline;

  /**
   * @param channel a channel to runstore; the caller owns it (and shuts it down)
   * @param deadline the deadline of each RPC
   */
  public RunstoreClient(Channel channel, Duration deadline) {
    if (deadline.isNegative() || deadline.isZero()) {
      throw new IllegalArgumentException("deadline must be positive: " + deadline);
    }
    this.stub = PersistenceServiceGrpc.newBlockingStub(channel);
    this.deadline = deadline;
  }

  /** A stub whose next call must finish within the deadline, counted from now. */
  private PersistenceServiceGrpc.PersistenceServiceBlockingStub withDeadline() {
    return stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  // ---------------------------------------------------------------------------------------------
  // (1) The end-of-run call.

  /**
   * Durably records a finished run: the task's snapshot entry and the run's manifest.
   *
   * <p>{@code summaryJson} is sent and stored byte for byte: pass the text you have, not a
   * re-serialised parse of it (integers above 2^53 and key order survive only as text).
   *
   * @return the response, when both writes are durable ({@code OUTCOME_ALL_WRITTEN})
   * @throws RunNotPersistedException when the call was answered but a write failed; its {@link
   *     RunNotPersistedException#retryable()} says whether the same call may succeed
   * @throws StatusRuntimeException when the call itself failed: INVALID_ARGUMENT for a bad request
   *     (nothing written; fix it, do not retry), RESOURCE_EXHAUSTED for an oversized summary or an
   *     overloaded server, UNAVAILABLE while the server shuts down or cannot be reached,
   *     DEADLINE_EXCEEDED after the deadline (the writes may still complete)
   */
  public CompleteRunResponse completeRun(
      String taskId, String runId, Instant finishedAt, String summaryJson) {
    CompleteRunRequest request =
        CompleteRunRequest.newBuilder()
            .setTaskId(taskId)
            .setRunId(runId)
            .setTimestamp(DateTimeFormatter.ISO_INSTANT.format(finishedAt)) // RFC 3339, UTC
            .setSummaryJson(summaryJson)
            .build();
    CompleteRunResponse response = withDeadline().completeRun(request);
    if (response.getOutcome() != Outcome.OUTCOME_ALL_WRITTEN) {
      throw new RunNotPersistedException(response);
    }
    return response;
  }

  /**
   * CompleteRun was answered, but not both records are durable. {@link #primaryError()} is the
   * failed write to act on (the manifest's when both failed).
   */
  public static final class RunNotPersistedException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final transient CompleteRunResponse response;

    public RunNotPersistedException(CompleteRunResponse response) {
      super(describe(response));
      this.response = response;
    }

    private static String describe(CompleteRunResponse response) {
      WriteStatus error = response.getPrimaryError();
      return String.format(
          "%s: %s write %s: %s (retryable=%s, location=%s)",
          response.getOutcome(),
          error.getTarget(),
          error.getCode(),
          error.getMessage(),
          error.getRetryable(),
          error.getLocation());
    }

    /** Both write statuses and the outcome. */
    public CompleteRunResponse response() {
      return response;
    }

    public Outcome outcome() {
      return response.getOutcome();
    }

    /** The failed write to act on: the manifest's when it failed, else the snapshot's. */
    public WriteStatus primaryError() {
      return response.getPrimaryError();
    }

    /**
     * Whether repeating the same CompleteRun may succeed. Repeating is always safe: the same ids
     * replace the snapshot entry and rewrite the manifest.
     */
    public boolean retryable() {
      return response.getPrimaryError().getRetryable();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // (2) Acting on a failure: retry what may succeed, give up on the rest.

  /** How often, and how patiently, {@link #completeRunWithRetry} tries. */
  public record RetryPolicy(
      int maxAttempts, Duration initialBackoff, Duration maxBackoff, double multiplier) {
    /** 5 attempts, backoff 200 ms doubling up to 5 s: at most about 3 s of sleeping. */
    public static final RetryPolicy DEFAULT =
        new RetryPolicy(5, Duration.ofMillis(200), Duration.ofSeconds(5), 2.0);

    public RetryPolicy {
      if (maxAttempts < 1) {
        throw new IllegalArgumentException("maxAttempts must be at least 1: " + maxAttempts);
      }
      if (initialBackoff.isNegative() || maxBackoff.compareTo(initialBackoff) < 0) {
        throw new IllegalArgumentException("need 0 <= initialBackoff <= maxBackoff");
      }
      if (!(multiplier >= 1.0)) {
        throw new IllegalArgumentException("multiplier must be at least 1: " + multiplier);
      }
    }
  }

  /** Told about each failed attempt that will be retried, e.g. to log it or count it. */
  @FunctionalInterface
  public interface RetryListener {
    /**
     * @param failedAttempt the number (from 1) of the attempt that failed
     * @param backoff how long the client sleeps before the next attempt
     * @param cause why the attempt failed (a RunNotPersistedException or StatusRuntimeException)
     */
    void beforeRetry(int failedAttempt, Duration backoff, RuntimeException cause);
  }

  /**
   * {@link #completeRun} until both writes are durable, retrying with exponential backoff (and
   * jitter) and the same ids while the failure is {@link #isRetryable retryable}.
   *
   * @return the response of the attempt that wrote both records
   * @throws RunNotPersistedException or StatusRuntimeException: the last failure, at once when it
   *     is not retryable, or once {@code policy.maxAttempts()} attempts have failed. Either way the
   *     run is not (fully) persisted: alert, do not drop it.
   * @throws InterruptedException if interrupted while sleeping between attempts
   */
  public CompleteRunResponse completeRunWithRetry(
      String taskId,
      String runId,
      Instant finishedAt,
      String summaryJson,
      RetryPolicy policy,
      RetryListener listener)
      throws InterruptedException {
    Duration backoff = policy.initialBackoff();
    for (int attempt = 1; ; attempt++) {
      try {
        return completeRun(taskId, runId, finishedAt, summaryJson);
      } catch (RunNotPersistedException | StatusRuntimeException failure) {
        if (!isRetryable(failure) || attempt >= policy.maxAttempts()) {
          throw failure;
        }
        // Equal jitter: sleep between half the backoff and all of it, so that orchestrators
        // failing together do not retry together.
        long half = backoff.toMillis() / 2;
        Duration sleep = Duration.ofMillis(half + ThreadLocalRandom.current().nextLong(half + 1));
        listener.beforeRetry(attempt, sleep, failure);
        Thread.sleep(sleep.toMillis());
        backoff = min(multiply(backoff, policy.multiplier()), policy.maxBackoff());
      }
    }
  }

  /**
   * Whether the same CompleteRun may succeed later: a failed write the server marks {@code
   * retryable} (database locked by another process, storage full, read-only or failing I/O), or a
   * call that failed with UNAVAILABLE (server shutting down or unreachable) or DEADLINE_EXCEEDED
   * (the writes went on; a retry is safe). Not a call that failed INVALID_ARGUMENT, nor
   * RESOURCE_EXHAUSTED (an oversized summary stays oversized; the same code also sheds load past
   * --max-in-flight, which a caller may choose to retry).
   */
  public static boolean isRetryable(RuntimeException failure) {
    if (failure instanceof RunNotPersistedException notPersisted) {
      return notPersisted.retryable();
    }
    if (failure instanceof StatusRuntimeException call) {
      Status.Code code = call.getStatus().getCode();
      return code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED;
    }
    return false;
  }

  private static Duration multiply(Duration d, double factor) {
    double millis = d.toMillis() * factor;
    return Duration.ofMillis(millis >= Long.MAX_VALUE ? Long.MAX_VALUE : (long) millis);
  }

  private static Duration min(Duration a, Duration b) {
    return a.compareTo(b) <= 0 ? a : b;
  }

  // ---------------------------------------------------------------------------------------------
  // (3) Reading a long history page by page.

  /**
   * Calls {@code action} on each of the task's runs, in the order of the instant their timestamp
   * names, reading {@code pageSize} runs per call (0: the server's default, 100; at most 1000).
   * A task with no recorded runs has none (the server's NOT_FOUND). Memory stays at one page.
   *
   * @throws StatusRuntimeException when a page cannot be read (each page has the deadline)
   */
  public void forEachRun(String taskId, int pageSize, Consumer<RunEntry> action) {
    if (pageSize < 0) {
      throw new IllegalArgumentException("pageSize must not be negative: " + pageSize);
    }
    String pageToken = "";
    do {
      GetTaskSnapshotRequest request =
          GetTaskSnapshotRequest.newBuilder()
              .setTaskId(taskId)
              .setPageSize(pageSize)
              .setPageToken(pageToken)
              .build();
      GetTaskSnapshotResponse page;
      try {
        page = withDeadline().getTaskSnapshot(request);
      } catch (StatusRuntimeException e) {
        if (pageToken.isEmpty() && e.getStatus().getCode() == Status.Code.NOT_FOUND) {
          return; // no runs recorded for this task
        }
        throw e;
      }
      page.getRunsList().forEach(action);
      String next = page.getNextPageToken();
      // The loop ends on the last page (empty token); refuse a page that would never lead there.
      if (!next.isEmpty() && (next.equals(pageToken) || page.getRunsCount() == 0)) {
        throw new IllegalStateException("runstore returned a page that makes no progress: " + next);
      }
      pageToken = next;
    } while (!pageToken.isEmpty());
  }

  /** The task's whole history, read {@code pageSize} runs per call (see {@link #forEachRun}). */
  public List<RunEntry> runHistory(String taskId, int pageSize) {
    List<RunEntry> runs = new ArrayList<>();
    forEachRun(taskId, pageSize, runs::add);
    return runs;
  }

  // ---------------------------------------------------------------------------------------------
  // (4) Following the change feed.

  /** How long {@link #watchRuns} waits for the server to take the call. */
  public static final Duration WATCH_START_TIMEOUT = Duration.ofSeconds(10);

  /**
   * Opens the change feed of tasks whose id starts with {@code taskPrefix} (literal bytes; "" for
   * all) and returns once the server has taken the call (its response headers), so a watch from
   * now ({@code after} empty) sees every change committed after this returns. With {@code after},
   * an event's cursor, it resumes exactly after that event. Keep each event's cursor once it is
   * handled, and resume from it after a failure.
   *
   * @param streamDeadline bounds the whole stream; null for none, as a long-lived watcher wants
   * @throws StatusRuntimeException DEADLINE_EXCEEDED when the server did not take the call within
   *     {@link #WATCH_START_TIMEOUT}
   */
  public RunWatch watchRuns(String taskPrefix, String after, Duration streamDeadline)
      throws InterruptedException {
    CallOptions options = CallOptions.DEFAULT;
    if (streamDeadline != null) {
      options = options.withDeadlineAfter(streamDeadline.toNanos(), TimeUnit.NANOSECONDS);
    }
    ClientCall<WatchRunsRequest, WatchRunsResponse> call =
        stub.getChannel().newCall(PersistenceServiceGrpc.getWatchRunsMethod(), options);
    RunWatch watch = new RunWatch(call);
    call.start(watch.listener(), new Metadata());
    call.sendMessage(
        WatchRunsRequest.newBuilder().setTaskPrefix(taskPrefix).setAfter(after).build());
    call.halfClose();
    call.request(1); // one event at a time: the next is asked for as this one is read
    if (!watch.started.await(WATCH_START_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS)) {
      watch.close();
      throw Status.DEADLINE_EXCEEDED
          .withDescription("WatchRuns not started within " + WATCH_START_TIMEOUT)
          .asRuntimeException();
    }
    return watch;
  }

  /**
   * An open WatchRuns stream whose every read has a bound: events are queued as they arrive (one
   * at a time, asked for as they are read, so a slow reader is flow-controlled) and {@link #next}
   * waits for one at most its timeout. End it with {@link #cancel} or {@link #close}.
   */
  public static final class RunWatch implements AutoCloseable {
    /** A received event, or the stream's end (its status and trailers). */
    private record Item(RunEvent event, Status end, Metadata trailers) {}

    private final ClientCall<WatchRunsRequest, WatchRunsResponse> call;
    private final BlockingQueue<Item> items = new LinkedBlockingQueue<>();
    private final CountDownLatch started = new CountDownLatch(1);
    private final CountDownLatch ended = new CountDownLatch(1);
    private volatile Status end;

    private RunWatch(ClientCall<WatchRunsRequest, WatchRunsResponse> call) {
      this.call = call;
    }

    private ClientCall.Listener<WatchRunsResponse> listener() {
      return new ClientCall.Listener<>() {
        @Override
        public void onHeaders(Metadata headers) {
          started.countDown(); // the server has taken the call
        }

        @Override
        public void onMessage(WatchRunsResponse response) {
          items.add(new Item(response.getEvent(), null, null));
        }

        @Override
        public void onClose(Status status, Metadata trailers) {
          end = status;
          items.add(new Item(null, status, trailers));
          started.countDown();
          ended.countDown();
        }
      };
    }

    /**
     * The next event, waiting at most {@code timeout}; empty when none came (the stream goes on).
     *
     * @throws StatusRuntimeException once the stream has ended: INVALID_ARGUMENT for a malformed
     *     cursor, OUT_OF_RANGE when events after it were pruned, ABORTED for a watcher that fell
     *     behind and UNAVAILABLE at server shutdown (both with the cursor to resume after in the
     *     description), CANCELLED after {@link #cancel}
     */
    public Optional<RunEvent> next(Duration timeout) throws InterruptedException {
      Item item = items.poll(Math.max(0, timeout.toNanos()), TimeUnit.NANOSECONDS);
      if (item == null) {
        return Optional.empty();
      }
      if (item.end() != null) {
        items.add(item); // the end stays the end for later reads
        throw item.end().asRuntimeException(item.trailers());
      }
      synchronized (call) {
        call.request(1);
      }
      return Optional.of(item.event());
    }

    /**
     * The next {@code count} events, all within {@code timeout}.
     *
     * @throws TimeoutException when fewer came in time
     * @throws StatusRuntimeException when the stream ended first (see {@link #next})
     */
    public List<RunEvent> take(int count, Duration timeout)
        throws InterruptedException, TimeoutException {
      long deadline = System.nanoTime() + timeout.toNanos();
      List<RunEvent> events = new ArrayList<>();
      while (events.size() < count) {
        Optional<RunEvent> event = next(Duration.ofNanos(deadline - System.nanoTime()));
        if (event.isEmpty()) {
          throw new TimeoutException(
              "WatchRuns: " + events.size() + " of " + count + " events within " + timeout);
        }
        events.add(event.get());
      }
      return events;
    }

    /**
     * Cancels the call (if it is still running) and waits, at most {@code wait}, for it to end.
     *
     * @return how the stream ended: CANCELLED for a watch cancelled here
     * @throws TimeoutException when it did not end in time
     */
    public Status cancel(Duration wait) throws InterruptedException, TimeoutException {
      synchronized (call) {
        call.cancel("cancelled by the watcher", null);
      }
      if (!ended.await(wait.toMillis(), TimeUnit.MILLISECONDS)) {
        throw new TimeoutException("WatchRuns did not end within " + wait + " of cancel");
      }
      return end;
    }

    /** Cancels the call without waiting for it to end. */
    @Override
    public void close() {
      synchronized (call) {
        call.cancel("closed by the watcher", null);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // An orchestrator's end-of-run hook, as a command-line tool:
  //
  //   java -cp CLASSPATH dev.runstore.interop.RunstoreClient \
  //       HOST:PORT TASK_ID RUN_ID TIMESTAMP SUMMARY.json
  //
  // Exit codes: 0 recorded, 75 (EX_TEMPFAIL) retries ran out on a retryable failure, 1 any other
  // failure, 2 usage.

  public static void main(String[] args) throws IOException, InterruptedException {
    System.exit(run(args));
  }

  static int run(String[] args) throws IOException, InterruptedException {
    if (args.length != 5) {
      System.err.println("usage: RunstoreClient HOST:PORT TASK_ID RUN_ID TIMESTAMP SUMMARY.json");
      return 2;
    }
    String target = args[0];
    String taskId = args[1];
    String runId = args[2];
    Instant finishedAt = Instant.parse(args[3]);
    String summaryJson = Files.readString(Path.of(args[4])); // the exact text, never re-serialised

    ManagedChannel channel =
        Grpc.newChannelBuilder(target, InsecureChannelCredentials.create()).build();
    try {
      RunstoreClient runstore = new RunstoreClient(channel, Duration.ofSeconds(10));
      CompleteRunResponse written =
          runstore.completeRunWithRetry(
              taskId, runId, finishedAt, summaryJson, RetryPolicy.DEFAULT,
              (attempt, backoff, cause) ->
                  System.err.printf(
                      "attempt %d failed, retrying in %s: %s%n", attempt, backoff, cause));
      System.out.println("manifest: " + written.getManifest().getLocation());
      System.out.println("snapshot: " + written.getSnapshot().getLocation());
      return 0;
    } catch (RunNotPersistedException e) {
      // A write failed and retrying did not help (or cannot): alert, keep the summary.
      System.err.println("ALERT: run not persisted: " + e.getMessage());
      return e.retryable() ? 75 : 1;
    } catch (StatusRuntimeException e) {
      // INVALID_ARGUMENT: a bug in the request, nothing was written. Others: see completeRun.
      System.err.println("ALERT: CompleteRun failed: " + e.getStatus());
      return isRetryable(e) ? 75 : 1;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }
}
