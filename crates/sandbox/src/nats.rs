//! Real `nats-server` processes with JetStream for tests: each on a free loopback port
//! with its own store directory, stopped on drop, and restartable with what it stored.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

pub struct NatsServer {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js` (from `$NATS_SERVER`, `PATH` or `/usr/sbin`, where
    /// Debian's package puts it) and waits until it greets clients with JetStream on.
    pub async fn start() -> std::io::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            let port = crate::free_loopback_port()?;
            let dir = tempfile::tempdir()?;
            match spawn(port, &dir).await {
                Ok(child) => return Ok(Self { port, child, dir }),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("nats-server did not start")))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server as a crash would (SIGKILL).
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// Starts it again on the same port with the same store: what the stream
    /// acknowledged is still there.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        let _ = self.child.kill().await;
        self.child = spawn(self.port, &self.dir).await?;
        Ok(())
    }
}

fn binary() -> String {
    if let Ok(binary) = std::env::var("NATS_SERVER") {
        return binary;
    }
    let debian = "/usr/sbin/nats-server";
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file())
    });
    if !on_path && std::path::Path::new(debian).is_file() {
        debian.to_string()
    } else {
        "nats-server".to_string()
    }
}

async fn spawn(port: u16, dir: &tempfile::TempDir) -> std::io::Result<Child> {
    let mut child = Command::new(binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if greets_with_jetstream(port).await {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            return Err(std::io::Error::other(format!(
                "nats-server exited: {status}"
            )));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(std::io::Error::other(
                "nats-server did not answer within 10 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's first line to a client is `INFO {...}`, which says whether JetStream is on.
async fn greets_with_jetstream(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut greeting = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut greeting)).await;
    match read {
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&greeting[..n]);
            text.starts_with("INFO ") && text.contains("\"jetstream\":true")
        }
        _ => false,
    }
}
