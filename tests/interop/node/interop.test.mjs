// Black-box interop test: the real runstore server, called from Node over
// a real gRPC channel with @grpc/grpc-js.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { PERSISTENCE_SERVICE, RunstoreClient } from "./client.mjs";

const REPO = fileURLToPath(new URL("../../..", import.meta.url));
const RUNSTORE_BIN = process.env.RUNSTORE_BIN ?? join(REPO, "target/release/runstore");
const FIXTURE = join(REPO, "../shared/fixtures/run-summary.json");
const TIMESTAMP = "2026-01-05T19:26:37.274Z";

const text = readFileSync(FIXTURE, "utf8");
const { taskId, runId } = JSON.parse(text); // ids only; the summary itself is never parsed
const run = { taskId, runId, timestamp: TIMESTAMP, summaryJson: text };

let server, serverExit, dataDir, client;
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
  server = spawn(RUNSTORE_BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"], {
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
  client = new RunstoreClient(await within(30_000, "server start-up", addr));
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
  // NOT_SERVING briefly at start, until the first storage probe write succeeds.
  for (const service of ["", PERSISTENCE_SERVICE]) {
    const deadline = Date.now() + 10_000;
    let status;
    while ((status = await client.health(service)) !== "SERVING" && Date.now() < deadline) await sleep(100);
    assert.equal(status, "SERVING", `health of "${service}"`);
  }
});

test("CompleteRun writes the snapshot and the manifest", async () => {
  const res = await client.completeRun(run);
  assert.equal(res.outcome, "ALL_WRITTEN");
  for (const [status, target] of [[res.snapshot, "SNAPSHOT"], [res.manifest, "MANIFEST"]]) {
    assert.equal(status.target, target);
    assert.equal(status.state, "WRITTEN");
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
  assert.equal(res.outcome, "ALL_WRITTEN");
});
