//! `cascade load`: load over gRPC against a decision API (or the echo chain baseline),
//! closed loop (a fixed number of calls in flight) or open loop (a fixed rate, latency
//! measured from when each call was due, so a slow server cannot hide its queueing),
//! with an HDR histogram of latencies and errors by status.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use anyhow::Context;
use cascade_proto::bench::v1::EchoMessage;
use cascade_proto::bench::v1::echo_client::EchoClient;
use cascade_proto::decision::v1::DecideRequest;
use cascade_proto::decision::v1::bid_intake_client::BidIntakeClient;
use cascade_server::admission::PUBLISHER_HEADER;
use hdrhistogram::Histogram;
use prost::Message;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

/// Most calls in flight in open loop; beyond it a due call is counted as dropped.
const MAX_IN_FLIGHT: usize = 8_192;

/// Distinct decision requests a run cycles through.
const REQUEST_POOL: u64 = 4_096;

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// The gRPC address to load, `host:port` or a URL: bid-intake (or, with `--echo`,
    /// an echo chain).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub target: String,
    /// How long to run (`30s`, `500ms`, `2m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Closed loop: this many calls in flight at all times.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Open loop: this many calls per second, whatever the latency.
    #[arg(long)]
    pub rate: Option<u64>,
    /// HTTP/2 connections to spread the calls over.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Impressions per decision request.
    #[arg(long, default_value_t = 1)]
    pub imps: usize,
    /// Exchange bids per impression.
    #[arg(long, default_value_t = 1)]
    pub exchange_bids: usize,
    /// The ad unit (tagid) of every impression: it selects the mediated chain.
    #[arg(long, default_value = "home-top")]
    pub tagid: String,
    /// The publisher id of every request.
    #[arg(long, default_value = "8953")]
    pub publisher: String,
    /// Do not name each request's publisher in the `cascade-publisher` metadata, as a
    /// gateway may: bid-intake then judges a call under overload only once it has read
    /// the request, instead of before.
    #[arg(long)]
    pub unnamed_publisher: bool,
    /// Load an echo chain (the baseline) with payloads as large as the decision requests.
    #[arg(long)]
    pub echo: bool,
    /// The deadline every call is sent with (`grpc-timeout`); unset: none.
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Send this request (JSON) on every call instead of generated ones, its id suffixed
    /// with the call's number: an OpenRTB bid request (an IAB example as it is), or a
    /// Decide request in grpcurl's form (`{"request": {…}, "exchangeBids": […], …}`,
    /// `openrtb` read as the bid request).
    #[arg(short = 'D', long = "data-file", value_name = "FILE")]
    pub data_file: Option<std::path::PathBuf>,
    /// `text` for people, `json` for programs (one object: counts, rate, latency
    /// percentiles, errors by code).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The generated requests: `toy` (small, `--imps` and `--exchange-bids` as given) or
    /// `realistic` (3–8 KB as a header-bidding SSP receives them: 1–4 impressions, supply
    /// chain, extended ids, consent, `ext`, 1–3 exchange bids each; `--imps` and
    /// `--exchange-bids` unused).
    #[arg(long, value_enum, default_value_t = Workload::Toy)]
    pub workload: Workload,
}

/// What the generated requests look like.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Toy,
    Realistic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// A Decide request as a file gives it (grpcurl's JSON names or the proto's).
#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RequestFile {
    request: Option<cascade_proto::openrtb::v1::BidRequest>,
    openrtb: Option<cascade_proto::openrtb::v1::BidRequest>,
    #[serde(alias = "exchange_bids")]
    exchange_bids: Vec<cascade_proto::openrtb::v1::BidResponse>,
    #[serde(alias = "chained_selection_ids")]
    chained_selection_ids: Vec<String>,
    #[serde(alias = "key_values")]
    key_values: std::collections::HashMap<String, String>,
    debug: bool,
}

/// Reads `path` as one Decide request (see `--data-file`).
pub fn read_request_file(path: &std::path::Path) -> anyhow::Result<DecideRequest> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let file: RequestFile = if document.get("imp").is_some() {
        RequestFile {
            request: Some(
                serde_json::from_value(document)
                    .with_context(|| format!("{}: not an OpenRTB bid request", path.display()))?,
            ),
            ..Default::default()
        }
    } else {
        serde_json::from_value(document)
            .with_context(|| format!("{}: not a Decide request", path.display()))?
    };
    let request = file.request.or(file.openrtb).with_context(|| {
        format!(
            "{}: neither an OpenRTB bid request (with imp) nor a Decide request with request",
            path.display()
        )
    })?;
    Ok(DecideRequest {
        request: Some(request),
        exchange_bids: file.exchange_bids,
        chained_selection_ids: file.chained_selection_ids,
        key_values: file.key_values,
        debug: file.debug,
        ..Default::default()
    })
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 30s, 500ms, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("{text:?}: the unit is ms, s or m")),
    }
}

/// What one run measured.
pub struct LoadResult {
    pub elapsed: Duration,
    /// Latencies of successful calls, in microseconds.
    pub latencies: Histogram<u64>,
    /// Latencies of the calls shed (`RESOURCE_EXHAUSTED`), in microseconds.
    pub shed_latencies: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl LoadResult {
    pub fn completed(&self) -> u64 {
        self.latencies.len()
    }

    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `quantile` (0.5, 0.99…) latency in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latencies.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// The `quantile` latency of the calls shed, in milliseconds.
    pub fn shed_latency_ms(&self, quantile: f64) -> f64 {
        self.shed_latencies.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// Every call answered, whatever the answer.
    pub fn answered(&self) -> u64 {
        self.completed() + self.errors.values().sum::<u64>()
    }

    /// The run as one JSON object, for programs.
    pub fn to_json(&self, label: &str) -> serde_json::Value {
        let quantiles = |histogram: &Histogram<u64>| {
            let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1_000.0;
            serde_json::json!({
                "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99_9": ms(0.999),
                "max": histogram.max() as f64 / 1_000.0,
            })
        };
        serde_json::json!({
            "label": label,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ok": self.completed(),
            "answered": self.answered(),
            "throughput_per_s": self.throughput(),
            "latency_ms": quantiles(&self.latencies),
            "errors": self.errors,
            "shed_latency_ms": (!self.shed_latencies.is_empty()).then(|| quantiles(&self.shed_latencies)),
        })
    }

    pub fn print(&self, label: &str) {
        println!(
            "{label}: {} ok in {:.1}s = {:.0}/s; latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.completed(),
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latencies.max() as f64 / 1_000.0,
        );
        for (status, count) in &self.errors {
            println!("  errors {status}: {count}");
        }
        if !self.shed_latencies.is_empty() {
            println!(
                "  shed calls answered in ms p50 {:.3}  p99 {:.3}  max {:.3}",
                self.shed_latency_ms(0.5),
                self.shed_latency_ms(0.99),
                self.shed_latencies.max() as f64 / 1_000.0
            );
        }
    }
}

/// The decision request of call number `n`: `imps` banners, each with `exchange_bids`
/// bids (prices spread so the auction has work to do, and moving from call to call), a
/// user and a device of its own, and privacy signals as traffic mixes them: a third with
/// none, a third opted out of sale (`us_privacy`), a third limiting ad tracking (`lmt`).
pub fn decide_request(args: &LoadArgs, n: u64) -> DecideRequest {
    if args.workload == Workload::Realistic {
        let (request, exchange_bids) = crate::workload::realistic(n, &args.tagid, &args.publisher);
        return decide_request_of(request, exchange_bids);
    }
    let imps: Vec<serde_json::Value> = (0..args.imps)
        .map(|i| {
            serde_json::json!({"id": (i + 1).to_string(), "tagid": args.tagid, "banner": {"w": 300, "h": 250}})
        })
        .collect();
    let bids: Vec<serde_json::Value> = (0..args.imps)
        .flat_map(|i| {
            (0..args.exchange_bids).map(move |b| {
                serde_json::json!({"id": format!("b{i}-{b}"), "impid": (i + 1).to_string(),
                    "price": 0.6 + 0.1 * b as f64 + 0.01 * (n % 13) as f64,
                    "adomain": ["shoes.example"], "adm": "<div>exchange ad</div>"})
            })
        })
        .collect();
    let mut request = serde_json::json!({
        "id": format!("load-{n}"),
        "imp": imps,
        "site": {"domain": "www.foobar.com", "publisher": {"id": args.publisher}},
        "device": {"devicetype": 2, "ifa": format!("ifa-{n}"), "ip": format!("203.0.113.{}", n % 250),
                   "geo": {"country": "DEU", "lat": 52.5 + (n % 100) as f64 / 1_000.0, "lon": 13.4}},
        "user": {"id": format!("user-{}", n % 10_000)},
    });
    match n % 3 {
        1 => request["regs"] = serde_json::json!({"us_privacy": "1YYN"}),
        2 => request["device"]["lmt"] = serde_json::json!(1),
        _ => {}
    }
    let exchange_bids = if bids.is_empty() {
        vec![]
    } else {
        vec![serde_json::json!({"cur": "USD", "seatbid": [{"seat": "dsp-1", "bid": bids}]})]
    };
    decide_request_of(request, exchange_bids)
}

/// A Decide request of an OpenRTB bid request and exchange bid responses, as JSON.
fn decide_request_of(
    request: serde_json::Value,
    exchange_bids: Vec<serde_json::Value>,
) -> DecideRequest {
    DecideRequest {
        request: serde_json::from_value(request).ok(),
        exchange_bids: exchange_bids
            .into_iter()
            .filter_map(|b| serde_json::from_value(b).ok())
            .collect(),
        ..Default::default()
    }
}

async fn channels(target: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        let channel = tonic::transport::Endpoint::from_shared(crate::target::url(target, false))
            .with_context(|| format!("--target {target:?} is not a URL"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs `args` against its target.
pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadResult> {
    let channels = channels(&args.target, args.connections).await?;
    let next = Arc::new(AtomicU64::new(0));
    if args.echo {
        let payload = decide_request(args, 0).encode_to_vec();
        let clients: Vec<_> = channels.into_iter().map(EchoClient::new).collect();
        Ok(drive(args, move || {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let mut client = clients[n as usize % clients.len()].clone();
            let payload = payload.clone();
            async move {
                client
                    .echo(EchoMessage { payload })
                    .await
                    .map(|_| ())
                    .map_err(|s| code_of(&s))
            }
        })
        .await)
    } else {
        let clients: Vec<_> = channels.into_iter().map(BidIntakeClient::new).collect();
        // Made before the run, so that the generator's own cost does not cap the rate it
        // can send; every call still gets an id of its own.
        let pool: Arc<Vec<DecideRequest>> = Arc::new(match &args.data_file {
            Some(path) => vec![read_request_file(path)?],
            None => (0..REQUEST_POOL).map(|n| decide_request(args, n)).collect(),
        });
        let from_file = args.data_file.is_some();
        let deadline = args.deadline;
        // The publisher each pooled request names, as metadata, made once.
        let named: Arc<Vec<Option<AsciiMetadataValue>>> = Arc::new(
            pool.iter()
                .map(|request| {
                    let bid_request = request.request.as_ref()?;
                    let publisher = cascade_proto::openrtb_json::publisher_id(bid_request);
                    let name = !args.unnamed_publisher && !publisher.is_empty();
                    name.then(|| publisher.parse().ok()).flatten()
                })
                .collect(),
        );
        Ok(drive(args, move || {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let mut client = clients[n as usize % clients.len()].clone();
            let mut request = pool[n as usize % pool.len()].clone();
            if let Some(bid_request) = request.request.as_mut() {
                bid_request.id = match from_file {
                    true => format!("{}-{n}", bid_request.id),
                    false => format!("load-{n}"),
                };
            }
            let mut request = tonic::Request::new(request);
            if let Some(deadline) = deadline {
                request.set_timeout(deadline);
            }
            if let Some(publisher) = &named[n as usize % named.len()] {
                (request.metadata_mut()).insert(PUBLISHER_HEADER, publisher.clone());
            }
            async move {
                client
                    .decide(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| code_of(&s))
            }
        })
        .await)
    }
}

/// The code of a failed call. tonic's client ends a call at its own `grpc-timeout` with
/// `CANCELLED` ("Timeout expired"); that is the deadline passing, counted as
/// `DEADLINE_EXCEEDED` with the server's own.
fn code_of(status: &tonic::Status) -> tonic::Code {
    let expired = status.code() == tonic::Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string();
    match expired {
        true => tonic::Code::DeadlineExceeded,
        false => status.code(),
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Calls `call` for `args.duration`, closed or open loop, and measures every call.
async fn drive<F, Fut>(args: &LoadArgs, call: F) -> LoadResult
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Code>> + Send + 'static,
{
    let call = Arc::new(call);
    let latencies: Shared<Histogram<u64>> = Arc::new(Mutex::new(new_histogram()));
    let shed_latencies: Shared<Histogram<u64>> = Arc::new(Mutex::new(new_histogram()));
    let errors: Shared<BTreeMap<String, u64>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + args.duration;
    let progress = progress_bar(args, done.clone());

    let record = {
        let (latencies, shed_latencies, errors, done) = (
            latencies.clone(),
            shed_latencies.clone(),
            errors.clone(),
            done.clone(),
        );
        move |result: Result<(), tonic::Code>, since: Instant| {
            let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            match result {
                Ok(()) => {
                    let _ = latencies.lock().record(micros.max(1));
                }
                Err(code) => {
                    if code == tonic::Code::ResourceExhausted {
                        let _ = shed_latencies.lock().record(micros.max(1));
                    }
                    *errors.lock().entry(format!("{code:?}")).or_default() += 1
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
    };

    match args.rate {
        None => {
            let workers: Vec<_> = (0..args.concurrency.max(1))
                .map(|_| {
                    let (call, record) = (call.clone(), record.clone());
                    tokio::spawn(async move {
                        while Instant::now() < end {
                            let since = Instant::now();
                            let result = call().await;
                            record(result, since);
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            let mut due = started;
            let mut tasks = tokio::task::JoinSet::new();
            while due < end {
                tokio::time::sleep_until(due).await;
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (call, record) = (call.clone(), record.clone());
                        let since = due;
                        tasks.spawn(async move {
                            let result = call().await;
                            record(result, since);
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        *errors
                            .lock()
                            .entry("Dropped (generator saturated)".into())
                            .or_default() += 1
                    }
                }
                due += interval;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = started.elapsed();
    let latencies = std::mem::replace(&mut *latencies.lock(), new_histogram());
    let shed_latencies = std::mem::replace(&mut *shed_latencies.lock(), new_histogram());
    let errors = std::mem::take(&mut *errors.lock());
    LoadResult {
        elapsed,
        latencies,
        shed_latencies,
        errors,
    }
}

/// A progress bar on stderr (when it is a terminal), updated five times a second.
fn progress_bar(args: &LoadArgs, done: Arc<AtomicU64>) -> Option<tokio::task::JoinHandle<()>> {
    if args.quiet {
        return None;
    }
    let total_ms = args.duration.as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total_ms);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let elapsed = started.elapsed();
            let calls = done.load(Ordering::Relaxed);
            bar.set_position((elapsed.as_millis() as u64).min(total_ms));
            bar.set_message(format!(
                "{calls} calls, {:.0}/s",
                calls as f64 / elapsed.as_secs_f64().max(0.001)
            ));
            if elapsed.as_millis() as u64 >= total_ms {
                bar.finish_and_clear();
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_past_its_own_deadline_counts_as_deadline_exceeded() {
        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(expired.code(), tonic::Code::Cancelled);
        assert_eq!(code_of(&expired), tonic::Code::DeadlineExceeded);
        assert_eq!(
            code_of(&tonic::Status::cancelled("the client went away")),
            tonic::Code::Cancelled
        );
        assert_eq!(
            code_of(&tonic::Status::resource_exhausted("shed")),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn request_files_are_openrtb_or_decide_requests() {
        let dir = tempfile::tempdir().unwrap();
        let openrtb = dir.path().join("openrtb.json");
        std::fs::write(
            &openrtb,
            r#"{"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "site": {"publisher": {"id": "8953"}}}"#,
        )
        .unwrap();
        let request = read_request_file(&openrtb).unwrap();
        assert_eq!(request.request.unwrap().imp.len(), 1);
        let decide = dir.path().join("decide.json");
        std::fs::write(
            &decide,
            r#"{"request": {"id": "r2", "imp": [{"id": "1"}]}, "exchangeBids": [{"id": "r2", "seatbid": []}], "keyValues": {"section": "sport"}}"#,
        )
        .unwrap();
        let request = read_request_file(&decide).unwrap();
        assert_eq!(request.exchange_bids.len(), 1);
        assert_eq!(request.key_values["section"], "sport");
        let neither = dir.path().join("neither.json");
        std::fs::write(&neither, r#"{"debug": true}"#).unwrap();
        assert!(read_request_file(&neither).is_err());
    }

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
