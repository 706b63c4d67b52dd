//! Targeting: what an impression looks like to selling rules and mediated bids, and
//! whether a [`Targeting`] matches it. [`Targeting::mismatch`] is the plain reference
//! implementation of the semantics; [`crate::index::TargetingIndex`] answers the same
//! question for many targetings at once and is tested against it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config_error::ConfigError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaType {
    Banner,
    Video,
    Audio,
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Size {
    pub w: u32,
    pub h: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];
}

/// The hour of the week an impression happens in, in the publisher's time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DayHour {
    pub day: Weekday,
    /// 0 to 23.
    pub hour: u8,
}

impl DayHour {
    /// 0 (Monday 00h) to 167 (Sunday 23h).
    pub fn index(self) -> usize {
        self.day as usize * 24 + usize::from(self.hour)
    }

    /// The hour of the week at `unix_seconds` in `time_zone`.
    pub fn at(unix_seconds: i64, time_zone: &jiff::tz::TimeZone) -> DayHour {
        let zoned = jiff::Timestamp::from_second(unix_seconds)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_zoned(time_zone.clone());
        DayHour {
            day: Weekday::ALL[zoned.weekday().to_monday_zero_offset() as usize],
            hour: zoned.hour() as u8,
        }
    }
}

/// The targeting keys of one impression, normalised from the OpenRTB request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImpressionKeys {
    pub tagid: String,
    /// The ad-unit groups `tagid` belongs to (filled from the configuration).
    pub ad_unit_groups: Vec<String>,
    pub media_types: Vec<MediaType>,
    pub sizes: Vec<Size>,
    pub interstitial: bool,
    /// ISO-3166-1 alpha-3, upper case; empty when unknown.
    pub country: String,
    pub region: String,
    pub metro: String,
    /// OpenRTB device type; 0 when unknown.
    pub devicetype: u32,
    /// Lower case; empty when unknown.
    pub os: String,
    /// Site domain, lower case.
    pub domain: String,
    /// App bundle.
    pub bundle: String,
    pub segments: Vec<String>,
    /// Ids of the deals the impression is offered under.
    pub deals: Vec<String>,
    /// Custom key-values (key, value).
    pub key_values: Vec<(String, String)>,
    pub day_hour: DayHour,
}

impl Default for ImpressionKeys {
    fn default() -> Self {
        Self {
            tagid: String::new(),
            ad_unit_groups: Vec::new(),
            media_types: Vec::new(),
            sizes: Vec::new(),
            interstitial: false,
            country: String::new(),
            region: String::new(),
            metro: String::new(),
            devicetype: 0,
            os: String::new(),
            domain: String::new(),
            bundle: String::new(),
            segments: Vec::new(),
            deals: Vec::new(),
            key_values: Vec::new(),
            day_hour: DayHour {
                day: Weekday::Mon,
                hour: 0,
            },
        }
    }
}

/// One dimension's condition: the impression must have at least one `include`d value
/// (when any are listed) and none of the `exclude`d ones.
///
/// In configuration files a plain list means `include`: `countries = ["USA"]` is
/// `countries = { include = ["USA"] }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Filter<T> {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<T>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<T>,
}

impl<T> Default for Filter<T> {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl<T> Filter<T> {
    pub fn include(values: Vec<T>) -> Self {
        Self {
            include: values,
            exclude: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    fn len(&self) -> usize {
        self.include.len() + self.exclude.len()
    }

    /// Whether an impression with `values` passes, `same` saying when an impression
    /// value equals a listed one.
    pub fn admits<'a, V: 'a>(
        &self,
        values: impl Iterator<Item = &'a V> + Clone,
        same: impl Fn(&T, &V) -> bool,
    ) -> bool {
        let listed = |list: &[T]| values.clone().any(|v| list.iter().any(|t| same(t, v)));
        (self.include.is_empty() || listed(&self.include)) && !listed(&self.exclude)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Filter<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            List(Vec<T>),
            Full {
                #[serde(default = "Vec::new")]
                include: Vec<T>,
                #[serde(default = "Vec::new")]
                exclude: Vec<T>,
            },
        }
        Ok(match Either::deserialize(deserializer)? {
            Either::List(include) => Filter::include(include),
            Either::Full { include, exclude } => Filter { include, exclude },
        })
    }
}

/// User segments: any of, all of, none of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub none_of: Vec<String>,
}

impl SegmentFilter {
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.all_of.is_empty() && self.none_of.is_empty()
    }
}

/// Day-part: the days of the week and the hours of the day (0-23) an impression may
/// fall in, in the publisher's time zone. An empty list allows every day or hour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayPart {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hours: Vec<u8>,
}

impl DayPart {
    pub fn is_empty(&self) -> bool {
        self.days.is_empty() && self.hours.is_empty()
    }

    pub fn admits(&self, at: DayHour) -> bool {
        (self.days.is_empty() || self.days.contains(&at.day))
            && (self.hours.is_empty() || self.hours.contains(&at.hour))
    }
}

/// Inventory targeting: every dimension that says something must admit the impression.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Targeting {
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub ad_units: Filter<String>,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub ad_unit_groups: Filter<String>,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub media_types: Filter<MediaType>,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub sizes: Filter<Size>,
    /// `true`: interstitials only; `false`: never interstitials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interstitial: Option<bool>,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub countries: Filter<String>,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub regions: Filter<String>,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub metros: Filter<String>,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub device_types: Filter<u32>,
    /// Case-insensitive.
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub os: Filter<String>,
    /// Site domains; a listed domain covers its subdomains.
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub domains: Filter<String>,
    /// App bundles, exactly.
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub bundles: Filter<String>,
    #[serde(skip_serializing_if = "SegmentFilter::is_empty")]
    pub segments: SegmentFilter,
    #[serde(skip_serializing_if = "DayPart::is_empty")]
    pub day_part: DayPart,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub deals: Filter<String>,
    /// Custom key-values: per key, the values to include or exclude.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub key_values: BTreeMap<String, Filter<String>>,
}

/// The targeting dimension that excluded something; shown in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    AdUnit,
    AdUnitGroup,
    MediaType,
    Size,
    Interstitial,
    Country,
    Region,
    Metro,
    DeviceType,
    Os,
    Domain,
    Bundle,
    Segment,
    DayPart,
    Deal,
    KeyValue,
}

impl Dimension {
    pub const COUNT: usize = 16;

    pub fn name(self) -> &'static str {
        match self {
            Dimension::AdUnit => "ad_unit",
            Dimension::AdUnitGroup => "ad_unit_group",
            Dimension::MediaType => "media_type",
            Dimension::Size => "size",
            Dimension::Interstitial => "interstitial",
            Dimension::Country => "country",
            Dimension::Region => "region",
            Dimension::Metro => "metro",
            Dimension::DeviceType => "device_type",
            Dimension::Os => "os",
            Dimension::Domain => "domain",
            Dimension::Bundle => "bundle",
            Dimension::Segment => "segment",
            Dimension::DayPart => "day_part",
            Dimension::Deal => "deal",
            Dimension::KeyValue => "key_value",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The value, as a list of one, unless it is empty (unknown).
fn non_empty(value: &String) -> std::option::IntoIter<&String> {
    (!value.is_empty()).then_some(value).into_iter()
}

/// Most values one targeting list may hold.
pub const MAX_TARGETING_VALUES: usize = 10_000;

/// `news.example.com` is within `example.com`; `badexample.com` is not. ASCII
/// case-insensitive; a trailing dot is ignored.
pub fn domain_is_within(domain: &str, parent: &str) -> bool {
    let domain = domain.trim_end_matches('.');
    let parent = parent.trim_end_matches('.');
    if domain.eq_ignore_ascii_case(parent) {
        return true;
    }
    domain.len() > parent.len()
        && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
        && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent)
}

impl Targeting {
    /// The first dimension that does not admit the impression, or `None` when the
    /// impression matches. This is the reference semantics, checked one targeting at a
    /// time; the index must always agree with it.
    pub fn mismatch(&self, keys: &ImpressionKeys) -> Option<Dimension> {
        let exact = |listed: &String, value: &String| listed == value;
        let one = non_empty;
        let checks: [(Dimension, bool); 16] = [
            (
                Dimension::AdUnit,
                self.ad_units.admits(one(&keys.tagid), exact),
            ),
            (
                Dimension::AdUnitGroup,
                self.ad_unit_groups
                    .admits(keys.ad_unit_groups.iter(), exact),
            ),
            (
                Dimension::MediaType,
                self.media_types
                    .admits(keys.media_types.iter(), |a, b| a == b),
            ),
            (
                Dimension::Size,
                self.sizes.admits(keys.sizes.iter(), |a, b| a == b),
            ),
            (
                Dimension::Interstitial,
                self.interstitial
                    .is_none_or(|wanted| wanted == keys.interstitial),
            ),
            (
                Dimension::Country,
                self.countries.admits(one(&keys.country), exact),
            ),
            (
                Dimension::Region,
                self.regions.admits(one(&keys.region), exact),
            ),
            (
                Dimension::Metro,
                self.metros.admits(one(&keys.metro), exact),
            ),
            (
                Dimension::DeviceType,
                self.device_types.admits(
                    std::iter::once(&keys.devicetype).filter(|t| **t != 0),
                    |a, b| a == b,
                ),
            ),
            (
                Dimension::Os,
                self.os
                    .admits(one(&keys.os), |a, b| a.eq_ignore_ascii_case(b)),
            ),
            (
                Dimension::Domain,
                self.domains.admits(one(&keys.domain), |listed, domain| {
                    domain_is_within(domain, listed)
                }),
            ),
            (
                Dimension::Bundle,
                self.bundles.admits(one(&keys.bundle), exact),
            ),
            (Dimension::Segment, self.segments_admit(&keys.segments)),
            (Dimension::DayPart, self.day_part.admits(keys.day_hour)),
            (Dimension::Deal, self.deals.admits(keys.deals.iter(), exact)),
            (
                Dimension::KeyValue,
                self.key_values.iter().all(|(key, filter)| {
                    filter.admits(
                        keys.key_values
                            .iter()
                            .filter(|(k, _)| k == key)
                            .map(|(_, v)| v),
                        exact,
                    )
                }),
            ),
        ];
        checks
            .into_iter()
            .find(|(_, admitted)| !admitted)
            .map(|(dimension, _)| dimension)
    }

    pub fn matches(&self, keys: &ImpressionKeys) -> bool {
        self.mismatch(keys).is_none()
    }

    fn segments_admit(&self, segments: &[String]) -> bool {
        let has = |wanted: &String| segments.contains(wanted);
        let filter = &self.segments;
        (filter.any_of.is_empty() || filter.any_of.iter().any(has))
            && filter.all_of.iter().all(has)
            && !filter.none_of.iter().any(has)
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let lists = [
            ("ad_units", self.ad_units.len()),
            ("ad_unit_groups", self.ad_unit_groups.len()),
            ("media_types", self.media_types.len()),
            ("sizes", self.sizes.len()),
            ("countries", self.countries.len()),
            ("regions", self.regions.len()),
            ("metros", self.metros.len()),
            ("device_types", self.device_types.len()),
            ("os", self.os.len()),
            ("domains", self.domains.len()),
            ("bundles", self.bundles.len()),
            (
                "segments",
                self.segments.any_of.len()
                    + self.segments.all_of.len()
                    + self.segments.none_of.len(),
            ),
            ("deals", self.deals.len()),
            (
                "key_values",
                self.key_values.values().map(Filter::len).sum(),
            ),
        ];
        for (name, len) in lists {
            if len > MAX_TARGETING_VALUES {
                return Err(ConfigError::new(
                    format!("{field}.{name}"),
                    format!("more than {MAX_TARGETING_VALUES} values"),
                ));
            }
        }
        let countries = self.countries.include.iter().chain(&self.countries.exclude);
        for country in countries {
            if country.len() != 3 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(
                    format!("{field}.countries"),
                    format!("{country:?} is not an upper-case ISO-3166-1 alpha-3 code"),
                ));
            }
        }
        if let Some(hour) = self.day_part.hours.iter().find(|h| **h > 23) {
            return Err(ConfigError::new(
                format!("{field}.day_part.hours"),
                format!("{hour} is not an hour of the day (0-23)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ImpressionKeys {
        ImpressionKeys {
            tagid: "home-top".into(),
            ad_unit_groups: vec!["home".into()],
            media_types: vec![MediaType::Banner],
            sizes: vec![Size { w: 300, h: 250 }, Size { w: 320, h: 50 }],
            interstitial: false,
            country: "USA".into(),
            region: "CA".into(),
            metro: "807".into(),
            devicetype: 4,
            os: "ios".into(),
            domain: "news.example.com".into(),
            bundle: String::new(),
            segments: vec!["auto".into(), "sports".into()],
            deals: vec!["deal-1".into()],
            key_values: vec![("section".into(), "sport".into())],
            day_hour: DayHour {
                day: Weekday::Sat,
                hour: 21,
            },
        }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn empty_targeting_matches_everything() {
        assert!(Targeting::default().matches(&keys()));
        assert!(Targeting::default().matches(&ImpressionKeys::default()));
    }

    #[test]
    fn each_dimension_includes_and_excludes() {
        let cases: Vec<(Targeting, Option<Dimension>)> = vec![
            (
                Targeting {
                    ad_units: Filter::include(strings(&["other"])),
                    ..Default::default()
                },
                Some(Dimension::AdUnit),
            ),
            (
                Targeting {
                    ad_unit_groups: Filter {
                        include: vec![],
                        exclude: strings(&["home"]),
                    },
                    ..Default::default()
                },
                Some(Dimension::AdUnitGroup),
            ),
            (
                Targeting {
                    media_types: Filter::include(vec![MediaType::Video]),
                    ..Default::default()
                },
                Some(Dimension::MediaType),
            ),
            (
                Targeting {
                    sizes: Filter::include(vec![Size { w: 320, h: 50 }]),
                    ..Default::default()
                },
                None,
            ),
            (
                Targeting {
                    interstitial: Some(true),
                    ..Default::default()
                },
                Some(Dimension::Interstitial),
            ),
            (
                Targeting {
                    countries: Filter {
                        include: strings(&["USA", "CAN"]),
                        exclude: vec![],
                    },
                    regions: Filter {
                        include: vec![],
                        exclude: strings(&["CA"]),
                    },
                    ..Default::default()
                },
                Some(Dimension::Region),
            ),
            (
                Targeting {
                    metros: Filter::include(strings(&["807"])),
                    device_types: Filter::include(vec![1]),
                    ..Default::default()
                },
                Some(Dimension::DeviceType),
            ),
            (
                Targeting {
                    os: Filter::include(strings(&["iOS"])),
                    ..Default::default()
                },
                None,
            ),
            (
                Targeting {
                    domains: Filter::include(strings(&["example.com"])),
                    ..Default::default()
                },
                None,
            ),
            (
                Targeting {
                    domains: Filter {
                        include: vec![],
                        exclude: strings(&["example.com"]),
                    },
                    ..Default::default()
                },
                Some(Dimension::Domain),
            ),
            (
                Targeting {
                    bundles: Filter::include(strings(&["com.example.app"])),
                    ..Default::default()
                },
                Some(Dimension::Bundle),
            ),
            (
                Targeting {
                    segments: SegmentFilter {
                        any_of: strings(&["auto", "travel"]),
                        all_of: strings(&["sports"]),
                        none_of: strings(&["kids"]),
                    },
                    ..Default::default()
                },
                None,
            ),
            (
                Targeting {
                    segments: SegmentFilter {
                        all_of: strings(&["sports", "travel"]),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                Some(Dimension::Segment),
            ),
            (
                Targeting {
                    day_part: DayPart {
                        days: vec![Weekday::Sat, Weekday::Sun],
                        hours: vec![20, 21, 22],
                    },
                    ..Default::default()
                },
                None,
            ),
            (
                Targeting {
                    day_part: DayPart {
                        days: vec![],
                        hours: (9..18).collect(),
                    },
                    ..Default::default()
                },
                Some(Dimension::DayPart),
            ),
            (
                Targeting {
                    deals: Filter::include(strings(&["deal-2"])),
                    ..Default::default()
                },
                Some(Dimension::Deal),
            ),
            (
                Targeting {
                    key_values: [("section".to_string(), Filter::include(strings(&["news"])))]
                        .into(),
                    ..Default::default()
                },
                Some(Dimension::KeyValue),
            ),
        ];
        for (i, (targeting, expected)) in cases.into_iter().enumerate() {
            assert_eq!(targeting.mismatch(&keys()), expected, "case {i}");
        }
    }

    #[test]
    fn an_include_list_needs_a_known_value() {
        let targeting = Targeting {
            countries: Filter::include(strings(&["USA"])),
            ..Default::default()
        };
        assert_eq!(
            targeting.mismatch(&ImpressionKeys::default()),
            Some(Dimension::Country)
        );
        let excluding = Targeting {
            countries: Filter {
                include: vec![],
                exclude: strings(&["USA"]),
            },
            ..Default::default()
        };
        assert!(excluding.matches(&ImpressionKeys::default()));
    }

    #[test]
    fn domains_cover_subdomains_only() {
        assert!(domain_is_within("example.com", "example.com"));
        assert!(domain_is_within("news.Example.com", "example.com"));
        assert!(!domain_is_within("badexample.com", "example.com"));
        assert!(!domain_is_within("example.com", "news.example.com"));
    }

    #[test]
    fn day_hour_follows_the_time_zone() {
        // 2026-11-21 (a Saturday) 23:30 UTC is Sunday 08:30 in Tokyo and Saturday 18:30
        // in New York.
        let unix = 1_795_303_800;
        let utc = DayHour::at(unix, &jiff::tz::TimeZone::UTC);
        assert_eq!(
            utc,
            DayHour {
                day: Weekday::Sat,
                hour: 23
            }
        );
        let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
        assert_eq!(
            DayHour::at(unix, &tokyo),
            DayHour {
                day: Weekday::Sun,
                hour: 8
            }
        );
        let new_york = jiff::tz::TimeZone::get("America/New_York").unwrap();
        assert_eq!(
            DayHour::at(unix, &new_york),
            DayHour {
                day: Weekday::Sat,
                hour: 18
            }
        );
    }

    #[test]
    fn a_plain_list_is_an_include_list() {
        let targeting: Targeting = toml::from_str(
            "countries = [\"USA\"]\nregions = { exclude = [\"CA\"] }\nkey_values = { section = [\"news\"] }",
        )
        .unwrap();
        assert_eq!(targeting.countries, Filter::include(strings(&["USA"])));
        assert_eq!(targeting.regions.exclude, strings(&["CA"]));
        assert_eq!(
            targeting.key_values["section"],
            Filter::include(strings(&["news"]))
        );
    }
}
