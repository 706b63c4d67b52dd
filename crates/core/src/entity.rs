//! One configuration entity at a time: what the admin API and `cascade admin` create,
//! read, replace, delete and diff. A [`Configuration`] is a set of entities keyed by
//! kind and id; every change here goes through [`Configuration::validate`] before it is
//! stored, so an entity can never be half-written or leave a dangling reference.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{
    Account, AdUnitGroup, ConfigError, Configuration, CurrencyRate, LineItem, MediatedBid, Network,
    SellingRule,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityKind {
    Account,
    SellingRule,
    Network,
    MediatedBid,
    LineItem,
    AdUnitGroup,
    CurrencyRate,
}

impl EntityKind {
    pub const ALL: [EntityKind; 7] = [
        EntityKind::Account,
        EntityKind::AdUnitGroup,
        EntityKind::SellingRule,
        EntityKind::Network,
        EntityKind::MediatedBid,
        EntityKind::LineItem,
        EntityKind::CurrencyRate,
    ];

    /// The snake_case name used in change lines and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Account => "account",
            EntityKind::SellingRule => "selling_rule",
            EntityKind::Network => "network",
            EntityKind::MediatedBid => "mediated_bid",
            EntityKind::LineItem => "line_item",
            EntityKind::AdUnitGroup => "ad_unit_group",
            EntityKind::CurrencyRate => "currency_rate",
        }
    }

    /// Parses a kind by its snake_case name, its plural, or its YAML `kind:` name.
    pub fn parse(text: &str) -> Option<EntityKind> {
        let normalized: String = text
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect();
        let singular = normalized.strip_suffix('s').unwrap_or(&normalized);
        EntityKind::ALL
            .into_iter()
            .find(|kind| kind.name().replace('_', "") == singular)
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entity of any kind. Serialized with a `kind` tag, as in a YAML file of
/// `cascade admin apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Entity {
    Account(Account),
    SellingRule(SellingRule),
    Network(Network),
    MediatedBid(MediatedBid),
    LineItem(LineItem),
    AdUnitGroup(AdUnitGroup),
    CurrencyRate(CurrencyRate),
}

impl Entity {
    pub fn kind(&self) -> EntityKind {
        match self {
            Entity::Account(_) => EntityKind::Account,
            Entity::SellingRule(_) => EntityKind::SellingRule,
            Entity::Network(_) => EntityKind::Network,
            Entity::MediatedBid(_) => EntityKind::MediatedBid,
            Entity::LineItem(_) => EntityKind::LineItem,
            Entity::AdUnitGroup(_) => EntityKind::AdUnitGroup,
            Entity::CurrencyRate(_) => EntityKind::CurrencyRate,
        }
    }

    /// The id, unique within the kind (the currency code for a currency rate).
    pub fn id(&self) -> &str {
        match self {
            Entity::Account(e) => &e.id,
            Entity::SellingRule(e) => &e.id,
            Entity::Network(e) => &e.id,
            Entity::MediatedBid(e) => &e.id,
            Entity::LineItem(e) => &e.id,
            Entity::AdUnitGroup(e) => &e.id,
            Entity::CurrencyRate(e) => &e.currency,
        }
    }

    /// The account the entity belongs to: itself for an account, none for a rate.
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Entity::Account(e) => Some(&e.id),
            Entity::SellingRule(e) => Some(&e.account_id),
            Entity::Network(e) => Some(&e.account_id),
            Entity::MediatedBid(e) => Some(&e.account_id),
            Entity::LineItem(e) => Some(&e.account_id),
            Entity::AdUnitGroup(e) => Some(&e.account_id),
            Entity::CurrencyRate(_) => None,
        }
    }
}

/// Replaces the element of `list` whose id is `id`, or appends `entity`.
fn put<T: PartialEq>(list: &mut Vec<T>, entity: T, id: impl Fn(&T) -> &str) -> Put {
    match list.iter_mut().find(|e| id(e) == id(&entity)) {
        Some(existing) if *existing == entity => Put::Unchanged,
        Some(existing) => {
            *existing = entity;
            Put::Replaced
        }
        None => {
            list.push(entity);
            Put::Created
        }
    }
}

/// Removes the element of `list` whose id is `id`.
fn take<T>(list: &mut Vec<T>, id: &str, id_of: impl Fn(&T) -> &str) -> Option<T> {
    let position = list.iter().position(|e| id_of(e) == id)?;
    Some(list.remove(position))
}

/// What [`Configuration::put_entity`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    Replaced,
    Unchanged,
}

impl Configuration {
    /// Every entity, in [`EntityKind::ALL`] order, then in stored order.
    pub fn entities(&self) -> Vec<Entity> {
        EntityKind::ALL
            .into_iter()
            .flat_map(|kind| self.entities_of(kind))
            .collect()
    }

    /// The entities of one kind, in stored order.
    pub fn entities_of(&self, kind: EntityKind) -> Vec<Entity> {
        match kind {
            EntityKind::Account => self.accounts.iter().cloned().map(Entity::Account).collect(),
            EntityKind::SellingRule => self
                .selling_rules
                .iter()
                .cloned()
                .map(Entity::SellingRule)
                .collect(),
            EntityKind::Network => self.networks.iter().cloned().map(Entity::Network).collect(),
            EntityKind::MediatedBid => self
                .mediated_bids
                .iter()
                .cloned()
                .map(Entity::MediatedBid)
                .collect(),
            EntityKind::LineItem => self
                .line_items
                .iter()
                .cloned()
                .map(Entity::LineItem)
                .collect(),
            EntityKind::AdUnitGroup => self
                .ad_unit_groups
                .iter()
                .cloned()
                .map(Entity::AdUnitGroup)
                .collect(),
            EntityKind::CurrencyRate => self
                .currency_rates
                .iter()
                .cloned()
                .map(Entity::CurrencyRate)
                .collect(),
        }
    }

    pub fn entity(&self, kind: EntityKind, id: &str) -> Option<Entity> {
        self.entities_of(kind).into_iter().find(|e| e.id() == id)
    }

    /// Creates `entity`, or replaces the one of the same kind and id in place. Does not
    /// validate: callers validate the whole configuration before storing it.
    pub fn put_entity(&mut self, entity: Entity) -> Put {
        match entity {
            Entity::Account(e) => put(&mut self.accounts, e, |e| &e.id),
            Entity::SellingRule(e) => put(&mut self.selling_rules, e, |e| &e.id),
            Entity::Network(e) => put(&mut self.networks, e, |e| &e.id),
            Entity::MediatedBid(e) => put(&mut self.mediated_bids, e, |e| &e.id),
            Entity::LineItem(e) => put(&mut self.line_items, e, |e| &e.id),
            Entity::AdUnitGroup(e) => put(&mut self.ad_unit_groups, e, |e| &e.id),
            Entity::CurrencyRate(e) => put(&mut self.currency_rates, e, |e| &e.currency),
        }
    }

    /// Removes the entity of `kind` and `id`, returning it; `None` when there is none.
    /// Does not validate: removing an entity others refer to leaves a configuration
    /// that [`Configuration::validate`] refuses, naming the referring field.
    pub fn remove_entity(&mut self, kind: EntityKind, id: &str) -> Option<Entity> {
        match kind {
            EntityKind::Account => take(&mut self.accounts, id, |e| &e.id).map(Entity::Account),
            EntityKind::SellingRule => {
                take(&mut self.selling_rules, id, |e| &e.id).map(Entity::SellingRule)
            }
            EntityKind::Network => take(&mut self.networks, id, |e| &e.id).map(Entity::Network),
            EntityKind::MediatedBid => {
                take(&mut self.mediated_bids, id, |e| &e.id).map(Entity::MediatedBid)
            }
            EntityKind::LineItem => take(&mut self.line_items, id, |e| &e.id).map(Entity::LineItem),
            EntityKind::AdUnitGroup => {
                take(&mut self.ad_unit_groups, id, |e| &e.id).map(Entity::AdUnitGroup)
            }
            EntityKind::CurrencyRate => {
                take(&mut self.currency_rates, id, |e| &e.currency).map(Entity::CurrencyRate)
            }
        }
    }

    /// Checks `entity` on its own (ids, references, values) by validating the
    /// configuration it would make; the error names the field within the entity.
    pub fn validate_put(&self, entity: &Entity) -> Result<Configuration, ConfigError> {
        let mut candidate = self.clone();
        candidate.put_entity(entity.clone());
        candidate.validate()?;
        Ok(candidate)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

/// One entity that differs between two configurations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub kind: EntityKind,
    pub id: String,
    pub change: ChangeKind,
}

impl fmt::Display for Change {
    /// `+ account 8953`, `~ network adnet`, `- mediated_bid mb-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.change {
            ChangeKind::Added => '+',
            ChangeKind::Changed => '~',
            ChangeKind::Removed => '-',
        };
        write!(f, "{sign} {} {}", self.kind, self.id)
    }
}

/// What turns `old` into `new`, entity by entity, ordered by kind and id.
pub fn diff(old: &Configuration, new: &Configuration) -> Vec<Change> {
    let keyed = |configuration: &Configuration| -> BTreeMap<(EntityKind, String), Entity> {
        configuration
            .entities()
            .into_iter()
            .map(|e| ((e.kind(), e.id().to_string()), e))
            .collect()
    };
    let (old, new) = (keyed(old), keyed(new));
    let mut changes: Vec<Change> = old
        .iter()
        .filter_map(|((kind, id), before)| {
            let change = match new.get(&(*kind, id.clone())) {
                None => ChangeKind::Removed,
                Some(after) if after != before => ChangeKind::Changed,
                Some(_) => return None,
            };
            Some(Change {
                kind: *kind,
                id: id.clone(),
                change,
            })
        })
        .collect();
    changes.extend(
        new.keys()
            .filter(|key| !old.contains_key(key))
            .map(|(kind, id)| Change {
                kind: *kind,
                id: id.clone(),
                change: ChangeKind::Added,
            }),
    );
    changes.sort();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Micros;

    fn account(id: &str) -> Entity {
        Entity::Account(Account {
            id: id.into(),
            ..Default::default()
        })
    }

    fn network(id: &str, account: &str) -> Entity {
        Entity::Network(Network {
            id: id.into(),
            account_id: account.into(),
            endpoint: "http://127.0.0.1:1/openrtb".into(),
            ..Default::default()
        })
    }

    fn mediated_bid(id: &str, network: &str) -> Entity {
        Entity::MediatedBid(MediatedBid {
            id: id.into(),
            account_id: "a".into(),
            network_id: network.into(),
            cpm: Micros(1_000_000),
            ..Default::default()
        })
    }

    #[test]
    fn put_creates_replaces_and_notices_no_change() {
        let mut configuration = Configuration::default();
        assert_eq!(configuration.put_entity(account("a")), Put::Created);
        assert_eq!(configuration.put_entity(account("a")), Put::Unchanged);
        let renamed = Entity::Account(Account {
            id: "a".into(),
            name: "Renamed".into(),
            ..Default::default()
        });
        assert_eq!(configuration.put_entity(renamed.clone()), Put::Replaced);
        assert_eq!(configuration.accounts.len(), 1);
        assert_eq!(
            configuration.entity(EntityKind::Account, "a"),
            Some(renamed)
        );
    }

    #[test]
    fn removing_a_referenced_entity_fails_validation_naming_the_reference() {
        let mut configuration = Configuration::default();
        for entity in [account("a"), network("n", "a"), mediated_bid("b", "n")] {
            configuration = configuration.validate_put(&entity).unwrap();
        }
        let mut without_network = configuration.clone();
        assert!(
            without_network
                .remove_entity(EntityKind::Network, "n")
                .is_some()
        );
        let error = without_network.validate().unwrap_err();
        assert_eq!(error.field, "mediated_bids[0].network_id");
        assert_eq!(
            configuration.remove_entity(EntityKind::Network, "missing"),
            None
        );
    }

    #[test]
    fn diff_lists_added_changed_and_removed_entities_in_order() {
        let mut old = Configuration::default();
        old.put_entity(account("a"));
        old.put_entity(account("gone"));
        old.put_entity(network("n", "a"));
        let mut new = old.clone();
        new.remove_entity(EntityKind::Account, "gone");
        new.put_entity(account("b"));
        if let Some(Entity::Network(mut n)) = new.remove_entity(EntityKind::Network, "n") {
            n.timeout_ms = 100;
            new.put_entity(Entity::Network(n));
        }
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["+ account b", "- account gone", "~ network n"]);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn kinds_parse_from_every_spelling() {
        for kind in EntityKind::ALL {
            assert_eq!(EntityKind::parse(kind.name()), Some(kind));
            assert_eq!(EntityKind::parse(&format!("{}s", kind.name())), Some(kind));
        }
        assert_eq!(
            EntityKind::parse("SellingRule"),
            Some(EntityKind::SellingRule)
        );
        assert_eq!(
            EntityKind::parse("mediated-bids"),
            Some(EntityKind::MediatedBid)
        );
        assert_eq!(EntityKind::parse("widget"), None);
    }

    #[test]
    fn entities_read_from_tagged_documents() {
        let entity: Entity = serde_json::from_str(
            r#"{"kind": "MediatedBid", "id": "b", "account_id": "a", "network_id": "n", "cpm": "1.25"}"#,
        )
        .unwrap();
        assert_eq!(entity.kind(), EntityKind::MediatedBid);
        assert!(
            serde_json::from_str::<Entity>(r#"{"kind": "Account", "id": "a", "colour": "red"}"#)
                .is_err(),
            "unknown fields are refused"
        );
    }
}
