//! runstore: a gRPC persistence service for workflow orchestrators.
//!
//! Layout — data flows one way: request → validation → two storage writes
//! in parallel → reply. The API knows nothing of SQL; a backend knows
//! nothing of gRPC.
//!
//! - [`config`]: flags and `RUNSTORE_*` environment variables.
//! - [`api`]: the gRPC handlers, validation, the per-write reply, the one
//!   mapping of errors to gRPC codes, page tokens.
//! - [`server`]: the tonic server — TLS, auth, admission, deadlines, health,
//!   shutdown drain; [`server::run`] is the one entry point.
//! - [`storage`]: the `Storage` trait, its error type, the factory and the
//!   SQLite backend.
//! - [`telemetry`]: logs, and OpenTelemetry traces when `OTEL_*` asks.

pub mod api;
pub mod config;
pub mod server;
pub mod storage;
pub mod telemetry;

/// Code generated from `proto/orchestrator/persistence/v1/persistence.proto`.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("orchestrator.persistence.v1");

    /// Encoded descriptors of the contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("persistence_descriptor");
}
