//! The OpenRTB request one network is sent for one impression, built from the request
//! document exactly as the gateway sent it. Everything the gateway sent passes through
//! (ext objects, members outside OpenRTB 2.6), except what the privacy rules withhold and
//! the fields Cascade owns on a network call, which are rewritten:
//!
//! - `imp`: only the impression mediated, with `tagid` = the network's placement,
//!   `bidfloor`/`bidfloorcur` = the floor in the network's currency, the media objects'
//!   `battr` = the merged blocked attributes, the mediated bid's parameters merged into
//!   `imp.ext`; `pmp` (the deals) only for a bidding network, whose bid may name one;
//! - `tmax` (the time this call may take), `at` = 1 (a network is booked at its own
//!   price), `cur` = [the network's currency];
//! - `badv`, `bcat`, `bseat`: the selling rule's blocks merged with the request's;
//! - `source.schain`: Cascade's own node appended when the account asks for it.

use cascade_core::ad_quality::AdQuality;
use cascade_core::privacy::{self, Permissions, RequestSignals};
use cascade_proto::openrtb::v1::BidRequest;
use serde_json::{Map, Value, json};

/// The media objects of an impression that carry `battr`.
const MEDIA: &[&str] = &["banner", "video", "audio", "native"];

/// What makes one network's request differ from the gateway's.
#[derive(Clone, Copy)]
pub struct Rewrites<'a> {
    pub impid: &'a str,
    pub placement_id: &'a str,
    /// The floor, in units (not micros) of `currency`.
    pub floor: f64,
    pub currency: &'a str,
    pub tmax_ms: u64,
    pub quality: &'a AdQuality<'a>,
    /// The mediated bid's parameters for this network, merged into `imp.ext` at
    /// `params_at` (a dot-separated path; empty for `imp.ext` itself).
    pub params: Option<&'a Map<String, Value>>,
    pub params_at: &'a str,
    /// Cascade's own supply-chain node (`asi`, `sid`, `hp`), appended to `source.schain`.
    pub schain_node: Option<&'a Value>,
    pub permissions: &'a Permissions,
    /// Keep the impression's deals (`imp.pmp`): a bidding network may bid under one; a
    /// waterfall network, booked at its CPM, may not.
    pub keep_deals: bool,
    /// Whether this network may receive the ids of an `eids` source.
    pub eid_allowed: &'a dyn Fn(&str) -> bool,
}

/// The request document for one network, and what the privacy rules withheld from it.
/// The privacy signals of a request, where OpenRTB 2.6 carries them: `regs`, the TC
/// string in `user.consent`, `device.dnt` and `device.lmt`.
pub fn request_signals(request: &BidRequest) -> RequestSignals<'_> {
    let regs = request.regs.as_ref();
    let device = request.device.as_ref();
    RequestSignals {
        gdpr: regs.and_then(|r| r.gdpr),
        consent: request.user.as_ref().map_or("", |u| u.consent.as_str()),
        us_privacy: regs.map_or("", |r| r.us_privacy.as_str()),
        gpp: regs.map_or("", |r| r.gpp.as_str()),
        gpp_sid: regs.map_or(&[], |r| r.gpp_sid.as_slice()),
        coppa: regs.and_then(|r| r.coppa),
        dnt: device.and_then(|d| d.dnt),
        lmt: device.and_then(|d| d.lmt),
    }
}

pub fn network_request(document: &Value, rewrites: &Rewrites<'_>) -> (Value, Vec<&'static str>) {
    let empty = Map::new();
    let members = document.as_object().unwrap_or(&empty);
    // Every member but the impressions, of which only the one mediated is copied.
    let mut request: Map<String, Value> = members
        .iter()
        .filter(|(name, _)| *name != "imp")
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let imp = members
        .get("imp")
        .and_then(Value::as_array)
        .and_then(|imps| imps.iter().find(|imp| imp["id"] == rewrites.impid))
        .cloned()
        .unwrap_or_else(|| json!({"id": rewrites.impid}));
    request.insert("imp".into(), Value::Array(vec![rewrite_imp(imp, rewrites)]));
    request.insert("tmax".into(), json!(rewrites.tmax_ms));
    request.insert("at".into(), json!(1));
    request.insert("cur".into(), json!([rewrites.currency]));
    set_list(&mut request, "badv", rewrites.quality.blocked_adomains);
    set_list(&mut request, "bcat", rewrites.quality.blocked_categories);
    set_list(&mut request, "bseat", rewrites.quality.blocked_seats);
    if let Some(node) = rewrites.schain_node {
        append_schain_node(&mut request, node.clone());
    }
    let mut request = Value::Object(request);
    let mut withheld = privacy::withhold(&mut request, rewrites.permissions);
    if rewrites.permissions.user_ids && privacy::filter_eids(&mut request, rewrites.eid_allowed) {
        withheld.push("eids of sources not permitted to the network");
    }
    (request, withheld)
}

fn rewrite_imp(imp: Value, rewrites: &Rewrites<'_>) -> Value {
    let mut imp = match imp {
        Value::Object(members) => members,
        _ => Map::new(),
    };
    imp.insert("tagid".into(), json!(rewrites.placement_id));
    imp.insert("bidfloor".into(), json!(rewrites.floor));
    imp.insert("bidfloorcur".into(), json!(rewrites.currency));
    if !rewrites.keep_deals {
        imp.remove("pmp");
    }
    for media in MEDIA {
        if let Some(object) = imp.get_mut(*media).and_then(Value::as_object_mut) {
            set_list(object, "battr", rewrites.quality.blocked_attributes);
        }
    }
    if let Some(params) = rewrites.params.filter(|params| !params.is_empty()) {
        let ext = object_at(&mut imp, "ext");
        let target = rewrites
            .params_at
            .split('.')
            .filter(|segment| !segment.is_empty())
            .fold(ext, |object, segment| object_at(object, segment));
        for (name, value) in params {
            target.insert(name.clone(), value.clone());
        }
    }
    Value::Object(imp)
}

/// The object member `name` of `object`, created (or replacing a non-object) if needed.
fn object_at<'a>(object: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let member = object
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !member.is_object() {
        *member = Value::Object(Map::new());
    }
    member.as_object_mut().expect("just made an object")
}

/// Sets a list member, or removes it when the list is empty (OpenRTB: omitted, not []).
fn set_list<T: serde::Serialize>(object: &mut Map<String, Value>, name: &str, list: &[T]) {
    if list.is_empty() {
        object.remove(name);
    } else {
        object.insert(name.to_string(), json!(list));
    }
}

fn append_schain_node(request: &mut Map<String, Value>, node: Value) {
    let source = object_at(request, "source");
    let schain = object_at(source, "schain");
    if !schain.contains_key("ver") {
        schain.insert("ver".into(), json!("1.0"));
        // Cascade does not know the chain before the gateway: not complete.
        schain.insert("complete".into(), json!(0));
    }
    match schain.get_mut("nodes").and_then(Value::as_array_mut) {
        Some(nodes) => nodes.push(node),
        None => {
            schain.insert("nodes".into(), Value::Array(vec![node]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_core::ad_quality::Taxonomy;

    fn quality<'a>(adomains: &'a [String], attributes: &'a [i32]) -> AdQuality<'a> {
        AdQuality {
            blocked_adomains: adomains,
            blocked_categories: &[],
            blocked_seats: &[],
            blocked_attributes: attributes,
            taxonomy: Taxonomy::from_cattax(1),
            block_unknown_adomain: false,
            block_unknown_category: false,
            dsa_required: false,
            index: None,
        }
    }

    #[test]
    fn only_the_owned_fields_change_and_everything_else_passes_as_it_came() {
        let document = json!({
            "id": "r1", "at": 2, "tmax": 500, "cur": ["EUR"], "badv": ["a.com"],
            "imp": [
                {"id": "1", "tagid": "gw", "bidfloor": 0.1, "banner": {"w": 300, "battr": [1]},
                 "pmp": {"deals": [{"id": "d"}]}, "rwdd": 1, "ext": {"gpid": "/1/home", "x": {"y": 1}}},
                {"id": "2", "video": {}}
            ],
            "site": {"page": "https://p", "ext": {"amp": 0}},
            "regs": {"gpp": "DBABM~x", "gpp_sid": [2], "ext": {"dsa": {"dsarequired": 1}}},
            "source": {"tid": "t1", "schain": {"ver": "1.0", "complete": 1, "nodes": [{"asi": "gw.com", "sid": "1", "hp": 1}]}},
            "vendor_member": {"kept": true}
        });
        let params = json!({"zoneId": 7}).as_object().cloned().unwrap();
        let node = json!({"asi": "cascade.example", "sid": "pub-9", "hp": 1});
        let blocked = vec!["b.com".to_string(), "a.com".to_string()];
        let quality = quality(&blocked, &[1, 3]);
        let rewrites = Rewrites {
            impid: "1",
            placement_id: "net-7",
            floor: 2.5,
            currency: "USD",
            tmax_ms: 180,
            quality: &quality,
            params: Some(&params),
            params_at: "bidder",
            schain_node: Some(&node),
            permissions: &Permissions::ALL,
            keep_deals: false,
            eid_allowed: &|_| true,
        };
        let (sent, withheld) = network_request(&document, &rewrites);
        assert!(withheld.is_empty());
        let mut expected = document.clone();
        expected["imp"] = json!([{
            "id": "1", "tagid": "net-7", "bidfloor": 2.5, "bidfloorcur": "USD",
            "banner": {"w": 300, "battr": [1, 3]}, "rwdd": 1,
            "ext": {"gpid": "/1/home", "x": {"y": 1}, "bidder": {"zoneId": 7}}
        }]);
        expected["at"] = json!(1);
        expected["tmax"] = json!(180);
        expected["cur"] = json!(["USD"]);
        expected["badv"] = json!(["b.com", "a.com"]);
        expected["source"]["schain"]["nodes"]
            .as_array_mut()
            .unwrap()
            .push(node);
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_new_supply_chain_is_started_incomplete_and_empty_lists_are_left_out() {
        let document = json!({"id": "r", "imp": [{"id": "1"}], "bcat": ["IAB25"]});
        let node = json!({"asi": "cascade.example", "sid": "p", "hp": 1});
        let quality = quality(&[], &[]);
        let (sent, _) = network_request(
            &document,
            &Rewrites {
                impid: "1",
                placement_id: "p",
                floor: 0.0,
                currency: "EUR",
                tmax_ms: 50,
                quality: &quality,
                params: None,
                params_at: "",
                schain_node: Some(&node),
                permissions: &Permissions::ALL,
                keep_deals: false,
                eid_allowed: &|_| true,
            },
        );
        assert_eq!(
            sent["source"],
            json!({"schain": {"ver": "1.0", "complete": 0, "nodes": [node]}})
        );
        assert!(
            sent.get("bcat").is_none(),
            "the merged list is what is sent"
        );
    }
}
