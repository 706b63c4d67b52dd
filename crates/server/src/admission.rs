//! Admission control: a probe measures how late the runtime runs a task that is due (the
//! time any call now waits to be worked on), the core's [`Controller`] turns that into a
//! pressure, and calls are degraded or shed accordingly — shed at once, before their
//! body is decoded, so a rejection costs next to nothing.
//!
//! Shedding answers `RESOURCE_EXHAUSTED`, never `UNAVAILABLE`: a gateway can tell "this
//! cluster is overloaded, back off" (with a `google.rpc.RetryInfo` detail and gRPC's
//! `grpc-retry-pushback-ms`) from "this replica is down, try another".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use cascade_core::admission::{AdmissionPolicy, Controller, FairShedding};
use cascade_core::settings::{InvalidSetting, Validate, at_least, require};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// How often the probe samples the queueing delay.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// What a shed call is told to wait before it is retried.
const RETRY_AFTER: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Off: every call is admitted, whatever the load.
    pub enabled: bool,
    /// Queueing delay above which the service degrades (bid-intake: no network calls,
    /// decisions from the demand in hand).
    pub degrade_queue_delay_ms: u64,
    /// Queueing delay the shedding holds the service to.
    pub shed_queue_delay_ms: u64,
    /// How long the service stays degraded after the delay was last above its threshold.
    pub degrade_hold_ms: u64,
    /// Most publishers whose arrival rates are tracked one by one for fair shedding; the
    /// rest share one share.
    pub tracked_publishers: usize,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            degrade_queue_delay_ms: 5,
            shed_queue_delay_ms: 10,
            degrade_hold_ms: 250,
            tracked_publishers: 10_000,
        }
    }
}

impl Validate for AdmissionSettings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        at_least("shed_queue_delay_ms", self.shed_queue_delay_ms, 1)?;
        require(
            self.degrade_queue_delay_ms <= self.shed_queue_delay_ms,
            "degrade_queue_delay_ms",
            || {
                format!(
                    "must not exceed shed_queue_delay_ms ({}): a service degrades before it sheds",
                    self.shed_queue_delay_ms
                )
            },
        )?;
        require(self.degrade_hold_ms <= 60_000, "degrade_hold_ms", || {
            format!("must be at most 60000, got {}", self.degrade_hold_ms)
        })?;
        at_least("tracked_publishers", self.tracked_publishers as u64, 1)
    }
}

impl AdmissionSettings {
    fn policy(&self) -> AdmissionPolicy {
        AdmissionPolicy {
            degrade_above: Duration::from_millis(self.degrade_queue_delay_ms),
            shed_above: Duration::from_millis(self.shed_queue_delay_ms),
            degrade_hold: Duration::from_millis(self.degrade_hold_ms),
        }
    }
}

/// What to do with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Admit it, but do the least work that still answers well.
    Degrade,
    Shed,
}

/// The admission state of one service, shared by its calls and updated by its probe.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    /// The least time a call to a service that only computes waited in this probe
    /// interval, in microseconds (`u64::MAX`: none answered).
    downstream_waited_micros: AtomicU64,
    /// The least time a call that waited on nothing but CPU (see
    /// [`Admission::unhindered_call_took`]) took in this probe interval, in microseconds
    /// (`u64::MAX`: none).
    unhindered_micros: AtomicU64,
    degraded: AtomicBool,
    /// The overall shed probability, as `f64` bits.
    shed_probability: AtomicU64,
    fair: Mutex<FairShedding>,
    /// The state of the random numbers shedding draws (SplitMix64 over a counter).
    random: AtomicU64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("enabled", &self.inner.enabled)
            .field("degraded", &self.inner.degraded.load(Ordering::Relaxed))
            .field("shed_probability", &self.shed_probability())
            .finish()
    }
}

impl Admission {
    /// Starts the probe (when enabled); it stops once every handle is dropped.
    pub fn start(settings: &AdmissionSettings) -> Self {
        let admission = Self::new(settings);
        if settings.enabled {
            tokio::spawn(probe(
                Arc::downgrade(&admission.inner),
                Controller::new(settings.policy()),
            ));
        }
        admission
    }

    fn new(settings: &AdmissionSettings) -> Self {
        metrics::gauge!("cascade_admission_degraded").set(0.0);
        metrics::gauge!("cascade_admission_shed_probability").set(0.0);
        metrics::counter!("cascade_admission_shed_total").absolute(0);
        metrics::counter!("cascade_admission_degraded_total").absolute(0);
        Self {
            inner: Arc::new(Inner {
                enabled: settings.enabled,
                downstream_waited_micros: AtomicU64::new(u64::MAX),
                unhindered_micros: AtomicU64::new(u64::MAX),
                degraded: AtomicBool::new(false),
                shed_probability: AtomicU64::new(0f64.to_bits()),
                fair: Mutex::new(FairShedding::new(settings.tracked_publishers)),
                random: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            }),
        }
    }

    /// Counts a call this service made to one that does nothing but compute (bid-intake
    /// to targeting-evaluation and auction), `took` long, answered with `metadata`: the
    /// part of it not spent serving it (see [`tell_served`]) waited in a queue — on the
    /// connection, in the other service's runtime, for CPU — and the least such wait of
    /// an interval counts as this service's own queueing delay. Shedding at the front
    /// door is what empties a queue behind it; the other service's own probe cannot see
    /// calls waiting for a stream on the connection.
    pub fn downstream_took(&self, took: Duration, metadata: &tonic::metadata::MetadataMap) {
        if !self.inner.enabled {
            return;
        }
        let served = metadata
            .get(SERVED_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|micros| micros.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_micros);
        let waited = u64::try_from(took.saturating_sub(served).as_micros()).unwrap_or(u64::MAX - 1);
        self.inner
            .downstream_waited_micros
            .fetch_min(waited, Ordering::Relaxed);
    }

    /// Counts a call that took `took` from its arrival while waiting on nothing but CPU
    /// — this service's and the pure services' behind it: bid-intake's degraded decisions,
    /// which call no network, up to the moment they are decided (before their selections
    /// are stored). Such a call's time beyond the least any such call takes unpressed is
    /// queueing, wherever it queued: on this runtime, on a connection, in another process
    /// waiting for the same CPU. The least of an interval counts, as for the calls
    /// downstream; it is how shedding learns of queues no probe of this process sees.
    pub fn unhindered_call_took(&self, took: Duration) {
        if !self.inner.enabled {
            return;
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.inner
            .unhindered_micros
            .fetch_min(micros, Ordering::Relaxed);
    }

    /// Admits everything.
    pub fn disabled() -> Self {
        Self::new(&AdmissionSettings {
            enabled: false,
            ..AdmissionSettings::default()
        })
    }

    /// The verdict on a call from `publisher`, counted for its fair share.
    pub fn verdict(&self, publisher: &str) -> Verdict {
        // An unpressed service takes no lock: publishers are counted only once it is
        // degraded. Shedding never starts before that (the core's burst allowance), and
        // a publisher not counted yet is shed at the overall share until its rate is known.
        if !self.inner.enabled || !self.inner.degraded.load(Ordering::Relaxed) {
            return Verdict::Admit;
        }
        let uniform = self.uniform();
        if self.inner.fair.lock().arrive(publisher, uniform) {
            metrics::counter!("cascade_admission_shed_total").increment(1);
            return Verdict::Shed;
        }
        self.unshed_verdict()
    }

    /// The verdict on a call whose publisher is not known: shed at the overall share.
    pub fn uniform_verdict(&self) -> Verdict {
        if self.shed_uniformly() {
            return Verdict::Shed;
        }
        self.unshed_verdict()
    }

    /// Whether to shed a call whose publisher is not known, at the overall share.
    fn shed_uniformly(&self) -> bool {
        if !self.inner.enabled {
            return false;
        }
        let p = self.shed_probability();
        let shed = p > 0.0 && self.uniform() < p;
        if shed {
            metrics::counter!("cascade_admission_shed_total").increment(1);
        }
        shed
    }

    fn unshed_verdict(&self) -> Verdict {
        if self.inner.degraded.load(Ordering::Relaxed) {
            metrics::counter!("cascade_admission_degraded_total").increment(1);
            Verdict::Degrade
        } else {
            Verdict::Admit
        }
    }

    fn shed_probability(&self) -> f64 {
        f64::from_bits(self.inner.shed_probability.load(Ordering::Relaxed))
    }

    /// A uniform number in [0, 1).
    fn uniform(&self) -> f64 {
        let mut z = self
            .inner
            .random
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn apply(&self, pressure: cascade_core::admission::Pressure, window: Duration) {
        self.inner
            .degraded
            .store(pressure.degraded, Ordering::Relaxed);
        self.inner
            .shed_probability
            .store(pressure.shed_probability.to_bits(), Ordering::Relaxed);
        self.inner
            .fair
            .lock()
            .update(window, pressure.shed_probability);
        metrics::gauge!("cascade_admission_degraded").set(f64::from(u8::from(pressure.degraded)));
        metrics::gauge!("cascade_admission_shed_probability").set(pressure.shed_probability);
    }
}

/// Every `PROBE_INTERVAL`, how long the probe waits to run again once it goes to the back
/// of the run queue — the wait any newly arrived call has before a worker takes it up —
/// plus how late its timer fired beyond the timer's own millisecond granularity (a
/// process the OS gives no CPU shows there).
async fn probe(admission: Weak<Inner>, mut controller: Controller) {
    let mut last = Instant::now();
    let mut unpressed = UnpressedTime::default();
    loop {
        let due = last + PROBE_INTERVAL;
        tokio::time::sleep_until(due).await;
        let woke = Instant::now();
        tokio::task::yield_now().await;
        let now = Instant::now();
        let Some(inner) = admission.upgrade() else {
            return;
        };
        let late = woke
            .saturating_duration_since(due)
            .saturating_sub(TIMER_GRANULARITY);
        let own = now - woke + late;
        let downstream = match inner
            .downstream_waited_micros
            .swap(u64::MAX, Ordering::Relaxed)
        {
            u64::MAX => Duration::ZERO,
            micros => Duration::from_micros(micros),
        };
        let unhindered = match inner.unhindered_micros.swap(u64::MAX, Ordering::Relaxed) {
            u64::MAX => Duration::ZERO,
            micros => unpressed.excess(Duration::from_micros(micros), now),
        };
        let pressure = controller.observe(own.max(downstream).max(unhindered), now - last);
        metrics::gauge!("cascade_admission_queue_delay_seconds")
            .set(controller.queue_delay().as_secs_f64());
        Admission { inner }.apply(pressure, now - last);
        last = now;
    }
}

/// How long an unhindered call (see [`Admission::unhindered_call_took`]) takes when
/// nothing is queued: the least seen over the last one to two windows, so that it follows
/// a change of configuration or machine within a minute.
#[derive(Debug, Default)]
struct UnpressedTime {
    window_started: Option<Instant>,
    least_this_window: Option<Duration>,
    least_last_window: Option<Duration>,
}

/// How long each window of [`UnpressedTime`] lasts.
const UNPRESSED_WINDOW: Duration = Duration::from_secs(30);

impl UnpressedTime {
    /// Counts the least time of an interval, `least`, and returns how far it is above
    /// the unpressed time: the queueing it met.
    fn excess(&mut self, least: Duration, now: Instant) -> Duration {
        let started = *self.window_started.get_or_insert(now);
        if now.duration_since(started) >= UNPRESSED_WINDOW {
            self.least_last_window = self.least_this_window.take();
            self.window_started = Some(now);
        }
        let this = self.least_this_window.get_or_insert(least);
        *this = (*this).min(least);
        let unpressed = self.least_last_window.map_or(*this, |last| last.min(*this));
        least.saturating_sub(unpressed)
    }
}

/// The response header in which every service says how long it spent on a call, in
/// microseconds, from taking it up to answering (as `Server-Timing` does for HTTP): what
/// its caller waited beyond that was queueing.
pub const SERVED_HEADER: &str = "cascade-served-us";

/// Says in `headers` that the call was served in `served`.
pub fn tell_served(headers: &mut http::HeaderMap, served: Duration) {
    let micros = u64::try_from(served.as_micros()).unwrap_or(u64::MAX);
    headers.insert(SERVED_HEADER, http::HeaderValue::from(micros));
}

/// tokio's timers fire on millisecond ticks: a timer up to this late is on time.
const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// The answer to a shed call.
pub fn overloaded() -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(RETRY_AFTER));
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        "overloaded: the call was shed; retry after a backoff",
        details,
    );
    // gRPC's own retry policy honours the server's pushback (gRFC A6).
    if let Ok(value) = RETRY_AFTER.as_millis().to_string().parse() {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", value);
    }
    status
}

/// The request metadata in which a gateway may name the publisher of a call (the
/// OpenRTB `site.publisher.id` or `app.publisher.id` of its request), so that the call
/// is judged for its publisher's fair share before its body is read — a shed call then
/// costs no decoding and waits for nothing. Used for admission only: the decision reads
/// the publisher from the request itself.
pub const PUBLISHER_HEADER: &str = "cascade-publisher";

/// Longest publisher id [`PUBLISHER_HEADER`] is read from; a longer one (or one that is
/// not visible ASCII) is ignored, and the call is judged once its body is read.
const MAX_PUBLISHER_HEADER: usize = 256;

/// The verdict given to a call in front of its handler, as a request extension: the
/// handler must not judge (and count) the call again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged(pub Verdict);

/// Sheds calls in front of their handlers: to the `uniform` services at the service's
/// overall shed probability; to the `by_publisher` ones for the fair share of the
/// publisher named in [`PUBLISHER_HEADER`], when the call names one (the others reach
/// their handler, which judges them once it knows their publisher). Every other path
/// (health, reflection) is passed through.
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    admission: Admission,
    /// `/package.Service/` of every service shed here at the overall share.
    uniform: Arc<[String]>,
    /// `/package.Service/` of every service judged here by the publisher's share.
    by_publisher: Arc<[String]>,
    /// Called for every call shed by its publisher's share (the service counts it).
    on_publisher_shed: fn(),
}

impl AdmissionLayer {
    pub fn new(admission: Admission, uniform: &[&str]) -> Self {
        Self {
            admission,
            uniform: prefixes(uniform),
            by_publisher: prefixes(&[]),
            on_publisher_shed: || {},
        }
    }

    /// Judges the calls to `services` that name their publisher by its share, in front;
    /// `on_shed` is called for each one shed.
    pub fn by_publisher(mut self, services: &[&str], on_shed: fn()) -> Self {
        self.by_publisher = prefixes(services);
        self.on_publisher_shed = on_shed;
        self
    }
}

fn prefixes(services: &[&str]) -> Arc<[String]> {
    services.iter().map(|name| format!("/{name}/")).collect()
}

/// The publisher a call names in [`PUBLISHER_HEADER`], if it names a usable one.
fn named_publisher<B>(request: &http::Request<B>) -> Option<&str> {
    let value = request.headers().get(PUBLISHER_HEADER)?;
    let publisher = value.to_str().ok()?;
    let usable = !publisher.is_empty()
        && publisher.len() <= MAX_PUBLISHER_HEADER
        && publisher.bytes().all(|b| b.is_ascii_graphic());
    usable.then_some(publisher)
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Admit<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Admit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<RB>, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let shed =
            || futures::future::Either::Right(std::future::ready(Ok(overloaded().into_http())));
        let path = request.uri().path();
        let guards = |prefixes: &[String]| prefixes.iter().any(|p| path.starts_with(p));
        if guards(&self.layer.uniform) && self.layer.admission.shed_uniformly() {
            return shed();
        }
        if guards(&self.layer.by_publisher)
            && let Some(publisher) = named_publisher(&request)
        {
            match self.layer.admission.verdict(publisher) {
                Verdict::Shed => {
                    (self.layer.on_publisher_shed)();
                    return shed();
                }
                verdict => {
                    request.extensions_mut().insert(Judged(verdict));
                }
            }
        }
        futures::future::Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, ServiceExt as _};

    fn pressed(shed_probability: f64, degraded: bool) -> Admission {
        let admission = Admission::new(&AdmissionSettings::default());
        admission.apply(
            cascade_core::admission::Pressure {
                degraded,
                shed_probability,
            },
            Duration::from_millis(100),
        );
        admission
    }

    #[test]
    fn the_verdict_follows_the_pressure() {
        assert_eq!(pressed(0.0, false).uniform_verdict(), Verdict::Admit);
        assert_eq!(pressed(0.0, true).uniform_verdict(), Verdict::Degrade);
        assert_eq!(pressed(1.0, true).uniform_verdict(), Verdict::Shed);
        let half = pressed(0.5, true);
        let shed = (0..10_000)
            .filter(|_| half.uniform_verdict() == Verdict::Shed)
            .count();
        assert!((4_500..=5_500).contains(&shed), "{shed}");
        assert_eq!(Admission::disabled().uniform_verdict(), Verdict::Admit);
    }

    #[test]
    fn a_call_downstream_counts_what_it_waited_beyond_being_served() {
        let admission = Admission::new(&AdmissionSettings::default());
        let waited = || {
            admission
                .inner
                .downstream_waited_micros
                .load(Ordering::Relaxed)
        };
        assert_eq!(waited(), u64::MAX);
        let mut headers = http::HeaderMap::new();
        tell_served(&mut headers, Duration::from_millis(2));
        let served = tonic::metadata::MetadataMap::from_headers(headers);
        admission.downstream_took(Duration::from_millis(30), &served);
        assert_eq!(waited(), 28_000);
        // The least wait of the interval is the standing queue.
        admission.downstream_took(Duration::from_millis(50), &served);
        admission.downstream_took(Duration::from_millis(12), &served);
        assert_eq!(waited(), 10_000);
        // Without the header (a call that failed before it was served) all of it waited.
        admission.downstream_took(
            Duration::from_millis(3),
            &tonic::metadata::MetadataMap::new(),
        );
        assert_eq!(waited(), 3_000);
        // Admission off: nothing is counted.
        let off = Admission::disabled();
        off.downstream_took(Duration::from_millis(1), &served);
        assert_eq!(
            off.inner.downstream_waited_micros.load(Ordering::Relaxed),
            u64::MAX
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_waiting_downstream_make_the_front_door_degrade_then_shed() {
        let admission = Admission::start(&AdmissionSettings::default());
        let served = tonic::metadata::MetadataMap::new();
        for _ in 0..20 {
            admission.downstream_took(Duration::from_millis(40), &served);
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        assert!(admission.inner.degraded.load(Ordering::Relaxed));
        assert!(admission.shed_probability() > 0.0, "{admission:?}");
        // Once the calls downstream stop waiting, the pressure goes.
        for _ in 0..200 {
            admission.downstream_took(Duration::from_micros(300), &served);
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        assert_eq!(admission.uniform_verdict(), Verdict::Admit);
    }

    #[test]
    fn an_unhindered_call_counts_what_it_took_beyond_the_unpressed_time() {
        let mut unpressed = UnpressedTime::default();
        let start = Instant::now();
        let ms = Duration::from_millis;
        // The first calls set the unpressed time; a later, slower least is queueing.
        assert_eq!(unpressed.excess(ms(3), start), Duration::ZERO);
        assert_eq!(unpressed.excess(ms(2), start + ms(10)), Duration::ZERO);
        assert_eq!(unpressed.excess(ms(40), start + ms(20)), ms(38));
        // A window later the old least still counts; two windows later it is forgotten,
        // so a machine that became slower for good is not read as pressed for ever.
        let later = start + UNPRESSED_WINDOW;
        assert_eq!(unpressed.excess(ms(5), later), ms(3));
        let much_later = later + UNPRESSED_WINDOW;
        assert_eq!(unpressed.excess(ms(6), much_later), ms(1));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_unhindered_calls_make_the_service_degrade_then_shed() {
        let admission = Admission::start(&AdmissionSettings::default());
        // Unpressed, such a call takes 2 ms.
        for _ in 0..5 {
            admission.unhindered_call_took(Duration::from_millis(2));
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        assert_eq!(admission.uniform_verdict(), Verdict::Admit);
        // Then every one takes 80 ms: a queue somewhere, whoever holds the CPU.
        for _ in 0..30 {
            admission.unhindered_call_took(Duration::from_millis(80));
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        assert!(admission.shed_probability() > 0.0, "{admission:?}");
        for _ in 0..200 {
            admission.unhindered_call_took(Duration::from_millis(2));
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        assert_eq!(admission.uniform_verdict(), Verdict::Admit);
    }

    #[test]
    fn a_shed_call_says_overloaded_and_when_to_retry() {
        let status = overloaded();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "100"
        );
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
    }

    #[tokio::test]
    async fn the_layer_sheds_only_the_services_it_guards() {
        let answered = tower::service_fn(|_request: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new("answered".to_string()))
        });
        let layer = AdmissionLayer::new(pressed(1.0, true), &["cascade.auction.v1.Auction"]);
        let call = |path: &str| {
            http::Request::builder()
                .uri(format!("http://x{path}"))
                .body(())
                .unwrap()
        };
        let shed = layer
            .layer(answered)
            .oneshot(call("/cascade.auction.v1.Auction/Rank"))
            .await
            .unwrap();
        assert_eq!(shed.headers()["grpc-status"], "8");
        let health = layer
            .layer(answered)
            .oneshot(call("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        assert_eq!(health.body(), "answered");
    }

    #[tokio::test]
    async fn a_call_naming_its_publisher_is_judged_in_front_by_its_share() {
        static SHED_COUNTED: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(0);
        // The handler answers with the verdict it was handed, if any.
        let handler = tower::service_fn(|request: http::Request<()>| async move {
            let judged = request.extensions().get::<Judged>().copied();
            Ok::<_, std::convert::Infallible>(http::Response::new(format!("{judged:?}")))
        });
        let decide = |publisher: Option<&str>| {
            let mut request = http::Request::builder()
                .uri("http://x/cascade.decision.v1.BidIntake/Decide")
                .body(())
                .unwrap();
            if let Some(publisher) = publisher {
                let value = http::HeaderValue::from_str(publisher).unwrap();
                request.headers_mut().insert(PUBLISHER_HEADER, value);
            }
            request
        };
        let layer = |admission: Admission| {
            AdmissionLayer::new(admission, &[]).by_publisher(
                &["cascade.decision.v1.BidIntake"],
                || {
                    SHED_COUNTED.fetch_add(1, Ordering::Relaxed);
                },
            )
        };

        // Shedding everything: a named publisher is shed in front, and counted.
        let shedding = layer(pressed(1.0, true));
        let shed = (shedding.layer(handler))
            .oneshot(decide(Some("pub-1")))
            .await
            .unwrap();
        assert_eq!(shed.headers()["grpc-status"], "8");
        assert_eq!(SHED_COUNTED.load(Ordering::Relaxed), 1);
        // Without a name (or with one that cannot be an id) the handler judges it.
        for unnamed in [None, Some(""), Some("pub 1"), Some(&*"p".repeat(300))] {
            let passed = (shedding.layer(handler))
                .oneshot(decide(unnamed))
                .await
                .unwrap();
            assert_eq!(passed.body(), "None", "{unnamed:?}");
        }
        // Pressed but not shedding: the verdict travels with the call, judged once.
        let degraded = (layer(pressed(0.0, true)).layer(handler))
            .oneshot(decide(Some("pub-1")))
            .await
            .unwrap();
        assert_eq!(degraded.body(), "Some(Judged(Degrade))");
        let admitted = (layer(pressed(0.0, false)).layer(handler))
            .oneshot(decide(Some("pub-1")))
            .await
            .unwrap();
        assert_eq!(admitted.body(), "Some(Judged(Admit))");
        assert_eq!(SHED_COUNTED.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_runtime_too_busy_to_run_its_tasks_degrades_the_service() {
        let admission = Admission::start(&AdmissionSettings::default());
        assert_eq!(admission.uniform_verdict(), Verdict::Admit);
        for _ in 0..50 {
            // On this single-threaded runtime, work that holds the thread for 20 ms
            // makes every due task, the probe among them, wait as long.
            tokio::time::sleep(Duration::from_millis(1)).await;
            std::thread::sleep(Duration::from_millis(20));
            if admission.uniform_verdict() != Verdict::Admit {
                return;
            }
        }
        panic!("never degraded: {admission:?}");
    }
}
