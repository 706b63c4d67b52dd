//! The gRPC bootstrap every service runs: its own routes plus `grpc.health.v1` and
//! server reflection, health that follows readiness, and a bounded graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admission::{Admission, AdmissionLayer};
use crate::settings::GrpcSettings;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot serve metrics: {0}")]
    Metrics(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Stops a background task when the server stops, however it stops.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// One service's gRPC server, built from its routes and the names of its services (the
/// names health reports on).
pub struct GrpcServer {
    routes: Routes,
    service_names: Vec<&'static str>,
    staleness: Option<tokio::sync::watch::Receiver<bool>>,
    readiness: Option<tokio::sync::watch::Receiver<bool>>,
    /// The admission state and the services shed in front of their handlers; unset: one
    /// made from the settings, shedding all of the server's own services.
    admission: Option<(Admission, Vec<&'static str>)>,
    /// The services whose calls are judged in front by the publisher they name, and what
    /// counts one shed there.
    by_publisher: (Vec<&'static str>, fn()),
}

/// The health-check name that reports whether a service's configuration snapshot is
/// current (SERVING) or stale because the shared state cannot be read (NOT_SERVING).
/// Informational: a stale service keeps deciding, so readiness must not use it.
pub const STATE_HEALTH_NAME: &str = "cascade.state";

impl GrpcServer {
    /// `routes` holds the service's own gRPC services; `service_names` their full names
    /// (`NamedService::NAME`).
    pub fn new(routes: Routes, service_names: &[&'static str]) -> Self {
        Self {
            routes,
            service_names: service_names.to_vec(),
            staleness: None,
            readiness: None,
            admission: None,
            by_publisher: (Vec::new(), || {}),
        }
    }

    /// Health answers NOT_SERVING until `readiness` turns true (the first snapshot is
    /// loaded), SERVING from then on; without it, SERVING from the first call.
    pub fn ready_when(mut self, readiness: tokio::sync::watch::Receiver<bool>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Uses `admission` (a service that decides itself what to degrade or shed holds it
    /// too) and sheds only the calls to `shed_in_front` before they reach their handler.
    pub fn admitting(mut self, admission: Admission, shed_in_front: &[&'static str]) -> Self {
        self.admission = Some((admission, shed_in_front.to_vec()));
        self
    }

    /// Judges the calls to `services` that name their publisher in
    /// [`crate::admission::PUBLISHER_HEADER`] in front of their handler, by the
    /// publisher's fair share (see [`crate::admission::AdmissionLayer::by_publisher`]);
    /// `on_shed` counts each one shed there.
    pub fn judging_by_publisher(mut self, services: &[&'static str], on_shed: fn()) -> Self {
        self.by_publisher = (services.to_vec(), on_shed);
        self
    }

    /// Reports `staleness` (true: stale) under [`STATE_HEALTH_NAME`].
    pub fn reporting_staleness(mut self, staleness: tokio::sync::watch::Receiver<bool>) -> Self {
        self.staleness = Some(staleness);
        self
    }

    /// Serves on `listener` until `shutdown` resolves. Health answers SERVING once the
    /// service is ready (see [`GrpcServer::ready_when`]). On
    /// shutdown, health turns NOT_SERVING, calls are still served for `shutdown_delay`,
    /// then the server stops accepting and in-flight calls get `drain_timeout` to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        settings: &GrpcSettings,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        crate::metrics::register_calls(&self.service_names);
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health_names: Vec<&'static str> =
            self.service_names.iter().copied().chain([""]).collect();
        let ready_now = self.readiness.as_ref().is_none_or(|ready| *ready.borrow());
        let initial = if ready_now {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in &health_names {
            health_reporter.set_service_status(*name, initial).await;
        }
        // What the HTTP readiness endpoint answers, in step with gRPC health.
        let (serving, serving_now) = tokio::sync::watch::channel(ready_now);
        // Turns SERVING once ready, unless the server is stopping by then.
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let (false, Some(mut readiness)) = (ready_now, self.readiness.clone()) {
            let reporter = health_reporter.clone();
            let names = health_names.clone();
            let stopping = stopping.clone();
            let serving = serving.clone();
            tokio::spawn(async move {
                if readiness.wait_for(|ready| *ready).await.is_err() {
                    return;
                }
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                for name in names {
                    reporter
                        .set_service_status(name, ServingStatus::Serving)
                        .await;
                }
                serving.send_replace(true);
            });
        }
        if let Some(mut staleness) = self.staleness.clone() {
            let reporter = health_reporter.clone();
            tokio::spawn(async move {
                loop {
                    let status = if *staleness.borrow_and_update() {
                        ServingStatus::NotServing
                    } else {
                        ServingStatus::Serving
                    };
                    reporter.set_service_status(STATE_HEALTH_NAME, status).await;
                    if staleness.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        let reflection_v1 = reflection_builder(&self.service_names).build_v1()?;
        // grpcurl before 1.8.8 speaks only the v1alpha reflection protocol.
        let reflection_v1alpha = reflection_builder(&self.service_names).build_v1alpha()?;
        let routes = self
            .routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let metrics_endpoint = match settings.metrics_listen {
            Some(listen) => Some(crate::metrics::serve(listen, serving_now).await?),
            None => None,
        };
        let _stop_metrics = AbortOnDrop(metrics_endpoint);
        let (stop_accepting_tx, stop_accepting_rx) = tokio::sync::oneshot::channel::<()>();
        // The builder's `tcp_nodelay` applies only to listeners tonic binds itself: an
        // accepted connection of ours gets it here, or small responses wait on Nagle.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let (admission, shed_in_front) = self.admission.unwrap_or_else(|| {
            (
                Admission::start(&settings.admission),
                self.service_names.clone(),
            )
        });
        let mut builder = Server::builder();
        if let Some(tls) = settings.tls()? {
            builder = builder.tls_config(tls)?;
        }
        let server = builder
            .layer(crate::telemetry::ServerObserveLayer)
            .layer(crate::deadline::EnforceDeadlineLayer)
            .layer(
                AdmissionLayer::new(admission, &shed_in_front)
                    .by_publisher(&self.by_publisher.0, self.by_publisher.1),
            )
            .layer(tower::util::MapResponseLayer::new(
                crate::status::oversized_as_resource_exhausted::<tonic::body::Body> as fn(_) -> _,
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_accepting_rx.await;
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return Ok(result?),
            () = shutdown => {}
        }

        stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        serving.send_replace(false);
        for name in &health_names {
            health_reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        // Keep serving while clients and load balancers notice NOT_SERVING (or the pod
        // leaving the endpoints) and send their calls elsewhere.
        tokio::select! {
            result = &mut server => return Ok(result?),
            () = tokio::time::sleep(settings.shutdown_delay()) => {}
        }
        let _ = stop_accepting_tx.send(());
        match tokio::time::timeout(settings.drain_timeout(), server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(
                drain_timeout_ms = settings.drain_timeout_ms,
                "in-flight calls did not finish in time; closing them"
            ),
        }
        Ok(())
    }
}

/// Reflection listing only what this server serves, so `grpcurl list` tells the
/// services apart.
fn reflection_builder(
    service_names: &[&'static str],
) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cascade_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.BadRequest and the other error details, so that grpcurl can show
        // the field violations of an INVALID_ARGUMENT.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    service_names
        .iter()
        .fold(builder, |builder, name| builder.with_service_name(*name))
}

/// Binds the configured address (port 0 picks a free one) and prints the bound address
/// on stdout as `NAME listening on ADDR`, the line operators and tests read.
pub async fn bind(name: &str, settings: &GrpcSettings) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(settings.listen).await?;
    println!("{name} listening on {}", listener.local_addr()?);
    Ok(listener)
}
