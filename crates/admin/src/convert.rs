//! The admin API's protobuf messages to and from the configuration types of
//! `cascade_core`. Going to protobuf cannot fail; coming from it checks what protobuf
//! cannot express (enum values in range, money not negative, hours of the day) and
//! names the field that is wrong.

use cascade_core::config::{
    Account, AdUnitGroup, AuctionType, ConfigError, Configuration, CurrencyRate, EidPermission,
    LineItem, LineItemClass, MediatedBid, MediationMode, Network, NetworkMode, NetworkProtocol,
    ParamKind, ParamSpec, ScheduledRate, SellingRule, SupplyChainNode,
};
use cascade_core::entity::{Entity, EntityKind};
use cascade_core::money::{Factor, Micros};
use cascade_core::targeting::{
    DayPart, Filter, MediaType, SegmentFilter, Size, Targeting, Weekday,
};
use cascade_proto::admin::v1 as pb;
use cascade_proto::auction::v1::AuctionType as PbAuctionType;
use cascade_proto::targeting::v1 as targeting_pb;

type Result<T> = std::result::Result<T, ConfigError>;

pub fn configuration_to_proto(configuration: &Configuration) -> pb::Configuration {
    pb::Configuration {
        version: configuration.version,
        accounts: configuration
            .accounts
            .iter()
            .map(account_to_proto)
            .collect(),
        selling_rules: configuration
            .selling_rules
            .iter()
            .map(selling_rule_to_proto)
            .collect(),
        networks: configuration
            .networks
            .iter()
            .map(network_to_proto)
            .collect(),
        mediated_bids: configuration
            .mediated_bids
            .iter()
            .map(mediated_bid_to_proto)
            .collect(),
        currency_rates: configuration
            .currency_rates
            .iter()
            .map(currency_rate_to_proto)
            .collect(),
        ad_unit_groups: configuration
            .ad_unit_groups
            .iter()
            .map(ad_unit_group_to_proto)
            .collect(),
        line_items: configuration
            .line_items
            .iter()
            .map(line_item_to_proto)
            .collect(),
    }
}

/// The configuration a request carries; `field` paths are relative to it
/// (`selling_rules[2].floor_micros`).
pub fn configuration_from_proto(configuration: pb::Configuration) -> Result<Configuration> {
    fn each<P, T>(
        kind: &str,
        items: Vec<P>,
        convert: impl Fn(P, &str) -> Result<T>,
    ) -> Result<Vec<T>> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| convert(item, &format!("{kind}[{i}]")))
            .collect()
    }
    Ok(Configuration {
        version: configuration.version,
        accounts: each("accounts", configuration.accounts, account_from_proto)?,
        selling_rules: each(
            "selling_rules",
            configuration.selling_rules,
            selling_rule_from_proto,
        )?,
        networks: each("networks", configuration.networks, network_from_proto)?,
        mediated_bids: each(
            "mediated_bids",
            configuration.mediated_bids,
            mediated_bid_from_proto,
        )?,
        currency_rates: each(
            "currency_rates",
            configuration.currency_rates,
            currency_rate_from_proto,
        )?,
        ad_unit_groups: each("ad_unit_groups", configuration.ad_unit_groups, |g, _| {
            Ok(ad_unit_group_from_proto(g))
        })?,
        line_items: each("line_items", configuration.line_items, line_item_from_proto)?,
    })
}

pub fn entity_to_proto(entity: &Entity) -> pb::Entity {
    use pb::entity::Entity as E;
    let entity = match entity {
        Entity::Account(e) => E::Account(account_to_proto(e)),
        Entity::SellingRule(e) => E::SellingRule(selling_rule_to_proto(e)),
        Entity::Network(e) => E::Network(network_to_proto(e)),
        Entity::MediatedBid(e) => E::MediatedBid(mediated_bid_to_proto(e)),
        Entity::LineItem(e) => E::LineItem(line_item_to_proto(e)),
        Entity::AdUnitGroup(e) => E::AdUnitGroup(ad_unit_group_to_proto(e)),
        Entity::CurrencyRate(e) => E::CurrencyRate(currency_rate_to_proto(e)),
    };
    pb::Entity {
        entity: Some(entity),
    }
}

/// The entity a request carries; `field` paths start at `entity`.
pub fn entity_from_proto(entity: Option<pb::Entity>) -> Result<Entity> {
    use pb::entity::Entity as E;
    let Some(entity) = entity.and_then(|e| e.entity) else {
        return Err(ConfigError::new(
            "entity",
            "required: one entity of any kind",
        ));
    };
    Ok(match entity {
        E::Account(e) => Entity::Account(account_from_proto(e, "entity.account")?),
        E::SellingRule(e) => {
            Entity::SellingRule(selling_rule_from_proto(e, "entity.selling_rule")?)
        }
        E::Network(e) => Entity::Network(network_from_proto(e, "entity.network")?),
        E::MediatedBid(e) => {
            Entity::MediatedBid(mediated_bid_from_proto(e, "entity.mediated_bid")?)
        }
        E::LineItem(e) => Entity::LineItem(line_item_from_proto(e, "entity.line_item")?),
        E::AdUnitGroup(e) => Entity::AdUnitGroup(ad_unit_group_from_proto(e)),
        E::CurrencyRate(e) => {
            Entity::CurrencyRate(currency_rate_from_proto(e, "entity.currency_rate")?)
        }
    })
}

pub fn kind_to_proto(kind: EntityKind) -> pb::EntityKind {
    match kind {
        EntityKind::Account => pb::EntityKind::Account,
        EntityKind::SellingRule => pb::EntityKind::SellingRule,
        EntityKind::Network => pb::EntityKind::Network,
        EntityKind::MediatedBid => pb::EntityKind::MediatedBid,
        EntityKind::LineItem => pb::EntityKind::LineItem,
        EntityKind::AdUnitGroup => pb::EntityKind::AdUnitGroup,
        EntityKind::CurrencyRate => pb::EntityKind::CurrencyRate,
    }
}

/// The kind a request names in `field`; unspecified or unknown values are refused.
pub fn kind_from_proto(kind: i32, field: &str) -> Result<EntityKind> {
    Ok(match pb::EntityKind::try_from(kind) {
        Ok(pb::EntityKind::Account) => EntityKind::Account,
        Ok(pb::EntityKind::SellingRule) => EntityKind::SellingRule,
        Ok(pb::EntityKind::Network) => EntityKind::Network,
        Ok(pb::EntityKind::MediatedBid) => EntityKind::MediatedBid,
        Ok(pb::EntityKind::LineItem) => EntityKind::LineItem,
        Ok(pb::EntityKind::AdUnitGroup) => EntityKind::AdUnitGroup,
        Ok(pb::EntityKind::CurrencyRate) => EntityKind::CurrencyRate,
        Ok(pb::EntityKind::Unspecified) | Err(_) => {
            return Err(ConfigError::new(field, "required: an entity kind"));
        }
    })
}

fn micros(value: i64, field: &str) -> Result<Micros> {
    Micros::checked(value).map_err(|e| ConfigError::new(field, e.to_string()))
}

/// A multiplier in millionths; 0 means "not set", which is 1.
fn factor(value: i64, field: &str) -> Result<Factor> {
    match value {
        0 => Ok(Factor::ONE),
        v if v > 0 && v <= 10 * Factor::ONE.0 => Ok(Factor(v)),
        _ => Err(ConfigError::new(
            field,
            "a bid adjustment must be greater than 0 and at most 10000000 (10x)",
        )),
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn mediation_mode_to_proto(mode: Option<MediationMode>) -> pb::MediationMode {
    match mode {
        None => pb::MediationMode::Unspecified,
        Some(MediationMode::Waterfall) => pb::MediationMode::Waterfall,
        Some(MediationMode::Bidding) => pb::MediationMode::Bidding,
        Some(MediationMode::Hybrid) => pb::MediationMode::Hybrid,
    }
}

fn mediation_mode_from_proto(mode: i32, field: &str) -> Result<Option<MediationMode>> {
    match pb::MediationMode::try_from(mode) {
        Ok(pb::MediationMode::Unspecified) => Ok(None),
        Ok(pb::MediationMode::Waterfall) => Ok(Some(MediationMode::Waterfall)),
        Ok(pb::MediationMode::Bidding) => Ok(Some(MediationMode::Bidding)),
        Ok(pb::MediationMode::Hybrid) => Ok(Some(MediationMode::Hybrid)),
        Err(_) => Err(ConfigError::new(
            field,
            format!("unknown mediation mode {mode}"),
        )),
    }
}

fn account_to_proto(account: &Account) -> pb::Account {
    pb::Account {
        id: account.id.clone(),
        parent_id: account.parent_id.clone().unwrap_or_default(),
        name: account.name.clone(),
        time_zone: account.time_zone.clone().unwrap_or_default(),
        mediation_mode: mediation_mode_to_proto(account.mediation_mode).into(),
        ad_unit_mediation_modes: account
            .ad_unit_mediation_modes
            .iter()
            .map(|(unit, mode)| (unit.clone(), mediation_mode_to_proto(Some(*mode)).into()))
            .collect(),
        seat_bid_adjustments_micros: account
            .seat_bid_adjustments
            .iter()
            .map(|(seat, factor)| (seat.clone(), factor.0))
            .collect(),
        supply_chain_node: account
            .supply_chain_node
            .as_ref()
            .map(|node| pb::SupplyChainNode {
                asi: node.asi.clone(),
                seller_id: node.seller_id.clone(),
            }),
        eid_permissions: account
            .eid_permissions
            .iter()
            .map(|p| pb::EidPermission {
                source: p.source.clone(),
                networks: p.networks.clone(),
            })
            .collect(),
    }
}

fn account_from_proto(account: pb::Account, path: &str) -> Result<Account> {
    let mut ad_unit_mediation_modes = std::collections::BTreeMap::new();
    for (unit, mode) in account.ad_unit_mediation_modes {
        let field = format!("{path}.ad_unit_mediation_modes[{unit:?}]");
        let Some(mode) = mediation_mode_from_proto(mode, &field)? else {
            return Err(ConfigError::new(field, "a mode is required"));
        };
        ad_unit_mediation_modes.insert(unit, mode);
    }
    let mut seat_bid_adjustments = std::collections::BTreeMap::new();
    for (seat, adjustment) in account.seat_bid_adjustments_micros {
        let field = format!("{path}.seat_bid_adjustments_micros[{seat:?}]");
        if adjustment == 0 {
            return Err(ConfigError::new(field, "must be greater than 0"));
        }
        seat_bid_adjustments.insert(seat, factor(adjustment, &field)?);
    }
    Ok(Account {
        id: account.id,
        parent_id: non_empty(account.parent_id),
        name: account.name,
        time_zone: non_empty(account.time_zone),
        mediation_mode: mediation_mode_from_proto(
            account.mediation_mode,
            &format!("{path}.mediation_mode"),
        )?,
        ad_unit_mediation_modes,
        seat_bid_adjustments,
        supply_chain_node: account.supply_chain_node.map(|node| SupplyChainNode {
            asi: node.asi,
            seller_id: node.seller_id,
        }),
        eid_permissions: account
            .eid_permissions
            .into_iter()
            .map(|p| EidPermission {
                source: p.source,
                networks: p.networks,
            })
            .collect(),
    })
}

fn selling_rule_to_proto(rule: &SellingRule) -> pb::SellingRule {
    pb::SellingRule {
        id: rule.id.clone(),
        account_id: rule.account_id.clone(),
        name: rule.name.clone(),
        enabled: Some(rule.enabled),
        targeting: Some(targeting_to_proto(&rule.targeting)),
        floor_micros: rule.floor.0,
        blocked_adomains: rule.blocked_adomains.clone(),
        blocked_categories: rule.blocked_categories.clone(),
        auction_type: match rule.auction_type {
            AuctionType::FirstPrice => PbAuctionType::FirstPrice,
            AuctionType::SecondPrice => PbAuctionType::SecondPrice,
        }
        .into(),
        blocked_seats: rule.blocked_seats.clone(),
        blocked_attributes: rule.blocked_attributes.clone(),
        block_unknown_adomain: rule.block_unknown_adomain,
        block_unknown_category: rule.block_unknown_category,
        mediated_bids_set_second_price: rule.mediated_bids_set_second_price,
    }
}

fn selling_rule_from_proto(rule: pb::SellingRule, path: &str) -> Result<SellingRule> {
    Ok(SellingRule {
        floor: micros(rule.floor_micros, &format!("{path}.floor_micros"))?,
        auction_type: match PbAuctionType::try_from(rule.auction_type) {
            Ok(PbAuctionType::Unspecified | PbAuctionType::FirstPrice) => AuctionType::FirstPrice,
            Ok(PbAuctionType::SecondPrice) => AuctionType::SecondPrice,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.auction_type"),
                    format!("unknown auction type {}", rule.auction_type),
                ));
            }
        },
        targeting: targeting_from_proto(rule.targeting, &format!("{path}.targeting"))?,
        id: rule.id,
        account_id: rule.account_id,
        name: rule.name,
        enabled: rule.enabled.unwrap_or(true),
        blocked_adomains: rule.blocked_adomains,
        blocked_categories: rule.blocked_categories,
        blocked_seats: rule.blocked_seats,
        blocked_attributes: rule.blocked_attributes,
        block_unknown_adomain: rule.block_unknown_adomain,
        block_unknown_category: rule.block_unknown_category,
        mediated_bids_set_second_price: rule.mediated_bids_set_second_price,
    })
}

fn network_to_proto(network: &Network) -> pb::Network {
    pb::Network {
        id: network.id.clone(),
        account_id: network.account_id.clone(),
        name: network.name.clone(),
        protocol: match network.protocol {
            NetworkProtocol::OpenrtbHttp => pb::NetworkProtocol::OpenrtbHttp,
            NetworkProtocol::Grpc => pb::NetworkProtocol::Grpc,
        }
        .into(),
        endpoint: network.endpoint.clone(),
        timeout_ms: network.timeout_ms,
        mode: match network.mode {
            NetworkMode::Waterfall => pb::NetworkMode::Waterfall,
            NetworkMode::Bidding => pb::NetworkMode::Bidding,
        }
        .into(),
        max_concurrent_calls: network.max_concurrent_calls,
        bid_adjustment_micros: network.bid_adjustment.0,
        currency: network.currency.clone().unwrap_or_default(),
        gvl_id: network.gvl_id.map(u32::from),
        params: network
            .params
            .iter()
            .map(|p| pb::NetworkParam {
                name: p.name.clone(),
                kind: p.kind.name().to_string(),
                required: p.required,
            })
            .collect(),
        params_at: network.params_at.clone(),
    }
}

fn network_from_proto(network: pb::Network, path: &str) -> Result<Network> {
    let defaults = Network::default();
    Ok(Network {
        protocol: match pb::NetworkProtocol::try_from(network.protocol) {
            Ok(pb::NetworkProtocol::Unspecified | pb::NetworkProtocol::OpenrtbHttp) => {
                NetworkProtocol::OpenrtbHttp
            }
            Ok(pb::NetworkProtocol::Grpc) => NetworkProtocol::Grpc,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.protocol"),
                    format!("unknown protocol {}", network.protocol),
                ));
            }
        },
        mode: match pb::NetworkMode::try_from(network.mode) {
            Ok(pb::NetworkMode::Unspecified | pb::NetworkMode::Waterfall) => NetworkMode::Waterfall,
            Ok(pb::NetworkMode::Bidding) => NetworkMode::Bidding,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.mode"),
                    format!("unknown mode {}", network.mode),
                ));
            }
        },
        timeout_ms: match network.timeout_ms {
            0 => defaults.timeout_ms,
            timeout => timeout,
        },
        max_concurrent_calls: match network.max_concurrent_calls {
            0 => defaults.max_concurrent_calls,
            calls => calls,
        },
        bid_adjustment: factor(
            network.bid_adjustment_micros,
            &format!("{path}.bid_adjustment_micros"),
        )?,
        id: network.id,
        account_id: network.account_id,
        name: network.name,
        endpoint: network.endpoint,
        currency: (!network.currency.is_empty()).then_some(network.currency),
        gvl_id: network
            .gvl_id
            .map(|id| {
                u16::try_from(id).map_err(|_| {
                    ConfigError::new(format!("{path}.gvl_id"), "must be at most 65535")
                })
            })
            .transpose()?,
        params: network
            .params
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let kind = match p.kind.as_str() {
                    "" | "string" => ParamKind::String,
                    "integer" => ParamKind::Integer,
                    "number" => ParamKind::Number,
                    "boolean" => ParamKind::Boolean,
                    "object" => ParamKind::Object,
                    other => {
                        return Err(ConfigError::new(
                            format!("{path}.params[{i}].kind"),
                            format!("unknown kind {other:?} (string, integer, number, boolean or object)"),
                        ));
                    }
                };
                Ok(ParamSpec {
                    name: p.name,
                    kind,
                    required: p.required,
                })
            })
            .collect::<Result<_>>()?,
        params_at: network.params_at,
    })
}

fn mediated_bid_to_proto(bid: &MediatedBid) -> pb::MediatedBid {
    pb::MediatedBid {
        id: bid.id.clone(),
        account_id: bid.account_id.clone(),
        network_id: bid.network_id.clone(),
        cpm_micros: bid.cpm.0,
        targeting: Some(targeting_to_proto(&bid.targeting)),
        active: Some(bid.active),
        placement_id: bid.placement_id.clone(),
        params: (!bid.params.is_empty())
            .then(|| cascade_proto::openrtb_json::json_to_struct(bid.params.clone())),
    }
}

fn mediated_bid_from_proto(bid: pb::MediatedBid, path: &str) -> Result<MediatedBid> {
    Ok(MediatedBid {
        cpm: micros(bid.cpm_micros, &format!("{path}.cpm_micros"))?,
        targeting: targeting_from_proto(bid.targeting, &format!("{path}.targeting"))?,
        id: bid.id,
        account_id: bid.account_id,
        network_id: bid.network_id,
        active: bid.active.unwrap_or(true),
        placement_id: bid.placement_id,
        params: bid
            .params
            .as_ref()
            .map(cascade_proto::openrtb_json::struct_to_json)
            .unwrap_or_default(),
    })
}

fn line_item_to_proto(item: &LineItem) -> pb::LineItem {
    pb::LineItem {
        id: item.id.clone(),
        account_id: item.account_id.clone(),
        name: item.name.clone(),
        class: match item.class {
            LineItemClass::Guaranteed => pb::LineItemClass::Guaranteed,
            LineItemClass::NonGuaranteed => pb::LineItemClass::NonGuaranteed,
        }
        .into(),
        priority: item.priority,
        cpm_micros: item.cpm.0,
        targeting: Some(targeting_to_proto(&item.targeting)),
        active: Some(item.active),
        adm: item.adm.clone(),
        adomain: item.adomain.clone(),
        cat: item.categories.clone(),
        attr: item.attributes.clone(),
    }
}

fn line_item_from_proto(item: pb::LineItem, path: &str) -> Result<LineItem> {
    Ok(LineItem {
        class: match pb::LineItemClass::try_from(item.class) {
            Ok(pb::LineItemClass::Guaranteed) => LineItemClass::Guaranteed,
            Ok(pb::LineItemClass::Unspecified | pb::LineItemClass::NonGuaranteed) => {
                LineItemClass::NonGuaranteed
            }
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.class"),
                    format!("unknown line item class {}", item.class),
                ));
            }
        },
        cpm: micros(item.cpm_micros, &format!("{path}.cpm_micros"))?,
        targeting: targeting_from_proto(item.targeting, &format!("{path}.targeting"))?,
        // Priority 0 is not a priority: unset means the default, as in a file.
        priority: match item.priority {
            0 => LineItem::default().priority,
            priority => priority,
        },
        id: item.id,
        account_id: item.account_id,
        name: item.name,
        active: item.active.unwrap_or(true),
        adm: item.adm,
        adomain: item.adomain,
        categories: item.cat,
        attributes: item.attr,
    })
}

fn ad_unit_group_to_proto(group: &AdUnitGroup) -> pb::AdUnitGroup {
    pb::AdUnitGroup {
        id: group.id.clone(),
        account_id: group.account_id.clone(),
        name: group.name.clone(),
        ad_units: group.ad_units.clone(),
    }
}

fn ad_unit_group_from_proto(group: pb::AdUnitGroup) -> AdUnitGroup {
    AdUnitGroup {
        id: group.id,
        account_id: group.account_id,
        name: group.name,
        ad_units: group.ad_units,
    }
}

fn currency_rate_to_proto(rate: &CurrencyRate) -> pb::CurrencyRate {
    pb::CurrencyRate {
        currency: rate.currency.clone(),
        usd_micros: rate.usd.0,
        scheduled: rate
            .scheduled
            .iter()
            .map(|s| pb::ScheduledRate {
                from: s.from.clone(),
                usd_micros: s.usd.0,
            })
            .collect(),
    }
}

fn currency_rate_from_proto(rate: pb::CurrencyRate, path: &str) -> Result<CurrencyRate> {
    Ok(CurrencyRate {
        usd: micros(rate.usd_micros, &format!("{path}.usd_micros"))?,
        scheduled: rate
            .scheduled
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(ScheduledRate {
                    usd: micros(s.usd_micros, &format!("{path}.scheduled[{i}].usd_micros"))?,
                    from: s.from,
                })
            })
            .collect::<Result<_>>()?,
        currency: rate.currency,
    })
}

fn strings_to_proto(filter: &Filter<String>) -> Option<pb::StringFilter> {
    (!filter.is_empty()).then(|| pb::StringFilter {
        include: filter.include.clone(),
        exclude: filter.exclude.clone(),
    })
}

fn strings_from_proto(filter: Option<pb::StringFilter>) -> Filter<String> {
    filter.map_or_else(Filter::default, |f| Filter {
        include: f.include,
        exclude: f.exclude,
    })
}

fn media_type_to_proto(media_type: MediaType) -> i32 {
    match media_type {
        MediaType::Banner => targeting_pb::MediaType::Banner,
        MediaType::Video => targeting_pb::MediaType::Video,
        MediaType::Audio => targeting_pb::MediaType::Audio,
        MediaType::Native => targeting_pb::MediaType::Native,
    }
    .into()
}

fn media_type_from_proto(value: i32, field: &str) -> Result<MediaType> {
    match targeting_pb::MediaType::try_from(value) {
        Ok(targeting_pb::MediaType::Banner) => Ok(MediaType::Banner),
        Ok(targeting_pb::MediaType::Video) => Ok(MediaType::Video),
        Ok(targeting_pb::MediaType::Audio) => Ok(MediaType::Audio),
        Ok(targeting_pb::MediaType::Native) => Ok(MediaType::Native),
        Ok(targeting_pb::MediaType::Unspecified) | Err(_) => Err(ConfigError::new(
            field,
            format!("unknown media type {value}"),
        )),
    }
}

fn weekday_to_proto(day: Weekday) -> i32 {
    match day {
        Weekday::Mon => pb::Weekday::Mon,
        Weekday::Tue => pb::Weekday::Tue,
        Weekday::Wed => pb::Weekday::Wed,
        Weekday::Thu => pb::Weekday::Thu,
        Weekday::Fri => pb::Weekday::Fri,
        Weekday::Sat => pb::Weekday::Sat,
        Weekday::Sun => pb::Weekday::Sun,
    }
    .into()
}

fn weekday_from_proto(value: i32, field: &str) -> Result<Weekday> {
    match pb::Weekday::try_from(value) {
        Ok(pb::Weekday::Mon) => Ok(Weekday::Mon),
        Ok(pb::Weekday::Tue) => Ok(Weekday::Tue),
        Ok(pb::Weekday::Wed) => Ok(Weekday::Wed),
        Ok(pb::Weekday::Thu) => Ok(Weekday::Thu),
        Ok(pb::Weekday::Fri) => Ok(Weekday::Fri),
        Ok(pb::Weekday::Sat) => Ok(Weekday::Sat),
        Ok(pb::Weekday::Sun) => Ok(Weekday::Sun),
        Ok(pb::Weekday::Unspecified) | Err(_) => {
            Err(ConfigError::new(field, format!("unknown weekday {value}")))
        }
    }
}

fn targeting_to_proto(targeting: &Targeting) -> pb::Targeting {
    let sizes = |sizes: &[Size]| {
        sizes
            .iter()
            .map(|s| targeting_pb::Size { w: s.w, h: s.h })
            .collect()
    };
    pb::Targeting {
        ad_units: strings_to_proto(&targeting.ad_units),
        ad_unit_groups: strings_to_proto(&targeting.ad_unit_groups),
        media_types: (!targeting.media_types.is_empty()).then(|| pb::MediaTypeFilter {
            include: targeting
                .media_types
                .include
                .iter()
                .copied()
                .map(media_type_to_proto)
                .collect(),
            exclude: targeting
                .media_types
                .exclude
                .iter()
                .copied()
                .map(media_type_to_proto)
                .collect(),
        }),
        sizes: (!targeting.sizes.is_empty()).then(|| pb::SizeFilter {
            include: sizes(&targeting.sizes.include),
            exclude: sizes(&targeting.sizes.exclude),
        }),
        interstitial: targeting.interstitial,
        countries: strings_to_proto(&targeting.countries),
        regions: strings_to_proto(&targeting.regions),
        metros: strings_to_proto(&targeting.metros),
        device_types: (!targeting.device_types.is_empty()).then(|| pb::DeviceTypeFilter {
            include: targeting.device_types.include.clone(),
            exclude: targeting.device_types.exclude.clone(),
        }),
        os: strings_to_proto(&targeting.os),
        domains: strings_to_proto(&targeting.domains),
        bundles: strings_to_proto(&targeting.bundles),
        segments: (!targeting.segments.is_empty()).then(|| pb::SegmentFilter {
            any_of: targeting.segments.any_of.clone(),
            all_of: targeting.segments.all_of.clone(),
            none_of: targeting.segments.none_of.clone(),
        }),
        day_part: (!targeting.day_part.is_empty()).then(|| pb::DayPart {
            days: targeting
                .day_part
                .days
                .iter()
                .copied()
                .map(weekday_to_proto)
                .collect(),
            hours: targeting
                .day_part
                .hours
                .iter()
                .copied()
                .map(u32::from)
                .collect(),
        }),
        deals: strings_to_proto(&targeting.deals),
        key_values: targeting
            .key_values
            .iter()
            .map(|(key, filter)| (key.clone(), strings_to_proto(filter).unwrap_or_default()))
            .collect(),
    }
}

fn targeting_from_proto(targeting: Option<pb::Targeting>, path: &str) -> Result<Targeting> {
    let Some(targeting) = targeting else {
        return Ok(Targeting::default());
    };
    let media_types = targeting.media_types.unwrap_or_default();
    let media_types_field = format!("{path}.media_types");
    let sizes = targeting.sizes.unwrap_or_default();
    let sizes_from = |sizes: Vec<targeting_pb::Size>| {
        sizes.into_iter().map(|s| Size { w: s.w, h: s.h }).collect()
    };
    let device_types = targeting.device_types.unwrap_or_default();
    let segments = targeting.segments.unwrap_or_default();
    let day_part = targeting.day_part.unwrap_or_default();
    Ok(Targeting {
        ad_units: strings_from_proto(targeting.ad_units),
        ad_unit_groups: strings_from_proto(targeting.ad_unit_groups),
        media_types: Filter {
            include: media_types
                .include
                .into_iter()
                .map(|m| media_type_from_proto(m, &format!("{media_types_field}.include")))
                .collect::<Result<_>>()?,
            exclude: media_types
                .exclude
                .into_iter()
                .map(|m| media_type_from_proto(m, &format!("{media_types_field}.exclude")))
                .collect::<Result<_>>()?,
        },
        sizes: Filter {
            include: sizes_from(sizes.include),
            exclude: sizes_from(sizes.exclude),
        },
        interstitial: targeting.interstitial,
        countries: strings_from_proto(targeting.countries),
        regions: strings_from_proto(targeting.regions),
        metros: strings_from_proto(targeting.metros),
        device_types: Filter {
            include: device_types.include,
            exclude: device_types.exclude,
        },
        os: strings_from_proto(targeting.os),
        domains: strings_from_proto(targeting.domains),
        bundles: strings_from_proto(targeting.bundles),
        segments: SegmentFilter {
            any_of: segments.any_of,
            all_of: segments.all_of,
            none_of: segments.none_of,
        },
        day_part: DayPart {
            days: day_part
                .days
                .into_iter()
                .map(|d| weekday_from_proto(d, &format!("{path}.day_part.days")))
                .collect::<Result<_>>()?,
            hours: day_part
                .hours
                .into_iter()
                .map(|h| {
                    u8::try_from(h).ok().filter(|h| *h < 24).ok_or_else(|| {
                        ConfigError::new(
                            format!("{path}.day_part.hours"),
                            format!("hour {h} is not 0 to 23"),
                        )
                    })
                })
                .collect::<Result<_>>()?,
        },
        deals: strings_from_proto(targeting.deals),
        key_values: targeting
            .key_values
            .into_iter()
            .map(|(key, filter)| (key, strings_from_proto(Some(filter))))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the demo configuration holds survives the trip through protobuf.
    #[test]
    fn a_full_configuration_round_trips_through_protobuf() {
        let text = include_str!("../../../examples/demo.toml");
        let configuration: Configuration = demo_configuration(text);
        let back = configuration_from_proto(configuration_to_proto(&configuration)).unwrap();
        assert_eq!(back, configuration);
    }

    fn demo_configuration(text: &str) -> Configuration {
        cascade_state::parse_configuration(&cascade_state::fill_placeholders(
            text,
            &[
                ("DEMO_NETWORK", "http://127.0.0.1:1/openrtb/demo"),
                ("DEMO_GRPC_NETWORK", "http://127.0.0.1:2"),
            ],
        ))
        .unwrap()
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut configuration = pb::Configuration::default();
        configuration.selling_rules.push(pb::SellingRule {
            id: "r".into(),
            floor_micros: -1,
            ..Default::default()
        });
        let error = configuration_from_proto(configuration).unwrap_err();
        assert_eq!(error.field, "selling_rules[0].floor_micros");

        let rule = pb::SellingRule {
            targeting: Some(pb::Targeting {
                day_part: Some(pb::DayPart {
                    hours: vec![24],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = entity_from_proto(Some(pb::Entity {
            entity: Some(pb::entity::Entity::SellingRule(rule)),
        }))
        .unwrap_err();
        assert_eq!(error.field, "entity.selling_rule.targeting.day_part.hours");
        assert_eq!(entity_from_proto(None).unwrap_err().field, "entity");
        assert!(kind_from_proto(99, "kind").is_err());
    }

    #[test]
    fn unset_flags_and_numbers_take_the_file_defaults() {
        let network = network_from_proto(
            pb::Network {
                id: "n".into(),
                ..Default::default()
            },
            "network",
        )
        .unwrap();
        assert_eq!(network.timeout_ms, Network::default().timeout_ms);
        assert_eq!(network.bid_adjustment, Factor::ONE);
        let bid = mediated_bid_from_proto(pb::MediatedBid::default(), "bid").unwrap();
        assert!(bid.active);
    }
}
