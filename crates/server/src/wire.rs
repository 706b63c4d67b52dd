//! Wire types of the internal APIs as the core sees them, where more than one service
//! reads the same message.

use cascade_core::ad_quality::{AdQuality, Taxonomy};
use cascade_core::money::Factor;
use cascade_proto::auction::v1::AdQuality as WireAdQuality;

/// A bid adjustment from the wire, in millionths: 0 means none.
pub fn adjustment(ppm: i64) -> Factor {
    if ppm > 0 { Factor(ppm) } else { Factor::ONE }
}

/// The ad-quality filters of an impression, borrowed from the wire message.
pub fn ad_quality(quality: &WireAdQuality) -> AdQuality<'_> {
    AdQuality {
        blocked_adomains: &quality.blocked_adomains,
        blocked_categories: &quality.blocked_categories,
        blocked_seats: &quality.blocked_seats,
        blocked_attributes: &quality.blocked_attributes,
        taxonomy: Taxonomy::from_cattax(quality.cattax),
        block_unknown_adomain: quality.block_unknown_adomain,
        block_unknown_category: quality.block_unknown_category,
        dsa_required: quality.dsa_required,
        index: None,
    }
}
