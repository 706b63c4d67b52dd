//! What `cascade admin apply -f` reads: YAML documents of entities, each then put into a
//! configuration and validated as the admin API does — an error naming what is wrong,
//! never a panic.
#![no_main]

use cascade_core::config::Configuration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entities) = cascade_admin::yaml::parse_entities(text) else {
        return;
    };
    let mut configuration = Configuration::default();
    for entity in entities {
        // Through the wire form the CLI sends, and back.
        let Ok(entity) = cascade_admin::convert::entity_from_proto(Some(
            cascade_admin::convert::entity_to_proto(&entity),
        )) else {
            continue;
        };
        if let Ok(next) = configuration.validate_put(&entity) {
            configuration = next;
        }
    }
    let _ = cascade_admin::yaml::to_yaml(&configuration.entities());
});
