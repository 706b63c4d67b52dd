//! Observability end to end: the four service binaries export their spans over OTLP to
//! a real receiver, and one decision is one trace across all of them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cascade_testkit::{OtlpCollector, ReceivedSpan};
use serde_json::json;
use support::{Cluster, banner_request, winner};

mod support;

const SERVICES: [&str; 4] = [
    "bid-intake",
    "targeting-evaluation",
    "auction",
    "network-caller",
];

/// The spans of the trace that holds the decision of `request_id`, once every service
/// has sent its part.
async fn decision_trace(collector: &OtlpCollector, request_id: &str) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector.spans();
        if let Some(decide) = spans
            .iter()
            .find(|s| s.name == "decide" && s.attribute("request.id") == Some(request_id))
        {
            let trace: Vec<ReceivedSpan> = spans
                .iter()
                .filter(|s| s.trace_id == decide.trace_id)
                .cloned()
                .collect();
            let services: BTreeSet<&str> = trace.iter().map(|s| s.service_name.as_str()).collect();
            let attempted = trace.iter().any(|s| s.name == "network.attempt");
            if SERVICES.iter().all(|s| services.contains(s)) && attempted {
                return trace;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace of the decision arrived: {:#?}",
            collector.spans()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_decision_is_one_trace_across_the_four_services() {
    let collector = OtlpCollector::start().await.unwrap();
    let endpoint = collector.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let cluster = Cluster::start_demo("", &env).await;
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads");

    let trace = decision_trace(&collector, "req-1").await;
    let by_id = |id: &[u8]| trace.iter().find(|s| s.span_id == id);
    let server_span = |service: &str| {
        trace
            .iter()
            .find(|s| s.service_name == service && s.attribute("rpc.system") == Some("grpc"))
            .unwrap_or_else(|| panic!("no server span of {service}: {trace:#?}"))
    };

    // bid-intake's server span is the root; the decision span is its child.
    let root = server_span("bid-intake");
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_eq!(
        root.attribute("rpc.service"),
        Some("cascade.decision.v1.BidIntake")
    );
    let decide = trace.iter().find(|s| s.name == "decide").unwrap();
    assert_eq!(decide.parent_span_id, root.span_id);
    assert_eq!(decide.attribute("account.id"), Some("8953"));
    assert_eq!(decide.attribute("winners"), Some("1"));

    // Every other service's server span is a child of the decision.
    for (service, rpc_service) in [
        (
            "targeting-evaluation",
            "cascade.targeting.v1.TargetingEvaluation",
        ),
        ("auction", "cascade.auction.v1.Auction"),
        ("network-caller", "cascade.networkcaller.v1.NetworkCaller"),
    ] {
        let span = server_span(service);
        assert_eq!(span.attribute("rpc.service"), Some(rpc_service));
        assert_eq!(span.parent_span_id, decide.span_id, "{service}: {span:?}");
    }

    // The network attempt is a child of network-caller's span, with its outcome.
    let attempt = trace.iter().find(|s| s.name == "network.attempt").unwrap();
    let parent = by_id(&attempt.parent_span_id).expect("the attempt's parent is in the trace");
    assert_eq!(parent.service_name, "network-caller");
    assert_eq!(attempt.attribute("network.id"), Some("coolads"));
    assert_eq!(attempt.attribute("outcome"), Some("filled"));
}

/// The value of the sample of `name` whose labels include `labels`, in Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let has_all = labels
            .iter()
            .all(|(key, value)| label_text.contains(&format!("{key}=\"{value}\"")));
        has_all.then(|| value.trim().parse().ok()).flatten()
    })
}

#[tokio::test]
async fn every_service_serves_prometheus_metrics() {
    let cluster = Cluster::start().await;
    cluster.decide(&banner_request(json!([]))).await;
    cluster.decide(&banner_request(json!([]))).await;
    let mut malformed = banner_request(json!([]));
    malformed["request"]["imp"][0]["bidfloor"] = json!(-1);
    cluster.decide_error(&malformed).await;

    let bid_intake = cluster.bid_intake.metrics().await.unwrap();
    let decide = [
        ("rpc_service", "cascade.decision.v1.BidIntake"),
        ("rpc_method", "Decide"),
    ];
    let with_code = |code| [decide[0], decide[1], ("grpc_code", code)];
    assert_eq!(
        sample(
            &bid_intake,
            "cascade_grpc_server_requests_total",
            &with_code("OK")
        ),
        Some(2.0),
        "{bid_intake}"
    );
    assert_eq!(
        sample(
            &bid_intake,
            "cascade_grpc_server_requests_total",
            &with_code("INVALID_ARGUMENT")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &bid_intake,
            "cascade_grpc_server_request_duration_seconds_count",
            &with_code("OK")
        ),
        Some(2.0)
    );
    assert_eq!(sample(&bid_intake, "cascade_state_stale", &[]), Some(0.0));

    let service = |name: &str| cluster.others.iter().find(|s| s.name == name).unwrap();
    let network_caller = service("network-caller").metrics().await.unwrap();
    assert_eq!(
        sample(
            &network_caller,
            "cascade_network_calls_total",
            &[("network", "coolads"), ("outcome", "filled")]
        ),
        Some(2.0),
        "{network_caller}"
    );
    assert_eq!(
        sample(
            &network_caller,
            "cascade_network_breaker_state",
            &[("network", "coolads")]
        ),
        Some(0.0)
    );
    let targeting = service("targeting-evaluation").metrics().await.unwrap();
    assert_eq!(
        sample(&targeting, "cascade_snapshot_version", &[]),
        Some(1.0)
    );
    assert!(sample(&targeting, "cascade_snapshot_loaded_timestamp_seconds", &[]).is_some());
}
