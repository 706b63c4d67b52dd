//! Every Cascade contract as generated Rust code. Services and clients depend on this
//! crate only, never on `proto/` directly; it re-exports the tonic and prost versions
//! the code was generated for.

pub mod log_json;
pub mod openrtb25;
pub mod openrtb_json;

pub use prost;
pub use prost_types;
pub use tonic;

/// The encoded `FileDescriptorSet` of every contract, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cascade_descriptor.bin"));

pub mod openrtb {
    // OpenRTB's `content.len` (seconds) becomes a `len()` accessor that is not a size.
    #[allow(clippy::len_without_is_empty)]
    pub mod v1 {
        tonic::include_proto!("cascade.openrtb.v1");
    }
}

pub mod decision {
    pub mod v1 {
        tonic::include_proto!("cascade.decision.v1");
    }
}

pub mod targeting {
    pub mod v1 {
        tonic::include_proto!("cascade.targeting.v1");
    }
}

pub mod auction {
    pub mod v1 {
        tonic::include_proto!("cascade.auction.v1");
    }
}

pub mod networkcaller {
    pub mod v1 {
        tonic::include_proto!("cascade.networkcaller.v1");
    }
}

pub mod customnetwork {
    pub mod v1 {
        tonic::include_proto!("cascade.customnetwork.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("cascade.admin.v1");
    }
}

pub mod bench {
    pub mod v1 {
        tonic::include_proto!("cascade.bench.v1");
    }
}

pub mod log {
    pub mod v1 {
        tonic::include_proto!("cascade.log.v1");

        /// The schema version this build writes.
        pub const SCHEMA_VERSION: u32 = 1;
    }
}
