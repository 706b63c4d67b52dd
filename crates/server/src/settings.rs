//! Typed settings in layers: the struct's `Default`, then an optional TOML file, then
//! `CASCADE__SECTION__KEY` environment variables. Tests build settings values directly
//! and never touch the process environment.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub const ENV_PREFIX: &str = "CASCADE";

#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

/// Loads `T` from its defaults, `file` (when given) and the environment.
pub fn load<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
) -> Result<T, SettingsError> {
    let mut builder =
        config::Config::builder().add_source(config::Config::try_from(&T::default())?);
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
    }
    let settings = builder
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()?;
    Ok(settings)
}

/// Loads `T` the way every service binary does: `--settings FILE` (or `$CASCADE_SETTINGS`)
/// over the defaults, then the environment. `about` is the binary's `--help` line.
pub fn from_command_line<T: Serialize + DeserializeOwned + Default>(
    name: &'static str,
    about: &'static str,
) -> Result<T, SettingsError> {
    let matches = clap::Command::new(name)
        .about(about)
        .arg(
            clap::Arg::new("settings")
                .long("settings")
                .env("CASCADE_SETTINGS")
                .value_parser(clap::value_parser!(std::path::PathBuf))
                .help(
                    "Settings file (TOML); CASCADE__SECTION__KEY environment variables override it",
                ),
        )
        .get_matches();
    load(
        matches
            .get_one::<std::path::PathBuf>("settings")
            .map(|p| p.as_path()),
    )
}

/// Where and how a service's gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// Address to bind; port 0 picks a free one (the bound address is printed).
    pub listen: SocketAddr,
    /// How long the server keeps serving after a shutdown signal, health already
    /// NOT_SERVING, so that clients stop sending before it stops accepting. In Kubernetes:
    /// longer than a client's endpoint refresh and the DNS TTL.
    pub shutdown_delay_ms: u64,
    /// How long in-flight calls may then take to finish.
    pub drain_timeout_ms: u64,
    /// Where to serve Prometheus metrics (HTTP `GET /metrics`); unset: not served.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_delay_ms: 0,
            drain_timeout_ms: 5_000,
            metrics_listen: None,
        }
    }
}

impl GrpcSettings {
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}
