//! The Cascade domain, pure and synchronous: no I/O, no async, no wire types. Services
//! translate their protobuf messages into these types (or implement
//! [`auction::Bidder`] for them) and keep every business rule here.

pub mod ad_quality;
pub mod address;
pub mod admission;
pub mod auction;
pub mod config;
pub mod config_error;
pub mod entity;
pub mod index;
pub mod money;
pub mod notice;
pub mod privacy;
pub mod report;
pub mod settings;
pub mod snapshot;
pub mod targeting;
pub mod tcf;
pub mod waterfall;

pub use money::Micros;
