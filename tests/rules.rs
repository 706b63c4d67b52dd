//! One set of rules for every ad that can serve: the publisher's floors, ad-quality
//! filters, prices and deadlines hold for exchange bids, bidding networks, waterfall
//! networks, line items and chained outcomes alike. Each test is a case that once
//! served what the rules forbid, driven end to end through the four service processes.

use std::time::{Duration, Instant};

use crate::support::{
    Cluster, banner_request, exchange_bid, network_totals, run_cascade, winner, workspace_file,
};
use cascade_testkit::{Behaviour, grpcurl};
use serde_json::{Value, json};

const REPORT_EVENT: &str = "cascade.decision.v1.BidIntake/ReportEvent";

/// (candidate, outcome, reason) of every attempt of the first decision.
fn attempts(response: &Value) -> Vec<(String, String, String)> {
    entries(response, "attempts", ["candidateId", "outcome", "reason"])
}

/// (candidate, reason) of every candidate the auction dropped.
fn dropped(response: &Value) -> Vec<(String, String)> {
    entries(response, "dropped", ["candidateId", "reason", "reason"])
        .into_iter()
        .map(|(candidate, reason, _)| (candidate, reason))
        .collect()
}

fn entries(response: &Value, list: &str, fields: [&str; 3]) -> Vec<(String, String, String)> {
    let field = |entry: &Value, name: &str| entry[name].as_str().unwrap_or_default().to_string();
    response["decisions"][0]["explanation"][list]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        field(e, fields[0]),
                        field(e, fields[1]),
                        field(e, fields[2]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn attempt(candidate: &str, outcome: &str, reason: &str) -> (String, String, String) {
    (
        candidate.to_string(),
        format!("ATTEMPT_OUTCOME_{outcome}"),
        reason.to_string(),
    )
}

fn fill_with(adomain: &[&str], cat: &[&str]) -> Behaviour {
    Behaviour::FillWith {
        price: None,
        adomain: adomain.iter().map(|d| d.to_string()).collect(),
        cat: cat.iter().map(|c| c.to_string()).collect(),
    }
}

/// A banner request of `publisher` on ad unit `tagid`.
fn request_of(publisher: &str, tagid: &str, exchange_bids: Value) -> Value {
    let mut request = banner_request(exchange_bids);
    request["request"]["site"]["publisher"]["id"] = json!(publisher);
    request["request"]["imp"][0]["tagid"] = json!(tagid);
    request
}

async fn report_event(cluster: &Cluster, event: Value) {
    let output = grpcurl::call(cluster.bid_intake, REPORT_EVENT, &event, &[])
        .await
        .unwrap();
    assert!(output.success, "{}", output.stderr);
}

const FILTERS: &str = r#"
[[accounts]]
id = "strict-pub"
parent_id = "demo-network"

[[selling_rules]]
id = "strict-all"
account_id = "strict-pub"
floor = "0.50"
blocked_adomains = ["malware.example"]
block_unknown_adomain = true

[[line_items]]
id = "adult-house-ad"
account_id = "8953"
cpm = "9.00"
targeting = { ad_units = ["li-cat"] }
adm = "<div>house</div>"
adomain = ["house.example"]
categories = ["IAB26-1"]
"#;

/// Case 1: a waterfall network's ad from a blocked domain (or its subdomain), from an
/// advertiser in the request's `badv`, or in a blocked category's child is that
/// network's no fill (`blocked_ad`), and the walk moves on; a line item's creative is
/// filtered like any other ad; a rule that blocks unknown advertisers refuses an ad
/// that declares none.
#[tokio::test]
async fn network_ads_and_line_items_pass_the_same_ad_quality_filters() {
    let cluster = Cluster::builder().configuration(FILTERS).start().await;
    let blocked_attempts = |response: &Value| {
        assert_eq!(winner(response)["networkId"], "betaads", "{response}");
        assert_eq!(
            attempts(response)[..2],
            [
                attempt("mediated:coolads-2.00", "NO_FILL", "blocked_ad"),
                attempt("mediated:betaads-1.20", "FILLED", ""),
            ],
            "{response}"
        );
    };

    cluster
        .networks
        .set("coolads", fill_with(&["ads.malware.example"], &[]));
    blocked_attempts(&cluster.decide(&banner_request(json!([]))).await);

    cluster
        .networks
        .set("coolads", fill_with(&["rival.example"], &[]));
    let mut with_badv = banner_request(json!([]));
    with_badv["request"]["badv"] = json!(["rival.example"]);
    blocked_attempts(&cluster.decide(&with_badv).await);
    // The merged filters (the rule's, then the request's) are sent to the network too.
    let sent = cluster.networks.last_request("coolads").unwrap();
    assert_eq!(
        sent["badv"],
        json!(["malware.example", "rival.example"]),
        "{sent}"
    );
    assert_eq!(sent["bcat"], json!(["IAB25", "IAB26"]), "{sent}");

    cluster
        .networks
        .set("coolads", fill_with(&["fine.example"], &["IAB25-2"]));
    blocked_attempts(&cluster.decide(&banner_request(json!([]))).await);

    // Without a category, the same ad passes: unknown values pass by default.
    cluster
        .networks
        .set("coolads", fill_with(&["fine.example"], &[]));
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");

    // A rule that blocks unknown advertisers refuses an ad declaring none.
    cluster.networks.set("coolads", fill_with(&[], &[]));
    blocked_attempts(
        &cluster
            .decide(&request_of("strict-pub", "home-top", json!([])))
            .await,
    );

    // A line item in a blocked category does not serve, however high its CPM.
    cluster.networks.set("coolads", Behaviour::Fill);
    let response = cluster
        .decide(&request_of("8953", "li-cat", json!([])))
        .await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert!(
        dropped(&response).contains(&(
            "line_item:adult-house-ad".to_string(),
            "blocked_category".to_string()
        )),
        "{response}"
    );
}

const LIVE_ONE: &str = r#"
[[mediated_bids]]
id = "bidwise-1.00"
account_id = "demo-network"
network_id = "bidwise"
cpm = "1.00"
placement_id = "bw-one"
params = { siteId = "live-one" }
targeting = { ad_units = ["live-one"] }
"#;

/// Case 2: a bidding network's live bid under max(its mediated CPM, the floor) is its
/// no fill (`below_floor`), not a candidate; at or above it, it ranks at its adjusted bid.
#[tokio::test]
async fn a_live_bid_below_its_mediated_cpm_never_wins() {
    let cluster = Cluster::builder().configuration(LIVE_ONE).start().await;
    cluster.networks.set("coolads", Behaviour::NoFill);
    cluster.networks.set("betaads", Behaviour::NoFill);
    cluster.networks.set("bidwise", Behaviour::FillAt(0.70));
    let request = request_of("8953", "live-one", exchange_bid(0.60, "shoes.example"));
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "600000", "{response}");
    assert_eq!(
        attempts(&response)[0],
        attempt("bidding:bidwise-1.00", "NO_FILL", "below_floor")
    );
    let sent = cluster.networks.last_request("bidwise").unwrap();
    assert_eq!(sent["imp"][0]["bidfloor"], 1.0, "{sent}");

    // At $1.10 (x0.95 = $1.045) it beats the $0.60 exchange bid.
    cluster.networks.set("bidwise", Behaviour::FillAt(1.10));
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_BIDDING_NETWORK",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "1045000", "{response}");
}

/// An exchange bid on one of the impression's deals.
fn deal_bid(seat: &str, id: &str, price: f64, dealid: &str) -> Value {
    json!({"cur": "USD", "seatbid": [{"seat": seat, "bid": [
        {"id": id, "impid": "1", "price": price, "dealid": dealid, "adomain": ["brand.example"], "adm": "<div>deal</div>"}
    ]}]})
}

/// Case 3: a deal bid is held to its deal's floor; a private auction admits only bids
/// under one of its deals whose `wseat` admits the seat; `deal.at` prices the deal.
#[tokio::test]
async fn deal_floors_seats_and_private_auctions_hold() {
    let cluster = Cluster::start().await;
    let fixture = workspace_file(
        "../shared/fixtures/openrtb26/bid-request-example-5-pmp-with-direct-deal.json",
    );
    let bid_request: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let decide = |bid_request: Value, bids: Vec<Value>| {
        let request = json!({"request": bid_request, "exchange_bids": bids, "debug": true});
        let cluster = &cluster;
        async move { cluster.decide(&request).await }
    };
    let response = decide(
        bid_request.clone(),
        vec![
            deal_bid("Agency1", "under-deal-floor", 2.00, "AB-Agency1-0001"),
            deal_bid("Agency1", "on-deal", 2.60, "AB-Agency1-0001"),
            deal_bid("Agency3", "wrong-seat", 9.00, "AB-Agency1-0001"),
            deal_bid("Agency2", "open", 8.00, ""),
        ],
    )
    .await;
    assert_eq!(winner(&response)["bidId"], "on-deal", "{response}");
    assert_eq!(winner(&response)["dealid"], "AB-Agency1-0001", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "2600000", "{response}");
    let reasons: Vec<(String, String)> = dropped(&response);
    for expected in [
        ("exchange_bids[0].seatbid[0].bid[0]", "below_floor"),
        ("exchange_bids[2].seatbid[0].bid[0]", "private_auction"),
        ("exchange_bids[3].seatbid[0].bid[0]", "private_auction"),
        ("mediated:coolads-2.00", "private_auction"),
    ] {
        assert!(
            reasons.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not in {reasons:?}"
        );
    }
    assert_eq!(cluster.networks.calls("coolads"), 0);

    // Deal XY is second price (at = 2) at a $2.00 floor: $3.00 pays the next bid, $2.60.
    let response = decide(
        bid_request.clone(),
        vec![
            deal_bid("Agency2", "xy", 3.00, "XY-Agency2-0001"),
            deal_bid("Agency1", "on-deal", 2.60, "AB-Agency1-0001"),
        ],
    )
    .await;
    assert_eq!(winner(&response)["bidId"], "xy", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "2600000", "{response}");

    // The deal floor takes precedence over the imp floor; at = 3 is a fixed price.
    let mut open = bid_request.clone();
    open["imp"][0]["bidfloor"] = json!(5.0);
    open["imp"][0]["pmp"]["private_auction"] = json!(0);
    open["imp"][0]["pmp"]["deals"][0]["at"] = json!(3);
    let response = decide(
        open,
        vec![
            deal_bid("Agency1", "on-deal", 2.60, "AB-Agency1-0001"),
            deal_bid("Agency2", "open", 4.00, ""),
        ],
    )
    .await;
    assert_eq!(winner(&response)["bidId"], "on-deal", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "2500000", "{response}");
    assert!(dropped(&response).contains(&(
        "exchange_bids[1].seatbid[0].bid[0]".to_string(),
        "below_floor".to_string()
    )));
}

const EURO: &str = r#"
[[networks]]
id = "euroads"
account_id = "demo-network"
endpoint = "http://${DEMO_NETWORK}/openrtb/euroads"
timeout_ms = 150
currency = "CHF"

# 1.00 until 2020; 1.25 since; a rate scheduled for 2999 is not in force yet.
[[currency_rates]]
currency = "CHF"
usd = "1.00"
scheduled = [{ from = "2020-01-01", usd = "1.25" }, { from = "2999-01-01", usd = "9.99" }]

[[mediated_bids]]
id = "euroads-3.00"
account_id = "demo-network"
network_id = "euroads"
cpm = "3.00"
placement_id = "euro-slot"
targeting = { ad_units = ["euro-slot"] }
"#;

/// Case 4: a waterfall network is sent max(its CPM, the floor) and held to it: an
/// answer under it is its no fill (`below_floor`); an answer above is booked at its own
/// price. A network's CPM, floor and answer are in its own currency, converted at the
/// rate in force (rates carry the day they apply from), which the winner records.
#[tokio::test]
async fn a_waterfall_network_is_held_to_its_floor_and_booked_at_its_price() {
    let cluster = Cluster::builder().configuration(EURO).start().await;
    cluster.networks.set("coolads", Behaviour::FillAt(0.01));
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "1200000", "{response}");
    assert_eq!(
        attempts(&response)[0],
        attempt("mediated:coolads-2.00", "NO_FILL", "below_floor")
    );
    let explained = &response["decisions"][0]["explanation"]["attempts"][0];
    assert_eq!(explained["floorMicros"], "2000000");
    assert_eq!(explained["priceMicros"], "10000");
    assert_eq!(
        cluster.networks.last_request("coolads").unwrap()["imp"][0]["bidfloor"],
        2.0
    );

    cluster.networks.set("coolads", Behaviour::FillAt(2.40));
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "2400000", "{response}");

    // CHF 3.00 = USD 3.75 at the rate in force, 1.25: it ranks first, is asked in CHF
    // and answers in CHF; the winner says what it converted from, and at what rate.
    let response = cluster
        .decide(&request_of("8953", "euro-slot", json!([])))
        .await;
    assert_eq!(winner(&response)["networkId"], "euroads", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "3750000", "{response}");
    assert_eq!(winner(&response)["cur"], "USD", "{response}");
    assert_eq!(winner(&response)["originalCur"], "CHF", "{response}");
    assert_eq!(winner(&response)["rateMicros"], "1250000", "{response}");
    let sent = cluster.networks.last_request("euroads").unwrap();
    assert_eq!(
        (
            &sent["imp"][0]["bidfloor"],
            &sent["imp"][0]["bidfloorcur"],
            &sent["cur"]
        ),
        (&json!(3.0), &json!("CHF"), &json!(["CHF"])),
        "{sent}"
    );
}

const SECOND_PRICE: &str = r#"
[[accounts]]
id = "sp-pub"
parent_id = "demo-network"

[[selling_rules]]
id = "sp-all"
account_id = "sp-pub"
floor = "0.50"
auction_type = "second_price"
"#;

/// Case 5: under a second-price rule, a mediated winner pays its CPM, and a mediated
/// bid's CPM (an estimate, not a bid) does not set the price an exchange winner pays.
#[tokio::test]
async fn a_mediated_winner_is_never_second_priced() {
    let cluster = Cluster::builder().configuration(SECOND_PRICE).start().await;
    let request = request_of("sp-pub", "home-top", exchange_bid(1.5, "shoes.example"));
    let response = cluster.decide(&request).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "2000000", "{response}");

    // With both networks empty the exchange bid wins; BetaAds' $1.20 CPM below it is
    // not a bid, so it pays the floor.
    cluster.networks.set("coolads", Behaviour::NoFill);
    cluster.networks.set("betaads", Behaviour::NoFill);
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "500000", "{response}");
}

/// Case 6: a short deadline or a network-caller that cannot answer never costs the
/// demand in hand: the best candidate below the failed ones serves and the attempts
/// say why; with nothing in hand, the impression says why, and the call succeeds.
#[tokio::test]
async fn a_short_deadline_or_a_lost_network_caller_serves_the_demand_in_hand() {
    // network-caller is killed: processes.
    let mut cluster = Cluster::builder().processes().start().await;
    // Connections between the services are opened by the first decision.
    cluster.decide(&banner_request(json!([]))).await;
    cluster.networks.set(
        "coolads",
        Behaviour::Slow(Duration::from_secs(1), Box::new(Behaviour::Fill)),
    );
    for tmax in [100, 120, 152] {
        let mut request = banner_request(exchange_bid(1.5, "shoes.example"));
        request["request"]["tmax"] = json!(tmax);
        let started = Instant::now();
        let response = cluster.decide(&request).await;
        assert_eq!(
            winner(&response)["source"],
            "SOURCE_KIND_EXCHANGE",
            "tmax {tmax}: {response}"
        );
        assert_eq!(winner(&response)["priceMicros"], "1500000", "{response}");
        // network-caller gave up on CoolAds in time (a timeout), or — on a loaded
        // machine — its answer itself came after bid-intake's deadline, which then
        // served the demand in hand without it. Either way the hanging network cost
        // nothing but its own chance.
        let (_, outcome, reason) = &attempts(&response)[0];
        assert!(
            outcome == "ATTEMPT_OUTCOME_TIMEOUT"
                || (outcome == "ATTEMPT_OUTCOME_SKIPPED" && reason == "deadline"),
            "{response}"
        );
        // grpcurl's own start-up is in this figure; the decision kept to its budget.
        assert!(started.elapsed() < Duration::from_millis(tmax + 900));
    }

    let network_caller = cluster.processes_mut().others.remove(2);
    network_caller.kill().await.unwrap();
    let response = cluster
        .decide(&banner_request(exchange_bid(1.5, "shoes.example")))
        .await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(
        attempts(&response),
        [
            attempt("mediated:coolads-2.00", "SKIPPED", "unreachable"),
            attempt("exchange_bids[0].seatbid[0].bid[0]", "FILLED", ""),
        ]
    );
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(
        response["decisions"][0]["noFillReason"], "NO_FILL_REASON_NETWORKS_UNREACHABLE",
        "{response}"
    );
}

/// Case 7: a chained outcome is filtered again under the new request's rules, and a
/// client-side chain node is an outcome only once the client reported it filled.
#[tokio::test]
async fn chained_outcomes_are_filtered_again_and_must_have_filled() {
    let cluster = Cluster::start().await;
    let mut keep = banner_request(exchange_bid(9.0, "shoes.example"));
    keep["keep_markup"] = json!(true);
    let first = cluster.decide(&keep).await;
    let earlier = winner(&first)["selectionId"].as_str().unwrap().to_string();
    let mut request = banner_request(json!([]));
    request["request"]["badv"] = json!(["shoes.example"]);
    request["chained_selection_ids"] = json!([earlier]);
    let response = cluster.decide(&request).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert_eq!(
        dropped(&response),
        [(format!("chained:{earlier}"), "blocked_adomain".to_string())]
    );
    // Without the block it wins, with the markup its first request asked to keep.
    request["request"]["badv"] = json!([]);
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["selectionId"],
        earlier.as_str(),
        "{response}"
    );
    assert_eq!(
        winner(&response)["adm"],
        "<div>exchange</div>",
        "{response}"
    );
    assert_eq!(winner(&response)["adomain"], json!(["shoes.example"]));

    // CLIENT mode: the client reports CoolAds' node as no fill and BetaAds' as filled.
    let mut client = banner_request(json!([]));
    client["mode"] = json!("EXECUTION_MODE_CLIENT");
    let chain = cluster.decide(&client).await;
    let nodes = chain["decisions"][0]["chain"].as_array().unwrap().clone();
    let node = |network: &str| {
        nodes
            .iter()
            .find(|n| n["networkId"] == network)
            .and_then(|n| n["selectionId"].as_str())
            .unwrap()
            .to_string()
    };
    let (coolads_node, betaads_node) = (node("coolads"), node("betaads"));
    // The client is told the floor each network is to be sent and held to.
    assert_eq!(nodes[0]["networkId"], "coolads");
    assert_eq!(nodes[0]["floorMicros"], "2000000", "{chain}");
    for (selection, outcome) in [(&coolads_node, "NO_FILL"), (&betaads_node, "FILLED")] {
        report_event(
            &cluster,
            json!({"selection_id": selection, "type": "EVENT_TYPE_NODE_RESULT",
                   "node_outcome": format!("ATTEMPT_OUTCOME_{outcome}")}),
        )
        .await;
    }
    cluster.networks.set("coolads", Behaviour::NoFill);
    cluster.networks.set("betaads", Behaviour::NoFill);
    let mut request = banner_request(json!([]));
    request["chained_selection_ids"] = json!([coolads_node, betaads_node]);
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_CHAINED_OUTCOME",
        "{response}"
    );
    assert_eq!(winner(&response)["selectionId"], betaads_node.as_str());
    assert_eq!(winner(&response)["priceMicros"], "1200000", "{response}");
    assert_eq!(
        dropped(&response),
        [(
            format!("chained:{coolads_node}"),
            "unfilled_outcome".to_string()
        )]
    );
}

const PAUSED: &str = r#"
[[accounts]]
id = "paused-pub"
parent_id = "demo-network"

[[selling_rules]]
id = "paused-all"
account_id = "paused-pub"
enabled = false
"#;

/// An account with rules of its own, even all disabled, does not inherit its
/// container's rules: nothing is for sale to auction demand.
#[tokio::test]
async fn an_account_whose_own_rules_are_disabled_does_not_inherit() {
    let cluster = Cluster::builder().configuration(PAUSED).start().await;
    let response = cluster
        .decide(&request_of(
            "paused-pub",
            "home-top",
            exchange_bid(3.0, "shoes.example"),
        ))
        .await;
    assert_eq!(
        response["decisions"][0]["noFillReason"], "NO_FILL_REASON_NO_MATCHING_RULE",
        "{response}"
    );
    assert_eq!(cluster.networks.calls("coolads"), 0);
}

const ADMIN_TOKEN: &str = "rules-test-token";

/// Case 8 and the blocked count: client-side node results count in the network report
/// like server-side attempts (a request and its outcome; a filled node is a win), and a
/// refused ad counts as blocked, not as a no fill.
#[tokio::test]
async fn client_side_results_and_refused_ads_count_in_the_report() {
    // The services share their counts through Redis, flushed every 50 ms.
    let (_redis, cluster) = Cluster::on_new_redis(ADMIN_TOKEN).await;

    let mut client = banner_request(json!([]));
    client["mode"] = json!("EXECUTION_MODE_CLIENT");
    let chain = cluster.decide(&client).await;
    for node in chain["decisions"][0]["chain"].as_array().unwrap() {
        let outcome = match node["networkId"].as_str() {
            Some("coolads") => "FILLED",
            Some("betaads") => "NO_FILL",
            _ => continue,
        };
        report_event(
            &cluster,
            json!({"selection_id": node["selectionId"], "type": "EVENT_TYPE_NODE_RESULT",
                   "node_outcome": format!("ATTEMPT_OUTCOME_{outcome}"), "node_latency_ms": 40}),
        )
        .await;
    }
    cluster
        .networks
        .set("coolads", fill_with(&["malware.example"], &[]));
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");

    let target = format!("http://{}", cluster.bid_intake);
    let env = [
        ("CASCADE_ADMIN_TARGET", target.as_str()),
        ("CASCADE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let expected_coolads = [
        ("requests", 2),
        ("fills", 1),
        ("blocked", 1),
        ("no_fills", 0),
        ("wins", 1),
    ];
    let expected_betaads = [("requests", 2), ("fills", 1), ("no_fills", 1), ("wins", 1)];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let csv = run_cascade(&["report", "--csv"], &env).await;
        let matches = |network: &str, expected: &[(&str, i64)]| {
            let totals = network_totals(&csv, network);
            expected
                .iter()
                .all(|(name, value)| totals.get(*name).copied().unwrap_or(0) == *value)
        };
        if matches("coolads", &expected_coolads) && matches("betaads", &expected_betaads) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the report never added up:\n{csv}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
