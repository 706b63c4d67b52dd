//! A custom network's gRPC answer (`cascade.customnetwork.v1.AdResponse` bytes): no ad,
//! the network's fault, or an ad — never a panic.
#![no_main]

use std::time::Duration;

use cascade_core::Micros;
use cascade_networks::AdCall;
use cascade_proto::customnetwork::v1::AdResponse;
use cascade_proto::prost::Message as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = AdResponse::decode(data) else {
        return;
    };
    let request = serde_json::json!({"id": "fuzz", "imp": [{"id": "1"}]});
    let call = AdCall {
        endpoint: "http://network.invalid",
        placement_id: "placement",
        floor: Micros(500_000),
        currency: "EUR",
        request: &request,
        impid: "1",
        timeout: Duration::from_millis(100),
        markup_from_nurl: false,
    };
    let _ = cascade_networks::grpc::read_answer(response, &call);
});
