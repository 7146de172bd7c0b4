//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/api/status` and the status page at `/`.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use super::status;

/// The status page: one self-contained file, with its styles and scripts inline.
const PAGE: &str = include_str!("page.html");

/// The routes, rendering metrics through `handle`.
pub(super) fn router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/status", get(api_status))
        .with_state(handle)
}

async fn metrics(axum::extract::State(handle): axum::extract::State<PrometheusHandle>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}

/// 200 when every stage is connected and none has been failing for longer than the limit; 503 with the reasons otherwise.
async fn readyz() -> Response {
    match status::get().map(status::Status::readiness) {
        Some(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Some(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", why.join("\n")),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
    }
}

async fn api_status() -> Response {
    match status::get() {
        Some(s) => axum::Json(s.to_json()).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
