//! Win, billing and loss notices: the OpenRTB 2.6 §4.4 substitution macros, and the
//! retry schedule of a billing notice, which is money and is delivered at least once.

use std::time::Duration;

use crate::Micros;

/// What the macros of one bid's notices and markup stand for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuctionFacts<'a> {
    /// `${AUCTION_ID}`: the bid request's id.
    pub auction_id: &'a str,
    /// `${AUCTION_BID_ID}`: the bid response's `bidid` (the bid's id when it set none).
    pub bid_id: &'a str,
    pub imp_id: &'a str,
    pub seat_id: &'a str,
    /// `${AUCTION_AD_ID}`: the bid's `adid`.
    pub ad_id: &'a str,
    /// `${AUCTION_PRICE}`: the clearing price, in `currency`, when the bid won.
    pub price: Option<Micros>,
    pub currency: &'a str,
    /// The bid's own price, for `${AUCTION_MBR}` (clearing price / bid price).
    pub bid_price: Option<Micros>,
    /// `${AUCTION_LOSS}`: the OpenRTB loss reason code, for a lost bid.
    pub loss: Option<i32>,
    /// `${AUCTION_MIN_TO_WIN}`: what the bid had to reach to win, in `currency`.
    pub min_to_win: Option<Micros>,
}

/// OpenRTB 2.6 loss reason codes (list "Loss Reason Codes"), the ones Cascade sends.
pub mod loss {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const INVALID_BID_RESPONSE: i32 = 3;
    pub const INVALID_ADVERTISER_DOMAIN: i32 = 6;
    pub const BELOW_FLOOR: i32 = 100;
    pub const LOST_TO_HIGHER_BID: i32 = 102;
    /// Only deal bids could win (a private auction).
    pub const LOST_TO_DEAL: i32 = 103;
    pub const SEAT_BLOCKED: i32 = 104;
    /// Creative filtered, general.
    pub const BLOCKED: i32 = 200;
    pub const ADVERTISER_EXCLUDED: i32 = 205;
    pub const CATEGORY_EXCLUDED: i32 = 209;
    pub const ATTRIBUTE_EXCLUDED: i32 = 210;
}

/// Every macro of §4.4 in `template` replaced by its value (percent-encoded, so a value
/// cannot break the URL it lands in); a macro whose value is unknown becomes empty.
pub fn substitute(template: &str, facts: &AuctionFacts<'_>) -> String {
    if !template.contains("${AUCTION_") {
        return template.to_string();
    }
    let price = |p: Option<Micros>| p.map(decimal).unwrap_or_default();
    let mbr = match (facts.price, facts.bid_price) {
        (Some(clearing), Some(bid)) if bid.0 > 0 => {
            format!("{:.4}", clearing.0 as f64 / bid.0 as f64)
        }
        _ => String::new(),
    };
    let values: [(&str, String); 10] = [
        ("${AUCTION_ID}", encode(facts.auction_id)),
        ("${AUCTION_BID_ID}", encode(facts.bid_id)),
        ("${AUCTION_IMP_ID}", encode(facts.imp_id)),
        ("${AUCTION_SEAT_ID}", encode(facts.seat_id)),
        ("${AUCTION_AD_ID}", encode(facts.ad_id)),
        ("${AUCTION_PRICE}", price(facts.price)),
        ("${AUCTION_CURRENCY}", encode(facts.currency)),
        ("${AUCTION_MBR}", mbr),
        (
            "${AUCTION_LOSS}",
            facts.loss.map(|code| code.to_string()).unwrap_or_default(),
        ),
        ("${AUCTION_MIN_TO_WIN}", price(facts.min_to_win)),
    ];
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("${AUCTION_") {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        match values.iter().find(|(name, _)| candidate.starts_with(name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &candidate[name.len()..];
            }
            None => {
                out.push_str("${AUCTION_");
                rest = &candidate["${AUCTION_".len()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A price as OpenRTB writes it: units with no trailing zeros (`2.5`, `0.03`).
fn decimal(price: Micros) -> String {
    let text = price.to_string();
    let trimmed = text.trim_end_matches('0');
    trimmed.strip_suffix('.').unwrap_or(trimmed).to_string()
}

fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// When a billing notice that failed is tried again: exponential backoff from
/// `first`, capped at `max`, with no jitter (the outbox spreads retries by due time).
pub fn billing_retry_delay(attempts: u32, first: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(max)
}

/// How a failed billing notice is retried: backoff from `first` doubling to `max`, at most
/// `max_attempts` attempts in all, never past the notice's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BillingRetries {
    pub first: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl BillingRetries {
    /// After the `attempts`-th attempt failed at `now_ms`: when to try again, or `None`
    /// when the notice is given up (out of attempts, or the next one would fall at or
    /// past `expires_at_ms`).
    pub fn next_attempt_ms(&self, attempts: u32, now_ms: i64, expires_at_ms: i64) -> Option<i64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = billing_retry_delay(attempts, self.first, self.max);
        let retry_at = now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        (retry_at < expires_at_ms).then_some(retry_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A billing notice is tried at most `max_attempts` times, each retry later than
        /// the last failure and before the notice expires, the waits never longer than
        /// `max`.
        #[test]
        fn billing_retries_are_bounded(
            first_ms in 1u64..5_000,
            max_ms in 5_000u64..600_000,
            max_attempts in 1u32..40,
            start in 0i64..1_000_000,
            ttl_ms in 1i64..200_000_000,
        ) {
            let retries = BillingRetries {
                first: Duration::from_millis(first_ms),
                max: Duration::from_millis(max_ms),
                max_attempts,
            };
            let expires_at = start + ttl_ms;
            let (mut now, mut attempts) = (start, 1u32);
            while let Some(next) = retries.next_attempt_ms(attempts, now, expires_at) {
                prop_assert!(next > now && next < expires_at);
                prop_assert!(next - now <= max_ms as i64);
                now = next;
                attempts += 1;
            }
            prop_assert!(attempts <= max_attempts);
        }
    }

    fn facts() -> AuctionFacts<'static> {
        AuctionFacts {
            auction_id: "req 1",
            bid_id: "b1",
            imp_id: "1",
            seat_id: "seat-9",
            ad_id: "ad7",
            price: Some(Micros(2_500_000)),
            currency: "EUR",
            bid_price: Some(Micros(3_000_000)),
            loss: None,
            min_to_win: None,
        }
    }

    #[test]
    fn every_macro_is_substituted() {
        let url = "https://n/win?a=${AUCTION_ID}&b=${AUCTION_BID_ID}&i=${AUCTION_IMP_ID}&s=${AUCTION_SEAT_ID}\
                   &ad=${AUCTION_AD_ID}&p=${AUCTION_PRICE}&c=${AUCTION_CURRENCY}&m=${AUCTION_MBR}&l=${AUCTION_LOSS}&w=${AUCTION_MIN_TO_WIN}";
        assert_eq!(
            substitute(url, &facts()),
            "https://n/win?a=req%201&b=b1&i=1&s=seat-9&ad=ad7&p=2.5&c=EUR&m=0.8333&l=&w="
        );
        let lost = AuctionFacts {
            price: None,
            loss: Some(loss::LOST_TO_HIGHER_BID),
            min_to_win: Some(Micros(4_010_000)),
            ..facts()
        };
        assert_eq!(
            substitute(
                "l=${AUCTION_LOSS}&w=${AUCTION_MIN_TO_WIN}&p=${AUCTION_PRICE}",
                &lost
            ),
            "l=102&w=4.01&p="
        );
    }

    #[test]
    fn unknown_macros_and_plain_text_are_left_alone() {
        assert_eq!(
            substitute("x=${AUCTION_OTHER}&y=${AUCTION_PRICE}", &facts()),
            "x=${AUCTION_OTHER}&y=2.5"
        );
        assert_eq!(substitute("<a href='x'>", &facts()), "<a href='x'>");
        assert_eq!(substitute("${AUCTION_", &facts()), "${AUCTION_");
    }

    #[test]
    fn prices_are_written_without_trailing_zeros() {
        assert_eq!(decimal(Micros(30_000)), "0.03");
        assert_eq!(decimal(Micros(2_000_000)), "2");
        assert_eq!(decimal(Micros(1)), "0.000001");
    }

    #[test]
    fn billing_retries_back_off_to_a_cap() {
        let first = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let delays: Vec<_> = (1..=8)
            .map(|a| billing_retry_delay(a, first, max).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(billing_retry_delay(u32::MAX, first, max), max);
    }

    proptest! {
        /// No value can inject URL syntax: whatever the ids, the substituted URL has
        /// exactly the template's query separators.
        #[test]
        fn values_cannot_break_the_url(id in ".{0,20}", seat in ".{0,20}") {
            let facts = AuctionFacts { auction_id: &id, seat_id: &seat, ..facts() };
            let url = substitute("https://n/w?a=${AUCTION_ID}&s=${AUCTION_SEAT_ID}", &facts);
            prop_assert_eq!(url.matches('&').count(), 1);
            prop_assert_eq!(url.matches('=').count(), 2);
            prop_assert!(!url.contains(' ') && !url.contains('#'));
        }
    }
}
