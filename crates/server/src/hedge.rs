//! When to hedge an idempotent call: send a second copy to another instance once the
//! first has waited longer than nearly every call does, and take whichever answers first.
//!
//! A stopped instance (a paused process, a node frozen by the hypervisor, a long GC in a
//! sidecar) accepts calls and answers none: no error tells the client, and the HTTP/2
//! ping finds it only seconds later. Every call sent to it meanwhile would end at its
//! deadline. A hedge sent after the 95th percentile latency of the last second costs about
//! one extra call in twenty when all is well and turns those lost calls into answers a
//! few milliseconds late ("The Tail at Scale", Dean and Barroso).
//!
//! Hedges are capped at a fifth of the calls of the last two windows, so that a service
//! that is slow for everyone is not sent its load twice; without a second's worth of
//! samples (a fresh client, little traffic) nothing is hedged. A fifth, not a tenth: the
//! p95 hedges of a healthy service already spend a twentieth, and with a tenth the
//! headroom left when an instance vanished was sometimes too small to hedge the calls
//! stuck on it before it left the rotation (the fault test between hosts lost a decision
//! in one run of four; none in sixteen with a fifth).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// The window latencies are measured over; the hedge delay is that of the last full one.
const PERIOD: Duration = Duration::from_secs(1);
/// The latency quantile after which a call is hedged.
const QUANTILE: f64 = 0.95;
/// Fewer samples in a window than this say too little to hedge on.
const MIN_SAMPLES: u64 = 20;
/// Hedges allowed per call of the current window.
const MAX_HEDGE_SHARE: f64 = 0.2;
/// The least delay: below it, a hedge would race the first copy of nearly every call.
const MIN_DELAY: Duration = Duration::from_millis(1);
/// Latencies are recorded in microseconds, up to this (longer ones count as this).
const MAX_RECORDED: Duration = Duration::from_secs(60);

/// The hedging state of one channel; shared by its clones.
#[derive(Debug)]
pub struct Hedging {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    latencies: Histogram<u64>,
    calls: u64,
    hedges: u64,
    /// The previous window's counts: the cap on hedges spans both, so that it is not
    /// near zero at the start of every window.
    previous_calls: u64,
    previous_hedges: u64,
    /// The hedge delay measured over the previous window, if it had enough samples.
    delay: Option<Duration>,
}

impl Hedging {
    pub fn new(now: Instant) -> Self {
        Self {
            window: Mutex::new(Window {
                started: now,
                latencies: Histogram::new_with_max(MAX_RECORDED.as_micros() as u64, 2)
                    .expect("a valid histogram bound"),
                calls: 0,
                hedges: 0,
                previous_calls: 0,
                previous_hedges: 0,
                delay: None,
            }),
        }
    }

    /// A call starts: how long to wait before hedging it, or `None` not to hedge it.
    pub fn call_started(&self, now: Instant) -> Option<Duration> {
        let mut window = self.window.lock();
        window.roll(now);
        window.calls += 1;
        window.delay
    }

    /// The delay has passed without an answer: whether the hedge may go (it then counts).
    pub fn may_hedge(&self, now: Instant) -> bool {
        let mut window = self.window.lock();
        window.roll(now);
        let calls = window.calls + window.previous_calls;
        let hedges = window.hedges + window.previous_hedges;
        if (hedges as f64) < (calls as f64 * MAX_HEDGE_SHARE).max(1.0) {
            window.hedges += 1;
            true
        } else {
            false
        }
    }

    /// A copy of a call was answered, `latency` after it was sent.
    pub fn answered(&self, now: Instant, latency: Duration) {
        let mut window = self.window.lock();
        window.roll(now);
        let micros = latency.min(MAX_RECORDED).as_micros() as u64;
        window.latencies.saturating_record(micros);
    }
}

impl Window {
    /// Starts a new window once the current one is over. A window with too few samples
    /// keeps the delay measured before it: after a quiet spell, the last known latency
    /// is a better guess than none (and hedges stay capped whatever the delay).
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < PERIOD {
            return;
        }
        if self.latencies.len() >= MIN_SAMPLES {
            let quantile = self.latencies.value_at_quantile(QUANTILE);
            self.delay = Some(Duration::from_micros(quantile).max(MIN_DELAY));
        }
        let recent = elapsed < 2 * PERIOD;
        self.latencies.reset();
        self.previous_calls = if recent { self.calls } else { 0 };
        self.previous_hedges = if recent { self.hedges } else { 0 };
        self.calls = 0;
        self.hedges = 0;
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A window of `calls` answered calls, latencies 1..=calls ms, from `start`.
    fn fill(hedging: &Hedging, start: Instant, calls: u64) {
        for n in 1..=calls {
            hedging.call_started(start);
            hedging.answered(start, MS * n as u32);
        }
    }

    #[test]
    fn nothing_is_hedged_before_a_full_window_of_samples() {
        let start = Instant::now();
        let hedging = Hedging::new(start);
        assert_eq!(hedging.call_started(start), None);
        fill(&hedging, start, MIN_SAMPLES - 1);
        assert_eq!(hedging.call_started(start + PERIOD), None);
    }

    #[test]
    fn the_delay_is_the_last_windows_95th_percentile() {
        let start = Instant::now();
        let hedging = Hedging::new(start);
        fill(&hedging, start, 200);
        let delay = hedging.call_started(start + PERIOD).unwrap();
        // 95% of 1..=200 ms are at most 190 ms (two significant digits kept).
        assert!(delay >= MS * 189 && delay <= MS * 192, "{delay:?}");
    }

    #[test]
    fn a_fast_service_is_hedged_no_sooner_than_a_millisecond() {
        let start = Instant::now();
        let hedging = Hedging::new(start);
        for _ in 0..100 {
            hedging.call_started(start);
            hedging.answered(start, Duration::from_micros(80));
        }
        assert_eq!(hedging.call_started(start + PERIOD), Some(MIN_DELAY));
    }

    #[test]
    fn a_quiet_spell_keeps_the_last_delay() {
        let start = Instant::now();
        let hedging = Hedging::new(start);
        fill(&hedging, start, 100);
        let delay = hedging.call_started(start + PERIOD).unwrap();
        fill(&hedging, start + PERIOD, 3);
        assert_eq!(hedging.call_started(start + PERIOD * 5), Some(delay));
    }

    #[test]
    fn hedges_stay_under_a_fifth_of_calls() {
        let start = Instant::now();
        let hedging = Hedging::new(start);
        fill(&hedging, start, 100);
        let now = start + PERIOD;
        let mut hedged = 0;
        for _ in 0..200 {
            if hedging.call_started(now).is_some() && hedging.may_hedge(now) {
                hedged += 1;
            }
        }
        // The 100 calls of the window before count: 60 of the 300.
        assert_eq!(hedged, 60);
    }

    #[test]
    fn a_window_just_started_may_still_hedge_a_burst() {
        let start = Instant::now();
        let hedging = Hedging::new(start);
        fill(&hedging, start, 100);
        let now = start + PERIOD;
        let hedged = (0..5)
            .filter(|_| hedging.call_started(now).is_some() && hedging.may_hedge(now))
            .count();
        assert_eq!(hedged, 5);
    }
}
