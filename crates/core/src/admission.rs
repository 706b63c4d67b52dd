//! Admission under overload, as pure arithmetic: how hard a service is pressed, from how
//! long work waits to run, and which publishers' calls to shed so that one publisher's
//! spike cannot evict the others.
//!
//! Overload is measured as queueing delay — how late a task that is due actually runs —
//! and not as call latency: a 150 ms waterfall is a normal call, and a slow network makes
//! calls long without pressing the service at all. A queue grows only when work arrives
//! faster than the CPU can do it, whoever holds the CPU.

use std::time::Duration;

use rustc_hash::FxHashMap;

/// When a service degrades and when it sheds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionPolicy {
    /// Above this queueing delay, for `DEGRADE_AFTER` samples in a row, the service
    /// degrades (bid-intake stops calling networks and decides from the demand in hand).
    pub degrade_above: Duration,
    /// Above this one it sheds calls too, more of them the longer the delay stays above.
    pub shed_above: Duration,
    /// How long it stays degraded after the delay was last above `degrade_above`: enough
    /// that it does not flap between two ticks.
    pub degrade_hold: Duration,
}

/// How pressed the service is now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    pub degraded: bool,
    /// The share of calls to shed, 0 to 1.
    pub shed_probability: f64,
}

/// How fast the shed probability moves per second for a delay one `shed_above` off its
/// target (the integral term): at twice the target, +0.3 in 100 ms; with no queue at all,
/// from 0.9 back to 0 in 300 ms.
const SHED_GAIN_PER_SECOND: f64 = 3.0;

/// How much the shed probability moves at once when the delay moves by one `shed_above`
/// (the proportional term, PIE's β): it damps the integral term, which alone kept the
/// queue swinging between empty (the CPU idle) and twice its target around the right
/// probability instead of settling on it.
const PROPORTIONAL_GAIN: f64 = 0.1;

/// Samples whose least delay is the standing queue (CoDel's estimator): a queue the
/// service made persists through every sample, while a moment without CPU (a neighbour's
/// burst, the OS's scheduling) shows in one. Averaging instead counted such moments as
/// a queue shedding could never empty, and the probability wound up to shed nearly
/// everything.
const STANDING_SAMPLES: usize = 3;

/// Most the delay counts above its target, in targets: a long queue sheds fast through
/// the integral term, without one sample's jump throwing the probability to 1 at once.
const MAX_ERROR: f64 = 4.0;

/// Samples in a row above `degrade_above` before the service degrades: one slow moment
/// (a start, a page fault, a neighbour's burst) must not stop the networks being called.
pub const DEGRADE_AFTER: u32 = 5;

/// A proportional-integral controller on the queueing delay (the idea of PIE, RFC 8033,
/// applied to calls instead of packets): the shed probability rises while the delay is
/// above its target and falls while it is below, so that it settles where the calls
/// admitted are what the CPU can do.
#[derive(Clone, Debug)]
pub struct Controller {
    policy: AdmissionPolicy,
    /// The last `STANDING_SAMPLES` samples, in seconds, the newest at `next - 1`.
    recent: [f64; STANDING_SAMPLES],
    next: usize,
    /// The standing queue's delay: the least of `recent`.
    standing_secs: f64,
    /// The error of the previous sample, for the proportional term.
    last_error: f64,
    shed_probability: f64,
    degraded_for: Duration,
    /// Samples in a row above `degrade_above`.
    above: u32,
}

impl Controller {
    pub fn new(policy: AdmissionPolicy) -> Self {
        Self {
            policy,
            recent: [0.0; STANDING_SAMPLES],
            next: 0,
            standing_secs: 0.0,
            last_error: 0.0,
            shed_probability: 0.0,
            degraded_for: Duration::ZERO,
            above: 0,
        }
    }

    /// One sample of the queueing delay, `since_last` after the previous one.
    pub fn observe(&mut self, queue_delay: Duration, since_last: Duration) -> Pressure {
        self.recent[self.next] = queue_delay.as_secs_f64();
        self.next = (self.next + 1) % STANDING_SAMPLES;
        self.standing_secs = self.recent.iter().copied().fold(f64::INFINITY, f64::min);
        let degrade_above = self.policy.degrade_above.as_secs_f64();
        // Samples themselves, not the standing delay: degrading is cheap and undone
        // soon, and five samples in a row above are already a persisting queue.
        self.above = if queue_delay.as_secs_f64() > degrade_above {
            self.above.saturating_add(1)
        } else {
            0
        };
        // A standing queue above the shed target is no burst: it persisted through every
        // sample of the estimator, so waiting out the degrade's patience only lets it grow.
        let standing_above_shed = self.standing_secs > self.policy.shed_above.as_secs_f64();
        if self.above >= DEGRADE_AFTER || standing_above_shed {
            self.degraded_for = self.policy.degrade_hold;
        } else {
            self.degraded_for = self.degraded_for.saturating_sub(since_last);
        }
        let target = self.policy.shed_above.as_secs_f64().max(1e-6);
        // Below the target the error is at least -1: the probability falls at a bounded
        // pace, so a queue that empties for a tick does not open the gates at once.
        let error = ((self.standing_secs - target) / target).clamp(-1.0, MAX_ERROR);
        let change = error - self.last_error;
        self.last_error = error;
        // A burst shorter than the degrade's patience sheds nothing (PIE's burst
        // allowance): shedding starts only once the service is degraded.
        if self.shed_probability == 0.0 && self.degraded_for.is_zero() {
            return self.pressure();
        }
        // PI in velocity form: the integral term moves the probability while the delay
        // is off its target, the proportional one as the delay moves.
        self.shed_probability = (self.shed_probability
            + SHED_GAIN_PER_SECOND * error * since_last.as_secs_f64()
            + PROPORTIONAL_GAIN * change)
            .clamp(0.0, 1.0);
        self.pressure()
    }

    pub fn pressure(&self) -> Pressure {
        Pressure {
            // Shedding without degrading would throw away calls that a cheaper decision
            // could still serve.
            degraded: !self.degraded_for.is_zero() || self.shed_probability > 0.0,
            shed_probability: self.shed_probability,
        }
    }

    /// The standing queue's delay: the least of the last few samples.
    pub fn queue_delay(&self) -> Duration {
        Duration::from_secs_f64(self.standing_secs.max(0.0))
    }
}

/// The max-min fair share of `capacity` among demands `rates` (all in the same unit):
/// the level `share` at which every demand admits `min(rate, share)` and the admitted sum
/// is `capacity`. Infinite when everything fits.
pub fn fair_share(rates: &[f64], capacity: f64) -> f64 {
    let mut sorted: Vec<f64> = rates.iter().copied().filter(|r| *r > 0.0).collect();
    sorted.sort_by(f64::total_cmp);
    let mut left = capacity.max(0.0);
    for (index, rate) in sorted.iter().enumerate() {
        let sharing = (sorted.len() - index) as f64;
        if rate * sharing > left {
            return left / sharing;
        }
        left -= rate;
    }
    f64::INFINITY
}

/// The share of a demand's calls to shed so that it admits at most `share`.
pub fn shed_share(rate: f64, share: f64) -> f64 {
    if rate <= share || rate <= 0.0 {
        0.0
    } else {
        1.0 - share / rate
    }
}

/// Publishers' arrival rates, and the share of each one's calls to shed when the service
/// must shed a given share of all calls: the heaviest are cut to a fair share first, and
/// a publisher below it loses nothing.
#[derive(Clone, Debug)]
pub struct FairShedding {
    publishers: FxHashMap<Box<str>, Tracked>,
    /// Most publishers tracked one by one; the rest share one entry.
    limit: usize,
    /// Whether any publisher is being shed.
    shedding: bool,
    /// The overall share being shed, for publishers not tracked yet.
    overall: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Tracked {
    arrivals: u32,
    /// Calls per second, smoothed over a few updates.
    rate: f64,
    shed: f64,
}

/// The entry that publishers beyond the limit share.
const OTHERS: &str = "";

/// The weight of the latest window in a publisher's smoothed rate.
const RATE_SMOOTHING: f64 = 0.2;

/// Below this many calls a second a publisher is forgotten.
const IDLE_RATE: f64 = 0.5;

impl FairShedding {
    pub fn new(limit: usize) -> Self {
        Self {
            publishers: FxHashMap::default(),
            limit: limit.max(1),
            shedding: false,
            overall: 0.0,
        }
    }

    /// Counts a call from `publisher` and says whether to shed it, `uniform` being a
    /// random number in [0, 1).
    pub fn arrive(&mut self, publisher: &str, uniform: f64) -> bool {
        let tracked = if let Some(tracked) = self.publishers.get_mut(publisher) {
            tracked
        } else if self.publishers.len() < self.limit {
            self.publishers.entry(publisher.into()).or_insert(Tracked {
                shed: self.overall,
                ..Tracked::default()
            })
        } else {
            self.publishers.entry(OTHERS.into()).or_insert(Tracked {
                shed: self.overall,
                ..Tracked::default()
            })
        };
        tracked.arrivals = tracked.arrivals.saturating_add(1);
        self.shedding && uniform < tracked.shed
    }

    /// Closes a window of `window` length: each publisher's rate from its arrivals, and
    /// each one's shed share for shedding `shed_probability` of all calls.
    pub fn update(&mut self, window: Duration, shed_probability: f64) {
        let secs = window.as_secs_f64().max(1e-3);
        self.publishers.retain(|_, tracked| {
            let observed = f64::from(tracked.arrivals) / secs;
            tracked.rate += RATE_SMOOTHING * (observed - tracked.rate);
            tracked.arrivals = 0;
            tracked.rate >= IDLE_RATE
        });
        self.overall = shed_probability;
        self.shedding = shed_probability > 0.0;
        if !self.shedding {
            return;
        }
        let rates: Vec<f64> = self.publishers.values().map(|t| t.rate).collect();
        let total: f64 = rates.iter().sum();
        let share = fair_share(&rates, total * (1.0 - shed_probability));
        for tracked in self.publishers.values_mut() {
            tracked.shed = shed_share(tracked.rate, share);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TICK: Duration = Duration::from_millis(10);

    fn policy() -> AdmissionPolicy {
        AdmissionPolicy {
            degrade_above: Duration::from_millis(2),
            shed_above: Duration::from_millis(10),
            degrade_hold: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_short_queue_neither_degrades_nor_sheds() {
        let mut controller = Controller::new(policy());
        for _ in 0..1_000 {
            let pressure = controller.observe(Duration::from_micros(500), TICK);
            assert_eq!(pressure, Pressure::default());
        }
    }

    #[test]
    fn it_degrades_before_it_sheds_and_sheds_more_the_longer_the_queue_stays_long() {
        let mut controller = Controller::new(policy());
        for _ in 0..DEGRADE_AFTER + 2 {
            controller.observe(Duration::from_millis(6), TICK);
        }
        let pressure = controller.pressure();
        assert!(pressure.degraded);
        assert_eq!(pressure.shed_probability, 0.0);
        let mut last = 0.0;
        for _ in 0..20 {
            let pressure = controller.observe(Duration::from_millis(40), TICK);
            assert!(pressure.degraded);
            assert!(pressure.shed_probability >= last);
            last = pressure.shed_probability;
        }
        assert!(last > 0.5, "{last}");
    }

    #[test]
    fn one_slow_moment_does_not_degrade() {
        let mut controller = Controller::new(policy());
        for _ in 0..100 {
            controller.observe(Duration::from_micros(200), TICK);
        }
        let pressure = controller.observe(Duration::from_millis(30), TICK);
        assert!(!pressure.degraded);
        for _ in 0..20 {
            let pressure = controller.observe(Duration::from_micros(200), TICK);
            assert!(!pressure.degraded, "{pressure:?}");
        }
    }

    #[test]
    fn once_the_queue_is_gone_it_recovers_within_two_seconds() {
        let mut controller = Controller::new(policy());
        for _ in 0..100 {
            controller.observe(Duration::from_millis(200), TICK);
        }
        assert_eq!(controller.pressure().shed_probability, 1.0);
        let mut recovered_after = None;
        for tick in 1..=300 {
            if controller.observe(Duration::ZERO, TICK) == Pressure::default() {
                recovered_after = Some(TICK * tick);
                break;
            }
        }
        let recovered_after = recovered_after.expect("never recovered");
        assert!(
            recovered_after <= Duration::from_secs(2),
            "{recovered_after:?}"
        );
    }

    #[test]
    fn under_a_steady_overload_the_probability_settles_where_the_queue_meets_its_target() {
        // A queue that grows with what is admitted beyond a capacity of 1,000 calls a
        // second, at 3,000 arriving.
        let mut controller = Controller::new(policy());
        let (arriving, capacity) = (3_000.0, 1_000.0);
        let mut backlog: f64 = 0.0;
        let mut admitted_late = Vec::new();
        for tick in 0..1_000 {
            let p = controller.pressure().shed_probability;
            let admitted = arriving * (1.0 - p) * TICK.as_secs_f64();
            backlog = (backlog + admitted - capacity * TICK.as_secs_f64()).max(0.0);
            let delay = Duration::from_secs_f64(backlog / capacity);
            controller.observe(delay, TICK);
            if tick >= 500 {
                admitted_late.push(arriving * (1.0 - p));
            }
        }
        let mean = admitted_late.iter().sum::<f64>() / admitted_late.len() as f64;
        assert!((900.0..=1_100.0).contains(&mean), "{mean}");
        assert!(controller.queue_delay() < Duration::from_millis(30));
    }

    /// A service of `capacity` calls a second with `arriving` a second, in 10 ms ticks for
    /// `seconds`: its queue grows by what is admitted beyond its capacity, and each
    /// sample of the delay adds `starved(tick)` seconds of a CPU taken by someone else
    /// (which no shedding empties). Returns the calls served within a 250 ms deadline per
    /// second of capacity, over the last half, and the range the probability took there.
    fn overload(
        arriving: f64,
        capacity: f64,
        seconds: u32,
        starved: impl Fn(u32) -> f64,
    ) -> (f64, f64, f64) {
        let mut controller = Controller::new(AdmissionPolicy {
            degrade_above: Duration::from_millis(5),
            shed_above: Duration::from_millis(10),
            degrade_hold: Duration::from_millis(250),
        });
        let ticks = seconds * 100;
        let per_tick = TICK.as_secs_f64();
        let (mut backlog, mut served_in_time) = (0.0_f64, 0.0);
        let (mut lowest, mut highest) = (1.0_f64, 0.0_f64);
        for tick in 0..ticks {
            let p = controller.pressure().shed_probability;
            let admitted = arriving * (1.0 - p) * per_tick;
            let served = (backlog + admitted).min(capacity * per_tick);
            backlog += admitted - served;
            let delay = backlog / capacity;
            if tick >= ticks / 2 {
                if delay < 0.25 {
                    served_in_time += served;
                }
                lowest = lowest.min(p);
                highest = highest.max(p);
            }
            controller.observe(Duration::from_secs_f64(delay + starved(tick)), TICK);
        }
        let goodput = served_in_time / (capacity * f64::from(seconds) / 2.0);
        (goodput, lowest, highest)
    }

    /// Uniform in [0, 1), the same for the same tick.
    fn noise(tick: u32) -> f64 {
        let z = u64::from(tick).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn at_three_times_its_capacity_it_settles_instead_of_swinging() {
        // The integral term alone swung between 0.55 and 0.84 here, the queue emptying
        // (the CPU idle) on every swing: a goodput of 0.93.
        let (goodput, lowest, highest) = overload(4_800.0, 1_600.0, 10, |_| 0.0);
        assert!(goodput > 0.99, "{goodput}");
        assert!(
            (0.65..=0.69).contains(&lowest) && (0.65..=0.69).contains(&highest),
            "{lowest}..{highest}"
        );
    }

    #[test]
    fn moments_without_cpu_are_not_a_queue_it_could_empty() {
        // Each sample up to 20 ms late for want of CPU, 10 ms on average: the target
        // itself. An averaged delay read that as a queue and shed nearly everything (a
        // goodput of 0.11).
        let (goodput, _, highest) = overload(4_800.0, 1_600.0, 10, |tick| 0.02 * noise(tick));
        assert!(goodput > 0.95, "{goodput}");
        assert!(highest < 0.9, "{highest}");
        // No overload, only the starvation: nothing is shed.
        let (goodput, _, highest) = overload(800.0, 1_600.0, 10, |tick| 0.02 * noise(tick));
        assert!(goodput > 0.49, "{goodput}");
        assert_eq!(highest, 0.0);
    }

    #[test]
    fn a_spike_from_idle_is_brought_under_control_at_once() {
        // Three times the capacity from one tick to the next: each tick without shedding
        // adds 20 ms of queue. Waiting out the degrade's patience (50 ms of samples)
        // let the queue reach 132 ms before the shedding caught up.
        let mut controller = Controller::new(AdmissionPolicy {
            degrade_above: Duration::from_millis(5),
            shed_above: Duration::from_millis(10),
            degrade_hold: Duration::from_millis(250),
        });
        let (arriving, capacity) = (6_600.0, 2_200.0);
        let per_tick = TICK.as_secs_f64();
        let (mut backlog, mut worst) = (0.0_f64, 0.0_f64);
        for _ in 0..300 {
            let p = controller.pressure().shed_probability;
            let admitted = arriving * (1.0 - p) * per_tick;
            backlog += admitted - (backlog + admitted).min(capacity * per_tick);
            let delay = backlog / capacity;
            worst = worst.max(delay);
            controller.observe(Duration::from_secs_f64(delay), TICK);
        }
        assert!(worst < 0.1, "the queue reached {:.0} ms", worst * 1e3);
        assert!(controller.queue_delay() < Duration::from_millis(15));
    }

    #[test]
    fn the_fair_share_cuts_the_heaviest_first() {
        let share = fair_share(&[900.0, 50.0, 50.0], 300.0);
        assert!((share - 200.0).abs() < 1e-9, "{share}");
        assert!((shed_share(900.0, share) - (1.0 - 200.0 / 900.0)).abs() < 1e-9);
        assert_eq!(shed_share(50.0, share), 0.0);
        assert_eq!(fair_share(&[10.0, 20.0], 100.0), f64::INFINITY);
    }

    #[test]
    fn a_spiking_publisher_is_shed_and_the_quiet_ones_are_not() {
        let mut fair = FairShedding::new(100);
        let mut uniform = 0.0_f64;
        let mut next = || {
            uniform = (uniform + 0.618_033_988_749_895) % 1.0;
            uniform
        };
        let mut shed = FxHashMap::<&str, (u32, u32)>::default();
        for window in 0..50 {
            for call in 0..100 {
                let publisher = if call < 90 {
                    "spiking"
                } else if call % 2 == 0 {
                    "a"
                } else {
                    "b"
                };
                let was_shed = fair.arrive(publisher, next());
                if window >= 10 {
                    let entry = shed.entry(publisher).or_default();
                    entry.0 += 1;
                    entry.1 += u32::from(was_shed);
                }
            }
            fair.update(Duration::from_millis(100), 0.5);
        }
        assert_eq!(shed["a"].1, 0);
        assert_eq!(shed["b"].1, 0);
        let spiking = f64::from(shed["spiking"].1) / f64::from(shed["spiking"].0);
        // Half of all calls is 50 of every 100: all from the spiking publisher's 90.
        assert!((spiking - 50.0 / 90.0).abs() < 0.05, "{spiking}");
    }

    #[test]
    fn publishers_beyond_the_limit_share_one_entry() {
        let mut fair = FairShedding::new(2);
        for publisher in ["a", "b", "c", "d"] {
            fair.arrive(publisher, 0.5);
        }
        assert_eq!(fair.publishers.len(), 3);
        assert!(fair.publishers.contains_key(OTHERS));
    }

    proptest! {
        #[test]
        fn the_fair_share_admits_the_capacity_and_never_favours_the_heavy(
            rates in proptest::collection::vec(0.0_f64..10_000.0, 1..40),
            fraction in 0.0_f64..1.0,
        ) {
            let total: f64 = rates.iter().sum();
            let capacity = total * fraction;
            let share = fair_share(&rates, capacity);
            let admitted: Vec<f64> = rates.iter().map(|r| r * (1.0 - shed_share(*r, share))).collect();
            let sum: f64 = admitted.iter().sum();
            prop_assert!((sum - capacity).abs() <= 1e-6 * total.max(1.0), "{sum} vs {capacity}");
            for (i, a) in rates.iter().enumerate() {
                for (j, b) in rates.iter().enumerate() {
                    if a <= b {
                        // A lighter publisher keeps all it sends or as much as any heavier one.
                        prop_assert!(admitted[i] >= a.min(admitted[j]) - 1e-9);
                        prop_assert!(admitted[i] <= admitted[j] + 1e-9);
                    }
                }
            }
        }

        #[test]
        fn the_shed_probability_stays_a_probability(
            delays in proptest::collection::vec(0_u64..1_000_000, 1..200),
        ) {
            let mut controller = Controller::new(policy());
            for micros in delays {
                let pressure = controller.observe(Duration::from_micros(micros), TICK);
                prop_assert!((0.0..=1.0).contains(&pressure.shed_probability));
                prop_assert!(pressure.shed_probability == 0.0 || pressure.degraded);
            }
        }
    }
}
