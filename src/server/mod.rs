//! Builds the gRPC server and runs it until shutdown. One entry point for
//! the binary and the tests: `run(listener, storage, settings, shutdown)`.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    Request, Status,
    codec::CompressionEncoding,
    service::interceptor::InterceptedService,
    transport::{Certificate, Identity, ServerTlsConfig},
};

pub mod admission;
pub mod auth;
pub mod deadline;
pub mod health;
pub mod metrics;
pub mod sweep;
pub mod transport;

use crate::{
    api::{PersistenceApi, ServiceSettings},
    proto::{self, persistence_service_server::PersistenceServiceServer},
    storage::Storage,
};
use admission::{Admission, DEFAULT_MAX_IN_FLIGHT};
use auth::BearerTokens;
use health::{HealthState, monitor_storage};
use metrics::{InstrumentedStorage, Metrics};

/// TLS material, PEM-encoded.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsSettings")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// Everything `run` needs besides the listener and storage.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub service: ServiceSettings,
    /// How long admitted calls and their writes may take to finish after
    /// shutdown begins.
    pub shutdown_grace: Duration,
    /// How often storage is probed for health.
    pub health_interval: Duration,
    /// How long to keep the listener open after shutdown begins, reporting
    /// NOT_SERVING and refusing calls, so that probes and load balancers see
    /// the change before connections are refused.
    pub shutdown_delay: Duration,
    /// Longest a unary call may take, its request's arrival included.
    pub request_timeout: Duration,
    /// Persistence calls served at once; more get RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Serve TLS (optionally mutual) instead of plaintext.
    pub tls: Option<TlsSettings>,
    /// Require one of these bearer tokens on persistence calls.
    pub auth: Option<BearerTokens>,
    /// The background sweep of old events.
    pub sweep: sweep::SweepSettings,
    /// Where this server records its metrics (`--metrics-listen` serves
    /// them).
    pub metrics: Arc<Metrics>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            service: ServiceSettings::default(),
            shutdown_grace: Duration::from_secs(30),
            health_interval: Duration::from_secs(5),
            shutdown_delay: Duration::ZERO,
            request_timeout: transport::DEFAULT_REQUEST_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            tls: None,
            auth: None,
            sweep: sweep::SweepSettings::default(),
            metrics: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The largest request the transport decodes. It sits well above the summary
/// limit so that an oversized summary is answered by the service with
/// RESOURCE_EXHAUSTED, not by the codec.
fn max_request_bytes(max_summary_bytes: usize) -> usize {
    max_summary_bytes
        .saturating_mul(2)
        .saturating_add(1024 * 1024)
}

/// Reflection of the contract and of the health service, so grpcurl and ghz
/// need no proto files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Serves until `shutdown` resolves, then: health reports NOT_SERVING, new
/// calls get UNAVAILABLE, admitted calls and their writes finish (within the
/// grace period), and it returns.
pub async fn run(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = HealthState::new(reporter).await;
    let admission = Admission::new(settings.max_in_flight);
    let writes = TaskTracker::new();
    let stop = CancellationToken::new();
    let metrics = settings.metrics;
    metrics.observe_server(admission.clone(), Arc::clone(&storage));
    let storage: Arc<dyn Storage> =
        Arc::new(InstrumentedStorage::new(storage, Arc::clone(&metrics)));

    let api = PersistenceApi::new(
        Arc::clone(&storage),
        settings.service,
        admission.clone(),
        writes.clone(),
        stop.clone(),
        Arc::clone(&metrics),
    );
    // gzip and zstd both ways: requests in either are accepted, and replies
    // are compressed for clients that list one in `grpc-accept-encoding`
    // (their first choice wins), else sent uncompressed. The decoding limit
    // applies to the decompressed message.
    let persistence = PersistenceServiceServer::new(api)
        .max_decoding_message_size(max_request_bytes(settings.service.max_summary_bytes))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd);
    let tokens = settings.auth.clone();
    let persistence = InterceptedService::new(
        persistence,
        move |request: Request<()>| -> Result<Request<()>, Status> {
            match &tokens {
                Some(tokens) => tokens.check(request),
                None => Ok(request),
            }
        },
    );
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tokio::spawn(sweep::run(
        Arc::clone(&storage),
        settings.sweep,
        Arc::clone(&metrics),
        stop.clone(),
    ));
    tokio::spawn(monitor_storage(
        storage,
        health.clone(),
        metrics,
        settings.health_interval,
        stop.clone(),
    ));

    let begin_drain = {
        let (health, admission, stop) = (health.clone(), admission.clone(), stop.clone());
        let delay = settings.shutdown_delay;
        async move {
            shutdown.await;
            tracing::info!("shutdown requested: refusing new calls, finishing admitted ones");
            // Admission closes first so that anyone who sees NOT_SERVING
            // can rely on new calls being refused.
            admission.close();
            health.begin_shutdown().await;
            stop.cancel();
            tokio::time::sleep(delay).await;
            // Connections stay open until admitted calls finish, so callers
            // arriving meanwhile get a clean UNAVAILABLE from the handlers.
            admission.drained().await;
            health.end_watches().await;
        }
    };

    let mut builder = transport::server(settings.request_timeout);
    if let Some(tls) = &settings.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let serve = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(persistence)
        .serve_with_incoming_shutdown(transport::incoming(listener), begin_drain);

    // Admitted calls finish first, then the server closes its connections,
    // then any write task whose caller went away finishes.
    let drained = async {
        serve.await?;
        writes.close();
        writes.wait().await;
        Ok::<(), ServeError>(())
    };
    let grace_over = async {
        stop.cancelled().await;
        tokio::time::sleep(settings.shutdown_grace).await;
    };
    tokio::select! {
        result = drained => result?,
        () = grace_over => tracing::warn!(
            grace = ?settings.shutdown_grace,
            "grace period over with calls still in flight; they were not acknowledged",
        ),
    }
    Ok(())
}
