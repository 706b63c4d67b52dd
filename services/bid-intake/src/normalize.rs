//! Validation and normalisation of a decision request: every limit, price and currency
//! is checked here, at the door, with an error naming the field; what comes out is in
//! integer USD micros and the internal services' terms.

use std::collections::HashMap;

use cascade_core::Micros;
use cascade_core::money::Rates;
use cascade_proto::auction::v1::{Candidate, Deal};
use cascade_proto::decision::v1::{DecideRequest, SourceKind};
use cascade_proto::openrtb::v1::{BidRequest, Imp};
use cascade_proto::openrtb_json::struct_to_json;
use cascade_proto::targeting::v1::{ImpContext, KeyValue, MediaType, RequestContext, Size};

use crate::error::DecideError;

pub const MAX_IMPS: usize = 64;
pub const MAX_EXCHANGE_RESPONSES: usize = 64;
pub const MAX_EXCHANGE_BIDS: usize = 1_000;
pub const MAX_ID_LEN: usize = 256;
pub const MAX_BLOCKLIST_LEN: usize = 1_000;
pub const MAX_SIZES_PER_IMP: usize = 32;
pub const MAX_ADM_BYTES: usize = 256 * 1024;
/// Longest notice URL (`nurl`, `burl`, `lurl`) a bid may carry: the longest the
/// outbound guard requests.
pub use cascade_networks::guard::MAX_URL_BYTES;
pub const MAX_DEALS_PER_IMP: usize = 100;
pub const MAX_SEGMENTS: usize = 1_000;
pub const MAX_KEY_VALUES: usize = 100;
pub const MAX_CHAINED_SELECTIONS: usize = 16;
/// Most advertiser domains, categories or creative attributes one exchange bid lists.
pub use cascade_core::ad_quality::MAX_DECLARED_PER_AD as MAX_LIST_PER_BID;
/// Most seats or advertiser domains one deal allows (`wseat`, `wadomain`).
pub const MAX_LIST_PER_DEAL: usize = 100;
/// Most extended-id sources (`user.eids`) and ids per source (`uids`): Prebid's user-id
/// module knows about 60 sources, each with one or two ids.
pub const MAX_EIDS: usize = 64;
pub const MAX_UIDS_PER_EID: usize = 16;
/// Most GPP section ids `regs.gpp_sid` lists (about 25 sections exist).
pub const MAX_GPP_SIDS: usize = 64;
/// Largest `ext` object of the request, its impressions, `site`/`app`, `device`, `user`,
/// `regs` and `source`, in encoded bytes, and its deepest nesting: exts are copied into
/// every network call, so their size is paid once per network.
pub const MAX_EXT_BYTES: usize = 64 * 1024;
pub const MAX_EXT_DEPTH: usize = 16;

/// A request that passed validation.
#[derive(Debug)]
pub struct Normalized {
    pub account_id: String,
    pub imps: Vec<ImpContext>,
    pub context: RequestContext,
    /// Exchange bids per impression, in the order of `imps`.
    pub exchange_candidates: Vec<Vec<Candidate>>,
    /// The request's `bcat` and `badv`, merged into every rule's filters.
    pub blocked_categories: Vec<String>,
    pub blocked_adomains: Vec<String>,
    /// The request's `bseat`.
    pub blocked_seats: Vec<String>,
    /// Per impression (in the order of `imps`), its `banner.battr` and `video.battr`.
    pub blocked_attributes: Vec<Vec<i32>>,
    /// Per impression, its deals (`imp.pmp.deals`, floors in USD micros) and whether
    /// only they may serve (`imp.pmp.private_auction`).
    pub deals: Vec<(Vec<Deal>, bool)>,
    /// The request's `cattax`.
    pub cattax: i32,
    /// `tmax` in milliseconds, when the request set one.
    pub tmax_ms: Option<u64>,
    /// `regs.ext.dsa.dsarequired` is 2 (required) or 3 (required, the publisher is an
    /// online platform): bids without DSA transparency may not serve.
    pub dsa_required: bool,
}

/// Reads the OpenRTB request from `openrtb` (a JSON document kept whole) into
/// `request.request`, and returns that document as JSON, which every network's request
/// is then built from. A typed `request` returns nothing: the typed request is all there
/// is, and network-caller encodes it only if it calls a network. A document that does
/// not fit OpenRTB 2.6 is refused with the path of the member at fault.
pub fn openrtb_document(request: &mut DecideRequest) -> Result<Vec<u8>, DecideError> {
    let encoded = match (request.request.as_ref(), request.openrtb.take()) {
        (Some(_), Some(_)) => {
            return Err(DecideError::invalid(
                "openrtb",
                "set either request or openrtb, not both",
            ));
        }
        (None, None) => {
            return Err(DecideError::invalid(
                "request",
                "required: the OpenRTB bid request",
            ));
        }
        (Some(_), None) => {
            let typed = request.request.as_mut().expect("matched Some");
            cascade_proto::openrtb25::upgrade_typed(typed).map_err(|error| {
                DecideError::invalid(format!("request.{}", error.field), error.problem)
            })?;
            return Ok(Vec::new());
        }
        (None, Some(document)) => {
            let mut document = struct_to_json(&document);
            cascade_proto::openrtb25::upgrade(&mut document).map_err(|error| {
                DecideError::invalid(format!("openrtb.{}", error.field), error.problem)
            })?;
            let document = serde_json::Value::Object(document);
            let typed: BidRequest =
                serde_path_to_error::deserialize(&document).map_err(|error| {
                    DecideError::invalid(
                        format!("openrtb.{}", error.path()),
                        error.inner().to_string(),
                    )
                })?;
            request.request = Some(typed);
            serde_json::to_vec(&document)
        }
    };
    encoded.map_err(|error| {
        DecideError::invalid("request", format!("cannot be encoded as JSON: {error}"))
    })
}

pub fn normalize(request: &DecideRequest, rates: &Rates<'_>) -> Result<Normalized, DecideError> {
    let bid_request = request
        .request
        .as_ref()
        .ok_or_else(|| DecideError::invalid("request", "required: the OpenRTB bid request"))?;
    check_list_len(
        "chained_selection_ids",
        request.chained_selection_ids.len(),
        MAX_CHAINED_SELECTIONS,
    )?;
    for (i, id) in request.chained_selection_ids.iter().enumerate() {
        check_id(&format!("chained_selection_ids[{i}]"), id)?;
        if request.chained_selection_ids[..i].contains(id) {
            return Err(DecideError::invalid(
                format!("chained_selection_ids[{i}]"),
                format!("duplicate selection id {id:?}"),
            ));
        }
    }
    check_id("request.id", &bid_request.id)?;
    if bid_request.tmax() < 0 {
        return Err(DecideError::invalid("request.tmax", "must not be negative"));
    }
    check_list_len("request.bcat", bid_request.bcat.len(), MAX_BLOCKLIST_LEN)?;
    check_list_len("request.badv", bid_request.badv.len(), MAX_BLOCKLIST_LEN)?;
    check_list_len("request.bseat", bid_request.bseat.len(), MAX_BLOCKLIST_LEN)?;
    check_bounded_members(bid_request)?;
    let account_id = publisher_id(bid_request)?;

    if bid_request.imp.is_empty() {
        return Err(DecideError::invalid(
            "request.imp",
            "at least one impression is required",
        ));
    }
    check_list_len("request.imp", bid_request.imp.len(), MAX_IMPS)?;
    let mut imp_index = HashMap::with_capacity(bid_request.imp.len());
    let context = request_context(request, bid_request)?;
    let mut imps = Vec::with_capacity(bid_request.imp.len());
    for (i, imp) in bid_request.imp.iter().enumerate() {
        let field = format!("request.imp[{i}]");
        check_id(&format!("{field}.id"), &imp.id)?;
        if imp_index.insert(imp.id.as_str(), i).is_some() {
            return Err(DecideError::invalid(
                format!("{field}.id"),
                format!("duplicate impression id {:?}", imp.id),
            ));
        }
        imps.push(imp_context(&field, imp, rates)?);
    }

    let deals = bid_request
        .imp
        .iter()
        .enumerate()
        .map(|(i, imp)| imp_deals(&format!("request.imp[{i}]"), imp, rates))
        .collect::<Result<_, _>>()?;
    if bid_request.cattax() < 0 {
        return Err(DecideError::invalid(
            "request.cattax",
            "must not be negative",
        ));
    }
    let exchange_candidates = exchange_candidates(request, &imp_index, rates)?;
    Ok(Normalized {
        account_id,
        imps,
        context,
        exchange_candidates,
        blocked_categories: bid_request.bcat.clone(),
        blocked_adomains: bid_request.badv.clone(),
        blocked_seats: bid_request.bseat.clone(),
        blocked_attributes: bid_request
            .imp
            .iter()
            .map(|imp| {
                let banner = imp.banner.iter().flat_map(|b| &b.battr);
                let video = imp.video.iter().flat_map(|v| &v.battr);
                banner.chain(video).copied().collect()
            })
            .collect(),
        tmax_ms: (bid_request.tmax() > 0).then_some(bid_request.tmax() as u64),
        deals,
        cattax: bid_request.cattax(),
        dsa_required: cascade_proto::openrtb_json::requires_dsa(bid_request),
    })
}

/// The impression's deals with their floors in USD micros (a deal's `bidfloorcur`
/// defaults to USD, as OpenRTB says), and its `private_auction` flag.
fn imp_deals(field: &str, imp: &Imp, rates: &Rates<'_>) -> Result<(Vec<Deal>, bool), DecideError> {
    let Some(pmp) = &imp.pmp else {
        return Ok((Vec::new(), false));
    };
    let mut deals = Vec::with_capacity(pmp.deals.len());
    for (d, deal) in pmp.deals.iter().enumerate() {
        let field = format!("{field}.pmp.deals[{d}]");
        check_id(&format!("{field}.id"), &deal.id)?;
        let floor = Micros::from_openrtb_price(deal.bidfloor())
            .map_err(|e| DecideError::invalid(format!("{field}.bidfloor"), e.to_string()))?;
        let floor = rates
            .to_usd(floor, &deal.bidfloorcur)
            .map_err(|e| DecideError::invalid(format!("{field}.bidfloorcur"), e.to_string()))?;
        // Per deal, not per request like `bseat`: 100 deals of 64 impressions could
        // otherwise carry millions of entries.
        check_list_len(
            &format!("{field}.wseat"),
            deal.wseat.len(),
            MAX_LIST_PER_DEAL,
        )?;
        check_list_len(
            &format!("{field}.wadomain"),
            deal.wadomain.len(),
            MAX_LIST_PER_DEAL,
        )?;
        deals.push(Deal {
            id: deal.id.clone(),
            floor_micros: floor.0,
            at: deal.at(),
            wseat: deal.wseat.clone(),
            wadomain: deal.wadomain.clone(),
        });
    }
    Ok((deals, pmp.private_auction() == 1))
}

/// The targeting keys the request's impressions share: geo, device, site or app, user
/// segments and custom key-values.
fn request_context(
    request: &DecideRequest,
    bid_request: &BidRequest,
) -> Result<RequestContext, DecideError> {
    let device = bid_request.device.clone().unwrap_or_default();
    let geo = device.geo.clone().unwrap_or_default();
    let devicetype = u32::try_from(device.devicetype())
        .map_err(|_| DecideError::invalid("request.device.devicetype", "must not be negative"))?;
    let segments: Vec<String> = bid_request
        .user
        .iter()
        .flat_map(|user| &user.data)
        .flat_map(|data| &data.segment)
        .map(|segment| segment.id.clone())
        .collect();
    check_list_len("request.user.data.segment", segments.len(), MAX_SEGMENTS)?;
    check_list_len("key_values", request.key_values.len(), MAX_KEY_VALUES)?;
    if let Some(segment) = segments.iter().find(|s| s.len() > MAX_ID_LEN) {
        return Err(DecideError::invalid(
            "request.user.data.segment.id",
            format!("at most {MAX_ID_LEN} characters, got {}", segment.len()),
        ));
    }
    if let Some((key, _)) = request
        .key_values
        .iter()
        .find(|(key, value)| key.is_empty() || key.len() > MAX_ID_LEN || value.len() > MAX_ID_LEN)
    {
        return Err(DecideError::invalid(
            format!("key_values[{key:?}]"),
            format!("keys must be 1 to {MAX_ID_LEN} characters, values at most {MAX_ID_LEN}"),
        ));
    }
    let mut key_values: Vec<KeyValue> = request
        .key_values
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    key_values.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(RequestContext {
        country: geo.country.trim().to_ascii_uppercase(),
        region: geo.region,
        metro: geo.metro,
        devicetype,
        os: device.os.to_ascii_lowercase(),
        domain: bid_request
            .site
            .as_ref()
            .map(|site| site.domain.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default(),
        bundle: bid_request
            .app
            .as_ref()
            .map(|app| app.bundle.clone())
            .unwrap_or_default(),
        segments,
        key_values,
    })
}

fn publisher_id(request: &BidRequest) -> Result<String, DecideError> {
    let (field, publisher) = match (&request.site, &request.app) {
        (Some(_), Some(_)) => {
            return Err(DecideError::invalid(
                "request.app",
                "a request has a site or an app, not both",
            ));
        }
        (Some(site), None) => ("request.site.publisher.id", site.publisher.as_ref()),
        (None, Some(app)) => ("request.app.publisher.id", app.publisher.as_ref()),
        (None, None) => {
            return Err(DecideError::invalid(
                "request.site",
                "required: a site or an app with its publisher",
            ));
        }
    };
    let id = publisher.map(|p| p.id.as_str()).unwrap_or_default();
    check_id(field, id)?;
    Ok(id.to_string())
}

fn imp_context(field: &str, imp: &Imp, rates: &Rates<'_>) -> Result<ImpContext, DecideError> {
    let floor = Micros::from_openrtb_price(imp.bidfloor())
        .map_err(|e| DecideError::invalid(format!("{field}.bidfloor"), e.to_string()))?;
    let floor = rates
        .to_usd(floor, &imp.bidfloorcur)
        .map_err(|e| DecideError::invalid(format!("{field}.bidfloorcur"), e.to_string()))?;
    if imp.tagid.len() > MAX_ID_LEN {
        return Err(DecideError::invalid(
            format!("{field}.tagid"),
            format!("at most {MAX_ID_LEN} characters"),
        ));
    }
    let deals: Vec<String> = imp
        .pmp
        .as_ref()
        .map(|pmp| pmp.deals.iter().map(|d| d.id.clone()).collect())
        .unwrap_or_default();
    check_list_len(
        &format!("{field}.pmp.deals"),
        deals.len(),
        MAX_DEALS_PER_IMP,
    )?;
    let mut media_types = Vec::new();
    let mut sizes = Vec::new();
    if let Some(banner) = &imp.banner {
        media_types.push(MediaType::Banner as i32);
        check_list_len(
            &format!("{field}.banner.battr"),
            banner.battr.len(),
            MAX_BLOCKLIST_LEN,
        )?;
        check_list_len(
            &format!("{field}.banner.format"),
            banner.format.len(),
            MAX_SIZES_PER_IMP,
        )?;
        push_size(
            &mut sizes,
            &format!("{field}.banner"),
            banner.w(),
            banner.h(),
        )?;
        for (j, format) in banner.format.iter().enumerate() {
            push_size(
                &mut sizes,
                &format!("{field}.banner.format[{j}]"),
                format.w(),
                format.h(),
            )?;
        }
    }
    if let Some(video) = &imp.video {
        media_types.push(MediaType::Video as i32);
        check_list_len(
            &format!("{field}.video.battr"),
            video.battr.len(),
            MAX_BLOCKLIST_LEN,
        )?;
        push_size(&mut sizes, &format!("{field}.video"), video.w(), video.h())?;
    }
    if imp.audio.is_some() {
        media_types.push(MediaType::Audio as i32);
    }
    if imp.native.is_some() {
        media_types.push(MediaType::Native as i32);
    }
    if media_types.is_empty() {
        return Err(DecideError::invalid(
            field,
            "an impression needs at least one of banner, video, audio or native",
        ));
    }
    Ok(ImpContext {
        impid: imp.id.clone(),
        tagid: imp.tagid.clone(),
        media_types,
        sizes,
        interstitial: imp.instl() == 1,
        deals,
        request_floor_micros: floor.0,
    })
}

fn push_size(sizes: &mut Vec<Size>, field: &str, w: i32, h: i32) -> Result<(), DecideError> {
    if w < 0 || h < 0 {
        return Err(DecideError::invalid(
            format!("{field}.w"),
            "sizes must not be negative",
        ));
    }
    if w > 0 && h > 0 {
        sizes.push(Size {
            w: w as u32,
            h: h as u32,
        });
    }
    Ok(())
}

fn exchange_candidates(
    request: &DecideRequest,
    imp_index: &HashMap<&str, usize>,
    rates: &Rates<'_>,
) -> Result<Vec<Vec<Candidate>>, DecideError> {
    check_list_len(
        "exchange_bids",
        request.exchange_bids.len(),
        MAX_EXCHANGE_RESPONSES,
    )?;
    let total: usize = request
        .exchange_bids
        .iter()
        .flat_map(|r| &r.seatbid)
        .map(|s| s.bid.len())
        .sum();
    if total > MAX_EXCHANGE_BIDS {
        return Err(DecideError::invalid(
            "exchange_bids",
            format!("at most {MAX_EXCHANGE_BIDS} bids in all, got {total}"),
        ));
    }
    let mut per_imp = vec![Vec::new(); imp_index.len()];
    for (r, response) in request.exchange_bids.iter().enumerate() {
        for (s, seatbid) in response.seatbid.iter().enumerate() {
            for (b, bid) in seatbid.bid.iter().enumerate() {
                let field = format!("exchange_bids[{r}].seatbid[{s}].bid[{b}]");
                check_id(&format!("{field}.id"), &bid.id)?;
                let Some(&imp) = imp_index.get(bid.impid.as_str()) else {
                    return Err(DecideError::invalid(
                        format!("{field}.impid"),
                        format!("no impression with id {:?}", bid.impid),
                    ));
                };
                let price = Micros::from_openrtb_price(bid.price)
                    .map_err(|e| DecideError::invalid(format!("{field}.price"), e.to_string()))?;
                let stated = price;
                let price = rates.to_usd(price, &response.cur).map_err(|e| {
                    DecideError::invalid(format!("exchange_bids[{r}].cur"), e.to_string())
                })?;
                let (original_cur, rate_micros) = original_currency(rates, &response.cur);
                check_list_len(
                    &format!("{field}.adomain"),
                    bid.adomain.len(),
                    MAX_LIST_PER_BID,
                )?;
                check_list_len(&format!("{field}.cat"), bid.cat.len(), MAX_LIST_PER_BID)?;
                check_list_len(&format!("{field}.attr"), bid.attr.len(), MAX_LIST_PER_BID)?;
                if bid.adm.len() > MAX_ADM_BYTES {
                    return Err(DecideError::invalid(
                        format!("{field}.adm"),
                        format!("at most {MAX_ADM_BYTES} bytes"),
                    ));
                }
                for (name, url) in [
                    ("nurl", &bid.nurl),
                    ("burl", &bid.burl),
                    ("lurl", &bid.lurl),
                ] {
                    if url.len() > MAX_URL_BYTES {
                        return Err(DecideError::invalid(
                            format!("{field}.{name}"),
                            format!("at most {MAX_URL_BYTES} bytes"),
                        ));
                    }
                }
                // The field path is unique and says where the bid came from.
                per_imp[imp].push(Candidate {
                    id: field,
                    source: SourceKind::Exchange as i32,
                    bid_micros: price.0,
                    seat: seatbid.seat.clone(),
                    bid_id: bid.id.clone(),
                    adomain: bid.adomain.clone(),
                    cat: bid.cat.clone(),
                    crid: bid.crid.clone(),
                    adm: bid.adm.clone(),
                    nurl: bid.nurl.clone(),
                    burl: bid.burl.clone(),
                    lurl: bid.lurl.clone(),
                    adid: bid.adid.clone(),
                    response_bid_id: response.bidid.clone(),
                    dsa: cascade_proto::openrtb_json::declares_dsa(bid),
                    exp_seconds: bid
                        .exp
                        .and_then(|exp| u32::try_from(exp).ok())
                        .unwrap_or_default(),
                    dealid: bid.dealid.clone(),
                    attr: bid.attr.clone(),
                    original_cur,
                    rate_micros,
                    original_price_micros: Some(stated.0),
                    ..Default::default()
                });
            }
        }
    }
    Ok(per_imp)
}

/// The currency a price was stated in and the rate it converted at, as candidates and
/// selections record them: empty and 0 for USD.
pub fn original_currency(rates: &Rates<'_>, currency: &str) -> (String, i64) {
    if currency.is_empty() || currency.eq_ignore_ascii_case(cascade_core::money::AUCTION_CURRENCY) {
        return (String::new(), 0);
    }
    (
        currency.to_ascii_uppercase(),
        rates.rate(currency).unwrap_or_default(),
    )
}

/// The members whose cost grows with their size and that no other check bounds: the
/// extended ids, the GPP section list and every `ext` a network call copies. (Consent
/// and GPP strings over their limits are not refused: they read as undecodable, which
/// is no consent, see `cascade_core::privacy`.)
fn check_bounded_members(request: &BidRequest) -> Result<(), DecideError> {
    if let Some(user) = &request.user {
        check_list_len("request.user.eids", user.eids.len(), MAX_EIDS)?;
        for (i, eid) in user.eids.iter().enumerate() {
            check_list_len(
                &format!("request.user.eids[{i}].uids"),
                eid.uids.len(),
                MAX_UIDS_PER_EID,
            )?;
        }
    }
    if let Some(regs) = &request.regs {
        check_list_len("request.regs.gpp_sid", regs.gpp_sid.len(), MAX_GPP_SIDS)?;
    }
    let shared = [
        ("request.ext", request.ext.as_ref()),
        (
            "request.site.ext",
            request.site.as_ref().and_then(|s| s.ext.as_ref()),
        ),
        (
            "request.app.ext",
            request.app.as_ref().and_then(|a| a.ext.as_ref()),
        ),
        (
            "request.device.ext",
            request.device.as_ref().and_then(|d| d.ext.as_ref()),
        ),
        (
            "request.user.ext",
            request.user.as_ref().and_then(|u| u.ext.as_ref()),
        ),
        (
            "request.regs.ext",
            request.regs.as_ref().and_then(|r| r.ext.as_ref()),
        ),
        (
            "request.source.ext",
            request.source.as_ref().and_then(|s| s.ext.as_ref()),
        ),
    ];
    for (field, ext) in shared {
        check_ext(ext).map_err(|problem| DecideError::invalid(field, problem))?;
    }
    for (i, imp) in request.imp.iter().enumerate() {
        check_ext(imp.ext.as_ref())
            .map_err(|problem| DecideError::invalid(format!("request.imp[{i}].ext"), problem))?;
    }
    Ok(())
}

/// An `ext` within [`MAX_EXT_BYTES`] and [`MAX_EXT_DEPTH`], or what is wrong with it.
fn check_ext(ext: Option<&cascade_proto::prost_types::Struct>) -> Result<(), String> {
    let Some(ext) = ext else {
        return Ok(());
    };
    let bytes = cascade_proto::prost::Message::encoded_len(ext);
    if bytes > MAX_EXT_BYTES {
        return Err(format!(
            "at most {MAX_EXT_BYTES} bytes encoded, got {bytes}"
        ));
    }
    if struct_depth(ext, MAX_EXT_DEPTH + 1) > MAX_EXT_DEPTH {
        return Err(format!("nested at most {MAX_EXT_DEPTH} deep"));
    }
    Ok(())
}

/// How deep `object` nests objects and lists (1 for a flat object), counted no further
/// than `stop`.
fn struct_depth(object: &cascade_proto::prost_types::Struct, stop: usize) -> usize {
    use cascade_proto::prost_types::value::Kind;
    fn value_depth(value: &cascade_proto::prost_types::Value, stop: usize) -> usize {
        match &value.kind {
            Some(Kind::StructValue(inner)) => struct_depth(inner, stop),
            Some(Kind::ListValue(list)) if stop > 1 => {
                1 + list
                    .values
                    .iter()
                    .map(|v| value_depth(v, stop - 1))
                    .max()
                    .unwrap_or(0)
            }
            Some(Kind::ListValue(_)) => 1,
            _ => 0,
        }
    }
    if stop <= 1 {
        return 1;
    }
    1 + object
        .fields
        .values()
        .map(|value| value_depth(value, stop - 1))
        .max()
        .unwrap_or(0)
}

fn check_id(field: &str, id: &str) -> Result<(), DecideError> {
    if id.is_empty() {
        return Err(DecideError::invalid(field, "required"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(DecideError::invalid(
            field,
            format!("at most {MAX_ID_LEN} characters"),
        ));
    }
    Ok(())
}

fn check_list_len(field: &str, len: usize, max: usize) -> Result<(), DecideError> {
    if len > max {
        return Err(DecideError::invalid(
            field,
            format!("at most {max} entries, got {len}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cascade_proto::openrtb::v1::{Banner, Bid, BidResponse, Publisher, SeatBid, Site};

    use super::*;

    fn rates() -> cascade_core::money::CurrencyRates {
        cascade_core::money::CurrencyRates::new([("EUR".to_string(), 1_100_000)])
    }

    fn request() -> DecideRequest {
        DecideRequest {
            request: Some(BidRequest {
                id: "r".into(),
                imp: vec![Imp {
                    id: "1".into(),
                    bidfloor: Some(0.5),
                    bidfloorcur: "EUR".into(),
                    banner: Some(Banner {
                        w: Some(300),
                        h: Some(250),
                        format: vec![cascade_proto::openrtb::v1::Format {
                            w: Some(320),
                            h: Some(50),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                site: Some(Site {
                    publisher: Some(Publisher {
                        id: "pub".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            exchange_bids: vec![BidResponse {
                cur: "EUR".into(),
                seatbid: vec![SeatBid {
                    seat: "s".into(),
                    bid: vec![Bid {
                        id: "b".into(),
                        impid: "1".into(),
                        price: 2.0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn field_of(error: DecideError) -> String {
        match error {
            DecideError::InvalidArgument { field, .. } => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn converts_prices_to_usd_micros_and_collects_targeting_keys() {
        let normalized = normalize(&request(), &rates().at(0)).unwrap();
        assert_eq!(normalized.account_id, "pub");
        let imp = &normalized.imps[0];
        assert_eq!(imp.request_floor_micros, 550_000);
        assert_eq!(imp.media_types, [MediaType::Banner as i32]);
        assert_eq!(imp.sizes, [Size { w: 300, h: 250 }, Size { w: 320, h: 50 }]);
        let bid = &normalized.exchange_candidates[0][0];
        assert_eq!(bid.bid_micros, 2_200_000);
        assert_eq!(bid.id, "exchange_bids[0].seatbid[0].bid[0]");
    }

    /// A pmp offering one deal (id "d") with the given fields.
    fn deal(deal: cascade_proto::openrtb::v1::Deal) -> cascade_proto::openrtb::v1::Pmp {
        cascade_proto::openrtb::v1::Pmp {
            deals: vec![cascade_proto::openrtb::v1::Deal {
                id: "d".into(),
                ..deal
            }],
            ..Default::default()
        }
    }

    /// Breaks one thing in a valid request.
    type Breakage = fn(&mut DecideRequest);

    #[test]
    fn names_the_offending_field() {
        let cases: Vec<(Breakage, &str)> = vec![
            (|r| r.request = None, "request"),
            (|r| r.request.as_mut().unwrap().id.clear(), "request.id"),
            (
                |r| r.request.as_mut().unwrap().tmax = Some(-1),
                "request.tmax",
            ),
            (|r| r.request.as_mut().unwrap().site = None, "request.site"),
            (
                |r| r.request.as_mut().unwrap().imp[0].bidfloor = Some(f64::NAN),
                "request.imp[0].bidfloor",
            ),
            (
                |r| r.request.as_mut().unwrap().imp[0].bidfloorcur = "JPY".into(),
                "request.imp[0].bidfloorcur",
            ),
            (
                |r| r.request.as_mut().unwrap().imp[0].banner = None,
                "request.imp[0]",
            ),
            (
                |r| {
                    r.request.as_mut().unwrap().imp[0]
                        .banner
                        .as_mut()
                        .unwrap()
                        .w = Some(-3)
                },
                "request.imp[0].banner.w",
            ),
            (
                |r| {
                    let imp = r.request.as_ref().unwrap().imp[0].clone();
                    r.request.as_mut().unwrap().imp.push(imp);
                },
                "request.imp[1].id",
            ),
            (
                |r| r.request.as_mut().unwrap().imp = vec![Imp::default(); MAX_IMPS + 1],
                "request.imp",
            ),
            (
                |r| {
                    r.request.as_mut().unwrap().imp[0].pmp =
                        Some(deal(cascade_proto::openrtb::v1::Deal {
                            wseat: vec![String::new(); MAX_LIST_PER_DEAL + 1],
                            ..Default::default()
                        }))
                },
                "request.imp[0].pmp.deals[0].wseat",
            ),
            (
                |r| {
                    r.request.as_mut().unwrap().imp[0].pmp =
                        Some(deal(cascade_proto::openrtb::v1::Deal {
                            bidfloorcur: "XYZ".into(),
                            ..Default::default()
                        }))
                },
                "request.imp[0].pmp.deals[0].bidfloorcur",
            ),
            (
                |r| r.exchange_bids[0].seatbid[0].bid[0].price = -1.0,
                "exchange_bids[0].seatbid[0].bid[0].price",
            ),
            (
                |r| r.exchange_bids[0].cur = "XYZ".into(),
                "exchange_bids[0].cur",
            ),
            (
                |r| r.exchange_bids[0].seatbid[0].bid[0].impid = "9".into(),
                "exchange_bids[0].seatbid[0].bid[0].impid",
            ),
            (
                |r| r.exchange_bids[0].seatbid[0].bid[0].id.clear(),
                "exchange_bids[0].seatbid[0].bid[0].id",
            ),
            (
                |r| {
                    r.exchange_bids[0].seatbid[0].bid[0].adomain =
                        vec![String::new(); MAX_LIST_PER_BID + 1]
                },
                "exchange_bids[0].seatbid[0].bid[0].adomain",
            ),
        ];
        for (break_it, field) in cases {
            let mut broken = request();
            break_it(&mut broken);
            assert_eq!(
                field_of(normalize(&broken, &rates().at(0)).unwrap_err()),
                field
            );
        }
    }

    #[test]
    fn collects_the_shared_targeting_keys() {
        use cascade_proto::openrtb::v1::{Data, Device, Geo, Pmp, Segment, User};
        let mut request = request();
        let bid_request = request.request.as_mut().unwrap();
        bid_request.site.as_mut().unwrap().domain = "News.Example.com.".into();
        bid_request.device = Some(Device {
            os: "iOS".into(),
            devicetype: Some(4),
            geo: Some(Geo {
                country: "usa".into(),
                region: "CA".into(),
                metro: "807".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        bid_request.user = Some(User {
            data: vec![Data {
                segment: vec![
                    Segment {
                        id: "auto".into(),
                        ..Default::default()
                    },
                    Segment {
                        id: "sport".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        });
        bid_request.imp[0].instl = Some(1);
        bid_request.imp[0].pmp = Some(Pmp {
            deals: vec![cascade_proto::openrtb::v1::Deal {
                id: "deal-1".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        request.key_values = [("section".to_string(), "sport".to_string())].into();
        let normalized = normalize(&request, &rates().at(0)).unwrap();
        let context = &normalized.context;
        assert_eq!(
            (
                context.country.as_str(),
                context.region.as_str(),
                context.metro.as_str(),
                context.devicetype,
                context.os.as_str(),
                context.domain.as_str()
            ),
            ("USA", "CA", "807", 4, "ios", "news.example.com")
        );
        assert_eq!(context.segments, ["auto", "sport"]);
        assert_eq!(
            context.key_values,
            [KeyValue {
                key: "section".into(),
                value: "sport".into()
            }]
        );
        assert!(normalized.imps[0].interstitial);
        assert_eq!(normalized.imps[0].deals, ["deal-1"]);
    }

    #[test]
    fn the_openrtb_document_is_read_whole_and_refused_with_the_path_at_fault() {
        use cascade_proto::openrtb_json::json_to_struct;
        let document =
            |value: serde_json::Value| Some(json_to_struct(value.as_object().cloned().unwrap()));
        let mut from_json = DecideRequest {
            openrtb: document(serde_json::json!({
                "id": "r", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "vendor_member": 1}],
                "site": {"publisher": {"id": "pub"}}
            })),
            ..Default::default()
        };
        let json = openrtb_document(&mut from_json).unwrap();
        let kept: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            kept["imp"][0]["vendor_member"], 1,
            "members outside 2.6 are kept"
        );
        assert_eq!(
            from_json.request.as_ref().unwrap().imp[0]
                .banner
                .as_ref()
                .unwrap()
                .w,
            Some(300)
        );

        let mut both = request();
        both.openrtb = document(serde_json::json!({"id": "r"}));
        let error = openrtb_document(&mut both).unwrap_err().to_string();
        assert!(error.contains("openrtb"), "{error}");

        let mut wrong = DecideRequest {
            openrtb: document(
                serde_json::json!({"id": "r", "imp": [{"id": "1", "banner": {"w": "wide"}}]}),
            ),
            ..Default::default()
        };
        let error = openrtb_document(&mut wrong).unwrap_err().to_string();
        assert!(error.contains("openrtb.imp[0].banner.w"), "{error}");
        assert!(openrtb_document(&mut DecideRequest::default()).is_err());
    }

    #[test]
    fn members_whose_cost_grows_with_their_size_are_bounded() {
        use cascade_proto::openrtb::v1::{Eid, Uid, User};
        use cascade_proto::openrtb_json::json_to_struct;
        let with_user = |user: User| {
            let mut request = request();
            request.request.as_mut().unwrap().user = Some(user);
            normalize(&request, &rates().at(0))
        };
        let eids = |sources: usize, uids: usize| User {
            eids: vec![
                Eid {
                    source: "a.com".into(),
                    uids: vec![Uid::default(); uids],
                    ..Default::default()
                };
                sources
            ],
            ..Default::default()
        };
        assert!(with_user(eids(MAX_EIDS, MAX_UIDS_PER_EID)).is_ok());
        assert_eq!(
            field_of(with_user(eids(MAX_EIDS + 1, 1)).unwrap_err()),
            "request.user.eids"
        );
        assert_eq!(
            field_of(with_user(eids(1, MAX_UIDS_PER_EID + 1)).unwrap_err()),
            "request.user.eids[0].uids"
        );
        let mut deep = serde_json::json!({"leaf": 1});
        for _ in 0..MAX_EXT_DEPTH {
            deep = serde_json::json!({ "nested": deep });
        }
        let ext =
            |value: serde_json::Value| Some(json_to_struct(value.as_object().cloned().unwrap()));
        assert_eq!(
            field_of(
                with_user(User {
                    ext: ext(deep),
                    ..Default::default()
                })
                .unwrap_err()
            ),
            "request.user.ext"
        );
        let big = serde_json::json!({"blob": "x".repeat(MAX_EXT_BYTES)});
        let mut request = request();
        request.request.as_mut().unwrap().imp[0].ext = ext(big);
        assert_eq!(
            field_of(normalize(&request, &rates().at(0)).unwrap_err()),
            "request.imp[0].ext"
        );
    }

    #[test]
    fn openrtb_25_places_are_read_in_their_26_places() {
        use cascade_proto::openrtb_json::json_to_struct;
        let mut from_json = DecideRequest {
            openrtb: Some(json_to_struct(
                serde_json::json!({
                    "id": "r", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
                    "site": {"publisher": {"id": "pub"}},
                    "regs": {"ext": {"gdpr": 1, "us_privacy": "1YYN"}},
                    "user": {"ext": {"consent": "CO-tc", "eids": [{"source": "a.com", "uids": [{"id": "x"}]}]}},
                    "source": {"ext": {"schain": {"ver": "1.0", "complete": 1, "nodes": [{"asi": "x.com", "sid": "1", "hp": 1}]}}}
                })
                .as_object()
                .cloned()
                .unwrap(),
            )),
            ..Default::default()
        };
        let json = openrtb_document(&mut from_json).unwrap();
        let document: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            document["regs"],
            serde_json::json!({"gdpr": 1, "us_privacy": "1YYN"})
        );
        assert_eq!(document["user"]["consent"], "CO-tc");
        assert!(document["user"].get("ext").is_none());
        let typed = from_json.request.as_ref().unwrap();
        assert_eq!(typed.regs.as_ref().unwrap().gdpr, Some(1));
        assert_eq!(typed.user.as_ref().unwrap().eids.len(), 1);
        assert_eq!(
            typed
                .source
                .as_ref()
                .unwrap()
                .schain
                .as_ref()
                .unwrap()
                .nodes[0]
                .asi,
            "x.com"
        );

        let mut wrong = DecideRequest {
            openrtb: Some(json_to_struct(
                serde_json::json!({"id": "r", "regs": {"ext": {"gdpr": "yes"}}})
                    .as_object()
                    .cloned()
                    .unwrap(),
            )),
            ..Default::default()
        };
        let error = openrtb_document(&mut wrong).unwrap_err().to_string();
        assert!(error.contains("openrtb.regs.ext.gdpr"), "{error}");
    }

    #[test]
    fn chained_selection_ids_are_bounded_and_unique() {
        let mut chained = request();
        chained.chained_selection_ids = vec!["s1".into(), "s1".into()];
        assert_eq!(
            field_of(normalize(&chained, &rates().at(0)).unwrap_err()),
            "chained_selection_ids[1]"
        );
        chained.chained_selection_ids = (0..=MAX_CHAINED_SELECTIONS)
            .map(|i| format!("s{i}"))
            .collect();
        assert_eq!(
            field_of(normalize(&chained, &rates().at(0)).unwrap_err()),
            "chained_selection_ids"
        );
    }
}
