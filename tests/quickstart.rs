//! The README's quick start, as a user runs it: `cascade up` (embedded state, no Redis;
//! or on a Redis Cluster), then the `grpcurl` command it prints, then Ctrl-C; the
//! decision is in the log `cascade log` reads.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{decide_at, run_cascade, winner};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn cascade_up_serves_the_decision_its_banner_prints() {
    up_serves_the_decision_its_banner_prints(&[]).await;
}

#[tokio::test]
async fn cascade_up_keeps_its_state_in_a_redis_cluster_when_asked() {
    use cascade_state::Store as _;
    let cluster = cascade_testkit::RedisCluster::start().await.unwrap();
    let nodes = cluster.urls().join(",");
    up_serves_the_decision_its_banner_prints(&["--redis-cluster", &nodes]).await;
    // The demo configuration was written to the cluster, where a store of its own reads it.
    let store = cascade_state::RedisStore::connect_cluster(&cluster.urls()).unwrap();
    assert_eq!(store.configuration_version().await.unwrap(), 1);
}

/// Runs `cascade up` with `extra` arguments, decides with the command its banner prints,
/// and stops it with Ctrl-C.
async fn up_serves_the_decision_its_banner_prints(extra: &[&str]) {
    let log = tempfile::tempdir().unwrap();
    let log_dir = log.path().to_str().unwrap();
    let mut up = tokio::process::Command::new(cascade_testkit::process::binary_path("cascade"))
        .args(["up", "--listen", "127.0.0.1:0", "--log-dir", log_dir])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    // The banner's command: grpcurl -plaintext -d 'REQUEST' ADDR cascade.decision.v1.BidIntake/Decide
    let command = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("grpcurl -plaintext -d '") {
                return line;
            }
        }
        panic!("cascade up printed no grpcurl command");
    })
    .await
    .expect("cascade up did not come up in 30 s");
    let (request, rest) = command
        .strip_prefix("grpcurl -plaintext -d '")
        .and_then(|rest| rest.split_once("' "))
        .unwrap();
    let request: Value = serde_json::from_str(request).unwrap();
    let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();

    let response = decide_at(addr, &request).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_MEDIATED_NETWORK",
        "{response}"
    );

    let pid = up.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), up.wait())
        .await
        .expect("cascade up did not stop on Ctrl-C")
        .unwrap();
    assert!(status.success(), "cascade up exited with {status}");
    // Stopping wrote what the log had queued.
    let request_id = request["request"]["id"].as_str().unwrap();
    let logged = run_cascade(
        &["log", "query", "--dir", log_dir, "--request-id", request_id],
        &[],
    )
    .await;
    let entry: Value = serde_json::from_str(logged.trim()).unwrap();
    assert_eq!(
        entry["decision"]["imps"][0]["winner"]["selection_id"],
        winner(&response)["selectionId"],
        "{logged}"
    );
    // Replayed under the configuration it ran with, the decision sells as it did.
    let demo = crate::support::workspace_file("examples/demo.toml");
    let replayed = run_cascade(
        &[
            "replay",
            "--dir",
            log_dir,
            "--configuration",
            demo.to_str().unwrap(),
            "--json",
        ],
        &[],
    )
    .await;
    let summary: Value = serde_json::from_str(&replayed).unwrap();
    assert_eq!(summary["decisions_replayed"], 1, "{summary}");
    assert_eq!(summary["impressions_changed"], 0, "{summary}");
}
