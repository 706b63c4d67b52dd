//! The JSON form of the OpenRTB messages: what serde needs beyond its derive, and the
//! conversion between `google.protobuf.Struct` (how `ext` objects travel in protobuf)
//! and JSON.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value as Json};

/// A field equal to its default (None, empty, zero) is left out of the JSON: in OpenRTB
/// an omitted field means unknown, and presence of scalars is kept by `Option`.
pub fn is_absent<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A member sent as `null` reads as unset, as when it is left out.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A bid price as a JSON number or as a numeric string (`"2.5"`), as many networks send
/// it.
pub fn price<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Price {
        Number(f64),
        Text(String),
    }
    match Option::<Price>::deserialize(deserializer)? {
        None => Ok(0.0),
        Some(Price::Number(price)) => Ok(price),
        Some(Price::Text(text)) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| serde::de::Error::custom(format!("price {text:?} is not a number"))),
    }
}

/// serde for an `ext` field: a JSON object in, the same JSON object out.
pub mod ext {
    use super::*;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(
        ext: &Option<Struct>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match ext {
            Some(ext) => serde::Serialize::serialize(&struct_to_json(ext), serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Struct>, D::Error> {
        match Option::<Json>::deserialize(deserializer)? {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Object(members)) => Ok(Some(json_to_struct(members))),
            Some(_) => Err(serde::de::Error::custom("ext must be a JSON object")),
        }
    }
}

/// The member at `path` (names, outermost first) of an `ext` object, when every step
/// is an object that has it.
pub fn ext_member<'a>(ext: Option<&'a Struct>, path: &[&str]) -> Option<&'a Kind> {
    let (last, parents) = path.split_last()?;
    let mut object = ext?;
    for name in parents {
        match object.fields.get(*name)?.kind.as_ref()? {
            Kind::StructValue(inner) => object = inner,
            _ => return None,
        }
    }
    object.fields.get(*last)?.kind.as_ref()
}

/// Whether a bid carries DSA transparency: `bid.ext.dsa`, an object.
pub fn declares_dsa(bid: &crate::openrtb::v1::Bid) -> bool {
    matches!(
        ext_member(bid.ext.as_ref(), &["dsa"]),
        Some(Kind::StructValue(_))
    )
}

/// The publisher account a bid request names, as sent: its site's `publisher.id`, else
/// its app's; empty when it names none.
pub fn publisher_id(request: &crate::openrtb::v1::BidRequest) -> &str {
    let site = request.site.as_ref().and_then(|s| s.publisher.as_ref());
    let app = request.app.as_ref().and_then(|a| a.publisher.as_ref());
    site.or(app).map_or("", |publisher| publisher.id.as_str())
}

/// Whether a request requires DSA transparency of every ad:
/// `regs.ext.dsa.dsarequired` is 2 (required) or 3 (required, the publisher is an online
/// platform).
pub fn requires_dsa(request: &crate::openrtb::v1::BidRequest) -> bool {
    let ext = request.regs.as_ref().and_then(|regs| regs.ext.as_ref());
    matches!(
        ext_member(ext, &["dsa", "dsarequired"]),
        Some(Kind::NumberValue(n)) if *n == 2.0 || *n == 3.0
    )
}

/// A `Struct` as the JSON object it stands for. Integral numbers come back as integers
/// (`Struct` holds every number as a double), so `{"zone": 123}` is not sent as `123.0`,
/// which strict parsers of integer fields refuse.
pub fn struct_to_json(value: &Struct) -> Map<String, Json> {
    value
        .fields
        .iter()
        .map(|(name, value)| (name.clone(), value_to_json(value)))
        .collect()
}

pub fn json_to_struct(members: Map<String, Json>) -> Struct {
    Struct {
        fields: members
            .into_iter()
            .map(|(name, value)| (name, json_to_value(value)))
            .collect(),
    }
}

pub fn value_to_json(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(flag)) => Json::Bool(*flag),
        Some(Kind::NumberValue(number)) => number_to_json(*number),
        Some(Kind::StringValue(text)) => Json::String(text.clone()),
        Some(Kind::StructValue(members)) => Json::Object(struct_to_json(members)),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
    }
}

pub fn json_to_value(value: Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(flag) => Kind::BoolValue(flag),
        Json::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        Json::String(text) => Kind::StringValue(text),
        Json::Array(values) => Kind::ListValue(ListValue {
            values: values.into_iter().map(json_to_value).collect(),
        }),
        Json::Object(members) => Kind::StructValue(json_to_struct(members)),
    };
    Value { kind: Some(kind) }
}

/// Largest integer a double holds exactly (2^53).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

fn number_to_json(number: f64) -> Json {
    if number.fract() == 0.0 && number.abs() <= EXACT_INTEGER_LIMIT {
        Json::Number(Number::from(number as i64))
    } else {
        Number::from_f64(number).map_or(Json::Null, Json::Number)
    }
}

#[cfg(test)]
mod tests {
    use crate::openrtb::v1::{Bid, BidRequest};
    use serde_json::json;

    #[test]
    fn unset_fields_are_left_out_and_zeros_that_were_set_are_kept() {
        let request: BidRequest = serde_json::from_value(json!({
            "id": "r", "device": {"dnt": 0, "geo": {"country": "DEU"}}, "imp": [{"id": "1"}]
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"id": "r", "device": {"dnt": 0, "geo": {"country": "DEU"}}, "imp": [{"id": "1"}]})
        );
    }

    #[test]
    fn ext_objects_round_trip_with_integers_kept_integral() {
        let document = json!({
            "id": "r",
            "imp": [{"id": "1", "ext": {"prebid": {"bidder": {"x": {"zone": 123, "ratio": 0.5}}}}}],
            "ext": {"list": [1, "a", true, null, {"deep": -7}]}
        });
        let request: BidRequest = serde_json::from_value(document.clone()).unwrap();
        assert_eq!(serde_json::to_value(&request).unwrap(), document);
    }

    #[test]
    fn ext_that_is_not_an_object_is_refused() {
        let refused = serde_json::from_value::<BidRequest>(json!({"id": "r", "ext": [1]}));
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("ext must be a JSON object")
        );
    }

    #[test]
    fn null_members_read_as_unset() {
        let bid: Bid = serde_json::from_value(json!({
            "id": "b", "price": 1.0, "nurl": null, "adomain": null, "w": null, "ext": null
        }))
        .unwrap();
        assert_eq!(
            (bid.nurl.as_str(), bid.adomain.len(), bid.w, bid.ext),
            ("", 0, None, None)
        );
    }

    #[test]
    fn prices_are_read_from_numbers_and_numeric_strings() {
        let bid: Bid = serde_json::from_value(json!({"id": "b", "price": "2.5"})).unwrap();
        assert_eq!(bid.price, 2.5);
        let bid: Bid = serde_json::from_value(json!({"id": "b", "price": 3})).unwrap();
        assert_eq!(bid.price, 3.0);
        assert!(serde_json::from_value::<Bid>(json!({"price": "cheap"})).is_err());
    }
}
