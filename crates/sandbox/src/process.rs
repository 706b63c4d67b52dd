//! Service binaries as real processes: started with a settings file on a free port (they
//! bind port 0 and print the address they got), awaited through gRPC health, killed on
//! drop.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The environment variable of the `outbound.allow_private` setting.
const OUTBOUND_ALLOW_PRIVATE: &str = "CASCADE__OUTBOUND__ALLOW_PRIVATE";

/// A running service binary.
pub struct ServiceProcess {
    pub name: String,
    pub addr: SocketAddr,
    /// Where it serves Prometheus metrics, once it has said so.
    metrics_addr: std::sync::Arc<std::sync::OnceLock<SocketAddr>>,
    child: Child,
    _settings: tempfile::NamedTempFile,
}

/// Where cargo put the workspace's binaries: next to the `deps` folder of the running
/// test executable (`target/<profile>/`).
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    profile_dir.join(name)
}

impl ServiceProcess {
    /// Starts `binary` with `settings` (TOML) and waits until it prints its address and
    /// answers health with SERVING.
    pub async fn start(binary: &str, settings: &str) -> std::io::Result<Self> {
        Self::start_with_env(binary, settings, &[]).await
    }

    /// [`ServiceProcess::start`] with extra environment variables (e.g. `OTEL_*`).
    pub async fn start_with_env(
        binary: &str,
        settings: &str,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        Self::start_binary(&binary_path(binary), settings, env).await
    }

    /// Starts the service binary at `path` (e.g. next to the running `cascade`) and
    /// waits until it answers health with SERVING.
    pub async fn start_binary(
        path: &std::path::Path,
        settings: &str,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let process = Self::spawn_binary(path, settings, env).await?;
        wait_until_serving(process.addr, "", Duration::from_secs(30)).await?;
        Ok(process)
    }

    /// [`ServiceProcess::start`] inside the network namespace `netns` (a test host, as
    /// `cascade_testkit::Host` makes): `ip netns exec` runs the binary in place of
    /// itself, so the process is the service's own.
    pub async fn start_in(netns: &str, binary: &str, settings: &str) -> std::io::Result<Self> {
        let process = Self::spawn_command(Some(netns), &binary_path(binary), settings, &[]).await?;
        wait_until_serving(process.addr, "", Duration::from_secs(30)).await?;
        Ok(process)
    }

    /// Starts `binary` and returns once it listens, serving or not (a service waiting
    /// for its state store answers health NOT_SERVING).
    pub async fn spawn(binary: &str, settings: &str) -> std::io::Result<Self> {
        Self::spawn_binary(&binary_path(binary), settings, &[]).await
    }

    async fn spawn_binary(
        path: &std::path::Path,
        settings: &str,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        Self::spawn_command(None, path, settings, env).await
    }

    async fn spawn_command(
        netns: Option<&str>,
        path: &std::path::Path,
        settings: &str,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let binary = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(settings.as_bytes())?;
        let path = path.to_path_buf();
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        // The services that send requests out (network calls, notices) talk to fake
        // networks on loopback here, as in `cascade up`: loopback is allowed unless the
        // caller says otherwise.
        if matches!(binary.as_str(), "network-caller" | "bid-intake")
            && !env.iter().any(|(key, _)| *key == OUTBOUND_ALLOW_PRIVATE)
        {
            command.env(OUTBOUND_ALLOW_PRIVATE, "127.0.0.0/8,::1/128");
        }
        let mut child = command
            .arg("--settings")
            .arg(file.path())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start {}: {e}", path.display()))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line
                    .rsplit("listening on ")
                    .next()
                    .and_then(|a| a.trim().parse().ok())
                {
                    return Ok(addr);
                }
            }
            Err(std::io::Error::other(format!(
                "{binary} exited before listening"
            )))
        })
        .await
        .map_err(|_| std::io::Error::other(format!("{binary} did not start in 30 s")))??;
        // Keep draining stdout so the child never blocks on a full pipe, noting the
        // metrics address when it is printed.
        let metrics_addr = std::sync::Arc::new(std::sync::OnceLock::new());
        let noted = metrics_addr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line
                    .strip_prefix("metrics at http://")
                    .and_then(|rest| rest.strip_suffix("/metrics"))
                    .and_then(|addr| addr.parse().ok())
                {
                    let _ = noted.set(addr);
                }
            }
        });
        Ok(Self {
            name: binary.to_string(),
            addr,
            metrics_addr,
            child,
            _settings: file,
        })
    }

    /// The operating system's id of the process.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The Prometheus text its `GET /metrics` answers (when `grpc.metrics_listen` is set).
    pub async fn metrics(&self) -> std::io::Result<String> {
        let (status, body) = self.http_get("/metrics").await?;
        if status != 200 {
            return Err(std::io::Error::other(format!("GET /metrics: {status}")));
        }
        Ok(body)
    }

    /// The status and body its metrics endpoint answers to `GET path` (`/ready`, ...).
    pub async fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let addr = loop {
            if let Some(addr) = self.metrics_addr.get() {
                break *addr;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{} printed no metrics address",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("GET {path}: {head}")))?;
        Ok((status, body.to_string()))
    }

    /// Sends SIGKILL (no chance to drain or say goodbye) and waits for the process to exit.
    pub async fn kill(mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// Kills the process (as a crash would) and waits for it, keeping the handle.
    pub async fn kill_in_place(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// Sends SIGSTOP: the process hangs, its sockets open, its kernel still accepting
    /// connections and acknowledging bytes. [`ServiceProcess::resume`] undoes it.
    pub fn pause(&self) -> std::io::Result<()> {
        signal(self.child.id(), "-STOP")
    }

    /// Sends SIGCONT after [`ServiceProcess::pause`].
    pub fn resume(&self) -> std::io::Result<()> {
        signal(self.child.id(), "-CONT")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        signal(self.child.id(), "-TERM")?;
        self.child.wait().await
    }
}

/// Sends `signal` (`-STOP`, `-TERM`…) to the process `pid`, if it still runs.
pub fn signal(pid: Option<u32>, signal: &str) -> std::io::Result<()> {
    let Some(pid) = pid else {
        return Ok(());
    };
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "kill {signal} {pid}: {status}"
        )));
    }
    Ok(())
}

/// Polls `grpc.health.v1.Health/Check` for `service` until it answers SERVING.
pub async fn wait_until_serving(
    addr: SocketAddr,
    service: &str,
    within: Duration,
) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if health(addr, service).await == Some(ServingStatus::Serving) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "{addr} not SERVING within {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The health status of `service` at `addr`, or `None` when it cannot be asked.
pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}
