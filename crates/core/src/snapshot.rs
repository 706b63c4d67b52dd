//! An immutable, indexed view of one configuration version. Services build it once per
//! version and answer every decision from it without touching the store.

use std::collections::HashMap;

use crate::config::{ConfigError, Configuration, MediatedBid, Network, NetworkMode, SellingRule};
use crate::money::{CurrencyRates, Micros};
use crate::targeting::{Dimension, ImpressionKeys};

#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    parent_of: HashMap<String, String>,
    known_accounts: std::collections::HashSet<String>,
    /// Enabled selling rules per owning account, in configuration order.
    rules_by_account: HashMap<String, Vec<SellingRule>>,
    networks: HashMap<String, Network>,
    /// Mediated bids per owning account, in configuration order.
    bids_by_account: HashMap<String, Vec<MediatedBid>>,
    rates: CurrencyRates,
}

/// The selling rule that applies to an impression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRule<'s> {
    pub rule: &'s SellingRule,
    /// The account whose rule set applied: the publisher or the ancestor it inherits from.
    pub owner_account_id: &'s str,
    pub inherited: bool,
    /// max(rule floor, request floor), USD micros.
    pub floor: Micros,
}

/// Why a configured mediated bid is not eligible for an impression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    Inactive,
    Targeting(Dimension),
    /// Its network bids live instead of being called in the waterfall.
    NetworkNotInWaterfall,
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::Inactive => f.write_str("inactive"),
            Exclusion::Targeting(dimension) => write!(f, "targeting:{dimension}"),
            Exclusion::NetworkNotInWaterfall => f.write_str("network_not_in_waterfall"),
        }
    }
}

#[derive(Debug, Default)]
pub struct ImpEvaluation<'s> {
    /// `None` when no effective rule matches: no auction demand may serve.
    pub applied_rule: Option<AppliedRule<'s>>,
    pub matched_rule_ids: Vec<&'s str>,
    pub mediated_bids: Vec<&'s MediatedBid>,
    /// Filled only when asked to explain.
    pub excluded: Vec<(&'s str, Exclusion)>,
}

impl Snapshot {
    pub fn build(configuration: Configuration) -> Result<Self, ConfigError> {
        configuration.validate()?;
        let mut snapshot = Snapshot {
            version: configuration.version,
            rates: CurrencyRates::new(
                configuration
                    .currency_rates
                    .iter()
                    .map(|r| (r.currency.clone(), r.usd.0)),
            ),
            ..Default::default()
        };
        for account in configuration.accounts {
            if let Some(parent) = account.parent_id {
                snapshot.parent_of.insert(account.id.clone(), parent);
            }
            snapshot.known_accounts.insert(account.id);
        }
        for rule in configuration
            .selling_rules
            .into_iter()
            .filter(|r| r.enabled)
        {
            snapshot
                .rules_by_account
                .entry(rule.account_id.clone())
                .or_default()
                .push(rule);
        }
        for bid in configuration.mediated_bids {
            snapshot
                .bids_by_account
                .entry(bid.account_id.clone())
                .or_default()
                .push(bid);
        }
        snapshot.networks = configuration
            .networks
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        Ok(snapshot)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn rates(&self) -> &CurrencyRates {
        &self.rates
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id)
    }

    pub fn has_account(&self, id: &str) -> bool {
        self.known_accounts.contains(id)
    }

    /// The account and its ancestors, the account first. The tree was validated acyclic.
    pub fn account_path<'s>(&'s self, account_id: &'s str) -> impl Iterator<Item = &'s str> + 's {
        std::iter::successors(
            self.known_accounts.get(account_id).map(String::as_str),
            |current| self.parent_of.get(*current).map(String::as_str),
        )
    }

    /// The rule set in force for an account: that of the nearest account on its path to
    /// the root (itself first) with at least one enabled rule. Returns the owner too.
    pub fn effective_rules<'s>(
        &'s self,
        account_id: &'s str,
    ) -> Option<(&'s str, &'s [SellingRule])> {
        self.account_path(account_id).find_map(|owner| {
            self.rules_by_account
                .get(owner)
                .map(|rules| (owner, rules.as_slice()))
        })
    }

    /// Everything targeting decides about one impression of `account_id`.
    pub fn evaluate<'s>(
        &'s self,
        account_id: &'s str,
        keys: &ImpressionKeys,
        request_floor: Micros,
        explain: bool,
    ) -> ImpEvaluation<'s> {
        let mut evaluation = ImpEvaluation::default();
        let Some((owner, rules)) = self.effective_rules(account_id) else {
            return evaluation;
        };
        let mut applied: Option<&SellingRule> = None;
        for rule in rules.iter().filter(|r| r.targeting.matches(keys)) {
            evaluation.matched_rule_ids.push(&rule.id);
            // Highest floor wins; among equal floors the smallest id, so the choice never
            // depends on configuration order.
            let better = applied.is_none_or(|best| {
                (rule.floor, std::cmp::Reverse(&rule.id))
                    > (best.floor, std::cmp::Reverse(&best.id))
            });
            if better {
                applied = Some(rule);
            }
        }
        let Some(rule) = applied else {
            return evaluation;
        };
        evaluation.applied_rule = Some(AppliedRule {
            rule,
            owner_account_id: owner,
            inherited: owner != account_id,
            floor: rule.floor.max(request_floor),
        });

        for account in self.account_path(account_id) {
            for bid in self.bids_by_account.get(account).into_iter().flatten() {
                match self.mediated_bid_exclusion(bid, keys) {
                    None => evaluation.mediated_bids.push(bid),
                    Some(exclusion) if explain => evaluation.excluded.push((&bid.id, exclusion)),
                    Some(_) => {}
                }
            }
        }
        evaluation
    }

    fn mediated_bid_exclusion(
        &self,
        bid: &MediatedBid,
        keys: &ImpressionKeys,
    ) -> Option<Exclusion> {
        if !bid.active {
            return Some(Exclusion::Inactive);
        }
        let in_waterfall = self
            .networks
            .get(&bid.network_id)
            .is_some_and(|n| n.mode == NetworkMode::Waterfall);
        if !in_waterfall {
            return Some(Exclusion::NetworkNotInWaterfall);
        }
        bid.targeting.mismatch(keys).map(Exclusion::Targeting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targeting::{MediaType, Size};

    const DEMO: &str = include_str!("../../../examples/demo.toml");

    fn demo() -> Snapshot {
        let configuration: Configuration = toml::from_str(DEMO).unwrap();
        Snapshot::build(configuration).unwrap()
    }

    fn banner(country: &str, devicetype: u32) -> ImpressionKeys {
        ImpressionKeys {
            tagid: "top".into(),
            media_types: vec![MediaType::Banner],
            sizes: vec![Size { w: 300, h: 250 }],
            country: country.into(),
            devicetype,
        }
    }

    #[test]
    fn a_publisher_without_rules_inherits_its_containers() {
        let snapshot = demo();
        let evaluation = snapshot.evaluate("8953", &banner("DEU", 2), Micros::ZERO, true);
        let applied = evaluation.applied_rule.unwrap();
        assert_eq!(applied.rule.id, "network-default");
        assert_eq!(applied.owner_account_id, "demo-network");
        assert!(applied.inherited);
        assert_eq!(applied.floor, Micros(500_000));
    }

    #[test]
    fn the_highest_floor_among_matching_rules_applies() {
        let snapshot = demo();
        let evaluation = snapshot.evaluate("8953", &banner("USA", 4), Micros::ZERO, false);
        assert_eq!(
            evaluation.matched_rule_ids,
            ["network-default", "network-us-mobile"]
        );
        let applied = evaluation.applied_rule.unwrap();
        assert_eq!(applied.rule.id, "network-us-mobile");
        assert_eq!(applied.floor, Micros(1_000_000));
    }

    #[test]
    fn the_request_floor_raises_the_rule_floor() {
        let snapshot = demo();
        let evaluation = snapshot.evaluate("8953", &banner("DEU", 2), Micros(700_000), false);
        assert_eq!(evaluation.applied_rule.unwrap().floor, Micros(700_000));
    }

    #[test]
    fn own_rules_override_the_containers_as_a_whole() {
        let snapshot = demo();
        let evaluation = snapshot.evaluate("pub12345", &banner("DEU", 2), Micros::ZERO, false);
        assert!(
            evaluation.applied_rule.is_none(),
            "banner is not sold on pub12345"
        );
        assert!(evaluation.mediated_bids.is_empty());

        let video = ImpressionKeys {
            media_types: vec![MediaType::Video],
            ..banner("DEU", 2)
        };
        let evaluation = snapshot.evaluate("pub12345", &video, Micros::ZERO, false);
        let applied = evaluation.applied_rule.unwrap();
        assert_eq!(applied.rule.id, "siteabcd-video");
        assert!(!applied.inherited);
    }

    #[test]
    fn mediated_bids_come_from_the_account_path_and_explain_exclusions() {
        let snapshot = demo();
        let evaluation = snapshot.evaluate("8953", &banner("DEU", 2), Micros::ZERO, true);
        let eligible: Vec<_> = evaluation
            .mediated_bids
            .iter()
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(eligible, ["coolads-2.00", "betaads-1.20"]);
        assert_eq!(
            evaluation.excluded,
            [("betaads-5.00-paused", Exclusion::Inactive)]
        );
    }

    #[test]
    fn unknown_accounts_have_no_rules() {
        let snapshot = demo();
        assert!(!snapshot.has_account("nobody"));
        let evaluation = snapshot.evaluate("nobody", &banner("USA", 4), Micros::ZERO, false);
        assert!(evaluation.applied_rule.is_none());
    }

    #[test]
    fn rejects_an_account_cycle_naming_the_field() {
        let mut configuration: Configuration = toml::from_str(DEMO).unwrap();
        configuration.accounts[0].parent_id = Some("8953".into());
        let error = Snapshot::build(configuration).unwrap_err();
        assert_eq!(error.field, "accounts[0].parent_id");
    }

    #[test]
    fn rejects_a_mediated_bid_on_an_unknown_network() {
        let mut configuration: Configuration = toml::from_str(DEMO).unwrap();
        configuration.mediated_bids[1].network_id = "nope".into();
        let error = Snapshot::build(configuration).unwrap_err();
        assert_eq!(error.field, "mediated_bids[1].network_id");
    }
}
