//! Wire types of the internal APIs as the core sees them, where more than one service
//! reads the same message.

use cascade_core::ad_quality::{AdQuality, Taxonomy};
use cascade_proto::auction::v1::AdQuality as WireAdQuality;

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
    }
}
