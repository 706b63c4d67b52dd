//! Prometheus metrics: every crate records through the `metrics` facade; the process
//! installs one recorder ([`install`], done by `telemetry::init`), and a service whose
//! `grpc.metrics_listen` is set serves them at `GET /metrics` on that HTTP address.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 100 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the process's Prometheus recorder once; `None` when another recorder was
/// installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Serves `GET /metrics` on `listen` until the returned task is aborted; prints the
/// address it got as `metrics at http://ADDR/metrics`. Beside it, for probes that cannot
/// speak gRPC over TLS (the kubelet's cannot): `GET /ready`, 200 while gRPC health is
/// SERVING (`serving`) and 503 otherwise, and `GET /live`, 200 while the process answers.
pub async fn serve(
    listen: SocketAddr,
    serving: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("metrics at http://{addr}/metrics");
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                install().map(PrometheusHandle::render).unwrap_or_default()
            }),
        )
        .route(
            "/ready",
            axum::routing::get(move || {
                let ready = *serving.borrow();
                async move {
                    if ready {
                        (http::StatusCode::OK, "SERVING\n")
                    } else {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
                    }
                }
            }),
        )
        .route("/live", axum::routing::get(|| async { "alive\n" }));
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    }))
}
