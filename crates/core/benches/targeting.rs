//! Targeting evaluation per impression: the index against the linear reference scan, on
//! realistic rule sets of 1k, 10k and 100k selling rules plus mediated bids.
//!
//! `cargo bench -p cascade-core --bench targeting`
//!
//! The sets are generated with a fixed seed, shaped like a large publisher's: most rules
//! and bids are tied to placements (ad units, one per five entities, or ad-unit groups of
//! ten units, one per fifty entities), while a fixed 200 are run-of-site (no placement
//! targeting) whatever the size. On top, each entity draws a random mix of 60 countries
//! with regions, device types, OSes, 300 domains, 2,000 user segments (any/all/none of),
//! deals, key-values, sizes, media types and day-parts, with includes and excludes.
//! After criterion's own runs, a summary measured in the same process prints, for
//! impressions evaluated in sequence as traffic arrives, p50, p99 and mean per impression
//! for both engines and the ratios the targets are about; the warm figure (one
//! impression 50 times in a row) is printed beside it, labelled.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cascade_core::config::{
    Account, AdUnitGroup, Configuration, MediatedBid, Network, SellingRule,
};
use cascade_core::money::Micros;
use cascade_core::snapshot::{Engine, Snapshot};
use cascade_core::targeting::{
    DayHour, DayPart, Filter, ImpressionKeys, MediaType, SegmentFilter, Size, Targeting, Weekday,
};
use criterion::{BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const SIZES: [(usize, &str); 3] = [(1_000, "1k"), (10_000, "10k"), (100_000, "100k")];
const PUBLISHER: &str = "publisher";
const SEED: u64 = 0x00ca_5cad;

/// The universes targeting values are drawn from.
struct Universe {
    ad_units: Vec<String>,
    groups: Vec<String>,
    countries: Vec<String>,
    regions: Vec<String>,
    oses: Vec<String>,
    domains: Vec<String>,
    segments: Vec<String>,
    deals: Vec<String>,
    sections: Vec<String>,
}

impl Universe {
    fn new(entities: usize) -> Self {
        let names =
            |prefix: &str, count: usize| (0..count).map(|i| format!("{prefix}{i}")).collect();
        let letters = |i: usize| {
            let l = |n: usize| (b'A' + (n % 26) as u8) as char;
            format!("{}{}{}", l(i / 676), l(i / 26), l(i))
        };
        Universe {
            ad_units: names("unit-", (entities / 5).max(10)),
            groups: names("group-", (entities / 50).max(5)),
            countries: (0..60).map(|i| letters(i * 7 + 3)).collect(),
            regions: names("R", 40),
            oses: ["ios", "android", "windows", "macos", "linux"]
                .map(String::from)
                .to_vec(),
            domains: names("site", 300)
                .iter()
                .map(|s: &String| format!("{s}.example"))
                .collect(),
            segments: names("seg-", 2_000),
            deals: names("deal-", 200),
            sections: names("section-", 20),
        }
    }
}

fn some<T: Clone>(rng: &mut StdRng, values: &[T], max: usize) -> Vec<T> {
    let count = rng.random_range(1..=max);
    (0..count)
        .map(|_| {
            values
                .choose(rng)
                .cloned()
                .unwrap_or_else(|| values[0].clone())
        })
        .collect()
}

fn maybe_filter<T: Clone>(
    rng: &mut StdRng,
    values: &[T],
    p_include: f64,
    p_exclude: f64,
    max: usize,
) -> Filter<T> {
    let mut filter = Filter::default();
    if rng.random_bool(p_include) {
        filter.include = some(rng, values, max);
    } else if rng.random_bool(p_exclude) {
        filter.exclude = some(rng, values, max);
    }
    filter
}

/// Run-of-site entities (no ad-unit or group targeting), whatever the size.
const RUN_OF_SITE: usize = 200;

fn targeting(rng: &mut StdRng, universe: &Universe, run_of_site: bool) -> Targeting {
    let sizes = [
        (300, 250),
        (320, 50),
        (728, 90),
        (160, 600),
        (300, 600),
        (970, 250),
        (320, 480),
        (640, 480),
    ]
    .map(|(w, h)| Size { w, h });
    let media = [MediaType::Banner, MediaType::Video, MediaType::Native];
    let by_group = !run_of_site && rng.random_bool(0.15);
    Targeting {
        ad_units: if !run_of_site && !by_group {
            Filter::include(some(rng, &universe.ad_units, 4))
        } else {
            Filter::default()
        },
        ad_unit_groups: if by_group {
            Filter::include(some(rng, &universe.groups, 2))
        } else {
            Filter::default()
        },
        media_types: maybe_filter(rng, &media, 0.3, 0.05, 2),
        sizes: maybe_filter(rng, &sizes, 0.3, 0.05, 3),
        interstitial: rng.random_bool(0.05).then_some(false),
        countries: maybe_filter(rng, &universe.countries, 0.5, 0.1, 3),
        regions: maybe_filter(rng, &universe.regions, 0.05, 0.05, 2),
        metros: Filter::default(),
        device_types: maybe_filter(rng, &[1u32, 2, 3, 4, 5, 6, 7], 0.4, 0.05, 3),
        os: maybe_filter(rng, &universe.oses, 0.2, 0.05, 2),
        domains: maybe_filter(rng, &universe.domains, 0.2, 0.1, 3),
        bundles: Filter::default(),
        segments: SegmentFilter {
            any_of: if rng.random_bool(0.3) {
                some(rng, &universe.segments, 5)
            } else {
                vec![]
            },
            all_of: if rng.random_bool(0.05) {
                some(rng, &universe.segments, 2)
            } else {
                vec![]
            },
            none_of: if rng.random_bool(0.1) {
                some(rng, &universe.segments, 3)
            } else {
                vec![]
            },
        },
        day_part: if rng.random_bool(0.1) {
            DayPart {
                days: some(rng, &Weekday::ALL, 5),
                hours: (rng.random_range(0..12)..rng.random_range(12..24)).collect(),
            }
        } else {
            DayPart::default()
        },
        deals: maybe_filter(rng, &universe.deals, 0.05, 0.0, 2),
        key_values: if rng.random_bool(0.1) {
            [(
                "section".to_string(),
                Filter::include(some(rng, &universe.sections, 3)),
            )]
            .into()
        } else {
            Default::default()
        },
    }
}

fn configuration(entities: usize, universe: &Universe, rng: &mut StdRng) -> Configuration {
    let account = |id: &str, parent: Option<&str>| Account {
        id: id.into(),
        parent_id: parent.map(String::from),
        ..Default::default()
    };
    let floor = |rng: &mut StdRng| Micros(rng.random_range(10..500) * 10_000);
    Configuration {
        accounts: vec![
            account("network", None),
            account(PUBLISHER, Some("network")),
        ],
        networks: vec![Network {
            id: "net".into(),
            account_id: "network".into(),
            endpoint: "http://127.0.0.1:1/".into(),
            timeout_ms: 100,
            ..Default::default()
        }],
        selling_rules: (0..entities / 2)
            .map(|i| SellingRule {
                id: format!("rule-{i}"),
                account_id: PUBLISHER.into(),
                enabled: true,
                floor: floor(rng),
                targeting: targeting(rng, universe, i < RUN_OF_SITE / 2),
                ..Default::default()
            })
            .collect(),
        mediated_bids: (0..entities / 2)
            .map(|i| MediatedBid {
                id: format!("bid-{i}"),
                account_id: PUBLISHER.into(),
                network_id: "net".into(),
                cpm: floor(rng),
                active: true,
                targeting: targeting(rng, universe, i < RUN_OF_SITE / 2),
                ..Default::default()
            })
            .collect(),
        ad_unit_groups: universe
            .groups
            .iter()
            .map(|group| AdUnitGroup {
                id: group.clone(),
                account_id: PUBLISHER.into(),
                name: String::new(),
                ad_units: some(rng, &universe.ad_units, 10),
            })
            .collect(),
        ..Default::default()
    }
}

fn impressions(universe: &Universe, snapshot: &Snapshot, rng: &mut StdRng) -> Vec<ImpressionKeys> {
    (0..512)
        .map(|_| {
            let mut keys = ImpressionKeys {
                tagid: universe.ad_units.choose(rng).cloned().unwrap_or_default(),
                media_types: vec![MediaType::Banner],
                sizes: vec![Size { w: 300, h: 250 }, Size { w: 320, h: 50 }],
                country: universe.countries.choose(rng).cloned().unwrap_or_default(),
                region: universe.regions.choose(rng).cloned().unwrap_or_default(),
                devicetype: rng.random_range(1..=7),
                os: universe.oses.choose(rng).cloned().unwrap_or_default(),
                domain: format!(
                    "www.{}",
                    universe.domains.choose(rng).cloned().unwrap_or_default()
                ),
                segments: some(rng, &universe.segments, 8),
                key_values: vec![(
                    "section".into(),
                    universe.sections.choose(rng).cloned().unwrap_or_default(),
                )],
                day_hour: DayHour {
                    day: Weekday::Wed,
                    hour: 14,
                },
                ..Default::default()
            };
            // Groups come from the configuration; the hour is fixed above.
            let day_hour = keys.day_hour;
            snapshot.complete_keys(PUBLISHER, &mut keys, 0);
            keys.day_hour = day_hour;
            keys
        })
        .collect()
}

struct Case {
    label: &'static str,
    snapshot: Snapshot,
    impressions: Vec<ImpressionKeys>,
}

fn cases() -> Vec<Case> {
    SIZES
        .iter()
        .map(|(entities, label)| {
            let mut rng = StdRng::seed_from_u64(SEED);
            let universe = Universe::new(*entities);
            let snapshot = Snapshot::build(configuration(*entities, &universe, &mut rng))
                .expect("valid configuration");
            let impressions = impressions(&universe, &snapshot, &mut rng);
            Case {
                label,
                snapshot,
                impressions,
            }
        })
        .collect()
}

fn evaluate(case: &Case, engine: Engine, i: usize) -> usize {
    let keys = &case.impressions[i % case.impressions.len()];
    let evaluation = case
        .snapshot
        .evaluate_with(engine, PUBLISHER, keys, Micros::ZERO, false);
    evaluation.matched_rule_ids.len() + evaluation.mediated_bids.len()
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Index => "index",
        Engine::Linear => "linear",
    }
}

fn bench(criterion: &mut Criterion, cases: &[Case]) {
    let mut group = criterion.benchmark_group("targeting");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for case in cases {
        for engine in [Engine::Index, Engine::Linear] {
            let mut i = 0;
            group.bench_function(BenchmarkId::new(engine_name(engine), case.label), |b| {
                b.iter(|| {
                    i += 1;
                    black_box(evaluate(case, engine, i))
                })
            });
        }
    }
    group.finish();
}

/// p50 and p99 of one evaluation with impressions in sequence, as traffic arrives: each
/// evaluated once, then the next (the caches hold what the previous one left), over a
/// few passes; and the mean of all of them. The headline figures.
fn in_sequence(case: &Case, engine: Engine) -> (f64, f64, f64) {
    let passes = match engine {
        Engine::Index => 5,
        Engine::Linear => 1,
    };
    let mut nanos = Vec::with_capacity(passes * case.impressions.len());
    for _ in 0..passes {
        for i in 0..case.impressions.len() {
            let started = Instant::now();
            black_box(evaluate(case, engine, i));
            nanos.push(started.elapsed().as_nanos() as f64);
        }
    }
    let mean = nanos.iter().sum::<f64>() / nanos.len() as f64;
    nanos.sort_by(f64::total_cmp);
    (nanos[nanos.len() / 2], nanos[nanos.len() * 99 / 100], mean)
}

/// p50 of one evaluation with each impression run 50 times in a row (warm caches, the
/// clock's resolution averaged out): printed beside the headline, labelled, never as it.
fn warm_p50(case: &Case) -> f64 {
    const RUNS: u32 = 50;
    let mut nanos: Vec<f64> = (0..case.impressions.len())
        .map(|i| {
            let started = Instant::now();
            for _ in 0..RUNS {
                black_box(evaluate(case, Engine::Index, i));
            }
            started.elapsed().as_nanos() as f64 / f64::from(RUNS)
        })
        .collect();
    nanos.sort_by(f64::total_cmp);
    nanos[nanos.len() / 2]
}

fn summary(cases: &[Case]) {
    println!(
        "\nTargeting evaluation per impression (rules + mediated bids), impressions in sequence, same run:"
    );
    println!(
        "{:>6} {:>11} {:>11} {:>11} {:>11} {:>11} {:>13} {:>15} {:>8}",
        "size",
        "index p50",
        "index p99",
        "index mean",
        "linear p50",
        "linear p99",
        "linear/index",
        "warm index p50",
        "matches"
    );
    let mut index_p50 = Vec::new();
    for case in cases {
        let (ip50, ip99, imean) = in_sequence(case, Engine::Index);
        let (lp50, lp99, _) = in_sequence(case, Engine::Linear);
        let warm = warm_p50(case);
        let matches: usize = (0..case.impressions.len())
            .map(|i| evaluate(case, Engine::Index, i))
            .sum();
        println!(
            "{:>6} {:>9.2}us {:>9.2}us {:>9.2}us {:>9.2}us {:>9.2}us {:>12.0}x {:>13.2}us {:>8.1}",
            case.label,
            ip50 / 1e3,
            ip99 / 1e3,
            imean / 1e3,
            lp50 / 1e3,
            lp99 / 1e3,
            lp50 / ip50,
            warm / 1e3,
            matches as f64 / case.impressions.len() as f64
        );
        index_p50.push(ip50);
    }
    println!("(warm: each impression 50 times in a row, caches hot; not how traffic arrives)");
    if let [_, ten_k, hundred_k] = index_p50[..] {
        println!(
            "index p50 in sequence at 100k / at 10k: {:.2}x",
            hundred_k / ten_k
        );
    }
}

fn main() {
    let cases = cases();
    for case in &cases {
        for i in 0..case.impressions.len() {
            assert_eq!(
                case.snapshot.evaluate_with(
                    Engine::Index,
                    PUBLISHER,
                    &case.impressions[i],
                    Micros::ZERO,
                    false
                ),
                case.snapshot.evaluate_with(
                    Engine::Linear,
                    PUBLISHER,
                    &case.impressions[i],
                    Micros::ZERO,
                    false
                ),
                "the engines disagree at {} on impression {i}",
                case.label
            );
        }
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &cases);
    criterion.final_summary();
    summary(&cases);
}
