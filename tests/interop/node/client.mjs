// Example client: how a Node/TypeScript orchestrator calls runstore.
//
//   import { RunstoreClient } from "./client.mjs";
//   const client = new RunstoreClient("127.0.0.1:50051");
//   await client.completeRunWithRetry({ taskId, runId, timestamp, summaryJson });
//   for await (const run of client.runs({ taskId })) console.log(run.runId);
//   const watch = await client.watchRuns({ taskPrefix: "nightly-" });
//   const event = await watch.next(60_000); // { cursor, kind, taskId, runId, timestamp, recordedAt }
//
// Run directly to record one summary file (taskId, runId and timestamp are
// taken from the file):  node client.mjs 127.0.0.1:50051 run-summary.json
import { readFileSync } from "node:fs";
import { setTimeout as sleepMs } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const HERE = fileURLToPath(new URL(".", import.meta.url));
export const PROTO_ROOT = fileURLToPath(new URL("../../../proto", import.meta.url));

// camelCase field names; uint64 fields (durationMicros, bytes) as strings so
// they never lose precision; enums as their names; unset messages as null.
export const LOADER_OPTIONS = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

function load(file, includeDirs) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs }));
}

const { PersistenceService } = load("orchestrator/persistence/v1/persistence.proto", [PROTO_ROOT])
  .orchestrator.persistence.v1;
const { Health } = load("health.proto", [HERE]).grpc.health.v1;

export const PERSISTENCE_SERVICE = "orchestrator.persistence.v1.PersistenceService";

/**
 * CompleteRun was answered, but not every write is durable. `error` is the
 * response's primaryError: the failed write to act on (the manifest's when
 * both failed).
 */
export class RunNotPersistedError extends Error {
  constructor(response) {
    const e = response.primaryError;
    super(`run not persisted (${response.outcome}): ${e.target} ${e.code}: ${e.message} (location ${e.location})`);
    this.name = "RunNotPersistedError";
    this.response = response;
    this.error = e;
    this.retryable = e.retryable; // retrying the same CompleteRun may succeed
    this.attempts = 1; // calls made
  }
}

/** RunWatch.next found no event within its timeout; the stream goes on. */
export class WatchTimeoutError extends Error {
  constructor(timeoutMs) {
    super(`no WatchRuns event within ${timeoutMs} ms`);
    this.name = "WatchTimeoutError";
  }
}

/**
 * An open WatchRuns stream whose every read has a bound: events are queued
 * as they arrive and `next` waits for one at most its timeout. Open it with
 * RunstoreClient.watchRuns; end it with `close`, which cancels the call.
 */
export class RunWatch {
  #call;
  #events = []; // received, not yet read
  #ended = null; // the stream's end: the grpc-js error (code, details)
  #wake = () => {};

  constructor(call) {
    this.#call = call;
    // The response headers: the server has taken the call.
    this.started = new Promise((resolve) => {
      call.once("metadata", resolve);
      call.once("status", resolve);
    });
    call.on("data", (response) => {
      this.#events.push(response.event);
      this.#wake();
    });
    call.on("error", (err) => {
      this.#ended ??= err;
      this.#wake();
    });
    call.on("status", (status) => {
      this.#ended ??= Object.assign(new Error(`WatchRuns ended: ${status.details}`), status);
      this.#wake();
    });
  }

  /** Waits until something happens on the stream, or `ms` pass. */
  #wait(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /**
   * The next event, waiting at most `timeoutMs`: throws WatchTimeoutError
   * when none came (the stream goes on), and the grpc-js error once the
   * stream has ended: INVALID_ARGUMENT (3) for a malformed cursor,
   * OUT_OF_RANGE (11) when events after it were pruned, ABORTED (10) for a
   * watcher that fell behind and UNAVAILABLE (14) at server shutdown, both
   * with the cursor to resume after in `details`; CANCELLED (1) after close.
   */
  async next(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (this.#events.length === 0) {
      if (this.#ended) throw this.#ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new WatchTimeoutError(timeoutMs);
      await this.#wait(left);
    }
    return this.#events.shift();
  }

  /** The next `count` events, all within `timeoutMs`. */
  async take(count, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    const events = [];
    while (events.length < count) events.push(await this.next(deadline - Date.now()));
    return events;
  }

  /**
   * Cancels the call (if it is still running) and waits, at most
   * `timeoutMs`, for it to end; resolves with its final code (CANCELLED, 1,
   * for a watch ended here).
   */
  async close(timeoutMs = 10_000) {
    this.#call.cancel();
    const deadline = Date.now() + timeoutMs;
    while (!this.#ended) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`WatchRuns did not end within ${timeoutMs} ms of cancel`);
      await this.#wait(left);
    }
    return this.#ended.code;
  }
}

export class RunstoreClient {
  constructor(address, { credentials = grpc.credentials.createInsecure(), deadlineMs = 10_000 } = {}) {
    this.deadlineMs = deadlineMs;
    this.service = new PersistenceService(address, credentials);
    // Share the channel: the health client is only a second stub on it.
    this.healthService = new Health(address, credentials, { channelOverride: this.service.getChannel() });
  }

  // Promisified unary call with a deadline (ms since the epoch; default
  // deadlineMs from now). Rejects with the grpc-js error (err.code is a
  // grpc.status number, err.details the server's message).
  #call(stub, method, request, deadline = Date.now() + this.deadlineMs) {
    return new Promise((resolve, reject) =>
      stub[method](request, { deadline }, (err, res) => (err ? reject(err) : resolve(res))),
    );
  }

  /**
   * Records a completed run in one call. Resolves with the response when
   * both the snapshot and the manifest are durable (OUTCOME_ALL_WRITTEN);
   * throws RunNotPersistedError (with .retryable and .response) otherwise.
   */
  async completeRun({ taskId, runId, timestamp, summaryJson }, { deadline } = {}) {
    const res = await this.#call(this.service, "completeRun", { taskId, runId, timestamp, summaryJson }, deadline);
    if (res.outcome !== "OUTCOME_ALL_WRITTEN") throw new RunNotPersistedError(res);
    return res;
  }

  /**
   * Records a run at its end, retrying while runstore says a retry may
   * succeed. `deadlineMs` is the deadline of the whole call: every attempt
   * and every wait between them. A retry sends the same ids, so it replaces
   * the snapshot entry and rewrites the manifest; nothing is recorded twice.
   * Waits double from `baseDelayMs` up to `maxDelayMs`, each jittered to
   * between half and all of that, so callers that failed together do not
   * retry together. `sleep` is there so tests can watch the waits.
   *
   * Resolves with the response once both writes are durable. Otherwise
   * throws the error to alert on: RunNotPersistedError when primaryError is
   * not retryable, the attempts are used up, or the next attempt would start
   * after the deadline; the grpc-js error at once when a call itself failed
   * (INVALID_ARGUMENT, DEADLINE_EXCEEDED, UNAVAILABLE, ...).
   */
  async completeRunWithRetry(
    run,
    { deadlineMs = 30_000, attempts = 5, baseDelayMs = 200, maxDelayMs = 5_000, sleep = sleepMs } = {},
  ) {
    const deadline = Date.now() + deadlineMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.completeRun(run, { deadline });
      } catch (err) {
        if (!(err instanceof RunNotPersistedError)) throw err;
        err.attempts = attempt;
        const delay = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
        if (!err.retryable || attempt >= attempts || Date.now() + delay >= deadline) throw err;
        await sleep(delay);
      }
    }
  }

  getManifest({ taskId, runId }) {
    return this.#call(this.service, "getManifest", { taskId, runId });
  }

  getTaskSnapshot({ taskId, pageSize = 0, pageToken = "" }) {
    return this.#call(this.service, "getTaskSnapshot", { taskId, pageSize, pageToken });
  }

  /**
   * Yields every run of a task's history, oldest first, one page per call:
   * a GetTaskSnapshot of at most `pageSize` runs, each with its own
   * deadline, asking for the next page with nextPageToken until that is
   * empty. Throws the grpc-js error, e.g. NOT_FOUND (code 5) when the task
   * has no recorded runs.
   */
  async *runs({ taskId, pageSize = 100 }) {
    let pageToken = "";
    do {
      const page = await this.getTaskSnapshot({ taskId, pageSize, pageToken });
      yield* page.runs;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /**
   * Removes a run (its snapshot entry and manifest, in one transaction).
   * Resolves with CompleteRun's shape plus `found`, whether there was
   * anything to remove; deleting what does not exist succeeds.
   */
  deleteRun({ taskId, runId }) {
    return this.#call(this.service, "deleteRun", { taskId, runId });
  }

  /**
   * Opens the change feed of tasks whose id starts with `taskPrefix`
   * (literal bytes; "" for all) and resolves once the server has taken the
   * call (its response headers), so a watch from now (no `after`) sees
   * every change committed after this resolves. With `after`, an event's
   * cursor, it resumes exactly after that event. `deadline` (ms since the
   * epoch) bounds the whole stream: none by default, as a long-lived
   * watcher wants. Keep each event's cursor once it is handled, and resume
   * from it after a failure.
   */
  async watchRuns({ taskPrefix = "", after = "" } = {}, { deadline = Infinity, startTimeoutMs = 10_000 } = {}) {
    const watch = new RunWatch(this.service.watchRuns({ taskPrefix, after }, { deadline }));
    let timer;
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => resolve(true), startTimeoutMs);
    });
    const late = await Promise.race([watch.started.then(() => false), timedOut]);
    clearTimeout(timer);
    if (late) {
      await watch.close();
      throw new Error(`WatchRuns not started within ${startTimeoutMs} ms`);
    }
    return watch;
  }

  /** grpc.health.v1 Check: resolves with "SERVING", "NOT_SERVING", ... */
  async health(service = "") {
    return (await this.#call(this.healthService, "check", { service })).status;
  }

  close() {
    this.service.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [address, file] = process.argv.slice(2);
  if (!address || !file) {
    console.error("usage: node client.mjs HOST:PORT SUMMARY.json");
    process.exit(2);
  }
  // The summary is sent as the exact text of the file: never JSON.parse and
  // re-stringify it (integers above 2^53 would be corrupted). Only the ids
  // and timestamp are read out of it.
  const summaryJson = readFileSync(file, "utf8");
  const { taskId, runId, timestamp } = JSON.parse(summaryJson);
  const client = new RunstoreClient(address);
  try {
    const res = await client.completeRunWithRetry({ taskId, runId, timestamp, summaryJson }, { deadlineMs: 30_000 });
    console.log(`${res.outcome}: manifest ${res.manifest.location}, snapshot ${res.snapshot.location}`);
  } catch (err) {
    // Given up: not retryable, still failing, or the call failed. Alert with what and where.
    const attempts = err instanceof RunNotPersistedError ? ` after ${err.attempts} attempt(s)` : "";
    console.error(`run ${taskId}/${runId} not persisted${attempts}: ${err.message}`);
    process.exitCode = err.retryable ? 75 : 1; // 75, EX_TEMPFAIL: worth running again later
  } finally {
    client.close();
  }
}
