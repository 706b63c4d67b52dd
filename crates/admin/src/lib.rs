//! The admin API: the protobuf contract's conversions to and from the configuration
//! types, and the `cascade.admin.v1.Admin` and `Reports` services that bid-intake
//! serves.

pub mod convert;
pub mod fields;
mod reports;
mod service;
pub mod yaml;

pub use reports::{MAX_REPORT_DAYS, ReportService, row_to_proto};
pub use service::{AdminError, AdminService, BearerToken, MAX_MESSAGE_BYTES};
