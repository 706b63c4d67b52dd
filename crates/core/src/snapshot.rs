//! An immutable, indexed view of one configuration version. Services build it once per
//! version and answer every decision from it without touching the store.

use std::collections::{HashMap, HashSet};

use crate::config::{
    ConfigError, Configuration, LineItem, MediatedBid, MediationMode, Network, NetworkMode,
    SellingRule,
};
use crate::index::{Dictionary, TargetingIndex};
use crate::money::{CurrencyRates, Factor, Micros};
use crate::targeting::{DayHour, Dimension, ImpressionKeys, Targeting};

#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    parent_of: HashMap<String, String>,
    known_accounts: HashSet<String>,
    time_zones: HashMap<String, jiff::tz::TimeZone>,
    /// Accounts that set a mediation mode, per-ad-unit modes or seat adjustments.
    mediation: HashMap<String, AccountMediation>,
    groups_of_ad_unit: HashMap<String, Vec<String>>,
    /// What each account owns, with its targeting indexes.
    owned: HashMap<String, Owned>,
    networks: HashMap<String, Network>,
    dictionary: Dictionary,
    rates: CurrencyRates,
    supply_chain_nodes: HashMap<String, crate::config::SupplyChainNode>,
    /// Per account, per eids source: the networks that may receive its ids.
    eid_permissions: HashMap<String, HashMap<String, Vec<String>>>,
    /// Where each mediated bid is kept: its account and index in that account's bids.
    mediated_bid_at: HashMap<String, (String, usize)>,
}

#[derive(Debug, Default)]
struct AccountMediation {
    mode: Option<MediationMode>,
    ad_unit_modes: std::collections::BTreeMap<String, MediationMode>,
    seat_adjustments: std::collections::BTreeMap<String, Factor>,
}

/// The selling rules, mediated bids and line items one account owns.
#[derive(Debug, Default)]
struct Owned {
    /// In configuration order.
    line_items: Vec<LineItem>,
    line_item_index: TargetingIndex,
    /// Whether the account has selling rules of its own, enabled or not: then it does
    /// not inherit its container's.
    has_own_rules: bool,
    /// Enabled rules only, in configuration order.
    rules: Vec<SellingRule>,
    rule_index: TargetingIndex,
    /// In configuration order.
    bids: Vec<MediatedBid>,
    bid_index: TargetingIndex,
}

/// How targeting is matched: through the index, or by checking every targeting (the
/// reference the index is tested and benchmarked against).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Index,
    Linear,
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
    /// The impression's mediation mode does not use its network's mode.
    MediationMode(MediationMode),
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::Inactive => f.write_str("inactive"),
            Exclusion::Targeting(dimension) => write!(f, "targeting:{dimension}"),
            Exclusion::MediationMode(mode) => write!(f, "mediation_mode:{}", mode.name()),
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImpEvaluation<'s> {
    /// `None` when no effective rule matches: no auction demand may serve.
    pub applied_rule: Option<AppliedRule<'s>>,
    pub matched_rule_ids: Vec<&'s str>,
    /// Eligible mediated bids of waterfall networks: called after the auction.
    pub mediated_bids: Vec<&'s MediatedBid>,
    /// Eligible mediated bids of bidding networks: asked for a live bid before it.
    pub bidding_bids: Vec<&'s MediatedBid>,
    pub mediation_mode: MediationMode,
    /// Eligible line items; they may serve whether or not a selling rule applies.
    pub line_items: Vec<&'s LineItem>,
    /// Filled only when asked to explain.
    pub excluded: Vec<(&'s str, Exclusion)>,
}

impl Snapshot {
    pub fn build(configuration: Configuration) -> Result<Self, ConfigError> {
        configuration.validate()?;
        let mut snapshot = Snapshot {
            version: configuration.version,
            rates: CurrencyRates::scheduled(
                configuration
                    .currency_rates
                    .iter()
                    .map(|r| (r.currency.clone(), r.schedule())),
            ),
            ..Default::default()
        };
        for account in configuration.accounts {
            if let Some(parent) = account.parent_id {
                snapshot.parent_of.insert(account.id.clone(), parent);
            }
            if account.mediation_mode.is_some()
                || !account.ad_unit_mediation_modes.is_empty()
                || !account.seat_bid_adjustments.is_empty()
            {
                snapshot.mediation.insert(
                    account.id.clone(),
                    AccountMediation {
                        mode: account.mediation_mode,
                        ad_unit_modes: account.ad_unit_mediation_modes.clone(),
                        seat_adjustments: account.seat_bid_adjustments.clone(),
                    },
                );
            }
            if let Some(zone) = &account.time_zone {
                // Validated above.
                if let Ok(zone) = jiff::tz::TimeZone::get(zone) {
                    snapshot.time_zones.insert(account.id.clone(), zone);
                }
            }
            if let Some(node) = account.supply_chain_node {
                snapshot.supply_chain_nodes.insert(account.id.clone(), node);
            }
            if !account.eid_permissions.is_empty() {
                let by_source = account
                    .eid_permissions
                    .into_iter()
                    .map(|p| (p.source, p.networks))
                    .collect();
                snapshot
                    .eid_permissions
                    .insert(account.id.clone(), by_source);
            }
            snapshot.known_accounts.insert(account.id);
        }
        for group in configuration.ad_unit_groups {
            for ad_unit in group.ad_units {
                snapshot
                    .groups_of_ad_unit
                    .entry(ad_unit)
                    .or_default()
                    .push(group.id.clone());
            }
        }
        let mut owned: HashMap<String, Owned> = HashMap::new();
        for rule in configuration.selling_rules {
            let entities = owned.entry(rule.account_id.clone()).or_default();
            entities.has_own_rules = true;
            if rule.enabled {
                entities.rules.push(rule);
            }
        }
        for bid in configuration.mediated_bids {
            owned
                .entry(bid.account_id.clone())
                .or_default()
                .bids
                .push(bid);
        }
        for item in configuration.line_items {
            owned
                .entry(item.account_id.clone())
                .or_default()
                .line_items
                .push(item);
        }
        for entities in owned.values_mut() {
            entities.rule_index = TargetingIndex::build(
                entities.rules.iter().map(|r| &r.targeting),
                &mut snapshot.dictionary,
            );
            entities.bid_index = TargetingIndex::build(
                entities.bids.iter().map(|b| &b.targeting),
                &mut snapshot.dictionary,
            );
            entities.line_item_index = TargetingIndex::build(
                entities.line_items.iter().map(|l| &l.targeting),
                &mut snapshot.dictionary,
            );
        }
        for (account, entities) in &owned {
            for (index, bid) in entities.bids.iter().enumerate() {
                snapshot
                    .mediated_bid_at
                    .insert(bid.id.clone(), (account.clone(), index));
            }
        }
        snapshot.owned = owned;
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

    /// A mediated bid's CPM in USD micros, converted from its network's currency at the
    /// rates in force at `unix_seconds`.
    pub fn mediated_cpm(&self, bid: &MediatedBid, unix_seconds: i64) -> Micros {
        let currency = self
            .networks
            .get(&bid.network_id)
            .and_then(|n| n.currency.as_deref())
            .unwrap_or_default();
        // The currency was validated against the rates; only an overflow can fail.
        self.rates
            .at(unix_seconds)
            .to_usd(bid.cpm, currency)
            .unwrap_or(Micros(crate::money::MAX_MICROS))
    }

    /// Cascade's supply-chain node for the account's requests (the account's own; a
    /// seller id is one publisher's).
    pub fn supply_chain_node(&self, account_id: &str) -> Option<&crate::config::SupplyChainNode> {
        self.supply_chain_nodes.get(account_id)
    }

    /// Whether `network_id` may receive the ids of the eids `source` for this account:
    /// the nearest account on the path that lists the source decides; a source no
    /// account lists goes to every network.
    pub fn eid_allowed(&self, account_id: &str, source: &str, network_id: &str) -> bool {
        self.account_path(account_id)
            .find_map(|account| self.eid_permissions.get(account)?.get(source))
            .is_none_or(|networks| networks.iter().any(|n| n == network_id))
    }

    pub fn mediated_bid(&self, id: &str) -> Option<&MediatedBid> {
        let (account, index) = self.mediated_bid_at.get(id)?;
        self.owned.get(account)?.bids.get(*index)
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

    /// Fills in what the impression's keys take from the configuration: the ad-unit
    /// groups of its tagid and its hour of the week in the publisher's time zone.
    pub fn complete_keys(&self, account_id: &str, keys: &mut ImpressionKeys, unix_seconds: i64) {
        keys.ad_unit_groups = self
            .groups_of_ad_unit
            .get(&keys.tagid)
            .cloned()
            .unwrap_or_default();
        let utc = jiff::tz::TimeZone::UTC;
        let time_zone = self
            .account_path(account_id)
            .find_map(|account| self.time_zones.get(account))
            .unwrap_or(&utc);
        keys.day_hour = DayHour::at(unix_seconds, time_zone);
    }

    /// The owner of the rule set in force for an account: the nearest account on its
    /// path to the root (itself first) with selling rules of its own, enabled or not
    /// (OpenX: an account inherits "unless the account has its own rules directly
    /// associated with it"). An account whose own rules are all disabled has no rule
    /// in force; it does not fall back to its container's, possibly looser, set.
    fn rule_owner<'s>(&'s self, account_id: &'s str) -> Option<(&'s str, &'s Owned)> {
        self.account_path(account_id).find_map(|owner| {
            self.owned
                .get(owner)
                .filter(|o| o.has_own_rules)
                .map(|o| (owner, o))
        })
    }

    /// Everything targeting decides about one impression of `account_id` (keys completed
    /// by [`Snapshot::complete_keys`]).
    pub fn evaluate<'s>(
        &'s self,
        account_id: &'s str,
        keys: &ImpressionKeys,
        request_floor: Micros,
        explain: bool,
    ) -> ImpEvaluation<'s> {
        self.evaluate_with(Engine::Index, account_id, keys, request_floor, explain)
    }

    pub fn evaluate_with<'s>(
        &'s self,
        engine: Engine,
        account_id: &'s str,
        keys: &ImpressionKeys,
        request_floor: Micros,
        explain: bool,
    ) -> ImpEvaluation<'s> {
        let mut evaluation = ImpEvaluation::default();
        let matcher = Matcher {
            resolved: (engine == Engine::Index).then(|| self.dictionary.resolve(keys)),
            keys,
            explain,
        };

        // Line items are the publisher's own demand: selling rules do not gate them.
        for account in self.account_path(account_id) {
            if let Some(owned) = self.owned.get(account) {
                matcher.collect(
                    &owned.line_items,
                    &owned.line_item_index,
                    |item| (&item.id, &item.targeting),
                    |item| (!item.active).then_some(Exclusion::Inactive),
                    &mut evaluation.line_items,
                    &mut evaluation.excluded,
                );
            }
        }

        let Some((owner, owned)) = self.rule_owner(account_id) else {
            return evaluation;
        };
        let mut applied: Option<&SellingRule> = None;
        for position in matcher.matching(&owned.rule_index, &owned.rules, |r| &r.targeting) {
            let rule = &owned.rules[position as usize];
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

        let mode = self.mediation_mode(account_id, &keys.tagid);
        evaluation.mediation_mode = mode;
        let mut eligible = Vec::new();
        for account in self.account_path(account_id) {
            if let Some(owned) = self.owned.get(account) {
                matcher.collect(
                    &owned.bids,
                    &owned.bid_index,
                    |bid| (&bid.id, &bid.targeting),
                    |bid| self.eligibility(bid, mode),
                    &mut eligible,
                    &mut evaluation.excluded,
                );
            }
        }
        for bid in eligible {
            match self.networks.get(&bid.network_id).map(|n| n.mode) {
                Some(NetworkMode::Bidding) => evaluation.bidding_bids.push(bid),
                _ => evaluation.mediated_bids.push(bid),
            }
        }
        evaluation
    }

    /// Why a bid whose targeting matches still cannot compete.
    fn eligibility(&self, bid: &MediatedBid, mode: MediationMode) -> Option<Exclusion> {
        if !bid.active {
            return Some(Exclusion::Inactive);
        }
        let network_mode = self
            .networks
            .get(&bid.network_id)
            .map_or(NetworkMode::Waterfall, |n| n.mode);
        (!mode.uses(network_mode)).then_some(Exclusion::MediationMode(mode))
    }

    /// The mediation mode of an ad unit: the nearest account on the path that says
    /// something about it (a per-ad-unit mode first, then its account-wide mode)
    /// decides; hybrid when none does.
    pub fn mediation_mode(&self, account_id: &str, tagid: &str) -> MediationMode {
        self.account_path(account_id)
            .find_map(|account| {
                let mediation = self.mediation.get(account)?;
                mediation
                    .ad_unit_modes
                    .get(tagid)
                    .copied()
                    .or(mediation.mode)
            })
            .unwrap_or_default()
    }

    /// Bid adjustments per buyer seat for an account: for each seat, the nearest
    /// account on the path that sets one decides.
    pub fn seat_adjustments(&self, account_id: &str) -> Vec<(String, Factor)> {
        let mut adjustments: std::collections::BTreeMap<&str, Factor> = Default::default();
        for account in self.account_path(account_id) {
            if let Some(mediation) = self.mediation.get(account) {
                for (seat, factor) in &mediation.seat_adjustments {
                    adjustments.entry(seat).or_insert(*factor);
                }
            }
        }
        adjustments
            .into_iter()
            .map(|(seat, factor)| (seat.to_string(), factor))
            .collect()
    }
}

/// Matches targetings with the chosen engine, for one impression.
struct Matcher<'k> {
    /// The impression resolved against the dictionary; `None` for the linear engine.
    resolved: Option<crate::index::ResolvedImpression>,
    keys: &'k ImpressionKeys,
    explain: bool,
}

impl Matcher<'_> {
    /// Positions of the `items` whose targeting matches, ascending.
    fn matching<'a, T>(
        &self,
        index: &TargetingIndex,
        items: &'a [T],
        targeting: impl Fn(&'a T) -> &'a Targeting,
    ) -> Vec<u32> {
        match &self.resolved {
            Some(resolved) => index.matches(resolved),
            None => (0..items.len() as u32)
                .filter(|i| targeting(&items[*i as usize]).matches(self.keys))
                .collect(),
        }
    }

    /// Adds the matching `items` that are also eligible to `eligible`; when explaining,
    /// every other item goes to `excluded` with its reason.
    fn collect<'s, T>(
        &self,
        items: &'s [T],
        index: &TargetingIndex,
        describe: impl Fn(&'s T) -> (&'s str, &'s Targeting),
        eligibility: impl Fn(&T) -> Option<Exclusion>,
        eligible: &mut Vec<&'s T>,
        excluded: &mut Vec<(&'s str, Exclusion)>,
    ) {
        let matched = self.matching(index, items, |item| describe(item).1);
        for position in &matched {
            let item = &items[*position as usize];
            match eligibility(item) {
                None => eligible.push(item),
                Some(exclusion) if self.explain => excluded.push((describe(item).0, exclusion)),
                Some(_) => {}
            }
        }
        if self.explain {
            // Only explanations pay for finding the dimension that excluded an item.
            let mut matched = matched.iter().peekable();
            for (position, item) in items.iter().enumerate() {
                if matched.peek() == Some(&&(position as u32)) {
                    matched.next();
                    continue;
                }
                let (id, targeting) = describe(item);
                if let Some(dimension) = targeting.mismatch(self.keys) {
                    excluded.push((id, Exclusion::Targeting(dimension)));
                }
            }
        }
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
            ..Default::default()
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
    fn an_account_whose_own_rules_are_all_disabled_does_not_inherit() {
        let mut configuration: Configuration = toml::from_str(DEMO).unwrap();
        configuration.selling_rules.push(SellingRule {
            id: "paused".into(),
            account_id: "8953".into(),
            enabled: false,
            ..Default::default()
        });
        let snapshot = Snapshot::build(configuration).unwrap();
        let evaluation = snapshot.evaluate("8953", &banner("DEU", 2), Micros::ZERO, false);
        assert!(evaluation.applied_rule.is_none(), "{evaluation:?}");
        assert!(evaluation.mediated_bids.is_empty());
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
            [
                ("foobar-home-house", Exclusion::Targeting(Dimension::Domain)),
                ("betaads-5.00-paused", Exclusion::Inactive),
                ("customnet-2.50", Exclusion::Targeting(Dimension::AdUnit)),
                ("bidwise-home-live", Exclusion::Targeting(Dimension::AdUnit)),
            ]
        );
    }

    #[test]
    fn mediation_modes_pick_waterfall_and_bidding_networks() {
        let snapshot = demo();
        let live = ImpressionKeys {
            tagid: "home-live".into(),
            ..banner("DEU", 2)
        };
        let evaluation = snapshot.evaluate("8953", &live, Micros::ZERO, true);
        assert_eq!(evaluation.mediation_mode, MediationMode::Hybrid);
        let bidding: Vec<_> = evaluation
            .bidding_bids
            .iter()
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(bidding, ["bidwise-home-live"]);
        assert_eq!(evaluation.mediated_bids.len(), 2);

        let waterfall_only = ImpressionKeys {
            tagid: "home-live-waterfall".into(),
            ..banner("DEU", 2)
        };
        let evaluation = snapshot.evaluate("8953", &waterfall_only, Micros::ZERO, true);
        assert_eq!(evaluation.mediation_mode, MediationMode::Waterfall);
        assert!(evaluation.bidding_bids.is_empty());
        assert!(evaluation.excluded.contains(&(
            "bidwise-home-live",
            Exclusion::MediationMode(MediationMode::Waterfall)
        )));
        assert_eq!(
            snapshot.seat_adjustments("8953"),
            [("discounted-seat".to_string(), Factor(900_000))]
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

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{Account, LineItem, MediatedBid, Network, SellingRule};
    use crate::targeting::{Filter, Targeting};

    const ACCOUNTS: usize = 6;
    const UNITS: &[&str] = &["u1", "u2", "u3"];
    const COUNTRIES: &[&str] = &["USA", "DEU"];

    fn targeting() -> impl Strategy<Value = Targeting> {
        let values = |all: &'static [&'static str]| {
            prop::collection::vec(prop::sample::select(all).prop_map(String::from), 0..2)
        };
        (values(UNITS), values(UNITS), values(COUNTRIES)).prop_map(
            |(include, exclude, countries)| Targeting {
                ad_units: Filter { include, exclude },
                countries: Filter::include(countries),
                ..Default::default()
            },
        )
    }

    /// Accounts 0..6, each one's parent an earlier account (or none); rules and bids on
    /// random accounts with random floors, targeting and flags.
    fn configuration() -> impl Strategy<Value = Configuration> {
        (
            prop::collection::vec(prop::option::of(0..ACCOUNTS), ACCOUNTS),
            prop::collection::vec((0..ACCOUNTS, 0..5i64, any::<bool>(), targeting()), 0..20),
            prop::collection::vec((0..ACCOUNTS, 1..5i64, any::<bool>(), targeting()), 0..20),
            prop::collection::vec(
                (0..ACCOUNTS, any::<bool>(), any::<bool>(), targeting()),
                0..6,
            ),
        )
            .prop_map(|(parents, rules, bids, items)| Configuration {
                accounts: parents
                    .iter()
                    .enumerate()
                    .map(|(i, parent)| Account {
                        id: format!("a{i}"),
                        parent_id: parent.filter(|p| *p < i).map(|p| format!("a{p}")),
                        ..Default::default()
                    })
                    .collect(),
                networks: vec![Network {
                    id: "n".into(),
                    account_id: "a0".into(),
                    endpoint: "http://127.0.0.1:1".into(),
                    timeout_ms: 100,
                    ..Default::default()
                }],
                selling_rules: rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, (account, floor, enabled, targeting))| SellingRule {
                        id: format!("r{i}"),
                        account_id: format!("a{account}"),
                        enabled,
                        floor: Micros(floor * 100_000),
                        targeting,
                        ..Default::default()
                    })
                    .collect(),
                mediated_bids: bids
                    .into_iter()
                    .enumerate()
                    .map(|(i, (account, cpm, active, targeting))| MediatedBid {
                        id: format!("b{i}"),
                        account_id: format!("a{account}"),
                        network_id: "n".into(),
                        cpm: Micros(cpm * 100_000),
                        active,
                        targeting,
                        ..Default::default()
                    })
                    .collect(),
                line_items: items
                    .into_iter()
                    .enumerate()
                    .map(|(i, (account, guaranteed, active, targeting))| LineItem {
                        id: format!("l{i}"),
                        account_id: format!("a{account}"),
                        class: if guaranteed {
                            crate::config::LineItemClass::Guaranteed
                        } else {
                            crate::config::LineItemClass::NonGuaranteed
                        },
                        cpm: Micros(1_000_000),
                        active,
                        targeting,
                        adm: "<ad/>".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
    }

    fn keys() -> impl Strategy<Value = ImpressionKeys> {
        (prop::sample::select(UNITS), prop::sample::select(COUNTRIES)).prop_map(
            |(unit, country)| ImpressionKeys {
                tagid: unit.into(),
                country: country.into(),
                ..Default::default()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn index_and_reference_agree_and_rules_follow_inheritance_and_highest_floor(
            configuration in configuration(),
            account in 0..ACCOUNTS,
            keys in keys(),
            request_floor in 0..600_000i64,
        ) {
            let snapshot = Snapshot::build(configuration.clone()).unwrap();
            let account = format!("a{account}");
            let floor = Micros(request_floor);
            let indexed = snapshot.evaluate_with(Engine::Index, &account, &keys, floor, true);
            let linear = snapshot.evaluate_with(Engine::Linear, &account, &keys, floor, true);
            prop_assert_eq!(&indexed, &linear);

            // The rule set is that of the nearest account with rules of its own,
            // enabled or not.
            let path: Vec<&str> = snapshot.account_path(&account).collect();
            let owner = path.iter().find(|a| {
                configuration.selling_rules.iter().any(|r| r.account_id == **a)
            });
            let matching: Vec<&SellingRule> = configuration
                .selling_rules
                .iter()
                .filter(|r| r.enabled && Some(&r.account_id.as_str()) == owner && r.targeting.matches(&keys))
                .collect();
            match &indexed.applied_rule {
                None => prop_assert!(matching.is_empty()),
                Some(applied) => {
                    prop_assert_eq!(Some(&applied.owner_account_id), owner);
                    prop_assert_eq!(applied.inherited, applied.owner_account_id != account);
                    prop_assert!(matching.iter().all(|r| r.floor <= applied.rule.floor));
                    prop_assert_eq!(applied.floor, applied.rule.floor.max(floor));
                }
            }
            // Eligible bids: active ones of the path whose targeting matches, and only
            // when a rule applies.
            let expected_bids: usize = if indexed.applied_rule.is_some() {
                configuration
                    .mediated_bids
                    .iter()
                    .filter(|b| b.active && path.contains(&b.account_id.as_str()) && b.targeting.matches(&keys))
                    .count()
            } else {
                0
            };
            prop_assert_eq!(indexed.mediated_bids.len(), expected_bids);
            // Line items do not depend on the selling rules.
            let expected_items = configuration
                .line_items
                .iter()
                .filter(|l| l.active && path.contains(&l.account_id.as_str()) && l.targeting.matches(&keys))
                .count();
            prop_assert_eq!(indexed.line_items.len(), expected_items);
        }
    }
}

#[cfg(test)]
mod line_items {
    use super::*;

    #[test]
    fn line_items_are_eligible_without_a_matching_rule() {
        let configuration: Configuration =
            toml::from_str(include_str!("../../../examples/demo.toml")).unwrap();
        let snapshot = Snapshot::build(configuration).unwrap();
        let keys = ImpressionKeys {
            tagid: "sponsor-top".into(),
            media_types: vec![crate::targeting::MediaType::Banner],
            ..Default::default()
        };
        let evaluation = snapshot.evaluate("pub12345", &keys, Micros::ZERO, true);
        assert!(evaluation.applied_rule.is_none());
        let ids: Vec<_> = evaluation
            .line_items
            .iter()
            .map(|l| l.id.as_str())
            .collect();
        assert_eq!(ids, ["siteabcd-sponsorship"]);
    }
}
