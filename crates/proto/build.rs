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
];

/// OpenRTB objects that are left out of the JSON when absent, rather than sent as null.
const OPENRTB_OPTIONAL_OBJECTS: &[&str] = &[
    "BidRequest.site",
    "BidRequest.app",
    "BidRequest.device",
    "BidRequest.user",
    "Imp.banner",
    "Imp.video",
    "Imp.audio",
    "Imp.native",
    "Imp.pmp",
    "Site.publisher",
    "App.publisher",
    "Device.geo",
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

    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The OpenRTB messages keep OpenRTB's field names, so serde turns them into the
        // JSON that OpenRTB networks speak, with no hand-written mirror types.
        .type_attribute(
            ".cascade.openrtb.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    for field in OPENRTB_OPTIONAL_OBJECTS {
        builder = builder.field_attribute(
            format!(".cascade.openrtb.v1.{field}"),
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        );
    }
    builder.compile_fds(file_descriptors)?;
    Ok(())
}
