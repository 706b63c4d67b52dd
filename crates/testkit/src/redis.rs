//! A real `redis-server` for a test: its own process on a free loopback port, nothing
//! written to disk, stopped on drop.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub struct RedisServer {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` (from `$REDIS_SERVER` or `PATH`) and waits until it answers
    /// PING. A port taken between choosing and binding it is retried with another.
    pub async fn start() -> std::io::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(server) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// Starts `redis-server` on `port`, e.g. to bring a killed server back.
    pub async fn start_on(port: u16) -> std::io::Result<Self> {
        Self::try_start_on(port).await
    }

    async fn try_start() -> std::io::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::try_start_on(port).await
    }

    async fn try_start_on(port: u16) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());
        let mut child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot run {binary} (scripts/test installs it): {e}"),
                )
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "redis-server exited: {status}"
                )));
            }
            if ping(port).await {
                return Ok(Self {
                    port,
                    child,
                    _dir: dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill().await;
        Err(std::io::Error::other(
            "redis-server did not answer PING within 10 s",
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (as a crash would: SIGKILL).
    pub async fn kill(mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await,
        Ok(Ok(_))
    ) && &reply == b"+PONG\r\n"
}
