//! Observability end to end: the four service binaries export their spans over OTLP to
//! a real receiver, one decision is one trace across all of them, and with sampling a
//! decision outside the ratio is dropped unless it failed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{Cluster, banner_request, network_totals, run_cascade, sample, winner};
use cascade_testkit::{Attribute, OtlpCollector, ReceivedSpan, SpanStatus, TestCa};
use serde_json::json;

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
        if let Some(decide) = spans.iter().find(|s| {
            s.name == "decide" && s.attribute("cascade.request.id").as_deref() == Some(request_id)
        }) {
            let trace: Vec<ReceivedSpan> = spans
                .iter()
                .filter(|s| s.trace_id == decide.trace_id)
                .cloned()
                .collect();
            // A service's spans may come in more than one batch: its server span ends last.
            let services: BTreeSet<&str> = trace
                .iter()
                .filter(|s| s.kind == "server")
                .map(|s| s.service_name.as_str())
                .collect();
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

/// A cluster of processes exporting to `collector` over `protocol`.
async fn traced_cluster(collector: &OtlpCollector, protocol: &str) -> Cluster {
    let endpoint = match protocol {
        "grpc" => collector.grpc_endpoint(),
        _ => collector.endpoint(),
    };
    // Telemetry is set up once per process from its environment: processes.
    Cluster::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        // Every trace: these tests read whole decisions (the default keeps 1%).
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        .start()
        .await
}

fn server_span<'a>(trace: &'a [ReceivedSpan], service: &str) -> &'a ReceivedSpan {
    trace
        .iter()
        .find(|s| s.service_name == service && s.kind == "server")
        .unwrap_or_else(|| panic!("no server span of {service}: {trace:#?}"))
}

#[tokio::test]
async fn one_decision_is_one_trace_across_the_four_services() {
    let collector = OtlpCollector::start().await.unwrap();
    let cluster = traced_cluster(&collector, "http/protobuf").await;
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");

    let trace = decision_trace(&collector, "req-1").await;
    assert!(trace.iter().all(|s| s.transport == "http"));
    let by_id = |id: &[u8]| trace.iter().find(|s| s.span_id == id);

    // bid-intake's server span is the root; the decision span is its child.
    let root = server_span(&trace, "bid-intake");
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_eq!(
        root.attribute("rpc.service").as_deref(),
        Some("cascade.decision.v1.BidIntake")
    );
    let decide = trace.iter().find(|s| s.name == "decide").unwrap();
    assert_eq!(decide.parent_span_id, root.span_id);
    assert_eq!(
        decide.attribute("cascade.account.id").as_deref(),
        Some("8953")
    );
    assert_eq!(
        decide.typed_attribute("cascade.winners"),
        Some(&Attribute::Int(1))
    );
    // The budget the sampling policy judges "slower than its budget" by.
    assert!(
        matches!(decide.typed_attribute("cascade.budget_ms"), Some(Attribute::Int(ms)) if *ms > 0),
        "{decide:?}"
    );

    // Every other service's server span is the child of bid-intake's client span for
    // the call, itself a child of the decision.
    for (service, rpc_service) in [
        (
            "targeting-evaluation",
            "cascade.targeting.v1.TargetingEvaluation",
        ),
        ("auction", "cascade.auction.v1.Auction"),
        ("network-caller", "cascade.networkcaller.v1.NetworkCaller"),
    ] {
        let span = server_span(&trace, service);
        assert_eq!(span.attribute("rpc.service").as_deref(), Some(rpc_service));
        let client = by_id(&span.parent_span_id).expect("the caller's span is in the trace");
        assert_eq!(client.kind, "client", "{service}: {client:?}");
        assert_eq!(client.service_name, "bid-intake");
        assert_eq!(
            client.attribute("rpc.service").as_deref(),
            Some(rpc_service)
        );
        assert_eq!(
            client.parent_span_id, decide.span_id,
            "{service}: {client:?}"
        );
    }

    // The network attempt is a child of network-caller's span, with its outcome.
    let attempt = trace.iter().find(|s| s.name == "network.attempt").unwrap();
    let parent = by_id(&attempt.parent_span_id).expect("the attempt's parent is in the trace");
    assert_eq!(parent.service_name, "network-caller");
    assert_eq!(attempt.kind, "client");
    assert_eq!(
        attempt.attribute("cascade.network.id").as_deref(),
        Some("coolads")
    );
    assert_eq!(
        attempt.attribute("cascade.outcome").as_deref(),
        Some("filled")
    );
    assert_eq!(
        attempt.attribute("cascade.network.protocol").as_deref(),
        Some("openrtb_http")
    );
    assert!(matches!(
        attempt.typed_attribute("cascade.timeout_ms"),
        Some(Attribute::Int(_))
    ));
    assert_eq!(
        attempt.attribute("server.address").as_deref(),
        Some("127.0.0.1")
    );

    // A custom network on the gRPC contract is called with the attempt's client span
    // (a child of the attempt) as parent.
    assert_eq!(cluster.networks.last_traceparent(), None);
    let mut custom = banner_request(json!([]));
    custom["request"]["id"] = json!("req-2");
    custom["request"]["imp"][0]["tagid"] = json!("custom-slot");
    let response = cluster.decide(&custom).await;
    assert_eq!(winner(&response)["networkId"], "customnet", "{response}");
    let traceparent = cluster
        .networks
        .last_traceparent()
        .expect("no traceparent sent");
    let trace = decision_trace(&collector, "req-2").await;
    let attempt = trace
        .iter()
        .find(|s| {
            s.name == "network.attempt"
                && s.attribute("cascade.network.id").as_deref() == Some("customnet")
        })
        .unwrap();
    let call = trace
        .iter()
        .find(|s| s.kind == "client" && s.parent_span_id == attempt.span_id)
        .expect("the custom network's call has a client span");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", hex(&call.trace_id), hex(&call.span_id))
    );
}

/// Over OTLP/gRPC, as most collectors are set up: every service's spans arrive, with
/// the resource naming the version and the instance, statuses set by the RPC
/// conventions, and no span for health checks.
#[tokio::test]
async fn spans_arrive_over_otlp_grpc_with_statuses_set() {
    let collector = OtlpCollector::start().await.unwrap();
    let cluster = traced_cluster(&collector, "grpc").await;
    cluster.decide(&banner_request(json!([]))).await;
    let trace = decision_trace(&collector, "req-1").await;
    assert!(trace.iter().all(|s| s.transport == "grpc"));
    for service in SERVICES {
        let span = server_span(&trace, service);
        assert_eq!(
            span.typed_attribute("rpc.grpc.status_code"),
            Some(&Attribute::Int(0)),
            "{span:?}"
        );
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(
            span.resource_attribute("service.version"),
            Some(&Attribute::String(env!("CARGO_PKG_VERSION").into()))
        );
        assert!(span.resource_attribute("service.instance.id").is_some());
    }

    // A malformed request: the server span says INVALID_ARGUMENT and stays unset (the
    // caller's mistake, not the server's failure); the decision itself failed.
    let mut malformed = banner_request(json!([]));
    malformed["request"]["id"] = json!("req-bad");
    malformed["request"]["imp"][0]["bidfloor"] = json!(-1);
    cluster.decide_error(&malformed).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let spans = collector.spans();
        if let Some(server) = spans.iter().find(|s| {
            s.service_name == "bid-intake"
                && s.kind == "server"
                && s.typed_attribute("rpc.grpc.status_code") == Some(&Attribute::Int(3))
        }) {
            break server.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no span of the refused call: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused.status, SpanStatus::Unset);
    assert_eq!(refused.attribute("rpc.method").as_deref(), Some("Decide"));
    let spans = collector.spans();
    let failed = spans
        .iter()
        .find(|s| s.name == "decide" && s.parent_span_id == refused.span_id)
        .expect("the refused call's decision span");
    assert_eq!(failed.status, SpanStatus::Error);
    assert!(failed.status_message.contains("bidfloor"), "{failed:?}");
    assert!(
        !spans.iter().any(|s| s
            .attribute("rpc.service")
            .is_some_and(|r| r.starts_with("grpc."))),
        "health or reflection calls were traced"
    );
}

/// OTLP/HTTP with JSON bodies, the third protocol the specification names.
#[tokio::test]
async fn spans_arrive_over_otlp_http_json() {
    let collector = OtlpCollector::start().await.unwrap();
    let cluster = traced_cluster(&collector, "http/json").await;
    cluster.decide(&banner_request(json!([]))).await;
    let trace = decision_trace(&collector, "req-1").await;
    assert!(trace.iter().all(|s| s.transport == "http"));
    assert_eq!(
        server_span(&trace, "auction").typed_attribute("rpc.grpc.status_code"),
        Some(&Attribute::Int(0))
    );
}

/// A protocol the exporter cannot speak stops the service at start with the variable
/// named, instead of exporting nothing without a word.
#[tokio::test]
async fn an_unknown_otlp_protocol_stops_the_service_at_start() {
    let output = tokio::process::Command::new(cascade_testkit::process::binary_path("auction"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
        .env("CASCADE__GRPC__LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && stderr.contains("thrift"),
        "{stderr}"
    );
}

#[tokio::test]
async fn every_service_serves_prometheus_metrics() {
    // Metrics are per process: processes, each with its own; on Redis, as deployed.
    let redis = cascade_testkit::RedisServer::start().await.unwrap();
    let cluster = Cluster::builder()
        .on_redis(&redis.url())
        .processes()
        .start()
        .await;

    // Before any call: every family passes promtool's lint, and the series alerts use
    // are there at zero, so that the first failure is an increase.
    let processes = cluster.processes();
    let every = std::iter::once(&processes.bid_intake).chain(processes.others.iter());
    for service in every {
        let text = service.metrics().await.unwrap();
        promtool_check_metrics(&service.name, &text).await;
        assert_eq!(
            sample(
                &text,
                "cascade_build_info",
                &[
                    ("service", service.name.as_str()),
                    ("version", env!("CARGO_PKG_VERSION"))
                ]
            ),
            Some(1.0),
            "{text}"
        );
        assert!(
            sample(&text, "process_resident_memory_bytes", &[]).is_some(),
            "{text}"
        );
    }
    let fresh = processes.bid_intake.metrics().await.unwrap();
    for (name, labels) in [
        ("cascade_decisions_total", &[("outcome", "failed")][..]),
        ("cascade_decisions_total", &[("outcome", "shed")][..]),
        (
            "cascade_impressions_unfilled_total",
            &[("reason", "deadline_exceeded")][..],
        ),
        (
            "cascade_impressions_filled_total",
            &[("source", "mediated_network")][..],
        ),
        ("cascade_redis_errors_total", &[][..]),
        ("cascade_selection_backlog", &[][..]),
        ("cascade_admission_shed_total", &[][..]),
        (
            "cascade_notices_total",
            &[("kind", "billing"), ("outcome", "failed")][..],
        ),
        (
            "cascade_grpc_server_requests_total",
            &[
                ("rpc_service", "cascade.decision.v1.BidIntake"),
                ("rpc_method", "Decide"),
                ("grpc_code", "UNAVAILABLE"),
            ][..],
        ),
    ] {
        assert_eq!(
            sample(&fresh, name, labels),
            Some(0.0),
            "{name} {labels:?}: {fresh}"
        );
    }

    cluster.decide(&banner_request(json!([]))).await;
    cluster.decide(&banner_request(json!([]))).await;
    let mut malformed = banner_request(json!([]));
    malformed["request"]["imp"][0]["bidfloor"] = json!(-1);
    cluster.decide_error(&malformed).await;

    let bid_intake = cluster.processes().bid_intake.metrics().await.unwrap();
    promtool_check_metrics("bid-intake", &bid_intake).await;
    assert_eq!(
        sample(
            &bid_intake,
            "cascade_decisions_total",
            &[("outcome", "filled")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &bid_intake,
            "cascade_decisions_total",
            &[("outcome", "invalid")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &bid_intake,
            "cascade_impressions_filled_total",
            &[("source", "mediated_network")]
        ),
        Some(2.0),
        "{bid_intake}"
    );
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

    let others = &cluster.processes().others;
    let service = |name: &str| others.iter().find(|s| s.name == name).unwrap();
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

/// Runs `promtool check metrics` (from `$PROMTOOL`, which scripts/test sets) on what a
/// service served: no family without HELP, no badly named counter, nothing malformed.
async fn promtool_check_metrics(service: &str, text: &str) {
    use tokio::io::AsyncWriteExt as _;
    let promtool = std::env::var("PROMTOOL")
        .expect("PROMTOOL is not set: run scripts/test, which installs promtool");
    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics on {service}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

const ADMIN_TOKEN: &str = "report-test-token";

/// Runs `cascade ARGS…` against the cluster's bid-intake; returns stdout.
async fn cascade(cluster: &Cluster, args: &[&str]) -> String {
    let target = format!("http://{}", cluster.bid_intake);
    run_cascade(
        args,
        &[
            ("CASCADE_ADMIN_TARGET", &target),
            ("CASCADE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await
}

/// A scripted run: CoolAds fills four decisions and has no ad for two, which BetaAds
/// then serves; three CoolAds and one BetaAds impression are reported, and CoolAds says
/// it paid half a cent for the day. The report shows exactly that.
#[tokio::test]
async fn the_network_report_adds_up_to_a_scripted_run() {
    // The services share their counts through Redis, flushed every 50 ms.
    let (_redis, cluster) = Cluster::on_new_redis(ADMIN_TOKEN).await;
    let today = cascade_core::report::period_of(cascade_state::now_unix_seconds()).0;

    let mut selections: Vec<(String, String)> = Vec::new();
    for round in 0..6 {
        if round == 4 {
            cluster
                .networks
                .set("coolads", cascade_testkit::Behaviour::NoFill);
        }
        let response = cluster.decide(&banner_request(json!([]))).await;
        let network = winner(&response)["networkId"].as_str().unwrap().to_string();
        let selection = winner(&response)["selectionId"]
            .as_str()
            .unwrap()
            .to_string();
        selections.push((network, selection));
    }
    let served: Vec<&str> = selections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        served,
        [
            "coolads", "coolads", "coolads", "coolads", "betaads", "betaads"
        ]
    );
    for (_, selection) in selections
        .iter()
        .take(3)
        .chain(selections.iter().skip(4).take(1))
    {
        let report = json!({"selection_id": selection, "type": "EVENT_TYPE_IMPRESSION"});
        let output = cascade_testkit::grpcurl::call(
            cluster.bid_intake,
            "cascade.decision.v1.BidIntake/ReportEvent",
            &report,
            &[],
        )
        .await
        .unwrap();
        assert!(output.success, "{}", output.stderr);
    }
    cascade(
        &cluster,
        &[
            "report",
            "ingest",
            "--network",
            "coolads",
            "--date",
            &today,
            "--revenue",
            "0.005",
        ],
    )
    .await;

    // Counts reach the store with the services' next flush.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (coolads, betaads) = loop {
        let csv = cascade(
            &cluster,
            &["report", "--csv", "--from", &today, "--to", &today],
        )
        .await;
        let (coolads, betaads) = (
            network_totals(&csv, "coolads"),
            network_totals(&csv, "betaads"),
        );
        if coolads.get("requests") == Some(&6)
            && coolads.get("wins") == Some(&4)
            && betaads.get("wins") == Some(&2)
        {
            break (coolads, betaads);
        }
        assert!(
            Instant::now() < deadline,
            "the report never added up:\n{csv}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let figure =
        |totals: &std::collections::BTreeMap<String, i64>, name: &str| totals.get(name).copied();
    for (name, expected) in [
        ("requests", 6),
        ("fills", 4),
        ("no_fills", 2),
        ("timeouts", 0),
        ("errors", 0),
        ("wins", 4),
        ("impressions", 3),
        ("fill_rate", 666_666),
        ("estimated_revenue", 6_000),
        ("reported_revenue", 5_000),
        ("estimated_ecpm", 2_000_000),
        ("realized_ecpm", 1_666_666),
        ("ecpm_gap", 333_334),
    ] {
        assert_eq!(
            figure(&coolads, name),
            Some(expected),
            "coolads {name}: {coolads:?}"
        );
    }
    assert!(figure(&coolads, "latency_p50_ms").is_some());
    assert!(figure(&coolads, "latency_p95_ms") >= figure(&coolads, "latency_p50_ms"));
    for (name, expected) in [
        ("requests", 2),
        ("fills", 2),
        ("wins", 2),
        ("impressions", 1),
        ("estimated_revenue", 1_200),
        ("estimated_ecpm", 1_200_000),
    ] {
        assert_eq!(
            figure(&betaads, name),
            Some(expected),
            "betaads {name}: {betaads:?}"
        );
    }
    assert_eq!(figure(&betaads, "reported_revenue"), None);

    // The table says the same for people.
    let table = cascade(&cluster, &["report", "--network", "coolads"]).await;
    assert!(
        table.contains("66.6%") && table.contains("1.666666"),
        "{table}"
    );
}

/// The default policy with a ratio of 0: a decision that went well is not exported, a
/// decision that failed is, whole in the service where it failed, its root saying why.
#[tokio::test]
async fn outside_the_sampling_ratio_only_failures_are_exported() {
    let collector = OtlpCollector::start().await.unwrap();
    let cluster = Cluster::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_TRACES_SAMPLER_ARG", "0")
        .start()
        .await;
    cluster.decide(&banner_request(json!([]))).await;
    let mut malformed = banner_request(json!([]));
    malformed["request"]["id"] = json!("req-bad");
    malformed["request"]["imp"][0]["bidfloor"] = json!(-1);
    cluster.decide_error(&malformed).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let root = loop {
        let spans = collector.spans();
        if let Some(root) = spans
            .iter()
            .find(|s| s.service_name == "bid-intake" && s.kind == "server")
        {
            break root.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the failed decision was not kept: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        root.typed_attribute("cascade.trace.kept"),
        Some(&Attribute::String("error".into()))
    );
    // A few batch delays for anything else to arrive: the decision that went well was
    // exported by no service (bid-intake's batches go out in order, so its spans would
    // have come first).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans = collector.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == root.trace_id),
        "spans outside the failed decision: {spans:#?}"
    );
    let decide = spans
        .iter()
        .find(|s| s.name == "decide")
        .expect("the failed decision's span");
    assert_eq!(
        decide.attribute("cascade.request.id").as_deref(),
        Some("req-bad")
    );
    assert_eq!(decide.status, SpanStatus::Error);
}

/// To a collector over TLS, as the specification's variables set it up: OTLP/gRPC with
/// mutual TLS (the collector's CA, a client certificate and key), then OTLP/HTTP over
/// HTTPS with the CA alone; a whole decision's trace arrives each time.
#[tokio::test]
async fn spans_reach_a_collector_over_tls() {
    let ca = TestCa::new();
    let collector = OtlpCollector::start_tls(&ca).await.unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    for protocol in ["grpc", "http/protobuf"] {
        let mut builder = Cluster::builder()
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &path(ca.ca_file()));
        builder = match protocol {
            "grpc" => builder
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.grpc_endpoint())
                .env(
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    &path(ca.server_cert_file()),
                )
                .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", &path(ca.server_key_file())),
            _ => builder.env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint()),
        };
        let cluster = builder.start().await;
        let mut request = banner_request(json!([]));
        let id = format!("req-tls-{}", protocol.replace('/', "-"));
        request["request"]["id"] = json!(id);
        cluster.decide(&request).await;
        let trace = decision_trace(&collector, &id).await;
        let transport = match protocol {
            "grpc" => "grpc",
            _ => "http",
        };
        assert!(trace.iter().all(|s| s.transport == transport), "{protocol}");
    }
}
