//! The body of an OpenRTB network's answer, whatever it sends: no ad, the network's
//! fault, or an ad for the impression asked — never a panic.
#![no_main]

use std::time::Duration;

use cascade_core::Micros;
use cascade_networks::AdCall;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = serde_json::json!({
        "id": "fuzz",
        "imp": [{"id": "1", "tagid": "placement", "banner": {"w": 300, "h": 250}}]
    });
    let call = AdCall {
        endpoint: "http://network.invalid/bid",
        placement_id: "placement",
        floor: Micros(500_000),
        currency: "",
        request: &request,
        impid: "1",
        timeout: Duration::from_millis(100),
        markup_from_nurl: true,
    };
    let _ = cascade_networks::openrtb_http::read_answer(data, &call);
});
