//! The realistic workload of `cascade load` and `cascade bench`: bid requests shaped as a
//! header-bidding SSP receives them — 3 to 8 KB of OpenRTB JSON, one to four impressions
//! (banners with several formats, a video one in five), a supply chain of two to four
//! nodes, five to eight extended ids, a TCF consent string, GPP, a long user agent, and
//! `ext` objects on the request, the impressions and the site — with one to three
//! exchange bids per impression carrying markup of 0.2–0.5 KB.
//!
//! Everything is drawn from the call's number with a fixed mixing function, so that two
//! runs send the same requests and a pool of them differ from one another.

use serde_json::{Value, json};

/// The extended-id sources a request draws from (`user.eids[].source`).
const EID_SOURCES: [&str; 10] = [
    "liveramp.com",
    "id5-sync.com",
    "uidapi.com",
    "criteo.com",
    "pubcid.org",
    "adserver.org",
    "liveintent.com",
    "33across.com",
    "yahoo.com",
    "intentiq.com",
];

/// The supply chain's nodes, in order (`source.schain.nodes[].asi`).
const CHAIN_SELLERS: [&str; 4] = [
    "cascade-ssp.example",
    "reseller-one.example",
    "exchange-two.example",
    "network-three.example",
];

const ADVERTISERS: [&str; 3] = ["shoes.example", "cars.example", "travel.example"];

const USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86";

/// A 64-bit mix of `n` and `salt` (splitmix64's finalizer): the workload's randomness.
fn mix(n: u64, salt: u64) -> u64 {
    let mut z = n
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(salt.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A number in `low..=high` drawn for (`n`, `salt`).
fn between(n: u64, salt: u64, low: u64, high: u64) -> u64 {
    low + mix(n, salt) % (high - low + 1)
}

/// `len` characters of base64url drawn for (`n`, `salt`): ids, consent strings.
fn token(n: u64, salt: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..len)
        .map(|i| ALPHABET[(mix(n, salt.wrapping_add(i as u64 * 7919)) % 64) as usize] as char)
        .collect()
}

fn impression(n: u64, i: u64, tagid: &str) -> Value {
    // The first impression is on the benchmark's ad unit (the mediated chain); the others
    // on the publisher's generated placements, so that targeting has rules to match.
    let tagid = match i {
        0 => tagid.to_string(),
        _ => format!("unit-{}", between(n, 10 + i, 0, 999)),
    };
    let floor = between(n, 20 + i, 10, 100) as f64 / 100.0;
    let gpid = format!("/21799830/{}/{}", token(n, 30 + i, 8), tagid);
    let mut imp = json!({
        "id": (i + 1).to_string(),
        "tagid": tagid,
        "bidfloor": floor,
        "bidfloorcur": "USD",
        "secure": 1,
        "instl": 0,
        "metric": [{"type": "viewability", "value": between(n, 40 + i, 30, 95) as f64 / 100.0, "vendor": "ias"}],
        "ext": {
            "gpid": gpid,
            "data": {"pbadslot": gpid, "adserver": {"name": "gam", "adslot": gpid}},
            "prebid": {"storedrequest": {"id": token(n, 50 + i, 12)}},
        },
    });
    if mix(n, 60 + i).is_multiple_of(5) {
        imp["video"] = json!({
            "mimes": ["video/mp4", "video/webm", "application/javascript"],
            "minduration": 5, "maxduration": 30, "protocols": [2, 3, 5, 6, 7, 8],
            "w": 640, "h": 360, "startdelay": 0, "plcmt": 1, "linearity": 1,
            "skip": 1, "playbackmethod": [2], "api": [1, 2, 7],
        });
    } else {
        imp["banner"] = json!({
            "w": 300, "h": 250,
            "format": [{"w": 300, "h": 250}, {"w": 320, "h": 50}, {"w": 728, "h": 90}, {"w": 300, "h": 600}],
            "pos": 1, "api": [3, 5, 6, 7],
        });
    }
    imp
}

fn supply_chain(n: u64) -> Value {
    let nodes: Vec<Value> = (0..between(n, 70, 2, 4))
        .map(|k| {
            json!({
                "asi": CHAIN_SELLERS[k as usize],
                "sid": token(n, 80 + k, 10),
                "rid": token(n, 90 + k, 24),
                "hp": 1,
            })
        })
        .collect();
    json!({"complete": 1, "ver": "1.0", "nodes": nodes})
}

fn extended_ids(n: u64) -> Vec<Value> {
    let count = between(n, 100, 5, 8) as usize;
    let first = between(n, 101, 0, EID_SOURCES.len() as u64 - 1) as usize;
    (0..count)
        .map(|k| {
            let source = EID_SOURCES[(first + k) % EID_SOURCES.len()];
            let uids: Vec<Value> = (0..between(n, 110 + k as u64, 1, 2))
                .map(|u| {
                    json!({
                        "id": token(n, 120 + k as u64 * 3 + u, between(n, 130 + k as u64, 40, 96) as usize),
                        "atype": 1 + u % 3,
                        "ext": {"provider": source},
                    })
                })
                .collect();
            json!({"source": source, "uids": uids})
        })
        .collect()
}

fn exchange_bids(n: u64, imps: u64) -> Vec<Value> {
    let bids: Vec<Value> = (0..imps)
        .flat_map(|i| {
            (0..between(n, 140 + i, 1, 3)).map(move |b| {
                let markup_len = between(n, 150 + i * 3 + b, 100, 400) as usize;
                json!({
                    "id": format!("b{i}-{b}"),
                    "impid": (i + 1).to_string(),
                    "price": between(n, 160 + i * 3 + b, 20, 400) as f64 / 100.0,
                    "adomain": [ADVERTISERS[b as usize]],
                    "crid": token(n, 170 + i * 3 + b, 12),
                    "cid": token(n, 180 + i * 3 + b, 8),
                    "cat": ["IAB18"],
                    "w": 300, "h": 250,
                    "adm": format!("<div class=\"ad\"><script src=\"https://cdn.dsp.example/ad.js?c={}\"></script></div>", token(n, 190 + i * 3 + b, markup_len)),
                })
            })
        })
        .collect();
    vec![json!({"cur": "USD", "seatbid": [{"seat": "dsp-1", "bid": bids}]})]
}

/// The bid request of call number `n` on ad unit `tagid` of `publisher`, and its exchange
/// bids.
pub fn realistic(n: u64, tagid: &str, publisher: &str) -> (Value, Vec<Value>) {
    let imps = between(n, 1, 1, 4);
    let european = mix(n, 2).is_multiple_of(2);
    let page = format!(
        "https://www.foobar.com/{}/{}.html?utm_source={}",
        token(n, 3, 10),
        token(n, 4, 28),
        token(n, 5, 6)
    );
    let request = json!({
        "id": format!("load-{n}-{}", token(n, 6, 12)),
        "imp": (0..imps).map(|i| impression(n, i, tagid)).collect::<Vec<_>>(),
        "tmax": 300,
        "cur": ["USD"],
        "at": 1,
        "site": {
            "id": token(n, 7, 8),
            "domain": "www.foobar.com",
            "page": page,
            "ref": "https://www.search.example/",
            "cat": ["IAB1", "IAB12"],
            "keywords": "news,sports,weather",
            "publisher": {"id": publisher, "domain": "foobar.com"},
            "content": {"language": "en", "cat": ["IAB12-3"]},
            "ext": {"amp": 0, "data": {"section": "sports"}},
        },
        "device": {
            "ua": USER_AGENT,
            "ip": format!("203.0.{}.{}", n % 200, n % 250),
            "devicetype": 2,
            "make": "Microsoft",
            "os": "Windows",
            "osv": "10",
            "language": "en",
            "js": 1,
            "dnt": 0,
            "w": 1920, "h": 1080,
            "geo": {"country": if european { "DEU" } else { "USA" }, "region": "BE", "lat": 52.5, "lon": 13.4, "type": 2},
            "sua": {"browsers": [{"brand": "Chromium", "version": ["131"]}, {"brand": "Microsoft Edge", "version": ["131"]}], "platform": {"brand": "Windows", "version": ["10"]}, "mobile": 0, "source": 2},
        },
        "user": {
            "id": token(n, 8, 32),
            "buyeruid": token(n, 9, 24),
            "consent": if european { token(n, 11, between(n, 12, 200, 600) as usize) } else { String::new() },
            "eids": extended_ids(n),
        },
        "source": {"tid": token(n, 13, 36), "schain": supply_chain(n)},
        "regs": {
            "gdpr": i32::from(european),
            "us_privacy": if european { "" } else { "1YNN" },
            "gpp": token(n, 14, between(n, 15, 40, 160) as usize),
            "gpp_sid": [if european { 2 } else { 7 }],
        },
        "ext": {
            "prebid": {
                "channel": {"name": "pbjs", "version": "9.21.0"},
                "targeting": {"includewinners": true, "includebidderkeys": false},
                "cache": {"bids": {}},
            },
        },
    });
    (request, exchange_bids(n, imps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_3_to_8_kb_of_openrtb_and_differ() {
        let mut sizes = Vec::new();
        for n in 0..500 {
            let (request, bids) = realistic(n, "bench-unit", "8953");
            let size = serde_json::to_vec(&request).unwrap().len();
            assert!((3_000..=8_192).contains(&size), "request {n}: {size} bytes");
            assert!(!bids.is_empty());
            let parsed: cascade_proto::openrtb::v1::BidRequest =
                serde_json::from_value(request).unwrap();
            assert!(!parsed.imp.is_empty());
            sizes.push(size);
        }
        sizes.sort_unstable();
        assert!(sizes[0] < sizes[sizes.len() - 1] - 1_000, "{sizes:?}");
    }
}
