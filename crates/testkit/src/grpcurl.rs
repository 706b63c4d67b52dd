//! The real grpcurl binary, as an operator would use it (installed by `scripts/test`).

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// What one grpcurl run printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The JSON response (on success).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "grpcurl printed no JSON ({e}): {}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `grpcurl -plaintext [args…] -d @ ADDR METHOD` with `data` on stdin; reflection
/// provides the schema, and OpenRTB fields we do not model are ignored.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    data: &serde_json::Value,
    args: &[&str],
) -> std::io::Result<Output> {
    let mut child = tokio::process::Command::new(binary())
        .arg("-plaintext")
        .arg("-allow-unknown-fields")
        .args(args)
        .args(["-d", "@"])
        .arg(addr.to_string())
        .arg(method)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run grpcurl (run scripts/test to install it): {e}"),
            )
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    stdin.write_all(data.to_string().as_bytes()).await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    Ok(Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs grpcurl with plain arguments (e.g. `list`).
pub async fn run(args: &[&str]) -> std::io::Result<Output> {
    let output = tokio::process::Command::new(binary())
        .args(args)
        .output()
        .await?;
    Ok(Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `$GRPCURL`, else `grpcurl` from `PATH`.
fn binary() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_string())
}
