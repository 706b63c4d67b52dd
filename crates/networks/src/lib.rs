//! Protocol adapters: how Cascade asks a mediated ad network for an ad. Every failure of
//! a network (slow, refused, malformed, oversized) is an [`AdOutcome`] of that network,
//! never an error of the decision.

pub mod health;
mod openrtb_http;

use std::time::Duration;

use cascade_core::Micros;
use cascade_proto::openrtb::v1::BidRequest;

pub use openrtb_http::OpenRtbHttpAdapter;

/// One ask of one network for one impression.
#[derive(Clone, Debug)]
pub struct AdCall<'a> {
    pub endpoint: &'a str,
    /// The network's placement id, sent as the impression's tagid.
    pub placement_id: &'a str,
    /// The CPM the publisher expects (the mediated bid), sent as the floor.
    pub floor: Micros,
    /// The original request; only the impression `impid` is sent.
    pub request: &'a BidRequest,
    pub impid: &'a str,
    /// The network's own timeout, already bounded by what is left of the deadline.
    pub timeout: Duration,
}

/// The ad a network returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ad {
    pub bid_id: String,
    /// What the network bids: a bidding network's live bid ranks at it (in `cur`);
    /// for a waterfall network it is informational (the mediated bid's CPM ranks).
    pub price: Micros,
    /// The currency of `price`; empty means USD.
    pub cur: String,
    pub adm: String,
    pub nurl: String,
    pub adomain: Vec<String>,
    pub crid: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AdOutcome {
    Filled(Ad),
    NoFill,
    Timeout,
    /// The network failed: refused, HTTP error, malformed or oversized body.
    Error(String),
}
