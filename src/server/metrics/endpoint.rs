//! The metrics' HTTP endpoint: `GET /metrics` on its own port
//! (`--metrics-listen`), so that scrapes never share the gRPC port's
//! admission limit or TLS, and the port can stay inside the cluster.

use std::sync::Arc;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use super::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move { ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode()).into_response() }
        }),
    );
    axum::serve(listener, app).await
}
