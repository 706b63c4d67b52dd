//! OpenRTB 2.5 places of the privacy signals, ids and supply chain, moved to their 2.6
//! places on intake (as Prebid Server up-converts), so that every rule, every network
//! and the log see one model:
//!
//! | 2.5 (`ext`)              | 2.6               |
//! |--------------------------|-------------------|
//! | `regs.ext.gdpr`          | `regs.gdpr`       |
//! | `regs.ext.us_privacy`    | `regs.us_privacy` |
//! | `user.ext.consent`       | `user.consent`    |
//! | `user.ext.eids`          | `user.eids`       |
//! | `source.ext.schain`      | `source.schain`   |
//!
//! When both places are set the 2.6 one wins; the 2.5 copy is removed either way (and an
//! `ext` left empty with it), so no network is sent two answers to one question.

use prost_types::Struct;
use serde_json::{Map, Value};

use crate::openrtb::v1::BidRequest;

/// One 2.5 place: `member` of `object.ext`, moved to `object.member`.
#[derive(Clone, Copy, Debug)]
pub struct Move {
    pub object: &'static str,
    pub member: &'static str,
    /// The 2.5 path, as errors name it.
    pub path: &'static str,
    kind: Kind,
}

/// What a moved value must be, as its 2.6 place takes it.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// 0 or 1.
    Flag,
    Text,
    List,
    Object,
}

impl Kind {
    fn fits(self, value: &Value) -> bool {
        value.is_null()
            || match self {
                Kind::Flag => value.as_i64().is_some_and(|v| v == 0 || v == 1),
                Kind::Text => value.is_string(),
                Kind::List => value.is_array(),
                Kind::Object => value.is_object(),
            }
    }

    fn problem(self) -> &'static str {
        match self {
            Kind::Flag => "must be 0 or 1",
            Kind::Text => "must be a string",
            Kind::List => "must be an array",
            Kind::Object => "must be an object",
        }
    }
}

/// The places moved.
pub const MOVES: &[Move] = &[
    Move {
        object: "regs",
        member: "gdpr",
        path: "regs.ext.gdpr",
        kind: Kind::Flag,
    },
    Move {
        object: "regs",
        member: "us_privacy",
        path: "regs.ext.us_privacy",
        kind: Kind::Text,
    },
    Move {
        object: "user",
        member: "consent",
        path: "user.ext.consent",
        kind: Kind::Text,
    },
    Move {
        object: "user",
        member: "eids",
        path: "user.ext.eids",
        kind: Kind::List,
    },
    Move {
        object: "source",
        member: "schain",
        path: "source.ext.schain",
        kind: Kind::Object,
    },
];

/// A 2.5 member whose value cannot stand in its 2.6 place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct UpgradeError {
    /// The member's path, e.g. `regs.ext.gdpr`.
    pub field: String,
    pub problem: &'static str,
}

/// Moves the 2.5 places of `document` (an OpenRTB request as JSON) to their 2.6 places;
/// returns the 2.5 paths that were read (moved, or dropped because the 2.6 place was
/// set).
pub fn upgrade(document: &mut Map<String, Value>) -> Result<Vec<&'static str>, UpgradeError> {
    let mut read = Vec::new();
    for place in MOVES {
        let Some(Value::Object(object)) = document.get_mut(place.object) else {
            continue;
        };
        let Some(Value::Object(ext)) = object.get_mut("ext") else {
            continue;
        };
        let Some(value) = ext.remove(place.member) else {
            continue;
        };
        if ext.is_empty() {
            object.remove("ext");
        }
        read.push(place.path);
        if !place.kind.fits(&value) {
            return Err(UpgradeError {
                field: place.path.to_string(),
                problem: place.kind.problem(),
            });
        }
        let unset = match object.get(place.member) {
            None | Some(Value::Null) => true,
            Some(Value::String(text)) => text.is_empty(),
            Some(Value::Array(list)) => list.is_empty(),
            Some(_) => false,
        };
        if unset && !value.is_null() {
            object.insert(place.member.to_string(), value);
        }
    }
    Ok(read)
}

/// Whether a typed request carries a 2.5 place (a cheap look, before any conversion).
pub fn has_25_places(request: &BidRequest) -> bool {
    MOVES.iter().any(|place| {
        let ext = match place.object {
            "regs" => request.regs.as_ref().and_then(|r| r.ext.as_ref()),
            "user" => request.user.as_ref().and_then(|u| u.ext.as_ref()),
            _ => request.source.as_ref().and_then(|s| s.ext.as_ref()),
        };
        ext.is_some_and(|ext: &Struct| ext.fields.contains_key(place.member))
    })
}

/// [`upgrade`] for a typed request: through its JSON form, only when it has a 2.5 place.
pub fn upgrade_typed(request: &mut BidRequest) -> Result<Vec<&'static str>, UpgradeError> {
    if !has_25_places(request) {
        return Ok(Vec::new());
    }
    let Ok(Value::Object(mut document)) = serde_json::to_value(&*request) else {
        return Err(UpgradeError {
            field: "request".into(),
            problem: "cannot be read as JSON",
        });
    };
    let read = upgrade(&mut document)?;
    *request = serde_json::from_value(Value::Object(document)).map_err(|_| UpgradeError {
        field: read.join(", "),
        problem: "does not fit its OpenRTB 2.6 place",
    })?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upgraded(document: Value) -> (Value, Vec<&'static str>) {
        let Value::Object(mut members) = document else {
            unreachable!()
        };
        let read = upgrade(&mut members).unwrap();
        (Value::Object(members), read)
    }

    #[test]
    fn the_25_places_move_to_26() {
        let (document, read) = upgraded(json!({
            "id": "r",
            "regs": {"ext": {"gdpr": 1, "us_privacy": "1YNN"}},
            "user": {"id": "u", "ext": {"consent": "CO-tc", "eids": [{"source": "a.com"}], "keep": 1}},
            "source": {"ext": {"schain": {"ver": "1.0", "complete": 1, "nodes": []}}}
        }));
        assert_eq!(
            document,
            json!({
                "id": "r",
                "regs": {"gdpr": 1, "us_privacy": "1YNN"},
                "user": {"id": "u", "consent": "CO-tc", "eids": [{"source": "a.com"}], "ext": {"keep": 1}},
                "source": {"schain": {"ver": "1.0", "complete": 1, "nodes": []}}
            })
        );
        assert_eq!(read.len(), 5);
    }

    #[test]
    fn the_26_place_wins_and_the_25_copy_goes() {
        let (document, _) = upgraded(json!({
            "regs": {"gdpr": 0, "ext": {"gdpr": 1}},
            "user": {"consent": "new", "ext": {"consent": "old"}}
        }));
        assert_eq!(
            document,
            json!({"regs": {"gdpr": 0}, "user": {"consent": "new"}})
        );
    }

    #[test]
    fn a_25_value_of_the_wrong_type_names_its_place() {
        let Value::Object(mut document) = json!({"regs": {"ext": {"gdpr": "yes"}}}) else {
            unreachable!()
        };
        assert_eq!(upgrade(&mut document).unwrap_err().field, "regs.ext.gdpr");
    }

    /// Each IAB OpenRTB 2.6 example request, with the signals in their 2.5 places,
    /// up-converts to the same example with them in their 2.6 places, and reads as the
    /// same typed request.
    #[test]
    fn the_iab_examples_in_25_shape_read_as_in_26_shape() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/openrtb26");
        let mut read = 0;
        for entry in std::fs::read_dir(&fixtures).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("bid-request-") {
                continue;
            }
            let example: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let (mut shaped_25, mut shaped_26) = (example.clone(), example);
            let eids = json!([{"source": "id5-sync.com", "uids": [{"id": "ID5*x", "atype": 1}]}]);
            let schain = json!({"ver": "1.0", "complete": 1, "nodes": [{"asi": "exchange.example", "sid": "1", "hp": 1}]});
            for (object, member, value) in [
                ("regs", "gdpr", json!(1)),
                ("regs", "us_privacy", json!("1YNN")),
                ("user", "consent", json!("CO-tc")),
                ("user", "eids", eids),
                ("source", "schain", schain),
            ] {
                let ext = shaped_25
                    .as_object_mut()
                    .unwrap()
                    .entry(object)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .unwrap()
                    .entry("ext")
                    .or_insert_with(|| json!({}));
                ext[member] = value.clone();
                shaped_26
                    .as_object_mut()
                    .unwrap()
                    .entry(object)
                    .or_insert_with(|| json!({}))[member] = value;
            }
            let (upgraded, moved) = upgraded(shaped_25);
            assert_eq!(upgraded, shaped_26, "{name}");
            assert_eq!(moved.len(), MOVES.len(), "{name}");
            let typed: BidRequest = serde_json::from_value(upgraded).unwrap();
            assert_eq!(
                typed,
                serde_json::from_value::<BidRequest>(shaped_26).unwrap(),
                "{name}"
            );
            read += 1;
        }
        assert_eq!(read, 6, "the six IAB example requests");
    }

    #[test]
    fn a_typed_request_is_upgraded_too() {
        let mut request: BidRequest = serde_json::from_value(json!({
            "id": "r", "imp": [{"id": "1"}],
            "regs": {"ext": {"gdpr": 1}},
            "user": {"ext": {"consent": "CO-tc", "eids": [{"source": "a.com", "uids": [{"id": "x"}]}]}}
        }))
        .unwrap();
        assert!(has_25_places(&request));
        upgrade_typed(&mut request).unwrap();
        assert_eq!(request.regs.as_ref().unwrap().gdpr, Some(1));
        let user = request.user.as_ref().unwrap();
        assert_eq!(user.consent, "CO-tc");
        assert_eq!(user.eids[0].uids[0].id, "x");
        assert!(user.ext.is_none());
        assert!(!has_25_places(&request));
    }
}
