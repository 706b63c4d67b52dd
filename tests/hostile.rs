//! Hostile input and privacy signals, end to end: what a request carries cannot hurt the
//! cluster (a consent string built to blow up a decoder, a message over the size limit)
//! or leak a user (TC strings with publisher restrictions, OpenRTB 2.5 signal places),
//! and what a network answers cannot make Cascade fetch an internal address.

use std::time::{Duration, Instant};

use crate::edge::{EDGE_NETWORK, VENDOR, decide_and_capture, edge_attempt};
use crate::support::Cluster;
use cascade_core::privacy::testing::{TcContent, base64url_of_bits, gpp_tcf_eu, tc_string};
use serde_json::{Value, json};

/// Case 1 of the hostile-input report: a TC string whose vendor consents are 4,095
/// range entries of 1..65535 (22.6 KB), which a decoder that expands ranges turns into
/// 268 million ids.
fn exploding_tc_string() -> String {
    let mut bits = String::from("000010"); // version 2
    bits.push_str(&"0".repeat(36 + 36 + 12 + 12 + 6 + 12 + 12));
    bits.push_str("000100"); // policy version 4 (TCF v2.2)
    bits.push_str("10"); // service specific, standard texts
    bits.push_str(&"0".repeat(12)); // special features
    bits.push_str(&"1".repeat(24)); // every purpose consented
    bits.push_str(&"0".repeat(24 + 1 + 12));
    bits.push_str(&format!("{:016b}1{:012b}", u16::MAX, 4095));
    for _ in 0..4095 {
        bits.push_str(&format!("1{:016b}{:016b}", 1, u16::MAX));
    }
    bits.push_str(&format!("{:016b}0", 0)); // no legitimate interests
    bits.push_str(&"0".repeat(12)); // no restrictions
    base64url_of_bits(&bits)
}

/// A GPP string built the same way: a header listing 4,095 ranges of section ids.
fn exploding_gpp_string() -> String {
    let mut bits = String::from("000011000001111111111111");
    for _ in 0..4095 {
        bits.push_str("1110000000000011");
    }
    format!("{}~1YNN", base64url_of_bits(&bits))
}

fn request(regs: Value, user: Value) -> Value {
    json!({
        "openrtb": {
            "id": "hostile-1", "tmax": 1000,
            "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
            "site": {"domain": "www.foobar.com", "publisher": {"id": "8953"}},
            "device": {"ip": "81.2.69.142", "ifa": "6d92078a-8246-4ba4-ae5b-76104861e7dc",
                       "ext": {"ifv": "A1B2C3", "atts": 3}},
            "regs": regs,
            "user": user
        },
        "debug": true
    })
}

/// Resident memory of a process, from /proc.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the bound on memory growth is: the four processes together may grow by this
/// much over the burst of hostile decisions. A decoder that expands the string grows by
/// ~900 MiB per decision. Measured: 15 ordinary decisions grow them by 16 to 18 MiB,
/// the 15 hostile ones after them by 12 to 16 MiB (debug builds: buffers and allocator
/// caches), so the bound leaves room for a loaded machine and still fails on a blow-up.
const MEMORY_GROWTH_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test]
async fn an_exploding_consent_string_costs_neither_time_nor_memory() {
    let cluster = Cluster::builder()
        .configuration(EDGE_NETWORK)
        .processes()
        .start()
        .await;
    let tc = exploding_tc_string();
    assert!(tc.len() > 22_000, "{}", tc.len());
    let pids: Vec<u32> = std::iter::once(&cluster.processes().bid_intake)
        .chain(&cluster.processes().others)
        .filter_map(|process| process.pid())
        .collect();
    // The same decisions with ordinary strings first, as many, so that what is measured
    // is what the hostile strings cost beyond them.
    let ordinary = tc_string(&TcContent {
        purpose_consents: (1..=10).collect(),
        vendor_consents: vec![VENDOR],
        ..Default::default()
    });
    let at_start: u64 = pids.iter().map(|&pid| resident_kib(pid)).sum();
    for (regs, user) in [
        (json!({"gdpr": 1}), json!({"consent": ordinary})),
        (
            json!({"gdpr": 1, "gpp": gpp_tcf_eu(&ordinary), "gpp_sid": [2]}),
            json!({}),
        ),
        (
            json!({"gdpr": 0, "gpp": "DBABTA~1YNN", "gpp_sid": [6]}),
            json!({"id": "u-1"}),
        ),
    ] {
        for _ in 0..5 {
            cluster.decide(&request(regs.clone(), user.clone())).await;
        }
    }
    let before_each: Vec<u64> = pids.iter().map(|&pid| resident_kib(pid)).collect();
    let before: u64 = before_each.iter().sum();
    for (regs, user) in [
        (json!({"gdpr": 1}), json!({"consent": tc})),
        (
            json!({"gdpr": 1, "gpp": gpp_tcf_eu(&tc), "gpp_sid": [2]}),
            json!({}),
        ),
        (
            json!({"gdpr": 0, "gpp": exploding_gpp_string(), "gpp_sid": [6]}),
            json!({"id": "u-1"}),
        ),
    ] {
        for _ in 0..5 {
            let started = Instant::now();
            let (response, sent) =
                decide_and_capture(&cluster, &request(regs.clone(), user.clone())).await;
            let took = started.elapsed();
            // Within its budget (1 s), grpcurl's own start included.
            assert!(
                took < Duration::from_millis(1_500),
                "took {took:?}: {response}"
            );
            if regs["gdpr"] == 1 {
                assert!(sent.is_none(), "an undecodable TC string is no consent");
                let attempt = edge_attempt(&response);
                assert_eq!(attempt["reason"], "no_consent", "{response}");
                assert!(
                    attempt["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("limit"),
                    "{attempt}"
                );
            } else {
                let sent = sent.expect("outside GDPR the network is called");
                assert!(
                    sent["user"].get("id").is_none(),
                    "an undecodable GPP string is an opt-out: {sent}"
                );
            }
        }
    }
    let after_each: Vec<u64> = pids.iter().map(|&pid| resident_kib(pid)).collect();
    let after: u64 = after_each.iter().sum();
    println!(
        "resident memory of the four services: {at_start} KiB at start, {before} KiB after 15 ordinary decisions, {after} KiB after 15 hostile ones; per process (bid-intake, targeting, auction, network-caller) {before_each:?} -> {after_each:?}"
    );
    assert!(
        after.saturating_sub(before) < MEMORY_GROWTH_BOUND_KIB,
        "grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted() {
    let cluster = Cluster::builder().configuration(EDGE_NETWORK).start().await;
    // tonic's default limit is 4 MiB: a 5 MiB ext is over it.
    let mut oversized = request(json!({"gdpr": 0}), json!({}));
    oversized["openrtb"]["ext"] = json!({"blob": "x".repeat(5 * 1024 * 1024)});
    let error = cluster.decide_error(&oversized).await;
    assert!(error.contains("ResourceExhausted"), "{error}");
    // Under the message limit but over an ext's own: INVALID_ARGUMENT naming it.
    let mut big_ext = request(json!({"gdpr": 0}), json!({}));
    big_ext["openrtb"]["user"]["ext"] = json!({"blob": "x".repeat(100 * 1024)});
    let error = cluster.decide_error(&big_ext).await;
    assert!(
        error.contains("InvalidArgument") && error.contains("request.user.ext"),
        "{error}"
    );
}

#[tokio::test]
async fn publisher_restrictions_are_read_and_enforced() {
    let cluster = Cluster::builder().configuration(EDGE_NETWORK).start().await;
    let consent = |restrictions: Vec<(u8, u8, Vec<u16>)>| {
        tc_string(&TcContent {
            purpose_consents: (1..=10).collect(),
            purpose_legitimate_interests: vec![2, 7],
            special_features: vec![1],
            vendor_consents: vec![VENDOR],
            vendor_legitimate_interests: vec![VENDOR],
            restrictions,
        })
    };
    // A restriction on another vendor: the string still reads, the network is called
    // (a reader of the wrong layout reads no consent at all and calls nothing).
    let (response, sent) = decide_and_capture(
        &cluster,
        &request(
            json!({"gdpr": 1}),
            json!({"consent": consent(vec![(7, 1, vec![755])]), "id": "u-1"}),
        ),
    )
    .await;
    let sent = sent.unwrap_or_else(|| panic!("called: {}", edge_attempt(&response)));
    assert_eq!(sent["user"]["id"], "u-1");
    // Purpose 2 not allowed for this vendor: not called, and the reason says why.
    let (response, sent) = decide_and_capture(
        &cluster,
        &request(
            json!({"gdpr": 1}),
            json!({"consent": consent(vec![(2, 0, vec![VENDOR])])}),
        ),
    )
    .await;
    assert!(sent.is_none());
    let attempt = edge_attempt(&response);
    assert_eq!(attempt["reason"], "no_consent");
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("restricted by the publisher"),
        "{attempt}"
    );
    // Storage (purpose 1) not allowed: called, without ids.
    let (_, sent) = decide_and_capture(
        &cluster,
        &request(
            json!({"gdpr": 1}),
            json!({"consent": consent(vec![(1, 0, vec![VENDOR])]), "id": "u-1"}),
        ),
    )
    .await;
    let sent = sent.expect("purpose 2 is allowed");
    assert!(sent["user"].get("id").is_none(), "{sent}");
    assert!(sent["device"].get("ifa").is_none(), "{sent}");
}

#[tokio::test]
async fn openrtb_25_signal_places_are_honoured() {
    let cluster = Cluster::builder().configuration(EDGE_NETWORK).start().await;
    let no_consent_for_the_vendor = tc_string(&TcContent {
        purpose_consents: (1..=10).collect(),
        vendor_consents: vec![755],
        ..Default::default()
    });
    // GDPR and the TC string in their 2.5 places: the vendor has no consent, so the
    // network is not called.
    let (response, sent) = decide_and_capture(
        &cluster,
        &request(
            json!({"ext": {"gdpr": 1}}),
            json!({"ext": {"consent": no_consent_for_the_vendor}, "id": "u-1"}),
        ),
    )
    .await;
    assert!(sent.is_none(), "2.5 GDPR signals are read: {sent:?}");
    assert_eq!(edge_attempt(&response)["reason"], "no_consent");
    // A US opt-out in its 2.5 place: called, with nothing that identifies the user, the
    // ids inside ext included (the allow list keeps what it names only).
    let (_, sent) = decide_and_capture(
        &cluster,
        &request(
            json!({"ext": {"us_privacy": "1YYN"}}),
            json!({"id": "u-1", "ext": {"eids": [{"source": "id5-sync.com", "uids": [{"id": "ID5*x"}]}],
                                        "sessionid": "s-9", "consented_providers_settings": {"consented_providers": [1]}}}),
        ),
    )
    .await;
    let sent = sent.expect("a US opt-out still allows a contextual ad");
    assert_eq!(
        sent["user"],
        json!({"ext": {"consented_providers_settings": {"consented_providers": [1]}}})
    );
    assert_eq!(
        sent["regs"],
        json!({"us_privacy": "1YYN"}),
        "moved to its 2.6 place"
    );
    assert_eq!(
        sent["device"]["ext"],
        json!({"atts": 3}),
        "ids in device.ext withheld"
    );
    assert!(sent["device"].get("ifa").is_none());
}

#[tokio::test]
async fn outbound_requests_go_only_where_the_guard_allows() {
    // Only the fake networks' own address is allowed: any other internal address is
    // refused before a connection is made. The addresses refused here are other loopback
    // addresses, so that nothing could leave the machine even if the guard failed (the
    // metadata address and the private ranges are refused in the guard's unit tests,
    // which send nothing).
    let only_the_fake_networks = || cascade_network_caller::OutboundSettings {
        allow_private: vec!["127.0.0.1/32".into()],
        ..Default::default()
    };
    let cluster = Cluster::builder()
        .configuration(
            r#"
[[networks]]
id = "internal"
account_id = "demo-network"
endpoint = "http://127.0.0.3:9/openrtb"
mode = "bidding"
timeout_ms = 300

[[mediated_bids]]
id = "internal-live"
account_id = "demo-network"
network_id = "internal"
cpm = "0.10"
placement_id = "p"
"#,
        )
        .network_caller(|settings| settings.outbound = only_the_fake_networks())
        .bid_intake(|settings| settings.outbound = only_the_fake_networks())
        .start()
        .await;
    // A waterfall answer whose markup is at its nurl, on an address not allowed.
    let port = cluster.networks.addr().port();
    cluster.networks.set(
        "coolads",
        cascade_testkit::Behaviour::MarkupAt(format!("http://127.0.0.2:{port}/markup")),
    );
    let response = cluster
        .decide(&request(json!({"gdpr": 0}), json!({})))
        .await;
    let attempts = response["decisions"][0]["explanation"]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let attempt = |network: &str| {
        attempts
            .iter()
            .find(|a| a["networkId"] == network)
            .cloned()
            .unwrap_or_else(|| panic!("no attempt of {network}: {response}"))
    };
    let internal = attempt("internal");
    assert_eq!(internal["outcome"], "ATTEMPT_OUTCOME_ERROR", "{internal}");
    assert!(
        internal["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.3 is not public"),
        "{internal}"
    );
    let coolads = attempt("coolads");
    assert_eq!(coolads["outcome"], "ATTEMPT_OUTCOME_ERROR", "{coolads}");
    assert!(
        coolads["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2 is not public"),
        "{coolads}"
    );
    // The next candidate in rank order serves instead.
    assert_ne!(
        crate::support::winner(&response)["networkId"],
        "coolads",
        "{response}"
    );
}

#[tokio::test]
async fn a_client_side_chain_is_held_to_the_privacy_verdicts_too() {
    let cluster = Cluster::builder().configuration(EDGE_NETWORK).start().await;
    let client = |regs: Value, user: Value| {
        let mut request = request(regs, user);
        request["mode"] = json!("EXECUTION_MODE_CLIENT");
        request
    };
    let node_of = |response: &Value, network: &str| {
        response["decisions"][0]["chain"]
            .as_array()
            .and_then(|chain| chain.iter().find(|n| n["networkId"] == network))
            .cloned()
    };
    // Outside GDPR the waterfall networks are in the chain, with nothing withheld.
    let open = cluster.decide(&client(json!({"gdpr": 0}), json!({}))).await;
    let coolads = node_of(&open, "coolads").unwrap_or_else(|| panic!("{open}"));
    assert!(coolads.get("privacy").is_none(), "{coolads}");
    // Under GDPR, coolads (no GVL id) may not be called: the client is not handed it.
    let consent = tc_string(&TcContent {
        purpose_consents: (1..=10).collect(),
        vendor_consents: vec![VENDOR],
        ..Default::default()
    });
    let gdpr = cluster
        .decide(&client(json!({"gdpr": 1}), json!({"consent": consent})))
        .await;
    assert!(node_of(&gdpr, "coolads").is_none(), "{gdpr}");
    let attempt = gdpr["decisions"][0]["explanation"]["attempts"]
        .as_array()
        .and_then(|attempts| attempts.iter().find(|a| a["networkId"] == "coolads"))
        .cloned()
        .unwrap_or_else(|| panic!("{gdpr}"));
    assert_eq!(attempt["reason"], "no_consent", "{attempt}");
    // A US opt-out: still handed over, with what the client may not send it.
    let opted_out = cluster
        .decide(&client(json!({"us_privacy": "1YYN"}), json!({})))
        .await;
    let coolads = node_of(&opted_out, "coolads").unwrap_or_else(|| panic!("{opted_out}"));
    assert_eq!(coolads["privacy"]["call"], true, "{coolads}");
    assert!(coolads["privacy"].get("userIds").is_none(), "{coolads}");
    assert!(
        coolads["privacy"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("opted out of sale"),
        "{coolads}"
    );
}
