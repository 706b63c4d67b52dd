//! What each network may receive of a request, decided from the request's privacy
//! signals as an SSP must, in the manner of Prebid's activity controls: may the network
//! be called at all, and may it receive user ids (with `eids`), precise geolocation, first
//! party user data and the advertising id.
//!
//! The signals:
//! - **TCF v2.2** (`user.consent`, or the TCF EU section of `regs.gpp`) when GDPR
//!   applies (`regs.gdpr = 1`, or section 2 in `regs.gpp_sid`). The network needs its
//!   IAB Global Vendor List id; a network without one gets nothing under GDPR. Calling it
//!   needs purpose 2 (basic ads) by consent or legitimate interest, user ids purpose 1
//!   (storage and access) consent, user data purpose 4 (personalised ads) consent (each
//!   with the vendor's consent), precise geolocation special feature 1. The publisher's
//!   restrictions in the string apply on top (see [`crate::tcf::TcString::basis`]).
//! - **US opt-outs**: `regs.us_privacy` with opt-out of sale `Y`, or a US section of
//!   `regs.gpp` (national or state) opted out of sale, sharing or targeted advertising:
//!   the network is still called (a contextual ad) but gets no ids, user data or precise
//!   geolocation.
//! - **COPPA** (`regs.coppa = 1`): no ids, user data or advertising id; geolocation is
//!   reduced to country and region and the IP address truncated.
//! - **`device.lmt = 1` or `device.dnt = 1`**: no advertising id.
//!
//! A signal that is present but cannot be decoded (or is longer than its limit,
//! [`crate::tcf::MAX_TC_STRING_BYTES`] and [`MAX_GPP_BYTES`]) counts as no consent (or as
//! an opt-out). The GVL's declared purposes of a vendor are not evaluated: the vendor's
//! consent bits stand for what it asked.
//!
//! What is withheld is decided by an allow list ([`withhold`]): under a restriction only
//! the members of `user`, `device` and their `ext` that identify no one are kept.

use std::str::FromStr;

use iab_gpp::sections::Section;
use iab_gpp::sections::SectionId;
use iab_gpp::sections::us_common::OptOut;
use iab_gpp::v1::GPPString;
use serde_json::{Map, Value};

use crate::tcf::{Basis, Bits, TcString};

/// The longest GPP string read: a TCF EU section of at most
/// [`crate::tcf::MAX_TC_STRING_BYTES`] plus the US sections (tens of bytes each).
pub const MAX_GPP_BYTES: usize = 16 * 1024;

/// GPP section id of the TCF EU v2 section.
const GPP_SECTION_TCF_EU_V2: i32 = 2;
/// GPP section id of the (deprecated) US Privacy string.
const GPP_SECTION_USP_V1: i32 = 6;
/// TCF purposes and special features the rules read.
const PURPOSE_STORAGE: u8 = 1;
const PURPOSE_BASIC_ADS: u8 = 2;
const PURPOSE_PERSONALISED_ADS: u8 = 4;
const SPECIAL_FEATURE_PRECISE_GEO: u8 = 1;

/// The privacy signals of one request, as OpenRTB 2.6 carries them.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestSignals<'a> {
    pub gdpr: Option<i32>,
    /// `user.consent`.
    pub consent: &'a str,
    pub us_privacy: &'a str,
    pub gpp: &'a str,
    pub gpp_sid: &'a [i32],
    pub coppa: Option<i32>,
    pub dnt: Option<i32>,
    pub lmt: Option<i32>,
}

/// The signals decoded once per request; [`Signals::permissions`] then answers per
/// network.
#[derive(Debug)]
pub struct Signals {
    gdpr: Gdpr,
    us: UsChoice,
    coppa: bool,
    limit_ad_tracking: bool,
}

#[derive(Debug)]
enum Gdpr {
    NotApplicable,
    Consent(Box<TcString>),
    /// GDPR applies and no TC string could be decoded: the reason.
    NoConsent(String),
}

#[derive(Debug)]
enum UsChoice {
    NoOptOut,
    /// Opted out, or a US signal that cannot be decoded: where it came from.
    OptedOut(String),
}

/// What one network may receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub call: bool,
    /// `user.id`, `user.buyeruid`, `user.eids`, device ids.
    pub user_ids: bool,
    /// `user.data`, `yob`, `gender`, `keywords`, `kwarray`, `customdata`, `user.ext.data`.
    pub user_data: bool,
    pub precise_geo: bool,
    /// `device.ifa` and the hashed device ids.
    pub advertising_id: bool,
    /// COPPA applies: geolocation is coarse and the IP truncated whatever else holds.
    pub child_directed: bool,
}

impl Permissions {
    pub const ALL: Permissions = Permissions {
        call: true,
        user_ids: true,
        user_data: true,
        precise_geo: true,
        advertising_id: true,
        child_directed: false,
    };

    /// Not called, nothing sent.
    pub const NONE: Permissions = Permissions {
        call: false,
        user_ids: false,
        user_data: false,
        precise_geo: false,
        advertising_id: false,
        child_directed: false,
    };
}

/// The permissions and, for everything denied, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub permissions: Permissions,
    pub reasons: Vec<String>,
}

impl Verdict {
    /// One line for an attempt's detail: what was withheld and why; empty when nothing.
    pub fn describe(&self) -> String {
        self.reasons.join("; ")
    }
}

impl Signals {
    pub fn read(request: &RequestSignals<'_>) -> Signals {
        let gpp = (!request.gpp.is_empty()).then(|| read_gpp(request.gpp));
        let gpp_lists = |sid: i32| request.gpp_sid.contains(&sid);
        let gdpr_applies = request.gdpr == Some(1) || gpp_lists(GPP_SECTION_TCF_EU_V2);
        let gdpr = if !gdpr_applies {
            Gdpr::NotApplicable
        } else if !request.consent.is_empty() {
            match TcString::decode(request.consent) {
                Ok(tcf) => Gdpr::Consent(Box::new(tcf)),
                Err(error) => Gdpr::NoConsent(format!("user.consent cannot be decoded ({error})")),
            }
        } else {
            match &gpp {
                Some(Ok(gpp)) => match gpp.section(SectionId::TcfEuV2) {
                    Some(section) => match TcString::decode(section) {
                        Ok(tcf) => Gdpr::Consent(Box::new(tcf)),
                        Err(error) => Gdpr::NoConsent(format!(
                            "the TCF section of regs.gpp cannot be decoded ({error})"
                        )),
                    },
                    None => Gdpr::NoConsent("no TCF section in regs.gpp".to_string()),
                },
                Some(Err(error)) => {
                    Gdpr::NoConsent(format!("regs.gpp cannot be decoded ({error})"))
                }
                None => Gdpr::NoConsent("GDPR applies and no TC string was sent".to_string()),
            }
        };
        let us = us_choice(request.us_privacy, gpp.as_ref(), request.gpp_sid);
        Signals {
            gdpr,
            us,
            coppa: request.coppa == Some(1),
            limit_ad_tracking: request.lmt == Some(1) || request.dnt == Some(1),
        }
    }

    /// What the network with IAB Global Vendor List id `vendor` may receive.
    pub fn permissions(&self, vendor: Option<u16>) -> Verdict {
        let mut permissions = Permissions::ALL;
        let mut reasons = Vec::new();
        match &self.gdpr {
            Gdpr::NotApplicable => {}
            Gdpr::NoConsent(why) => {
                permissions = Permissions::NONE;
                reasons.push(format!("not called: {why}"));
            }
            Gdpr::Consent(tcf) => match vendor {
                None => {
                    permissions = Permissions::NONE;
                    reasons.push("not called: GDPR applies and the network has no GVL id".into());
                }
                Some(vendor) => {
                    let basis =
                        |purpose: u8| tcf.basis(vendor, purpose, purpose == PURPOSE_BASIC_ADS);
                    let consent = |purpose: u8| basis(purpose) == Some(Basis::Consent);
                    if basis(PURPOSE_BASIC_ADS).is_none() {
                        permissions = Permissions::NONE;
                        reasons.push(format!(
                            "not called: no TCF consent or legitimate interest of vendor {vendor} for purpose 2{}",
                            restricted(tcf, vendor, PURPOSE_BASIC_ADS)
                        ));
                    } else {
                        if !consent(PURPOSE_STORAGE) {
                            permissions.user_ids = false;
                            permissions.advertising_id = false;
                            reasons.push(format!(
                                "user ids: no TCF consent of vendor {vendor} for purpose 1{}",
                                restricted(tcf, vendor, PURPOSE_STORAGE)
                            ));
                        }
                        if !consent(PURPOSE_PERSONALISED_ADS) {
                            permissions.user_data = false;
                            reasons.push(format!(
                                "user data: no TCF consent of vendor {vendor} for purpose 4{}",
                                restricted(tcf, vendor, PURPOSE_PERSONALISED_ADS)
                            ));
                        }
                        if !tcf.special_feature(SPECIAL_FEATURE_PRECISE_GEO) {
                            permissions.precise_geo = false;
                            reasons.push("precise geo: no TCF opt-in to special feature 1".into());
                        }
                    }
                }
            },
        }
        if let UsChoice::OptedOut(source) = &self.us
            && permissions.call
        {
            permissions = deny_personal(permissions);
            reasons.push(format!("user ids, user data, precise geo: {source}"));
        }
        if self.coppa && permissions.call {
            permissions = Permissions {
                child_directed: true,
                ..deny_personal(permissions)
            };
            reasons.push("user ids, user data, precise geo: COPPA applies".into());
        }
        if self.limit_ad_tracking && permissions.advertising_id {
            permissions.advertising_id = false;
            reasons.push("advertising id: lmt or dnt is 1".into());
        }
        Verdict {
            permissions,
            reasons,
        }
    }
}

/// ", restricted by the publisher (…)" when a publisher restriction of the string names
/// `vendor` for `purpose`; empty otherwise.
fn restricted(tcf: &TcString, vendor: u16, purpose: u8) -> String {
    tcf.restrictions
        .iter()
        .find(|r| r.purpose == purpose && r.vendors.contains(vendor))
        .map(|r| format!(", restricted by the publisher ({})", r.kind))
        .unwrap_or_default()
}

/// Reads a GPP string, its header first with a bounded reader of ours: the header's
/// section ids are range-encoded, and a reader that expands them before counting could
/// be made to build millions of ids from a few KB. A header that lists more ids than the
/// string has sections is refused before `iab_gpp` reads it.
fn read_gpp(gpp: &str) -> Result<GPPString, String> {
    if gpp.len() > MAX_GPP_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_GPP_BYTES}-byte limit",
            gpp.len()
        ));
    }
    let mut parts = gpp.split('~');
    let header = parts.next().unwrap_or_default();
    let sections = parts.count() as u64;
    let listed = gpp_header_id_count(header, sections).map_err(|e| e.to_string())?;
    if listed != sections {
        return Err(format!(
            "the header lists {listed} sections and {sections} follow"
        ));
    }
    GPPString::from_str(gpp).map_err(|e| e.to_string())
}

/// How many section ids a GPP header lists, counted without expanding its ranges;
/// refused as soon as the count passes `most`.
fn gpp_header_id_count(header: &str, most: u64) -> Result<u64, crate::tcf::TcfError> {
    use crate::tcf::TcfError;
    const FIELD: &str = "the GPP header";
    let mut bits = Bits::new(header, 0)?;
    let (kind, version) = (bits.read(6, FIELD)?, bits.read(6, FIELD)?);
    if (kind, version) != (3, 1) {
        return Err(TcfError::Version(version));
    }
    let entries = bits.read(12, FIELD)?;
    let (mut count, mut last_id) = (0u64, 0u64);
    for _ in 0..entries {
        let is_range = bits.read(1, FIELD)? == 1;
        let start = last_id + read_fibonacci(&mut bits)?;
        let end = if is_range {
            start + read_fibonacci(&mut bits)?
        } else {
            start
        };
        // Section ids are bytes: `iab_gpp` adds them up in a u8.
        if end > MAX_GPP_SECTION_ID {
            return Err(TcfError::VendorOutOfRange {
                section: FIELD,
                id: end,
                max: MAX_GPP_SECTION_ID,
            });
        }
        count += end - start + 1;
        last_id = end;
        if count > most {
            return Ok(count);
        }
    }
    Ok(count)
}

/// The largest GPP section id (the ids in use are below 30).
const MAX_GPP_SECTION_ID: u64 = u8::MAX as u64;

/// A Fibonacci-coded integer (the code ends with two 1 bits); values past what a
/// section id can be are refused.
fn read_fibonacci(bits: &mut Bits<'_>) -> Result<u64, crate::tcf::TcfError> {
    const FIELD: &str = "a GPP header range";
    let (mut current, mut next) = (1u64, 2u64);
    let (mut total, mut last_one) = (0u64, false);
    loop {
        let one = bits.read(1, FIELD)? == 1;
        if one && last_one {
            return Ok(total);
        }
        if one {
            total += current;
        }
        last_one = one;
        (current, next) = (next, current + next);
        if total > MAX_GPP_SECTION_ID || current > 1 << 40 {
            return Err(crate::tcf::TcfError::Truncated(FIELD));
        }
    }
}

fn deny_personal(permissions: Permissions) -> Permissions {
    Permissions {
        user_ids: false,
        user_data: false,
        precise_geo: false,
        advertising_id: false,
        ..permissions
    }
}

fn us_choice(
    us_privacy: &str,
    gpp: Option<&Result<GPPString, String>>,
    gpp_sid: &[i32],
) -> UsChoice {
    if !us_privacy.is_empty() {
        match us_privacy_opted_out(us_privacy) {
            Some(false) => {}
            Some(true) => return UsChoice::OptedOut("opted out of sale (us_privacy)".into()),
            None => {
                return UsChoice::OptedOut(format!("us_privacy {us_privacy:?} cannot be decoded"));
            }
        }
    }
    let gpp = match gpp {
        None => return UsChoice::NoOptOut,
        Some(Err(error)) => {
            return UsChoice::OptedOut(format!("regs.gpp cannot be decoded ({error})"));
        }
        Some(Ok(gpp)) => gpp,
    };
    for &id in gpp.section_ids() {
        let sid = id as i32;
        let applies = gpp_sid.is_empty() || gpp_sid.contains(&sid);
        if !applies || sid == GPP_SECTION_TCF_EU_V2 || sid < GPP_SECTION_USP_V1 {
            continue;
        }
        match gpp.decode_section(id) {
            Ok(section) => {
                if let Some(what) = us_section_opt_out(&section) {
                    return UsChoice::OptedOut(format!("{what} (GPP section {sid})"));
                }
            }
            Err(error) => {
                return UsChoice::OptedOut(format!(
                    "GPP section {sid} cannot be decoded ({error})"
                ));
            }
        }
    }
    UsChoice::NoOptOut
}

/// `Some(true)` when a US Privacy string says the user opted out of sale; `None` when it
/// is not a version 1 string.
fn us_privacy_opted_out(us_privacy: &str) -> Option<bool> {
    let bytes = us_privacy.as_bytes();
    if bytes.len() != 4 || bytes[0] != b'1' {
        return None;
    }
    let valid = |b: u8| matches!(b, b'Y' | b'N' | b'-');
    if !bytes[1..].iter().all(|&b| valid(b)) {
        return None;
    }
    Some(bytes[2] == b'Y')
}

/// Which opt-out a US section records, if any.
fn us_section_opt_out(section: &Section) -> Option<&'static str> {
    use iab_gpp::sections::usnat::Core as UsNatCore;
    let out = |o: &OptOut| matches!(o, OptOut::OptedOut);
    macro_rules! sale_or_targeting {
        ($core:expr) => {{
            let core = $core;
            if out(&core.sale_opt_out) {
                Some("opted out of sale")
            } else if out(&core.targeted_advertising_opt_out) {
                Some("opted out of targeted advertising")
            } else {
                None
            }
        }};
    }
    match section {
        Section::UspV1(usp) => matches!(usp.opt_out_sale, iab_gpp::sections::uspv1::Flag::Yes)
            .then_some("opted out of sale"),
        Section::UsNat(usnat) => {
            let (sale, sharing, targeting) = match &usnat.core {
                UsNatCore::V1(core) => (
                    &core.sale_opt_out,
                    &core.sharing_opt_out,
                    &core.targeted_advertising_opt_out,
                ),
                UsNatCore::V2(core) => (
                    &core.sale_opt_out,
                    &core.sharing_opt_out,
                    &core.targeted_advertising_opt_out,
                ),
                _ => return Some("an unknown US national section version"),
            };
            if out(sale) {
                Some("opted out of sale")
            } else if out(sharing) {
                Some("opted out of sharing")
            } else if out(targeting) {
                Some("opted out of targeted advertising")
            } else {
                None
            }
        }
        Section::UsCa(usca) => {
            if out(&usca.core.sale_opt_out) {
                Some("opted out of sale")
            } else if out(&usca.core.sharing_opt_out) {
                Some("opted out of sharing")
            } else {
                None
            }
        }
        Section::UsVa(s) => sale_or_targeting!(&s.core),
        Section::UsCo(s) => sale_or_targeting!(&s.core),
        Section::UsUt(s) => sale_or_targeting!(&s.core),
        Section::UsCt(s) => sale_or_targeting!(&s.core),
        Section::UsFl(s) => sale_or_targeting!(&s.core),
        Section::UsMt(s) => sale_or_targeting!(&s.core),
        Section::UsOr(s) => sale_or_targeting!(&s.core),
        Section::UsTx(s) => sale_or_targeting!(&s.core),
        Section::UsDe(s) => sale_or_targeting!(&s.core),
        Section::UsIa(s) => sale_or_targeting!(&s.core),
        Section::UsNe(s) => sale_or_targeting!(&s.core),
        Section::UsNh(s) => sale_or_targeting!(&s.core),
        Section::UsNj(s) => sale_or_targeting!(&s.core),
        Section::UsTn(s) => sale_or_targeting!(&s.core),
        Section::UsMn(s) => sale_or_targeting!(&s.core),
        _ => None,
    }
}

/// Removes from an OpenRTB request document (JSON) everything `permissions` withholds;
/// returns the names of what it removed or coarsened.
///
/// An allow list, not a deny list: when user ids or user data are withheld, `user` keeps
/// only [`USER_ALLOWED`] (and the ids or data still permitted), its `ext` only
/// [`USER_EXT_ALLOWED`]; when user ids or the advertising id are withheld, `device` keeps
/// only [`DEVICE_ALLOWED`], its `ext` only [`DEVICE_EXT_ALLOWED`]; when precise geolocation
/// is withheld, a `geo` keeps only [`GEO_ALLOWED`] (coordinates rounded). A member a
/// gateway adds that no list names, in the object or in its `ext`, never leaves under a
/// restriction.
pub fn withhold(document: &mut Value, permissions: &Permissions) -> Vec<&'static str> {
    let mut withheld = Vec::new();
    let mut note = |what: &'static str| {
        if !withheld.contains(&what) {
            withheld.push(what);
        }
    };
    let Some(request) = document.as_object_mut() else {
        return withheld;
    };
    if (!permissions.user_ids || !permissions.advertising_id)
        && let Some(device) = member(request, "device")
    {
        let removed = keep_only(device, |name| DEVICE_ALLOWED.contains(&name))
            | keep_only_in_ext(device, DEVICE_EXT_ALLOWED);
        if removed {
            note("device ids");
        }
    }
    if (!permissions.user_ids || !permissions.user_data)
        && let Some(user) = member(request, "user")
    {
        let mut ids_removed = false;
        let mut data_removed = false;
        user.retain(|name, _| {
            let allowed = USER_ALLOWED.contains(&name.as_str())
                || (permissions.user_ids && USER_IDS.contains(&name.as_str()))
                || (permissions.user_data && USER_DATA.contains(&name.as_str()));
            if !allowed {
                if USER_IDS.contains(&name.as_str()) {
                    ids_removed = true;
                } else {
                    data_removed = true;
                }
            }
            allowed
        });
        if let Some(ext) = member(user, "ext") {
            ext.retain(|name, _| {
                let allowed = USER_EXT_ALLOWED.contains(&name.as_str());
                if !allowed {
                    if name == "eids" {
                        ids_removed = true;
                    } else {
                        data_removed = true;
                    }
                }
                allowed
            });
        }
        remove_if_empty(user, "ext");
        if ids_removed {
            note("user ids");
        }
        if data_removed {
            note("user data");
        }
    }
    if !permissions.precise_geo || permissions.child_directed {
        let mut coarsened = false;
        for holder in ["device", "user"] {
            if let Some(geo) = member(request, holder).and_then(|o| member(o, "geo")) {
                coarsened |= coarsen_geo(geo, permissions.child_directed);
            }
        }
        if let Some(device) = member(request, "device") {
            coarsened |= truncate_ip(device, "ip", truncate_ipv4);
            coarsened |= truncate_ip(device, "ipv6", truncate_ipv6);
        }
        if coarsened {
            note("precise geo");
        }
    }
    withheld
}

/// Keeps in `user.eids` only the sources `allowed` admits; true when one was removed.
pub fn filter_eids(document: &mut Value, allowed: impl Fn(&str) -> bool) -> bool {
    let Some(eids) = document
        .pointer_mut("/user/eids")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let before = eids.len();
    eids.retain(|eid| allowed(eid.get("source").and_then(Value::as_str).unwrap_or("")));
    let removed = eids.len() != before;
    if eids.is_empty()
        && let Some(user) = document.get_mut("user").and_then(Value::as_object_mut)
    {
        user.remove("eids");
    }
    removed
}

/// The members of `device` that identify no one (OpenRTB 2.6 §3.2.18 without `ifa`, the
/// hashed device ids and `ext`), kept when ids are withheld; `ip` and `geo` are coarsened
/// separately when precise geolocation is.
pub const DEVICE_ALLOWED: &[&str] = &[
    "geo",
    "dnt",
    "lmt",
    "ua",
    "sua",
    "ip",
    "ipv6",
    "devicetype",
    "make",
    "model",
    "os",
    "osv",
    "hwv",
    "h",
    "w",
    "ppi",
    "pxratio",
    "js",
    "geofetch",
    "flashver",
    "language",
    "langb",
    "carrier",
    "mccmnc",
    "connectiontype",
    "ext",
];
/// Of `device.ext`: the App Tracking Transparency status (a permission, not an id).
pub const DEVICE_EXT_ALLOWED: &[&str] = &["atts"];
/// The members of `user` kept whatever is withheld: the consent signal and a geolocation
/// (coarsened when precise geolocation is withheld).
pub const USER_ALLOWED: &[&str] = &["consent", "geo", "ext"];
/// Of `user.ext`: consent signals only (TCF in the 2.5 place, Google's Additional
/// Consent).
pub const USER_EXT_ALLOWED: &[&str] = &[
    "consent",
    "ConsentedProvidersSettings",
    "consented_providers_settings",
];
/// The members of `user` that are ids, kept when user ids are permitted.
const USER_IDS: &[&str] = &["id", "buyeruid", "eids", "customdata"];
/// The members of `user` that are data about the user, kept when user data is permitted.
const USER_DATA: &[&str] = &["data", "yob", "gender", "keywords", "kwarray"];
/// The members of a `geo` kept when precise geolocation is withheld (coordinates rounded
/// to about 1 km); a child-directed request keeps only [`GEO_CHILD_ALLOWED`].
pub const GEO_ALLOWED: &[&str] = &[
    "lat",
    "lon",
    "type",
    "accuracy",
    "lastfix",
    "ipservice",
    "country",
    "region",
    "regionfips104",
    "metro",
    "city",
    "zip",
    "utcoffset",
];
pub const GEO_CHILD_ALLOWED: &[&str] = &["type", "ipservice", "country", "region", "utcoffset"];

fn member<'a>(
    object: &'a mut Map<String, Value>,
    name: &str,
) -> Option<&'a mut Map<String, Value>> {
    object.get_mut(name).and_then(Value::as_object_mut)
}

/// Keeps in `object` only the members `allowed` names; true when one was removed.
fn keep_only(object: &mut Map<String, Value>, allowed: impl Fn(&str) -> bool) -> bool {
    let before = object.len();
    object.retain(|name, _| allowed(name));
    object.len() != before
}

/// Keeps in `object.ext` only the members `allowed` lists (removing `ext` when nothing is
/// left); true when one was removed.
fn keep_only_in_ext(object: &mut Map<String, Value>, allowed: &[&str]) -> bool {
    let removed = match object.get_mut("ext") {
        Some(Value::Object(ext)) => keep_only(ext, |name| allowed.contains(&name)),
        Some(_) => {
            object.remove("ext");
            true
        }
        None => false,
    };
    remove_if_empty(object, "ext");
    removed
}

fn remove_if_empty(object: &mut Map<String, Value>, name: &str) {
    if object
        .get(name)
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        object.remove(name);
    }
}

/// Coordinates rounded to two decimals (about 1 km), or removed with the city-level
/// parts when the request is child-directed. True when something changed.
fn coarsen_geo(geo: &mut Map<String, Value>, child_directed: bool) -> bool {
    if child_directed {
        return keep_only(geo, |name| GEO_CHILD_ALLOWED.contains(&name));
    }
    let mut changed = keep_only(geo, |name| GEO_ALLOWED.contains(&name));
    for axis in ["lat", "lon"] {
        if let Some(value) = geo.get_mut(axis)
            && let Some(coordinate) = value.as_f64()
        {
            let rounded = (coordinate * 100.0).round() / 100.0;
            if rounded != coordinate {
                *value = serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number);
                changed = true;
            }
        }
    }
    changed
}

fn truncate_ip(
    device: &mut Map<String, Value>,
    field: &str,
    truncate: fn(&str) -> Option<String>,
) -> bool {
    let Some(Value::String(address)) = device.get_mut(field) else {
        return false;
    };
    match truncate(address) {
        Some(truncated) if truncated != *address => {
            *address = truncated;
            true
        }
        Some(_) => false,
        None => {
            device.remove(field);
            true
        }
    }
}

/// The /24 network of an IPv4 address; `None` when it is not one.
fn truncate_ipv4(address: &str) -> Option<String> {
    let ip: std::net::Ipv4Addr = address.parse().ok()?;
    let [a, b, c, _] = ip.octets();
    Some(std::net::Ipv4Addr::new(a, b, c, 0).to_string())
}

/// The /56 network of an IPv6 address; `None` when it is not one.
fn truncate_ipv6(address: &str) -> Option<String> {
    let ip: std::net::Ipv6Addr = address.parse().ok()?;
    let masked = u128::from(ip) & (!0u128 << 72);
    Some(std::net::Ipv6Addr::from(masked).to_string())
}

/// Encoders of real TC and GPP strings, for tests that need a consent string with known
/// contents. They are checked against the TC string reader of [`crate::tcf`], which is
/// checked against the IAB's own test vectors, and against `iab_gpp` for GPP.
#[doc(hidden)]
pub mod testing {
    /// The contents of a TC string's core segment that the rules read.
    #[derive(Clone, Debug, Default)]
    pub struct TcContent {
        pub purpose_consents: Vec<u16>,
        pub purpose_legitimate_interests: Vec<u16>,
        pub special_features: Vec<u16>,
        pub vendor_consents: Vec<u16>,
        pub vendor_legitimate_interests: Vec<u16>,
        /// Publisher restrictions: purpose, restriction type (0 not allowed, 1 require
        /// consent, 2 require legitimate interest) and the vendors it names.
        pub restrictions: Vec<(u8, u8, Vec<u16>)>,
    }

    /// A TCF v2.2 TC string (core segment only), as a CMP would write it.
    pub fn tc_string(content: &TcContent) -> String {
        let mut bits = Bits::default();
        bits.push(2, 6); // version
        bits.push(17_000_000_000, 36); // created, deciseconds
        bits.push(17_000_000_000, 36); // last updated
        bits.push(7, 12); // CMP id
        bits.push(1, 12); // CMP version
        bits.push(1, 6); // consent screen
        bits.push_letters("EN");
        bits.push(300, 12); // vendor list version
        bits.push(4, 6); // TCF policy version (2.2)
        bits.push(1, 1); // service specific
        bits.push(0, 1); // non-standard texts
        bits.push_set(&content.special_features, 12);
        bits.push_set(&content.purpose_consents, 24);
        bits.push_set(&content.purpose_legitimate_interests, 24);
        bits.push(0, 1); // purpose one treatment
        bits.push_letters("DE");
        for vendors in [
            &content.vendor_consents,
            &content.vendor_legitimate_interests,
        ] {
            let max = vendors.iter().copied().max().unwrap_or(0);
            bits.push(u64::from(max), 16);
            bits.push(0, 1); // bit field, not ranges
            bits.push_set(vendors, usize::from(max));
        }
        bits.push(content.restrictions.len() as u64, 12);
        for (purpose, kind, vendors) in &content.restrictions {
            bits.push(u64::from(*purpose), 6);
            bits.push(u64::from(*kind), 2);
            bits.push(vendors.len() as u64, 12);
            for vendor in vendors {
                bits.push(0, 1); // one id, not a range
                bits.push(u64::from(*vendor), 16);
            }
        }
        bits.base64url()
    }

    /// A GPP string holding one US National (section 7) v1 section with the given
    /// opt-outs, each `true` for opted out.
    pub fn gpp_us_national(sale_opt_out: bool, targeted_advertising_opt_out: bool) -> String {
        let choice = |opted_out: bool| if opted_out { 1 } else { 2 };
        let mut bits = Bits::default();
        bits.push(1, 6); // section version
        for _ in 0..6 {
            bits.push(1, 2); // notices given
        }
        bits.push(choice(sale_opt_out), 2);
        bits.push(2, 2); // sharing: did not opt out
        bits.push(choice(targeted_advertising_opt_out), 2);
        bits.push(0, 24); // sensitive data processing: not applicable
        bits.push(0, 4); // known child sensitive data
        bits.push(0, 2); // personal data consent
        bits.push(2, 2); // MSPA covered transaction: no
        bits.push(0, 2);
        bits.push(0, 2);
        // The header "DBABLA" lists section 7 alone.
        format!("DBABLA~{}", bits.base64url())
    }

    /// Base64url of a string of '0' and '1' (whitespace ignored), padded with 0 bits.
    pub fn base64url_of_bits(bits: &str) -> String {
        let mut encoded = Bits::default();
        for bit in bits.bytes().filter(|b| !b.is_ascii_whitespace()) {
            encoded.0.push(bit == b'1');
        }
        encoded.base64url()
    }

    /// A GPP string whose only section is the TCF EU v2 section `tc_string`.
    pub fn gpp_tcf_eu(tc_string: &str) -> String {
        // The header "DBABM" lists section 2 alone.
        format!("DBABM~{tc_string}")
    }

    #[derive(Default)]
    struct Bits(Vec<bool>);

    impl Bits {
        fn push(&mut self, value: u64, width: usize) {
            self.0
                .extend((0..width).rev().map(|bit| value >> bit & 1 == 1));
        }

        fn push_letters(&mut self, letters: &str) {
            for letter in letters.bytes() {
                self.push(u64::from(letter - b'A'), 6);
            }
        }

        /// Bit i (1-based) set when i is in `ids`.
        fn push_set(&mut self, ids: &[u16], width: usize) {
            self.0
                .extend((1..=width).map(|id| ids.iter().any(|&i| usize::from(i) == id)));
        }

        fn base64url(&self) -> String {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            self.0
                .chunks(6)
                .map(|chunk| {
                    let index = chunk
                        .iter()
                        .chain(std::iter::repeat(&false))
                        .take(6)
                        .fold(0usize, |acc, &bit| acc << 1 | usize::from(bit));
                    ALPHABET[index] as char
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const VENDOR: u16 = 52;

    fn full_consent() -> TcContent {
        TcContent {
            purpose_consents: (1..=10).collect(),
            purpose_legitimate_interests: vec![2, 7],
            special_features: vec![1],
            vendor_consents: vec![VENDOR, 755],
            vendor_legitimate_interests: vec![VENDOR],
            restrictions: vec![],
        }
    }

    fn gdpr(consent: &str) -> Signals {
        Signals::read(&RequestSignals {
            gdpr: Some(1),
            consent,
            ..Default::default()
        })
    }

    fn rich_request() -> Value {
        json!({
            "id": "r",
            "device": {"ifa": "aaaa-bbbb", "ip": "81.2.69.142", "ipv6": "2001:db8:85a3:8d3:1319:8a2e:370:7348",
                       "dpidsha1": "x", "ua": "Mozilla", "ext": {"ifv": "vendor-id", "atts": 3}, "geo": {"lat": 52.520008, "lon": 13.404954, "city": "Berlin", "country": "DEU", "zip": "10117"}},
            "user": {"id": "u1", "buyeruid": "b1", "yob": 1980, "gender": "F", "keywords": "cars",
                     "data": [{"id": "d"}], "eids": [{"source": "liveramp.com", "uids": [{"id": "x"}]},
                                                     {"source": "id5-sync.com", "uids": [{"id": "y"}]}],
                     "ext": {"eids": [], "data": {"segment": 1}, "other": true}}
        })
    }

    #[test]
    fn the_test_encoder_writes_strings_the_iab_decoder_reads() {
        let tc = TcString::decode(&tc_string(&full_consent())).unwrap();
        assert!(tc.vendor_consents.contains(VENDOR));
        assert!(tc.purpose_consent(4));
        assert!(tc.special_feature(1));
        let gpp = GPPString::from_str(&gpp_us_national(true, false)).unwrap();
        assert!(matches!(
            gpp.decode_section(gpp.section_ids().next().copied().unwrap()),
            Ok(Section::UsNat(_))
        ));
    }

    #[test]
    fn without_gdpr_or_opt_outs_everything_may_be_sent() {
        let signals = Signals::read(&RequestSignals {
            gdpr: Some(0),
            ..Default::default()
        });
        assert_eq!(signals.permissions(None).permissions, Permissions::ALL);
    }

    #[test]
    fn full_tcf_consent_of_the_vendor_permits_everything() {
        let verdict = gdpr(&tc_string(&full_consent())).permissions(Some(VENDOR));
        assert_eq!(
            verdict.permissions,
            Permissions::ALL,
            "{:?}",
            verdict.reasons
        );
    }

    #[test]
    fn a_vendor_without_consent_or_interest_for_basic_ads_is_not_called() {
        let signals = gdpr(&tc_string(&full_consent()));
        let verdict = signals.permissions(Some(99));
        assert!(!verdict.permissions.call);
        assert!(
            verdict.describe().contains("purpose 2"),
            "{}",
            verdict.describe()
        );
        assert!(
            !signals.permissions(None).permissions.call,
            "no GVL id, no call under GDPR"
        );
    }

    #[test]
    fn legitimate_interest_permits_the_call_but_not_ids_or_user_data() {
        let content = TcContent {
            purpose_consents: vec![],
            purpose_legitimate_interests: vec![2],
            special_features: vec![],
            vendor_consents: vec![],
            vendor_legitimate_interests: vec![VENDOR],
            restrictions: vec![],
        };
        let verdict = gdpr(&tc_string(&content)).permissions(Some(VENDOR));
        let p = verdict.permissions;
        assert!(p.call && !p.user_ids && !p.user_data && !p.precise_geo && !p.advertising_id);
    }

    #[test]
    fn each_purpose_and_the_special_feature_gate_its_own_data() {
        let without = |change: fn(&mut TcContent)| {
            let mut content = full_consent();
            change(&mut content);
            gdpr(&tc_string(&content))
                .permissions(Some(VENDOR))
                .permissions
        };
        let p = without(|c| c.purpose_consents.retain(|&p| p != 1));
        assert!(p.call && !p.user_ids && p.user_data && p.precise_geo);
        let p = without(|c| c.purpose_consents.retain(|&p| p != 4));
        assert!(p.call && p.user_ids && !p.user_data && p.precise_geo);
        let p = without(|c| c.special_features.clear());
        assert!(p.call && p.user_ids && p.user_data && !p.precise_geo);
    }

    #[test]
    fn undecodable_or_missing_consent_under_gdpr_is_no_consent() {
        for consent in ["", "not-a-tc-string", "CPXx"] {
            let verdict = gdpr(consent).permissions(Some(VENDOR));
            assert!(!verdict.permissions.call, "{consent:?}");
            assert!(
                verdict.describe().starts_with("not called"),
                "{}",
                verdict.describe()
            );
        }
    }

    #[test]
    fn publisher_restrictions_are_enforced_per_purpose_and_vendor() {
        let with = |restrictions: Vec<(u8, u8, Vec<u16>)>, interest_only: bool| {
            let mut content = TcContent {
                restrictions,
                ..full_consent()
            };
            if interest_only {
                content.vendor_consents.clear();
            }
            gdpr(&tc_string(&content)).permissions(Some(VENDOR))
        };
        let not_allowed = with(vec![(2, 0, vec![VENDOR])], false);
        assert!(!not_allowed.permissions.call);
        assert!(
            not_allowed
                .describe()
                .contains("restricted by the publisher (not allowed)"),
            "{}",
            not_allowed.describe()
        );
        assert!(
            with(vec![(2, 0, vec![VENDOR + 1])], false).permissions.call,
            "a restriction names its vendors only"
        );
        // Consent required: legitimate interest alone no longer calls the network.
        assert!(with(vec![], true).permissions.call);
        assert!(!with(vec![(2, 1, vec![VENDOR])], true).permissions.call);
        assert!(with(vec![(2, 1, vec![VENDOR])], false).permissions.call);
        // Legitimate interest required: consent alone does not count.
        let content = TcContent {
            vendor_legitimate_interests: vec![],
            restrictions: vec![(2, 2, vec![VENDOR])],
            ..full_consent()
        };
        assert!(
            !gdpr(&tc_string(&content))
                .permissions(Some(VENDOR))
                .permissions
                .call
        );
        // Storage not allowed: called, without ids.
        let p = with(vec![(1, 0, vec![VENDOR])], false).permissions;
        assert!(p.call && !p.user_ids && p.user_data);
    }

    #[test]
    fn a_hostile_gpp_header_is_refused_unexpanded() {
        // 4,095 header ranges each spanning a wide run of section ids, as a few KB.
        let mut bits = String::from("000011000001");
        bits.push_str("111111111111");
        for _ in 0..4095 {
            // a range ("1"): start offset 1 ("11"), count 233 (Fibonacci code of 233)
            bits.push_str("1110000000000011");
        }
        let header = base64url_of_bits(&bits);
        let gpp = format!("{header}~1YYN");
        let started = std::time::Instant::now();
        let signals = Signals::read(&RequestSignals {
            gpp: &gpp,
            gpp_sid: &[6],
            ..Default::default()
        });
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        let verdict = signals.permissions(None);
        assert!(
            !verdict.permissions.user_ids,
            "undecodable US signal: opted out"
        );
        assert!(
            verdict.describe().contains("regs.gpp"),
            "{}",
            verdict.describe()
        );
        // One section id of 377: past a byte, where iab_gpp's header reader overflows
        // (found by the privacy_signals fuzz target).
        let header = base64url_of_bits("000011 000001 000000000001 0 00000000000011");
        let gpp = format!("{header}~1YNN");
        let verdict = Signals::read(&RequestSignals {
            gpp: &gpp,
            ..Default::default()
        })
        .permissions(None);
        assert!(
            verdict.describe().contains("regs.gpp cannot be decoded"),
            "{}",
            verdict.describe()
        );
        let too_long = "A".repeat(MAX_GPP_BYTES + 1);
        let verdict = Signals::read(&RequestSignals {
            gdpr: Some(1),
            gpp: &too_long,
            ..Default::default()
        })
        .permissions(Some(VENDOR));
        assert!(!verdict.permissions.call);
        assert!(
            verdict.describe().contains("limit"),
            "{}",
            verdict.describe()
        );
    }

    #[test]
    fn the_tcf_section_of_gpp_counts_when_user_consent_is_absent() {
        let gpp = gpp_tcf_eu(&tc_string(&full_consent()));
        let signals = Signals::read(&RequestSignals {
            gpp: &gpp,
            gpp_sid: &[2],
            ..Default::default()
        });
        assert_eq!(
            signals.permissions(Some(VENDOR)).permissions,
            Permissions::ALL
        );
        assert!(!signals.permissions(Some(99)).permissions.call);
    }

    #[test]
    fn us_opt_outs_withhold_personal_data_but_allow_the_call() {
        let opted_out = [
            RequestSignals {
                us_privacy: "1YYN",
                ..Default::default()
            },
            RequestSignals {
                us_privacy: "garbage",
                ..Default::default()
            },
        ];
        for signals in opted_out {
            let p = Signals::read(&signals).permissions(None).permissions;
            assert!(
                p.call && !p.user_ids && !p.user_data && !p.precise_geo,
                "{signals:?}"
            );
        }
        let not_opted_out = Signals::read(&RequestSignals {
            us_privacy: "1YNN",
            ..Default::default()
        });
        assert_eq!(
            not_opted_out.permissions(None).permissions,
            Permissions::ALL
        );

        for (sale, targeting, expect_out) in [
            (true, false, true),
            (false, true, true),
            (false, false, false),
        ] {
            let gpp = gpp_us_national(sale, targeting);
            let verdict = Signals::read(&RequestSignals {
                gpp: &gpp,
                gpp_sid: &[7],
                ..Default::default()
            })
            .permissions(None);
            assert_eq!(
                !verdict.permissions.user_ids, expect_out,
                "{gpp}: {:?}",
                verdict.reasons
            );
            assert!(verdict.permissions.call);
        }
        let broken = Signals::read(&RequestSignals {
            gpp: "DBABLA~",
            gpp_sid: &[7],
            ..Default::default()
        });
        assert!(!broken.permissions(None).permissions.user_ids);
    }

    #[test]
    fn coppa_and_limit_ad_tracking() {
        let coppa = Signals::read(&RequestSignals {
            coppa: Some(1),
            ..Default::default()
        })
        .permissions(None);
        assert!(
            coppa.permissions.call
                && coppa.permissions.child_directed
                && !coppa.permissions.user_ids
        );
        let lmt = Signals::read(&RequestSignals {
            lmt: Some(1),
            ..Default::default()
        })
        .permissions(None);
        assert_eq!(
            lmt.permissions,
            Permissions {
                advertising_id: false,
                ..Permissions::ALL
            }
        );
        let dnt = Signals::read(&RequestSignals {
            dnt: Some(1),
            lmt: Some(0),
            ..Default::default()
        });
        assert!(!dnt.permissions(None).permissions.advertising_id);
    }

    #[test]
    fn withholding_removes_exactly_what_is_denied() {
        let mut document = rich_request();
        let stripped = withhold(
            &mut document,
            &Permissions {
                advertising_id: false,
                ..Permissions::ALL
            },
        );
        assert_eq!(stripped, ["device ids"]);
        assert!(
            document["device"].get("ifa").is_none() && document["device"].get("dpidsha1").is_none()
        );
        assert_eq!(
            document["device"]["ext"],
            json!({"atts": 3}),
            "ids in ext go too"
        );
        assert_eq!(document["user"]["id"], "u1");

        let mut document = rich_request();
        let none = Permissions {
            user_ids: false,
            user_data: false,
            precise_geo: false,
            advertising_id: false,
            ..Permissions::ALL
        };
        let withheld = withhold(&mut document, &none);
        assert_eq!(
            withheld,
            ["device ids", "user ids", "user data", "precise geo"]
        );
        assert_eq!(
            document["user"],
            json!({}),
            "nothing outside the allow list is left"
        );
        assert_eq!(
            document["device"]["geo"],
            json!({"lat": 52.52, "lon": 13.4, "city": "Berlin", "country": "DEU", "zip": "10117"})
        );
        assert_eq!(document["device"]["ip"], "81.2.69.0");
        assert_eq!(document["device"]["ipv6"], "2001:db8:85a3:800::");
        assert_eq!(document["device"]["ua"], "Mozilla");

        let mut document = rich_request();
        withhold(
            &mut document,
            &Permissions {
                child_directed: true,
                ..none
            },
        );
        assert_eq!(document["device"]["geo"], json!({"country": "DEU"}));
    }

    #[test]
    fn eids_are_filtered_per_source() {
        let mut document = rich_request();
        assert!(filter_eids(&mut document, |source| source == "id5-sync.com"));
        assert_eq!(
            document["user"]["eids"],
            json!([{"source": "id5-sync.com", "uids": [{"id": "y"}]}])
        );
        assert!(filter_eids(&mut document, |_| false));
        assert!(document["user"].get("eids").is_none());
    }

    proptest! {
        /// Whatever the signals, a network that is not called is denied everything, a
        /// denial is always explained, and withholding never leaves a denied field in.
        #[test]
        fn denials_are_explained_and_enforced(
            gdpr in proptest::option::of(0..2i32),
            purposes in proptest::collection::vec(1..11u16, 0..10),
            vendors in proptest::collection::vec(1..100u16, 0..5),
            special in proptest::bool::ANY,
            vendor in proptest::option::of(1..100u16),
            us_out in proptest::bool::ANY,
            coppa in proptest::option::of(0..2i32),
            lmt in proptest::option::of(0..2i32),
            restrictions in proptest::collection::vec((1..5u8, 0..4u8, proptest::collection::vec(1..100u16, 0..3)), 0..3),
            added in proptest::collection::vec("[a-z]{1,8}", 0..4),
        ) {
            let consent = tc_string(&TcContent {
                purpose_consents: purposes.clone(),
                purpose_legitimate_interests: purposes,
                special_features: if special { vec![1] } else { vec![] },
                vendor_consents: vendors.clone(),
                vendor_legitimate_interests: vendors,
                restrictions: restrictions.clone(),
            });
            let signals = Signals::read(&RequestSignals {
                gdpr, consent: &consent, us_privacy: if us_out { "1YYN" } else { "1YNN" },
                coppa, lmt, ..Default::default()
            });
            let verdict = signals.permissions(vendor);
            let p = verdict.permissions;
            if !p.call {
                prop_assert!(!p.user_ids && !p.user_data && !p.precise_geo && !p.advertising_id);
            }
            prop_assert_eq!(verdict.reasons.is_empty(), p == Permissions::ALL);
            // A restriction that forbids basic ads (purpose 2) to the vendor, or is of the
            // undefined type, leaves it uncalled under GDPR.
            let forbidden = restrictions.iter().any(|(purpose, kind, named)| {
                *purpose == 2 && (*kind == 0 || *kind == 3) && vendor.is_some_and(|v| named.contains(&v))
            });
            if gdpr == Some(1) && forbidden {
                prop_assert!(!p.call);
            }
            // Whatever members a gateway adds, in the objects or their ext, none outside
            // the allow lists survives a restriction.
            let mut document = rich_request();
            for name in &added {
                for path in ["/user", "/user/ext", "/device", "/device/ext"] {
                    if let Some(object) = document.pointer_mut(path).and_then(Value::as_object_mut) {
                        object.insert(format!("x{name}"), json!("an id"));
                    }
                }
            }
            withhold(&mut document, &p);
            let keys = |path: &str| -> Vec<String> {
                document.pointer(path).and_then(Value::as_object).map(|o| o.keys().cloned().collect()).unwrap_or_default()
            };
            if !p.user_ids && !p.user_data {
                prop_assert!(keys("/user").iter().all(|k| USER_ALLOWED.contains(&k.as_str())), "{:?}", keys("/user"));
                prop_assert!(keys("/user/ext").iter().all(|k| USER_EXT_ALLOWED.contains(&k.as_str())));
            }
            if !p.user_ids || !p.advertising_id {
                prop_assert!(keys("/device").iter().all(|k| DEVICE_ALLOWED.contains(&k.as_str())), "{:?}", keys("/device"));
                prop_assert!(keys("/device/ext").iter().all(|k| DEVICE_EXT_ALLOWED.contains(&k.as_str())));
            }
            if !p.user_ids {
                prop_assert!(document["user"].get("id").is_none() && document["user"].get("eids").is_none());
                prop_assert!(document["device"].get("ifa").is_none());
            }
            if !p.user_data {
                prop_assert!(document["user"].get("data").is_none() && document["user"].get("yob").is_none());
            }
            if !p.precise_geo {
                prop_assert_eq!(&document["device"]["ip"], "81.2.69.0");
            }
        }
    }
}
