//! What every Cascade service shares: settings loading, the gRPC bootstrap (health,
//! reflection, graceful bounded shutdown), deadline handling, telemetry and clients.

pub mod admission;
pub mod channel;
pub mod deadline;
pub mod grpc;
pub mod hedge;
pub mod metrics;
pub mod sampling;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod wire;

pub use grpc::{GrpcServer, STATE_HEALTH_NAME, ServeError};

/// An environment of `vars` for the functions that read settings through a closure.
#[cfg(test)]
pub(crate) fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    |name| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    }
}
