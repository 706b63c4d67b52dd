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

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
