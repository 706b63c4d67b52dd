//! Real `redis-server` processes for tests: each on a free loopback port with its own
//! directory, stopped on drop; and a three-master Redis Cluster (with replicas or not)
//! made of them with `redis-cli --cluster create`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How a test server runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisOptions {
    /// Persist every write before acknowledging it (append-only file, fsync always), so
    /// a killed and restarted server still has everything it acknowledged.
    pub durable: bool,
    /// Run as a Redis Cluster node.
    pub cluster_node: bool,
    /// Over TLS, refuse a client that presents no certificate of the CA
    /// (`tls-auth-clients yes`).
    pub client_certificates: bool,
}

/// Where a server runs: the test's own namespace on loopback, or a test host.
#[derive(Clone, Debug)]
struct Place {
    bind: std::net::Ipv4Addr,
    /// The network namespace it runs in (`ip netns exec`), if not the test's.
    netns: Option<String>,
}

impl Default for Place {
    fn default() -> Self {
        Self {
            bind: std::net::Ipv4Addr::LOCALHOST,
            netns: None,
        }
    }
}

pub struct RedisServer {
    port: u16,
    place: Place,
    options: RedisOptions,
    /// Serving TLS only, with these files: (certificate, key, CA).
    tls: Option<Box<[std::path::PathBuf; 3]>>,
    child: Child,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a non-durable, standalone `redis-server` (from `$REDIS_SERVER` or `PATH`)
    /// and waits until it answers PING.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(RedisOptions::default()).await
    }

    /// Starts a server with `options`. A port taken between choosing and binding it is
    /// retried with another.
    pub async fn start_with(options: RedisOptions) -> std::io::Result<Self> {
        Self::start_serving(options, None, Place::default()).await
    }

    /// Starts a server with `options` in the network namespace `netns` (a test host, as
    /// `cascade_testkit::Host` makes), listening on its address `bind`.
    pub async fn start_in(
        netns: &str,
        bind: std::net::Ipv4Addr,
        options: RedisOptions,
    ) -> std::io::Result<Self> {
        let place = Place {
            bind,
            netns: Some(netns.to_string()),
        };
        Self::start_serving(options, None, place).await
    }

    /// Starts a standalone server that speaks TLS only (`rediss://`), with the
    /// certificate `ca` issued for `127.0.0.1`.
    pub async fn start_tls(ca: &crate::TestCa) -> std::io::Result<Self> {
        Self::start_tls_with(ca, RedisOptions::default()).await
    }

    /// As [`RedisServer::start_tls`], with `options`; a cluster node speaks TLS on its
    /// cluster bus and to its replicas too.
    pub async fn start_tls_with(
        ca: &crate::TestCa,
        options: RedisOptions,
    ) -> std::io::Result<Self> {
        let files = [
            ca.server_cert_file().to_path_buf(),
            ca.server_key_file().to_path_buf(),
            ca.ca_file().to_path_buf(),
        ];
        Self::start_serving(options, Some(Box::new(files)), Place::default()).await
    }

    async fn start_serving(
        options: RedisOptions,
        tls: Option<Box<[std::path::PathBuf; 3]>>,
        place: Place,
    ) -> std::io::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            // A host of its own has every port free; loopback is shared.
            let port = match place.netns {
                Some(_) => 6379,
                None => crate::free_loopback_port()?,
            };
            let dir = tempfile::tempdir()?;
            match spawn(port, &place, options, tls.as_deref(), &dir).await {
                Ok(child) => {
                    return Ok(Self {
                        port,
                        place,
                        options,
                        tls,
                        child,
                        dir,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}:{}", self.place.bind, self.port)
    }

    /// The server's process id, for signals (SIGSTOP: a Redis that hangs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Hangs the server (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) -> std::io::Result<()> {
        crate::process::signal(self.child.id(), "-STOP")
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> std::io::Result<()> {
        crate::process::signal(self.child.id(), "-CONT")
    }

    /// Kills the server as a crash would (SIGKILL); [`RedisServer::restart`] brings it
    /// back on the same port with the same directory.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// Starts the server again after [`RedisServer::kill`]: a durable one comes back
    /// with everything it acknowledged.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        let _ = self.child.kill().await;
        self.child = spawn(
            self.port,
            &self.place,
            self.options,
            self.tls.as_deref(),
            &self.dir,
        )
        .await?;
        Ok(())
    }

    /// Runs `redis-cli -p PORT args…` against this server (over TLS if it speaks it)
    /// and returns its output.
    pub async fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        let port = self.port.to_string();
        let mut all = vec!["-p", &port];
        all.extend(self.cli_tls());
        all.extend(args);
        redis_cli(&all).await
    }

    /// What `redis-cli` needs to speak TLS to this server, if it does.
    fn cli_tls(&self) -> Vec<&str> {
        match &self.tls {
            Some(files) => vec!["--tls", "--cacert", files[2].to_str().unwrap_or_default()],
            None => Vec::new(),
        }
    }
}

async fn spawn(
    port: u16,
    place: &Place,
    options: RedisOptions,
    tls: Option<&[std::path::PathBuf; 3]>,
    dir: &tempfile::TempDir,
) -> std::io::Result<Child> {
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());
    let mut command = match &place.netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, &binary]);
            command
        }
        None => Command::new(&binary),
    };
    match tls {
        None => command.args(["--port", &port.to_string()]),
        Some([cert, key, ca]) => command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .args([
                "--tls-auth-clients",
                if options.client_certificates {
                    "yes"
                } else {
                    "no"
                },
            ]),
    };
    command
        .args(["--bind", &place.bind.to_string(), "--save", ""])
        // Off loopback, a server without a password refuses every client unless told.
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path());
    if options.durable {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    if options.cluster_node && tls.is_some() {
        command.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
    }
    if options.cluster_node {
        command.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]);
    }
    let mut child = command
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
        // A TLS server is ready once it accepts connections; a plain one answers PING.
        let ready = match tls {
            None => ping(place.bind, port).await,
            Some(_) => tokio::net::TcpStream::connect((place.bind, port))
                .await
                .is_ok(),
        };
        if ready {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill().await;
    Err(std::io::Error::other(
        "redis-server did not answer PING within 10 s",
    ))
}

async fn redis_cli(args: &[&str]) -> std::io::Result<String> {
    let binary = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_string());
    let output = Command::new(&binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run {binary} (scripts/test installs it): {e}"),
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(std::io::Error::other(format!(
            "redis-cli {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// A Redis Cluster of three masters on loopback, each with `replicas` replicas, created
/// with `redis-cli --cluster create`, stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replica.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with_replicas(0).await
    }

    /// Three masters with `replicas` replicas each: a master killed is replaced by one of
    /// its replicas once the others have missed it for the node timeout (2 s).
    pub async fn start_with_replicas(replicas: usize) -> std::io::Result<Self> {
        Self::start_nodes(replicas, None).await
    }

    /// Three masters speaking TLS only (`rediss://`, the cluster bus too), with the
    /// certificate `ca` issued for `127.0.0.1`.
    pub async fn start_tls(ca: &crate::TestCa) -> std::io::Result<Self> {
        Self::start_nodes(0, Some(ca)).await
    }

    async fn start_nodes(replicas: usize, tls: Option<&crate::TestCa>) -> std::io::Result<Self> {
        let options = RedisOptions {
            cluster_node: true,
            ..Default::default()
        };
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            nodes.push(match tls {
                Some(ca) => RedisServer::start_tls_with(ca, options).await?,
                None => RedisServer::start_with(options).await?,
            });
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let replicas = replicas.to_string();
        let mut args = nodes[0].cli_tls();
        args.extend(["--cluster", "create"]);
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        redis_cli(&args).await?;
        let cluster = Self { nodes };
        cluster
            .wait_until_ok(
                &cluster.nodes.iter().collect::<Vec<_>>(),
                Duration::from_secs(20),
            )
            .await?;
        // A replica can take over only once it has synchronised with its master.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for node in &cluster.nodes {
            loop {
                let replication = node.cli(&["info", "replication"]).await?;
                if replication.contains("role:master")
                    || replication.contains("master_link_status:up")
                {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(std::io::Error::other(format!(
                        "a replica did not synchronise: {replication}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// Every node's URL, as the seed list of a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The index in [`RedisCluster::nodes`] of a node that is a master now.
    pub async fn a_master(&self) -> std::io::Result<usize> {
        for (index, node) in self.nodes.iter().enumerate() {
            if node
                .cli(&["info", "replication"])
                .await?
                .contains("role:master")
            {
                return Ok(index);
            }
        }
        Err(std::io::Error::other("the cluster has no master"))
    }

    /// Waits until every node of `nodes` says the cluster is ok (every slot served).
    pub async fn wait_until_ok(
        &self,
        nodes: &[&RedisServer],
        within: Duration,
    ) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        for node in nodes {
            loop {
                let info = node.cli(&["cluster", "info"]).await?;
                if info.contains("cluster_state:ok") {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(std::io::Error::other(format!(
                        "the cluster did not become ready: {info}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

async fn ping(host: std::net::Ipv4Addr, port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect((host, port)).await else {
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
