//! What the end-to-end tests share: the four service binaries as processes on free
//! ports, and the demo decision request.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

use cascade_testkit::{FakeNetworks, ServiceProcess, grpcurl};
use serde_json::{Value, json};

pub const DECIDE: &str = "cascade.decision.v1.BidIntake/Decide";

pub struct Cluster {
    pub networks: FakeNetworks,
    pub bid_intake: ServiceProcess,
    pub others: Vec<ServiceProcess>,
    _configuration: Option<tempfile::NamedTempFile>,
    /// What bid-intake was started with, to start it again.
    bid_intake_settings: String,
    env: Vec<(String, String)>,
}

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

/// The fake networks, the `[state]` settings every service reads and the demo
/// configuration file they point at.
pub async fn demo_state() -> (FakeNetworks, String, tempfile::NamedTempFile) {
    demo_state_with("").await
}

/// [`demo_state`] with `extra` TOML appended to the demo configuration.
pub async fn demo_state_with(extra: &str) -> (FakeNetworks, String, tempfile::NamedTempFile) {
    let networks = FakeNetworks::start().await.unwrap();
    let demo = std::fs::read_to_string(workspace_file("examples/demo.toml")).unwrap();
    let demo = demo
        .replace("${DEMO_NETWORK}", &networks.addr().to_string())
        .replace("${DEMO_GRPC_NETWORK}", &networks.grpc_addr().to_string());
    // Plus a network nobody listens for, for the connection-refused path.
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
    let mut configuration = tempfile::NamedTempFile::new().unwrap();
    configuration
        .write_all(
            format!("{demo}\n{dead_network}\n{extra}")
                .replace("${DEMO_NETWORK}", &networks.addr().to_string())
                .as_bytes(),
        )
        .unwrap();
    let state = format!(
        "[state]\nconfiguration_file = {:?}\n",
        configuration.path().display().to_string()
    );
    (networks, state, configuration)
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with("").await
    }

    /// The demo cluster on a real redis-server its four services share (so one report
    /// sums all of their counts, flushed every 50 ms), the admin API behind
    /// `admin_token`. The server lives as long as the returned handle.
    pub async fn start_on_redis(admin_token: &str) -> (cascade_testkit::RedisServer, Cluster) {
        use cascade_state::Store as _;
        let redis = cascade_testkit::RedisServer::start().await.unwrap();
        let networks = FakeNetworks::start().await.unwrap();
        cascade_state::RedisStore::connect(&redis.url())
            .unwrap()
            .apply_configuration(demo_configuration(&networks), None)
            .await
            .unwrap();
        let state = format!(
            "[state]\nredis_url = \"{}\"\nreport_flush_interval_ms = 50\n",
            redis.url()
        );
        let cluster = Self::start_services(
            networks,
            &state,
            "",
            &format!("admin_token = \"{admin_token}\""),
            None,
        )
        .await;
        (redis, cluster)
    }

    /// The demo cluster with `extra` TOML appended to its configuration.
    pub async fn start_with_configuration(extra: &str) -> Cluster {
        let (networks, state, configuration) = demo_state_with(extra).await;
        Self::start_services(networks, &state, "", "", Some(configuration)).await
    }

    /// [`Cluster::start_with_configuration`], every service with the extra environment
    /// variables `env`.
    pub async fn start_with_configuration_and_env(extra: &str, env: &[(&str, &str)]) -> Cluster {
        let (networks, state, configuration) = demo_state_with(extra).await;
        Self::start_services_with_env(networks, &state, "", "", Some(configuration), env).await
    }

    /// A cluster whose network-caller gets `network_caller_settings` (TOML) too.
    pub async fn start_with(network_caller_settings: &str) -> Cluster {
        Self::start_demo(network_caller_settings, "", &[]).await
    }

    /// The demo cluster, network-caller and bid-intake with extra settings, every
    /// service with the extra environment variables `env`.
    pub async fn start_demo(
        network_caller_settings: &str,
        bid_intake_settings: &str,
        env: &[(&str, &str)],
    ) -> Cluster {
        let (networks, state, configuration) = demo_state().await;
        Self::start_services_with_env(
            networks,
            &state,
            network_caller_settings,
            bid_intake_settings,
            Some(configuration),
            env,
        )
        .await
    }

    /// The four service processes with the `[state]` settings `state`, and extra
    /// top-level settings for network-caller and bid-intake.
    pub async fn start_services(
        networks: FakeNetworks,
        state: &str,
        network_caller_settings: &str,
        bid_intake_settings: &str,
        configuration: Option<tempfile::NamedTempFile>,
    ) -> Cluster {
        Self::start_services_with_env(
            networks,
            state,
            network_caller_settings,
            bid_intake_settings,
            configuration,
            &[],
        )
        .await
    }

    /// [`Cluster::start_services`] with extra environment variables for every service.
    pub async fn start_services_with_env(
        networks: FakeNetworks,
        state: &str,
        network_caller_settings: &str,
        bid_intake_settings: &str,
        configuration: Option<tempfile::NamedTempFile>,
        env: &[(&str, &str)],
    ) -> Cluster {
        // Every service serves its metrics on a port of its own.
        let metrics = "grpc.metrics_listen = \"127.0.0.1:0\"\n";
        let network_caller = format!("{metrics}{network_caller_settings}\n{state}");
        let targeting = format!("{metrics}{state}");
        let (targeting, auction, network_caller) = tokio::join!(
            ServiceProcess::start_with_env("targeting-evaluation", &targeting, env),
            ServiceProcess::start_with_env("auction", metrics, env),
            ServiceProcess::start_with_env("network-caller", &network_caller, env),
        );
        let (targeting, auction, network_caller) = (
            targeting.unwrap(),
            auction.unwrap(),
            network_caller.unwrap(),
        );
        let bid_intake_settings = format!(
            "{metrics}{bid_intake_settings}\ntargeting_evaluation_addr = \"{}\"\nauction_addr = \"{}\"\nnetwork_caller_addr = \"{}\"\n{state}",
            targeting.addr, auction.addr, network_caller.addr
        );
        let bid_intake = ServiceProcess::start_with_env("bid-intake", &bid_intake_settings, env)
            .await
            .unwrap();
        Cluster {
            networks,
            bid_intake,
            others: vec![targeting, auction, network_caller],
            _configuration: configuration,
            bid_intake_settings,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Kills bid-intake (as a crash would) and starts it again with the same settings;
    /// it listens on a new port.
    pub async fn restart_bid_intake(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.bid_intake.kill_in_place().await.unwrap();
        self.bid_intake =
            ServiceProcess::start_with_env("bid-intake", &self.bid_intake_settings, &env)
                .await
                .unwrap();
    }

    pub async fn decide(&self, request: &Value) -> Value {
        decide_at(self.bid_intake.addr, request).await
    }

    /// Decide expecting an error; returns grpcurl's error output.
    pub async fn decide_error(&self, request: &Value) -> String {
        let output = grpcurl::call(self.bid_intake.addr, DECIDE, request, &[])
            .await
            .unwrap();
        assert!(!output.success, "expected an error, got {}", output.stdout);
        output.stderr
    }
}

/// Polls `check` every 20 ms until it holds; after `timeout` the test fails saying what
/// it waited for. The one wait of the tests where no readiness signal exists.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
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
