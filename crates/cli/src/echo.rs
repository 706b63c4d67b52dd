//! `cascade echo-chain`: the benchmark baseline. A chain of bare tonic servers on
//! loopback, each forwarding every call to the next before answering, so one call makes
//! as many sequential gRPC hops as the chain is long, with none of Cascade's work.

use std::net::SocketAddr;

use anyhow::Context;
use cascade_proto::bench::v1::EchoMessage;
use cascade_proto::bench::v1::echo_client::EchoClient;
use cascade_proto::bench::v1::echo_server::{Echo, EchoServer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

#[derive(clap::Args)]
pub struct EchoChainArgs {
    /// Where the first server of the chain listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Servers in the chain: sequential hops per call.
    #[arg(long, default_value_t = 5)]
    hops: usize,
}

struct Hop {
    next: Option<EchoClient<Channel>>,
}

#[tonic::async_trait]
impl Echo for Hop {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        match &self.next {
            Some(next) => next.clone().echo(request.into_inner()).await,
            None => Ok(Response::new(request.into_inner())),
        }
    }
}

/// Starts the chain, prints `echo chain listening on ADDR`, serves until Ctrl-C.
pub async fn run(args: EchoChainArgs) -> anyhow::Result<()> {
    let mut next: Option<EchoClient<Channel>> = None;
    let mut servers = tokio::task::JoinSet::new();
    let mut first = None;
    for position in (0..args.hops.max(1)).rev() {
        let listen = if position == 0 {
            args.listen
        } else {
            SocketAddr::from(([127, 0, 0, 1], 0))
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let hop = Hop { next: next.take() };
        // As the services do: nodelay on every accepted connection (the builder's
        // setting does not reach a listener of ours).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        servers.spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(hop))
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        next = Some(EchoClient::new(channel));
        first = Some(addr);
    }
    if let Some(addr) = first {
        println!("echo chain listening on {addr}");
    }
    tokio::select! {
        () = cascade_server::shutdown::signal() => Ok(()),
        Some(result) = servers.join_next() => {
            result??;
            anyhow::bail!("an echo server stopped")
        }
    }
}
