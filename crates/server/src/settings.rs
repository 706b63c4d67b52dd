//! Typed settings in layers: the struct's `Default`, then an optional TOML file, then
//! `CASCADE__SECTION__KEY` environment variables. Tests build settings values directly
//! and never touch the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cascade_core::settings::{InvalidSetting, Validate};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub const ENV_PREFIX: &str = "CASCADE";

/// The settings that are lists, as their environment variables give them: comma-separated.
const LIST_KEYS: &[&str] = &["state.redis_cluster_nodes", "outbound.allow_private"];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid settings: {0}")]
    Read(#[from] config::ConfigError),
    #[error("invalid settings: {0}")]
    Invalid(#[from] InvalidSetting),
}

/// Loads `T` from its defaults, `file` (when given) and the environment.
pub fn load<T: Serialize + DeserializeOwned + Default + Validate>(
    file: Option<&Path>,
) -> Result<T, SettingsError> {
    load_with_environment(file, None)
}

/// [`load`] with `environment` standing in for the process environment when given.
fn load_with_environment<T: Serialize + DeserializeOwned + Default + Validate>(
    file: Option<&Path>,
    environment: Option<config::Map<String, String>>,
) -> Result<T, SettingsError> {
    let mut builder =
        config::Config::builder().add_source(config::Config::try_from(&T::default())?);
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
    }
    // Only the keys named as lists are split at commas; every other value (a URL
    // included) is kept whole.
    let mut variables = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    for key in LIST_KEYS {
        variables = variables.with_list_parse_key(key);
    }
    let settings = builder
        .add_source(variables.source(environment))
        .build()?
        .try_deserialize::<T>()?;
    // Checked once, here: a service with a bad setting exits at start naming it.
    settings.validate()?;
    Ok(settings)
}

/// Loads `T` the way every service binary does: `--settings FILE` (or `$CASCADE_SETTINGS`)
/// over the defaults, then the environment. `about` is the binary's `--help` line.
pub fn from_command_line<T: Serialize + DeserializeOwned + Default + Validate>(
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
    /// When calls are degraded and shed under overload.
    pub admission: crate::admission::AdmissionSettings,
    /// Serve over TLS with this certificate and key (PEM); unset: plaintext.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Require every client to present a certificate this CA issued (mTLS).
    pub tls_client_ca_file: Option<PathBuf>,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_delay_ms: 0,
            drain_timeout_ms: 5_000,
            metrics_listen: None,
            admission: crate::admission::AdmissionSettings::default(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
        }
    }
}

impl Validate for GrpcSettings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        // Beyond ten minutes a stop is not graceful but stuck.
        const LONGEST_MS: u64 = 600_000;
        for (key, value) in [
            ("shutdown_delay_ms", self.shutdown_delay_ms),
            ("drain_timeout_ms", self.drain_timeout_ms),
        ] {
            if value > LONGEST_MS {
                return Err(InvalidSetting::new(
                    key,
                    format!("must be at most {LONGEST_MS}, got {value}"),
                ));
            }
        }
        self.admission.validate_under("admission")?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(InvalidSetting::new(
                "tls_key_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(InvalidSetting::new(
                "tls_client_ca_file",
                "requires tls_cert_file and tls_key_file: client certificates need TLS",
            ));
        }
        if self
            .metrics_listen
            .is_some_and(|metrics| metrics == self.listen && metrics.port() != 0)
        {
            return Err(InvalidSetting::new(
                "metrics_listen",
                "must differ from listen",
            ));
        }
        Ok(())
    }
}

impl GrpcSettings {
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The server's TLS, when its certificate and key are set.
    pub fn tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, crate::tls::TlsError> {
        crate::tls::pair(self.tls_cert_file.as_deref(), self.tls_key_file.as_deref())
            .map(|(cert, key)| crate::tls::server(cert, key, self.tls_client_ca_file.as_deref()))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        grpc: GrpcSettings,
        url: Option<String>,
        enabled: bool,
        state: ExampleState,
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct ExampleState {
        redis_cluster_nodes: Vec<String>,
    }

    impl Validate for Example {
        fn validate(&self) -> Result<(), InvalidSetting> {
            self.grpc.validate_under("grpc")
        }
    }

    #[test]
    fn a_setting_out_of_range_is_refused_naming_its_key() {
        let environment = config::Map::from([(
            "CASCADE__GRPC__DRAIN_TIMEOUT_MS".to_string(),
            "99999999".to_string(),
        )]);
        let error = load_with_environment::<Example>(None, Some(environment)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("setting grpc.drain_timeout_ms: must be at most"),
            "{error}"
        );
    }

    #[test]
    fn the_environment_overrides_the_file_and_keeps_strings_whole() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"url = \"redis://file:6379\"\n[grpc]\ndrain_timeout_ms = 7\n",
        )
        .unwrap();
        let environment = config::Map::from([
            (
                "CASCADE__URL".to_string(),
                "redis://a:6379,redis://b:6379".to_string(),
            ),
            ("CASCADE__ENABLED".to_string(), "true".to_string()),
            (
                "CASCADE__GRPC__LISTEN".to_string(),
                "0.0.0.0:50051".to_string(),
            ),
        ]);
        let loaded: Example = load_with_environment(Some(file.path()), Some(environment)).unwrap();
        assert_eq!(loaded.url.as_deref(), Some("redis://a:6379,redis://b:6379"));
        assert!(loaded.enabled);
        assert_eq!(loaded.grpc.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(loaded.grpc.drain_timeout_ms, 7);
    }

    #[test]
    fn a_list_setting_from_the_environment_is_split_at_commas() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"[state]\nredis_cluster_nodes = [\"redis://file:6379\"]\n",
        )
        .unwrap();
        let loaded: Example = load_with_environment(Some(file.path()), None).unwrap();
        assert_eq!(loaded.state.redis_cluster_nodes, ["redis://file:6379"]);
        let environment = config::Map::from([(
            "CASCADE__STATE__REDIS_CLUSTER_NODES".to_string(),
            "redis://a:6379,redis://b:6379".to_string(),
        )]);
        let loaded: Example = load_with_environment(Some(file.path()), Some(environment)).unwrap();
        assert_eq!(
            loaded.state.redis_cluster_nodes,
            ["redis://a:6379", "redis://b:6379"]
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let environment =
            config::Map::from([("CASCADE__GRPC__LISTN".to_string(), "x".to_string())]);
        let error = load_with_environment::<Example>(None, Some(environment)).unwrap_err();
        assert!(error.to_string().contains("listn"), "{error}");
    }
}
