//! The publisher-facing configuration: accounts, selling rules, networks, mediated bids
//! and currency rates. It is what the admin API writes and what every service builds its
//! [`Snapshot`](crate::snapshot::Snapshot) from. The same types read the demo file.

pub use crate::config_error::ConfigError;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::money::Micros;
use crate::targeting::Targeting;

/// Limits on what one configuration may hold, so a bad write cannot exhaust memory.
pub const MAX_ENTITIES_PER_KIND: usize = 1_000_000;
pub const MAX_ID_LEN: usize = 128;
pub const MAX_NETWORK_TIMEOUT_MS: u32 = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configuration {
    /// Bumped by every accepted write; 0 for a configuration never stored.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub selling_rules: Vec<SellingRule>,
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub mediated_bids: Vec<MediatedBid>,
    #[serde(default)]
    pub currency_rates: Vec<CurrencyRate>,
    #[serde(default)]
    pub ad_unit_groups: Vec<AdUnitGroup>,
    #[serde(default)]
    pub line_items: Vec<LineItem>,
}

/// A publisher, or a container of publishers (`parent_id` forms the tree).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub id: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub name: String,
    /// IANA time zone (e.g. `Europe/Paris`) that day-part targeting is evaluated in;
    /// inherited from the parent when unset, UTC at the root.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// How this account's impressions are mediated; inherited when unset, hybrid at
    /// the root.
    #[serde(default)]
    pub mediation_mode: Option<MediationMode>,
    /// Per ad unit (tagid) overrides of `mediation_mode`, inherited like it.
    #[serde(default)]
    pub ad_unit_mediation_modes: std::collections::BTreeMap<String, MediationMode>,
    /// Multipliers on exchange bids per buyer seat (e.g. `"0.9"` for a seat whose
    /// revenue is known to fall 10% short); inherited per seat.
    #[serde(default)]
    pub seat_bid_adjustments: std::collections::BTreeMap<String, crate::money::Factor>,
    /// Cascade's node in the supply chain of this account's requests: when set, every
    /// network call appends `{asi, sid: seller_id, hp: 1}` to `source.schain`. Off by
    /// default, since the gateway may already append it. Not inherited.
    #[serde(default)]
    pub supply_chain_node: Option<SupplyChainNode>,
    /// Per `eids` source, the only networks that may receive its ids (as Prebid's
    /// `eidpermissions`); a source not listed goes to every network that may receive
    /// user ids.
    #[serde(default)]
    pub eid_permissions: Vec<EidPermission>,
}

/// Cascade's entry in the `sellers.json` of the SSP (`asi`) for one publisher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupplyChainNode {
    /// The SSP's canonical domain, as in its sellers.json.
    pub asi: String,
    /// The publisher's `seller_id` in that sellers.json.
    pub seller_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EidPermission {
    /// The `eids[].source`, e.g. `liveramp.com`.
    pub source: String,
    pub networks: Vec<String>,
}

/// Which mediated networks an impression uses: those called after the auction in rank
/// order (waterfall), those asked for a live bid before it (bidding), or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediationMode {
    Waterfall,
    Bidding,
    #[default]
    Hybrid,
}

impl MediationMode {
    pub fn name(self) -> &'static str {
        match self {
            MediationMode::Waterfall => "waterfall",
            MediationMode::Bidding => "bidding",
            MediationMode::Hybrid => "hybrid",
        }
    }

    pub fn uses(self, network_mode: NetworkMode) -> bool {
        matches!(
            (self, network_mode),
            (MediationMode::Hybrid, _)
                | (MediationMode::Waterfall, NetworkMode::Waterfall)
                | (MediationMode::Bidding, NetworkMode::Bidding)
        )
    }
}

/// A named set of ad units (tagids) that targeting can refer to as one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdUnitGroup {
    pub id: String,
    pub account_id: String,
    #[serde(default)]
    pub name: String,
    pub ad_units: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuctionType {
    #[default]
    FirstPrice,
    SecondPrice,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SellingRule {
    pub id: String,
    pub account_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub targeting: Targeting,
    #[serde(default)]
    pub floor: Micros,
    #[serde(default)]
    pub blocked_adomains: Vec<String>,
    #[serde(default)]
    pub blocked_categories: Vec<String>,
    /// Buyer seats whose bids may not serve.
    #[serde(default)]
    pub blocked_seats: Vec<String>,
    /// OpenRTB creative attribute codes that may not serve (e.g. 3: auto-play audio).
    #[serde(default)]
    pub blocked_attributes: Vec<i32>,
    #[serde(default)]
    pub auction_type: AuctionType,
    /// Refuse an ad that declares no advertiser domain (demand that cannot be inspected
    /// passes by default).
    #[serde(default)]
    pub block_unknown_adomain: bool,
    /// Refuse an ad that declares no category.
    #[serde(default)]
    pub block_unknown_category: bool,
    /// Under second price, let a waterfall network's CPM (a publisher's estimate, not a
    /// bid) set the price an exchange winner pays; off by default.
    #[serde(default)]
    pub mediated_bids_set_second_price: bool,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkProtocol {
    #[default]
    OpenrtbHttp,
    Grpc,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    #[default]
    Waterfall,
    Bidding,
}

/// A mediated ad network. It serves its account and every descendant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub id: String,
    pub account_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub protocol: NetworkProtocol,
    pub endpoint: String,
    #[serde(default = "default_network_timeout_ms")]
    pub timeout_ms: u32,
    #[serde(default)]
    pub mode: NetworkMode,
    /// Calls to this network in flight at once (per network-caller instance); beyond
    /// it, the network is skipped rather than queued.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: u32,
    /// Multiplier on this network's bids in the auction (what it is known to really
    /// pay, relative to what it bids or is expected to pay).
    #[serde(default)]
    pub bid_adjustment: crate::money::Factor,
    /// ISO-4217 currency of the network's CPMs, the floors it is sent and its answers
    /// (when an answer names none); USD when unset.
    #[serde(default)]
    pub currency: Option<String>,
    /// The network's IAB Global Vendor List id. Where GDPR applies, a network without
    /// one is not called.
    #[serde(default)]
    pub gvl_id: Option<u16>,
    /// The `imp.ext` parameters the network needs (publisher, site, zone ids), checked
    /// against every mediated bid of the network when the configuration is applied.
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    /// Where under `imp.ext` a mediated bid's parameters go (dot-separated, e.g.
    /// `prebid.bidder.rubicon`); empty for `imp.ext` itself.
    #[serde(default)]
    pub params_at: String,
}

/// One parameter of a network's `imp.ext`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    #[serde(default)]
    pub kind: ParamKind,
    #[serde(default)]
    pub required: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
    /// A JSON object (e.g. Prebid Server's per-bidder parameters).
    Object,
}

/// A mediated bid's parameters against its network's declaration: every required one
/// present, none undeclared, each of its kind.
fn check_params(
    field: &str,
    specs: &[ParamSpec],
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ConfigError> {
    for spec in specs {
        match params.get(&spec.name) {
            None if spec.required => {
                return Err(ConfigError::new(
                    format!("{field}.{}", spec.name),
                    "required by the network",
                ));
            }
            Some(value) if !spec.kind.admits(value) => {
                return Err(ConfigError::new(
                    format!("{field}.{}", spec.name),
                    format!("must be a {}, got {value}", spec.kind.name()),
                ));
            }
            _ => {}
        }
    }
    if let Some(unknown) = params
        .keys()
        .find(|name| !specs.iter().any(|s| &s.name == *name))
    {
        return Err(ConfigError::new(
            format!("{field}.{unknown}"),
            "the network declares no such parameter",
        ));
    }
    Ok(())
}

impl ParamKind {
    /// The name the configuration and the admin API spell it with.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::String => "string",
            ParamKind::Integer => "integer",
            ParamKind::Number => "number",
            ParamKind::Boolean => "boolean",
            ParamKind::Object => "object",
        }
    }

    fn admits(self, value: &serde_json::Value) -> bool {
        match self {
            ParamKind::String => value.is_string(),
            ParamKind::Integer => value.is_i64() || value.is_u64(),
            ParamKind::Number => value.is_number(),
            ParamKind::Boolean => value.is_boolean(),
            ParamKind::Object => value.is_object(),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Self {
            id: String::new(),
            account_id: String::new(),
            name: String::new(),
            protocol: NetworkProtocol::default(),
            endpoint: String::new(),
            timeout_ms: default_network_timeout_ms(),
            mode: NetworkMode::default(),
            max_concurrent_calls: default_max_concurrent_calls(),
            bid_adjustment: crate::money::Factor::ONE,
            currency: None,
            gvl_id: None,
            params: Vec::new(),
            params_at: String::new(),
        }
    }
}

fn default_max_concurrent_calls() -> u32 {
    64
}

fn default_network_timeout_ms() -> u32 {
    300
}

/// A publisher's expectation that `network_id` pays `cpm` for matching impressions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediatedBid {
    pub id: String,
    pub account_id: String,
    pub network_id: String,
    pub cpm: Micros,
    #[serde(default)]
    pub targeting: Targeting,
    #[serde(default = "enabled_by_default")]
    pub active: bool,
    /// The network's own placement id, passed to it as the impression's tagid.
    #[serde(default)]
    pub placement_id: String,
    /// The network's `imp.ext` parameters for this placement, as its `params` declare.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineItemClass {
    /// Sold with a delivery guarantee: wins outright over all auction demand.
    Guaranteed,
    /// Beaten only by auction demand bidding more than it, at or above the floor.
    #[default]
    NonGuaranteed,
}

/// Direct-sold demand with its own creative. Line items are the publisher's own deals:
/// they may serve where no selling rule matches, and the floor does not apply to them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    pub id: String,
    pub account_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub class: LineItemClass,
    /// Among guaranteed line items, 1 is served first.
    #[serde(default = "default_priority")]
    pub priority: u32,
    pub cpm: Micros,
    #[serde(default)]
    pub targeting: Targeting,
    #[serde(default = "enabled_by_default")]
    pub active: bool,
    /// The creative markup served when the line item wins.
    pub adm: String,
    #[serde(default)]
    pub adomain: Vec<String>,
    /// The creative's IAB categories, for ad-quality filters.
    #[serde(default)]
    pub categories: Vec<String>,
    /// The creative's OpenRTB attribute codes.
    #[serde(default)]
    pub attributes: Vec<i32>,
}

fn default_priority() -> u32 {
    10
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyRate {
    pub currency: String,
    /// Value of one unit of `currency` in USD, until the first of `scheduled` applies.
    pub usd: Micros,
    /// Later values and the UTC day each applies from, in date order.
    #[serde(default)]
    pub scheduled: Vec<ScheduledRate>,
}

/// A currency rate that applies from a date on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledRate {
    /// `YYYY-MM-DD`: from 00:00 UTC that day.
    pub from: String,
    pub usd: Micros,
}

impl ScheduledRate {
    /// Unix seconds of 00:00 UTC on `from`.
    pub fn applies_from(&self) -> Option<i64> {
        let date: jiff::civil::Date = self.from.parse().ok()?;
        date.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_second())
    }
}

impl CurrencyRate {
    /// (applies from, unix seconds; USD micros per unit), the first from always.
    pub fn schedule(&self) -> Vec<(i64, i64)> {
        std::iter::once((i64::MIN, self.usd.0))
            .chain(
                self.scheduled
                    .iter()
                    .filter_map(|s| Some((s.applies_from()?, s.usd.0))),
            )
            .collect()
    }
}

impl Configuration {
    /// Checks everything a snapshot relies on: ids present, unique and bounded,
    /// references resolvable, the account tree acyclic, timeouts and currencies sane.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, network) in self.networks.iter().enumerate() {
            let names = unique_ids(
                &format!("networks[{i}].params"),
                network.params.iter().map(|p| p.name.as_str()),
            )?;
            if names.contains("") {
                return Err(ConfigError::new(
                    format!("networks[{i}].params"),
                    "a parameter needs a name",
                ));
            }
        }
        for (i, account) in self.accounts.iter().enumerate() {
            if let Some(node) = &account.supply_chain_node
                && (node.asi.is_empty() || node.seller_id.is_empty())
            {
                return Err(ConfigError::new(
                    format!("accounts[{i}].supply_chain_node"),
                    "asi and seller_id are both required",
                ));
            }
            for (e, permission) in account.eid_permissions.iter().enumerate() {
                if permission.source.is_empty() {
                    return Err(ConfigError::new(
                        format!("accounts[{i}].eid_permissions[{e}].source"),
                        "must not be empty",
                    ));
                }
            }
        }
        let accounts = unique_ids("accounts", self.accounts.iter().map(|a| a.id.as_str()))?;
        let networks = unique_ids("networks", self.networks.iter().map(|n| n.id.as_str()))?;
        unique_ids(
            "selling_rules",
            self.selling_rules.iter().map(|r| r.id.as_str()),
        )?;
        unique_ids(
            "mediated_bids",
            self.mediated_bids.iter().map(|b| b.id.as_str()),
        )?;
        unique_ids("line_items", self.line_items.iter().map(|l| l.id.as_str()))?;

        for (i, account) in self.accounts.iter().enumerate() {
            if let Some(parent) = &account.parent_id
                && !accounts.contains(parent.as_str())
            {
                return Err(ConfigError::new(
                    format!("accounts[{i}].parent_id"),
                    format!("unknown account {parent:?}"),
                ));
            }
        }
        self.check_account_tree_is_acyclic()?;
        for (i, account) in self.accounts.iter().enumerate() {
            if let Some(zone) = &account.time_zone
                && jiff::tz::TimeZone::get(zone).is_err()
            {
                return Err(ConfigError::new(
                    format!("accounts[{i}].time_zone"),
                    format!(
                        "unknown time zone {zone:?} (expected an IANA name such as Europe/Paris)"
                    ),
                ));
            }
        }
        unique_ids(
            "ad_unit_groups",
            self.ad_unit_groups.iter().map(|g| g.id.as_str()),
        )?;

        let known_account = |field: String, id: &str| {
            if accounts.contains(id) {
                Ok(())
            } else {
                Err(ConfigError::new(field, format!("unknown account {id:?}")))
            }
        };
        for (i, rule) in self.selling_rules.iter().enumerate() {
            known_account(format!("selling_rules[{i}].account_id"), &rule.account_id)?;
            rule.targeting
                .validate(&format!("selling_rules[{i}].targeting"))?;
        }
        for (i, network) in self.networks.iter().enumerate() {
            known_account(format!("networks[{i}].account_id"), &network.account_id)?;
            if network.endpoint.is_empty() {
                return Err(ConfigError::new(
                    format!("networks[{i}].endpoint"),
                    "must not be empty",
                ));
            }
            if network.max_concurrent_calls == 0 {
                return Err(ConfigError::new(
                    format!("networks[{i}].max_concurrent_calls"),
                    "must be at least 1",
                ));
            }
            if let Some(currency) = &network.currency
                && !(currency == crate::money::AUCTION_CURRENCY
                    || self.currency_rates.iter().any(|r| &r.currency == currency))
            {
                return Err(ConfigError::new(
                    format!("networks[{i}].currency"),
                    format!("no currency rate is configured for {currency:?}"),
                ));
            }
            if network.timeout_ms == 0 || network.timeout_ms > MAX_NETWORK_TIMEOUT_MS {
                return Err(ConfigError::new(
                    format!("networks[{i}].timeout_ms"),
                    format!("must be between 1 and {MAX_NETWORK_TIMEOUT_MS}"),
                ));
            }
        }
        for (i, bid) in self.mediated_bids.iter().enumerate() {
            known_account(format!("mediated_bids[{i}].account_id"), &bid.account_id)?;
            if !networks.contains(bid.network_id.as_str()) {
                return Err(ConfigError::new(
                    format!("mediated_bids[{i}].network_id"),
                    format!("unknown network {:?}", bid.network_id),
                ));
            }
            if bid.cpm == Micros::ZERO {
                return Err(ConfigError::new(
                    format!("mediated_bids[{i}].cpm"),
                    "must be greater than zero",
                ));
            }
            bid.targeting
                .validate(&format!("mediated_bids[{i}].targeting"))?;
            if let Some(network) = self.networks.iter().find(|n| n.id == bid.network_id) {
                check_params(
                    &format!("mediated_bids[{i}].params"),
                    &network.params,
                    &bid.params,
                )?;
            }
        }
        for (i, item) in self.line_items.iter().enumerate() {
            known_account(format!("line_items[{i}].account_id"), &item.account_id)?;
            if item.cpm == Micros::ZERO {
                return Err(ConfigError::new(
                    format!("line_items[{i}].cpm"),
                    "must be greater than zero",
                ));
            }
            if item.adm.is_empty() {
                return Err(ConfigError::new(
                    format!("line_items[{i}].adm"),
                    "a line item serves its own creative: adm is required",
                ));
            }
            item.targeting
                .validate(&format!("line_items[{i}].targeting"))?;
        }
        for (i, group) in self.ad_unit_groups.iter().enumerate() {
            known_account(format!("ad_unit_groups[{i}].account_id"), &group.account_id)?;
            if group.ad_units.len() > crate::targeting::MAX_TARGETING_VALUES {
                return Err(ConfigError::new(
                    format!("ad_unit_groups[{i}].ad_units"),
                    format!(
                        "more than {} ad units",
                        crate::targeting::MAX_TARGETING_VALUES
                    ),
                ));
            }
        }
        let mut currencies = HashSet::new();
        for (i, rate) in self.currency_rates.iter().enumerate() {
            let code_ok =
                rate.currency.len() == 3 && rate.currency.bytes().all(|b| b.is_ascii_uppercase());
            if !code_ok {
                return Err(ConfigError::new(
                    format!("currency_rates[{i}].currency"),
                    "must be an upper-case ISO-4217 code such as EUR",
                ));
            }
            if !currencies.insert(rate.currency.as_str()) {
                return Err(ConfigError::new(
                    format!("currency_rates[{i}].currency"),
                    format!("duplicate currency {:?}", rate.currency),
                ));
            }
            if rate.usd == Micros::ZERO {
                return Err(ConfigError::new(
                    format!("currency_rates[{i}].usd"),
                    "must be greater than zero",
                ));
            }
            let mut previous = i64::MIN;
            for (j, scheduled) in rate.scheduled.iter().enumerate() {
                let field = format!("currency_rates[{i}].scheduled[{j}]");
                let Some(from) = scheduled.applies_from() else {
                    return Err(ConfigError::new(
                        format!("{field}.from"),
                        format!("not a date: {:?} (expected YYYY-MM-DD)", scheduled.from),
                    ));
                };
                if from <= previous {
                    return Err(ConfigError::new(
                        format!("{field}.from"),
                        "dates must be in increasing order",
                    ));
                }
                previous = from;
                if scheduled.usd == Micros::ZERO {
                    return Err(ConfigError::new(
                        format!("{field}.usd"),
                        "must be greater than zero",
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_account_tree_is_acyclic(&self) -> Result<(), ConfigError> {
        let parent_of: std::collections::HashMap<&str, &str> = self
            .accounts
            .iter()
            .filter_map(|a| a.parent_id.as_deref().map(|p| (a.id.as_str(), p)))
            .collect();
        for (i, account) in self.accounts.iter().enumerate() {
            let mut current = account.id.as_str();
            for _ in 0..=self.accounts.len() {
                match parent_of.get(current) {
                    Some(parent) if *parent == account.id => {
                        return Err(ConfigError::new(
                            format!("accounts[{i}].parent_id"),
                            format!("account {:?} is its own ancestor", account.id),
                        ));
                    }
                    Some(parent) => current = parent,
                    None => break,
                }
            }
        }
        Ok(())
    }
}

fn unique_ids<'a>(
    kind: &str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<HashSet<&'a str>, ConfigError> {
    let mut seen = HashSet::new();
    for (i, id) in ids.enumerate() {
        if i >= MAX_ENTITIES_PER_KIND {
            return Err(ConfigError::new(
                kind,
                format!("more than {MAX_ENTITIES_PER_KIND} entries"),
            ));
        }
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(ConfigError::new(
                format!("{kind}[{i}].id"),
                format!("must be 1 to {MAX_ID_LEN} characters"),
            ));
        }
        if !seen.insert(id) {
            return Err(ConfigError::new(
                format!("{kind}[{i}].id"),
                format!("duplicate id {id:?}"),
            ));
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod currency_rates {
    use super::*;

    fn with_rate(rate: CurrencyRate) -> Result<(), ConfigError> {
        Configuration {
            currency_rates: vec![rate],
            ..Default::default()
        }
        .validate()
    }

    #[test]
    fn scheduled_rates_need_dates_in_order() {
        let rate = |dates: &[&str]| CurrencyRate {
            currency: "CHF".into(),
            usd: Micros(1_000_000),
            scheduled: dates
                .iter()
                .map(|from| ScheduledRate {
                    from: from.to_string(),
                    usd: Micros(1_100_000),
                })
                .collect(),
        };
        assert!(with_rate(rate(&["2026-01-01", "2026-06-01"])).is_ok());
        assert_eq!(
            with_rate(rate(&["2026-06-01", "2026-01-01"]))
                .unwrap_err()
                .field,
            "currency_rates[0].scheduled[1].from"
        );
        assert_eq!(
            with_rate(rate(&["June"])).unwrap_err().field,
            "currency_rates[0].scheduled[0].from"
        );
        let schedule = rate(&["1970-01-02"]).schedule();
        assert_eq!(schedule, [(i64::MIN, 1_000_000), (86_400, 1_100_000)]);
    }
}

#[cfg(test)]
mod params {
    use super::*;

    fn with_params(params: serde_json::Value) -> Configuration {
        Configuration {
            accounts: vec![Account {
                id: "a".into(),
                ..Default::default()
            }],
            networks: vec![Network {
                id: "n".into(),
                account_id: "a".into(),
                endpoint: "https://n.example/openrtb".into(),
                params: vec![
                    ParamSpec {
                        name: "zoneId".into(),
                        kind: ParamKind::Integer,
                        required: true,
                    },
                    ParamSpec {
                        name: "site".into(),
                        kind: ParamKind::String,
                        required: false,
                    },
                ],
                ..Default::default()
            }],
            mediated_bids: vec![MediatedBid {
                id: "b".into(),
                account_id: "a".into(),
                network_id: "n".into(),
                cpm: Micros(1_000_000),
                active: true,
                params: params.as_object().cloned().unwrap(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_mediated_bid_carries_exactly_the_parameters_its_network_declares() {
        assert!(
            with_params(serde_json::json!({"zoneId": 7}))
                .validate()
                .is_ok()
        );
        assert!(
            with_params(serde_json::json!({"zoneId": 7, "site": "s"}))
                .validate()
                .is_ok()
        );
        for (params, field) in [
            (serde_json::json!({}), "mediated_bids[0].params.zoneId"),
            (
                serde_json::json!({"zoneId": "7"}),
                "mediated_bids[0].params.zoneId",
            ),
            (
                serde_json::json!({"zoneId": 7.5}),
                "mediated_bids[0].params.zoneId",
            ),
            (
                serde_json::json!({"zoneId": 7, "zone": 1}),
                "mediated_bids[0].params.zone",
            ),
        ] {
            let error = with_params(params.clone()).validate().unwrap_err();
            assert_eq!(error.field, field, "{params}: {error}");
        }
    }
}

#[cfg(test)]
mod presets {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Preset {
        name: String,
        description: String,
        protocol: NetworkProtocol,
        mode: NetworkMode,
        endpoint: String,
        timeout_ms: u32,
        #[serde(default)]
        gvl_id: Option<u16>,
        #[serde(default)]
        params: Vec<ParamSpec>,
        #[serde(default)]
        params_at: String,
        /// What a mediated bid of the network carries, as an example.
        #[serde(default)]
        example_params: serde_json::Map<String, serde_json::Value>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Presets {
        presets: Vec<Preset>,
    }

    /// Every documented preset is a network configuration that validates once its
    /// endpoint is filled in, with a mediated bid carrying its example parameters; a
    /// bid missing a required one is refused, naming it.
    #[test]
    fn every_preset_makes_a_valid_network() {
        let presets: Presets =
            toml::from_str(include_str!("../../../examples/network-presets.toml")).unwrap();
        assert!(presets.presets.len() >= 5);
        for preset in presets.presets {
            assert!(!preset.description.is_empty(), "{}", preset.name);
            assert!(
                preset.endpoint.contains('<'),
                "{}: the endpoint is a template",
                preset.name
            );
            let configuration = Configuration {
                accounts: vec![Account {
                    id: "a".into(),
                    ..Default::default()
                }],
                networks: vec![Network {
                    id: preset.name.clone(),
                    account_id: "a".into(),
                    protocol: preset.protocol,
                    mode: preset.mode,
                    endpoint: preset.endpoint.replace(['<', '>'], ""),
                    timeout_ms: preset.timeout_ms,
                    gvl_id: preset.gvl_id,
                    params: preset.params.clone(),
                    params_at: preset.params_at.clone(),
                    ..Default::default()
                }],
                mediated_bids: vec![MediatedBid {
                    id: "b".into(),
                    account_id: "a".into(),
                    network_id: preset.name.clone(),
                    cpm: Micros(1_000_000),
                    active: true,
                    params: preset.example_params.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            configuration
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", preset.name));
            if let Some(required) = preset.params.iter().find(|p| p.required) {
                let mut missing = configuration.clone();
                missing.mediated_bids[0].params.remove(&required.name);
                let error = missing.validate().unwrap_err();
                assert_eq!(
                    error.field,
                    format!("mediated_bids[0].params.{}", required.name),
                    "{}",
                    preset.name
                );
            }
        }
    }
}
