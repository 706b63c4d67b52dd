//! Protocol adapters: how Cascade asks a mediated ad network for an ad. Every failure of
//! a network (slow, refused, malformed, oversized) is an [`AdOutcome`] of that network,
//! never an error of the decision.

mod grpc;
pub mod health;
mod openrtb_http;

use std::time::Duration;

use cascade_core::Micros;
use cascade_proto::openrtb::v1::BidRequest;

pub use grpc::GrpcNetworkAdapter;
pub use openrtb_http::{MAX_RESPONSE_BYTES, OpenRtbHttpAdapter};

use cascade_core::config::NetworkProtocol;

/// Every adapter, chosen by the network's protocol.
#[derive(Debug, Default)]
pub struct Adapters {
    pub openrtb: OpenRtbHttpAdapter,
    pub grpc: GrpcNetworkAdapter,
}

impl Adapters {
    pub async fn request_ad(&self, protocol: NetworkProtocol, call: &AdCall<'_>) -> AdOutcome {
        match protocol {
            NetworkProtocol::OpenrtbHttp => self.openrtb.request_ad(call).await,
            NetworkProtocol::Grpc => self.grpc.request_ad(call).await,
        }
    }
}

/// The request a network sees: the caller's, reduced to the one impression, with the
/// network's placement id as tagid and the CPM asked of it as floor.
fn single_impression_request(call: &AdCall<'_>) -> BidRequest {
    let imp = call
        .request
        .imp
        .iter()
        .find(|imp| imp.id == call.impid)
        .cloned()
        .map(|mut imp| {
            imp.tagid = call.placement_id.to_string();
            imp.bidfloor = call.floor.0 as f64 / cascade_core::money::MICROS_PER_UNIT as f64;
            imp.bidfloorcur = call.currency().to_string();
            imp.pmp = None;
            imp
        });
    BidRequest {
        imp: imp.into_iter().collect(),
        tmax: i32::try_from(call.timeout.as_millis()).unwrap_or(i32::MAX),
        cur: vec![call.currency().to_string()],
        ..call.request.clone()
    }
}

/// One ask of one network for one impression.
#[derive(Clone, Debug)]
pub struct AdCall<'a> {
    pub endpoint: &'a str,
    /// The network's placement id, sent as the impression's tagid.
    pub placement_id: &'a str,
    /// The floor the network is held to, in micros of `currency`: max(its mediated
    /// CPM, the applicable floor).
    pub floor: Micros,
    /// The network's currency (ISO-4217); empty means USD.
    pub currency: &'a str,
    /// The original request; only the impression `impid` is sent.
    pub request: &'a BidRequest,
    pub impid: &'a str,
    /// The network's own timeout, already bounded by what is left of the deadline.
    pub timeout: Duration,
}

impl AdCall<'_> {
    /// The currency the network is asked in and answers in unless it says otherwise.
    pub fn currency(&self) -> &str {
        if self.currency.is_empty() {
            cascade_core::money::AUCTION_CURRENCY
        } else {
            self.currency
        }
    }
}

/// The ad a network returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ad {
    pub bid_id: String,
    /// What the network pays, in `cur`: a bidding network's live bid ranks at it; a
    /// waterfall network's ad is booked at it (its mediated bid's CPM ranks). `None`
    /// when the network stated no price.
    pub price: Option<Micros>,
    /// The currency of `price`.
    pub cur: String,
    pub adm: String,
    pub nurl: String,
    pub adomain: Vec<String>,
    pub crid: String,
    /// IAB categories of the ad.
    pub cat: Vec<String>,
    /// OpenRTB creative attributes of the ad.
    pub attr: Vec<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AdOutcome {
    Filled(Ad),
    NoFill,
    Timeout,
    /// The network failed: refused, HTTP error, malformed or oversized body.
    Error(String),
}

impl AdOutcome {
    /// `filled`, `no_fill`, `timeout` or `error`: the name reports and spans use.
    pub fn name(&self) -> &'static str {
        match self {
            AdOutcome::Filled(_) => "filled",
            AdOutcome::NoFill => "no_fill",
            AdOutcome::Timeout => "timeout",
            AdOutcome::Error(_) => "error",
        }
    }
}
