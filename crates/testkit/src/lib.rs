//! Real things for tests: everything of `cascade-sandbox` (fake ad networks, service
//! processes, redis-server, a run-time CA), plus grpcurl, an OTLP collector, a DNS
//! server for names with several addresses and a relay that adds latency. A dev-dependency only: nothing shipped
//! links it.

pub mod delay;
pub mod dns;
pub mod grpcurl;
pub mod host;
pub mod otlp;

pub use cascade_sandbox::{fake_network, nats, process, redis, tls};

pub use cascade_sandbox::{
    Behaviour, ClusterSettings, FakeNetworks, GRPC_NETWORK, InProcessCluster, NatsServer, Notice,
    RedisCluster, RedisOptions, RedisServer, ServiceProcess, TestCa, wait_until_serving,
};
pub use delay::DelayProxy;
pub use dns::{FakeDns, LOOPBACK_HOSTS, port_free_on_every_loopback_host};
pub use host::Host;
pub use otlp::{Attribute, OtlpCollector, ReceivedSpan, SpanStatus};
