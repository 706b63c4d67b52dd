//! One logged decision replayed against the demo configuration: what the log shows
//! skipped stays skipped, what the log never reached is drawn from the network's record.

use cascade_core::snapshot::Snapshot;
use cascade_core::waterfall::WalkLimits;
use cascade_log::schema::{Attempt, Decision, Imp};
use cascade_proto::decision::v1::{AttemptOutcome, SourceKind};
use cascade_replay::{Observed, Replayer};
use serde_json::json;

fn demo() -> Snapshot {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/demo.toml");
    let configuration = cascade_state::read_configuration_file(
        std::path::Path::new(path),
        &[
            ("DEMO_NETWORK", "127.0.0.1:9"),
            ("DEMO_GRPC_NETWORK", "127.0.0.1:9"),
        ],
    )
    .unwrap();
    Snapshot::build(configuration).unwrap()
}

/// A home-top banner of publisher 8953 with no exchange bid: CoolAds ($2.00) then
/// BetaAds ($1.20) in the waterfall, nothing in hand.
fn decision(attempts: Vec<Attempt>) -> Decision {
    let request = serde_json::from_value(json!({
        "id": "r-1",
        "imp": [{"id": "1", "tagid": "home-top", "banner": {"w": 300, "h": 250}}],
        "site": {"domain": "www.foobar.com", "publisher": {"id": "8953"}},
        "device": {"devicetype": 2, "geo": {"country": "DEU"}}
    }))
    .unwrap();
    Decision {
        request_id: "r-1".into(),
        account_id: "8953".into(),
        request: Some(request),
        imps: vec![Imp {
            impid: "1".into(),
            attempts,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn attempt(bid_id: &str, outcome: AttemptOutcome, reason: &str, called: bool) -> Attempt {
    Attempt {
        candidate_id: format!("mediated:{bid_id}"),
        source: SourceKind::MediatedNetwork as i32,
        network_id: bid_id.split('-').next().unwrap().into(),
        bid_id: bid_id.into(),
        outcome: outcome as i32,
        reason: reason.into(),
        called,
        floor_micros: 2_000_000,
        price_micros: if outcome == AttemptOutcome::Filled {
            2_000_000
        } else {
            0
        },
        ..Default::default()
    }
}

fn replayer<'a>(snapshot: &'a Snapshot, observed: &'a Observed) -> Replayer<'a> {
    Replayer {
        snapshot,
        observed,
        limits: WalkLimits::default(),
    }
}

/// Both networks called elsewhere in the log, and filling every time.
fn always_filling() -> Observed {
    let mut observed = Observed::default();
    observed.add(&decision(vec![
        attempt("coolads-2.00", AttemptOutcome::Filled, "", true),
        attempt("betaads-1.20", AttemptOutcome::Filled, "", true),
    ]));
    observed
}

#[test]
fn calls_the_log_shows_skipped_for_time_stay_skipped() {
    let snapshot = demo();
    let observed = always_filling();
    let replayer = replayer(&snapshot, &observed);
    let logged = decision(vec![
        attempt("coolads-2.00", AttemptOutcome::Skipped, "deadline", false),
        attempt(
            "betaads-1.20",
            AttemptOutcome::Skipped,
            "concurrency_limit",
            false,
        ),
    ]);
    let replayed = replayer.redecide(&logged, 0, 0).unwrap();
    assert_eq!(replayed.imps[0].served, None, "{replayed:?}");
    assert_eq!(replayed.guessed_calls, 0);
    assert!(replayed.imps[0].asked.is_empty(), "no call was made");
}

#[test]
fn a_network_the_log_never_reached_answers_by_its_record() {
    let snapshot = demo();
    let observed = always_filling();
    let replayer = replayer(&snapshot, &observed);
    // CoolAds answered no ad; BetaAds was past a call cap of the original walk.
    let logged = decision(vec![
        attempt("coolads-2.00", AttemptOutcome::NoFill, "no_bid", true),
        attempt("betaads-1.20", AttemptOutcome::Skipped, "call_cap", false),
    ]);
    let replayed = replayer.redecide(&logged, 0, 0).unwrap();
    let served = replayed.imps[0].served.as_ref().expect("BetaAds fills");
    assert_eq!(served.bid_id, "betaads-1.20");
    assert_eq!(served.price_micros, 1_200_000, "at the floor it is sent");
    assert_eq!(replayed.guessed_calls, 1, "CoolAds' answer is the log's");
    assert!(replayed.imps[0].guessed);
    assert_eq!(replayed.imps[0].asked, ["coolads", "betaads"]);

    // With a cap of one call, the replayed walk stops after CoolAds.
    let capped = Replayer {
        limits: WalkLimits {
            max_calls: 1,
            ..WalkLimits::default()
        },
        ..replayer
    };
    let replayed = capped.redecide(&logged, 0, 0).unwrap();
    assert_eq!(replayed.imps[0].served, None);
    assert_eq!(replayed.guessed_calls, 0);
}

#[test]
fn a_decision_the_configuration_now_refuses_is_counted_with_its_reason() {
    let snapshot = demo();
    let observed = Observed::default();
    let replayer = replayer(&snapshot, &observed);
    // An exchange bid in a currency the configuration has no rate for.
    let mut logged = decision(Vec::new());
    logged.exchange_bids = vec![
        serde_json::from_value(json!({
            "cur": "JPY",
            "seatbid": [{"seat": "dsp-1", "bid": [{"id": "x1", "impid": "1", "price": 300.0}]}]
        }))
        .unwrap(),
    ];
    let mut replay = cascade_replay::Replay::new(replayer, cascade_replay::Settings::default());
    let entry = cascade_log::schema::LogEntry {
        decision: Some(logged),
        ..Default::default()
    };
    assert!(replay.add(&entry).is_err());
    let summary = replay.finish();
    assert_eq!(summary.decisions_skipped.get("refused"), Some(&1));
    let refusal = summary.first_refusal.expect("the reason is kept");
    assert!(
        refusal.starts_with("r-1: ") && refusal.contains("exchange_bids[0].cur"),
        "{refusal}"
    );
}
