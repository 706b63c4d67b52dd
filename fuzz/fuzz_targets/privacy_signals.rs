//! The privacy signals of a request as a browser and a gateway can set them: a TC
//! string, a GPP string, a US Privacy string and the flags, read once and judged for a
//! few vendors, then applied to a request document. Every input must end in a verdict,
//! never a panic; `scripts/fuzz` runs this target under an RSS limit, so a reader that
//! expands what a string states (a 22 KB string once cost 900 MiB) fails the run.
#![no_main]

use cascade_core::privacy::{RequestSignals, Signals, withhold};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Fields separated by newlines: consent, gpp, us_privacy, then flag bytes.
    let mut fields = text.split('\n');
    let consent = fields.next().unwrap_or_default();
    let gpp = fields.next().unwrap_or_default();
    let us_privacy = fields.next().unwrap_or_default();
    let flags = fields.next().unwrap_or_default().as_bytes();
    let flag = |i: usize| flags.get(i).map(|b| i32::from(b & 1));
    let gpp_sid: Vec<i32> = flags.iter().skip(4).map(|b| i32::from(*b % 24)).collect();
    let signals = Signals::read(&RequestSignals {
        gdpr: flag(0),
        consent,
        us_privacy,
        gpp,
        gpp_sid: &gpp_sid,
        coppa: flag(1),
        dnt: flag(2),
        lmt: flag(3),
    });
    for vendor in [None, Some(1), Some(52), Some(755), Some(u16::MAX)] {
        let verdict = signals.permissions(vendor);
        let mut document = serde_json::json!({
            "user": {"id": "u", "eids": [], "ext": {"eids": [], "consent": "x"}},
            "device": {"ifa": "i", "ip": "81.2.69.142", "geo": {"lat": 1.234, "lon": 5.678}}
        });
        withhold(&mut document, &verdict.permissions);
        if !verdict.permissions.user_ids {
            assert!(document["user"].get("id").is_none());
        }
    }
});
