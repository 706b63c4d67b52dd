//! The admin API: the protobuf contract's conversions to and from the configuration
//! types, and the `cascade.admin.v1.Admin` service that bid-intake serves.

pub mod convert;
mod service;

pub use service::{AdminError, AdminService, BearerToken, MAX_MESSAGE_BYTES};
