//! What the log says each network did when it was called: how often it answered with an
//! ad and at what prices. A network the original walk never called for an impression
//! answers the replay by a draw from this record.

use std::collections::HashMap;

use cascade_core::Micros;
use cascade_log::schema::{Attempt, Decision};
use cascade_proto::decision::v1::AttemptOutcome;

use crate::draw;

/// What a network did when called, across the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub calls: u64,
    /// The answers with an ad, and the price each stated (USD micros; `None` for an ad
    /// at the floor it was sent, see [`answered_ad`]).
    pub answers: Vec<Option<Micros>>,
}

impl History {
    /// The share of calls it answered with an ad.
    pub fn fill_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.answers.len() as f64 / self.calls as f64
        }
    }
}

/// What one call would have brought, by the log or by a draw from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guess {
    /// The network was never called anywhere in the log: nothing to draw from; the
    /// replay counts it as no ad, and says how many calls it assumed so.
    Unobserved,
    NoAd,
    /// An ad at this stated price (`None`: no price stated).
    Ad(Option<Micros>),
}

/// Every network's [`History`], gathered over the decisions of a log.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    networks: HashMap<String, History>,
}

impl Observed {
    /// Counts the calls of one logged decision.
    pub fn add(&mut self, decision: &Decision) {
        for imp in &decision.imps {
            for attempt in imp.attempts.iter().filter(|a| a.called) {
                let history = self.networks.entry(attempt.network_id.clone()).or_default();
                history.calls += 1;
                if let Some(price) = answered_ad(attempt) {
                    history.answers.push(price);
                }
            }
        }
    }

    pub fn history(&self, network_id: &str) -> Option<&History> {
        self.networks.get(network_id)
    }

    /// What `network_id` answers a call it was never made in the log, drawn with `key`:
    /// an ad with its observed fill rate, at a price drawn from its observed answers.
    pub fn guess(&self, network_id: &str, key: u64) -> Guess {
        let Some(history) = self.networks.get(network_id).filter(|h| h.calls > 0) else {
            return Guess::Unobserved;
        };
        if draw::unit(draw::key(key, &[network_id, "fill"])) >= history.fill_rate() {
            return Guess::NoAd;
        }
        // A second, independent draw picks the price.
        let pick = draw::key(key, &[network_id, "price"]);
        let index = (pick % history.answers.len() as u64) as usize;
        Guess::Ad(history.answers[index])
    }
}

/// The price of the ad a called network answered with, if it answered with one: a fill,
/// or an ad refused for a price under the floor it was sent (the network did answer;
/// under another floor it might serve). `Some(None)`: an ad at whatever floor it is
/// sent — it stated no price, or exactly the floor it was sent (to the micro, give or
/// take the rounding of a currency conversion), as a network that fills the floor does.
/// An ad refused by an ad-quality filter counts as no ad: the replay cannot tell which
/// creative a network would send next.
pub fn answered_ad(attempt: &Attempt) -> Option<Option<Micros>> {
    let price = attempt.price_micros;
    let floor = attempt.floor_micros;
    let at_floor = price == 0 || price.abs_diff(floor) <= (floor / 100_000).max(1) as u64;
    let stated = (!at_floor).then_some(Micros(price));
    match attempt.outcome() {
        AttemptOutcome::Filled => Some(stated),
        AttemptOutcome::NoFill if attempt.reason == BELOW_FLOOR && price > 0 => Some(stated),
        _ => None,
    }
}

/// The reason code network-caller gives an answer under the floor it was sent
/// (`cascade_core::waterfall::Verdict::BelowFloor`).
const BELOW_FLOOR: &str = "below_floor";

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_log::schema::Imp;

    fn attempt(network: &str, outcome: AttemptOutcome, reason: &str, price: i64) -> Attempt {
        Attempt {
            network_id: network.into(),
            floor_micros: 500_000,
            outcome: outcome as i32,
            reason: reason.into(),
            price_micros: price,
            called: true,
            ..Default::default()
        }
    }

    fn observed(attempts: Vec<Attempt>) -> Observed {
        let mut observed = Observed::default();
        observed.add(&Decision {
            imps: vec![Imp {
                attempts,
                ..Default::default()
            }],
            ..Default::default()
        });
        observed
    }

    #[test]
    fn a_network_that_always_filled_is_guessed_to_fill_and_one_that_never_did_not() {
        let observed = observed(vec![
            attempt("always", AttemptOutcome::Filled, "", 2_000_000),
            attempt("always", AttemptOutcome::Filled, "", 2_000_000),
            attempt("never", AttemptOutcome::NoFill, "no_bid", 0),
            attempt("never", AttemptOutcome::Timeout, "", 0),
        ]);
        for key in 0..200 {
            assert_eq!(
                observed.guess("always", key),
                Guess::Ad(Some(Micros(2_000_000)))
            );
            assert_eq!(observed.guess("never", key), Guess::NoAd);
            assert_eq!(observed.guess("absent", key), Guess::Unobserved);
        }
    }

    #[test]
    fn guesses_follow_the_observed_fill_rate_and_prices() {
        let observed = observed(vec![
            attempt("half", AttemptOutcome::Filled, "", 1_000_000),
            attempt("half", AttemptOutcome::NoFill, "below_floor", 3_000_000),
            attempt("half", AttemptOutcome::NoFill, "blocked_ad", 5_000_000),
            attempt("half", AttemptOutcome::Error, "", 0),
        ]);
        assert_eq!(observed.history("half").unwrap().fill_rate(), 0.5);
        let draws: Vec<Guess> = (0..4_000).map(|key| observed.guess("half", key)).collect();
        let ads = draws.iter().filter(|g| matches!(g, Guess::Ad(_))).count();
        assert!((1_800..2_200).contains(&ads), "{ads} ads of 4000");
        let dear = draws
            .iter()
            .filter(|g| **g == Guess::Ad(Some(Micros(3_000_000))))
            .count();
        assert!((800..1_200).contains(&dear), "{dear} at the dearer price");
        assert!(
            !draws.contains(&Guess::Ad(Some(Micros(5_000_000)))),
            "a blocked ad is no answer"
        );
    }

    #[test]
    fn an_ad_at_the_floor_it_was_sent_is_an_ad_at_any_floor() {
        let at_floor = attempt("n", AttemptOutcome::Filled, "", 500_000);
        assert_eq!(answered_ad(&at_floor), Some(None));
        let converted = attempt("n", AttemptOutcome::Filled, "", 500_001);
        assert_eq!(
            answered_ad(&converted),
            Some(None),
            "a conversion's rounding"
        );
        let above = attempt("n", AttemptOutcome::Filled, "", 700_000);
        assert_eq!(answered_ad(&above), Some(Some(Micros(700_000))));
        let unpriced = attempt("n", AttemptOutcome::Filled, "", 0);
        assert_eq!(answered_ad(&unpriced), Some(None));
        let under = attempt("n", AttemptOutcome::NoFill, "below_floor", 300_000);
        assert_eq!(answered_ad(&under), Some(Some(Micros(300_000))));
    }

    #[test]
    fn attempts_never_made_are_not_calls() {
        let mut skipped = attempt("n", AttemptOutcome::Skipped, "out_of_time", 0);
        skipped.called = false;
        let observed = observed(vec![skipped]);
        assert_eq!(observed.guess("n", 1), Guess::Unobserved);
    }
}
