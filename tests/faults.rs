//! The fault matrix: two replicas of every service, a durable Redis and the fake
//! networks, under a steady open-loop load from a gateway that balances over the two
//! bid-intakes (the one with fewer calls in flight), retries `UNAVAILABLE` (or a broken
//! connection) on the other and hedges a try unanswered after half the deadline there,
//! as the README's retry contract allows. One fault at a time — SIGKILL and SIGSTOP
//! of one replica of each service, Redis killed and hung, the network hanging, answering
//! garbage, resetting — then healed; every call's fate is counted.
//!
//! What must hold for every fault: no call answered later than its deadline + 50 ms or
//! not at all, errors only for calls in flight when the fault struck, and every
//! selection a decision acknowledged takes its impression report afterwards.
//!
//! The gateway is a plain HTTP/2 client (not tonic's channel, whose own timer would end
//! every call at its deadline and hide a server that answers late).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cascade_proto::decision::v1::bid_intake_client::BidIntakeClient;
use cascade_proto::decision::v1::{DecideRequest, DecideResponse, EventType, ReportEventRequest};
use cascade_testkit::{
    Behaviour, FakeDns, FakeNetworks, LOOPBACK_HOSTS, RedisOptions, RedisServer, ServiceProcess,
    port_free_on_every_loopback_host,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tonic::Code;

use crate::support::demo_configuration;

/// Decisions per second, steadily, whatever the answers: well inside what the debug
/// build on two cores decides with every replica up, so that the faults, not the
/// machine, are measured (at 80/s a resumed replica working off its queue starved the
/// others of CPU now and then).
const RATE: u32 = 60;
/// The load of one fault: the fault strikes at `FAULT_AT` and is healed at `HEAL_AT`.
const LOAD_FOR: Duration = Duration::from_millis(2_500);
const FAULT_AT: Duration = Duration::from_millis(750);
const HEAL_AT: Duration = Duration::from_millis(1_750);
/// Every call's deadline (`grpc-timeout`), and the lateness tolerated past it.
const DEADLINE: Duration = Duration::from_millis(250);
const LATE_AFTER: Duration = Duration::from_millis(DEADLINE.as_millis() as u64 + 50);
/// A try unanswered this long is hedged on the other bid-intake.
const PER_TRY: Duration = Duration::from_millis(125);
/// A call not answered by then is hung.
const HUNG_AFTER: Duration = Duration::from_secs(3);

const HOSTS: [Ipv4Addr; 2] = [LOOPBACK_HOSTS[0], LOOPBACK_HOSTS[1]];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    TargetingEvaluation,
    Auction,
    NetworkCaller,
    BidIntake,
}

impl Service {
    fn binary(self) -> &'static str {
        match self {
            Service::TargetingEvaluation => "targeting-evaluation",
            Service::Auction => "auction",
            Service::NetworkCaller => "network-caller",
            Service::BidIntake => "bid-intake",
        }
    }
}

#[derive(Clone, Debug)]
enum Fault {
    /// SIGKILL of the first replica; healed by starting it again on its address.
    Kill(Service),
    /// SIGSTOP of the first replica; healed by SIGCONT.
    Pause(Service),
    RedisKill,
    RedisPause,
    /// The waterfall's first network behaves so; healed by filling again.
    Network(&'static str, Behaviour),
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Fault::Kill(service) => format!("kill -9 {}", service.binary()),
            Fault::Pause(service) => format!("SIGSTOP {}", service.binary()),
            Fault::RedisKill => "kill -9 redis".to_string(),
            Fault::RedisPause => "SIGSTOP redis".to_string(),
            Fault::Network(name, _) => format!("network {name}"),
        }
    }
}

/// A service instance the test can kill and start again on the same address.
struct Replica {
    binary: &'static str,
    settings: String,
    process: Option<ServiceProcess>,
}

impl Replica {
    async fn start(binary: &'static str, settings: String) -> Replica {
        let process = ServiceProcess::start(binary, &settings).await.unwrap();
        Replica {
            binary,
            settings,
            process: Some(process),
        }
    }

    fn process(&self) -> &ServiceProcess {
        self.process.as_ref().expect("the replica runs")
    }

    async fn kill(&mut self) {
        self.process
            .take()
            .expect("the replica runs")
            .kill()
            .await
            .unwrap();
    }

    async fn restart(&mut self) {
        self.process = Some(
            ServiceProcess::start(self.binary, &self.settings)
                .await
                .unwrap(),
        );
    }
}

/// Two replicas of each service on two loopback hosts, each service's replicas behind one
/// DNS name (a headless Service), on one Redis.
struct Topology {
    replicas: BTreeMap<Service, [Replica; 2]>,
    bid_intakes: [SocketAddr; 2],
    redis: RedisServer,
    networks: FakeNetworks,
    _dns: FakeDns,
}

impl Topology {
    async fn start() -> Topology {
        let networks = FakeNetworks::start().await.unwrap();
        let redis = RedisServer::start_with(RedisOptions {
            durable: true,
            ..Default::default()
        })
        .await
        .unwrap();
        {
            use cascade_state::Store as _;
            cascade_state::RedisStore::connect(&redis.url())
                .unwrap()
                .apply_configuration(demo_configuration(&networks), None)
                .await
                .unwrap();
        }
        let dns = FakeDns::start().await.unwrap();
        // Admission off: a debug build on a test machine running many clusters is
        // overloaded by construction; the faults, not admission, are under test here.
        let common = |host: Ipv4Addr, port: u16| {
            format!(
                "grpc.listen = \"{host}:{port}\"\ngrpc.metrics_listen = \"127.0.0.1:0\"\n\
                 grpc.admission.enabled = false\n"
            )
        };
        let state = format!(
            "[state]\nredis_url = \"{}\"\nreport_flush_interval_ms = 50\n",
            redis.url()
        );
        let mut replicas = BTreeMap::new();
        let mut names = BTreeMap::new();
        for service in [
            Service::TargetingEvaluation,
            Service::Auction,
            Service::NetworkCaller,
        ] {
            let port = port_free_on_every_loopback_host();
            let name = format!("{}.cascade.test", service.binary());
            dns.set(&name, &HOSTS);
            names.insert(service, format!("{name}:{port}"));
            // The auction holds no state.
            let state = if service == Service::Auction {
                ""
            } else {
                &state
            };
            let settings = |host| format!("{}{state}", common(host, port));
            let (first, second) = tokio::join!(
                Replica::start(service.binary(), settings(HOSTS[0])),
                Replica::start(service.binary(), settings(HOSTS[1])),
            );
            replicas.insert(service, [first, second]);
        }
        let port = port_free_on_every_loopback_host();
        let settings = |host| {
            format!(
                "{}targeting_evaluation_addr = \"{}\"\nauction_addr = \"{}\"\n\
                 network_caller_addr = \"{}\"\nresolver.nameserver = \"{}\"\n\
                 resolver.refresh_interval_ms = 250\n{state}",
                common(host, port),
                names[&Service::TargetingEvaluation],
                names[&Service::Auction],
                names[&Service::NetworkCaller],
                dns.addr(),
            )
        };
        let (first, second) = tokio::join!(
            Replica::start("bid-intake", settings(HOSTS[0])),
            Replica::start("bid-intake", settings(HOSTS[1])),
        );
        let bid_intakes = [first.process().addr, second.process().addr];
        replicas.insert(Service::BidIntake, [first, second]);
        Topology {
            replicas,
            bid_intakes,
            redis,
            networks,
            _dns: dns,
        }
    }

    async fn strike(&mut self, fault: &Fault) {
        match fault {
            Fault::Kill(service) => self.replica(*service).kill().await,
            Fault::Pause(service) => self.replica(*service).process().pause().unwrap(),
            Fault::RedisKill => self.redis.kill().await.unwrap(),
            Fault::RedisPause => self.redis.pause().unwrap(),
            Fault::Network(_, behaviour) => self.networks.set("coolads", behaviour.clone()),
        }
    }

    async fn heal(&mut self, fault: &Fault) {
        match fault {
            Fault::Kill(service) => self.replica(*service).restart().await,
            Fault::Pause(service) => self.replica(*service).process().resume().unwrap(),
            Fault::RedisKill => self.redis.restart().await.unwrap(),
            Fault::RedisPause => self.redis.resume().unwrap(),
            Fault::Network(..) => self.networks.set("coolads", Behaviour::Fill),
        }
    }

    /// The replica a fault strikes: the first.
    fn replica(&mut self, service: Service) -> &mut Replica {
        &mut self.replicas.get_mut(&service).unwrap()[0]
    }
}

type Http = Client<HttpConnector, tonic::body::Body>;

/// The gateway: calls the bid-intake with fewer calls in flight, retrying or hedging on
/// the other (see [`Gateway::decide`]).
struct Gateway {
    replicas: Vec<(BidIntakeClient<Http>, AtomicUsize)>,
    turn: AtomicUsize,
}

/// What became of one call.
struct Outcome {
    sent_at: Duration,
    /// How long the answer took; `None`: hung.
    took: Option<Duration>,
    answer: Result<DecideResponse, Code>,
}

impl Outcome {
    fn in_flight_at(&self, instant: Duration) -> bool {
        self.sent_at <= instant && self.took.is_none_or(|took| self.sent_at + took >= instant)
    }
}

impl Gateway {
    fn new(bid_intakes: &[SocketAddr]) -> Gateway {
        let http: Http = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(HttpConnector::new());
        let replicas = bid_intakes
            .iter()
            .map(|addr| {
                let origin = format!("http://{addr}").parse().unwrap();
                (
                    BidIntakeClient::with_origin(http.clone(), origin),
                    AtomicUsize::new(0),
                )
            })
            .collect();
        Gateway {
            replicas,
            turn: AtomicUsize::new(0),
        }
    }

    /// The replica with fewer calls in flight (taking turns on a tie).
    fn pick(&self) -> usize {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % 2;
        let (this, other) = (turn, 1 - turn);
        let load = |i: usize| self.replicas[i].1.load(Ordering::Relaxed);
        if load(other) < load(this) {
            other
        } else {
            this
        }
    }

    /// Tries the less busy replica; a try answered `UNAVAILABLE` (or whose connection
    /// failed) goes at once to the other, and a try unanswered after
    /// `PER_TRY` is hedged there (as Envoy's `hedge_on_per_try_timeout`): both are safe,
    /// as a retried Decide returns the first attempt's answer. Everything within the one
    /// deadline.
    async fn decide(&self, request: DecideRequest) -> Result<DecideResponse, Code> {
        let started = Instant::now();
        let first = self.pick();
        let mut first_try = Box::pin(self.send(first, request.clone(), DEADLINE, false));
        let retry = |request| {
            let remaining = DEADLINE.saturating_sub(started.elapsed());
            self.send(1 - first, request, remaining, true)
        };
        match tokio::time::timeout(PER_TRY, &mut first_try).await {
            Ok(Err(Code::Unavailable)) if started.elapsed() < DEADLINE => retry(request).await,
            Ok(answer) => answer,
            Err(_) => {
                // The first answer wins; an error only if the other try fails too.
                let second_try = Box::pin(retry(request));
                match futures::future::select(first_try, second_try).await {
                    futures::future::Either::Left((Err(_), other)) => other.await,
                    futures::future::Either::Right((Err(_), other)) => other.await,
                    futures::future::Either::Left((answer, _))
                    | futures::future::Either::Right((answer, _)) => answer,
                }
            }
        }
    }

    async fn send(
        &self,
        replica: usize,
        request: DecideRequest,
        deadline: Duration,
        retry: bool,
    ) -> Result<DecideResponse, Code> {
        let (client, in_flight) = &self.replicas[replica];
        let mut request = tonic::Request::new(request);
        request.set_timeout(deadline);
        if retry {
            request
                .metadata_mut()
                .insert("grpc-previous-rpc-attempts", "1".parse().unwrap());
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = client.clone().decide(request).await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        answer
            .map(|a| a.into_inner())
            .map_err(|status| match transport_failed(&status) {
                true => Code::Unavailable,
                false => status.code(),
            })
    }

    /// Reports the impression of `selection_id`, at any replica; the code it ends with.
    async fn report_impression(&self, selection_id: &str) -> Code {
        let mut last = Code::Unknown;
        for replica in 0..self.replicas.len() {
            let mut request = tonic::Request::new(ReportEventRequest {
                selection_id: selection_id.to_string(),
                r#type: EventType::Impression.into(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(2));
            match self.replicas[replica].0.clone().report_event(request).await {
                Ok(_) => return Code::Ok,
                Err(status) => last = status.code(),
            }
        }
        last
    }
}

/// Whether the call ended in the HTTP client's own error (a connection refused, or
/// broken under the call), which tonic passes on as `UNKNOWN`, rather than with a gRPC
/// status from the replica: the replica is gone, as `UNAVAILABLE` says.
fn transport_failed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<hyper_util::client::legacy::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Decision `n` of a run: a banner on foobar.com's home-top (the waterfall: CoolAds at
/// $2.00 first) with an exchange bid of its own, a request id of its own.
pub(crate) fn request(run: &str, n: u32) -> DecideRequest {
    let bid_request = serde_json::json!({
        "id": format!("{run}-{n}"),
        "imp": [{"id": "1", "tagid": "home-top", "banner": {"w": 300, "h": 250}}],
        "site": {"domain": "www.foobar.com", "publisher": {"id": "8953"}},
        "device": {"devicetype": 2, "ifa": format!("ifa-{n}"), "geo": {"country": "DEU"}},
        "user": {"id": format!("user-{n}")},
    });
    let exchange = serde_json::json!({"cur": "USD", "seatbid": [{"seat": "dsp-1", "bid": [{
        "id": format!("x{n}"), "impid": "1", "price": 0.6 + f64::from(n % 20) / 100.0,
        "adomain": ["shoes.example"], "adm": "<div>exchange</div>"}]}]});
    DecideRequest {
        request: Some(serde_json::from_value(bid_request).unwrap()),
        exchange_bids: vec![serde_json::from_value(exchange).unwrap()],
        ..Default::default()
    }
}

/// One row of the matrix.
#[derive(Default)]
struct Row {
    sent: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    /// Errors of calls that were not in flight when the fault struck.
    errors_not_in_flight: usize,
    late: usize,
    hung: usize,
    selections: usize,
    lost: usize,
    slowest: Duration,
}

/// Sends the load from `started` on: `RATE` calls a second whatever the answers, each
/// call's fate recorded.
async fn load(gateway: Arc<Gateway>, run: String, started: Instant) -> Vec<Outcome> {
    let interval = Duration::from_secs(1) / RATE;
    let total = (LOAD_FOR.as_secs_f64() * f64::from(RATE)) as u32;
    let mut calls = Vec::with_capacity(total as usize);
    for n in 0..total {
        tokio::time::sleep_until(started + interval * n).await;
        let gateway = gateway.clone();
        let request = request(&run, n);
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = tokio::time::timeout(HUNG_AFTER, gateway.decide(request)).await;
            Outcome {
                sent_at: sent - started,
                took: answer.is_ok().then(|| sent.elapsed()),
                answer: answer.unwrap_or(Err(Code::DeadlineExceeded)),
            }
        }));
    }
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

impl Row {
    /// Nothing late, hung or lost, and errors only for calls in flight at the fault.
    fn absorbed(&self) -> bool {
        self.late + self.hung + self.lost + self.errors_not_in_flight == 0
    }

    fn markdown(&self, fault: &str) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(code, count)| format!("{code} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "| {fault} | {} | {} | {errors} | {} | {} | {} | {} ms | {} | {} |",
            self.sent,
            self.ok,
            self.errors_not_in_flight,
            self.late,
            self.hung,
            self.slowest.as_millis(),
            self.selections,
            self.lost
        )
    }
}

/// Runs the load with `fault` struck and healed during it; striking and healing (a
/// restart takes a while) happen beside the load, which keeps its pace.
async fn run_fault(topology: &mut Topology, gateway: &Arc<Gateway>, fault: &Fault) -> Row {
    let fault_name = fault.name();
    let run = fault_name.replace(' ', "-");
    let started = Instant::now();
    let load = tokio::spawn(load(gateway.clone(), run, started));
    tokio::time::sleep_until(started + FAULT_AT).await;
    topology.strike(fault).await;
    tokio::time::sleep_until(started + HEAL_AT).await;
    topology.heal(fault).await;
    let outcomes = load.await.unwrap();

    let mut row = Row {
        sent: outcomes.len(),
        ..Row::default()
    };
    let mut selections = Vec::new();
    for outcome in &outcomes {
        match (&outcome.answer, outcome.took) {
            (_, None) => row.hung += 1,
            (answer, Some(took)) => {
                row.slowest = row.slowest.max(took);
                if took > LATE_AFTER {
                    row.late += 1;
                    println!(
                        "{}: late: sent at {} ms, answered {:?} after {} ms",
                        fault_name,
                        outcome.sent_at.as_millis(),
                        answer.as_ref().map(|_| "a decision"),
                        took.as_millis()
                    );
                }
                match answer {
                    Ok(response) => {
                        row.ok += 1;
                        selections.extend(
                            response
                                .decisions
                                .iter()
                                .filter_map(|d| d.winner.as_ref())
                                .map(|w| w.selection_id.clone()),
                        );
                    }
                    Err(code) => {
                        *row.errors.entry(format!("{code:?}")).or_default() += 1;
                        if !outcome.in_flight_at(FAULT_AT) {
                            row.errors_not_in_flight += 1;
                            println!(
                                "{}: {code:?}, not in flight at the fault: sent at {} ms, after {} ms",
                                fault_name,
                                outcome.sent_at.as_millis(),
                                took.as_millis()
                            );
                        }
                    }
                }
            }
        }
    }
    row.selections = selections.len();
    // Every acknowledged selection takes its impression: a selection acknowledged while
    // Redis was away may still be on its way there, so each is given a few seconds.
    use futures::StreamExt as _;
    row.lost = futures::stream::iter(&selections)
        .map(|selection| async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match gateway.report_impression(selection).await {
                    Code::Ok => return false,
                    _ if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    _ => return true,
                }
            }
        })
        .buffer_unordered(16)
        .filter(|lost| std::future::ready(*lost))
        .count()
        .await;
    row
}

/// The replicas struck are all serving again, and bid-intake calls them, before the next
/// fault.
async fn settle(topology: &Topology, gateway: &Gateway) {
    for [first, _] in topology.replicas.values() {
        cascade_testkit::wait_until_serving(first.process().addr, "", Duration::from_secs(10))
            .await
            .unwrap();
    }
    // A short refresh interval puts a restarted replica back in rotation; a few calls in a
    // row must then succeed.
    let mut in_a_row = 0;
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_a_row < 20 {
        assert!(Instant::now() < deadline, "the cluster did not settle");
        n += 1;
        match gateway.decide(request("settle", n)).await {
            Ok(_) => in_a_row += 1,
            Err(_) => {
                in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures lateness, so scripts/test runs it alone after the other tests"]
async fn every_fault_ends_in_time_and_loses_no_selection() {
    let mut topology = Topology::start().await;
    let gateway = Arc::new(Gateway::new(&topology.bid_intakes));
    settle(&topology, &gateway).await;
    let services = [
        Service::TargetingEvaluation,
        Service::Auction,
        Service::NetworkCaller,
        Service::BidIntake,
    ];
    let mut faults: Vec<Fault> = services.iter().map(|s| Fault::Kill(*s)).collect();
    faults.extend(services.iter().map(|s| Fault::Pause(*s)));
    faults.extend([
        Fault::RedisKill,
        Fault::RedisPause,
        Fault::Network(
            "hangs",
            Behaviour::Slow(Duration::from_secs(30), Box::new(Behaviour::Fill)),
        ),
        Fault::Network("answers garbage", Behaviour::Malformed),
        Fault::Network("resets", Behaviour::Reset),
    ]);

    // `CASCADE_FAULTS=redis,hangs` runs only the faults whose name has one of those in it.
    if let Ok(only) = std::env::var("CASCADE_FAULTS") {
        faults.retain(|fault| only.split(',').any(|part| fault.name().contains(part)));
    }
    let mut table = vec![format!(
        "| fault | sent | ok | errors by code | errors not in flight at the fault | late (> deadline + 50 ms) | hung | slowest | selections | lost |\n|---|---|---|---|---|---|---|---|---|---|"
    )];
    let mut failures = Vec::new();
    for fault in &faults {
        // A row that fails is run once more, and the fault counts as not absorbed only
        // if it fails again: on a shared two-core machine running a debug build, one
        // call in a few hundred can miss for reasons of its own. Both rows are shown.
        let mut runs = 0;
        loop {
            runs += 1;
            let row = run_fault(&mut topology, &gateway, fault).await;
            let name = match runs {
                1 => fault.name(),
                _ => format!("{} (run again)", fault.name()),
            };
            table.push(row.markdown(&name));
            settle(&topology, &gateway).await;
            if row.absorbed() {
                break;
            }
            if runs == 2 {
                failures.push(fault.name());
                break;
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "faults not absorbed: {failures:?}\n{}",
        table.join("\n")
    );
}
