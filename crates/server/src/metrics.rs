//! Prometheus metrics: every crate records through the `metrics` facade; the process
//! installs one recorder ([`install`], done by `telemetry::init`), and a service whose
//! `grpc.metrics_listen` is set serves them at `GET /metrics` on that HTTP address.
//!
//! [`FAMILIES`] is the catalogue of every family Cascade exports, with its help text:
//! described once at install, so that each has `HELP` and `TYPE` lines. The crate that
//! records a family also registers, at start, the series an alert may use at zero (an
//! alert on a counter born at its first event sees no increase: `rate` needs two samples).
//! No label takes values that grow with the business (publisher, account, ad unit):
//! per-publisher figures belong to the network report, not to ten million series.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 100 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What a family measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name, kind and help text.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

/// Every family Cascade's own code exports (process metrics come from
/// `metrics-process`, described by it).
pub const FAMILIES: &[Family] = &[
    family(
        "cascade_build_info",
        Kind::Gauge,
        "Always 1; the labels say which build and which service this process runs.",
    ),
    family(
        "cascade_grpc_server_requests_total",
        Kind::Counter,
        "gRPC calls answered, by service, method and gRPC status code.",
    ),
    family(
        "cascade_grpc_server_request_duration_seconds",
        Kind::Histogram,
        "Time from a gRPC call's arrival to its answer, by service, method and status code.",
    ),
    family(
        "cascade_decisions_total",
        Kind::Counter,
        "Decide calls by outcome: filled (at least one impression sold), unfilled, replayed (a retry given its first answer), invalid (the caller's mistake), shed (overload), failed.",
    ),
    family(
        "cascade_impressions_filled_total",
        Kind::Counter,
        "Impressions sold, by the kind of demand that won them.",
    ),
    family(
        "cascade_impressions_filled_price_micros_total",
        Kind::Counter,
        "What the impressions sold were sold at, in USD micros (CPM; the auction's currency), by winning kind of demand: divided by cascade_impressions_filled_total, the eCPM.",
    ),
    family(
        "cascade_impressions_unfilled_total",
        Kind::Counter,
        "Impressions not sold, by the reason.",
    ),
    family(
        "cascade_network_calls_total",
        Kind::Counter,
        "Calls to ad networks, by network and outcome (filled, no_fill, timeout, error, skipped ones by why).",
    ),
    family(
        "cascade_network_call_duration_seconds",
        Kind::Histogram,
        "Time an ad network took to answer, by network.",
    ),
    family(
        "cascade_network_filled_price_micros_total",
        Kind::Counter,
        "The prices ad networks answered with, in USD micros (CPM), by network: divided by the filled calls, the network's eCPM.",
    ),
    family(
        "cascade_network_breaker_state",
        Kind::Gauge,
        "A network's circuit breaker in this network-caller: 0 closed, 1 half-open, 2 open.",
    ),
    family(
        "cascade_notices_total",
        Kind::Counter,
        "Win, loss and billing notices fired, by kind and outcome (fired, failed, dropped when too many were in flight).",
    ),
    family(
        "cascade_billing_notice_attempts_total",
        Kind::Counter,
        "Attempts to deliver a billing notice Cascade keeps, by outcome (delivered, failed and retried later, expired).",
    ),
    family(
        "cascade_redis_errors_total",
        Kind::Counter,
        "Redis commands that failed (refused, timed out, connection lost).",
    ),
    family(
        "cascade_redis_cluster_renewals_total",
        Kind::Counter,
        "Times the Redis Cluster connection was made again from the seed nodes because its commands kept failing (a stale view of the cluster after a failover).",
    ),
    family(
        "cascade_selection_backlog",
        Kind::Gauge,
        "Selections decided but not yet written to the state store (it is slow or down).",
    ),
    family(
        "cascade_report_counts_dropped_total",
        Kind::Counter,
        "Network report counts dropped because the store was down too long to hold them.",
    ),
    family(
        "cascade_state_stale",
        Kind::Gauge,
        "1 while the configuration snapshot could not be refreshed (serving the last one), else 0.",
    ),
    family(
        "cascade_snapshot_version",
        Kind::Gauge,
        "The configuration version this process decides with.",
    ),
    family(
        "cascade_snapshot_loaded_timestamp_seconds",
        Kind::Gauge,
        "When this process loaded its configuration snapshot (Unix seconds).",
    ),
    family(
        "cascade_log_entries_total",
        Kind::Counter,
        "Decision log entries, by outcome (queued, written, retried, failed, dropped).",
    ),
    family(
        "cascade_admission_queue_delay_seconds",
        Kind::Gauge,
        "How late this process's runtime runs work (smoothed): its overload signal.",
    ),
    family(
        "cascade_admission_degraded",
        Kind::Gauge,
        "1 while overloaded enough to stop calling networks, else 0.",
    ),
    family(
        "cascade_admission_shed_probability",
        Kind::Gauge,
        "The share of calls being shed now.",
    ),
    family(
        "cascade_admission_degraded_total",
        Kind::Counter,
        "Decisions made without calling networks because of overload.",
    ),
    family(
        "cascade_admission_shed_total",
        Kind::Counter,
        "Calls refused with RESOURCE_EXHAUSTED because of overload.",
    ),
    family(
        "cascade_client_endpoints",
        Kind::Gauge,
        "Instances of a service this client knows, by target and state (in_rotation, out_of_rotation).",
    ),
    family(
        "cascade_client_endpoint_failures_total",
        Kind::Counter,
        "Calls to an instance that failed at the transport and took it out of rotation, by target.",
    ),
    family(
        "cascade_traces_kept_total",
        Kind::Counter,
        "Traces the sampling ratio left out but kept whole in this service, by reason: error (a span failed) or over_budget (a decision ran past its budget).",
    ),
    family(
        "cascade_trace_spans_dropped_total",
        Kind::Counter,
        "Unsampled spans let go without being judged: their trace held too many, too many traces were held, or their trace's root never ended here.",
    ),
    family(
        "cascade_client_hedges_total",
        Kind::Counter,
        "Second copies of slow idempotent calls sent to another instance, by target.",
    ),
];

/// Installs the process's Prometheus recorder once, describes every family, and
/// reports `cascade_build_info` for `service`; `None` when another recorder was
/// installed first.
pub fn install(service: &'static str) -> Option<&'static PrometheusHandle> {
    let handle = HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            for family in FAMILIES {
                match family.kind {
                    Kind::Counter => metrics::describe_counter!(family.name, family.help),
                    Kind::Gauge => metrics::describe_gauge!(family.name, family.help),
                    Kind::Histogram => metrics::describe_histogram!(family.name, family.help),
                }
            }
            PROCESS.describe();
            Some(handle)
        })
        .as_ref()?;
    metrics::gauge!(
        "cascade_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "service" => service,
    )
    .set(1.0);
    Some(handle)
}

/// The status codes whose call counts alerts divide (errors by all): registered at zero
/// for every method a server serves.
const ALERTED_CODES: [&str; 7] = [
    "OK",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNAVAILABLE",
    "UNKNOWN",
];

/// Registers at zero `cascade_grpc_server_requests_total` for every method of
/// `services` (full names), with each of [`ALERTED_CODES`]: the methods are read from
/// the contracts' descriptors, the same ones reflection serves.
pub fn register_calls(services: &[&str]) {
    use prost::Message as _;
    let Ok(descriptors) =
        prost_types::FileDescriptorSet::decode(cascade_proto::FILE_DESCRIPTOR_SET)
    else {
        return;
    };
    for file in &descriptors.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            if !services.contains(&name.as_str()) {
                continue;
            }
            for method in &service.method {
                for code in ALERTED_CODES {
                    metrics::counter!(
                        "cascade_grpc_server_requests_total",
                        "rpc_service" => name.clone(),
                        "rpc_method" => method.name().to_string(),
                        "grpc_code" => code,
                    )
                    .absolute(0);
                }
            }
        }
    }
}

/// The process's own figures (`process_cpu_seconds_total`, resident memory, open file
/// descriptors, threads, start time), read from /proc at every scrape.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(metrics_process::Collector::default);

/// What `GET /metrics` answers: the process figures read now, then every family.
pub fn render() -> String {
    match HANDLE.get().and_then(Option::as_ref) {
        Some(handle) => {
            PROCESS.collect();
            handle.render()
        }
        None => String::new(),
    }
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
        .route("/metrics", axum::routing::get(|| async { render() }))
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
