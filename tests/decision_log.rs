//! The decision log end to end: decisions and events through `cascade up`'s in-process
//! cluster (segment files) and through the four services as processes (JetStream), read
//! back with `cascade log`: one entry per decision and per event, matching what the
//! callers were told; and the network report rebuilt from the log equals the counters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cascade_bid_intake::{LogSettings, SinkKind};
use cascade_testkit::{Behaviour, NatsServer, grpcurl};
use serde_json::{Value, json};

use crate::support::{Cluster, banner_request, exchange_bid, file_log, run_cascade, winner};

const REPORT_EVENT: &str = "cascade.decision.v1.BidIntake/ReportEvent";
const ADMIN_TOKEN: &str = "decision-log-token";

fn request(id: &str, exchange_bids: Value) -> Value {
    let mut request = banner_request(exchange_bids);
    request["request"]["id"] = json!(id);
    request
}

async fn report_event(cluster: &Cluster, selection_id: &Value, kind: &str, extra: Value) {
    let mut event = json!({"selection_id": selection_id, "type": kind});
    if let (Some(event), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
        event.extend(extra.clone());
    }
    let output = grpcurl::call(cluster.bid_intake, REPORT_EVENT, &event, &[])
        .await
        .unwrap();
    assert!(output.success, "{}", output.stderr);
}

/// Every entry `cascade log query` prints for `source_args`.
async fn logged(source_args: &[&str]) -> Vec<Value> {
    let mut args = vec!["log", "query"];
    args.extend_from_slice(source_args);
    run_cascade(&args, &[])
        .await
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn decisions_by_request(entries: &[Value]) -> HashMap<String, Value> {
    entries
        .iter()
        .filter_map(|e| e.get("decision"))
        .map(|d| {
            (
                d["request_id"].as_str().unwrap_or_default().to_string(),
                d.clone(),
            )
        })
        .collect()
}

fn micros(value: &Value) -> i64 {
    match value {
        Value::String(text) => text.parse().unwrap(),
        other => other.as_i64().unwrap_or_default(),
    }
}

/// What the decision log says of one impression agrees with the response's decision
/// and its explanation.
fn assert_logged_as_answered(logged: &Value, response: &Value) {
    let imp = &logged["imps"][0];
    let decided = &response["decisions"][0];
    assert_eq!(
        logged["config_version"]
            .as_u64()
            .unwrap_or_default()
            .to_string(),
        response["configVersion"].as_str().unwrap_or("0"),
        "{logged}"
    );
    let explanation = &decided["explanation"];
    assert_eq!(
        imp["applied_rule_id"], explanation["appliedRuleId"],
        "{logged}"
    );
    assert_eq!(
        imp["floor_micros"].as_i64().unwrap_or_default(),
        micros(&explanation["floorMicros"]),
    );
    // Every attempt, in order: which network, how it went.
    let attempts = |value: &Value, network: &str| -> Vec<(String, String)> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (text(&a[network]), text(&a["outcome"]))
            })
            .collect()
    };
    assert_eq!(
        attempts(&imp["attempts"], "network_id"),
        attempts(&explanation["attempts"], "networkId"),
        "{logged}"
    );
    assert_eq!(
        imp["drops"].as_array().map_or(0, Vec::len),
        explanation["dropped"].as_array().map_or(0, Vec::len),
        "{logged}"
    );
    match decided.get("winner") {
        Some(winner) => {
            let logged_winner = &imp["winner"];
            assert_eq!(
                logged_winner["selection_id"], winner["selectionId"],
                "{logged}"
            );
            assert_eq!(logged_winner["source"], winner["source"]);
            assert_eq!(
                logged_winner["price_micros"].as_i64().unwrap(),
                micros(&winner["priceMicros"])
            );
            assert!(
                !logged_winner["candidate_id"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
            );
        }
        None => assert_eq!(imp["no_fill_reason"], decided["noFillReason"], "{logged}"),
    }
}

#[tokio::test]
async fn every_decision_and_event_of_cascade_up_is_logged_and_rebuilds_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder()
        .admin_token(ADMIN_TOKEN)
        .bid_intake(|settings| settings.log = file_log(dir.path()))
        .start()
        .await;

    // CoolAds' $2.00 mediated bid beats the $1.50 exchange bid and fills.
    let first = cluster
        .decide(&request("log-1", exchange_bid(1.5, "shoes.example")))
        .await;
    assert_eq!(winner(&first)["networkId"], "coolads", "{first}");
    // A bid in euros beats them all; its original price and rate are logged.
    let mut euro_bids = exchange_bid(9.0, "shoes.example");
    euro_bids[0]["cur"] = json!("EUR");
    let euros = cluster.decide(&request("log-2", euro_bids)).await;
    assert_eq!(winner(&euros)["source"], "SOURCE_KIND_EXCHANGE", "{euros}");
    // CoolAds has no ad: BetaAds, next in rank, fills.
    cluster.networks.set("coolads", Behaviour::NoFill);
    let fallback = cluster.decide(&request("log-3", json!([]))).await;
    assert_eq!(winner(&fallback)["networkId"], "betaads", "{fallback}");
    cluster.networks.set("coolads", Behaviour::Fill);
    // The client walks the chain itself and reports each node.
    let mut client = request("log-4", json!([]));
    client["mode"] = json!("EXECUTION_MODE_CLIENT");
    let chain = cluster.decide(&client).await;
    // A test request is logged, marked test, and counts in no report.
    let mut test = request("log-5", json!([]));
    test["request"]["test"] = json!(1);
    let tested = cluster.decide(&test).await;
    // A request the API refuses is logged with the error its caller got.
    let refused = cluster
        .decide_error(
            &json!({"request": {"id": "log-6", "imp": [], "site": {"publisher": {"id": "8953"}}}}),
        )
        .await;
    assert!(refused.contains("InvalidArgument"), "{refused}");
    // The euro winner chained into a later request competes at its stored USD price.
    let mut chaining = request("log-7", json!([]));
    chaining["chained_selection_ids"] = json!([winner(&euros)["selectionId"]]);
    let chained = cluster.decide(&chaining).await;
    const DECISIONS: usize = 7;

    let mut events = 0;
    for response in [&first, &fallback, &tested] {
        report_event(
            &cluster,
            &winner(response)["selectionId"],
            "EVENT_TYPE_IMPRESSION",
            json!({}),
        )
        .await;
        events += 1;
    }
    // A repeat counts nothing and is logged as a repeat.
    report_event(
        &cluster,
        &winner(&first)["selectionId"],
        "EVENT_TYPE_IMPRESSION",
        json!({}),
    )
    .await;
    report_event(
        &cluster,
        &winner(&first)["selectionId"],
        "EVENT_TYPE_CLICK",
        json!({}),
    )
    .await;
    events += 2;
    for node in chain["decisions"][0]["chain"].as_array().unwrap() {
        let outcome = match node["networkId"].as_str() {
            Some("coolads") => "ATTEMPT_OUTCOME_NO_FILL",
            Some("betaads") => "ATTEMPT_OUTCOME_FILLED",
            _ => continue,
        };
        report_event(
            &cluster,
            &node["selectionId"],
            "EVENT_TYPE_NODE_RESULT",
            json!({"node_outcome": outcome, "node_latency_ms": 35}),
        )
        .await;
        events += 1;
    }

    let dir_arg = dir.path().to_str().unwrap();
    let target = format!("http://{}", cluster.bid_intake);
    let env = [
        ("CASCADE_ADMIN_TARGET", target.as_str()),
        ("CASCADE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    // The log is written, and the counters flushed, a moment after the answers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = logged(&["--dir", dir_arg]).await;
        let counters = run_cascade(&["report", "--csv", "--by", "hour"], &env).await;
        let rebuilt = run_cascade(
            &["log", "report", "--csv", "--by", "hour", "--dir", dir_arg],
            &[],
        )
        .await;
        if entries.len() == DECISIONS + events
            && counters == rebuilt
            && counters.lines().count() > 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} entries for {} decisions and {events} events; counters:\n{counters}\nrebuilt from the log:\n{rebuilt}",
            entries.len(),
            DECISIONS
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let entries = logged(&["--dir", dir_arg]).await;
    let decisions = decisions_by_request(&entries);
    assert_eq!(decisions.len(), DECISIONS, "one entry per decision");
    for (id, response) in [
        ("log-1", &first),
        ("log-2", &euros),
        ("log-3", &fallback),
        ("log-5", &tested),
    ] {
        let decision = &decisions[id];
        assert_logged_as_answered(decision, response);
        assert_eq!(decision["account_id"], "8953");
        assert_eq!(decision["account_path"][0], "8953", "{decision}");
        assert!(
            decision["account_path"].as_array().unwrap().len() > 1,
            "8953 inherits: {decision}"
        );
        assert_eq!(decision["request"]["id"], id);
        assert!(decision["elapsed_us"].as_u64().unwrap() > 0);
    }
    assert_eq!(decisions["log-5"]["test"], true);
    let euro = decisions["log-2"]["imps"][0]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == "SOURCE_KIND_EXCHANGE")
        .cloned()
        .unwrap();
    assert_eq!(euro["original_cur"], "EUR", "{euro}");
    assert_eq!(euro["original_price_micros"], 9_000_000, "{euro}");
    assert_eq!(euro["rate_micros"], 1_080_000, "{euro}");
    assert_eq!(euro["price_micros"], 9_720_000, "{euro}");
    let fallback_attempts = decisions["log-3"]["imps"][0]["attempts"]
        .as_array()
        .unwrap()
        .clone();
    let coolads = fallback_attempts
        .iter()
        .find(|a| a["network_id"] == "coolads")
        .unwrap();
    assert_eq!(coolads["outcome"], "ATTEMPT_OUTCOME_NO_FILL", "{coolads}");
    assert_eq!(coolads["called"], true);
    assert!(coolads["floor_micros"].as_i64().unwrap() > 0, "{coolads}");
    let outcome = decisions["log-7"]["imps"][0]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == "SOURCE_KIND_CHAINED_OUTCOME")
        .cloned()
        .unwrap();
    // Its stored price is in USD: no euro label on a dollar amount.
    assert_eq!(outcome["original_price_micros"], 9_720_000, "{outcome}");
    assert_eq!(outcome.get("original_cur"), None, "{outcome}");
    assert_logged_as_answered(&decisions["log-7"], &chained);
    assert_eq!(decisions["log-4"]["mode"], "EXECUTION_MODE_CLIENT");
    assert_eq!(
        decisions["log-4"]["imps"][0]["chain"]
            .as_array()
            .map(Vec::len),
        chain["decisions"][0]["chain"].as_array().map(Vec::len)
    );
    assert_eq!(
        decisions["log-6"]["error_code"], "InvalidArgument",
        "{}",
        decisions["log-6"]
    );

    let logged_events: Vec<&Value> = entries.iter().filter_map(|e| e.get("event")).collect();
    assert_eq!(logged_events.len(), events);
    let repeats = logged_events
        .iter()
        .filter(|e| e["duplicate"] == true)
        .count();
    assert_eq!(repeats, 1);
    let impression = logged_events
        .iter()
        .find(|e| e["kind"] == "impression" && e["selection_id"] == winner(&first)["selectionId"])
        .unwrap();
    assert_eq!(impression["request_id"], "log-1");
    assert_eq!(impression["network_id"], "coolads");

    // Queries by request id, network and time.
    assert_eq!(
        logged(&["--dir", dir_arg, "--request-id", "log-3"])
            .await
            .len(),
        2
    );
    let betaads = logged(&[
        "--dir",
        dir_arg,
        "--network",
        "betaads",
        "--kind",
        "decision",
    ])
    .await;
    let asked_betaads: Vec<&str> = betaads
        .iter()
        .filter_map(|e| e["decision"]["request_id"].as_str())
        .collect();
    assert!(asked_betaads.contains(&"log-3"), "{asked_betaads:?}");
    assert!(!asked_betaads.contains(&"log-6"), "{asked_betaads:?}");
    assert!(
        logged(&["--dir", dir_arg, "--until", "2000-01-01T00:00:00Z"])
            .await
            .is_empty()
    );
    let tail = run_cascade(&["log", "tail", "-n", "2", "--dir", dir_arg], &[]).await;
    assert_eq!(tail.lines().count(), 2);
}

#[tokio::test]
async fn separate_services_log_to_jetstream() {
    let nats = NatsServer::start()
        .await
        .expect("nats-server (Debian package nats-server)");
    let url = nats.url();
    let nats_url = url.clone();
    let cluster = Cluster::builder()
        .processes()
        .bid_intake(move |settings| {
            settings.log = LogSettings {
                sink: SinkKind::Jetstream,
                nats_url,
                ..Default::default()
            }
        })
        .start()
        .await;
    let mut responses = Vec::new();
    for i in 0..3 {
        let id = format!("stream-{i}");
        responses.push((
            id.clone(),
            cluster
                .decide(&request(&id, exchange_bid(1.5, "shoes.example")))
                .await,
        ));
    }
    report_event(
        &cluster,
        &winner(&responses[0].1)["selectionId"],
        "EVENT_TYPE_IMPRESSION",
        json!({}),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let entries = loop {
        let entries = logged(&["--nats", &url]).await;
        if entries.len() >= 4 {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "{} entries in the stream",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entries.len(), 4, "one entry per decision and event");
    let decisions = decisions_by_request(&entries);
    for (id, response) in &responses {
        assert_logged_as_answered(&decisions[id], response);
    }
    assert_eq!(entries[3]["event"]["request_id"], "stream-0");
}

/// The events of `kind` among `entries`.
fn events_of<'e>(entries: &'e [Value], kind: &str) -> Vec<&'e Value> {
    entries
        .iter()
        .filter_map(|e| e.get("event"))
        .filter(|event| event["kind"] == kind)
        .collect()
}

#[tokio::test]
async fn every_notice_fired_is_logged_with_its_receiver_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder()
        .bid_intake(|settings| {
            settings.notices.billing_poll_ms = 20;
            settings.log = file_log(dir.path())
        })
        .start()
        .await;
    cluster.networks.send_notices("coolads");
    cluster.networks.send_notices("bidwise");
    // BidWise bids live on home-live and loses to CoolAds' $2.00 in the waterfall: CoolAds
    // is sent its win notice, BidWise its loss notice; the impression bills CoolAds.
    let mut home_live = request("notice-1", json!([]));
    home_live["request"]["imp"][0]["tagid"] = json!("home-live");
    let response = cluster.decide(&home_live).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    let selection = winner(&response)["selectionId"].clone();
    report_event(&cluster, &selection, "EVENT_TYPE_IMPRESSION", json!({})).await;

    let dir_arg = dir.path().to_str().unwrap().to_string();
    let receiver = cluster.networks.addr().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let entries = loop {
        let entries = logged(&["--dir", &dir_arg, "--kind", "event"]).await;
        let delivered = events_of(&entries, "billing_notice")
            .iter()
            .any(|e| e["notice_result"] == "delivered");
        if delivered
            && !events_of(&entries, "win_notice").is_empty()
            && !events_of(&entries, "loss_notice").is_empty()
        {
            break entries;
        }
        assert!(Instant::now() < deadline, "notices not logged: {entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for kind in ["win_notice", "loss_notice"] {
        let notices = events_of(&entries, kind);
        assert_eq!(notices.len(), 1, "{kind} fired once: {entries:?}");
        let notice = notices[0];
        assert_eq!(notice["request_id"], "notice-1", "{notice}");
        assert_eq!(notice["impid"], "1", "{notice}");
        assert_eq!(notice["notice_result"], "fired", "{notice}");
        // The receiver's host, never the URL with its ids and prices.
        assert_eq!(notice["notice_host"], receiver.as_str(), "{notice}");
    }
    let billed = events_of(&entries, "billing_notice");
    assert_eq!(billed.len(), 1, "billed once: {entries:?}");
    assert_eq!(billed[0]["selection_id"], selection, "{entries:?}");
    assert_eq!(billed[0]["notice_host"], receiver.as_str());
    // Nothing of the notice URL itself is logged.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains("/win?") && !text.contains("/bill?"),
        "{text}"
    );
}
