//! How each network has been doing, so the waterfall can skip one before wasting the
//! deadline on it: a circuit breaker, a window of recent latencies, and a limit on calls
//! in flight. One [`NetworkHealth`] per network, shared by every decision.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures (timeouts, errors) that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker rejects calls before letting one probe through.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is in flight; its result closes or reopens the breaker.
    HalfOpen,
}

/// A circuit breaker: closed, it counts consecutive failures; open, it rejects calls
/// until `open_for` has passed; then it lets one probe through (half-open), and the
/// probe's success closes it while its failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the half-open probe.
    Probe,
    Rejected,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: BreakerState::Closed {
                consecutive_failures: 0,
            },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Admission::Probe
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => Admission::Rejected,
        }
    }

    pub fn record(&mut self, success: bool, now: Instant) {
        self.state = match (self.state, success) {
            (_, true) => BreakerState::Closed {
                consecutive_failures: 0,
            },
            (
                BreakerState::Closed {
                    consecutive_failures,
                },
                false,
            ) if consecutive_failures + 1 < self.policy.failures_to_open => BreakerState::Closed {
                consecutive_failures: consecutive_failures + 1,
            },
            (_, false) => BreakerState::Open {
                until: now + self.policy.open_for,
            },
        };
    }
}

/// The last `capacity` call latencies of a network.
#[derive(Debug)]
pub struct LatencyWindow {
    capacity: usize,
    samples: VecDeque<Duration>,
}

impl LatencyWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            samples: VecDeque::with_capacity(capacity.max(1)),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(latency);
    }

    /// The 90th percentile of the window, once it holds at least `min_samples`.
    pub fn p90(&self, min_samples: usize) -> Option<Duration> {
        if self.samples.len() < min_samples.max(1) {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (sorted.len() * 9).div_ceil(10).saturating_sub(1);
        sorted.get(rank).copied()
    }
}

/// Latency samples a network needs before its p90 is trusted for skipping.
const MIN_LATENCY_SAMPLES: usize = 10;
const LATENCY_WINDOW: usize = 100;

/// Why a network is not called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    BreakerOpen,
    AtConcurrencyLimit(usize),
    TooSlow { p90: Duration, remaining: Duration },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::BreakerOpen => f.write_str("circuit breaker open"),
            Skip::AtConcurrencyLimit(limit) => write!(f, "{limit} calls already in flight"),
            Skip::TooSlow { p90, remaining } => write!(
                f,
                "recent p90 latency {} ms exceeds the {} ms left",
                p90.as_millis(),
                remaining.as_millis()
            ),
        }
    }
}

/// One network's breaker, latencies and in-flight limit.
#[derive(Debug)]
pub struct NetworkHealth {
    breaker: Mutex<CircuitBreaker>,
    latencies: Mutex<LatencyWindow>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

/// Permission to call a network; report the call's result through it. A permit dropped
/// unfinished (the call was cancelled) counts as a failure, so a half-open breaker is
/// never left waiting for a probe that will not report.
#[derive(Debug)]
pub struct CallPermit<'a> {
    health: &'a NetworkHealth,
    finished: bool,
    _slot: OwnedSemaphorePermit,
}

impl CallPermit<'_> {
    /// `success` is false for a timeout or an error; a no fill is a success (the
    /// network answered).
    pub fn finish(mut self, success: bool, latency: Duration) {
        self.finished = true;
        self.health.breaker.lock().record(success, Instant::now());
        self.health.latencies.lock().record(latency);
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.health.breaker.lock().record(false, Instant::now());
        }
    }
}

impl NetworkHealth {
    pub fn new(policy: BreakerPolicy, max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            breaker: Mutex::new(CircuitBreaker::new(policy)),
            latencies: Mutex::new(LatencyWindow::new(LATENCY_WINDOW)),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// Asks to call the network with `remaining` of the deadline left.
    pub fn try_call(&self, remaining: Duration) -> Result<CallPermit<'_>, Skip> {
        if let Some(p90) = self.latencies.lock().p90(MIN_LATENCY_SAMPLES)
            && p90 > remaining
        {
            return Err(Skip::TooSlow { p90, remaining });
        }
        let slot = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Skip::AtConcurrencyLimit(self.max_in_flight))?;
        match self.breaker.lock().admit(Instant::now()) {
            Admission::Allowed | Admission::Probe => Ok(CallPermit {
                health: self,
                finished: false,
                _slot: slot,
            }),
            Admission::Rejected => Err(Skip::BreakerOpen),
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let policy = BreakerPolicy {
            failures_to_open: 3,
            open_for: Duration::from_secs(5),
        };
        let mut breaker = CircuitBreaker::new(policy);
        let start = Instant::now();
        for _ in 0..2 {
            assert_eq!(breaker.admit(start), Admission::Allowed);
            breaker.record(false, start);
        }
        breaker.record(true, start);
        assert_eq!(
            breaker.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        for _ in 0..3 {
            breaker.record(false, start);
        }
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
        assert_eq!(
            breaker.admit(start + Duration::from_secs(1)),
            Admission::Rejected
        );

        let later = start + Duration::from_secs(6);
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert_eq!(
            breaker.admit(later),
            Admission::Rejected,
            "one probe at a time"
        );
        breaker.record(false, later);
        assert!(matches!(breaker.state(), BreakerState::Open { until } if until > later));

        let much_later = later + Duration::from_secs(6);
        assert_eq!(breaker.admit(much_later), Admission::Probe);
        breaker.record(true, much_later);
        assert_eq!(breaker.admit(much_later), Admission::Allowed);
    }

    #[test]
    fn p90_needs_enough_samples() {
        let mut window = LatencyWindow::new(100);
        for ms in 1..=9 {
            window.record(Duration::from_millis(ms));
        }
        assert_eq!(window.p90(10), None);
        window.record(Duration::from_millis(10));
        assert_eq!(window.p90(10), Some(Duration::from_millis(9)));
        for _ in 0..100 {
            window.record(Duration::from_millis(200));
        }
        assert_eq!(window.p90(10), Some(Duration::from_millis(200)));
    }

    #[tokio::test]
    async fn calls_beyond_the_limit_or_slower_than_the_deadline_are_skipped() {
        let health = NetworkHealth::new(BreakerPolicy::default(), 1);
        let permit = health.try_call(Duration::from_millis(100)).unwrap();
        assert_eq!(
            health.try_call(Duration::from_millis(100)).unwrap_err(),
            Skip::AtConcurrencyLimit(1)
        );
        permit.finish(true, Duration::from_millis(80));
        for _ in 0..20 {
            health
                .try_call(Duration::from_millis(100))
                .unwrap()
                .finish(true, Duration::from_millis(80));
        }
        assert!(matches!(
            health.try_call(Duration::from_millis(50)),
            Err(Skip::TooSlow { .. })
        ));
        assert!(health.try_call(Duration::from_millis(100)).is_ok());
    }
}
