//! A decision request as a gateway sends it — protobuf bytes, or the OpenRTB JSON
//! document — read and normalised the way bid-intake does before anything else. Every
//! input must end in a request or an `INVALID_ARGUMENT`, never a panic.
#![no_main]

use cascade_core::money::CurrencyRates;
use cascade_proto::decision::v1::DecideRequest;
use cascade_proto::openrtb::v1::BidRequest;
use cascade_proto::prost::Message as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rates = CurrencyRates::new([("EUR".to_string(), 1_100_000)]);
    let rates = rates.at(1_700_000_000);
    if let Ok(mut request) = DecideRequest::decode(data)
        && cascade_bid_intake::openrtb_document(&mut request).is_ok()
    {
        let _ = cascade_bid_intake::normalize(&request, &rates);
    }
    if let Ok(bid_request) = serde_json::from_slice::<BidRequest>(data) {
        let request = DecideRequest {
            request: Some(bid_request),
            ..Default::default()
        };
        let _ = cascade_bid_intake::normalize(&request, &rates);
    }
});
