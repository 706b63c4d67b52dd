//! The Kubernetes manifests' settings, for real: each service binary starts with its
//! settings file from `deploy/base/settings/` and the environment its Deployment in
//! `deploy/base/` gives it — Secret and ConfigMap references filled with this test's Redis
//! and token — with only the listen addresses and the other services' addresses moved to
//! free local ports. A settings key the services do not know, an environment variable
//! they cannot parse or a reference this test has not seen fails here, before a cluster.

use std::collections::BTreeMap;

use crate::support::{banner_request, decide_at, demo_configuration, winner, workspace_file};
use cascade_state::Store;
use cascade_testkit::{FakeNetworks, RedisServer, ServiceProcess, grpcurl};
use serde::Deserialize;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "deploy-test-token";

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(workspace_file(path)).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .collect()
}

/// The literals of the ConfigMap `name` the base's kustomization generates.
fn generated_literals(name: &str) -> BTreeMap<String, String> {
    let kustomization = &yaml_documents("deploy/base/kustomization.yaml")[0];
    let generator = kustomization["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .find(|generator| generator["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} in the base"));
    generator["literals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|literal| {
            let (key, value) = literal.as_str().unwrap().split_once('=').unwrap();
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// The environment `service`'s Deployment gives its container, references resolved.
fn deployment_environment(service: &str, redis_url: &str) -> BTreeMap<String, String> {
    let documents = yaml_documents(&format!("deploy/base/{service}.yaml"));
    let deployment = documents
        .iter()
        .find(|document| document["kind"] == "Deployment")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["command"],
        json!([format!("/usr/local/bin/{service}")])
    );
    let mut environment = generated_literals("cascade-environment");
    for variable in container["env"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap().to_string();
        let value = if let Some(value) = variable["value"].as_str() {
            value.to_string()
        } else if let Some(secret) = variable["valueFrom"].get("secretKeyRef") {
            match (secret["name"].as_str(), secret["key"].as_str()) {
                (Some("cascade-redis"), Some("url")) => redis_url.to_string(),
                // This test's Secret, like a single-Redis deployment's, has no
                // `cluster_nodes`: an optional key that is absent sets nothing.
                (Some("cascade-redis"), Some("cluster_nodes")) => {
                    assert_eq!(secret["optional"], true, "{service}");
                    continue;
                }
                (Some("cascade-admin"), Some("token")) => ADMIN_TOKEN.to_string(),
                other => panic!("{service}: a Secret this test does not know: {other:?}"),
            }
        } else {
            panic!("{service}: cannot resolve {variable}");
        };
        environment.insert(name, value);
    }
    environment
}

async fn start(service: &str, redis_url: &str, overrides: &[(&str, String)]) -> ServiceProcess {
    let mut environment = deployment_environment(service, redis_url);
    // The settings file is mounted from the cascade-settings ConfigMap.
    assert_eq!(
        environment.remove("CASCADE_SETTINGS").as_deref(),
        Some(format!("/etc/cascade/{service}.toml").as_str())
    );
    environment.insert("RUST_LOG".into(), "warn".into());
    for (name, value) in overrides {
        environment.insert(name.to_string(), value.clone());
    }
    let local = [
        ("CASCADE__GRPC__LISTEN", "127.0.0.1:0"),
        ("CASCADE__GRPC__METRICS_LISTEN", "127.0.0.1:0"),
        ("CASCADE__GRPC__SHUTDOWN_DELAY_MS", "0"),
    ];
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain(local)
        .collect();
    let settings = std::fs::read_to_string(workspace_file(&format!(
        "deploy/base/settings/{service}.toml"
    )))
    .unwrap();
    ServiceProcess::start_with_env(service, &settings, &environment)
        .await
        .unwrap_or_else(|e| panic!("{service} does not start with its Kubernetes settings: {e}"))
}

#[tokio::test]
async fn the_services_run_on_their_kubernetes_settings() {
    let redis = RedisServer::start().await.unwrap();
    let networks = FakeNetworks::start().await.unwrap();
    cascade_state::RedisStore::connect(&redis.url())
        .unwrap()
        .apply_configuration(demo_configuration(&networks), Some(0))
        .await
        .unwrap();
    let url = redis.url();
    let (targeting, auction, network_caller) = tokio::join!(
        start("targeting-evaluation", &url, &[]),
        start("auction", &url, &[]),
        start("network-caller", &url, &[]),
    );
    let bid_intake = start(
        "bid-intake",
        &url,
        &[
            (
                "CASCADE__TARGETING_EVALUATION_ADDR",
                targeting.addr.to_string(),
            ),
            ("CASCADE__AUCTION_ADDR", auction.addr.to_string()),
            (
                "CASCADE__NETWORK_CALLER_ADDR",
                network_caller.addr.to_string(),
            ),
        ],
    )
    .await;

    let response = decide_at(bid_intake.addr, &banner_request(json!([]))).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_MEDIATED_NETWORK",
        "{response}"
    );
    // The admin API takes the token from the Secret.
    let admin = grpcurl::call(
        bid_intake.addr,
        "cascade.admin.v1.Admin/ListEntities",
        &json!({"kind": "ENTITY_KIND_NETWORK"}),
        &["-H", &format!("authorization: Bearer {ADMIN_TOKEN}")],
    )
    .await
    .unwrap();
    assert!(admin.success, "ListEntities failed: {}", admin.stderr);
    assert!(admin.stdout.contains("coolads"), "{}", admin.stdout);
}

/// A setting out of range, or two that contradict each other, stop a service at start
/// with a message naming the key, instead of running on a silently clamped value.
#[tokio::test]
async fn a_bad_setting_stops_a_service_at_start_naming_its_key() {
    let cases = [
        (
            "bid-intake",
            "bidding_budget_ms = 9000\nmax_budget_ms = 5000\n",
            "setting bidding_budget_ms",
        ),
        (
            "bid-intake",
            "[notices]\nbilling_lease_ms = 10\n",
            "setting notices.billing_lease_ms",
        ),
        (
            "network-caller",
            "breaker_failures_to_open = 0\n",
            "setting breaker_failures_to_open",
        ),
        (
            "targeting-evaluation",
            "[state]\npoll_interval_ms = 1\n",
            "setting state.poll_interval_ms",
        ),
        (
            "targeting-evaluation",
            "[state]\nredis_url = \"localhost:6379\"\n",
            "setting state.redis_url",
        ),
    ];
    for (binary, settings, expected) in cases {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, settings.as_bytes()).unwrap();
        let output = tokio::process::Command::new(cascade_testkit::process::binary_path(binary))
            .arg("--settings")
            .arg(file.path())
            .env_remove("CASCADE_SETTINGS")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{binary} started with {settings:?}"
        );
        assert!(
            stderr.contains(expected),
            "{binary}: expected {expected:?} in {stderr}"
        );
    }
}
