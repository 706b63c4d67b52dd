//! Logs and traces. Logs go through `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`), so stdout stays free for what a service prints for its operator.
//!
//! Traces are exported over OTLP (HTTP/protobuf) when the standard OpenTelemetry
//! environment asks for it: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, `OTEL_SDK_DISABLED` not `true`,
//! `OTEL_TRACES_EXPORTER` not `none`. The SDK reads the rest itself
//! (`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*` batch settings, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`). Off, nothing is created per request: the gRPC layers
//! below check [`exporting`] first.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// True when traces are exported: only then do requests get spans and carry context.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes and stops trace export when dropped: hold it for the life of `main`.
#[must_use = "traces are flushed when the guard is dropped"]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {error}");
        }
    }
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

fn export_requested() -> bool {
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    endpoint_set && !env_is("OTEL_SDK_DISABLED", "true") && !env_is("OTEL_TRACES_EXPORTER", "none")
}

/// Installs logging, and trace export when the environment asks for it, for the process
/// `service_name` (the resource's `service.name` unless `OTEL_SERVICE_NAME` is set). A
/// second call in the same process changes nothing.
pub fn init(service_name: &'static str) -> TelemetryGuard {
    crate::metrics::install();
    let log_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter);
    let provider = export_requested()
        .then(|| build_provider(service_name))
        .flatten();
    // Spans are exported at INFO whatever RUST_LOG says about logs.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("cascade"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if !installed {
        return TelemetryGuard(None);
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(service_name, "exporting traces over OTLP");
    }
    TelemetryGuard(provider)
}

fn build_provider(service_name: &'static str) -> Option<SdkTracerProvider> {
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("traces are not exported: cannot build the OTLP exporter: {error}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service_name);
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

/// Reads the W3C trace context from incoming HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the W3C trace context into outgoing gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The span of one incoming gRPC call, a child of the caller's span when the call
/// carries a W3C `traceparent`; disabled when traces are not exported.
pub fn server_span<B>(request: &http::Request<B>) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    let path = request.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

/// A tonic client interceptor that sends the current span's context along, so the
/// callee's spans join the caller's trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectTraceContext;

impl tonic::service::Interceptor for InjectTraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if exporting() {
            let context = tracing::Span::current().context();
            opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()))
            });
        }
        Ok(request)
    }
}

/// A channel whose calls carry the trace context.
pub type Traced<C> = tonic::service::interceptor::InterceptedService<C, InjectTraceContext>;

/// A plain channel whose calls carry the trace context.
pub type TracedChannel = Traced<tonic::transport::Channel>;

pub fn traced<C>(channel: C) -> Traced<C> {
    tonic::service::interceptor::InterceptedService::new(channel, InjectTraceContext)
}

/// Puts every incoming gRPC call in its [`server_span`] and counts it, by method and
/// status, with its latency.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerObserveLayer;

impl<S> tower::Layer<S> for ServerObserveLayer {
    type Service = ServerObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerObserve { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ServerObserve<S> {
    inner: S,
}

/// gRPC status names by code, as Prometheus label values.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The status of a response: a failure is sent as headers only (`grpc-status` there);
/// a success carries its status in trailers, after these headers.
fn grpc_code(headers: &http::HeaderMap) -> &'static str {
    match headers.get("grpc-status") {
        None => GRPC_CODES[0],
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .and_then(|code| GRPC_CODES.get(code).copied())
            .unwrap_or("UNKNOWN"),
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for ServerObserve<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument as _;
        let span = server_span(&request);
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        // Shared, so that each metric's copy of the labels is a reference count.
        let (service, method): (std::sync::Arc<str>, std::sync::Arc<str>) =
            (service.into(), method.into());
        let started = std::time::Instant::now();
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(async move {
            let response = response.instrument(span).await;
            let code = match &response {
                Ok(response) => grpc_code(response.headers()),
                Err(_) => "UNKNOWN",
            };
            let labels = [
                metrics::Label::new("rpc_service", service),
                metrics::Label::new("rpc_method", method),
                metrics::Label::from_static_parts("grpc_code", code),
            ];
            metrics::histogram!(
                "cascade_grpc_server_request_duration_seconds",
                labels.iter()
            )
            .record(started.elapsed().as_secs_f64());
            metrics::counter!("cascade_grpc_server_requests_total", labels.iter()).increment(1);
            response
        })
    }
}
