//! Logs and traces. Logs go through `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`), so stdout stays free for what a service prints for its operator.
//!
//! Traces are exported over OTLP when the standard OpenTelemetry environment asks for it:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set,
//! `OTEL_SDK_DISABLED` not `true`, `OTEL_TRACES_EXPORTER` not `none`. The protocol is
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (a
//! collector's port 4317), `http/protobuf` (4318, the default, as the specification
//! says) or `http/json`; any other value stops the service at start, never silently
//! exports nothing. TLS to the collector follows the specification's variables: an
//! `https://` endpoint, `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` (the CA, else the
//! system's roots), `…_CLIENT_CERTIFICATE` and `…_CLIENT_KEY` (mutual TLS; both or
//! neither); an unreadable file stops the service. Which traces go out is [`crate::sampling`]'s (a ratio, 1% unless
//! `OTEL_TRACES_SAMPLER[_ARG]` say otherwise, plus every error and every decision over
//! its budget). The SDK reads the rest itself (`OTEL_BSP_*` batch settings,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`). Off,
//! nothing is created per request: the gRPC layers below check [`exporting`] first.
//!
//! Spans follow OpenTelemetry's RPC conventions: a server span per incoming call and a
//! client span per outgoing one (`rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`, `server.address`, `server.port`), the status an error for the
//! codes that are the server's failure (on server spans) or any failure (on client
//! spans); health checks and reflection are not traced. Cascade's own attributes are
//! under `cascade.*`, numbers as numbers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::sampling::Policy;
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

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{variable}={value:?} is not an OTLP protocol: use grpc, http/protobuf or http/json")]
    UnsupportedProtocol {
        variable: &'static str,
        value: String,
    },
    #[error("cannot build the OTLP trace exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error(transparent)]
    Sampling(#[from] crate::sampling::PolicyError),
    #[error("TLS to the collector")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_KEY go together: set both or neither"
    )]
    HalfAClientIdentity,
    #[error("cannot set up the OTLP/HTTP client with the collector's CA or the client certificate")]
    Http(#[from] reqwest::Error),
    #[error("the thread building the OTLP/HTTP client panicked")]
    HttpClientThread,
}

/// The OTLP transport, as `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

/// The protocol the environment asks for: the traces variable first, then the general
/// one, else `http/protobuf`.
fn otlp_protocol(
    read: impl Fn(&'static str) -> Option<String>,
) -> Result<OtlpProtocol, TelemetryError> {
    let setting = exporter_setting(
        &read,
        [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ],
    );
    match setting {
        None => Ok(OtlpProtocol::HttpProtobuf),
        Some((_, value)) if value == "grpc" => Ok(OtlpProtocol::Grpc),
        Some((_, value)) if value == "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        Some((_, value)) if value == "http/json" => Ok(OtlpProtocol::HttpJson),
        Some((variable, value)) => Err(TelemetryError::UnsupportedProtocol { variable, value }),
    }
}

/// Installs logging, and trace export when the environment asks for it, for the process
/// `service_name` (the resource's `service.name` unless `OTEL_SERVICE_NAME` is set). A
/// second call in the same process changes nothing. Must run inside the Tokio runtime
/// (the gRPC exporter's channel lives on it).
pub fn init(service_name: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    crate::metrics::install(service_name);
    let log_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter);
    let provider = match export_requested() {
        true => Some(build_provider(service_name)?),
        false => None,
    };
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
        return Ok(TelemetryGuard(None));
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(service_name, "exporting traces over OTLP");
    }
    Ok(TelemetryGuard(provider))
}

/// The value of an OTLP exporter setting: the traces variable
/// (`OTEL_EXPORTER_OTLP_TRACES_<name>`), else the general one (`OTEL_EXPORTER_OTLP_<name>`).
fn exporter_setting(
    read: &impl Fn(&'static str) -> Option<String>,
    [traces, general]: [&'static str; 2],
) -> Option<(&'static str, String)> {
    [traces, general].into_iter().find_map(|variable| {
        read(variable)
            .filter(|value| !value.trim().is_empty())
            .map(|value| (variable, value.trim().to_string()))
    })
}

/// TLS to the collector, as the specification's variables say: the CA its certificate
/// chains to (`…_CERTIFICATE`, else the system's roots) and the certificate and key
/// this service presents (`…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`, both or neither).
struct CollectorTls {
    ca_file: Option<PathBuf>,
    identity_files: Option<(PathBuf, PathBuf)>,
    /// The endpoint is `https://`.
    https: bool,
}

impl CollectorTls {
    fn from_env(read: impl Fn(&'static str) -> Option<String>) -> Result<Self, TelemetryError> {
        let file = |names| exporter_setting(&read, names).map(|(_, path)| PathBuf::from(path));
        let ca_file = file([
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ]);
        let cert = file([
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ]);
        let key = file([
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ]);
        let identity_files = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(TelemetryError::HalfAClientIdentity),
        };
        let https = exporter_setting(
            &read,
            [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
        )
        .is_some_and(|(_, endpoint)| endpoint.to_ascii_lowercase().starts_with("https://"));
        Ok(CollectorTls {
            ca_file,
            identity_files,
            https,
        })
    }

    /// Whether the connection needs more than the exporter's defaults.
    fn configured(&self) -> bool {
        self.ca_file.is_some() || self.identity_files.is_some()
    }

    fn grpc(&self) -> Result<tonic::transport::ClientTlsConfig, TelemetryError> {
        let identity = self
            .identity_files
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        Ok(crate::tls::client(self.ca_file.as_deref(), identity)?)
    }

    /// A blocking HTTP client trusting the CA and presenting the identity. Built on a
    /// thread of its own: reqwest's blocking client must not be made inside the runtime.
    fn http(&self) -> Result<reqwest::blocking::Client, TelemetryError> {
        let ca = match &self.ca_file {
            Some(path) => Some(reqwest::Certificate::from_pem(&crate::tls::read(
                "CA", path,
            )?)?),
            None => None,
        };
        let identity = match &self.identity_files {
            Some((cert, key)) => {
                let mut pem = crate::tls::read("certificate", cert)?;
                pem.extend(crate::tls::read("key", key)?);
                Some(reqwest::Identity::from_pem(&pem)?)
            }
            None => None,
        };
        std::thread::spawn(move || {
            let mut builder = reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT);
            if let Some(ca) = ca {
                builder = builder.add_root_certificate(ca);
            }
            if let Some(identity) = identity {
                builder = builder.identity(identity);
            }
            builder.build()
        })
        .join()
        .map_err(|_| TelemetryError::HttpClientThread)?
        .map_err(TelemetryError::Http)
    }
}

/// How long one export may take (the specification's default).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn build_provider(service_name: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{
        Protocol, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
    };
    let read = |name: &'static str| std::env::var(name).ok();
    let tls = CollectorTls::from_env(read)?;
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let http = |protocol| {
        let http = builder.clone().with_http().with_protocol(protocol);
        Ok::<_, TelemetryError>(match tls.configured() {
            true => http.with_http_client(tls.http()?).build(),
            false => http.build(),
        })
    };
    let exporter = match otlp_protocol(read)? {
        OtlpProtocol::Grpc => match tls.https || tls.configured() {
            true => builder.with_tonic().with_tls_config(tls.grpc()?).build(),
            false => builder.with_tonic().build(),
        },
        OtlpProtocol::HttpProtobuf => http(Protocol::HttpBinary)?,
        OtlpProtocol::HttpJson => http(Protocol::HttpJson)?,
    }
    .map_err(TelemetryError::Exporter)?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service_name);
    }
    // What OTEL_RESOURCE_ATTRIBUTES says wins (a pod name as the instance id, say).
    let named = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let names = |key: &str| named.split(',').any(|pair| pair.trim().starts_with(key));
    if !names("service.version=") {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    }
    if !names("service.instance.id=") {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            uuid::Uuid::new_v4().to_string(),
        ));
    }
    let policy = Policy::from_env(|name| std::env::var(name).ok())?;
    let batch = BatchSpanProcessor::builder(exporter).build();
    let provider = SdkTracerProvider::builder().with_resource(resource.build());
    Ok(policy.apply(provider, batch).build())
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

/// Writes the W3C trace context into outgoing HTTP/2 headers (gRPC metadata).
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Calls that are not the product's work: traced, they would fill the traces with
/// probes (a kubelet or a balancer asks every few seconds) and grpcurl's lookups.
fn is_untraced(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// `package.Service` and `Method` of a gRPC path (`/package.Service/Method`).
fn rpc_names(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// The span of one incoming gRPC call, a child of the caller's span when the call
/// carries a W3C `traceparent`; disabled when traces are not exported and for health
/// and reflection calls.
pub fn server_span<B>(request: &http::Request<B>) -> tracing::Span {
    if !exporting() || is_untraced(request.uri().path()) {
        return tracing::Span::none();
    }
    let path = request.uri().path();
    let (service, method) = rpc_names(path);
    let authority = request.uri().authority();
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = authority.map(|a| a.host()),
        server.port = authority.and_then(|a| a.port_u16()).map(i64::from),
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

/// Whether a server span ends in error: per the RPC conventions, only for the codes that
/// are the server's failure — a caller's mistake (`INVALID_ARGUMENT`, `NOT_FOUND`) or a
/// shed call is the server doing its job.
fn is_server_error(code: usize) -> bool {
    use tonic::Code;
    [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ]
    .iter()
    .any(|failure| *failure as usize == code)
}

/// Records a call's gRPC status on its span (server or client).
fn record_status(span: &tracing::Span, code: usize, error: bool) {
    span.record("rpc.grpc.status_code", code as i64);
    if error {
        span.record("otel.status_code", "error");
        span.record(
            "otel.status_description",
            GRPC_CODES.get(code).copied().unwrap_or("UNKNOWN"),
        );
    }
}

/// Where a client's calls go, for its spans' `server.address` and `server.port`.
#[derive(Clone, Debug)]
pub struct Peer {
    host: std::sync::Arc<str>,
    port: Option<u16>,
}

impl Peer {
    pub fn new(host: &str, port: Option<u16>) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl Peer {
    /// The host and port of an endpoint URL (`http://host:port/…`), the port implied by
    /// the scheme when the URL has none.
    pub fn of_endpoint(endpoint: &str) -> Self {
        match endpoint.parse::<http::Uri>() {
            Ok(uri) => {
                let implied = match uri.scheme_str() {
                    Some("https") => Some(443),
                    Some("http") => Some(80),
                    _ => None,
                };
                let host = uri.host().unwrap_or(endpoint);
                Self::new(host, uri.port_u16().or(implied))
            }
            Err(_) => Self::new(endpoint, None),
        }
    }
}

impl From<&crate::channel::Target> for Peer {
    fn from(target: &crate::channel::Target) -> Self {
        Self::new(target.host(), Some(target.port()))
    }
}

/// A channel whose calls each get a client span, carried to the callee as its W3C trace
/// context, so that the callee's server span is the client span's child. Costs a branch
/// when traces are not exported.
#[derive(Clone, Debug)]
pub struct Traced<C> {
    inner: C,
    peer: Peer,
}

/// A plain channel whose calls are traced.
pub type TracedChannel = Traced<tonic::transport::Channel>;

pub fn traced<C>(channel: C, peer: Peer) -> Traced<C> {
    Traced {
        inner: channel,
        peer,
    }
}

impl<C, RB> tower::Service<http::Request<tonic::body::Body>> for Traced<C>
where
    C: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    RB: 'static,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    /// The channel's own future when traces are off (no allocation per call), a boxed
    /// traced one when they are on.
    type Future = futures::future::Either<
        futures::future::ErrInto<C::Future, Self::Error>,
        std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<C::Response, Self::Error>> + Send>,
        >,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        use futures::TryFutureExt as _;
        use tracing::Instrument as _;
        if !exporting() {
            return futures::future::Either::Left(self.inner.call(request).err_into());
        }
        let path = request.uri().path();
        let (service, method) = rpc_names(path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = &*self.peer.host,
            server.port = self.peer.port.map(i64::from),
        );
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(request.headers_mut()))
        });
        let call = self.inner.call(request);
        futures::future::Either::Right(Box::pin(
            async move {
                let answer = call.await.map_err(Into::into);
                // A unary failure comes as headers only, with its status there; a success
                // has none in its headers (OK follows in the trailers).
                // A failure under the channel is the transport's: UNAVAILABLE, as the
                // balanced channel answers it.
                let code = match &answer {
                    Ok(response) => grpc_code_number(response.headers()),
                    Err(error) => error
                        .downcast_ref::<tonic::Status>()
                        .map_or(tonic::Code::Unavailable, tonic::Status::code)
                        as usize,
                };
                record_status(&tracing::Span::current(), code, code != 0);
                answer
            }
            .instrument(span),
        ))
    }
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

/// The status code of a response: a failure is sent as headers only (`grpc-status` there);
/// a success carries its status in trailers, after these headers.
fn grpc_code_number(headers: &http::HeaderMap) -> usize {
    match headers.get("grpc-status") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(tonic::Code::Unknown as usize),
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
        let (service, method) = rpc_names(request.uri().path());
        // Shared, so that each metric's copy of the labels is a reference count.
        let (service, method): (std::sync::Arc<str>, std::sync::Arc<str>) =
            (service.into(), method.into());
        let started = std::time::Instant::now();
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(async move {
            let mut response = response.instrument(span.clone()).await;
            if let Ok(response) = &mut response {
                crate::admission::tell_served(response.headers_mut(), started.elapsed());
            }
            let number = match &response {
                Ok(response) => grpc_code_number(response.headers()),
                Err(_) => tonic::Code::Unknown as usize,
            };
            if !span.is_disabled() {
                record_status(&span, number, is_server_error(number));
            }
            let code = GRPC_CODES.get(number).copied().unwrap_or("UNKNOWN");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn collector_tls(vars: &[(&str, &str)]) -> Result<CollectorTls, TelemetryError> {
        CollectorTls::from_env(crate::env_of(vars))
    }

    #[test]
    fn collector_tls_follows_the_specification_variables() {
        let plain =
            collector_tls(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap();
        assert!(!plain.https && !plain.configured());
        let https =
            collector_tls(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "HTTPS://collector:4317")]).unwrap();
        assert!(https.https && !https.configured());
        let mutual = collector_tls(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/general/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/tls/cert.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/tls/key.pem"),
        ])
        .unwrap();
        assert_eq!(mutual.ca_file, Some(PathBuf::from("/traces/ca.pem")));
        assert_eq!(
            mutual.identity_files,
            Some((
                PathBuf::from("/tls/cert.pem"),
                PathBuf::from("/tls/key.pem")
            ))
        );
        assert!(matches!(
            collector_tls(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/tls/cert.pem")]),
            Err(TelemetryError::HalfAClientIdentity)
        ));
        // A file that cannot be read stops the service, naming it.
        let missing =
            collector_tls(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]).unwrap();
        let error = missing.grpc().unwrap_err();
        assert!(
            format!("{:?}", error).contains("/nonexistent/ca.pem"),
            "{error:?}"
        );
    }

    fn protocol(vars: &[(&str, &str)]) -> Result<OtlpProtocol, TelemetryError> {
        otlp_protocol(crate::env_of(vars))
    }

    #[test]
    fn the_traces_protocol_wins_over_the_general_one_and_http_protobuf_is_the_default() {
        assert_eq!(protocol(&[]).unwrap(), OtlpProtocol::HttpProtobuf);
        assert_eq!(
            protocol(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(),
            OtlpProtocol::Grpc
        );
        assert_eq!(
            protocol(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ])
            .unwrap(),
            OtlpProtocol::HttpJson
        );
        let error = protocol(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc/json")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"grpc/json\""),
            "{error}"
        );
    }

    #[test]
    fn server_spans_fail_only_for_the_servers_own_failures() {
        use tonic::Code;
        for code in [Code::Internal, Code::Unavailable, Code::DeadlineExceeded] {
            assert!(is_server_error(code as usize), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
        ] {
            assert!(!is_server_error(code as usize), "{code:?}");
        }
    }
}
