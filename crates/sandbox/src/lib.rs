//! Cascade on one machine: the four services in one process, demo ad networks that speak
//! OpenRTB over HTTP (or HTTPS with a CA made at run time) and Cascade's gRPC
//! custom-network contract, service binaries started as processes on free ports and
//! awaited through health, and a `redis-server` on a free port. `cascade up` and `cascade bench` run on it; the tests reach it
//! through `cascade-testkit`.

pub mod cluster;
pub mod fake_network;
pub mod nats;
pub mod process;
pub mod redis;
pub mod tls;

pub use cluster::{ClusterError, ClusterSettings, InProcessCluster};
pub use fake_network::{Behaviour, FakeNetworks, GRPC_NETWORK, Notice};
pub use nats::NatsServer;
pub use process::{ServiceProcess, wait_until_serving};
pub use redis::{RedisCluster, RedisOptions, RedisServer};
pub use tls::TestCa;

/// A port free on 127.0.0.1 right now, for a server that takes its port as an argument
/// (a race with other processes is possible: callers retry with another when binding
/// fails).
pub(crate) fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
