//! `cascade replay` end to end: a run logged under one configuration, replayed under it
//! (every sale reproduced, nothing guessed) and under two changed ones — a higher floor,
//! a lower CPM — each checked impression by impression against the same requests
//! decided live under that configuration, against the same fake networks.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use cascade_state::StateSettings;
use cascade_testkit::{Behaviour, FakeNetworks};
use serde_json::{Value, json};

use crate::support::{
    Cluster, banner_request, demo_configuration_file, eventually, exchange_bid, file_log,
    run_cascade,
};

/// One request of the run: its ad unit, its exchange bid, whether CoolAds has an ad for
/// it, its key-values.
struct Traffic {
    id: &'static str,
    tagid: &'static str,
    exchange_price: Option<f64>,
    coolads_fills: bool,
    section: Option<&'static str>,
}

const fn traffic(
    id: &'static str,
    tagid: &'static str,
    exchange_price: Option<f64>,
    coolads_fills: bool,
    section: Option<&'static str>,
) -> Traffic {
    Traffic {
        id,
        tagid,
        exchange_price,
        coolads_fills,
        section,
    }
}

/// Under the demo configuration (floor $0.50; CoolAds $2.00 and BetaAds $1.20 in the
/// waterfall, BidWise bidding live on `home-live`, a $1.80 house line item for
/// `section=home`), each of these is won by different demand.
const RUN: [Traffic; 11] = [
    traffic("rp-1", "home-top", Some(2.5), true, None),
    traffic("rp-2", "home-top", Some(1.0), true, None),
    traffic("rp-3", "home-top", None, true, None),
    traffic("rp-4", "home-top", Some(0.9), false, None),
    traffic("rp-5", "home-top", Some(1.3), false, None),
    traffic("rp-6", "home-top", None, false, None),
    traffic("rp-7", "home-live", Some(0.7), true, None),
    traffic("rp-8", "home-live", None, false, None),
    traffic("rp-9", "home-top", Some(1.1), true, Some("home")),
    traffic("rp-10", "home-top", Some(0.3), true, None),
    traffic("rp-11", "home-top", None, false, Some("home")),
];

/// Decides the whole run at `cluster`; the winners by request id (`None`: no fill), as
/// (source, network, bid id, price micros).
async fn decide_run(cluster: &Cluster) -> Vec<(String, Option<Sale>)> {
    let mut sales = Vec::new();
    for traffic in &RUN {
        let bids = traffic
            .exchange_price
            .map_or(json!([]), |price| exchange_bid(price, "shoes.example"));
        let mut request = banner_request(bids);
        request["request"]["id"] = json!(traffic.id);
        request["request"]["imp"][0]["tagid"] = json!(traffic.tagid);
        if let Some(section) = traffic.section {
            request["key_values"] = json!({ "section": section });
        }
        cluster.networks.set(
            "coolads",
            if traffic.coolads_fills {
                Behaviour::Fill
            } else {
                Behaviour::NoFill
            },
        );
        let response = cluster.decide(&request).await;
        let winner = response["decisions"][0].get("winner");
        sales.push((traffic.id.to_string(), winner.map(Sale::of_response)));
    }
    cluster.networks.set("coolads", Behaviour::Fill);
    sales
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Sale {
    source: String,
    network_id: String,
    bid_id: String,
    price_micros: i64,
}

impl Sale {
    fn of_response(winner: &Value) -> Sale {
        let text = |key: &str| winner[key].as_str().unwrap_or_default().to_string();
        Sale {
            source: text("source"),
            network_id: text("networkId"),
            bid_id: text("bidId"),
            price_micros: text("priceMicros").parse().unwrap(),
        }
    }

    fn of_replay(served: &Value) -> Option<Sale> {
        if served.is_null() {
            return None;
        }
        let text = |key: &str| served[key].as_str().unwrap_or_default().to_string();
        Some(Sale {
            source: text("source"),
            network_id: text("network_id"),
            bid_id: text("bid_id"),
            price_micros: served["price_micros"].as_i64().unwrap(),
        })
    }
}

/// A configuration file: `base` with each (from, to) replaced once, exactly.
fn edited(base: &Path, edits: &[(&str, &str)]) -> tempfile::NamedTempFile {
    let mut text = std::fs::read_to_string(base).unwrap();
    for (from, to) in edits {
        assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
        text = text.replace(from, to);
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

async fn cluster_on(configuration: &Path, networks: &FakeNetworks, log: Option<&Path>) -> Cluster {
    let mut builder = Cluster::builder()
        .networks(networks.clone())
        .state(StateSettings {
            configuration_file: Some(configuration.to_path_buf()),
            ..Default::default()
        });
    if let Some(directory) = log {
        builder = builder.bid_intake(|settings| settings.log = file_log(directory));
    }
    builder.start().await
}

/// `cascade replay` of the log in `dir` under `configuration`: the impressions, then
/// the summary.
async fn replay(dir: &Path, configuration: &Path) -> (Vec<Value>, Value) {
    let dir = dir.to_str().unwrap();
    let configuration = configuration.to_str().unwrap();
    let base = ["replay", "--dir", dir, "--configuration", configuration];
    let impressions = run_cascade(&[&base[..], &["--impressions"]].concat(), &[])
        .await
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary = run_cascade(&[&base[..], &["--json", "--rounds", "50"]].concat(), &[]).await;
    (impressions, serde_json::from_str(&summary).unwrap())
}

/// Every replayed impression sells as `live` did, request by request.
fn assert_replay_matches(impressions: &[Value], live: &[(String, Option<Sale>)], what: &str) {
    assert_eq!(impressions.len(), live.len(), "{what}: {impressions:?}");
    for (request_id, sale) in live {
        let replayed = impressions
            .iter()
            .find(|imp| imp["request_id"] == request_id.as_str())
            .unwrap_or_else(|| panic!("{what}: {request_id} not replayed"));
        assert_eq!(
            &Sale::of_replay(&replayed["after"]["served"]),
            sale,
            "{what}: {request_id} replayed as {replayed}"
        );
    }
}

fn row<'s>(summary: &'s Value, account: &str, demand: &str) -> &'s Value {
    summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["account_id"] == account && row["demand"] == demand)
        .unwrap_or_else(|| panic!("no row {account}/{demand} in {summary}"))
}

#[tokio::test]
async fn replay_reproduces_the_run_and_foresees_a_floor_and_a_cpm_change() {
    let networks = FakeNetworks::start().await.unwrap();
    let logged = demo_configuration_file(&networks, "");
    let log_dir = tempfile::tempdir().unwrap();
    let original = {
        let cluster = cluster_on(logged.path(), &networks, Some(log_dir.path())).await;
        decide_run(&cluster).await
    };
    // Every sale of the run is a different kind of demand's.
    let winners: Vec<&str> = original
        .iter()
        .map(|(_, sale)| sale.as_ref().map_or("none", |s| s.source.as_str()))
        .collect();
    for source in [
        "SOURCE_KIND_EXCHANGE",
        "SOURCE_KIND_MEDIATED_NETWORK",
        "SOURCE_KIND_LINE_ITEM",
    ] {
        assert!(winners.contains(&source), "{original:?}");
    }
    let dir_arg = log_dir.path().to_str().unwrap().to_string();
    eventually(Duration::from_secs(15), "every decision logged", || {
        let dir_arg = dir_arg.clone();
        async move {
            run_cascade(
                &["log", "query", "--kind", "decision", "--dir", &dir_arg],
                &[],
            )
            .await
            .lines()
            .count()
                == RUN.len()
        }
    })
    .await;

    // Unchanged: every sale exactly as it was, nothing drawn.
    let (impressions, summary) = replay(log_dir.path(), logged.path()).await;
    assert_replay_matches(&impressions, &original, "unchanged configuration");
    assert_eq!(summary["decisions_replayed"], RUN.len(), "{summary}");
    assert_eq!(summary["impressions_changed"], 0, "{summary}");
    assert_eq!(summary["impressions_guessed"], 0, "{summary}");
    assert_eq!(summary["calls_guessed"], 0, "{summary}");
    let total = row(&summary, "8953", "*");
    assert_eq!(total["before"], total["after"], "{summary}");
    assert_eq!(total["delta_revenue_interval"], json!([0, 0]), "{summary}");

    // A $1.50 floor: BetaAds' $1.20 and the cheaper exchange bids no longer compete.
    let higher_floor = edited(logged.path(), &[("floor = \"0.50\"", "floor = \"1.50\"")]);
    let live = {
        let cluster = cluster_on(higher_floor.path(), &networks, None).await;
        decide_run(&cluster).await
    };
    assert_ne!(live, original, "the floor changes some sales");
    let (impressions, summary) = replay(log_dir.path(), higher_floor.path()).await;
    assert_replay_matches(&impressions, &live, "floor $1.50");
    let changed = live
        .iter()
        .zip(&original)
        .filter(|(after, before)| after != before)
        .count();
    assert_eq!(summary["impressions_changed"], changed, "{summary}");
    assert!(
        summary["largest_changes"].as_array().unwrap().len() >= changed.min(10),
        "{summary}"
    );
    let betaads = row(&summary, "8953", "betaads");
    assert_eq!(betaads["after"]["fills"], 0, "{summary}");
    assert!(
        betaads["before"]["fills"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let revenue = |sales: &[(String, Option<Sale>)]| -> i64 {
        sales
            .iter()
            .filter_map(|(_, sale)| sale.as_ref())
            .map(|sale| sale.price_micros / 1_000)
            .sum()
    };
    let total = row(&summary, "8953", "*");
    assert_eq!(
        total["delta_revenue_micros"].as_i64().unwrap(),
        revenue(&live) - revenue(&original),
        "{summary}"
    );

    // CoolAds' CPM down to $0.80: BetaAds now ranks above it, where the logged walks
    // never called it; its record (it filled every call) answers for it.
    let lower_cpm = edited(logged.path(), &[("cpm = \"2.00\"", "cpm = \"0.80\"")]);
    let live = {
        let cluster = cluster_on(lower_cpm.path(), &networks, None).await;
        decide_run(&cluster).await
    };
    let (impressions, summary) = replay(log_dir.path(), lower_cpm.path()).await;
    assert_replay_matches(&impressions, &live, "CoolAds at $0.80");
    assert!(summary["calls_guessed"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["calls_unobserved"], 0, "{summary}");
    assert!(
        summary["impressions_guessed"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        summary["guessed_revenue_share"].as_f64().unwrap() > 0.0,
        "{summary}"
    );

    // For people: the same, as tables.
    let text = run_cascade(
        &[
            "replay",
            "--dir",
            log_dir.path().to_str().unwrap(),
            "--configuration",
            lower_cpm.path().to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(
        text.starts_with(&format!("Replayed {0} of {0} decisions", RUN.len())),
        "{text}"
    );
    assert!(text.contains("Largest changes:"), "{text}");
    assert!(text.contains("betaads"), "{text}");
}
