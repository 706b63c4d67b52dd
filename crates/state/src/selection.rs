use std::time::Duration;

/// The stored outcome of one impression's decision, so any replica can take its event
/// reports and a later request can chain it without trusting a client-supplied price.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub id: String,
    pub request_id: String,
    pub impid: String,
    pub account_id: String,
    /// What kind of demand won (the decision API's source kind name).
    pub source: String,
    pub network_id: String,
    pub seat: String,
    pub bid_id: String,
    /// The clearing price, USD micros.
    pub price_micros: i64,
    /// How long the store keeps it (the store's own expiry, not stored in the value).
    #[serde(skip)]
    pub ttl: Duration,
}

/// Something that happened to a selection, reported by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub selection_id: String,
    /// `impression`, `click` or `node_result`; one of each per selection counts.
    pub kind: String,
    /// For node results: the outcome name (`filled`, `no_fill`, `timeout`, `error`).
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventRecorded {
    /// Stored and counted.
    New,
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
    pub source: String,
    /// The network id, or the seat for exchange demand.
    pub demand: String,
    pub kind: String,
    pub detail: String,
}
