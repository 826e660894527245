//! The `runstore` binary: parses config, starts the server, waits for
//! SIGTERM or SIGINT; or copies the SQLite database (`backup`).

use anyhow::Context;
use clap::Parser;
use runstore::{
    config::{BackupArgs, Cli, Command, ServeArgs},
    server::{self, metrics},
    storage::{self, deferred::DeferredStorage},
    telemetry,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Backup(args) => backup(&args),
    }
}

/// One line on stdout saying what was copied; errors exit non-zero.
fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let report =
        storage::sqlite::backup::backup(&args.sqlite.data_dir, &args.to, args.sqlite.lock_wait())?;
    println!(
        "backed up {} to {}: {} bytes, schema version {}, {} runs, {:.3}s",
        report.source.display(),
        report.target.display(),
        report.bytes,
        report.schema_version,
        report.runs,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let telemetry = telemetry::init(args.log_format, std::io::stdout);
    let served = serve_with(args).await;
    // After the last calls: their spans are still queued for export.
    telemetry.shutdown().await;
    served
}

async fn serve_with(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.server_settings()?;
    let setting = args.storage_setting()?;
    let storage = match storage::open(&setting).await {
        Ok(storage) => storage,
        // An outage or a full disk: serve probes (live, not ready) and keep
        // trying, so an orchestrator waits for the pod instead of
        // restarting it.
        Err(err) if err.is_transient() => {
            tracing::warn!(error = %err, "storage is not open yet: serving unready while retrying");
            DeferredStorage::open_in_background(setting, &err)
        }
        Err(err) => return Err(err).context("opening storage"),
    };
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {} for metrics", args.metrics_listen))?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
    let metrics = std::sync::Arc::clone(&settings.metrics);
    tokio::spawn(async move {
        if let Err(err) = metrics::endpoint::serve(metrics_listener, metrics).await {
            tracing::error!(error = %err, "the metrics endpoint stopped");
        }
    });
    tracing::info!(
        addr = %listener.local_addr()?,
        data_dir = %args.sqlite.data_dir.display(),
        tls = args.tls_cert.is_some(),
        mutual_tls = args.tls_client_ca.is_some(),
        auth = args.auth_tokens_file.is_some(),
        "listening"
    );
    server::run(listener, storage, settings, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, so a signal that arrives
/// as soon as "listening" is logged already means a graceful shutdown, and
/// returns a future that resolves on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    })
}
