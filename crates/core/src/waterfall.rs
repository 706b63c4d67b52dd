//! The waterfall walk: a state machine over one impression's ranked candidates that
//! says what to do next — serve the demand in hand, call a network with its floor and
//! timeout, or skip it with a reason — and the judgement of what a network answered.
//!
//! The services do the I/O; every rule of the walk (the call cap, the time a call may
//! take, what an answer must meet to serve) is here.

use std::fmt;
use std::time::Duration;

use crate::ad_quality::{AdQuality, Creative, Refusal};
use crate::money::{Factor, Micros};

/// The floor a network is sent and held to: what its place in the waterfall promises,
/// max(its mediated CPM, the applicable floor). The floor is grossed up by the
/// network's bid adjustment, so that an answer at the floor still meets the floor once
/// adjusted.
pub fn network_floor(cpm: Micros, floor: Micros, adjustment: Factor) -> Micros {
    cpm.max(adjustment.gross_up(floor))
}

/// One step of the ranked list, as the walk sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// Demand in hand (an exchange bid, a live bid, a line item, a chained outcome):
    /// it serves without a call.
    InHand,
    /// A waterfall network, with its own timeout.
    Network { timeout: Duration },
    /// A network that cannot be called at all (not configured, or the service that
    /// calls networks cannot be reached).
    Unreachable,
}

/// What bounds a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// Most networks one impression's walk calls.
    pub max_calls: usize,
    /// Time kept back from every call to answer the caller once it returns.
    pub answer_reserve: Duration,
    /// A call that could wait less than this is not made: it could not be answered.
    pub min_call: Duration,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_calls: 5,
            answer_reserve: Duration::from_millis(5),
            min_call: Duration::from_millis(5),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The walk already made `max_calls` calls.
    CallCap(usize),
    /// What is left of the deadline, less the answer reserve, is under the minimum call.
    OutOfTime,
    Unreachable,
}

impl SkipReason {
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::CallCap(_) => "call_cap",
            SkipReason::OutOfTime => "deadline",
            SkipReason::Unreachable => "unreachable",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::CallCap(cap) => write!(f, "waterfall cap of {cap} network calls reached"),
            SkipReason::OutOfTime => f.write_str("deadline exceeded: no time left for a call"),
            SkipReason::Unreachable => f.write_str("the network cannot be called"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Serve the candidate at this index; the walk is over.
    Serve(usize),
    /// Call the network at this index, waiting at most `timeout`; then report the
    /// result with [`Walk::called`] (or nothing, if a guard refused the call).
    Call {
        index: usize,
        timeout: Duration,
    },
    Skip {
        index: usize,
        reason: SkipReason,
    },
    /// Nothing left to try.
    Exhausted,
}

/// Where a walk stands.
#[derive(Clone, Debug)]
pub struct Walk {
    limits: WalkLimits,
    next: usize,
    calls: usize,
    out_of_time: bool,
    served: bool,
}

impl Walk {
    pub fn new(limits: WalkLimits) -> Self {
        Self {
            limits,
            next: 0,
            calls: 0,
            out_of_time: false,
            served: false,
        }
    }

    /// The next step over `nodes` with `remaining` left of the deadline. Time running
    /// out ends calls, not the walk: demand in hand further down still serves.
    pub fn step(&mut self, nodes: &[Node], remaining: Duration) -> Step {
        if self.served {
            return Step::Exhausted;
        }
        let Some(node) = nodes.get(self.next) else {
            return Step::Exhausted;
        };
        let index = self.next;
        self.next += 1;
        match *node {
            Node::InHand => {
                self.served = true;
                Step::Serve(index)
            }
            Node::Unreachable => Step::Skip {
                index,
                reason: SkipReason::Unreachable,
            },
            Node::Network { timeout } => {
                if self.calls >= self.limits.max_calls {
                    return Step::Skip {
                        index,
                        reason: SkipReason::CallCap(self.limits.max_calls),
                    };
                }
                let timeout = timeout.min(remaining.saturating_sub(self.limits.answer_reserve));
                if timeout < self.limits.min_call || timeout.is_zero() {
                    self.out_of_time = true;
                    return Step::Skip {
                        index,
                        reason: SkipReason::OutOfTime,
                    };
                }
                Step::Call { index, timeout }
            }
        }
    }

    /// A call was made (whatever it returned); it counts toward the cap.
    pub fn called(&mut self) {
        self.calls += 1;
    }

    /// The call at the last step filled: the walk is over.
    pub fn filled(&mut self) {
        self.served = true;
    }

    /// Whether some network was skipped for lack of time.
    pub fn ran_out_of_time(&self) -> bool {
        self.out_of_time
    }
}

/// What a network answered with an ad.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// The price it stated, converted to USD micros; `None` when it stated none.
    pub price: Option<Micros>,
    pub creative: Creative<'a>,
}

/// Whether a network's answer may serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It serves, booked at this price (USD micros, before the network's adjustment):
    /// its own price, or the floor it was sent when it stated none.
    Accept { price: Micros },
    /// Its price is under the floor it was sent: that network's no fill.
    BelowFloor { price: Micros, floor: Micros },
    /// It fails an ad-quality filter: that network's no fill, counted as blocked.
    Refused(Refusal),
}

impl Verdict {
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Accept { .. } => "accepted",
            Verdict::BelowFloor { .. } => "below_floor",
            Verdict::Refused(_) => "blocked_ad",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept { price } => write!(f, "answered {price}"),
            Verdict::BelowFloor { price, floor } => {
                write!(
                    f,
                    "answered {price}, below the floor of {floor} it was sent"
                )
            }
            Verdict::Refused(refusal) => write!(f, "blocked ad: {refusal}"),
        }
    }
}

/// Judges a network's answer against the floor it was sent (USD micros) and the
/// impression's ad-quality filters. The same rule for a bidding network's live bid and
/// a waterfall network's ad.
pub fn judge(answer: &Answer<'_>, floor: Micros, quality: &AdQuality<'_>) -> Verdict {
    if let Some(refusal) = quality.check(&answer.creative) {
        return Verdict::Refused(refusal);
    }
    match answer.price {
        Some(price) if price < floor => Verdict::BelowFloor { price, floor },
        Some(price) => Verdict::Accept { price },
        None => Verdict::Accept { price: floor },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn walk_all(nodes: &[Node], remaining: Duration, fills: &[bool]) -> (Vec<Step>, Walk) {
        let mut walk = Walk::new(WalkLimits::default());
        let mut steps = Vec::new();
        loop {
            let step = walk.step(nodes, remaining);
            if step == Step::Exhausted {
                break;
            }
            if let Step::Call { index, .. } = step {
                walk.called();
                if fills.get(index).copied().unwrap_or(false) {
                    walk.filled();
                }
            }
            steps.push(step);
        }
        (steps, walk)
    }

    #[test]
    fn demand_in_hand_below_serves_when_time_runs_out() {
        let nodes = [
            Node::Network { timeout: 150 * MS },
            Node::InHand,
            Node::InHand,
        ];
        let (steps, walk) = walk_all(&nodes, 4 * MS, &[]);
        assert_eq!(
            steps,
            [
                Step::Skip {
                    index: 0,
                    reason: SkipReason::OutOfTime
                },
                Step::Serve(1)
            ]
        );
        assert!(walk.ran_out_of_time());
    }

    #[test]
    fn a_call_waits_its_timeout_bounded_by_what_is_left_less_the_reserve() {
        let nodes = [Node::Network { timeout: 150 * MS }];
        let (steps, _) = walk_all(&nodes, 100 * MS, &[]);
        assert_eq!(
            steps,
            [Step::Call {
                index: 0,
                timeout: 95 * MS
            }]
        );
    }

    #[test]
    fn the_cap_skips_networks_but_not_demand_in_hand() {
        let network = Node::Network { timeout: 10 * MS };
        let mut nodes = vec![network; 7];
        nodes.push(Node::InHand);
        let (steps, _) = walk_all(&nodes, Duration::from_secs(1), &[]);
        let calls = steps
            .iter()
            .filter(|s| matches!(s, Step::Call { .. }))
            .count();
        assert_eq!(calls, 5);
        assert_eq!(steps.last(), Some(&Step::Serve(7)));
    }

    #[test]
    fn answers_are_judged_on_quality_then_floor() {
        let blocked = vec!["bad.example".to_string()];
        let quality = AdQuality {
            blocked_adomains: &blocked,
            ..Default::default()
        };
        let domains = vec!["ads.bad.example".to_string()];
        let answer = Answer {
            price: Some(Micros(5_000_000)),
            creative: Creative {
                adomains: &domains,
                ..Default::default()
            },
        };
        assert_eq!(
            judge(&answer, Micros(2_000_000), &quality).code(),
            "blocked_ad"
        );
        let cheap = Answer {
            price: Some(Micros(10_000)),
            creative: Creative::default(),
        };
        assert_eq!(
            judge(&cheap, Micros(2_000_000), &quality),
            Verdict::BelowFloor {
                price: Micros(10_000),
                floor: Micros(2_000_000)
            }
        );
        let silent = Answer {
            price: None,
            creative: Creative::default(),
        };
        assert_eq!(
            judge(&silent, Micros(2_000_000), &quality),
            Verdict::Accept {
                price: Micros(2_000_000)
            }
        );
    }

    #[test]
    fn the_floor_sent_is_grossed_up_by_the_adjustment() {
        // A network known to pay 80% of what it says: $1.00 floor -> asked for $1.25.
        let floor = network_floor(Micros(500_000), Micros(1_000_000), Factor(800_000));
        assert_eq!(floor, Micros(1_250_000));
        assert!(Factor(800_000).apply(floor) >= Micros(1_000_000));
        assert_eq!(
            network_floor(Micros(2_000_000), Micros(1_000_000), Factor::ONE),
            Micros(2_000_000)
        );
    }

    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![
            Just(Node::InHand),
            Just(Node::Unreachable),
            (0..400u64).prop_map(|ms| Node::Network {
                timeout: Duration::from_millis(ms)
            }),
        ]
    }

    proptest! {
        /// The walk never plans a call past the deadline (less the reserve), never
        /// calls more than the cap, serves the first demand in hand that no filled call
        /// precedes, and visits every node at most once, in order.
        #[test]
        fn the_walk_keeps_to_the_deadline_and_serves_what_is_in_hand(
            nodes in prop::collection::vec(node(), 0..20),
            remaining_ms in 0..300u64,
            fills in prop::collection::vec(any::<bool>(), 20),
        ) {
            let remaining = Duration::from_millis(remaining_ms);
            let limits = WalkLimits::default();
            let (steps, _) = walk_all(&nodes, remaining, &fills);
            let mut last_index = None;
            let mut calls = 0;
            let mut filled_call = false;
            for step in &steps {
                let index = match step {
                    Step::Serve(i) | Step::Call { index: i, .. } | Step::Skip { index: i, .. } => *i,
                    Step::Exhausted => unreachable!(),
                };
                prop_assert!(last_index.is_none_or(|last| index > last));
                last_index = Some(index);
                match step {
                    Step::Call { timeout, .. } => {
                        calls += 1;
                        prop_assert!(*timeout + limits.answer_reserve <= remaining);
                        prop_assert!(*timeout >= limits.min_call);
                        filled_call |= fills[index];
                    }
                    Step::Serve(i) => {
                        prop_assert_eq!(nodes[*i], Node::InHand);
                        prop_assert!(!filled_call);
                    }
                    _ => {}
                }
            }
            prop_assert!(calls <= limits.max_calls);
            // When no call filled, the first demand in hand serves, whatever the time.
            if !filled_call && let Some(first) = nodes.iter().position(|n| *n == Node::InHand) {
                prop_assert_eq!(steps.last(), Some(&Step::Serve(first)));
            }
        }

        /// Whatever a network answers, an accepted answer meets the floor and passes
        /// the filters.
        #[test]
        fn an_accepted_answer_meets_its_floor_and_filters(
            price in prop::option::of(0..5_000_000i64),
            floor in 0..5_000_000i64,
            domain in prop_oneof!["bad\\.example", "x\\.bad\\.example", "fine\\.example"],
        ) {
            let blocked = vec!["bad.example".to_string()];
            let quality = AdQuality { blocked_adomains: &blocked, ..Default::default() };
            let domains = vec![domain];
            let answer = Answer { price: price.map(Micros), creative: Creative { adomains: &domains, ..Default::default() } };
            if let Verdict::Accept { price } = judge(&answer, Micros(floor), &quality) {
                prop_assert!(price >= Micros(floor));
                prop_assert!(quality.check(&answer.creative).is_none());
            }
        }
    }
}
