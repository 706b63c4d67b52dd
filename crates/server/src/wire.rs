//! Wire types of the internal APIs as the core sees them, where more than one service
//! reads the same message.

use cascade_core::ad_quality::{AdQuality, Taxonomy};
use cascade_core::money::Factor;
use cascade_core::privacy::{Permissions, Verdict};
use cascade_proto::auction::v1::AdQuality as WireAdQuality;
use cascade_proto::decision::v1::PrivacyVerdict;

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

/// A privacy verdict for the wire.
pub fn privacy_verdict(verdict: &Verdict) -> PrivacyVerdict {
    let p = &verdict.permissions;
    PrivacyVerdict {
        call: p.call,
        user_ids: p.user_ids,
        user_data: p.user_data,
        precise_geo: p.precise_geo,
        advertising_id: p.advertising_id,
        child_directed: p.child_directed,
        reasons: verdict.reasons.clone(),
    }
}

/// What a verdict from the wire permits; `None` (no verdict was sent) permits nothing.
pub fn permissions_of(wire: Option<&PrivacyVerdict>) -> Permissions {
    wire.map_or(Permissions::NONE, |wire| Permissions {
        call: wire.call,
        user_ids: wire.user_ids,
        user_data: wire.user_data,
        precise_geo: wire.precise_geo,
        advertising_id: wire.advertising_id,
        child_directed: wire.child_directed,
    })
}

/// Why a verdict from the wire denies what it denies, on one line (as
/// [`Verdict::describe`]).
pub fn describe_verdict(wire: Option<&PrivacyVerdict>) -> String {
    wire.map_or_else(
        || "not called: no privacy verdict was sent for the network".to_string(),
        |wire| wire.reasons.join("; "),
    )
}
