//! A real OTLP trace receiver for tests, speaking both transports a collector serves:
//! OTLP/HTTP (`POST /v1/traces`, protobuf or JSON) and OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), each on a free
//! loopback port, over TLS when asked (HTTPS, and gRPC with client certificates),
//! keeping every span it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use cascade_sandbox::TestCa;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// An attribute's value, with its OTLP type kept: a number sent as a string is a bug.
#[derive(Clone, Debug, PartialEq)]
pub enum Attribute {
    String(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other(String),
}

impl std::fmt::Display for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attribute::String(s) | Attribute::Other(s) => f.write_str(s),
            Attribute::Int(i) => write!(f, "{i}"),
            Attribute::Bool(b) => write!(f, "{b}"),
            Attribute::Double(d) => write!(f, "{d}"),
        }
    }
}

/// A span's status, as OTLP codes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

/// One received span, flattened.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    pub status: SpanStatus,
    pub status_message: String,
    /// The `service.name` of the resource that sent it.
    pub service_name: String,
    /// The resource's attributes.
    pub resource: Vec<(String, Attribute)>,
    pub attributes: Vec<(String, Attribute)>,
    /// Which transport brought it: `http` or `grpc`.
    pub transport: &'static str,
}

impl ReceivedSpan {
    /// An attribute as text, whatever its type.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.typed_attribute(key).map(ToString::to_string)
    }

    pub fn typed_attribute(&self, key: &str) -> Option<&Attribute> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn resource_attribute(&self, key: &str) -> Option<&Attribute> {
        self.resource.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

pub struct OtlpCollector {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    /// `http`, or `https` over TLS.
    scheme: &'static str,
    spans: Spans,
    servers: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

struct GrpcReceiver(Spans);

/// Accepts TLS connections for the HTTP receiver; a failed handshake is skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl OtlpCollector {
    /// A receiver over plain HTTP and gRPC.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// A receiver over TLS with a certificate `ca` issued for 127.0.0.1: HTTPS, and gRPC
    /// that also requires a client certificate `ca` issued (mutual TLS).
    pub async fn start_tls(ca: &TestCa) -> std::io::Result<Self> {
        Self::start_with(Some(ca)).await
    }

    async fn start_with(tls: Option<&TestCa>) -> std::io::Result<Self> {
        let spans: Spans = Arc::default();
        let received = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let received = received.clone();
                async move { receive_http(&received, &headers, &body) }
            }),
        );
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_addr = http.local_addr()?;
        let http_server = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(http, app).await;
            }),
            Some(ca) => {
                let listener = TlsListener {
                    tcp: http,
                    acceptor: ca.acceptor(),
                };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                })
            }
        };
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc.local_addr()?;
        let receiver = TraceServiceServer::new(GrpcReceiver(spans.clone()));
        let mut server = tonic::transport::Server::builder();
        if let Some(ca) = tls {
            let identity = tonic::transport::Identity::from_pem(
                std::fs::read(ca.server_cert_file())?,
                std::fs::read(ca.server_key_file())?,
            );
            let client_ca = tonic::transport::Certificate::from_pem(std::fs::read(ca.ca_file())?);
            server = server
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(identity)
                        .client_ca_root(client_ca),
                )
                .map_err(std::io::Error::other)?;
        }
        let grpc_server = tokio::spawn(async move {
            let _ = server
                .add_service(receiver)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
                .await;
        });
        Ok(Self {
            http_addr,
            grpc_addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            spans,
            servers: [http_server, grpc_server],
        })
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should say for OTLP/HTTP.
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.http_addr)
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should say for OTLP/gRPC.
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc_addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn receive_http(spans: &Spans, headers: &HeaderMap, body: &[u8]) -> axum::response::Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let request = match json {
        true => serde_json::from_slice::<ExportTraceServiceRequest>(body).ok(),
        false => ExportTraceServiceRequest::decode(body).ok(),
    };
    let Some(request) = request else {
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    keep(spans, request, "http");
    match json {
        true => (
            [(header::CONTENT_TYPE, "application/json")],
            "{}".to_string().into_bytes(),
        )
            .into_response(),
        false => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
            .into_response(),
    }
}

fn keep(spans: &Spans, request: ExportTraceServiceRequest, transport: &'static str) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode as Code;
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| flatten(r.attributes))
            .unwrap_or_default();
        let service_name = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let kind = match SpanKind::try_from(span.kind) {
                    Ok(SpanKind::Server) => "server",
                    Ok(SpanKind::Client) => "client",
                    Ok(SpanKind::Internal) => "internal",
                    Ok(SpanKind::Producer) => "producer",
                    Ok(SpanKind::Consumer) => "consumer",
                    _ => "unspecified",
                };
                let (status, status_message) = match span.status {
                    Some(status) => (
                        match Code::try_from(status.code) {
                            Ok(Code::Ok) => SpanStatus::Ok,
                            Ok(Code::Error) => SpanStatus::Error,
                            _ => SpanStatus::Unset,
                        },
                        status.message,
                    ),
                    None => (SpanStatus::Unset, String::new()),
                };
                received.push(ReceivedSpan {
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    name: span.name,
                    kind,
                    status,
                    status_message,
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    attributes: flatten(span.attributes),
                    transport,
                });
            }
        }
    }
    spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(received);
}

fn flatten(
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> Vec<(String, Attribute)> {
    attributes
        .into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(AnyValue::StringValue(s)) => Attribute::String(s),
                Some(AnyValue::IntValue(i)) => Attribute::Int(i),
                Some(AnyValue::BoolValue(b)) => Attribute::Bool(b),
                Some(AnyValue::DoubleValue(d)) => Attribute::Double(d),
                Some(other) => Attribute::Other(format!("{other:?}")),
                None => Attribute::Other(String::new()),
            };
            (kv.key, value)
        })
        .collect()
}
