//! A TCP relay that adds latency: what a store in another zone looks like. The kernel
//! here has no `sch_netem`, so the delay is made in user space: every chunk read from
//! one side is written to the other `delay` later, in order, both ways, without
//! holding back what follows it (a pipe that long, not a slow one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Relays connections made to [`DelayProxy::addr`] to its target, each byte `delay`
/// late in each direction (so a round trip costs twice the delay). Stops relaying on drop.
pub struct DelayProxy {
    pub addr: SocketAddr,
    delay_micros: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
}

impl DelayProxy {
    /// A relay to `target` on a free port of 127.0.0.1, with no delay yet.
    pub async fn start(target: SocketAddr) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let delay_micros = Arc::new(AtomicU64::new(0));
        let delay = delay_micros.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (from_client, to_client) = inbound.into_split();
                    let (from_target, to_target) = outbound.into_split();
                    tokio::join!(
                        relay(from_client, to_target, delay.clone()),
                        relay(from_target, to_client, delay),
                    );
                });
            }
        });
        Ok(DelayProxy {
            addr,
            delay_micros,
            accepting,
        })
    }

    /// Every byte relayed from now on arrives `delay` later (one way).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_micros.store(
            u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reading = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = from.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            let due = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
            if sender.send((due, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
    };
    let writing = async move {
        while let Some((due, chunk)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}
