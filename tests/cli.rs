//! The `cascade` command keeps the habits of the tools operators already run: targets
//! as `host:port` (grpcurl, ghz), `-o json` (kubectl), a field-level `diff` exiting
//! 0 / 1 / 2 (kubectl diff), and `load` from a request file (ghz `-D`) with a JSON
//! summary.

use serde_json::Value;

use crate::support::{Cluster, cascade_output, workspace_file};

const TOKEN: &str = "cli-test-token";

async fn admin(target: &str, args: &[&str]) -> std::process::Output {
    let args: Vec<&str> = ["admin", "--target", target]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    cascade_output(&args, &[("CASCADE_ADMIN_TOKEN", TOKEN)]).await
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_cli_takes_host_port_prints_json_and_diffs_field_by_field() {
    let cluster = Cluster::builder().admin_token(TOKEN).start().await;
    // No scheme: as grpcurl and ghz take it.
    let target = cluster.bid_intake.to_string();

    let got = admin(&target, &["get", "mediated_bids", "-o", "json"]).await;
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let bids: Vec<Value> = serde_json::from_str(&stdout(&got)).unwrap();
    let mut bid = bids
        .into_iter()
        .find(|b| b["network_id"] == "coolads")
        .expect("a CoolAds mediated bid");
    assert_eq!(bid["kind"], "MediatedBid");
    let id = bid["id"].as_str().unwrap().to_string();
    let cpm = bid["cpm"].clone();

    // JSON is YAML: the entity, its price changed, is a file apply reads.
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap().to_string();
    std::fs::write(&path, serde_json::to_string(&bid).unwrap()).unwrap();
    let unchanged = admin(&target, &["diff", "-f", &path]).await;
    assert_eq!(unchanged.status.code(), Some(0), "{}", stdout(&unchanged));
    assert_eq!(stdout(&unchanged), "");

    bid["cpm"] = Value::String("7.25".into());
    std::fs::write(&path, serde_json::to_string(&bid).unwrap()).unwrap();
    let changed = admin(&target, &["diff", "-f", &path]).await;
    assert_eq!(changed.status.code(), Some(1), "{}", stdout(&changed));
    assert_eq!(
        stdout(&changed),
        format!("~ mediated_bid {id}\n    cpm: {cpm} -> \"7.25\"\n")
    );

    // An error is not "there are differences".
    bid["network_id"] = Value::String("no-such-network".into());
    std::fs::write(&path, serde_json::to_string(&bid).unwrap()).unwrap();
    let refused = admin(&target, &["diff", "-f", &path]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    let unreachable = admin("127.0.0.1:1", &["diff", "-f", &path]).await;
    assert_eq!(unreachable.status.code(), Some(2));
}

#[tokio::test]
async fn load_sends_a_request_file_and_summarises_as_json() {
    let cluster = Cluster::builder().start().await;
    let target = cluster.bid_intake.to_string();
    let fixture =
        workspace_file("../shared/fixtures/openrtb26/bid-request-example-1-simple-banner.json");
    let output = cascade_output(
        &[
            "load",
            "--target",
            &target,
            "-D",
            fixture.to_str().unwrap(),
            "--rate",
            "50",
            "--duration",
            "1s",
            // A generous deadline: this checks the generator, not how fast a debug build
            // decides on a loaded machine (the default budget is 300 ms).
            "--deadline",
            "5s",
            "--quiet",
            "--output",
            "json",
        ],
        &[],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert!(summary["ok"].as_u64().unwrap() >= 40, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    assert!(summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}
