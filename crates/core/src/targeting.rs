//! Targeting: what an impression looks like to selling rules and mediated bids, and
//! whether a [`Targeting`] matches it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

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

/// The targeting keys of one impression, normalised from the OpenRTB request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImpressionKeys {
    pub tagid: String,
    pub media_types: Vec<MediaType>,
    pub sizes: Vec<Size>,
    /// ISO-3166-1 alpha-3, upper case; empty when unknown.
    pub country: String,
    /// OpenRTB device type; 0 when unknown.
    pub devicetype: u32,
}

/// Inventory targeting: every non-empty dimension must match; an empty one matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targeting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ad_units: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_types: Vec<MediaType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<Size>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_types: Vec<u32>,
}

/// The targeting dimension that excluded something; shown in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    AdUnit,
    MediaType,
    Size,
    Country,
    DeviceType,
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dimension::AdUnit => "ad_unit",
            Dimension::MediaType => "media_type",
            Dimension::Size => "size",
            Dimension::Country => "country",
            Dimension::DeviceType => "device_type",
        })
    }
}

/// Most values one targeting list may hold.
pub const MAX_TARGETING_VALUES: usize = 10_000;

impl Targeting {
    /// The first dimension that does not match, or `None` when the impression matches.
    pub fn mismatch(&self, keys: &ImpressionKeys) -> Option<Dimension> {
        if !self.ad_units.is_empty() && !self.ad_units.contains(&keys.tagid) {
            return Some(Dimension::AdUnit);
        }
        if !self.media_types.is_empty()
            && !keys
                .media_types
                .iter()
                .any(|m| self.media_types.contains(m))
        {
            return Some(Dimension::MediaType);
        }
        if !self.sizes.is_empty() && !keys.sizes.iter().any(|s| self.sizes.contains(s)) {
            return Some(Dimension::Size);
        }
        if !self.countries.is_empty() && !self.countries.contains(&keys.country) {
            return Some(Dimension::Country);
        }
        if !self.device_types.is_empty() && !self.device_types.contains(&keys.devicetype) {
            return Some(Dimension::DeviceType);
        }
        None
    }

    pub fn matches(&self, keys: &ImpressionKeys) -> bool {
        self.mismatch(keys).is_none()
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let lists = [
            ("ad_units", self.ad_units.len()),
            ("media_types", self.media_types.len()),
            ("sizes", self.sizes.len()),
            ("countries", self.countries.len()),
            ("device_types", self.device_types.len()),
        ];
        for (name, len) in lists {
            if len > MAX_TARGETING_VALUES {
                return Err(ConfigError::new(
                    format!("{field}.{name}"),
                    format!("more than {MAX_TARGETING_VALUES} values"),
                ));
            }
        }
        for (i, country) in self.countries.iter().enumerate() {
            if country.len() != 3 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(
                    format!("{field}.countries[{i}]"),
                    format!("{country:?} is not an upper-case ISO-3166-1 alpha-3 code"),
                ));
            }
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
            media_types: vec![MediaType::Banner],
            sizes: vec![Size { w: 300, h: 250 }, Size { w: 320, h: 50 }],
            country: "USA".into(),
            devicetype: 4,
        }
    }

    #[test]
    fn empty_targeting_matches_everything() {
        assert!(Targeting::default().matches(&keys()));
        assert!(Targeting::default().matches(&ImpressionKeys::default()));
    }

    #[test]
    fn each_dimension_excludes_on_its_own() {
        let cases = [
            (
                Targeting {
                    ad_units: vec!["other".into()],
                    ..Default::default()
                },
                Dimension::AdUnit,
            ),
            (
                Targeting {
                    media_types: vec![MediaType::Video],
                    ..Default::default()
                },
                Dimension::MediaType,
            ),
            (
                Targeting {
                    sizes: vec![Size { w: 728, h: 90 }],
                    ..Default::default()
                },
                Dimension::Size,
            ),
            (
                Targeting {
                    countries: vec!["DEU".into()],
                    ..Default::default()
                },
                Dimension::Country,
            ),
            (
                Targeting {
                    device_types: vec![1],
                    ..Default::default()
                },
                Dimension::DeviceType,
            ),
        ];
        for (targeting, dimension) in cases {
            assert_eq!(targeting.mismatch(&keys()), Some(dimension));
        }
    }

    #[test]
    fn any_size_of_the_impression_matches() {
        let targeting = Targeting {
            sizes: vec![Size { w: 320, h: 50 }],
            countries: vec!["USA".into(), "CAN".into()],
            ..Default::default()
        };
        assert!(targeting.matches(&keys()));
    }
}
