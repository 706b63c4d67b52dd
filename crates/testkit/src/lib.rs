//! Real things for tests and the demo: fake ad networks that speak OpenRTB over HTTP,
//! service binaries started as processes on free ports, health waits, grpcurl and a DNS
//! server for names with several addresses.

pub mod dns;
pub mod fake_network;
pub mod grpcurl;
pub mod otlp;
pub mod process;
pub mod redis;
pub mod tls;

pub use dns::FakeDns;
pub use fake_network::{Behaviour, FakeNetworks, GRPC_NETWORK, Notice};
pub use otlp::{OtlpCollector, ReceivedSpan};
pub use process::{ServiceProcess, wait_until_serving};
pub use redis::{RedisCluster, RedisOptions, RedisServer};
pub use tls::TestCa;
