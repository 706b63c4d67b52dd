use std::time::Duration;

/// The stored outcome of one impression's decision, so any replica can take its event
/// reports and a later request can chain it without trusting a client-supplied price.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// How long the store keeps it.
    pub ttl: Duration,
}
