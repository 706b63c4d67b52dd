//! The decision log's JSON form beyond serde's derive: an enumeration field (an `i32` in
//! prost) is written as its name, as protobuf's own JSON mapping does, and read from its
//! name or its number.

macro_rules! enum_by_name {
    ($module:ident, $enum:path) => {
        pub mod $module {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
                match <$enum>::try_from(*value) {
                    Ok(known) => serializer.serialize_str(known.as_str_name()),
                    // A value this build does not know is kept as its number.
                    Err(_) => serializer.serialize_i32(*value),
                }
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<i32, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum NameOrNumber {
                    Name(String),
                    Number(i32),
                }
                match NameOrNumber::deserialize(deserializer)? {
                    NameOrNumber::Number(number) => Ok(number),
                    NameOrNumber::Name(name) => <$enum>::from_str_name(&name)
                        .map(|known| known as i32)
                        .ok_or_else(|| serde::de::Error::custom(format!("unknown value {name:?}"))),
                }
            }
        }
    };
}

enum_by_name!(source_kind, crate::decision::v1::SourceKind);
enum_by_name!(attempt_outcome, crate::decision::v1::AttemptOutcome);
enum_by_name!(execution_mode, crate::decision::v1::ExecutionMode);
enum_by_name!(no_fill_reason, crate::decision::v1::NoFillReason);
