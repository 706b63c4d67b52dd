//! The notices of one decision: each winner's `nurl`, `burl` and markup get their
//! OpenRTB macros; Cascade fires the win notice of the networks it called (and, when set
//! to, of exchange bids) and keeps their billing notice for the impression; a bidding
//! network's bid that lost gets its loss notice. The billing worker delivers the billing
//! notices the store holds, at least once.

use cascade_log::DecisionLog;
use std::sync::Arc;
use std::time::Duration;

use cascade_core::Micros;
use cascade_core::notice::{self, AuctionFacts};
use cascade_core::settings::{InvalidSetting, Validate, at_least, require};
use cascade_networks::notices::Notifier;
use cascade_proto::auction::v1::Candidate;
use cascade_proto::decision::v1::{SourceKind, Winner};
use cascade_state::{BillingNotice, Store};
use serde::{Deserialize, Serialize};

/// Who fires an exchange bid's win and billing notices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeNotices {
    /// Returned to the gateway in the winner, macros substituted (the gateway holds the
    /// buyer relationship and usually fires them itself).
    #[default]
    Return,
    /// Fired by Cascade like a network's.
    Fire,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoticeSettings {
    pub exchange: ExchangeNotices,
    /// Win and loss notices in flight at once; beyond it they are dropped and counted.
    pub max_in_flight: usize,
    /// How long one notice request may take.
    pub timeout_ms: u64,
    /// How long a billing notice is retried after its impression before it expires.
    pub billing_ttl_secs: u64,
    /// The first retry of a failed billing notice, doubling up to `billing_retry_max_ms`.
    pub billing_retry_first_ms: u64,
    pub billing_retry_max_ms: u64,
    /// Most attempts at one billing notice (the first included): with the defaults, 1 s
    /// doubling to 5 min, 24 attempts span about 80 minutes. A receiver is not sent the
    /// same notice hundreds of times over a day.
    pub billing_max_attempts: u32,
    /// How often the billing worker looks for due notices.
    pub billing_poll_ms: u64,
    /// How long a claimed billing notice is left to its worker before another may try.
    pub billing_lease_ms: u64,
}

impl Default for NoticeSettings {
    fn default() -> Self {
        Self {
            exchange: ExchangeNotices::Return,
            max_in_flight: 1_024,
            timeout_ms: 2_000,
            billing_ttl_secs: 24 * 3_600,
            billing_retry_first_ms: 1_000,
            billing_retry_max_ms: 300_000,
            billing_max_attempts: 24,
            billing_poll_ms: 250,
            billing_lease_ms: 30_000,
        }
    }
}

impl Validate for NoticeSettings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        at_least("max_in_flight", self.max_in_flight as u64, 1)?;
        at_least("timeout_ms", self.timeout_ms, 1)?;
        at_least("billing_ttl_secs", self.billing_ttl_secs, 1)?;
        at_least("billing_retry_first_ms", self.billing_retry_first_ms, 1)?;
        require(
            self.billing_retry_max_ms >= self.billing_retry_first_ms,
            "billing_retry_max_ms",
            || {
                format!(
                    "must be at least billing_retry_first_ms ({})",
                    self.billing_retry_first_ms
                )
            },
        )?;
        at_least(
            "billing_max_attempts",
            u64::from(self.billing_max_attempts),
            1,
        )?;
        at_least("billing_poll_ms", self.billing_poll_ms, 10)?;
        // A lease shorter than one attempt would let a second worker send it again.
        require(
            self.billing_lease_ms > self.timeout_ms,
            "billing_lease_ms",
            || format!("must be longer than timeout_ms ({})", self.timeout_ms),
        )
    }
}

impl NoticeSettings {
    /// The retry schedule of a billing notice.
    pub fn billing_retries(&self) -> notice::BillingRetries {
        notice::BillingRetries {
            first: Duration::from_millis(self.billing_retry_first_ms),
            max: Duration::from_millis(self.billing_retry_max_ms),
            max_attempts: self.billing_max_attempts,
        }
    }
}

/// What a bid's notices need to know of it, taken from its candidate.
#[derive(Clone, Debug, Default)]
pub struct BidNotices {
    pub candidate_id: String,
    source: i32,
    seat: String,
    /// For `${AUCTION_BID_ID}`: the response's bidid, else the bid's id.
    bid_id: String,
    adid: String,
    nurl: String,
    burl: String,
    lurl: String,
    nurl_fired: bool,
    pub exp_seconds: u32,
    /// Its currency and rate (USD micros per unit); empty and 0 for USD.
    cur: String,
    rate_micros: i64,
    /// What it bid, USD micros.
    bid_micros: i64,
}

impl BidNotices {
    pub fn of(candidate: &Candidate) -> BidNotices {
        BidNotices {
            candidate_id: candidate.id.clone(),
            source: candidate.source,
            seat: candidate.seat.clone(),
            bid_id: if candidate.response_bid_id.is_empty() {
                candidate.bid_id.clone()
            } else {
                candidate.response_bid_id.clone()
            },
            adid: candidate.adid.clone(),
            nurl: candidate.nurl.clone(),
            burl: candidate.burl.clone(),
            lurl: candidate.lurl.clone(),
            nurl_fired: candidate.nurl_fired,
            exp_seconds: candidate.exp_seconds,
            cur: candidate.original_cur.clone(),
            rate_micros: candidate.rate_micros,
            bid_micros: candidate.bid_micros,
        }
    }

    fn is_exchange(&self) -> bool {
        self.source == SourceKind::Exchange as i32
    }

    fn is_network(&self) -> bool {
        matches!(
            SourceKind::try_from(self.source),
            Ok(SourceKind::MediatedNetwork | SourceKind::BiddingNetwork)
        )
    }

    /// An amount in USD micros in the bid's own currency, as its notices state prices.
    fn in_own_currency(&self, usd: i64) -> Micros {
        if self.rate_micros <= 0 {
            return Micros(usd);
        }
        let own = i128::from(usd) * 1_000_000 / i128::from(self.rate_micros);
        Micros(i64::try_from(own).unwrap_or(i64::MAX))
    }

    fn currency(&self) -> &str {
        if self.cur.is_empty() {
            cascade_core::money::AUCTION_CURRENCY
        } else {
            &self.cur
        }
    }

    fn facts<'a>(&'a self, auction_id: &'a str, imp_id: &'a str) -> AuctionFacts<'a> {
        AuctionFacts {
            auction_id,
            bid_id: &self.bid_id,
            imp_id,
            seat_id: &self.seat,
            ad_id: &self.adid,
            currency: self.currency(),
            bid_price: Some(self.in_own_currency(self.bid_micros)),
            ..Default::default()
        }
    }
}

/// What became of one winner's notices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// A win notice Cascade fires now.
    pub fire_nurl: Option<String>,
    /// A billing notice Cascade keeps for the impression.
    pub keep_burl: String,
}

/// Substitutes the winner's macros and decides who fires what: Cascade fires a network's
/// notices (and an exchange bid's when `exchange` says so), the gateway the rest. A win
/// notice whose fetch served the markup is never fired again; when the markup is still
/// to be fetched from it, the gateway's fetch is the win notice, so it is returned.
pub fn settle(
    auction_id: &str,
    imp_id: &str,
    won: &BidNotices,
    winner: &mut Winner,
    exchange: ExchangeNotices,
) -> Settled {
    let facts = AuctionFacts {
        price: Some(won.in_own_currency(winner.price_micros)),
        ..won.facts(auction_id, imp_id)
    };
    winner.adm = notice::substitute(&winner.adm, &facts);
    let nurl = notice::substitute(&won.nurl, &facts);
    let burl = notice::substitute(&won.burl, &facts);
    // Line items and chained outcomes have no notices of a buyer to fire.
    let cascade_fires =
        won.is_network() || (won.is_exchange() && exchange == ExchangeNotices::Fire);
    if !cascade_fires {
        winner.nurl = nurl;
        winner.burl = burl;
        return Settled::default();
    }
    winner.burl.clear();
    let fire_nurl = if winner.adm.is_empty() {
        winner.nurl = nurl;
        None
    } else {
        winner.nurl.clear();
        (!won.nurl_fired && !nurl.is_empty()).then_some(nurl)
    };
    Settled {
        fire_nurl,
        keep_burl: burl,
    }
}

/// The loss notice of a live bid that did not win: `reason` an OpenRTB loss code, the
/// price to beat the winner's clearing price (USD micros) in the bid's currency.
pub fn loss_notice(
    auction_id: &str,
    imp_id: &str,
    lost: &BidNotices,
    reason: i32,
    winning_price_usd: Option<i64>,
) -> Option<String> {
    if lost.lurl.is_empty() {
        return None;
    }
    let facts = AuctionFacts {
        loss: Some(reason),
        min_to_win: winning_price_usd.map(|usd| lost.in_own_currency(usd)),
        ..lost.facts(auction_id, imp_id)
    };
    Some(notice::substitute(&lost.lurl, &facts))
}

/// Delivers the billing notices the store holds until `shutdown`: due ones are claimed
/// under a lease, sent, and removed on a 2xx answer; a failure is retried with backoff
/// until the notice expires. Every attempt is counted.
pub async fn deliver_billing_notices(
    store: Arc<dyn Store>,
    notifier: Notifier,
    settings: NoticeSettings,
    log: DecisionLog,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    for outcome in ["delivered", "failed", "expired"] {
        metrics::counter!("cascade_billing_notice_attempts_total", "outcome" => outcome)
            .absolute(0);
    }
    let poll = Duration::from_millis(settings.billing_poll_ms);
    loop {
        let now = cascade_state::now_unix_millis();
        let lease_until = now + i64::try_from(settings.billing_lease_ms).unwrap_or(i64::MAX / 2);
        match store.claim_billing_notices(now, lease_until, 100).await {
            Ok(notices) => {
                let attempts = notices.into_iter().map(|notice| {
                    attempt_billing(store.as_ref(), &notifier, &settings, &log, notice)
                });
                futures::future::join_all(attempts).await;
            }
            Err(error) => tracing::warn!(%error, "cannot claim billing notices"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn attempt_billing(
    store: &dyn Store,
    notifier: &Notifier,
    settings: &NoticeSettings,
    log: &DecisionLog,
    mut notice: BillingNotice,
) {
    notice.attempts += 1;
    let outcome = notifier.deliver(&notice.url).await;
    let now = cascade_state::now_unix_millis();
    let (label, retry_at) = match outcome {
        Ok(()) => ("delivered", None),
        Err(error) => {
            tracing::debug!(id = %notice.id, attempts = notice.attempts, %error, "billing notice failed");
            match settings.billing_retries().next_attempt_ms(
                notice.attempts,
                now,
                notice.expires_at_ms,
            ) {
                Some(retry_at) => ("failed", Some(retry_at)),
                None => ("expired", None),
            }
        }
    };
    metrics::counter!("cascade_billing_notice_attempts_total", "outcome" => label).increment(1);
    if log.enabled() {
        log.append(cascade_log::schema::LogEntry {
            event: Some(cascade_log::schema::Event {
                selection_id: notice.id.clone(),
                kind: "billing_notice".into(),
                notice_host: crate::record::notice_host(&notice.url),
                notice_result: label.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Err(error) = store.settle_billing_notice(&notice, retry_at).await {
        // The lease runs out and another claim retries it: at least once still holds.
        tracing::warn!(%error, id = %notice.id, "cannot settle a billing notice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network_bid(nurl_fired: bool) -> Candidate {
        Candidate {
            id: "bidding:x".into(),
            source: SourceKind::BiddingNetwork as i32,
            seat: "s1".into(),
            bid_id: "x".into(),
            response_bid_id: "resp-9".into(),
            adid: "ad-1".into(),
            nurl: "https://n/win?p=${AUCTION_PRICE}&c=${AUCTION_CURRENCY}".into(),
            burl: "https://n/bill?p=${AUCTION_PRICE}&a=${AUCTION_ID}&b=${AUCTION_BID_ID}".into(),
            lurl: "https://n/loss?r=${AUCTION_LOSS}&w=${AUCTION_MIN_TO_WIN}".into(),
            nurl_fired,
            original_cur: "EUR".into(),
            rate_micros: 1_250_000,
            bid_micros: 2_500_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_networks_notices_are_fired_by_cascade_in_its_own_currency() {
        let won = BidNotices::of(&network_bid(false));
        let mut winner = Winner {
            price_micros: 2_500_000,
            adm: "<img src='https://n/px?p=${AUCTION_PRICE}'>".into(),
            ..Default::default()
        };
        let settled = settle("req-1", "1", &won, &mut winner, ExchangeNotices::Return);
        assert_eq!(
            settled.fire_nurl.as_deref(),
            Some("https://n/win?p=2&c=EUR")
        );
        assert_eq!(settled.keep_burl, "https://n/bill?p=2&a=req-1&b=resp-9");
        assert_eq!(winner.adm, "<img src='https://n/px?p=2'>");
        assert!(
            winner.nurl.is_empty() && winner.burl.is_empty(),
            "nothing left for the gateway to fire"
        );
    }

    #[test]
    fn a_win_notice_that_served_the_markup_is_not_fired_again_and_one_still_to_fetch_is_returned() {
        let won = BidNotices::of(&network_bid(true));
        let mut winner = Winner {
            adm: "<ad/>".into(),
            price_micros: 1,
            ..Default::default()
        };
        assert_eq!(
            settle("r", "1", &won, &mut winner, ExchangeNotices::Return).fire_nurl,
            None
        );
        let won = BidNotices::of(&network_bid(false));
        let mut winner = Winner {
            price_micros: 1_250_000,
            ..Default::default()
        };
        let settled = settle("r", "1", &won, &mut winner, ExchangeNotices::Return);
        assert_eq!(settled.fire_nurl, None);
        assert_eq!(
            winner.nurl, "https://n/win?p=1&c=EUR",
            "the gateway's fetch is the notice"
        );
    }

    #[test]
    fn exchange_notices_are_returned_or_fired_as_set() {
        let exchange = Candidate {
            source: SourceKind::Exchange as i32,
            original_cur: String::new(),
            rate_micros: 0,
            ..network_bid(false)
        };
        let won = BidNotices::of(&exchange);
        let mut winner = Winner {
            price_micros: 1_500_000,
            adm: "<a/>".into(),
            ..Default::default()
        };
        let settled = settle("r", "1", &won, &mut winner, ExchangeNotices::Return);
        assert_eq!(settled, Settled::default());
        assert_eq!(winner.nurl, "https://n/win?p=1.5&c=USD");
        assert_eq!(winner.burl, "https://n/bill?p=1.5&a=r&b=resp-9");
        let mut winner = Winner {
            price_micros: 1_500_000,
            adm: "<a/>".into(),
            ..Default::default()
        };
        let settled = settle("r", "1", &won, &mut winner, ExchangeNotices::Fire);
        assert_eq!(
            settled.fire_nurl.as_deref(),
            Some("https://n/win?p=1.5&c=USD")
        );
        assert!(winner.nurl.is_empty() && winner.burl.is_empty());
    }

    #[test]
    fn a_lost_bid_learns_why_and_what_would_have_won() {
        let lost = BidNotices::of(&network_bid(false));
        assert_eq!(
            loss_notice(
                "r",
                "1",
                &lost,
                notice::loss::LOST_TO_HIGHER_BID,
                Some(3_750_000)
            )
            .as_deref(),
            Some("https://n/loss?r=102&w=3")
        );
        let silent = BidNotices {
            lurl: String::new(),
            ..lost
        };
        assert_eq!(loss_notice("r", "1", &silent, 102, None), None);
    }
}
