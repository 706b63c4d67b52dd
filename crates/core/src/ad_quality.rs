//! Ad-quality filters: what the publisher (its selling rule) and the request (`badv`,
//! `bcat`, `bseat`, `battr`) refuse to show. One check for every ad that can serve:
//! exchange bids, bidding networks' live bids, waterfall networks' answers, line items
//! and chained outcomes.

use std::fmt;

use rustc_hash::FxHashSet;

use crate::targeting::domain_is_within;

/// The content taxonomy categories are written in (OpenRTB 2.6 `cattax`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Taxonomy {
    /// IAB Content Category Taxonomy 1.0 (`cattax` 1, the OpenRTB default): a category
    /// nests under its parent by prefix, `IAB25-2` within `IAB25`.
    #[default]
    Content1,
    /// Any other taxonomy: no parent table is shipped, so a category is blocked only by
    /// its exact code.
    Other(i32),
}

impl Taxonomy {
    /// From OpenRTB's `cattax`; 0 (unset) means the default, 1.
    pub fn from_cattax(cattax: i32) -> Self {
        match cattax {
            0 | 1 => Taxonomy::Content1,
            other => Taxonomy::Other(other),
        }
    }

    /// Whether `category` is `blocked` or one of its descendants.
    pub fn is_within(self, category: &str, blocked: &str) -> bool {
        match self {
            Taxonomy::Content1 => category_is_within(category, blocked),
            Taxonomy::Other(_) => category.eq_ignore_ascii_case(blocked),
        }
    }
}

/// IAB Content Taxonomy 1.0 categories nest by suffix: `IAB2-3` is within `IAB2`.
pub fn category_is_within(category: &str, blocked: &str) -> bool {
    category.eq_ignore_ascii_case(blocked)
        || (category.len() > blocked.len()
            && category.as_bytes()[blocked.len()] == b'-'
            && category.is_char_boundary(blocked.len())
            && category[..blocked.len()].eq_ignore_ascii_case(blocked))
}

/// The filters that apply to one impression: the selling rule's plus the request's.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdQuality<'a> {
    /// Blocked advertiser domains; a domain also blocks its subdomains.
    pub blocked_adomains: &'a [String],
    /// Blocked categories; a category also blocks its children (see [`Taxonomy`]).
    pub blocked_categories: &'a [String],
    pub blocked_seats: &'a [String],
    /// OpenRTB creative attribute codes.
    pub blocked_attributes: &'a [i32],
    pub taxonomy: Taxonomy,
    /// Refuse an ad that declares no advertiser domain (a rule setting, as Prebid's
    /// ortb2blocking `enforce_blocks`); by default it passes.
    pub block_unknown_adomain: bool,
    /// Refuse an ad that declares no category.
    pub block_unknown_category: bool,
    /// The request requires DSA transparency (`regs.ext.dsa.dsarequired` 2 or 3): an
    /// ad that declares none (`bid.ext.dsa`) may not serve.
    pub dsa_required: bool,
    /// The lists above as hash sets, when the caller checks many ads against them (see
    /// [`BlockIndex`]); `None`: each check scans the lists.
    pub index: Option<&'a BlockIndex>,
}

/// The blocked lists of an [`AdQuality`] as hash sets, built once per impression: an ad
/// then costs a lookup per label of each of its domains, per level of each category, for
/// its seat and each attribute, whatever the lengths of the lists. (A scan costs their
/// product: 1,000 blocked domains × 100 domains of each of 1,000 bids is 10^8
/// comparisons.) Lookups agree with the scans exactly; a property test says so.
#[derive(Clone, Debug, Default)]
pub struct BlockIndex {
    adomains: FxHashSet<String>,
    categories: FxHashSet<String>,
    seats: FxHashSet<String>,
    attributes: FxHashSet<i32>,
}

impl BlockIndex {
    /// Whether checking `ads` ads against `quality` by lookups is cheaper than by scans:
    /// building the index costs about one hash per list entry, a scan one comparison per
    /// entry per ad.
    pub fn pays_for(quality: &AdQuality<'_>, ads: usize) -> bool {
        let entries = quality.blocked_adomains.len()
            + quality.blocked_categories.len()
            + quality.blocked_seats.len()
            + quality.blocked_attributes.len();
        entries >= 16 && ads >= 4
    }

    pub fn new(quality: &AdQuality<'_>) -> BlockIndex {
        let lower = |values: &[String], trim_dot: bool| -> FxHashSet<String> {
            values
                .iter()
                .map(|value| {
                    let value = if trim_dot {
                        value.trim_end_matches('.')
                    } else {
                        value
                    };
                    value.to_ascii_lowercase()
                })
                .collect()
        };
        BlockIndex {
            adomains: lower(quality.blocked_adomains, true),
            categories: lower(quality.blocked_categories, false),
            seats: lower(quality.blocked_seats, false),
            attributes: quality.blocked_attributes.iter().copied().collect(),
        }
    }
}

/// The blocked lists, asked one value at a time.
trait BlockLists {
    fn blocks_seat(&self, seat: &str) -> bool;
    fn blocks_attribute(&self, attribute: i32) -> bool;
    /// `domain` or a domain it is within (a parent at a label boundary) is blocked.
    fn blocks_domain(&self, domain: &str) -> bool;
    /// `category` or a category it nests under (by `taxonomy`) is blocked.
    fn blocks_category(&self, category: &str, taxonomy: Taxonomy) -> bool;
}

/// The lists scanned, entry by entry.
struct Scan<'q, 'a>(&'q AdQuality<'a>);

impl BlockLists for Scan<'_, '_> {
    fn blocks_seat(&self, seat: &str) -> bool {
        self.0
            .blocked_seats
            .iter()
            .any(|s| s.eq_ignore_ascii_case(seat))
    }

    fn blocks_attribute(&self, attribute: i32) -> bool {
        self.0.blocked_attributes.contains(&attribute)
    }

    fn blocks_domain(&self, domain: &str) -> bool {
        self.0
            .blocked_adomains
            .iter()
            .any(|blocked| domain_is_within(domain, blocked))
    }

    fn blocks_category(&self, category: &str, taxonomy: Taxonomy) -> bool {
        self.0
            .blocked_categories
            .iter()
            .any(|blocked| taxonomy.is_within(category, blocked))
    }
}

impl BlockLists for BlockIndex {
    fn blocks_seat(&self, seat: &str) -> bool {
        !self.seats.is_empty() && self.seats.contains(&seat.to_ascii_lowercase())
    }

    fn blocks_attribute(&self, attribute: i32) -> bool {
        self.attributes.contains(&attribute)
    }

    fn blocks_domain(&self, domain: &str) -> bool {
        if self.adomains.is_empty() {
            return false;
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if self.adomains.contains(&domain) {
            return true;
        }
        domain
            .match_indices('.')
            .any(|(dot, _)| self.adomains.contains(&domain[dot + 1..]))
    }

    fn blocks_category(&self, category: &str, taxonomy: Taxonomy) -> bool {
        if self.categories.is_empty() {
            return false;
        }
        let category = category.to_ascii_lowercase();
        if self.categories.contains(&category) {
            return true;
        }
        taxonomy == Taxonomy::Content1
            && category
                .match_indices('-')
                .any(|(dash, _)| self.categories.contains(&category[..dash]))
    }
}

/// Most advertiser domains, categories or creative attributes one ad may declare, from
/// any demand: an exchange bid over it is refused at intake, a network's answer over it
/// is refused here. The check's cost grows with them, and no real ad declares more.
pub const MAX_DECLARED_PER_AD: usize = 100;

/// What an ad says about itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Creative<'a> {
    pub adomains: &'a [String],
    pub categories: &'a [String],
    /// The buyer seat; empty when the demand has none (networks, line items).
    pub seat: &'a str,
    pub attributes: &'a [i32],
    /// It carries DSA transparency (who paid, on whose behalf).
    pub dsa_declared: bool,
}

/// Why an ad may not serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    BlockedAdomain(String),
    BlockedCategory(String),
    BlockedSeat(String),
    BlockedAttribute(i32),
    UnknownAdomain,
    UnknownCategory,
    NoDsaTransparency,
    /// It declares more domains, categories or attributes than
    /// [`MAX_DECLARED_PER_AD`]: what (`adomain`, `cat`, `attr`) and how many.
    Overdeclared(&'static str, usize),
}

impl Refusal {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BlockedAdomain(_) => "blocked_adomain",
            Refusal::BlockedCategory(_) => "blocked_category",
            Refusal::BlockedSeat(_) => "blocked_seat",
            Refusal::BlockedAttribute(_) => "blocked_attribute",
            Refusal::UnknownAdomain => "unknown_adomain",
            Refusal::UnknownCategory => "unknown_category",
            Refusal::NoDsaTransparency => "no_dsa",
            Refusal::Overdeclared(..) => "overdeclared",
        }
    }

    /// The OpenRTB loss reason a bid refused so is told.
    pub fn loss_code(&self) -> i32 {
        use crate::notice::loss;
        match self {
            Refusal::BlockedAdomain(_) => loss::ADVERTISER_EXCLUDED,
            Refusal::BlockedCategory(_) => loss::CATEGORY_EXCLUDED,
            Refusal::BlockedSeat(_) => loss::SEAT_BLOCKED,
            Refusal::BlockedAttribute(_) => loss::ATTRIBUTE_EXCLUDED,
            Refusal::UnknownAdomain => loss::INVALID_ADVERTISER_DOMAIN,
            Refusal::UnknownCategory | Refusal::NoDsaTransparency => loss::BLOCKED,
            Refusal::Overdeclared(..) => loss::INVALID_BID_RESPONSE,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BlockedAdomain(domain) => write!(f, "advertiser domain {domain} is blocked"),
            Refusal::BlockedCategory(cat) => write!(f, "category {cat} is blocked"),
            Refusal::BlockedSeat(seat) => write!(f, "buyer seat {seat} is blocked"),
            Refusal::BlockedAttribute(attr) => write!(f, "creative attribute {attr} is blocked"),
            Refusal::UnknownAdomain => {
                f.write_str("the ad declares no advertiser domain and the rule blocks unknown ones")
            }
            Refusal::UnknownCategory => {
                f.write_str("the ad declares no category and the rule blocks unknown ones")
            }
            Refusal::NoDsaTransparency => {
                f.write_str("the request requires DSA transparency and the ad declares none")
            }
            Refusal::Overdeclared(what, count) => write!(
                f,
                "the ad declares {count} {what} values, more than {MAX_DECLARED_PER_AD}"
            ),
        }
    }
}

impl AdQuality<'_> {
    /// `None` when the ad may serve; otherwise the first filter it fails.
    pub fn check(&self, creative: &Creative<'_>) -> Option<Refusal> {
        match self.index {
            Some(index) => self.check_against(index, creative),
            None => self.check_against(&Scan(self), creative),
        }
    }

    /// The filters in their order, each asked of `lists` (scans or lookups: the same
    /// answers).
    fn check_against(&self, lists: &impl BlockLists, creative: &Creative<'_>) -> Option<Refusal> {
        for (what, count) in [
            ("adomain", creative.adomains.len()),
            ("cat", creative.categories.len()),
            ("attr", creative.attributes.len()),
        ] {
            if count > MAX_DECLARED_PER_AD {
                return Some(Refusal::Overdeclared(what, count));
            }
        }
        let seat = creative.seat;
        if !seat.is_empty() && lists.blocks_seat(seat) {
            return Some(Refusal::BlockedSeat(seat.to_string()));
        }
        if let Some(attribute) = creative
            .attributes
            .iter()
            .find(|a| lists.blocks_attribute(**a))
        {
            return Some(Refusal::BlockedAttribute(*attribute));
        }
        if let Some(domain) = creative.adomains.iter().find(|d| lists.blocks_domain(d)) {
            return Some(Refusal::BlockedAdomain(domain.clone()));
        }
        if let Some(category) = creative
            .categories
            .iter()
            .find(|c| lists.blocks_category(c, self.taxonomy))
        {
            return Some(Refusal::BlockedCategory(category.clone()));
        }
        self.check_declarations(creative)
    }

    /// What the ad must declare: a domain, a category, DSA transparency.
    fn check_declarations(&self, creative: &Creative<'_>) -> Option<Refusal> {
        if self.block_unknown_adomain && creative.adomains.iter().all(|d| d.trim().is_empty()) {
            return Some(Refusal::UnknownAdomain);
        }
        if self.block_unknown_category && creative.categories.iter().all(|c| c.trim().is_empty()) {
            return Some(Refusal::UnknownCategory);
        }
        if self.dsa_required && !creative.dsa_declared {
            return Some(Refusal::NoDsaTransparency);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn categories_nest_by_taxonomy() {
        assert!(category_is_within("IAB2-3", "IAB2"));
        assert!(category_is_within("iab2", "IAB2"));
        assert!(!category_is_within("IAB22", "IAB2"));
        assert!(!category_is_within("IAB2", "IAB2-3"));
        let other = Taxonomy::from_cattax(6);
        assert!(other.is_within("1234", "1234"));
        assert!(!other.is_within("1234-5", "1234"));
        assert!(Taxonomy::from_cattax(0).is_within("IAB25-2", "IAB25"));
    }

    #[test]
    fn an_ad_declaring_more_than_the_limit_is_refused_before_any_list_is_scanned() {
        let blocked = strings(&["bad.example"]);
        let domains: Vec<String> = (0..=MAX_DECLARED_PER_AD)
            .map(|i| format!("d{i}.example"))
            .collect();
        let quality = AdQuality {
            blocked_adomains: &blocked,
            ..Default::default()
        };
        let creative = Creative {
            adomains: &domains,
            ..Default::default()
        };
        assert_eq!(
            quality.check(&creative),
            Some(Refusal::Overdeclared("adomain", MAX_DECLARED_PER_AD + 1))
        );
        assert!(
            quality
                .check(&Creative {
                    adomains: &domains[1..],
                    ..Default::default()
                })
                .is_none()
        );
    }

    #[test]
    fn unknown_values_pass_unless_the_rule_blocks_them() {
        let blocked = strings(&["bad.example"]);
        let mut quality = AdQuality {
            blocked_adomains: &blocked,
            ..Default::default()
        };
        let silent = Creative::default();
        assert_eq!(quality.check(&silent), None);
        quality.block_unknown_adomain = true;
        assert_eq!(quality.check(&silent), Some(Refusal::UnknownAdomain));
        quality.block_unknown_adomain = false;
        quality.block_unknown_category = true;
        assert_eq!(quality.check(&silent), Some(Refusal::UnknownCategory));
    }

    proptest! {
        /// The hash lookups refuse exactly what the scans refuse, for any lists and ads
        /// (cases, trailing dots, nested categories and both taxonomies included).
        #[test]
        fn the_index_agrees_with_the_scans(
            blocked_domains in prop::collection::vec("(bad|ads\\.bad|Bad|x)\\.(example|com)\\.?", 0..4),
            blocked_categories in prop::collection::vec("(IAB25|iab2|IAB25-2|1234)", 0..3),
            blocked_seats in prop::collection::vec("(seat-a|SEAT-B)", 0..2),
            blocked_attributes in prop::collection::vec(1..6i32, 0..3),
            domains in prop::collection::vec("(a\\.)?(bad|ads\\.bad|BAD|notbad|x)\\.(example|com)\\.?", 0..3),
            categories in prop::collection::vec("(IAB25|IAB25-2|IAB25-2-1|IAB2|iab22-1|1234|1234-5)", 0..3),
            seat in "(|seat-a|seat-b|Seat-A)",
            attributes in prop::collection::vec(1..8i32, 0..3),
            cattax in 0..3i32,
        ) {
            let quality = AdQuality {
                blocked_adomains: &blocked_domains,
                blocked_categories: &blocked_categories,
                blocked_seats: &blocked_seats,
                blocked_attributes: &blocked_attributes,
                taxonomy: Taxonomy::from_cattax(cattax),
                ..Default::default()
            };
            let index = BlockIndex::new(&quality);
            let indexed = AdQuality { index: Some(&index), ..quality };
            let creative = Creative { adomains: &domains, categories: &categories, seat: &seat, attributes: &attributes, dsa_declared: false };
            prop_assert_eq!(indexed.check(&creative), quality.check(&creative));
        }

        /// An ad passes exactly when none of its domains is within a blocked one, none
        /// of its categories within a blocked one, its seat and attributes not blocked.
        #[test]
        fn check_refuses_exactly_what_a_filter_names(
            domains in prop::collection::vec(prop_oneof!["bad\\.example", "ads\\.bad\\.example", "good\\.example", "notbad\\.example"], 0..3),
            categories in prop::collection::vec(prop_oneof!["IAB25", "IAB25-2", "IAB2", "IAB22-1"], 0..3),
            attributes in prop::collection::vec(1..10i32, 0..3),
            seat in prop_oneof!["", "seat-a", "seat-b"],
            dsa_required in any::<bool>(),
            dsa_declared in any::<bool>(),
        ) {
            let blocked_domains = strings(&["bad.example"]);
            let blocked_categories = strings(&["IAB25"]);
            let blocked_seats = strings(&["seat-b"]);
            let quality = AdQuality {
                blocked_adomains: &blocked_domains,
                blocked_categories: &blocked_categories,
                blocked_seats: &blocked_seats,
                blocked_attributes: &[3],
                dsa_required,
                ..Default::default()
            };
            let creative = Creative { adomains: &domains, categories: &categories, seat: &seat, attributes: &attributes, dsa_declared };
            let expect_refused = domains.iter().any(|d| d == "bad.example" || d.ends_with(".bad.example"))
                || categories.iter().any(|c| c == "IAB25" || c.starts_with("IAB25-"))
                || seat == "seat-b"
                || attributes.contains(&3)
                || (dsa_required && !dsa_declared);
            prop_assert_eq!(quality.check(&creative).is_some(), expect_refused);
        }
    }
}
