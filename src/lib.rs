//! runstore: a gRPC persistence service for workflow orchestrators.
//!
//! Layout — data flows one way: request → validation → two storage writes
//! in parallel → reply.
//!
//! - [`config`]: flags and `RUNSTORE_*` environment variables.
//! - [`server`]: builds the gRPC server; [`server::run`] is the one entry point.
//! - [`service`]: the handlers: validate, dispatch both writes, build the reply.
//! - [`validate`]: id, timestamp and JSON rules.
//! - [`write_report`]: per-write statuses and the manifest-first outcome.
//! - [`deadline`]: the caller's `grpc-timeout`, answered with DEADLINE_EXCEEDED.
//! - [`error`]: API errors and their mapping to gRPC codes, in one place.
//! - [`page_token`]: the opaque GetTaskSnapshot page token.
//! - [`admission`]: the in-flight limit; refuses new calls once shutdown begins.
//! - [`auth`]: optional bearer tokens for the persistence service.
//! - [`health`]: `grpc.health.v1` status tied to storage health and shutdown.
//! - [`storage`]: the `Storage` trait and its filesystem backend.
//! - [`telemetry`]: tracing setup.

pub mod admission;
pub mod auth;
pub mod config;
pub mod deadline;
pub mod error;
pub mod health;
pub mod page_token;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod validate;
pub mod write_report;

/// Code generated from `proto/orchestrator/persistence/v1/persistence.proto`.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("orchestrator.persistence.v1");

    /// Encoded descriptors of the contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("persistence_descriptor");
}
