//! Compiles every contract under `proto/` with protox (no system `protoc`), writes the
//! file descriptor set that gRPC reflection serves, and generates prost/tonic code.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../../proto";

const PROTO_FILES: &[&str] = &[
    "cascade/openrtb/v1/openrtb.proto",
    "cascade/decision/v1/decision.proto",
    "cascade/targeting/v1/targeting.proto",
    "cascade/auction/v1/auction.proto",
    "cascade/networkcaller/v1/network_caller.proto",
    "cascade/customnetwork/v1/custom_network.proto",
    "cascade/admin/v1/admin.proto",
    "cascade/bench/v1/echo.proto",
    "cascade/log/v1/log.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build does not emit this itself.
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let file_descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cascade_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;

    let builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The request document handed to network-caller is shared by its two calls.
        .bytes(".cascade.networkcaller.v1")
        // The OpenRTB messages keep OpenRTB's field names, so serde turns them into the
        // JSON that OpenRTB networks speak, with no hand-written mirror types. A field
        // that is unset (None, empty) is left out, never sent as null or zero.
        .type_attribute(
            ".cascade.openrtb.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .field_attribute(
            ".cascade.openrtb.v1",
            "#[serde(skip_serializing_if = \"crate::openrtb_json::is_absent\")]",
        );
    // The decision log's JSON form (`cascade log tail`): its fields by name, defaults left
    // out, as the OpenRTB messages it embeds.
    let builder = builder
        .type_attribute(
            ".cascade.log.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .field_attribute(
            ".cascade.log.v1",
            "#[serde(skip_serializing_if = \"crate::openrtb_json::is_absent\")]",
        )
        // The one message of another package the log embeds.
        .type_attribute(
            ".cascade.decision.v1.PrivacyVerdict",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .field_attribute(
            ".cascade.decision.v1.PrivacyVerdict",
            "#[serde(skip_serializing_if = \"crate::openrtb_json::is_absent\")]",
        );
    // Its enumerations are written by name.
    let mut builder = builder;
    for file in &file_descriptors.file {
        if file.package() != "cascade.log.v1" {
            continue;
        }
        for message in &file.message_type {
            for field in &message.field {
                let module = match field.type_name() {
                    ".cascade.decision.v1.SourceKind" => "source_kind",
                    ".cascade.decision.v1.AttemptOutcome" => "attempt_outcome",
                    ".cascade.decision.v1.ExecutionMode" => "execution_mode",
                    ".cascade.decision.v1.NoFillReason" => "no_fill_reason",
                    other if field.r#type() == prost_types::field_descriptor_proto::Type::Enum => {
                        return Err(format!(
                            "log.proto: {}.{} is an enumeration ({other}) with no JSON name mapping in crate::log_json",
                            message.name(),
                            field.name()
                        )
                        .into());
                    }
                    _ => continue,
                };
                builder = builder.field_attribute(
                    format!(".cascade.log.v1.{}.{}", message.name(), field.name()),
                    format!("#[serde(with = \"crate::log_json::{module}\")]"),
                );
            }
        }
    }
    // Every `ext` is a google.protobuf.Struct, whose JSON form is a plain JSON object; a
    // price may come as a string; any other member may come as `null`, which many
    // networks send for "not set".
    for file in &file_descriptors.file {
        if file.package() != "cascade.openrtb.v1" {
            continue;
        }
        for message in &file.message_type {
            for field in &message.field {
                let path = format!(".cascade.openrtb.v1.{}.{}", message.name(), field.name());
                let attribute = if field.type_name() == ".google.protobuf.Struct" {
                    "#[serde(with = \"crate::openrtb_json::ext\")]"
                } else if path == ".cascade.openrtb.v1.Bid.price" {
                    "#[serde(deserialize_with = \"crate::openrtb_json::price\")]"
                } else {
                    "#[serde(deserialize_with = \"crate::openrtb_json::null_as_default\")]"
                };
                builder = builder.field_attribute(path, attribute);
            }
        }
    }
    builder.compile_fds(file_descriptors)?;
    Ok(())
}
