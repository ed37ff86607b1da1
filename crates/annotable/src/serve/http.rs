//! `/metrics`, `/healthz` (alive: not wedged) and `/readyz` (started, not stopping, and not
//! held back by an outage): each failing answer's body says why.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Shared;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let metrics = shared.metrics.clone();
    let alive = shared.clone();
    let ready = shared;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let (held, still) = alive.registry.stalled();
                let wedged = alive.health.wedged(held, still);
                async move { answer(wedged, "ok") }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let problem = ready.health.problem();
                async move { answer(problem, "ready") }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
}

/// 200 with `fine`, or 503 with the reason.
fn answer(problem: Option<String>, fine: &str) -> Response {
    match problem {
        None => (StatusCode::OK, format!("{fine}\n")).into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}
