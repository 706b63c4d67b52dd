//! Protocol adapters: how Cascade asks a mediated ad network for an ad. Every failure of
//! a network (slow, refused, malformed, oversized) is an [`AdOutcome`] of that network,
//! never an error of the decision.

pub mod grpc;
pub mod guard;
pub mod health;
pub mod notices;
pub mod openrtb_http;
pub mod outbound;

use std::time::Duration;

use cascade_core::Micros;

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
    /// Adapters whose every call goes only where `guard` lets it.
    pub fn new(guard: &guard::OutboundGuard) -> Self {
        Adapters {
            openrtb: OpenRtbHttpAdapter::new(guard),
            grpc: GrpcNetworkAdapter::new(guard),
        }
    }

    pub async fn request_ad(&self, protocol: NetworkProtocol, call: &AdCall<'_>) -> AdOutcome {
        match protocol {
            NetworkProtocol::OpenrtbHttp => self.openrtb.request_ad(call).await,
            NetworkProtocol::Grpc => self.grpc.request_ad(call).await,
        }
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
    /// The OpenRTB request the network is sent, as [`outbound::network_request`] built
    /// it: the one impression `impid`, the privacy rules applied.
    pub request: &'a serde_json::Value,
    pub impid: &'a str,
    /// The network's own timeout, already bounded by what is left of the deadline.
    pub timeout: Duration,
    /// Fetch the markup from `nurl` when a bid has none (a waterfall call, which serves
    /// if it fills); a live bid may still lose, so its `nurl` is not fetched.
    pub markup_from_nurl: bool,
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
    /// Billing and loss notice URLs, macros not yet substituted.
    pub burl: String,
    pub lurl: String,
    /// True when `adm` was fetched from `nurl`: that fetch was the win notice.
    pub nurl_fired: bool,
    /// Seconds the ad stays valid (`bid.exp`), when the network said.
    pub exp: Option<u32>,
    pub adomain: Vec<String>,
    pub crid: String,
    pub adid: String,
    /// The impression's deal the bid is under, when it names one.
    pub dealid: String,
    /// The ad carries DSA transparency (`bid.ext.dsa`).
    pub dsa: bool,
    /// The seat of the bid, when the network named one.
    pub seat: String,
    /// IAB categories of the ad.
    pub cat: Vec<String>,
    /// OpenRTB creative attributes of the ad.
    pub attr: Vec<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AdOutcome {
    Filled(Box<Ad>),
    NoFill,
    /// The network answered that it does not bid, with its no-bid reason (`nbr`).
    Declined(i32),
    Timeout,
    /// The network failed: refused, HTTP error, malformed or oversized body.
    Error(String),
}

impl AdOutcome {
    /// `filled`, `no_fill`, `timeout` or `error`: the name reports and spans use.
    pub fn name(&self) -> &'static str {
        match self {
            AdOutcome::Filled(_) => "filled",
            AdOutcome::NoFill | AdOutcome::Declined(_) => "no_fill",
            AdOutcome::Timeout => "timeout",
            AdOutcome::Error(_) => "error",
        }
    }
}
