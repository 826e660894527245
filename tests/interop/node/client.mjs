// Example client: how a Node/TypeScript orchestrator calls runstore.
//
//   import { RunstoreClient } from "./client.mjs";
//   const client = new RunstoreClient("127.0.0.1:50051");
//   await client.completeRun({ taskId, runId, timestamp, summaryJson });
//
// Run directly to record one summary file (taskId, runId and timestamp are
// taken from the file):  node client.mjs 127.0.0.1:50051 run-summary.json
import { readFileSync } from "node:fs";
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

/** CompleteRun was answered, but not every write is durable. */
export class RunNotPersistedError extends Error {
  constructor(response) {
    const e = response.primaryError;
    super(`run not persisted (${response.outcome}): ${e.target} ${e.code}: ${e.message}`);
    this.name = "RunNotPersistedError";
    this.response = response;
    this.retryable = e.retryable; // retrying the same CompleteRun may succeed
  }
}

export class RunstoreClient {
  constructor(address, { credentials = grpc.credentials.createInsecure(), deadlineMs = 10_000 } = {}) {
    this.deadlineMs = deadlineMs;
    this.service = new PersistenceService(address, credentials);
    // Share the channel: the health client is only a second stub on it.
    this.healthService = new Health(address, credentials, { channelOverride: this.service.getChannel() });
  }

  // Promisified unary call with a deadline. Rejects with the grpc-js error
  // (err.code is a grpc.status number, err.details the server's message).
  #call(stub, method, request) {
    const deadline = Date.now() + this.deadlineMs;
    return new Promise((resolve, reject) =>
      stub[method](request, { deadline }, (err, res) => (err ? reject(err) : resolve(res))),
    );
  }

  /**
   * Records a completed run. Resolves with the response when both the
   * snapshot and the manifest are durable (outcome ALL_WRITTEN); throws
   * RunNotPersistedError (with .retryable and .response) otherwise.
   */
  async completeRun({ taskId, runId, timestamp, summaryJson }) {
    const res = await this.#call(this.service, "completeRun", { taskId, runId, timestamp, summaryJson });
    if (res.outcome !== "ALL_WRITTEN") throw new RunNotPersistedError(res);
    return res;
  }

  getManifest({ taskId, runId }) {
    return this.#call(this.service, "getManifest", { taskId, runId });
  }

  getTaskSnapshot({ taskId, pageSize = 0, pageToken = "" }) {
    return this.#call(this.service, "getTaskSnapshot", { taskId, pageSize, pageToken });
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
    const res = await client.completeRun({ taskId, runId, timestamp, summaryJson });
    console.log(`${res.outcome}: manifest ${res.manifest.location}, snapshot ${res.snapshot.location}`);
  } catch (err) {
    console.error(err instanceof RunNotPersistedError ? `${err.message} (retryable: ${err.retryable})` : err.message);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}
