//! A notice URL as a bid gives it (`nurl`, `burl`, `lurl`), its macros substituted with
//! values that may themselves come from a bid (ids, seat, currency): never a panic, and
//! no value can bring a macro back or break out of the URL (values are
//! percent-encoded).
#![no_main]

use cascade_core::Micros;
use cascade_core::notice::{AuctionFacts, substitute};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\u{0}');
    let template = parts.next().unwrap_or_default();
    let id = parts.next().unwrap_or_default();
    let seat = parts.next().unwrap_or_default();
    let numbers = parts.next().unwrap_or_default().as_bytes();
    let number = |i: usize| {
        numbers
            .get(i * 4..i * 4 + 4)
            .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    };
    let facts = AuctionFacts {
        auction_id: id,
        bid_id: id,
        imp_id: id,
        seat_id: seat,
        ad_id: seat,
        price: number(0).map(Micros),
        currency: seat,
        bid_price: number(1).map(Micros),
        loss: number(2).map(|n| n as i32),
        min_to_win: number(3).map(Micros),
    };
    let url = substitute(template, &facts);
    if !template.contains("${") {
        assert_eq!(url, template);
    }
    // Whatever the values, they land percent-encoded: they cannot add a query member, a
    // fragment or a macro to a URL that had none.
    let fixed = substitute(
        "https://n.example/win?a=${AUCTION_ID}&s=${AUCTION_SEAT_ID}&c=${AUCTION_CURRENCY}",
        &facts,
    );
    assert_eq!(fixed.matches('&').count(), 2, "{fixed}");
    assert!(!fixed.contains('#') && !fixed.contains(' ') && !fixed.contains("${"), "{fixed}");
});
