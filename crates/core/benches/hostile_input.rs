//! What hostile and ordinary input costs the two readers changed for it, each against
//! its baseline measured in the same run:
//!
//! - ad-quality checks of an impression's bids by hash lookups (`BlockIndex`, its build
//!   included) against the scans, on a realistic impression (a publisher blocklist of 200
//!   domains, 30 bids) and on the worst the request limits allow (1,000 blocked domains,
//!   1,000 bids of 100 domains);
//! - TC strings read by `cascade_core::tcf` against `iab_gpp`, on realistic strings
//!   (bit fields over the Global Vendor List's ~1,400 ids, each string different) and on
//!   range-encoded strings of wide entries (each string different too).
//!
//! `cargo bench -p cascade-core --bench hostile_input`
//!
//! Every figure is the mean over inputs generated with a fixed seed, each used once per
//! round (no single input repeated in a warm cache).

use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cascade_core::ad_quality::{AdQuality, BlockIndex, Creative, Taxonomy};
use cascade_core::tcf::TcString;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x00ca_5cad;

struct Bid {
    adomains: Vec<String>,
    categories: Vec<String>,
    seat: String,
    attributes: Vec<i32>,
}

struct Impression {
    blocked_adomains: Vec<String>,
    blocked_categories: Vec<String>,
    blocked_seats: Vec<String>,
    blocked_attributes: Vec<i32>,
    bids: Vec<Bid>,
}

fn domain(rng: &mut StdRng) -> String {
    let tld = ["com", "net", "de", "co.uk", "io"].choose(rng).unwrap();
    format!("advertiser{}.{tld}", rng.random_range(0..50_000))
}

fn impression(rng: &mut StdRng, blocked: usize, bids: usize, domains_per_bid: usize) -> Impression {
    Impression {
        blocked_adomains: (0..blocked).map(|_| domain(rng)).collect(),
        blocked_categories: (0..30)
            .map(|_| format!("IAB{}-{}", rng.random_range(1..27), rng.random_range(1..20)))
            .collect(),
        blocked_seats: (0..3).map(|i| format!("seat-{i}")).collect(),
        blocked_attributes: vec![1, 3, 6, 8, 9],
        bids: (0..bids)
            .map(|_| Bid {
                adomains: (0..domains_per_bid)
                    .map(|_| format!("www.{}", domain(rng)))
                    .collect(),
                categories: (0..rng.random_range(1..4))
                    .map(|_| format!("IAB{}-{}", rng.random_range(1..27), rng.random_range(1..20)))
                    .collect(),
                seat: format!("seat-{}", rng.random_range(3..40)),
                attributes: vec![rng.random_range(10..17)],
            })
            .collect(),
    }
}

/// Checks every bid of every impression; returns the mean time per impression and how
/// many bids were refused (the same for both ways, or the comparison is void).
fn check_all(impressions: &[Impression], indexed: bool) -> (Duration, usize) {
    let started = Instant::now();
    let mut refused = 0;
    for imp in impressions {
        let mut quality = AdQuality {
            blocked_adomains: &imp.blocked_adomains,
            blocked_categories: &imp.blocked_categories,
            blocked_seats: &imp.blocked_seats,
            blocked_attributes: &imp.blocked_attributes,
            taxonomy: Taxonomy::Content1,
            ..Default::default()
        };
        let index = indexed.then(|| BlockIndex::new(&quality));
        quality.index = index.as_ref();
        for bid in &imp.bids {
            let creative = Creative {
                adomains: &bid.adomains,
                categories: &bid.categories,
                seat: &bid.seat,
                attributes: &bid.attributes,
                dsa_declared: false,
            };
            refused += usize::from(black_box(quality.check(&creative)).is_some());
        }
    }
    (started.elapsed() / impressions.len() as u32, refused)
}

fn ad_quality(name: &str, impressions: &[Impression]) {
    // One round each first, so that neither pays for the first touch of the inputs.
    let _ = (check_all(impressions, false), check_all(impressions, true));
    let (scan, refused_scan) = check_all(impressions, false);
    let (index, refused_index) = check_all(impressions, true);
    assert_eq!(refused_scan, refused_index, "the two ways disagree");
    println!(
        "ad quality, {name}: scans {scan:?}, lookups {index:?} per impression; lookups/scans = {:.3} ({refused_scan} bids refused)",
        index.as_secs_f64() / scan.as_secs_f64()
    );
}

/// A TC string (core segment) from a bit string.
fn base64url(bits: &str) -> String {
    cascade_core::privacy::testing::base64url_of_bits(bits)
}

fn core_bits(vendor_section: &str) -> String {
    let mut bits = String::from("000010");
    bits.push_str(&"0".repeat(36 + 36));
    bits.push_str(&format!("{:012b}{:012b}", 7, 1)); // CMP id and version
    bits.push_str(&"0".repeat(6 + 12));
    bits.push_str(&format!("{:012b}", 300)); // vendor list version
    bits.push_str("000100"); // policy version 4
    bits.push_str("10");
    bits.push_str("100000000000"); // special feature 1
    bits.push_str(&"1".repeat(10));
    bits.push_str(&"0".repeat(14));
    bits.push_str("010000100000000000000000"); // legitimate interests: purposes 2 and 7
    bits.push_str(&"0".repeat(1 + 12)); // purpose one treatment, publisher CC
    bits.push_str(vendor_section);
    bits.push_str(&format!("{:016b}0", 0));
    bits.push_str(&"0".repeat(12));
    bits
}

/// A consent bit field over the vendor list, as most CMPs write it.
fn realistic_tc(rng: &mut StdRng) -> String {
    let max = 1_400u16;
    let mut section = format!("{max:016b}0");
    section.extend((0..max).map(|_| if rng.random_bool(0.6) { '1' } else { '0' }));
    base64url(&core_bits(&section))
}

/// `entries` wide range entries (each starting within the first 100 ids and ending within
/// the last 100, drawn anew for every string): what a hostile string is made of.
fn ranged_tc(rng: &mut StdRng, entries: usize) -> String {
    let mut section = format!("{:016b}1{entries:012b}", u16::MAX);
    for _ in 0..entries {
        let start: u16 = rng.random_range(1..100);
        let end: u16 = rng.random_range(u16::MAX - 100..=u16::MAX);
        section.push_str(&format!("1{start:016b}{end:016b}"));
    }
    base64url(&core_bits(&section))
}

fn time_decode(strings: &[String], decode: impl Fn(&str) -> bool) -> Duration {
    let started = Instant::now();
    for text in strings {
        assert!(black_box(decode(text)), "does not decode");
    }
    started.elapsed() / strings.len() as u32
}

fn tc_strings(rng: &mut StdRng) {
    let ours = |text: &str| TcString::decode(text).is_ok();
    let theirs = |text: &str| iab_gpp::sections::tcfeuv2::TcfEuV2::from_str(text).is_ok();
    let realistic: Vec<String> = (0..2_000).map(|_| realistic_tc(rng)).collect();
    let _ = (
        time_decode(&realistic, ours),
        time_decode(&realistic, theirs),
    );
    let (mine, baseline) = (
        time_decode(&realistic, ours),
        time_decode(&realistic, theirs),
    );
    println!(
        "TC string, realistic ({} bytes): cascade-core {mine:?}, iab_gpp {baseline:?} per string; cascade-core/iab_gpp = {:.3}",
        realistic[0].len(),
        mine.as_secs_f64() / baseline.as_secs_f64()
    );
    // 100 wide ranges (a 600-byte string): iab_gpp expands them into 6.5 million ids.
    let ranged: Vec<String> = (0..5).map(|_| ranged_tc(rng, 100)).collect();
    let (mine, baseline) = (time_decode(&ranged, ours), time_decode(&ranged, theirs));
    println!(
        "TC string, 100 wide ranges ({} bytes): cascade-core {mine:?}, iab_gpp {baseline:?} per string; cascade-core/iab_gpp = {:.6}",
        ranged[0].len(),
        mine.as_secs_f64() / baseline.as_secs_f64()
    );
    // The longest string under the limit, ours only (iab_gpp would build 95 million ids).
    let longest: Vec<String> = (0..50).map(|_| ranged_tc(rng, 1_450)).collect();
    let mine = time_decode(&longest, ours);
    println!(
        "TC string, 1,450 wide ranges ({} bytes, the most under the 8 KiB limit): cascade-core {mine:?}",
        longest[0].len()
    );
}

fn main() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let realistic: Vec<Impression> = (0..2_000)
        .map(|_| impression(&mut rng, 200, 30, 2))
        .collect();
    ad_quality(
        "realistic (200 blocked domains, 30 bids of 2 domains)",
        &realistic,
    );
    let worst: Vec<Impression> = (0..3)
        .map(|_| impression(&mut rng, 1_000, 1_000, 100))
        .collect();
    ad_quality(
        "worst the limits allow (1,000 blocked domains, 1,000 bids of 100)",
        &worst,
    );
    tc_strings(&mut rng);
}
