//! What the end-to-end tests share: the demo cluster (in process, or as the four service
//! binaries when a test needs processes), the demo decision request, and helpers.

#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cascade_state::StateSettings;
use cascade_testkit::{ClusterSettings, FakeNetworks, InProcessCluster, ServiceProcess, grpcurl};
use serde_json::{Value, json};

pub const DECIDE: &str = "cascade.decision.v1.BidIntake/Decide";

/// The demo configuration, pointing at `networks`.
pub fn demo_configuration(networks: &FakeNetworks) -> cascade_core::config::Configuration {
    let text = std::fs::read_to_string(workspace_file("examples/demo.toml")).unwrap();
    cascade_state::parse_configuration(&cascade_state::fill_placeholders(
        &text,
        &[
            ("DEMO_NETWORK", &networks.addr().to_string()),
            ("DEMO_GRPC_NETWORK", &networks.grpc_addr().to_string()),
        ],
    ))
    .unwrap()
}

pub fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The fake networks, the `[state]` settings (TOML) of a service process and the demo
/// configuration file they point at.
pub async fn demo_state() -> (FakeNetworks, String, tempfile::NamedTempFile) {
    let networks = FakeNetworks::start().await.unwrap();
    let configuration = demo_configuration_file(&networks, "");
    let state = format!(
        "[state]\nconfiguration_file = {:?}\n",
        configuration.path().display().to_string()
    );
    (networks, state, configuration)
}

/// The demo configuration pointing at `networks`, plus a network nobody listens for (the
/// connection-refused path) and `extra` TOML, as a file.
pub fn demo_configuration_file(networks: &FakeNetworks, extra: &str) -> tempfile::NamedTempFile {
    demo_configuration_file_with_timeouts(networks, extra, &[])
}

/// [`demo_configuration_file`], with the timeout of each network named in `timeouts`
/// replaced: for a test whose network is slow on purpose and must still answer in time
/// on a loaded machine.
fn demo_configuration_file_with_timeouts(
    networks: &FakeNetworks,
    extra: &str,
    timeouts: &[(String, Duration)],
) -> tempfile::NamedTempFile {
    let demo = std::fs::read_to_string(workspace_file("examples/demo.toml")).unwrap();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dead_network = format!(
        "[[networks]]\nid = \"deadnet\"\naccount_id = \"demo-network\"\n\
         endpoint = \"http://{closed_port}/openrtb\"\n\n\
         [[mediated_bids]]\nid = \"deadnet-9.00\"\naccount_id = \"demo-network\"\n\
         network_id = \"deadnet\"\ncpm = \"9.00\"\n\
         targeting = {{ ad_units = [\"dead-end\"] }}\n"
    );
    let mut text = format!("{demo}\n{dead_network}\n{extra}")
        .replace("${DEMO_NETWORK}", &networks.addr().to_string())
        .replace("${DEMO_GRPC_NETWORK}", &networks.grpc_addr().to_string());
    if !timeouts.is_empty() {
        let mut table: toml::Table = text.parse().unwrap();
        let declared = table["networks"].as_array_mut().unwrap();
        for (id, timeout) in timeouts {
            let network = declared
                .iter_mut()
                .find(|network| network["id"].as_str() == Some(id))
                .unwrap_or_else(|| panic!("no network {id} in the demo configuration"));
            network["timeout_ms"] = toml::Value::Integer(timeout.as_millis() as i64);
        }
        text = toml::to_string(&table).unwrap();
    }
    let mut configuration = tempfile::NamedTempFile::new().unwrap();
    configuration.write_all(text.as_bytes()).unwrap();
    configuration
}

/// The decision log as segment files in `directory`.
pub fn file_log(directory: &std::path::Path) -> cascade_bid_intake::LogSettings {
    cascade_bid_intake::LogSettings {
        sink: cascade_bid_intake::SinkKind::File,
        directory: directory.to_path_buf(),
        ..Default::default()
    }
}

/// The demo cluster: fake networks, the four services (in this process unless asked for
/// processes), bid-intake's address. Build one with [`Cluster::builder`].
pub struct Cluster {
    pub networks: FakeNetworks,
    /// bid-intake: the decision and admin API.
    pub bid_intake: SocketAddr,
    services: Services,
    _configuration: Option<tempfile::NamedTempFile>,
}

enum Services {
    /// Held so the services run; dropping it stops them.
    InProcess {
        _running: InProcessCluster,
    },
    Processes(Box<Processes>),
}

/// The four services as processes: for what needs a process (signals, a crash, the
/// environment, settings files, per-process metrics and traces).
pub struct Processes {
    pub bid_intake: ServiceProcess,
    /// targeting-evaluation, auction, network-caller.
    pub others: Vec<ServiceProcess>,
    /// What bid-intake was started with, to start it again.
    bid_intake_settings: String,
    env: Vec<(String, String)>,
}

/// How to start a [`Cluster`]: the demo configuration (plus extra TOML) in a file every
/// service loads, or the demo configuration applied to a Redis; typed settings per service.
#[derive(Default)]
pub struct ClusterBuilder {
    extra_configuration: String,
    settings: ClusterSettings,
    networks: Option<FakeNetworks>,
    state: Option<StateSettings>,
    redis_url: Option<String>,
    as_processes: bool,
    env: Vec<(String, String)>,
    /// Admission control on (off unless asked for).
    admission: bool,
    network_timeouts: Vec<(String, Duration)>,
}

impl ClusterBuilder {
    /// Admission control as in production: degrade and shed under overload.
    pub fn admission(mut self) -> Self {
        self.admission = true;
        self
    }

    /// The demo network `id` with `timeout` instead of its own (not with `state()` or
    /// `on_redis()`).
    pub fn network_timeout(mut self, id: &str, timeout: Duration) -> Self {
        self.network_timeouts.push((id.to_string(), timeout));
        self
    }

    /// TOML appended to the demo configuration.
    pub fn configuration(mut self, extra: &str) -> Self {
        self.extra_configuration.push_str(extra);
        self.extra_configuration.push('\n');
        self
    }

    pub fn network_caller(
        mut self,
        edit: impl FnOnce(&mut cascade_network_caller::Settings),
    ) -> Self {
        edit(&mut self.settings.network_caller);
        self
    }

    pub fn bid_intake(mut self, edit: impl FnOnce(&mut cascade_bid_intake::Settings)) -> Self {
        edit(&mut self.settings.bid_intake);
        self
    }

    /// The state in the Redis at `url` (the demo configuration applied to it), reports
    /// flushed every 50 ms, so that one report soon sums every service's counts.
    pub fn on_redis(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_string());
        self
    }

    /// These fake networks instead of new ones.
    pub fn networks(mut self, networks: FakeNetworks) -> Self {
        self.networks = Some(networks);
        self
    }

    /// The state exactly as `state` says, already seeded by the caller.
    pub fn state(mut self, state: StateSettings) -> Self {
        self.state = Some(state);
        self
    }

    /// The admin API behind `token`.
    pub fn admin_token(self, token: &str) -> Self {
        self.bid_intake(|settings| settings.admin_token = Some(token.to_string()))
    }

    /// The four services as processes, each serving its own metrics.
    pub fn processes(mut self) -> Self {
        self.as_processes = true;
        self
    }

    /// An environment variable for every service (as processes).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self.processes()
    }

    pub async fn start(mut self) -> Cluster {
        let networks = match self.networks.take() {
            Some(networks) => networks,
            None => FakeNetworks::start().await.unwrap(),
        };
        assert!(
            (self.extra_configuration.is_empty() && self.network_timeouts.is_empty())
                || (self.state.is_none() && self.redis_url.is_none()),
            "configuration() and network_timeout() edit the demo configuration file: not with state() or on_redis()"
        );
        let (state, configuration) = match (self.state.take(), &self.redis_url) {
            (Some(state), _) => (state, None),
            (None, Some(url)) => {
                use cascade_state::Store as _;
                cascade_state::RedisStore::connect(url)
                    .unwrap()
                    .apply_configuration(demo_configuration(&networks), None)
                    .await
                    .unwrap();
                let state = StateSettings {
                    redis_url: Some(url.clone()),
                    report_flush_interval_ms: 50,
                    ..Default::default()
                };
                (state, None)
            }
            (None, None) => {
                let file = demo_configuration_file_with_timeouts(
                    &networks,
                    &self.extra_configuration,
                    &self.network_timeouts,
                );
                let state = StateSettings {
                    configuration_file: Some(file.path().to_path_buf()),
                    ..Default::default()
                };
                (state, Some(file))
            }
        };
        self.settings.targeting_evaluation.state = state.clone();
        self.settings.network_caller.state = state.clone();
        self.settings.bid_intake.state = state.clone();
        // A test machine runs many clusters on few cores, debug builds: overloaded by
        // construction, where admission would rightly degrade decisions the tests judge.
        // Admission has tests of its own.
        for grpc in [
            &mut self.settings.targeting_evaluation.grpc,
            &mut self.settings.auction.grpc,
            &mut self.settings.network_caller.grpc,
            &mut self.settings.bid_intake.grpc,
        ] {
            grpc.admission.enabled = self.admission;
        }
        let (bid_intake, services) = if self.as_processes {
            let processes = Processes::start(self.settings, &self.env).await;
            (
                processes.bid_intake.addr,
                Services::Processes(Box::new(processes)),
            )
        } else {
            let store = state.open().unwrap();
            let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
            let cluster = InProcessCluster::start(self.settings, store, any_port)
                .await
                .unwrap();
            (
                cluster.bid_intake,
                Services::InProcess { _running: cluster },
            )
        };
        Cluster {
            networks,
            bid_intake,
            services,
            _configuration: configuration,
        }
    }
}

/// Settings as the TOML file a service process reads.
fn settings_file(settings: &impl serde::Serialize) -> String {
    toml::to_string(settings).unwrap()
}

impl Processes {
    async fn start(mut settings: ClusterSettings, env: &[(String, String)]) -> Processes {
        // Every service serves its metrics on a port of its own.
        let metrics = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        settings.targeting_evaluation.grpc.metrics_listen = metrics;
        settings.auction.grpc.metrics_listen = metrics;
        settings.network_caller.grpc.metrics_listen = metrics;
        settings.bid_intake.grpc.metrics_listen = metrics;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let targeting = settings_file(&settings.targeting_evaluation);
        let auction = settings_file(&settings.auction);
        let network_caller = settings_file(&settings.network_caller);
        let (targeting, auction, network_caller) = tokio::join!(
            ServiceProcess::start_with_env("targeting-evaluation", &targeting, &env),
            ServiceProcess::start_with_env("auction", &auction, &env),
            ServiceProcess::start_with_env("network-caller", &network_caller, &env),
        );
        let (targeting, auction, network_caller) = (
            targeting.unwrap(),
            auction.unwrap(),
            network_caller.unwrap(),
        );
        settings.bid_intake.targeting_evaluation_addr = targeting.addr.into();
        settings.bid_intake.auction_addr = auction.addr.into();
        settings.bid_intake.network_caller_addr = network_caller.addr.into();
        let bid_intake_settings = settings_file(&settings.bid_intake);
        let bid_intake = ServiceProcess::start_with_env("bid-intake", &bid_intake_settings, &env)
            .await
            .unwrap();
        Processes {
            bid_intake,
            others: vec![targeting, auction, network_caller],
            bid_intake_settings,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The demo cluster, in process.
    pub async fn start() -> Cluster {
        Self::builder().start().await
    }

    /// The service processes of a cluster built with [`ClusterBuilder::processes`].
    pub fn processes(&self) -> &Processes {
        match &self.services {
            Services::Processes(processes) => processes,
            Services::InProcess { .. } => {
                panic!("this cluster runs in process: build it with .processes()")
            }
        }
    }

    pub fn processes_mut(&mut self) -> &mut Processes {
        match &mut self.services {
            Services::Processes(processes) => processes,
            Services::InProcess { .. } => {
                panic!("this cluster runs in process: build it with .processes()")
            }
        }
    }

    /// Sends bid-intake SIGTERM and waits for it to exit (a cluster of processes).
    pub async fn terminate_bid_intake(&mut self) -> std::process::ExitStatus {
        self.processes_mut().bid_intake.terminate().await.unwrap()
    }

    /// The demo cluster in process on a new redis-server (returned: it lives as long as
    /// the handle), the admin API behind `admin_token`.
    pub async fn on_new_redis(admin_token: &str) -> (cascade_testkit::RedisServer, Cluster) {
        let redis = cascade_testkit::RedisServer::start().await.unwrap();
        let cluster = Self::builder()
            .on_redis(&redis.url())
            .admin_token(admin_token)
            .start()
            .await;
        (redis, cluster)
    }

    /// Kills bid-intake (as a crash would) and starts it again with the same settings;
    /// it listens on a new port.
    pub async fn restart_bid_intake(&mut self) {
        let processes = self.processes_mut();
        let env: Vec<(&str, &str)> = processes
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        processes.bid_intake.kill_in_place().await.unwrap();
        processes.bid_intake =
            ServiceProcess::start_with_env("bid-intake", &processes.bid_intake_settings, &env)
                .await
                .unwrap();
        self.bid_intake = self.processes().bid_intake.addr;
    }

    pub async fn decide(&self, request: &Value) -> Value {
        decide_at(self.bid_intake, request).await
    }

    /// Decide expecting an error; returns grpcurl's error output.
    pub async fn decide_error(&self, request: &Value) -> String {
        let output = grpcurl::call(self.bid_intake, DECIDE, request, &[])
            .await
            .unwrap();
        assert!(!output.success, "expected an error, got {}", output.stdout);
        output.stderr
    }
}

/// Polls `check` every 20 ms until it holds; after `timeout` the test fails saying what
/// it waited for. The one wait of the tests where no readiness signal exists.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs the `cascade` binary with `args` and the extra environment `env`.
pub async fn cascade_output(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    tokio::process::Command::new(cascade_testkit::process::binary_path("cascade"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap()
}

/// [`cascade_output`] expecting success; its standard output.
pub async fn run_cascade(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = cascade_output(args, env).await;
    assert!(
        output.status.success(),
        "cascade {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Decide at the bid-intake listening on `addr`, expecting success.
pub async fn decide_at(addr: std::net::SocketAddr, request: &Value) -> Value {
    let output = grpcurl::call(addr, DECIDE, request, &["-max-time", "5"])
        .await
        .unwrap();
    assert!(output.success, "Decide failed: {}", output.stderr);
    output.json()
}

/// A 300x250 banner on foobar.com (publisher 8953, which inherits the container's rules:
/// floor $0.50, malware.example blocked), optionally with exchange bids.
pub fn banner_request(exchange_bids: Value) -> Value {
    json!({
        "request": {
            "id": "req-1",
            "imp": [{"id": "1", "tagid": "home-top", "banner": {"w": 300, "h": 250}}],
            "site": {"domain": "www.foobar.com", "publisher": {"id": "8953"}},
            "device": {"devicetype": 2, "geo": {"country": "DEU"}}
        },
        "exchange_bids": exchange_bids,
        "debug": true
    })
}

pub fn exchange_bid(price: f64, adomain: &str) -> Value {
    json!([{
        "cur": "USD",
        "seatbid": [{"seat": "dsp-1", "bid": [
            {"id": "x1", "impid": "1", "price": price, "adomain": [adomain], "adm": "<div>exchange</div>"}
        ]}]
    }])
}

pub fn winner(response: &Value) -> &Value {
    &response["decisions"][0]["winner"]
}

/// The value of the sample of `name` whose labels include `labels`, in Prometheus text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let has_all = labels
            .iter()
            .all(|(key, value)| label_text.contains(&format!("{key}=\"{value}\"")));
        has_all.then(|| value.trim().parse().ok()).flatten()
    })
}

/// The network totals of `network` in `cascade report --csv` output, summed over the
/// days it lists: column name -> value.
pub fn network_totals(csv: &str, network: &str) -> std::collections::BTreeMap<String, i64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let mut totals = std::collections::BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.get(1) != Some(&network) || cells.get(2).is_some_and(|c| !c.is_empty()) {
            continue;
        }
        for (name, cell) in header.iter().zip(cells).skip(3) {
            if let Ok(value) = cell.parse::<i64>() {
                *totals.entry(name.to_string()).or_default() += value;
            }
        }
    }
    totals
}
