//! What tracing costs per decision under each sampling policy, against traces off.
//!
//! `cargo bench -p cascade-server --bench sampling`
//!
//! Each decision is a new trace shaped like bid-intake's: the server span, the decision
//! span with its attributes, three client spans (targeting, auction, network-caller)
//! and a network attempt under the last; one decision in 200 has a failing attempt and
//! one in 500 runs over its budget. Spans go through the same tracing-opentelemetry
//! layer and batch processor as in the services, to an exporter that discards them
//! (the cost of the wire is the collector's, not the decision's). The policies run in
//! turns, round after round, so that a slow moment of the machine falls on all of them;
//! the median round is printed, as time on the deciding thread and as CPU of the whole
//! process (the batch thread included), with ratios to the 1%-ratio drop.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cascade_server::sampling::{BUDGET_ATTRIBUTE, HeadSampler, Policy};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt as _;

const DECISIONS_PER_ROUND: usize = 20_000;
const ROUNDS: usize = 9;

/// Counts what it is given and drops it.
#[derive(Debug, Clone, Default)]
struct Discard(Arc<AtomicUsize>);

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// One decision's spans; `n` picks the rare failing or slow ones.
fn decision(n: usize) {
    let server = tracing::info_span!(
        "cascade.decision.v1.BidIntake/Decide",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "cascade.decision.v1.BidIntake",
        rpc.method = "Decide",
        rpc.grpc.status_code = 0_i64,
        server.address = "bid-intake",
        server.port = 50051_i64,
    );
    let _server = server.enter();
    let decide = tracing::info_span!(
        "decide",
        otel.status_code = tracing::field::Empty,
        cascade.request.id = "req-8953-17",
        cascade.account.id = "8953",
        cascade.imps = 2_i64,
        cascade.exchange_bids = 3_i64,
        cascade.chained_selections = 0_i64,
        cascade.config.version = 42_i64,
        cascade.budget_ms = tracing::field::Empty,
        cascade.winners = 1_i64,
        cascade.winning_sources = "exchange",
    );
    let _decide = decide.enter();
    // Over its budget one time in 500 (a budget of 0 ms, so that no one waits for it).
    let budget_ms = if n % 500 == 11 { 0_i64 } else { 150 };
    decide.record(BUDGET_ATTRIBUTE, budget_ms);
    for (service, method) in [
        ("cascade.targeting.v1.TargetingEvaluation", "Evaluate"),
        ("cascade.auction.v1.Auction", "Rank"),
    ] {
        let client = tracing::info_span!(
            "call",
            otel.name = method,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = 0_i64,
        );
        let _client = client.enter();
        black_box(n);
    }
    let client = tracing::info_span!(
        "call",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "cascade.networkcaller.v1.NetworkCaller",
        rpc.method = "Call",
        rpc.grpc.status_code = 0_i64,
    );
    let _client = client.enter();
    let attempt = tracing::info_span!(
        "network.attempt",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        cascade.network.id = "coolads",
        cascade.network.protocol = "openrtb_http",
        cascade.outcome = "filled",
        cascade.latency_us = 81_000_i64,
    );
    if n % 200 == 7 {
        attempt.record("otel.status_code", "error");
    }
    drop(attempt);
}

/// CPU time of the whole process (user + system), from /proc.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 14th and 15th fields; `rest` starts at the 3rd.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct Variant {
    name: &'static str,
    dispatch: Option<tracing::Dispatch>,
    _provider: Option<SdkTracerProvider>,
    exported: Discard,
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

fn variant(name: &'static str, policy: Option<Policy>) -> Variant {
    let exported = Discard::default();
    let Some(policy) = policy else {
        return Variant {
            name,
            dispatch: None,
            _provider: None,
            exported,
            wall: Vec::new(),
            cpu: Vec::new(),
        };
    };
    let batch = BatchSpanProcessor::builder(exported.clone()).build();
    let provider = policy.apply(SdkTracerProvider::builder(), batch).build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    Variant {
        name,
        dispatch: Some(dispatch),
        _provider: Some(provider),
        exported,
        wall: Vec::new(),
        cpu: Vec::new(),
    }
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter.
    let ratio = |keep| Policy {
        head: HeadSampler::ParentBasedRatio(0.01),
        keep_errors_and_slow: keep,
    };
    let mut variants = [
        variant("traces off", None),
        variant("1% ratio, the rest dropped", Some(ratio(false))),
        variant(
            "1% ratio, errors and slow kept (default)",
            Some(ratio(true)),
        ),
        variant(
            "every trace (always_on)",
            Some(Policy {
                head: HeadSampler::AlwaysOn,
                keep_errors_and_slow: false,
            }),
        ),
    ];
    let mut n = 0;
    for round in 0..=ROUNDS {
        for variant in &mut variants {
            let cpu_before = process_cpu();
            let started = Instant::now();
            let run = |n: &mut usize| {
                for _ in 0..DECISIONS_PER_ROUND {
                    decision(*n);
                    *n += 1;
                }
            };
            match &variant.dispatch {
                Some(dispatch) => tracing::dispatcher::with_default(dispatch, || run(&mut n)),
                None => run(&mut n),
            }
            // The first round warms up and is not counted.
            if round > 0 {
                variant
                    .wall
                    .push(started.elapsed() / DECISIONS_PER_ROUND as u32);
                variant
                    .cpu
                    .push((process_cpu() - cpu_before) / DECISIONS_PER_ROUND as u32);
            }
        }
    }
    for variant in &variants {
        if let Some(provider) = &variant._provider {
            let _ = provider.force_flush();
        }
    }
    let baseline = median(&mut variants[1].wall.clone()).as_nanos() as f64;
    let baseline_cpu = median(&mut variants[1].cpu.clone()).as_nanos() as f64;
    println!(
        "\ntracing cost per decision (6 spans), median of {ROUNDS} rounds of {DECISIONS_PER_ROUND} decisions"
    );
    println!(
        "{:<44} {:>12} {:>8} {:>14} {:>8} {:>10}",
        "policy", "thread ns", "ratio", "process CPU ns", "ratio", "exported"
    );
    for variant in &mut variants {
        let wall = median(&mut variant.wall).as_nanos() as f64;
        let cpu = median(&mut variant.cpu).as_nanos() as f64;
        println!(
            "{:<44} {:>12.0} {:>7.2}× {:>14.0} {:>7.2}× {:>10}",
            variant.name,
            wall,
            wall / baseline,
            cpu,
            cpu / baseline_cpu,
            variant.exported.0.load(Ordering::Relaxed),
        );
    }
}
