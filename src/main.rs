//! The `runstore` binary: parses config, starts the server, waits for
//! SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use runstore::{
    config::{Cli, Command, ServeArgs},
    server,
    storage,
    telemetry,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, std::io::stdout);
    let settings = args.server_settings()?;
    let storage = storage::open(&args.storage_setting())
        .with_context(|| format!("opening storage in {}", args.data_dir.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        data_dir = %args.data_dir.display(),
        tls = args.tls_cert.is_some(),
        mutual_tls = args.tls_client_ca.is_some(),
        auth = args.auth_tokens_file.is_some(),
        "listening"
    );
    server::run(listener, storage, settings, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
