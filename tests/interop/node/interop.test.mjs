// Black-box interop test: the real runstore server, called from Node over
// a real gRPC channel with @grpc/grpc-js.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { PERSISTENCE_SERVICE, RunNotPersistedError, RunstoreClient, WatchTimeoutError } from "./client.mjs";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const REPO = fileURLToPath(new URL("../../..", import.meta.url));
const RUNSTORE_BIN = process.env.RUNSTORE_BIN ?? join(REPO, "target/release/runstore");
const FIXTURE = join(REPO, "tests/fixtures/run-summary.json");
const TIMESTAMP = "2026-01-05T19:26:37.274Z";

const text = readFileSync(FIXTURE, "utf8");
const { taskId, runId } = JSON.parse(text); // ids only; the summary itself is never parsed
const run = { taskId, runId, timestamp: TIMESTAMP, summaryJson: text };

let server, serverExit, dataDir, address, client;
const logs = []; // every server stdout/stderr line, shown when something fails

/** Resolves when `promise` settles; rejects after `ms` with `what` in the message. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms\n${logs.join("\n")}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "runstore-node-"));
  server = spawn(RUNSTORE_BIN, ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  serverExit = new Promise((resolve) => server.once("exit", (code, signal) => resolve({ code, signal })));
  // Never outlive the test process, even when the test runner stops it early.
  process.once("exit", () => {
    server.kill("SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });
  for (const sig of ["SIGINT", "SIGTERM"]) process.once(sig, () => process.exit(128 + constants.signals[sig]));
  createInterface({ input: server.stderr }).on("line", (line) => logs.push(line));

  // Read JSON log lines until "listening"; the reader keeps draining stdout after.
  const addr = new Promise((resolve, reject) => {
    createInterface({ input: server.stdout }).on("line", (line) => {
      logs.push(line);
      try {
        const entry = JSON.parse(line);
        if (entry.message === "listening") resolve(entry.addr);
      } catch {} // skip any line that is not JSON
    });
    server.once("error", reject);
    serverExit.then(({ code, signal }) => reject(new Error(`server exited early (${code ?? signal})\n${logs.join("\n")}`)));
  });
  address = await within(30_000, "server start-up", addr);
  client = new RunstoreClient(address);
});

after(async () => {
  client?.close();
  if (server && server.exitCode === null && server.signalCode === null) {
    server.kill("SIGTERM");
    try {
      const { code, signal } = await within(30_000, "shutdown after SIGTERM", serverExit);
      assert.equal(code, 0, `server exit: code ${code}, signal ${signal}\n${logs.join("\n")}`);
    } catch (err) {
      server.kill("SIGKILL");
      throw err;
    }
  }
});

test("health: SERVING for the server and for PersistenceService", async () => {
  // PersistenceService (readiness) is NOT_SERVING briefly at start, until the
  // first storage probe write succeeds; "" (liveness) is SERVING from the
  // start. Watch each, with a deadline, until SERVING.
  for (const service of ["", PERSISTENCE_SERVICE]) {
    const watch = client.healthService.watch({ service }, { deadline: Date.now() + 10_000 });
    try {
      for await (const { status } of watch) if (status === "SERVING") break;
    } finally {
      watch.cancel();
    }
    assert.equal(await client.health(service), "SERVING", `health of "${service}"`);
  }
});

test("CompleteRun writes the snapshot and the manifest", async () => {
  const res = await client.completeRun(run);
  assert.equal(res.outcome, "OUTCOME_ALL_WRITTEN");
  for (const [status, target] of [
    [res.snapshot, "WRITE_TARGET_SNAPSHOT"],
    [res.manifest, "WRITE_TARGET_MANIFEST"],
  ]) {
    assert.equal(status.target, target);
    assert.equal(status.state, "WRITE_STATE_WRITTEN");
    assert.equal(status.code, "OK");
  }
  assert.equal(res.primaryError, null);
  assert.equal(res.manifest.bytes, String(Buffer.byteLength(text))); // uint64 as a string
});

test("GetManifest returns the summary byte for byte", async () => {
  const m = await client.getManifest({ taskId, runId });
  assert.equal(m.taskId, taskId);
  assert.equal(m.runId, runId);
  assert.deepEqual(Buffer.from(m.summaryJson, "utf8"), Buffer.from(text, "utf8"));
  assert.equal(m.sha256, createHash("sha256").update(text, "utf8").digest("hex"));
  assert.ok(m.summaryJson.includes("ünïcödé"));

  // An integer above 2^53 survives literally; JSON.parse would have rounded
  // it, which is why the service stores the summary as a string.
  const big = text.match(/\d{16,}/g)?.find((n) => BigInt(n) > 2n ** 53n);
  assert.ok(big, "the fixture carries an integer above 2^53");
  assert.notEqual(String(Number(big)), big);
  assert.ok(m.summaryJson.includes(big));
});

test("GetTaskSnapshot lists the run", async () => {
  const snap = await client.getTaskSnapshot({ taskId });
  assert.equal(snap.taskId, taskId);
  assert.equal(snap.lastRunAt, TIMESTAMP);
  assert.equal(snap.nextPageToken, "");
  assert.equal(snap.runs.length, 1);
  assert.equal(snap.runs[0].runId, runId);
  assert.equal(snap.runs[0].timestamp, TIMESTAMP);
  assert.ok(Buffer.from(snap.runs[0].summaryJson, "utf8").equals(Buffer.from(text, "utf8")));
});

// The server's default --max-summary-bytes: 4 MiB - 64 KiB, so that a
// manifest at the limit, and a snapshot page holding it, fit the 4 MiB
// default receive limit of gRPC clients.
const DEFAULT_MAX_SUMMARY_BYTES = 4 * 1024 * 1024 - 64 * 1024;

/** A JSON object of exactly `size` bytes carrying the ids: {"taskId":…,"runId":…,"padding":"xxx…"}. */
function summaryOfSize(taskId, runId, size) {
  const head = `${JSON.stringify({ taskId, runId }).slice(0, -1)},"padding":"`;
  const tail = '"}';
  assert.ok(size >= head.length + tail.length);
  return head + "x".repeat(size - head.length - tail.length) + tail;
}

test("the largest summary reads back with default limits; one byte more is RESOURCE_EXHAUSTED", async (t) => {
  // `client` is a RunstoreClient, which sets no grpc.max_receive_message_length:
  // grpc-js at its default limits (4 MiB receive; send unlimited, -1). The
  // server runs with its default --max-summary-bytes.
  const taskId = "node-largest";
  const deadline = Date.now() + 60_000;
  const summaryJson = summaryOfSize(taskId, "at-limit", DEFAULT_MAX_SUMMARY_BYTES);
  assert.equal(Buffer.byteLength(summaryJson), DEFAULT_MAX_SUMMARY_BYTES);
  const res = await client.completeRun({ taskId, runId: "at-limit", timestamp: TIMESTAMP, summaryJson }, { deadline });
  assert.equal(res.snapshot.state, "WRITE_STATE_WRITTEN");
  assert.equal(res.manifest.state, "WRITE_STATE_WRITTEN");

  const m = await client.getManifest({ taskId, runId: "at-limit" });
  assert.ok(Buffer.from(m.summaryJson, "utf8").equals(Buffer.from(summaryJson, "utf8")), "GetManifest byte for byte");
  const snap = await client.getTaskSnapshot({ taskId, pageSize: 1 });
  assert.deepEqual(snap.runs.map((r) => r.runId), ["at-limit"]);
  assert.ok(Buffer.from(snap.runs[0].summaryJson, "utf8").equals(Buffer.from(summaryJson, "utf8")), "GetTaskSnapshot byte for byte");
  const sizes = client.service.constructor.service; // the stub's (de)serialisers
  t.diagnostic(`GetManifest reply ${sizes.GetManifest.responseSerialize(m).length} bytes, ` +
    `GetTaskSnapshot reply ${sizes.GetTaskSnapshot.responseSerialize(snap).length} bytes`);

  // One byte more: the server refuses it, naming its limit, and writes nothing.
  const over = summaryOfSize(taskId, "over-limit", DEFAULT_MAX_SUMMARY_BYTES + 1);
  await assert.rejects(
    client.completeRun({ taskId, runId: "over-limit", timestamp: TIMESTAMP, summaryJson: over }, { deadline }),
    (err) => {
      assert.equal(err.code, 8); // grpc.status.RESOURCE_EXHAUSTED
      assert.ok(err.details.includes(String(DEFAULT_MAX_SUMMARY_BYTES)), err.details);
      return true;
    },
  );
  await assert.rejects(client.getManifest({ taskId, runId: "over-limit" }), (err) => err.code === 5); // NOT_FOUND
});

test("an invalid task id is INVALID_ARGUMENT, and the server keeps serving", async () => {
  await assert.rejects(
    client.completeRun({ taskId: "../escape", runId: "r1", timestamp: TIMESTAMP, summaryJson: "{}" }),
    (err) => {
      assert.equal(err.code, 3); // grpc.status.INVALID_ARGUMENT
      assert.match(err.details, /task_id/);
      return true;
    },
  );
  const res = await client.completeRun({
    taskId: "node-after-invalid",
    runId: "r1",
    timestamp: TIMESTAMP,
    summaryJson: '{"taskId":"node-after-invalid","runId":"r1"}',
  });
  assert.equal(res.outcome, "OUTCOME_ALL_WRITTEN");
});

// --- The client helpers the README quotes -----------------------------------

test("README: every JavaScript block before \"Running the tests\" is client.mjs code, verbatim", () => {
  const [calling] = readFileSync(join(HERE, "README.md"), "utf8").split("\n## Running the tests");
  const source = readFileSync(join(HERE, "client.mjs"), "utf8");
  const blocks = [...calling.matchAll(/^```js\n(.*?)^```$/gms)].map((m) => m[1]);
  assert.ok(blocks.length >= 3, `${blocks.length} blocks`);
  const indent = (block, n) => block.replace(/^(?=.)/gm, " ".repeat(n));
  for (const block of blocks) assert.ok([0, 2, 4].some((n) => source.includes(indent(block, n))), block);
  for (const name of ["async completeRunWithRetry(", "async *runs("]) {
    assert.ok(blocks.some((b) => b.includes(name)), name);
  }
});

/** A client on the test server whose completeRun / getTaskSnapshot calls are recorded. */
function spied() {
  const c = new RunstoreClient(address);
  const calls = { completeRun: [], getTaskSnapshot: [] };
  for (const method of Object.keys(calls)) {
    const real = c[method].bind(c);
    c[method] = (...args) => {
      calls[method].push(args);
      return real(...args);
    };
  }
  return { client: c, calls };
}

/** A client whose completeRun answers from `replies` (the last repeats), recording its calls. */
function scripted(replies) {
  const c = new RunstoreClient("127.0.0.1:1"); // never connected
  const calls = [];
  c.completeRun = async (request, options) => {
    calls.push({ request, options });
    const res = replies.length > 1 ? replies.shift() : replies[0];
    if (res.outcome !== "OUTCOME_ALL_WRITTEN") throw new RunNotPersistedError(res);
    return res;
  };
  return { client: c, calls };
}

function failed(code = "UNAVAILABLE", retryable = true) {
  const manifest = {
    target: "WRITE_TARGET_MANIFEST", state: "WRITE_STATE_FAILED", code, message: "injected", retryable,
    location: "manifests/t/r",
  };
  const snapshot = { target: "WRITE_TARGET_SNAPSHOT", state: "WRITE_STATE_WRITTEN", code: "OK" };
  return { snapshot, manifest, outcome: "OUTCOME_MANIFEST_FAILED", primaryError: manifest };
}

const WRITTEN_REPLY = { outcome: "OUTCOME_ALL_WRITTEN", primaryError: null };

const noSleep = async (ms) => assert.fail(`retried (waited ${ms} ms) where it should not have`);

/**
 * Makes every manifest write of `task` fail for good: triggers that RAISE on
 * INSERT and UPDATE of its `manifests` rows, created in the running server's
 * database with the sqlite3 command (tests/interop/node/run installs it). The
 * server sees them on its next statement; a RAISE is a constraint failure,
 * so the manifest write is FAILED_PRECONDITION, not retryable, and the
 * snapshot is still written.
 */
async function blockManifests(task) {
  const sql = ["INSERT", "UPDATE"]
    .map((event) =>
      `CREATE TRIGGER "doomed_manifests_${event.toLowerCase()}_${task}" BEFORE ${event} ON manifests ` +
      `WHEN NEW.task_id = '${task}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END;`)
    .join("\n");
  await promisify(execFile)("sqlite3", ["-bail", "-cmd", ".timeout 5000", join(dataDir, "runstore.db"), sql], {
    timeout: 10_000,
  });
}

test("completeRunWithRetry: resolves at once when both writes are durable", async () => {
  const { client: c, calls } = spied();
  try {
    const start = Date.now();
    const res = await c.completeRunWithRetry(run, { sleep: noSleep });
    const end = Date.now();
    assert.equal(res.outcome, "OUTCOME_ALL_WRITTEN");
    assert.equal(calls.completeRun.length, 1);
    const [request, { deadline }] = calls.completeRun[0];
    assert.deepEqual(request, run);
    assert.ok(start + 30_000 <= deadline && deadline <= end + 30_000, `deadline ${deadline}`);
  } finally {
    c.close();
  }
});

test("completeRunWithRetry: throws at once on a write that is not retryable", async () => {
  await blockManifests("node-blocked");
  const { client: c, calls } = spied();
  try {
    const blocked = { taskId: "node-blocked", runId: "r1", timestamp: TIMESTAMP, summaryJson: "{}" };
    await assert.rejects(c.completeRunWithRetry(blocked, { sleep: noSleep }), (err) => {
      assert.ok(err instanceof RunNotPersistedError, err.message);
      assert.equal(err.response.outcome, "OUTCOME_MANIFEST_FAILED");
      assert.equal(err.error.target, "WRITE_TARGET_MANIFEST");
      assert.equal(err.error.code, "FAILED_PRECONDITION");
      assert.equal(err.error.location, "manifests/node-blocked/r1");
      assert.match(err.error.message, /injected fault/);
      assert.equal(err.response.snapshot.state, "WRITE_STATE_WRITTEN");
      assert.equal(err.response.snapshot.location, "snapshot_entries/node-blocked/r1");
      assert.equal(err.retryable, false);
      assert.equal(err.attempts, 1);
      return true;
    });
    assert.equal(calls.completeRun.length, 1);
  } finally {
    c.close();
  }
});

test("completeRunWithRetry: throws at once on INVALID_ARGUMENT", async () => {
  const { client: c, calls } = spied();
  try {
    const bad = { taskId: "a/b", runId: "r1", timestamp: TIMESTAMP, summaryJson: "{}" };
    await assert.rejects(c.completeRunWithRetry(bad, { sleep: noSleep }), (err) => {
      assert.equal(err.code, 3); // grpc.status.INVALID_ARGUMENT
      assert.match(err.details, /task_id/);
      return true;
    });
    assert.equal(calls.completeRun.length, 1);
  } finally {
    c.close();
  }
});

test("completeRunWithRetry: passes its deadline (one that passed a second ago is DEADLINE_EXCEEDED)", async () => {
  // grpc-js fails a call whose deadline has passed without sending it.
  const { client: c, calls } = spied();
  try {
    await assert.rejects(c.completeRunWithRetry(run, { deadlineMs: -1000, sleep: noSleep }), (err) => {
      assert.equal(err.code, 4); // grpc.status.DEADLINE_EXCEEDED
      return true;
    });
    assert.equal(calls.completeRun.length, 1);
  } finally {
    c.close();
  }
});

test("completeRunWithRetry: backs off exponentially, with the same request and one deadline", async () => {
  const { client: c, calls } = scripted([failed(), failed("RESOURCE_EXHAUSTED"), WRITTEN_REPLY]);
  const waits = [];
  try {
    const res = await c.completeRunWithRetry(run, { baseDelayMs: 200, sleep: async (ms) => waits.push(ms) });
    assert.equal(res, WRITTEN_REPLY);
    assert.equal(calls.length, 3);
    for (const call of calls) {
      assert.deepEqual(call.request, run);
      assert.equal(call.options.deadline, calls[0].options.deadline);
    }
    // Jittered to between half and all of 200 ms, then 400 ms.
    assert.equal(waits.length, 2);
    assert.ok(waits[0] >= 100 && waits[0] <= 200, `${waits}`);
    assert.ok(waits[1] >= 200 && waits[1] <= 400, `${waits}`);
  } finally {
    c.close();
  }
});

test("completeRunWithRetry: gives up after its attempts", async () => {
  const { client: c, calls } = scripted([failed()]);
  const waits = [];
  try {
    const options = { attempts: 4, baseDelayMs: 200, maxDelayMs: 300, sleep: async (ms) => waits.push(ms) };
    await assert.rejects(c.completeRunWithRetry(run, options), (err) => {
      assert.ok(err instanceof RunNotPersistedError);
      assert.equal(err.retryable, true);
      assert.equal(err.attempts, 4);
      return true;
    });
    assert.equal(calls.length, 4);
    assert.equal(waits.length, 3);
    assert.ok(waits[0] >= 100 && waits[0] <= 200, `${waits}`);
    assert.ok(waits.slice(1).every((ms) => ms >= 150 && ms <= 300), `capped: ${waits}`);
  } finally {
    c.close();
  }
});

test("completeRunWithRetry: gives up when the next attempt would miss the deadline", async () => {
  const { client: c, calls } = scripted([failed()]);
  try {
    const options = { deadlineMs: 1_000, baseDelayMs: 10_000, sleep: noSleep };
    await assert.rejects(
      c.completeRunWithRetry(run, options),
      (err) => err instanceof RunNotPersistedError && err.retryable,
    );
    assert.equal(calls.length, 1);
  } finally {
    c.close();
  }
});

test("runs(): reads a history longer than a page, every run once, in timestamp order", async () => {
  const task = "node-paged";
  const stamps = [0, 1, 2, 3, 4].map((i) => `2026-01-05T19:26:3${i}.000Z`);
  for (const i of [3, 0, 4, 1, 2]) {
    // recorded out of order; read back by timestamp
    const runId = `run-${i}`;
    await client.completeRunWithRetry({
      taskId: task, runId, timestamp: stamps[i], summaryJson: JSON.stringify({ taskId: task, runId }),
    });
  }
  const { client: c, calls } = spied();
  try {
    const seen = [];
    for await (const r of c.runs({ taskId: task, pageSize: 2 })) {
      seen.push([r.runId, r.timestamp]);
      if (seen.length === 10) break; // a client that lost its page token would repeat page 1 forever
    }
    assert.deepEqual(seen, stamps.map((ts, i) => [`run-${i}`, ts]));
    const pages = calls.getTaskSnapshot.map(([request]) => request);
    assert.deepEqual(pages.map((p) => p.pageSize), [2, 2, 2]);
    assert.equal(pages[0].pageToken, "");
    assert.ok(pages[1].pageToken && pages[2].pageToken && pages[1].pageToken !== pages[2].pageToken);
  } finally {
    c.close();
  }
});

test("runs(): an unknown task is NOT_FOUND", async () => {
  const pages = client.runs({ taskId: "node-never-ran" });
  await assert.rejects(pages.next(), (err) => err.code === 5); // grpc.status.NOT_FOUND
});

/** client.mjs as a command, with a bounded wait: { code, stdout, stderr }. */
async function cli(...args) {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [join(HERE, "client.mjs"), ...args], {
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    if (typeof err.code !== "number") throw err; // killed at the timeout, or did not start
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test("client.mjs as a command records the fixture", async () => {
  const { code, stdout, stderr } = await cli(address, FIXTURE);
  assert.equal(code, 0, stderr);
  assert.match(stdout, new RegExp(`^OUTCOME_ALL_WRITTEN: manifest manifests/${taskId}/${runId}, snapshot snapshot_entries/${taskId}/${runId}$`, "m"));
});

test("client.mjs as a command alerts when the run is not persisted", async () => {
  await blockManifests("node-cli-blocked");
  const dir = mkdtempSync(join(tmpdir(), "runstore-node-cli-"));
  const file = join(dir, "run-summary.json");
  writeFileSync(file, JSON.stringify({ taskId: "node-cli-blocked", runId: "r1", timestamp: TIMESTAMP }));
  try {
    const { code, stderr } = await cli(address, file);
    assert.equal(code, 1);
    assert.match(stderr, /^run node-cli-blocked\/r1 not persisted after 1 attempt\(s\): .*FAILED_PRECONDITION/);
    assert.match(stderr, /manifests\/node-cli-blocked\/r1/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// --- WatchRuns: the change feed ----------------------------------------------

const WATCH_WAIT_MS = 30_000; // for the events a test expects
const QUIET_WAIT_MS = 500; // in which no further event may arrive
const STREAM_BUDGET_MS = 60_000; // the deadline of each WatchRuns stream

const described = (events) => events.map((e) => [e.kind, e.taskId, e.runId, e.timestamp]);

test("WatchRuns: follows changes in commit order, then resumes exactly after a cursor", async () => {
  const prefix = `node-watch-${randomUUID().slice(0, 12)}-`;
  const task = `${prefix}task`;
  const other = `${prefix.slice(0, -1)}_other`; // all of the prefix but its last byte: outside it
  const stamps = { r1: "2026-01-05T19:26:37.274Z", r2: "2026-01-05T19:30:00+01:00" };

  // From now: watchRuns resolves once the server has taken the call.
  const watch = await client.watchRuns({ taskPrefix: prefix }, { deadline: Date.now() + STREAM_BUDGET_MS });
  let events, closed;
  try {
    const runs = [[task, "r1", stamps.r1], [task, "r2", stamps.r2], [other, "r1", stamps.r1]];
    for (const [taskId, runId, timestamp] of runs) {
      await client.completeRun({ taskId, runId, timestamp, summaryJson: JSON.stringify({ taskId, runId }) });
    }
    const deleted = await client.deleteRun({ taskId: task, runId: "r1" });
    assert.equal(deleted.outcome, "OUTCOME_ALL_WRITTEN");
    assert.equal(deleted.found, true);

    events = await watch.take(3, WATCH_WAIT_MS);
    // Exactly three: nothing of the other task.
    await assert.rejects(watch.next(QUIET_WAIT_MS), WatchTimeoutError);
  } finally {
    closed = await watch.close();
  }
  assert.equal(closed, 1); // grpc.status.CANCELLED

  assert.deepEqual(described(events), [
    ["RUN_EVENT_KIND_COMPLETED", task, "r1", stamps.r1],
    ["RUN_EVENT_KIND_COMPLETED", task, "r2", stamps.r2],
    ["RUN_EVENT_KIND_DELETED", task, "r1", stamps.r1],
  ]);
  for (const e of events) {
    assert.ok(e.cursor, "cursor");
    assert.match(e.recordedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
    assert.ok(!Number.isNaN(Date.parse(e.recordedAt)), `recordedAt ${e.recordedAt}`);
  }
  assert.equal(new Set(events.map((e) => e.cursor)).size, 3, "distinct cursors");

  // Resumed exactly after the first event: the second and the third.
  const resumed = await client.watchRuns(
    { taskPrefix: prefix, after: events[0].cursor },
    { deadline: Date.now() + STREAM_BUDGET_MS },
  );
  let again;
  try {
    again = await resumed.take(2, WATCH_WAIT_MS);
    await assert.rejects(resumed.next(QUIET_WAIT_MS), WatchTimeoutError);
  } finally {
    closed = await resumed.close();
  }
  assert.equal(closed, 1); // grpc.status.CANCELLED
  assert.deepEqual(described(again), described(events.slice(1)));
  assert.deepEqual(again.map((e) => e.cursor), events.slice(1).map((e) => e.cursor));
});
