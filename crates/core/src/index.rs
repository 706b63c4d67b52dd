//! The targeting index: which of many targetings match an impression, without checking
//! every one.
//!
//! Each targeting is compiled once per configuration snapshot: its string values are
//! interned into integer ids (one [`Dictionary`] per snapshot) and sorted. It is then
//! posted under a single key: the include value set of its most selective dimension
//! (the one whose values the fewest other targetings also include). An impression looks
//! up the posting lists of its own values, adds the targetings that include nothing
//! (only excludes, or no targeting at all), and verifies each candidate in full. The
//! work per impression grows with the candidates it can actually match, not with the
//! number of targetings. [`Targeting::mismatch`] stays the reference semantics, and the
//! property tests hold the two together.

use rustc_hash::FxHashMap;

use crate::targeting::{DayPart, Dimension, ImpressionKeys, MediaType, Size, Targeting};

/// Interned string values, per dimension, shared by every index of one snapshot.
#[derive(Debug, Default)]
pub struct Dictionary {
    ids: Vec<FxHashMap<String, u64>>,
}

const KEY_VALUE_SEPARATOR: char = '\u{1f}';

impl Dictionary {
    fn intern(&mut self, dimension: Dimension, value: &str) -> u64 {
        if self.ids.is_empty() {
            self.ids = (0..Dimension::COUNT)
                .map(|_| FxHashMap::default())
                .collect();
        }
        let ids = &mut self.ids[dimension as usize];
        let next = ids.len() as u64;
        *ids.entry(value.to_string()).or_insert(next)
    }

    fn lookup(&self, dimension: Dimension, value: &str) -> Option<u64> {
        self.ids.get(dimension as usize)?.get(value).copied()
    }

    /// The impression's values, as ids: what the index looks up and verifies against.
    /// Values nobody targets are left out (no include can admit them, no exclude bars
    /// them).
    pub fn resolve(&self, keys: &ImpressionKeys) -> ResolvedImpression {
        let mut resolved = ResolvedImpression {
            values: Vec::with_capacity(24),
            ends: [0; Dimension::COUNT],
            interstitial: keys.interstitial,
            day_hour: keys.day_hour.index(),
        };
        let push_str = |resolved: &mut ResolvedImpression, dimension: Dimension, value: &str| {
            if !value.is_empty()
                && let Some(id) = self.lookup(dimension, value)
            {
                resolved.values.push(id);
            }
        };
        for dimension in DIMENSIONS {
            match dimension {
                Dimension::AdUnit => push_str(&mut resolved, dimension, &keys.tagid),
                Dimension::AdUnitGroup => {
                    for group in &keys.ad_unit_groups {
                        push_str(&mut resolved, dimension, group);
                    }
                }
                Dimension::MediaType => resolved
                    .values
                    .extend(keys.media_types.iter().map(|m| media_type_id(*m))),
                Dimension::Size => resolved
                    .values
                    .extend(keys.sizes.iter().map(|s| size_id(*s))),
                Dimension::Country => push_str(&mut resolved, dimension, &keys.country),
                Dimension::Region => push_str(&mut resolved, dimension, &keys.region),
                Dimension::Metro => push_str(&mut resolved, dimension, &keys.metro),
                Dimension::DeviceType => {
                    if keys.devicetype != 0 {
                        resolved.values.push(u64::from(keys.devicetype));
                    }
                }
                Dimension::Os => push_str(&mut resolved, dimension, &keys.os.to_ascii_lowercase()),
                Dimension::Domain => {
                    let domain = normalize_domain(&keys.domain);
                    for suffix in domain_suffixes(&domain) {
                        push_str(&mut resolved, dimension, suffix);
                    }
                }
                Dimension::Bundle => push_str(&mut resolved, dimension, &keys.bundle),
                Dimension::Segment => {
                    for segment in &keys.segments {
                        push_str(&mut resolved, dimension, segment);
                    }
                }
                Dimension::Deal => {
                    for deal in &keys.deals {
                        push_str(&mut resolved, dimension, deal);
                    }
                }
                Dimension::KeyValue => {
                    for (key, value) in &keys.key_values {
                        push_str(&mut resolved, dimension, &key_value(key, value));
                    }
                }
                Dimension::Interstitial | Dimension::DayPart => {}
            }
            let start = if dimension as usize == 0 {
                0
            } else {
                resolved.ends[dimension as usize - 1] as usize
            };
            let values = &mut resolved.values[start..];
            values.sort_unstable();
            let unique = dedup_sorted(values);
            resolved.values.truncate(start + unique);
            resolved.ends[dimension as usize] = resolved.values.len() as u32;
        }
        resolved
    }
}

const DIMENSIONS: [Dimension; Dimension::COUNT] = [
    Dimension::AdUnit,
    Dimension::AdUnitGroup,
    Dimension::MediaType,
    Dimension::Size,
    Dimension::Interstitial,
    Dimension::Country,
    Dimension::Region,
    Dimension::Metro,
    Dimension::DeviceType,
    Dimension::Os,
    Dimension::Domain,
    Dimension::Bundle,
    Dimension::Segment,
    Dimension::DayPart,
    Dimension::Deal,
    Dimension::KeyValue,
];

/// Moves the distinct values of a sorted slice to its front; returns how many there are.
fn dedup_sorted(values: &mut [u64]) -> usize {
    let mut unique = 0;
    for i in 0..values.len() {
        if i == 0 || values[i] != values[unique - 1] {
            values[unique] = values[i];
            unique += 1;
        }
    }
    unique
}

fn media_type_id(media_type: MediaType) -> u64 {
    media_type as u64
}

fn size_id(size: Size) -> u64 {
    (u64::from(size.w) << 32) | u64::from(size.h)
}

fn key_value(key: &str, value: &str) -> String {
    format!("{key}{KEY_VALUE_SEPARATOR}{value}")
}

fn normalize_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// `news.example.com`, `example.com`, `com`.
fn domain_suffixes(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::once(domain)
        .chain(
            domain
                .match_indices('.')
                .map(move |(i, _)| &domain[i + 1..]),
        )
        .filter(|suffix| !suffix.is_empty())
}

/// An impression's targeting values as ids, grouped by dimension.
#[derive(Debug, Clone)]
pub struct ResolvedImpression {
    values: Vec<u64>,
    /// End of each dimension's values in `values`.
    ends: [u32; Dimension::COUNT],
    interstitial: bool,
    day_hour: usize,
}

impl ResolvedImpression {
    fn values(&self, dimension: Dimension) -> &[u64] {
        let index = dimension as usize;
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        &self.values[start..self.ends[index] as usize]
    }
}

#[derive(Debug, Clone)]
struct CompiledFilter {
    dimension: Dimension,
    /// Sorted.
    include: Box<[u64]>,
    /// Sorted.
    exclude: Box<[u64]>,
}

impl CompiledFilter {
    fn admits(&self, values: &[u64]) -> bool {
        let listed = |list: &[u64]| values.iter().any(|v| list.binary_search(v).is_ok());
        (self.include.is_empty() || listed(&self.include)) && !listed(&self.exclude)
    }
}

/// One targeting, compiled against the snapshot's dictionary.
#[derive(Debug, Clone)]
struct CompiledTargeting {
    filters: Box<[CompiledFilter]>,
    /// Segments that must all be present (sorted).
    segments_all_of: Box<[u64]>,
    interstitial: Option<bool>,
    /// Allowed hours of the week, as a 168-bit set; `None` allows every hour.
    day_hours: Option<[u64; 3]>,
}

/// A dimension whose values are strings: where a targeting keeps its include and
/// exclude lists, and how a value is normalised before it is interned.
type StringDimension = (
    Dimension,
    fn(&Targeting) -> (&[String], &[String]),
    fn(&str) -> String,
);

const STRING_DIMENSIONS: &[StringDimension] = &[
    (
        Dimension::AdUnit,
        |t| (&t.ad_units.include, &t.ad_units.exclude),
        as_is,
    ),
    (
        Dimension::AdUnitGroup,
        |t| (&t.ad_unit_groups.include, &t.ad_unit_groups.exclude),
        as_is,
    ),
    (
        Dimension::Country,
        |t| (&t.countries.include, &t.countries.exclude),
        as_is,
    ),
    (
        Dimension::Region,
        |t| (&t.regions.include, &t.regions.exclude),
        as_is,
    ),
    (
        Dimension::Metro,
        |t| (&t.metros.include, &t.metros.exclude),
        as_is,
    ),
    (Dimension::Os, |t| (&t.os.include, &t.os.exclude), lowercase),
    (
        Dimension::Domain,
        |t| (&t.domains.include, &t.domains.exclude),
        normalize_domain,
    ),
    (
        Dimension::Bundle,
        |t| (&t.bundles.include, &t.bundles.exclude),
        as_is,
    ),
    // "All of" is checked on verification; "any of" is what the index can post under.
    (
        Dimension::Segment,
        |t| (&t.segments.any_of, &t.segments.none_of),
        as_is,
    ),
    (
        Dimension::Deal,
        |t| (&t.deals.include, &t.deals.exclude),
        as_is,
    ),
];

fn as_is(value: &str) -> String {
    value.to_string()
}

fn lowercase(value: &str) -> String {
    value.to_ascii_lowercase()
}

impl CompiledTargeting {
    fn compile(targeting: &Targeting, dictionary: &mut Dictionary) -> Self {
        let mut filters = Vec::new();
        let mut strings = |dictionary: &mut Dictionary,
                           dimension: Dimension,
                           include: &[String],
                           exclude: &[String],
                           normalize: fn(&str) -> String| {
            let mut ids = |values: &[String]| {
                let mut ids: Vec<u64> = values
                    .iter()
                    .map(|v| dictionary.intern(dimension, &normalize(v)))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids.into_boxed_slice()
            };
            let (include, exclude) = (ids(include), ids(exclude));
            if !include.is_empty() || !exclude.is_empty() {
                filters.push(CompiledFilter {
                    dimension,
                    include,
                    exclude,
                });
            }
        };
        let t = targeting;
        for (dimension, lists, normalize) in STRING_DIMENSIONS {
            let (include, exclude) = lists(t);
            strings(dictionary, *dimension, include, exclude, *normalize);
        }
        for (key, filter) in &t.key_values {
            let pairs =
                |values: &[String]| values.iter().map(|v| key_value(key, v)).collect::<Vec<_>>();
            strings(
                dictionary,
                Dimension::KeyValue,
                &pairs(&filter.include),
                &pairs(&filter.exclude),
                as_is,
            );
        }
        let mut numbers = |dimension: Dimension, include: Vec<u64>, exclude: Vec<u64>| {
            let sorted = |mut ids: Vec<u64>| {
                ids.sort_unstable();
                ids.dedup();
                ids.into_boxed_slice()
            };
            if !include.is_empty() || !exclude.is_empty() {
                filters.push(CompiledFilter {
                    dimension,
                    include: sorted(include),
                    exclude: sorted(exclude),
                });
            }
        };
        numbers(
            Dimension::MediaType,
            t.media_types
                .include
                .iter()
                .map(|m| media_type_id(*m))
                .collect(),
            t.media_types
                .exclude
                .iter()
                .map(|m| media_type_id(*m))
                .collect(),
        );
        numbers(
            Dimension::Size,
            t.sizes.include.iter().map(|s| size_id(*s)).collect(),
            t.sizes.exclude.iter().map(|s| size_id(*s)).collect(),
        );
        numbers(
            Dimension::DeviceType,
            t.device_types
                .include
                .iter()
                .map(|d| u64::from(*d))
                .collect(),
            t.device_types
                .exclude
                .iter()
                .map(|d| u64::from(*d))
                .collect(),
        );
        let mut segments_all_of: Vec<u64> = t
            .segments
            .all_of
            .iter()
            .map(|s| dictionary.intern(Dimension::Segment, s))
            .collect();
        segments_all_of.sort_unstable();
        segments_all_of.dedup();
        CompiledTargeting {
            filters: filters.into_boxed_slice(),
            segments_all_of: segments_all_of.into_boxed_slice(),
            interstitial: t.interstitial,
            day_hours: day_hours(&t.day_part),
        }
    }

    fn matches(&self, impression: &ResolvedImpression) -> bool {
        self.interstitial
            .is_none_or(|wanted| wanted == impression.interstitial)
            && self.day_hours.is_none_or(|set| {
                set[impression.day_hour / 64] & (1 << (impression.day_hour % 64)) != 0
            })
            && self
                .filters
                .iter()
                .all(|filter| filter.admits(impression.values(filter.dimension)))
            && {
                let segments = impression.values(Dimension::Segment);
                self.segments_all_of
                    .iter()
                    .all(|s| segments.binary_search(s).is_ok())
            }
    }

    /// The value sets this targeting could be posted under: each is a set of which the
    /// impression must have at least one value for the targeting to match.
    fn posting_options(&self) -> impl Iterator<Item = (Dimension, &[u64])> {
        self.filters
            .iter()
            .filter(|f| !f.include.is_empty())
            .map(|f| (f.dimension, &f.include[..]))
            .chain(
                self.segments_all_of
                    .iter()
                    .map(|s| (Dimension::Segment, std::slice::from_ref(s))),
            )
    }
}

fn day_hours(day_part: &DayPart) -> Option<[u64; 3]> {
    if day_part.is_empty() {
        return None;
    }
    let mut set = [0u64; 3];
    for day in crate::targeting::Weekday::ALL {
        for hour in 0..24u8 {
            let at = crate::targeting::DayHour { day, hour };
            if day_part.admits(at) {
                set[at.index() / 64] |= 1 << (at.index() % 64);
            }
        }
    }
    Some(set)
}

/// Many targetings, indexed; built once per snapshot.
#[derive(Debug, Default)]
pub struct TargetingIndex {
    targetings: Vec<CompiledTargeting>,
    postings: Vec<FxHashMap<u64, Vec<u32>>>,
    /// Targetings with no include condition: candidates for every impression.
    unindexed: Vec<u32>,
}

impl TargetingIndex {
    pub fn build<'a>(
        targetings: impl IntoIterator<Item = &'a Targeting>,
        dictionary: &mut Dictionary,
    ) -> Self {
        let compiled: Vec<CompiledTargeting> = targetings
            .into_iter()
            .map(|t| CompiledTargeting::compile(t, dictionary))
            .collect();
        let mut frequency: FxHashMap<(Dimension, u64), u32> = FxHashMap::default();
        for targeting in &compiled {
            for (dimension, values) in targeting.posting_options() {
                for value in values {
                    *frequency.entry((dimension, *value)).or_default() += 1;
                }
            }
        }
        let mut index = TargetingIndex {
            postings: (0..Dimension::COUNT)
                .map(|_| FxHashMap::default())
                .collect(),
            ..Default::default()
        };
        for (position, targeting) in compiled.iter().enumerate() {
            let position = position as u32;
            let cost = |(dimension, values): &(Dimension, &[u64])| -> u64 {
                values
                    .iter()
                    .map(|v| u64::from(frequency[&(*dimension, *v)]))
                    .sum()
            };
            match targeting.posting_options().min_by_key(cost) {
                None => index.unindexed.push(position),
                Some((dimension, values)) => {
                    for value in values {
                        index.postings[dimension as usize]
                            .entry(*value)
                            .or_default()
                            .push(position);
                    }
                }
            }
        }
        index.targetings = compiled;
        index
    }

    pub fn len(&self) -> usize {
        self.targetings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targetings.is_empty()
    }

    /// Positions (in build order, ascending) of the targetings that match.
    pub fn matches(&self, impression: &ResolvedImpression) -> Vec<u32> {
        let mut candidates = self.unindexed.clone();
        for dimension in DIMENSIONS {
            let postings = &self.postings[dimension as usize];
            if postings.is_empty() {
                continue;
            }
            for value in impression.values(dimension) {
                if let Some(list) = postings.get(value) {
                    candidates.extend_from_slice(list);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|position| self.targetings[*position as usize].matches(impression));
        candidates
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::targeting::{DayHour, Filter, SegmentFilter, Weekday};

    fn pick<T: Clone + std::fmt::Debug>(values: &'static [T]) -> impl Strategy<Value = Vec<T>> {
        prop::collection::vec(prop::sample::select(values), 0..3)
    }

    fn filter<T: Clone + std::fmt::Debug + 'static>(
        values: &'static [T],
    ) -> impl Strategy<Value = Filter<T>> {
        prop_oneof![
            3 => Just(Filter::default()),
            2 => pick(values).prop_map(Filter::include),
            1 => (pick(values), pick(values)).prop_map(|(include, exclude)| Filter { include, exclude }),
        ]
    }

    const UNITS: &[&str] = &["u1", "u2", "u3", "u4"];
    const COUNTRIES: &[&str] = &["USA", "CAN", "DEU"];
    const DOMAINS: &[&str] = &["example.com", "news.example.com", "Other.org", "org"];
    const SEGMENTS: &[&str] = &["s1", "s2", "s3"];
    const OSES: &[&str] = &["ios", "Android", "IOS"];
    const SIZES: &[Size] = &[
        Size { w: 300, h: 250 },
        Size { w: 320, h: 50 },
        Size { w: 728, h: 90 },
    ];
    const MEDIA: &[MediaType] = &[MediaType::Banner, MediaType::Video, MediaType::Native];
    const DEVICES: &[u32] = &[1, 2, 4];

    fn strings(values: Vec<&str>) -> Vec<String> {
        values.into_iter().map(str::to_string).collect()
    }

    fn string_filter(values: &'static [&'static str]) -> impl Strategy<Value = Filter<String>> {
        filter(values).prop_map(|f| Filter {
            include: strings(f.include),
            exclude: strings(f.exclude),
        })
    }

    fn targeting() -> impl Strategy<Value = Targeting> {
        (
            (
                string_filter(UNITS),
                filter(MEDIA),
                filter(SIZES),
                prop::option::of(any::<bool>()),
            ),
            (
                string_filter(COUNTRIES),
                filter(DEVICES),
                string_filter(OSES),
                string_filter(DOMAINS),
            ),
            (pick(SEGMENTS), pick(SEGMENTS), pick(SEGMENTS)),
            (prop::option::of((pick(&[Weekday::Mon, Weekday::Sat]), pick(&[0u8, 9, 21])))),
            (
                string_filter(&["d1", "d2"]),
                string_filter(&["sport", "news"]),
            ),
        )
            .prop_map(|(a, b, c, d, e)| Targeting {
                ad_units: a.0,
                media_types: a.1,
                sizes: a.2,
                interstitial: a.3,
                countries: b.0,
                device_types: b.1,
                os: b.2,
                domains: b.3,
                segments: SegmentFilter {
                    any_of: strings(c.0),
                    all_of: strings(c.1),
                    none_of: strings(c.2),
                },
                day_part: d
                    .map(|(days, hours)| DayPart { days, hours })
                    .unwrap_or_default(),
                deals: e.0,
                key_values: if e.1.is_empty() {
                    Default::default()
                } else {
                    [("section".to_string(), e.1)].into()
                },
                ..Default::default()
            })
    }

    fn impression() -> impl Strategy<Value = ImpressionKeys> {
        (
            (
                prop::sample::select(UNITS),
                pick(MEDIA),
                pick(SIZES),
                any::<bool>(),
            ),
            (
                prop::sample::select(COUNTRIES),
                prop::sample::select(DEVICES),
                prop::sample::select(OSES),
            ),
            (prop::sample::select(
                &[
                    "example.com",
                    "a.news.example.com",
                    "other.org",
                    "x.net",
                    "",
                ][..],
            )),
            (
                pick(SEGMENTS),
                pick(&["d1", "d2"]),
                prop::sample::select(&["sport", "news", "none"][..]),
            ),
            (
                prop::sample::select(&[Weekday::Mon, Weekday::Sat, Weekday::Sun][..]),
                prop::sample::select(&[0u8, 9, 21, 23][..]),
            ),
        )
            .prop_map(|(a, b, domain, c, (day, hour))| ImpressionKeys {
                tagid: a.0.to_string(),
                media_types: a.1,
                sizes: a.2,
                interstitial: a.3,
                country: b.0.to_string(),
                devicetype: b.1,
                os: b.2.to_string(),
                domain: domain.to_string(),
                segments: strings(c.0),
                deals: strings(c.1),
                key_values: vec![("section".to_string(), c.2.to_string())],
                day_hour: DayHour { day, hour },
                ..Default::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn the_index_agrees_with_the_reference_scan(
            targetings in prop::collection::vec(targeting(), 0..40),
            impressions in prop::collection::vec(impression(), 1..8),
        ) {
            let mut dictionary = Dictionary::default();
            let index = TargetingIndex::build(&targetings, &mut dictionary);
            for keys in &impressions {
                let expected: Vec<u32> = targetings
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.matches(keys))
                    .map(|(i, _)| i as u32)
                    .collect();
                prop_assert_eq!(index.matches(&dictionary.resolve(keys)), expected);
            }
        }
    }

    #[test]
    fn targetings_with_only_excludes_are_always_candidates() {
        let targetings = vec![
            Targeting {
                countries: Filter {
                    include: vec![],
                    exclude: vec!["USA".into()],
                },
                ..Default::default()
            },
            Targeting::default(),
        ];
        let mut dictionary = Dictionary::default();
        let index = TargetingIndex::build(&targetings, &mut dictionary);
        let usa = ImpressionKeys {
            country: "USA".into(),
            ..Default::default()
        };
        assert_eq!(index.matches(&dictionary.resolve(&usa)), [1]);
        assert_eq!(
            index.matches(&dictionary.resolve(&ImpressionKeys::default())),
            [0, 1]
        );
    }
}
