//! The OpenRTB edge, end to end: what a network receives of the request the gateway
//! sent (every member, ext and members outside OpenRTB 2.6 included; only the fields
//! Cascade owns rewritten), what the privacy rules withhold with real TC and GPP
//! strings, and HTTPS to a network whose certificate comes from a CA made at run time.

use crate::support;
use crate::support::{Cluster, workspace_file};
use cascade_core::privacy::testing::{TcContent, gpp_tcf_eu, gpp_us_national, tc_string};
use cascade_testkit::{FakeNetworks, Notice, TestCa};
use serde_json::{Value, json};

/// A bidding network with IAB GVL id 52 asked for every impression of the demo
/// publishers (and of the app publisher of IAB example 3), so every request's journey
/// to a network can be captured.
pub(crate) const EDGE_NETWORK: &str = r#"
[[accounts]]
id = "agltb3B1Yi1pbmNyDAsSA0FwcBiJkfTUCV"
parent_id = "demo-network"
name = "The app publisher of IAB example 3"

[[networks]]
id = "edgenet"
account_id = "demo-network"
endpoint = "http://${DEMO_NETWORK}/openrtb/edgenet"
mode = "bidding"
timeout_ms = 300
gvl_id = 52
params_at = "bidder"
params = [{ name = "zoneId", kind = "integer", required = true }]

[[mediated_bids]]
id = "edgenet-live"
account_id = "demo-network"
network_id = "edgenet"
cpm = "0.10"
placement_id = "edge-placement"
params = { zoneId = 7 }
"#;

pub(crate) const VENDOR: u16 = 52;

/// Cascade's node, as demo.toml configures it for publisher 8953.
fn cascade_node() -> Value {
    json!({"asi": "cascade.example", "sid": "pub-8953", "hp": 1})
}

/// A request rich in OpenRTB 2.6: GDPR with a TC string and GPP, eids, a supply chain,
/// structured user agent, rewarded, quantity, and ext objects everywhere.
fn rich_request(consent: &str) -> Value {
    json!({
        "id": "rich-1",
        "tmax": 800,
        "cur": ["USD"],
        "wlang": ["en"],
        "imp": [{
            "id": "1", "tagid": "home-top", "bidfloor": 0.2, "bidfloorcur": "USD", "secure": 1,
            "rwdd": 1, "exp": 300, "qty": {"multiplier": 1.5, "sourcetype": 1, "vendor": "venue.example"},
            "banner": {"w": 300, "h": 250, "format": [{"w": 300, "h": 250}], "api": [3, 5]},
            "ext": {"gpid": "/1234/home/top", "prebid": {"bidder": {"appnexus": {"placementId": 13144370}}},
                    "data": {"pbadslot": "/1234/home/top"}}
        }],
        "site": {
            "id": "s1", "domain": "www.foobar.com", "page": "https://www.foobar.com/a", "cat": ["IAB3-1"],
            "keywords": "cars,news", "content": {"language": "en", "cat": ["IAB2"], "livestream": 0},
            "publisher": {"id": "8953", "ext": {"prebid": {"parentAccount": "demo"}}},
            "ext": {"amp": 0}
        },
        "device": {
            "ua": "Mozilla/5.0", "ip": "81.2.69.142", "dnt": 0, "lmt": 0, "devicetype": 2,
            "ifa": "6d92078a-8246-4ba4-ae5b-76104861e7dc",
            "geo": {"lat": 52.520008, "lon": 13.404954, "country": "DEU", "city": "Berlin", "zip": "10117", "type": 2},
            "sua": {"browsers": [{"brand": "Chromium", "version": ["120", "0"]}],
                    "platform": {"brand": "macOS", "version": ["14"]}, "mobile": 0, "source": 2},
            "ext": {"atts": 3}
        },
        "user": {
            "id": "u-1", "buyeruid": "b-1", "yob": 1984, "gender": "F", "keywords": "sport",
            "data": [{"id": "dp", "name": "Data provider", "segment": [{"id": "seg1"}]}],
            "eids": [
                {"source": "id5-sync.com", "uids": [{"id": "ID5*abc", "atype": 1}]},
                {"source": "liveramp.com", "uids": [{"id": "XY123", "atype": 3}]}
            ],
            "consent": consent,
            "ext": {"consented_providers_settings": {"consented_providers": [1, 2]}}
        },
        "source": {
            "tid": "tid-1",
            "schain": {"ver": "1.0", "complete": 1, "nodes": [{"asi": "gateway.example", "sid": "g1", "hp": 1}]},
            "ext": {"omidpn": "gateway"}
        },
        "regs": {"gdpr": 1, "gpp": gpp_tcf_eu(consent), "gpp_sid": [2], "ext": {"dsa": {"dsarequired": 1}}},
        "ext": {"prebid": {"debug": true, "targeting": {}}}
    })
}

fn full_consent() -> TcContent {
    TcContent {
        purpose_consents: (1..=10).collect(),
        purpose_legitimate_interests: vec![2, 7],
        special_features: vec![1],
        vendor_consents: vec![VENDOR],
        vendor_legitimate_interests: vec![VENDOR],
        ..Default::default()
    }
}

/// `request` reduced to what Cascade does not own on a network call: the owned fields
/// (the list in the README) removed, only impression `impid` kept, and Cascade's own
/// supply-chain node taken off again.
fn not_owned(mut request: Value, impid: &str, appended_node: Option<&Value>) -> Value {
    let members = request.as_object_mut().unwrap();
    for owned in ["tmax", "at", "cur", "badv", "bcat", "bseat"] {
        members.remove(owned);
    }
    if let Some(imps) = members.get_mut("imp").and_then(Value::as_array_mut) {
        imps.retain(|imp| imp["id"] == impid);
        for imp in imps {
            let imp = imp.as_object_mut().unwrap();
            for owned in ["tagid", "bidfloor", "bidfloorcur"] {
                imp.remove(owned);
            }
            // The mediated bid's parameters, at the network's `params_at`.
            if let Some(ext) = imp.get_mut("ext").and_then(Value::as_object_mut) {
                ext.remove("bidder");
                if ext.is_empty() {
                    imp.remove("ext");
                }
            }
            for media in ["banner", "video", "audio", "native"] {
                if let Some(media) = imp.get_mut(media).and_then(Value::as_object_mut) {
                    media.remove("battr");
                }
            }
        }
    }
    if let Some(node) = appended_node {
        let schain = &mut members["source"]["schain"];
        let nodes = schain["nodes"].as_array_mut().unwrap();
        assert_eq!(
            nodes.pop().as_ref(),
            Some(node),
            "Cascade's node comes last"
        );
        if nodes.is_empty() {
            members.remove("source");
        }
    }
    request
}

pub(crate) async fn decide_and_capture(
    cluster: &Cluster,
    request: &Value,
) -> (Value, Option<Value>) {
    let before = cluster.networks.calls("edgenet");
    let response = cluster.decide(request).await;
    let sent = (cluster.networks.calls("edgenet") > before)
        .then(|| cluster.networks.last_request("edgenet"))
        .flatten();
    (response, sent)
}

pub(crate) fn edge_attempt(response: &Value) -> Value {
    response["decisions"][0]["explanation"]["attempts"]
        .as_array()
        .and_then(|attempts| attempts.iter().find(|a| a["networkId"] == "edgenet"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn every_field_the_gateway_sent_reaches_the_network_and_only_owned_fields_change() {
    let cluster = Cluster::builder().configuration(EDGE_NETWORK).start().await;
    let fixtures = workspace_file("../shared/fixtures/openrtb26");
    for file in [
        "bid-request-example-1-simple-banner.json",
        "bid-request-example-2-expandable-creative.json",
        "bid-request-example-3-mobile.json",
        "bid-request-example-4-video.json",
        "bid-request-example-5-pmp-with-direct-deal.json",
        "bid-request-example-6-native-ad.json",
    ] {
        let mut document: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures.join(file)).unwrap()).unwrap();
        // Example 4's 120 ms leaves a bidding network no time on a loaded test machine.
        if document.get("tmax").is_some() {
            document["tmax"] = json!(1000);
        }
        let (_, sent) = decide_and_capture(&cluster, &json!({"openrtb": document})).await;
        let sent = sent.unwrap_or_else(|| panic!("{file}: edgenet was not asked"));
        // Shown with --nocapture: what a network receives of an IAB example.
        println!(
            "{file} as edgenet received it:\n{}",
            serde_json::to_string_pretty(&sent).unwrap()
        );
        let publisher = &document["site"]["publisher"]["id"];
        let node = cascade_node();
        let appended = (publisher == "8953").then_some(&node);
        assert_eq!(
            not_owned(sent.clone(), "1", appended),
            not_owned(document.clone(), "1", None),
            "{file}: every member the gateway sent passes unchanged"
        );
        let imp = &sent["imp"][0];
        assert_eq!(imp["tagid"], "edge-placement", "{file}");
        assert_eq!(
            imp["ext"]["bidder"],
            json!({"zoneId": 7}),
            "{file}: the bid's params"
        );
        assert_eq!(imp["bidfloorcur"], "USD", "{file}");
        assert!(
            imp["bidfloor"].as_f64().unwrap() >= 0.5,
            "{file}: the rule's floor"
        );
        assert_eq!(
            (&sent["at"], &sent["cur"]),
            (&json!(1), &json!(["USD"])),
            "{file}"
        );
        assert!(
            sent["tmax"].as_u64().unwrap() <= 300,
            "{file}: the call's own time"
        );
        if file.contains("pmp") {
            assert_eq!(
                imp["pmp"], document["imp"][0]["pmp"],
                "a bidding network gets the deals"
            );
        }
        if file.contains("video") {
            // Members outside OpenRTB 2.6 in the IAB's own example are not lost either.
            assert_eq!(imp["video"]["apis"], json!([1, 2]));
        }
    }
}

#[tokio::test]
async fn a_rich_request_reaches_the_network_whole_in_json_and_in_protobuf() {
    let cluster = Cluster::builder().configuration(EDGE_NETWORK).start().await;
    let consent = tc_string(&full_consent());
    let document = rich_request(&consent);
    let (response, sent) =
        decide_and_capture(&cluster, &json!({"openrtb": document, "debug": true})).await;
    let sent = sent.expect("edgenet is asked");
    let mut expected = document.clone();
    // demo.toml lets only BidWise have LiveRamp ids.
    expected["user"]["eids"].as_array_mut().unwrap().remove(1);
    assert_eq!(
        not_owned(sent.clone(), "1", Some(&cascade_node())),
        not_owned(expected, "1", None)
    );
    assert!(
        edge_attempt(&response)["detail"]
            .as_str()
            .unwrap()
            .contains("eids of sources not permitted"),
        "{response}"
    );
    // The same request as typed protobuf (grpcurl encodes it) reaches the network the
    // same, but for `tmax`: what is left of each decision's own time.
    let (_, typed) = decide_and_capture(&cluster, &json!({"request": document})).await;
    let without_tmax = |mut request: Value| {
        request.as_object_mut().unwrap().remove("tmax");
        request
    };
    assert_eq!(
        without_tmax(typed.expect("edgenet is asked")),
        without_tmax(sent)
    );
}

#[tokio::test]
async fn privacy_signals_decide_what_each_network_receives() {
    let cluster = Cluster::builder().configuration(EDGE_NETWORK).start().await;

    // No TCF consent to purpose 1 (storage): no user or device ids.
    let mut content = full_consent();
    content.purpose_consents.retain(|&p| p != 1);
    let (response, sent) = decide_and_capture(
        &cluster,
        &json!({"openrtb": rich_request(&tc_string(&content)), "debug": true}),
    )
    .await;
    let sent = sent.expect("still called: purpose 2 is consented");
    for id in ["id", "buyeruid", "eids"] {
        assert!(sent["user"].get(id).is_none(), "user.{id} withheld: {sent}");
    }
    assert!(sent["device"].get("ifa").is_none());
    assert_eq!(
        sent["user"]["yob"], 1984,
        "user data needs purpose 4, which is consented"
    );
    let detail = edge_attempt(&response)["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("purpose 1"), "{detail}");

    // The vendor has neither consent nor legitimate interest: not called at all.
    let mut content = full_consent();
    content.vendor_consents = vec![755];
    content.vendor_legitimate_interests = vec![755];
    let (response, sent) = decide_and_capture(
        &cluster,
        &json!({"openrtb": rich_request(&tc_string(&content)), "debug": true}),
    )
    .await;
    assert!(sent.is_none(), "a network without consent is not called");
    let attempt = edge_attempt(&response);
    assert_eq!(attempt["reason"], "no_consent", "{response}");
    assert_eq!(attempt["outcome"], "ATTEMPT_OUTCOME_SKIPPED");

    // A consent string that cannot be decoded is no consent.
    let (response, sent) = decide_and_capture(
        &cluster,
        &json!({"openrtb": rich_request("not-a-tc-string"), "debug": true}),
    )
    .await;
    assert!(sent.is_none());
    assert_eq!(edge_attempt(&response)["reason"], "no_consent");

    // Outside GDPR, a US national opt-out of sale in GPP: called, without ids, user data
    // or precise geolocation.
    let mut document = rich_request("");
    document["regs"] = json!({"gdpr": 0, "gpp": gpp_us_national(true, false), "gpp_sid": [7]});
    document["user"].as_object_mut().unwrap().remove("consent");
    let (_, sent) = decide_and_capture(&cluster, &json!({"openrtb": document})).await;
    let sent = sent.expect("a US opt-out still allows a contextual ad");
    assert_eq!(
        sent["user"],
        json!({"ext": {"consented_providers_settings": {"consented_providers": [1, 2]}}})
    );
    assert_eq!(sent["device"]["geo"]["lat"], 52.52);
    assert_eq!(sent["device"]["ip"], "81.2.69.0");

    // COPPA: geolocation down to the region, IP truncated; lmt removes the advertising id.
    let mut document = rich_request("");
    document["regs"] = json!({"coppa": 1});
    let (_, sent) = decide_and_capture(&cluster, &json!({"openrtb": document})).await;
    let sent = sent.unwrap();
    assert_eq!(sent["device"]["geo"], json!({"country": "DEU", "type": 2}));
    assert!(sent["user"].get("id").is_none() && sent["user"].get("yob").is_none());
    let mut document = rich_request("");
    document["regs"] = json!({"gdpr": 0});
    document["device"]["lmt"] = json!(1);
    let (_, sent) = decide_and_capture(&cluster, &json!({"openrtb": document})).await;
    let sent = sent.unwrap();
    assert!(sent["device"].get("ifa").is_none());
    assert_eq!(
        sent["user"]["id"], "u-1",
        "lmt withholds the advertising id only"
    );
}

#[tokio::test]
async fn a_network_over_https_is_reached_through_ssl_cert_file() {
    let ca = TestCa::new();
    let secure = FakeNetworks::start_tls(&ca).await.unwrap();
    let port = secure.addr().port();
    let configuration = format!(
        "[[networks]]\nid = \"securenet\"\naccount_id = \"demo-network\"\n\
         endpoint = \"https://localhost:{port}/openrtb/securenet\"\ntimeout_ms = 500\n\n\
         [[mediated_bids]]\nid = \"securenet-9.00\"\naccount_id = \"demo-network\"\n\
         network_id = \"securenet\"\ncpm = \"9.00\"\nplacement_id = \"secure-slot\"\n"
    );
    let request = support::banner_request(json!([]));
    let ca_file = ca.ca_file().display().to_string();
    // SSL_CERT_FILE is read once per process: this cluster runs as processes.
    let cluster = Cluster::builder()
        .configuration(&configuration)
        .env("SSL_CERT_FILE", &ca_file)
        .start()
        .await;
    let response = cluster.decide(&request).await;
    assert_eq!(
        support::winner(&response)["networkId"],
        "securenet",
        "{response}"
    );
    assert_eq!(secure.calls("securenet"), 1);
    drop(cluster);

    // Without the CA the handshake fails, and the attempt says why.
    let cluster = Cluster::builder()
        .configuration(&configuration)
        .start()
        .await;
    let response = cluster.decide(&request).await;
    assert_eq!(support::winner(&response)["networkId"], "coolads");
    let attempts = response["decisions"][0]["explanation"]["attempts"]
        .as_array()
        .unwrap();
    let secure_attempt = attempts
        .iter()
        .find(|a| a["networkId"] == "securenet")
        .unwrap();
    let detail = secure_attempt["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("TLS failed") && detail.contains("UnknownIssuer"),
        "{detail}"
    );
}

const REPORT_EVENT: &str = "cascade.decision.v1.BidIntake/ReportEvent";

/// Polls `check` until it holds, for at most five seconds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    support::eventually(std::time::Duration::from_secs(5), what, || {
        std::future::ready(check())
    })
    .await;
}

fn of_kind<'a>(notices: &'a [Notice], kind: &str, auction: &str) -> Vec<&'a Notice> {
    notices
        .iter()
        .filter(|n| n.kind == kind && n.param("auction") == Some(auction))
        .collect()
}

async fn report_impression(cluster: &Cluster, selection_id: &str) {
    let output = cascade_testkit::grpcurl::call(
        cluster.bid_intake,
        REPORT_EVENT,
        &json!({"selection_id": selection_id, "type": "EVENT_TYPE_IMPRESSION"}),
        &[],
    )
    .await
    .unwrap();
    assert!(output.success, "{}", output.stderr);
}

/// One decision on the home-live ad unit: BidWise bids live at $0.60, CoolAds' $2.00
/// waterfall bid ranks above it and fills, so CoolAds wins and BidWise lost.
fn home_live(id: &str) -> Value {
    let mut request = support::banner_request(json!([]));
    request["request"]["id"] = json!(id);
    request["request"]["imp"][0]["tagid"] = json!("home-live");
    request
}

#[tokio::test]
async fn notices_are_fired_once_and_billing_survives_a_restart() {
    let redis = cascade_testkit::RedisServer::start().await.unwrap();
    // As processes: bid-intake crashes and starts again, and its metrics are its own.
    let mut cluster = Cluster::builder()
        .on_redis(&redis.url())
        .bid_intake(|settings| {
            settings.notices.billing_retry_first_ms = 50;
            settings.notices.billing_retry_max_ms = 100;
            settings.notices.billing_poll_ms = 20;
            settings.notices.billing_lease_ms = 300;
            settings.notices.timeout_ms = 200;
        })
        .processes()
        .start()
        .await;
    let networks = cluster.networks.clone();
    networks.send_notices("coolads");
    networks.send_notices("bidwise");

    let response = cluster.decide(&home_live("req-1")).await;
    let winner = support::winner(&response).clone();
    assert_eq!(winner["networkId"], "coolads", "{response}");
    assert!(
        winner.get("nurl").is_none() && winner.get("burl").is_none(),
        "Cascade fires them: {winner}"
    );

    // The win notice, with every macro, fired once; the live bid that lost is told why
    // and what would have won.
    eventually("the win and loss notices", || {
        !of_kind(&networks.notices("coolads"), "win", "req-1").is_empty()
            && !of_kind(&networks.notices("bidwise"), "loss", "req-1").is_empty()
    })
    .await;
    let coolads = networks.notices("coolads");
    let win = of_kind(&coolads, "win", "req-1");
    assert_eq!(win.len(), 1);
    let params: Vec<Option<&str>> = [
        "bid", "imp", "seat", "ad", "price", "cur", "mbr", "loss", "min",
    ]
    .iter()
    .map(|name| win[0].param(name))
    .collect();
    assert_eq!(
        params,
        [
            Some("coolads-response"),
            Some("1"),
            Some("coolads"),
            Some("coolads-ad-1"),
            Some("2"),
            Some("USD"),
            Some("1.0000"),
            Some(""),
            Some("")
        ]
    );
    let bidwise = networks.notices("bidwise");
    let loss = of_kind(&bidwise, "loss", "req-1");
    assert_eq!(
        (
            loss[0].param("loss"),
            loss[0].param("min"),
            loss[0].param("price")
        ),
        (Some("102"), Some("2"), Some(""))
    );
    assert!(
        of_kind(&coolads, "bill", "req-1").is_empty(),
        "billing waits for the impression"
    );

    // The impression bills, retried through two failures; a repeated report bills no more.
    networks.fail_notices("coolads", "bill", 2);
    let selection = winner["selectionId"].as_str().unwrap().to_string();
    report_impression(&cluster, &selection).await;
    eventually("the billing notice delivered", || {
        of_kind(&networks.notices("coolads"), "bill", "req-1")
            .iter()
            .any(|n| n.ok)
    })
    .await;
    report_impression(&cluster, &selection).await;
    let bills = networks.notices("coolads");
    // Shown with --nocapture: every notice of the decision req-1.
    for (network, notices) in [
        ("coolads", &bills),
        ("bidwise", &networks.notices("bidwise")),
    ] {
        for notice in notices
            .iter()
            .filter(|n| n.param("auction") == Some("req-1"))
        {
            println!(
                "{network} {} {} -> {}",
                notice.kind,
                notice.uri,
                if notice.ok { 200 } else { 503 }
            );
        }
    }
    let bills = of_kind(&bills, "bill", "req-1");
    assert_eq!(
        bills.iter().map(|n| n.ok).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert_eq!(bills[2].param("price"), Some("2"));
    // Every notice and billing attempt is counted where operators look.
    let metrics = cluster.processes().bid_intake.metrics().await.unwrap();
    let count = |name: &str, labels: &[(&str, &str)]| {
        support::sample(&metrics, name, labels).unwrap_or(0.0)
    };
    assert_eq!(
        count(
            "cascade_notices_total",
            &[("kind", "win"), ("outcome", "fired")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            "cascade_notices_total",
            &[("kind", "loss"), ("outcome", "fired")]
        ),
        1.0
    );
    assert_eq!(
        count(
            "cascade_billing_notice_attempts_total",
            &[("outcome", "failed")]
        ),
        2.0
    );
    assert_eq!(
        count(
            "cascade_billing_notice_attempts_total",
            &[("outcome", "delivered")]
        ),
        1.0
    );

    // A billing notice that has not got through survives bid-intake crashing: the one
    // started after it delivers it from the store.
    let response = cluster.decide(&home_live("req-2")).await;
    let selection = support::winner(&response)["selectionId"]
        .as_str()
        .unwrap()
        .to_string();
    networks.fail_notices("coolads", "bill", usize::MAX);
    report_impression(&cluster, &selection).await;
    eventually("a failed billing attempt", || {
        !of_kind(&networks.notices("coolads"), "bill", "req-2").is_empty()
    })
    .await;
    cluster.restart_bid_intake().await;
    networks.fail_notices("coolads", "bill", 0);
    eventually("the billing notice delivered after the restart", || {
        of_kind(&networks.notices("coolads"), "bill", "req-2")
            .iter()
            .any(|n| n.ok)
    })
    .await;

    // A test request is decided but fires nothing and bills nothing.
    let mut test = home_live("req-test");
    test["request"]["test"] = json!(1);
    let response = cluster.decide(&test).await;
    assert_eq!(support::winner(&response)["networkId"], "coolads");
    report_impression(
        &cluster,
        support::winner(&response)["selectionId"].as_str().unwrap(),
    )
    .await;
    // Absence takes a wait: long enough for several billing polls and any notice.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        networks
            .notices("coolads")
            .iter()
            .all(|n| n.param("auction") != Some("req-test"))
    );
    assert!(
        networks
            .notices("bidwise")
            .iter()
            .all(|n| n.param("auction") != Some("req-test"))
    );
}

#[tokio::test]
async fn dsa_transparency_is_required_of_every_ad_when_the_request_says_so() {
    let cluster = Cluster::start().await;
    let mut request = support::banner_request(json!([{
        "cur": "USD",
        "seatbid": [{"seat": "dsp-1", "bid": [
            {"id": "plain", "impid": "1", "price": 9.0, "adomain": ["a.example"], "adm": "<a/>"},
            {"id": "transparent", "impid": "1", "price": 1.0, "adomain": ["b.example"], "adm": "<b/>",
             "ext": {"dsa": {"behalf": "Advertiser B", "paid": "Advertiser B"}}}
        ]}]
    }]));
    request["request"]["regs"] = json!({"ext": {"dsa": {"dsarequired": 2}}});
    let response = cluster.decide(&request).await;
    let explanation = &response["decisions"][0]["explanation"];
    assert_eq!(
        support::winner(&response)["bidId"],
        "transparent",
        "{response}"
    );
    let dropped = explanation["dropped"].as_array().unwrap();
    assert!(
        dropped
            .iter()
            .any(|d| d["reason"] == "no_dsa"
                && d["candidateId"].as_str().unwrap().ends_with("bid[0]")),
        "{explanation}"
    );
    // The networks' answers declare none either: refused like any blocked ad.
    let refused: Vec<&Value> = explanation["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reason"] == "blocked_ad" && a["detail"].as_str().unwrap().contains("DSA"))
        .collect();
    assert_eq!(refused.len(), 2, "{explanation}");
}
