use std::time::Duration;

use cascade_core::auction::DemandKind;

/// The stored outcome of one impression's decision, so any replica can take its event
/// reports and a later request can chain it without trusting a client-supplied price.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub id: String,
    pub request_id: String,
    pub impid: String,
    pub account_id: String,
    /// What kind of demand won.
    pub source: DemandKind,
    pub network_id: String,
    pub seat: String,
    pub bid_id: String,
    /// The clearing price, USD micros.
    pub price_micros: i64,
    /// The currency the winner priced itself in, and the rate (USD micros per unit) its
    /// price was converted at; empty and 0 for USD.
    #[serde(default)]
    pub original_cur: String,
    #[serde(default)]
    pub rate_micros: i64,
    /// What the ad declared, so that a later request's filters apply to it when it is
    /// chained (the markup is not kept: whoever chains an outcome holds its ad).
    #[serde(default)]
    pub adomain: Vec<String>,
    #[serde(default)]
    pub cat: Vec<String>,
    #[serde(default)]
    pub attr: Vec<i32>,
    /// The ad's markup, kept only when the request asked for it (`keep_markup`) and it
    /// is small; a chained outcome that wins returns it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub adm: String,
    /// A node of a client-side chain: it is an outcome (can be chained) only once the
    /// client reported it filled.
    #[serde(default)]
    pub client_node: bool,
    /// The billing notice Cascade fires when the impression is reported (macros
    /// substituted), and until when it may still be delivered (unix milliseconds).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub burl: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub burl_expires_at_ms: i64,
    /// From a `test = 1` request: its events count in no report and fire no notice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    /// The node result reported for it (`filled`, `no_fill`, ...), as read back from
    /// the store; not part of the stored value.
    #[serde(skip)]
    pub node_outcome: Option<String>,
    /// How long the store keeps it (the store's own expiry, not stored in the value).
    #[serde(skip)]
    pub ttl: Duration,
    /// The whole answer of the decision that made it, stored beside it (its own key,
    /// same TTL, same write) so that a retry of the decision gets the same answer; set
    /// on one selection of the decision.
    #[serde(skip)]
    pub answer: Option<Answer>,
}

/// A decision's answer as the caller got it, under the key its retries look for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub key: AnswerKey,
    /// The encoded `DecideResponse`.
    pub response: Vec<u8>,
}

/// What names a decision across its retries: the publisher and the request id it sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    pub publisher_id: String,
    pub request_id: String,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// A billing notice waiting for delivery: kept until its receiver answers 2xx or it
/// expires, retried with backoff.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BillingNotice {
    /// The selection whose impression it bills.
    pub id: String,
    pub url: String,
    /// Attempts made so far.
    pub attempts: u32,
    pub expires_at_ms: i64,
}

/// Something that happened to a selection, reported by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub selection_id: String,
    /// One of each per selection counts.
    pub kind: EventKind,
    /// For node results: the outcome name (`filled`, `no_fill`, `timeout`, `error`).
    pub detail: String,
}

/// What happened to a selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Impression,
    Click,
    /// The result of a client-side chain node (CLIENT mode), its outcome in the detail.
    NodeResult,
}

impl EventKind {
    /// The name the store keys and counters use.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
            EventKind::NodeResult => "node_result",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            EventKind::Impression,
            EventKind::Click,
            EventKind::NodeResult,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventRecorded {
    /// Stored and counted; the selection it was recorded for.
    New(Box<Selection>),
    /// Reported before: nothing changed.
    Duplicate,
    /// No such selection, or it expired.
    UnknownSelection,
}

/// What event counters are kept by: the account, the demand that won (source and
/// network or seat), the event and its detail.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventCounter {
    pub account_id: String,
    pub source: DemandKind,
    /// The network id, or the seat for exchange demand.
    pub demand: String,
    pub kind: EventKind,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Selections written before they kept the ad's facts still read (a rolling
    /// deployment meets both).
    #[test]
    fn a_selection_without_the_newer_fields_still_reads() {
        let old = r#"{"id":"s","request_id":"r","impid":"1","account_id":"a","source":"SOURCE_KIND_EXCHANGE","network_id":"","seat":"x","bid_id":"b","price_micros":5}"#;
        let selection: Selection = serde_json::from_str(old).unwrap();
        assert_eq!(selection.price_micros, 5);
        assert!(selection.adomain.is_empty() && !selection.client_node);
    }
}
