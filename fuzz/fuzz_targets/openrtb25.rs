//! A request document in the OpenRTB 2.5 shape, up-converted as bid-intake does on
//! intake: every input must end in a 2.6 document or an error naming the member at
//! fault, never a panic, and a converted document holds no 2.5 place any more.
#![no_main]

use cascade_proto::openrtb::v1::BidRequest;
use cascade_proto::openrtb25;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(serde_json::Value::Object(mut document)) = serde_json::from_slice(data)
        && openrtb25::upgrade(&mut document).is_ok()
    {
        for place in openrtb25::MOVES {
            assert!(
                document
                    .get(place.object)
                    .and_then(|o| o.get("ext"))
                    .and_then(|ext| ext.get(place.member))
                    .is_none(),
                "{} left in place",
                place.path
            );
        }
    }
    if let Ok(mut request) = serde_json::from_slice::<BidRequest>(data)
        && openrtb25::upgrade_typed(&mut request).is_ok()
    {
        assert!(!openrtb25::has_25_places(&request));
    }
});
