//! The four service binaries as separate processes on free ports, with the demo
//! configuration and scripted fake OpenRTB networks, driven through grpcurl and server
//! reflection exactly as an operator would.
//!
//! Needs the service binaries built (`cargo build --bins`) and grpcurl on PATH:
//! `scripts/test` does both.

use std::time::Duration;

use crate::support::{
    Cluster, DECIDE, banner_request, exchange_bid, run_cascade, winner, workspace_file,
};
use cascade_testkit::{Behaviour, grpcurl};
use serde_json::{Value, json};

/// Pairs of two fields of every entry of the first decision's explanation `list`.
fn explained(response: &Value, list: &str, first: &str, second: &str) -> Vec<(String, String)> {
    response["decisions"][0]["explanation"][list]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| {
                    let field = |name: &str| entry[name].as_str().unwrap_or_default().to_string();
                    (field(first), field(second))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (candidate, outcome) of every waterfall or bidding attempt.
fn attempt_outcomes(response: &Value) -> Vec<(String, String)> {
    explained(response, "attempts", "candidateId", "outcome")
}

/// (outcome, detail) of every attempt.
fn attempt_details(response: &Value) -> Vec<(String, String)> {
    explained(response, "attempts", "outcome", "detail")
}

/// (candidate, reason) of every candidate the auction dropped.
fn dropped_reasons(response: &Value) -> Vec<(String, String)> {
    explained(response, "dropped", "candidateId", "reason")
}

#[tokio::test]
async fn every_service_is_serving_lists_only_itself_and_exits_cleanly_on_sigterm() {
    let mut cluster = Cluster::builder().processes().start().await;
    let processes = cluster.processes();
    for service in processes.others.iter().chain([&processes.bid_intake]) {
        let health = grpcurl::call(service.addr, "grpc.health.v1.Health/Check", &json!({}), &[])
            .await
            .unwrap();
        assert!(health.success, "{}: {}", service.name, health.stderr);
        assert_eq!(health.json()["status"], "SERVING", "{}", service.name);
    }
    let listed = grpcurl::run(&["-plaintext", &cluster.bid_intake.to_string(), "list"])
        .await
        .unwrap();
    assert!(
        listed.stdout.contains("cascade.decision.v1.BidIntake"),
        "{}",
        listed.stdout
    );
    assert!(
        !listed.stdout.contains("cascade.auction.v1.Auction"),
        "{}",
        listed.stdout
    );
    let listed = grpcurl::run(&[
        "-plaintext",
        &cluster.processes().others[1].addr.to_string(),
        "list",
    ])
    .await
    .unwrap();
    assert!(
        listed.stdout.contains("cascade.auction.v1.Auction"),
        "{}",
        listed.stdout
    );

    let status = cluster.terminate_bid_intake().await;
    assert!(status.success(), "bid-intake exited with {status}");
}

#[tokio::test]
async fn the_highest_mediated_bid_wins_when_its_network_fills() {
    let cluster = Cluster::start().await;
    let response = cluster
        .decide(&banner_request(exchange_bid(1.5, "shoes.example")))
        .await;
    let winner = winner(&response);
    assert_eq!(winner["source"], "SOURCE_KIND_MEDIATED_NETWORK");
    assert_eq!(winner["networkId"], "coolads");
    assert_eq!(winner["bidId"], "coolads-2.00");
    assert_eq!(winner["priceMicros"], "2000000");
    assert!(
        winner["adm"]
            .as_str()
            .unwrap()
            .contains("coolads ad for coolads-banner-main")
    );
    assert_eq!(winner["selectionId"].as_str().unwrap().len(), 32);
    assert_eq!(cluster.networks.calls("coolads"), 1);
    assert_eq!(cluster.networks.calls("betaads"), 0);
    let explanation = &response["decisions"][0]["explanation"];
    assert_eq!(explanation["appliedRuleId"], "network-default");
    assert_eq!(explanation["ruleAccountId"], "demo-network");
    assert_eq!(explanation["ruleInherited"], true);
}

#[tokio::test]
async fn when_the_winning_network_has_no_ad_the_next_candidate_wins() {
    let cluster = Cluster::start().await;
    cluster.networks.set("coolads", Behaviour::NoFill);

    // The exchange bid at $1.50 is next in rank order: it fills without a call.
    let response = cluster
        .decide(&banner_request(exchange_bid(1.5, "shoes.example")))
        .await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "1500000", "{response}");
    assert_eq!(
        attempt_outcomes(&response),
        [
            (
                "mediated:coolads-2.00".to_string(),
                "ATTEMPT_OUTCOME_NO_FILL".to_string()
            ),
            (
                "exchange_bids[0].seatbid[0].bid[0]".to_string(),
                "ATTEMPT_OUTCOME_FILLED".to_string()
            ),
        ]
    );

    // Without exchange demand, BetaAds at $1.20 is next; an empty seatbid is no fill too.
    cluster.networks.set("coolads", Behaviour::EmptySeatbid);
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "1200000", "{response}");

    // Nobody fills: the waterfall is exhausted.
    cluster.networks.set("betaads", Behaviour::Error(500));
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert!(response["decisions"][0].get("winner").is_none());
    assert_eq!(
        response["decisions"][0]["noFillReason"],
        "NO_FILL_REASON_WATERFALL_EXHAUSTED"
    );
    assert_eq!(
        attempt_outcomes(&response)[1].1,
        "ATTEMPT_OUTCOME_ERROR",
        "{response}"
    );
}

#[tokio::test]
async fn a_network_answering_after_its_timeout_loses_to_the_next_candidate() {
    let cluster = Cluster::start().await;
    // CoolAds' timeout is 150 ms in the demo configuration.
    cluster.networks.set(
        "coolads",
        Behaviour::Slow(Duration::from_millis(1_000), Box::new(Behaviour::Fill)),
    );
    let mut request = banner_request(json!([]));
    request["request"]["tmax"] = json!(800);
    let response = cluster.decide(&request).await;
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
    let outcomes = attempt_outcomes(&response);
    assert_eq!(outcomes[0].1, "ATTEMPT_OUTCOME_TIMEOUT");
    assert_eq!(outcomes[1].1, "ATTEMPT_OUTCOME_FILLED");
    let timeout_latency = response["decisions"][0]["explanation"]["attempts"][0]["latencyUs"]
        .as_u64()
        .unwrap();
    assert!(
        (150_000..800_000).contains(&timeout_latency),
        "waited {timeout_latency} us for a network with a 150 ms timeout"
    );
}

#[tokio::test]
async fn a_bid_under_the_applied_floor_never_wins() {
    let cluster = Cluster::start().await;
    // A US phone: both container rules match and the highest floor, $1.00, applies.
    let mut request = banner_request(exchange_bid(0.95, "shoes.example"));
    request["request"]["device"] = json!({"devicetype": 4, "geo": {"country": "USA"}});
    cluster.networks.set("coolads", Behaviour::NoFill);
    let response = cluster.decide(&request).await;
    let explanation = &response["decisions"][0]["explanation"];
    assert_eq!(explanation["appliedRuleId"], "network-us-mobile");
    assert_eq!(explanation["floorMicros"], "1000000");
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
    assert_eq!(
        dropped_reasons(&response),
        [(
            "exchange_bids[0].seatbid[0].bid[0]".to_string(),
            "below_floor".to_string()
        )]
    );

    // The request's own floor raises it above every bid: nothing may serve.
    request["request"]["imp"][0]["bidfloor"] = json!(2.5);
    let response = cluster.decide(&request).await;
    assert!(
        response["decisions"][0].get("winner").is_none(),
        "{response}"
    );
    assert_eq!(
        response["decisions"][0]["noFillReason"],
        "NO_FILL_REASON_NO_ELIGIBLE_DEMAND"
    );
    assert_eq!(dropped_reasons(&response).len(), 3);
    assert!(
        dropped_reasons(&response)
            .iter()
            .all(|(_, reason)| reason == "below_floor")
    );
}

#[tokio::test]
async fn a_blocked_advertiser_domain_never_wins() {
    let cluster = Cluster::start().await;
    // Blocked by the inherited rule (malware.example, subdomains included).
    let response = cluster
        .decide(&banner_request(exchange_bid(10.0, "ads.malware.example")))
        .await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert_eq!(
        dropped_reasons(&response),
        [(
            "exchange_bids[0].seatbid[0].bid[0]".to_string(),
            "blocked_adomain".to_string()
        )]
    );

    // Blocked by the request's own badv.
    let mut request = banner_request(exchange_bid(10.0, "rival.example"));
    request["request"]["badv"] = json!(["rival.example"]);
    let response = cluster.decide(&request).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");

    // Not blocked: the $10 exchange bid wins outright and no network is called.
    let calls_before = cluster.networks.calls("coolads");
    let response = cluster
        .decide(&banner_request(exchange_bid(10.0, "rival.example")))
        .await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(cluster.networks.calls("coolads"), calls_before);
}

#[tokio::test]
async fn a_malformed_request_gets_invalid_argument_naming_the_field() {
    let cluster = Cluster::start().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "request: required"),
        (
            {
                let mut r = banner_request(json!([]));
                r["request"]["imp"] = json!([]);
                r
            },
            "request.imp: at least one impression",
        ),
        (
            {
                let mut r = banner_request(json!([]));
                r["request"]["imp"][0]["bidfloor"] = json!(-1);
                r
            },
            "request.imp[0].bidfloor",
        ),
        (
            {
                let mut r = banner_request(json!([]));
                r["request"]["imp"][0]["bidfloorcur"] = json!("XXX");
                r
            },
            "request.imp[0].bidfloorcur: unknown currency",
        ),
        (
            {
                let mut r = banner_request(json!([]));
                r["request"]["site"]["publisher"]["id"] = json!("");
                r
            },
            "request.site.publisher.id: required",
        ),
        (
            {
                let mut bids = exchange_bid(1.0, "a.example");
                bids[0]["seatbid"][0]["bid"][0]["impid"] = json!("nope");
                banner_request(bids)
            },
            "exchange_bids[0].seatbid[0].bid[0].impid",
        ),
    ];
    for (request, expected) in cases {
        let error = cluster.decide_error(&request).await;
        assert!(
            error.contains("Code: InvalidArgument"),
            "{expected}: {error}"
        );
        assert!(error.contains(expected), "expected {expected:?} in {error}");
        // The field also arrives as a google.rpc.BadRequest field violation.
        let field = expected.split(':').next().unwrap();
        assert!(
            error.contains(&format!("\"fieldViolations\":[{{\"field\":\"{field}\"")),
            "expected a BadRequest detail for {field} in {error}"
        );
    }
    // Nothing was half-done: the cluster still decides.
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
}

#[tokio::test]
async fn the_iab_openrtb_examples_decide_as_they_are() {
    let cluster = Cluster::start().await;
    let fixtures = workspace_file("../shared/fixtures/openrtb26");
    let expectations = [
        // (file, expected winner network or no-fill reason)
        ("bid-request-example-1-simple-banner.json", "coolads"),
        ("bid-request-example-2-expandable-creative.json", "coolads"),
        (
            "bid-request-example-3-mobile.json",
            "NO_FILL_REASON_UNKNOWN_ACCOUNT",
        ),
        ("bid-request-example-4-video.json", "coolads"),
        // A private auction: only bids under its deals may serve, and there are none.
        (
            "bid-request-example-5-pmp-with-direct-deal.json",
            "NO_FILL_REASON_NO_ELIGIBLE_DEMAND",
        ),
    ];
    for (file, expected) in expectations {
        let text = std::fs::read_to_string(fixtures.join(file)).unwrap();
        let bid_request: Value = serde_json::from_str(&text).unwrap();
        let response = cluster.decide(&json!({"request": bid_request})).await;
        let decisions = response["decisions"].as_array().unwrap();
        assert_eq!(
            decisions.len(),
            bid_request["imp"].as_array().unwrap().len(),
            "{file}"
        );
        let outcome = decisions[0]["winner"]["networkId"]
            .as_str()
            .or(decisions[0]["noFillReason"].as_str())
            .unwrap();
        assert_eq!(outcome, expected, "{file}: {response}");
    }
    // Example 4 is video on Site ABCD, whose own rule sells video at a $1.50 floor in a
    // second-price auction: its $3.00 video bid beats the container's $2.00 CoolAds bid
    // (BetaAds' $1.20 is under the floor) and, a mediated network, pays its own price:
    // nobody charges a network a second price.
    let text = std::fs::read_to_string(fixtures.join("bid-request-example-4-video.json")).unwrap();
    let mut request =
        json!({"request": serde_json::from_str::<Value>(&text).unwrap(), "debug": true});
    request["request"]["tmax"] = json!(1000);
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["bidId"],
        "coolads-video-3.00",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "3000000", "{response}");
    assert_eq!(
        response["decisions"][0]["explanation"]["appliedRuleId"],
        "siteabcd-video"
    );
    assert_eq!(
        dropped_reasons(&response),
        [(
            "mediated:betaads-1.20".to_string(),
            "below_floor".to_string()
        )]
    );
    assert_eq!(
        response["decisions"][0]["explanation"]["ruleInherited"],
        Value::Null
    );
}

#[tokio::test]
async fn client_mode_returns_the_ranked_chain_without_calling_networks() {
    let cluster = Cluster::start().await;
    let mut request = banner_request(exchange_bid(1.5, "shoes.example"));
    request["mode"] = json!("EXECUTION_MODE_CLIENT");
    let response = cluster.decide(&request).await;
    let chain = response["decisions"][0]["chain"].as_array().unwrap();
    let nodes: Vec<(&str, &str, u64)> = chain
        .iter()
        .map(|node| {
            (
                node["bidId"].as_str().unwrap(),
                node["priceMicros"].as_str().unwrap(),
                node["timeoutMs"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("coolads-2.00", "2000000", 150),
            ("x1", "1500000", 0),
            ("betaads-1.20", "1200000", 150)
        ]
    );
    let selection_ids: std::collections::HashSet<_> = chain
        .iter()
        .map(|node| node["selectionId"].as_str().unwrap())
        .collect();
    assert_eq!(
        selection_ids.len(),
        3,
        "every node has its own selection id"
    );
    assert!(response["decisions"][0].get("winner").is_none());
    assert_eq!(
        cluster.networks.calls("coolads") + cluster.networks.calls("betaads"),
        0
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_decision_finish() {
    // Slow enough to still be in flight at SIGTERM, well within CoolAds' timeout even on
    // a loaded machine.
    let mut cluster = Cluster::builder()
        .processes()
        .network_timeout("coolads", Duration::from_secs(2))
        .start()
        .await;
    cluster.networks.set(
        "coolads",
        Behaviour::Slow(Duration::from_millis(500), Box::new(Behaviour::Fill)),
    );
    let addr = cluster.bid_intake;
    let in_flight = tokio::spawn(async move {
        grpcurl::call(
            addr,
            DECIDE,
            &banner_request(json!([])),
            &["-max-time", "5"],
        )
        .await
    });
    crate::support::eventually(
        Duration::from_secs(10),
        "the decision to reach the network",
        || async { cluster.networks.calls("coolads") > 0 },
    )
    .await;
    let status = cluster.terminate_bid_intake().await;
    assert!(status.success(), "bid-intake exited with {status}");
    let output = in_flight.await.unwrap().unwrap();
    assert!(
        output.success,
        "the in-flight decision failed: {}",
        output.stderr
    );
    assert_eq!(winner(&output.json())["networkId"], "coolads");
}

#[tokio::test]
async fn line_items_serve_without_a_rule_and_outrank_by_their_class() {
    let cluster = Cluster::start().await;
    // Site ABCD sells only video through its rules; its banner sponsorship is a
    // guaranteed line item, and only line items may serve where no rule matches.
    let sponsorship = json!({
        "request": {
            "id": "req-sponsor",
            "imp": [{"id": "1", "tagid": "sponsor-top", "banner": {"w": 300, "h": 250}}],
            "site": {"domain": "siteabcd.com", "publisher": {"id": "pub12345"}}
        },
        "exchange_bids": exchange_bid(20.0, "rich.example"),
        "debug": true
    });
    let response = cluster.decide(&sponsorship).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_LINE_ITEM",
        "{response}"
    );
    assert_eq!(
        winner(&response)["bidId"],
        "siteabcd-sponsorship",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "4000000", "{response}");
    assert!(
        winner(&response)["adm"]
            .as_str()
            .unwrap()
            .contains("sponsorship")
    );
    assert_eq!(
        response["decisions"][0]["explanation"]["appliedRuleId"],
        Value::Null
    );

    // On foobar.com's home section a $1.80 non-guaranteed line item competes: it beats
    // the $1.80 exchange bid (auction demand must bid more) once CoolAds has no ad.
    cluster.networks.set("coolads", Behaviour::NoFill);
    let mut home = banner_request(exchange_bid(1.8, "shoes.example"));
    home["key_values"] = json!({"section": "home"});
    let response = cluster.decide(&home).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_LINE_ITEM",
        "{response}"
    );
    assert_eq!(
        winner(&response)["bidId"],
        "foobar-home-house",
        "{response}"
    );
    // Outbid by a cent, it loses.
    let mut outbid = banner_request(exchange_bid(1.81, "shoes.example"));
    outbid["key_values"] = json!({"section": "home"});
    let response = cluster.decide(&outbid).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );

    // Another section: the line item's key-value targeting excludes it, and says why.
    let mut sport = banner_request(json!([]));
    sport["key_values"] = json!({"section": "sport"});
    let response = cluster.decide(&sport).await;
    let excluded = response["decisions"][0]["explanation"]["excluded"]
        .as_array()
        .unwrap();
    assert!(
        excluded.contains(&json!({"id": "foobar-home-house", "reason": "targeting:key_value"})),
        "{response}"
    );
}

#[tokio::test]
async fn blocked_seats_and_creative_attributes_never_win() {
    let cluster = Cluster::start().await;
    let mut bids = exchange_bid(9.0, "shoes.example");
    bids[0]["seatbid"][0]["seat"] = json!("blocked-seat");
    let response = cluster.decide(&banner_request(bids)).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert_eq!(dropped_reasons(&response)[0].1, "blocked_seat");
    // What the bid's lurl would be told: OpenRTB's "buyer seat blocked".
    let dropped = &response["decisions"][0]["explanation"]["dropped"][0];
    assert_eq!(dropped["lossCode"], 104, "{response}");

    let mut bids = exchange_bid(9.0, "shoes.example");
    bids[0]["seatbid"][0]["bid"][0]["attr"] = json!([1, 3]);
    let response = cluster.decide(&banner_request(bids)).await;
    assert_eq!(dropped_reasons(&response)[0].1, "blocked_attribute");
    let dropped = &response["decisions"][0]["explanation"]["dropped"][0];
    assert_eq!(dropped["lossCode"], 210, "{response}");

    // The request's own bseat and battr block too.
    let mut request = banner_request(exchange_bid(9.0, "shoes.example"));
    request["request"]["bseat"] = json!(["dsp-1"]);
    let response = cluster.decide(&request).await;
    assert_eq!(dropped_reasons(&response)[0].1, "blocked_seat");
    let mut request = banner_request({
        let mut bids = exchange_bid(9.0, "shoes.example");
        bids[0]["seatbid"][0]["bid"][0]["attr"] = json!([7]);
        bids
    });
    request["request"]["imp"][0]["banner"]["battr"] = json!([7]);
    let response = cluster.decide(&request).await;
    assert_eq!(dropped_reasons(&response)[0].1, "blocked_attribute");
}

const REPORT_EVENT: &str = "cascade.decision.v1.BidIntake/ReportEvent";

#[tokio::test]
async fn events_are_recorded_once_per_selection_and_type() {
    let cluster = Cluster::start().await;
    let response = cluster.decide(&banner_request(json!([]))).await;
    let selection_id = winner(&response)["selectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let report = |kind: &str| json!({"selection_id": selection_id, "type": kind});
    let call = |request: Value| async move {
        grpcurl::call(cluster.bid_intake, REPORT_EVENT, &request, &[])
            .await
            .unwrap()
    };

    let first = call(report("EVENT_TYPE_IMPRESSION")).await;
    assert!(first.success, "{}", first.stderr);
    assert_eq!(
        first.json().get("duplicate"),
        None,
        "a first report is not a duplicate"
    );
    let again = call(report("EVENT_TYPE_IMPRESSION")).await;
    assert_eq!(again.json()["duplicate"], true);
    let click = call(report("EVENT_TYPE_CLICK")).await;
    assert_eq!(click.json().get("duplicate"), None);

    let unknown =
        call(json!({"selection_id": "no-such-selection", "type": "EVENT_TYPE_IMPRESSION"})).await;
    assert!(
        unknown.stderr.contains("Code: NotFound"),
        "{}",
        unknown.stderr
    );
    let untyped = call(json!({"selection_id": selection_id})).await;
    assert!(
        untyped.stderr.contains("Code: InvalidArgument"),
        "{}",
        untyped.stderr
    );
    assert!(
        untyped.stderr.contains("type: required"),
        "{}",
        untyped.stderr
    );

    // Client-side mediation: each chain node reports its own result.
    let mut request = banner_request(json!([]));
    request["mode"] = json!("EXECUTION_MODE_CLIENT");
    let response = cluster.decide(&request).await;
    let node = response["decisions"][0]["chain"][0]["selectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let result = call(json!({
        "selection_id": node,
        "type": "EVENT_TYPE_NODE_RESULT",
        "node_outcome": "ATTEMPT_OUTCOME_NO_FILL",
        "node_latency_ms": 80
    }))
    .await;
    assert!(result.success, "{}", result.stderr);
    let missing_outcome =
        call(json!({"selection_id": node, "type": "EVENT_TYPE_NODE_RESULT"})).await;
    assert!(
        missing_outcome.stderr.contains("node_outcome"),
        "{}",
        missing_outcome.stderr
    );
}

#[tokio::test]
async fn chained_outcomes_compete_at_their_stored_price() {
    let cluster = Cluster::start().await;
    let earlier = cluster.decide(&banner_request(json!([]))).await;
    let chained_id = winner(&earlier)["selectionId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(winner(&earlier)["priceMicros"], "2000000");

    // A higher exchange bid beats the chained $2.00 outcome: a new outcome.
    let mut request = banner_request(exchange_bid(2.5, "shoes.example"));
    request["chained_selection_ids"] = json!([chained_id]);
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );

    // At $2.00 the chained outcome ties CoolAds' mediated bid and wins the tie (it has
    // already won once; CoolAds would still have to be called): the chained outcome is
    // returned with its own selection id, and no network is called.
    let calls_before = cluster.networks.calls("coolads");
    let mut request = banner_request(exchange_bid(1.5, "shoes.example"));
    request["chained_selection_ids"] = json!([chained_id]);
    let response = cluster.decide(&request).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_CHAINED_OUTCOME",
        "{response}"
    );
    assert_eq!(winner(&response)["selectionId"], chained_id.as_str());
    assert_eq!(winner(&response)["priceMicros"], "2000000", "{response}");
    assert_eq!(cluster.networks.calls("coolads"), calls_before);

    // Unknown selections are NOT_FOUND; another publisher's cannot be chained.
    let mut request = banner_request(json!([]));
    request["chained_selection_ids"] = json!(["no-such-selection"]);
    let error = cluster.decide_error(&request).await;
    assert!(
        error.contains("Code: NotFound") && error.contains("chained_selection_ids[0]"),
        "{error}"
    );

    let fixtures = workspace_file("../shared/fixtures/openrtb26");
    let video = std::fs::read_to_string(fixtures.join("bid-request-example-4-video.json")).unwrap();
    let other = cluster
        .decide(&json!({"request": serde_json::from_str::<Value>(&video).unwrap()}))
        .await;
    let other_id = winner(&other)["selectionId"].as_str().unwrap().to_string();
    let mut request = banner_request(json!([]));
    request["chained_selection_ids"] = json!([other_id]);
    let error = cluster.decide_error(&request).await;
    assert!(error.contains("belongs to another publisher"), "{error}");
}

#[tokio::test]
async fn a_failing_network_trips_its_breaker_and_is_skipped() {
    let cluster = Cluster::builder()
        .network_caller(|settings| {
            settings.breaker_failures_to_open = 3;
            settings.breaker_open_ms = 60_000;
        })
        .start()
        .await;
    cluster.networks.set("coolads", Behaviour::Error(503));
    for _ in 0..3 {
        let response = cluster.decide(&banner_request(json!([]))).await;
        assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
        assert_eq!(
            attempt_details(&response)[0],
            ("ATTEMPT_OUTCOME_ERROR".to_string(), "HTTP 503".to_string())
        );
    }
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
    assert_eq!(
        attempt_details(&response)[0],
        (
            "ATTEMPT_OUTCOME_SKIPPED".to_string(),
            "circuit breaker open".to_string()
        )
    );
    assert_eq!(
        cluster.networks.calls("coolads"),
        3,
        "an open breaker makes no call"
    );
}

#[tokio::test]
async fn the_waterfall_stops_calling_networks_at_its_cap() {
    let cluster = Cluster::builder()
        .network_caller(|settings| settings.max_network_calls_per_waterfall = 1)
        .start()
        .await;
    cluster.networks.set("coolads", Behaviour::NoFill);
    let response = cluster
        .decide(&banner_request(exchange_bid(0.9, "shoes.example")))
        .await;
    let details = attempt_details(&response);
    assert_eq!(details[0].0, "ATTEMPT_OUTCOME_NO_FILL");
    assert_eq!(
        details[1],
        (
            "ATTEMPT_OUTCOME_SKIPPED".to_string(),
            "waterfall cap of 1 network calls reached".to_string()
        )
    );
    // Demand in hand below the cap still fills.
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(cluster.networks.calls("betaads"), 0);
}

#[tokio::test]
async fn a_network_slower_than_what_is_left_of_the_deadline_is_skipped() {
    // CoolAds takes 300 ms, well within its timeout even on a loaded machine; a decision
    // with 150 ms has less left than that, and enough for BetaAds.
    let cluster = Cluster::builder()
        .network_timeout("coolads", Duration::from_secs(1))
        .start()
        .await;
    cluster.networks.set(
        "coolads",
        Behaviour::Slow(Duration::from_millis(300), Box::new(Behaviour::Fill)),
    );
    for _ in 0..10 {
        let response = cluster.decide(&banner_request(json!([]))).await;
        assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    }
    let mut hurried = banner_request(json!([]));
    hurried["request"]["tmax"] = json!(150);
    let response = cluster.decide(&hurried).await;
    let (outcome, detail) = &attempt_details(&response)[0];
    assert_eq!(outcome, "ATTEMPT_OUTCOME_SKIPPED", "{response}");
    // The p90 is at least the network's delay; a loaded machine only adds to it.
    let p90_ms: u64 = detail
        .strip_prefix("recent p90 latency ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no p90 in {detail}"));
    assert!((300..450).contains(&p90_ms), "{detail}");
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
}

fn live_request(tagid: &str, exchange_bids: Value) -> Value {
    let mut request = banner_request(exchange_bids);
    request["request"]["imp"][0]["tagid"] = json!(tagid);
    request
}

#[tokio::test]
async fn hybrid_mediation_ranks_live_bids_with_the_waterfall() {
    let cluster = Cluster::start().await;
    // BidWise bids $2.40 live; its 0.95 adjustment makes that $2.28, above CoolAds'
    // $2.00: the live bid wins, in hand, and no waterfall network is called.
    cluster.networks.set("bidwise", Behaviour::FillAt(2.4));
    let response = cluster.decide(&live_request("home-live", json!([]))).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_BIDDING_NETWORK",
        "{response}"
    );
    assert_eq!(winner(&response)["networkId"], "bidwise", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "2280000", "{response}");
    assert!(
        winner(&response)["adm"]
            .as_str()
            .unwrap()
            .contains("bidwise ad for bw-home")
    );
    assert_eq!(cluster.networks.calls("coolads"), 0);
    let attempts = attempt_outcomes(&response);
    assert_eq!(
        attempts[0],
        (
            "bidding:bidwise-home-live".to_string(),
            "ATTEMPT_OUTCOME_FILLED".to_string()
        )
    );

    // A lower live bid loses to CoolAds, which is then called.
    cluster.networks.set("bidwise", Behaviour::FillAt(1.0));
    let response = cluster.decide(&live_request("home-live", json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");

    // A bidding network that does not answer in time costs only its own timeout.
    cluster.networks.set(
        "bidwise",
        Behaviour::Slow(
            Duration::from_millis(1_000),
            Box::new(Behaviour::FillAt(9.0)),
        ),
    );
    let response = cluster.decide(&live_request("home-live", json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert_eq!(attempt_outcomes(&response)[0].1, "ATTEMPT_OUTCOME_TIMEOUT");

    // An ad unit in waterfall mode never asks the bidding network.
    let calls = cluster.networks.calls("bidwise");
    let response = cluster
        .decide(&live_request("home-live-waterfall", json!([])))
        .await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    assert_eq!(cluster.networks.calls("bidwise"), calls);
    let excluded = response["decisions"][0]["explanation"]["excluded"]
        .as_array()
        .unwrap();
    assert!(
        excluded
            .contains(&json!({"id": "bidwise-home-live", "reason": "mediation_mode:waterfall"})),
        "{response}"
    );
}

#[tokio::test]
async fn seat_adjustments_rank_exchange_bids_at_what_they_are_worth() {
    let cluster = Cluster::start().await;
    // $2.10 from a seat adjusted by 0.90 is worth $1.89: CoolAds' $2.00 ranks first.
    let mut bids = exchange_bid(2.1, "shoes.example");
    bids[0]["seatbid"][0]["seat"] = json!("discounted-seat");
    let response = cluster.decide(&banner_request(bids.clone())).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    // The same bid from an unadjusted seat wins.
    bids[0]["seatbid"][0]["seat"] = json!("full-price-seat");
    let response = cluster.decide(&banner_request(bids)).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "2100000", "{response}");
}

#[tokio::test]
async fn custom_networks_speak_the_grpc_contract() {
    let cluster = Cluster::start().await;
    let response = cluster
        .decide(&live_request("custom-slot", json!([])))
        .await;
    assert_eq!(winner(&response)["networkId"], "customnet", "{response}");
    assert_eq!(winner(&response)["priceMicros"], "2500000", "{response}");
    assert!(
        winner(&response)["adm"]
            .as_str()
            .unwrap()
            .contains("customnet ad for custom-slot-1")
    );

    cluster
        .networks
        .set(cascade_testkit::GRPC_NETWORK, Behaviour::NoFill);
    let response = cluster
        .decide(&live_request("custom-slot", json!([])))
        .await;
    assert_eq!(attempt_outcomes(&response)[0].1, "ATTEMPT_OUTCOME_NO_FILL");
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");

    cluster.networks.set(
        cascade_testkit::GRPC_NETWORK,
        Behaviour::Slow(Duration::from_millis(1_000), Box::new(Behaviour::Fill)),
    );
    let response = cluster
        .decide(&live_request("custom-slot", json!([])))
        .await;
    assert_eq!(attempt_outcomes(&response)[0].1, "ATTEMPT_OUTCOME_TIMEOUT");
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
}

#[tokio::test]
async fn a_network_failing_in_any_way_is_its_own_error_and_the_next_candidate_serves() {
    let cluster = Cluster::start().await;
    let cases = [
        (Behaviour::Malformed, "malformed bid response"),
        (Behaviour::Huge, "response body over"),
        (Behaviour::Error(500), "HTTP 500"),
    ];
    for (behaviour, detail) in cases {
        cluster.networks.set("coolads", behaviour);
        let response = cluster.decide(&banner_request(json!([]))).await;
        let (outcome, got) = &attempt_details(&response)[0];
        assert_eq!(outcome, "ATTEMPT_OUTCOME_ERROR", "{response}");
        assert!(got.contains(detail), "{got} should mention {detail}");
        assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
    }
    // A network whose endpoint refuses connections.
    let response = cluster.decide(&live_request("dead-end", json!([]))).await;
    assert_eq!(
        attempt_details(&response)[0],
        (
            "ATTEMPT_OUTCOME_ERROR".to_string(),
            "connection failed".to_string()
        ),
        "{response}"
    );
    assert_eq!(winner(&response)["networkId"], "betaads", "{response}");
}

#[tokio::test]
async fn impressions_of_one_request_call_their_networks_concurrently() {
    let cluster = Cluster::start().await;
    cluster.networks.set(
        "coolads",
        Behaviour::Slow(Duration::from_millis(100), Box::new(Behaviour::Fill)),
    );
    let mut request = banner_request(json!([]));
    request["request"]["imp"] = json!([
        {"id": "1", "tagid": "home-top", "banner": {"w": 300, "h": 250}},
        {"id": "2", "tagid": "home-bottom", "banner": {"w": 300, "h": 250}}
    ]);
    let response = cluster.decide(&request).await;
    let decisions = response["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2);
    for decision in decisions {
        assert_eq!(decision["winner"]["networkId"], "coolads", "{response}");
    }
    assert_ne!(
        decisions[0]["winner"]["selectionId"],
        decisions[1]["winner"]["selectionId"]
    );
    assert_eq!(
        cluster.networks.max_in_flight("coolads"),
        2,
        "both impressions' calls overlapped"
    );
}

/// `cascade load` drives real decisions (and the echo chain baseline) and reports what
/// it measured: every call succeeded, latency percentiles present. Four calls in flight:
/// this checks the generator, not the cluster's capacity, which 32 in flight exceed on a
/// debug build sharing two cores with the other tests (decisions then run out of their
/// 300 ms budget, as they should).
#[tokio::test]
async fn the_load_generator_measures_decisions_and_the_echo_chain() {
    let cluster = Cluster::start().await;
    let load = |args: Vec<String>| async move {
        let args: Vec<&str> = [
            "load",
            "--duration",
            "500ms",
            "--quiet",
            "--concurrency",
            "4",
            // A generous deadline, for the same reason.
            "--deadline",
            "5s",
        ]
        .into_iter()
        .chain(args.iter().map(String::as_str))
        .collect();
        run_cascade(&args, &[]).await
    };
    let target = format!("http://{}", cluster.bid_intake);
    for mode in [vec![], vec!["--rate".to_string(), "50".to_string()]] {
        let mut args = vec![
            "--target".to_string(),
            target.clone(),
            "--imps".into(),
            "2".into(),
        ];
        args.extend(mode);
        let report = load(args).await;
        assert!(report.starts_with("decisions: "), "{report}");
        assert!(!report.contains("errors"), "{report}");
        let completed: u64 = report["decisions: ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(completed > 0, "{report}");
        assert!(report.contains("p99.9"), "{report}");
    }

    let mut echo = tokio::process::Command::new(cascade_testkit::process::binary_path("cascade"))
        .args(["echo-chain", "--hops", "3"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(echo.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line
        .strip_prefix("echo chain listening on ")
        .unwrap()
        .to_string();
    let report = load(vec![
        "--target".into(),
        format!("http://{addr}"),
        "--echo".into(),
    ])
    .await;
    assert!(report.starts_with("echo chain: "), "{report}");
    assert!(!report.contains("errors"), "{report}");
}

#[tokio::test]
async fn a_retried_decision_gets_its_first_answer_without_a_second_sale() {
    let cluster = Cluster::start().await;
    let request = banner_request(exchange_bid(1.5, "shoes.example"));
    let retry = |request: Value, header: &'static str| {
        let addr = cluster.bid_intake;
        async move {
            let output = grpcurl::call(addr, DECIDE, &request, &["-H", header])
                .await
                .unwrap();
            assert!(output.success, "{}", output.stderr);
            output.json()
        }
    };
    let first = cluster.decide(&request).await;
    assert_eq!(winner(&first)["networkId"], "coolads");
    assert_eq!(cluster.networks.calls("coolads"), 1);
    let retried = retry(request.clone(), "cascade-retry: 1").await;
    assert_eq!(retried, first);
    assert_eq!(cluster.networks.calls("coolads"), 1);

    // Without saying it retries, the same id is a new decision, and a new sale.
    let again = cluster.decide(&request).await;
    assert_ne!(winner(&again)["selectionId"], winner(&first)["selectionId"]);
    assert_eq!(cluster.networks.calls("coolads"), 2);
    // gRPC's own retries say so with their attempt count: the latest answer comes back.
    let retried = retry(request.clone(), "grpc-previous-rpc-attempts: 1").await;
    assert_eq!(retried, again);
    assert_eq!(cluster.networks.calls("coolads"), 2);

    // A retry with no first answer on record (the first attempt never got through) is
    // decided; so is the same request id from another publisher.
    let mut unseen = request.clone();
    unseen["request"]["id"] = json!("req-never-seen");
    let decided = retry(unseen, "cascade-retry: 1").await;
    assert_eq!(winner(&decided)["networkId"], "coolads");
    assert_eq!(cluster.networks.calls("coolads"), 3);
}

#[tokio::test]
async fn under_overload_networks_are_given_up_and_the_demand_in_hand_serves() {
    // Any queueing delay at all counts as overload here: bid-intake degrades within
    // 50 ms, and stays so for the test.
    let cluster = Cluster::builder()
        .admission()
        .bid_intake(|settings| {
            settings.grpc.admission.degrade_queue_delay_ms = 0;
            settings.grpc.admission.degrade_hold_ms = 60_000;
        })
        .start()
        .await;
    let request = banner_request(exchange_bid(1.5, "shoes.example"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = cluster.decide(&request).await;
        if attempt_details(&response)
            .iter()
            .any(|(_, detail)| detail.contains("overload"))
        {
            break response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never degraded: {response}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // CoolAds' $2.00 ranks first, but no network is called: the exchange's $1.50 wins.
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_EXCHANGE",
        "{response}"
    );
    assert_eq!(winner(&response)["priceMicros"], "1500000", "{response}");
    // (Decisions before the degrade began did call it.)
    let called = cluster.networks.calls("coolads");
    // With nothing in hand, the impression says why it went unfilled.
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(
        response["decisions"][0]["noFillReason"], "NO_FILL_REASON_OVERLOADED",
        "{response}"
    );
    assert_eq!(cluster.networks.calls("coolads"), called);

    // A call naming its publisher in the metadata gets the same verdict end to end (which
    // verdict the layer in front gives, and that the handler does not judge again, is
    // tested with the layer in crates/server).
    let output = grpcurl::call(
        cluster.bid_intake,
        DECIDE,
        &request,
        &["-H", "cascade-publisher: pub-1"],
    )
    .await
    .unwrap();
    assert!(output.success, "{}", output.stderr);
    let named = output.json();
    assert_eq!(winner(&named)["source"], "SOURCE_KIND_EXCHANGE", "{named}");
    assert!(
        attempt_details(&named)
            .iter()
            .any(|(_, detail)| detail.contains("overload")),
        "{named}"
    );
    assert_eq!(cluster.networks.calls("coolads"), called);
}
