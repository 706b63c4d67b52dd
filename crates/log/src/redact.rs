//! What of a decision's request the log may keep. The log is Cascade's own record, and
//! Cascade holds no IAB vendor id of its own: it keeps what the privacy rules let a
//! vendor without one receive ([`cascade_core::privacy`]). So under GDPR, a US opt-out
//! or COPPA, the logged request has no user or device ids, no user data and only coarse
//! geolocation; the consent strings themselves are kept, to say under which consent a
//! decision was made. Exchange bids are logged without their markup, and a request over
//! the size cap is left out with its size.

use cascade_core::privacy::{self, Permissions, Signals};
use cascade_networks::outbound::request_signals;
use cascade_proto::openrtb::v1::BidRequest;
use prost::Message as _;

use crate::schema::{Decision, Privacy};

/// Prepares `decision` for writing: the request redacted as its signals require (what
/// was removed noted in `privacy.withheld`), capped at `max_request_bytes`, and the
/// exchange bids' markup dropped.
pub fn prepare(decision: &mut Decision, max_request_bytes: usize) {
    for response in &mut decision.exchange_bids {
        for seatbid in &mut response.seatbid {
            for bid in &mut seatbid.bid {
                bid.adm.clear();
            }
        }
    }
    let Some(request) = decision.request.take() else {
        return;
    };
    let privacy = decision.privacy.get_or_insert_with(Privacy::default);
    let (request, withheld) = redacted(request, privacy);
    privacy.withheld = withheld;
    let size = request.encoded_len();
    decision.request_bytes = u32::try_from(size).unwrap_or(u32::MAX);
    if size <= max_request_bytes {
        decision.request = Some(request);
    } else {
        decision.request_omitted = true;
    }
}

/// `request` without what its privacy signals withhold from a vendor with no vendor id,
/// the signals summarised into `privacy`.
fn redacted(request: BidRequest, privacy: &mut Privacy) -> (BidRequest, Vec<String>) {
    let signals = request_signals(&request);
    *privacy = Privacy {
        gdpr: signals.gdpr,
        consent_present: !signals.consent.is_empty(),
        us_privacy: signals.us_privacy.to_string(),
        gpp_present: !signals.gpp.is_empty(),
        gpp_sid: signals.gpp_sid.to_vec(),
        coppa: signals.coppa,
        dnt: signals.dnt,
        lmt: signals.lmt,
        withheld: Vec::new(),
        networks: std::mem::take(&mut privacy.networks),
        unidentified: privacy.unidentified.take(),
    };
    // The verdict bid-intake decided; an entry written without one (an older
    // bid-intake) has its signals read here.
    let permissions = match &privacy.unidentified {
        Some(verdict) => cascade_server::wire::permissions_of(Some(verdict)),
        None => Signals::read(&signals).permissions(None).permissions,
    };
    if permissions == Permissions::ALL {
        // Nothing to withhold: the request is kept as it came, with no JSON round trip.
        return (request, Vec::new());
    }
    let Ok(mut document) = serde_json::to_value(&request) else {
        return (BidRequest::default(), vec!["request".into()]);
    };
    let withheld = privacy::withhold(&mut document, &permissions);
    if withheld.is_empty() {
        return (request, Vec::new());
    }
    match serde_json::from_value(document) {
        Ok(redacted) => (redacted, withheld.into_iter().map(String::from).collect()),
        // Never keep what should have been withheld: without its redacted form, the
        // request is not logged at all.
        Err(_) => (BidRequest::default(), vec!["request".into()]),
    }
}
