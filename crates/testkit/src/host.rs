//! Test hosts: network namespaces, each joined to the test's own namespace by a veth pair,
//! made with iproute2 by the test itself. A fault can then sit on the link between two
//! hosts — packets that vanish, with no reset and no refusal, which is what a dead node
//! or a partition looks like and what no loopback address can show.
//!
//! Needs `CAP_NET_ADMIN` (root) and `ip`; [`Host::unavailable`] says why not where they
//! are missing, so that tests can skip with the reason.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

/// Hosts made by this process so far: each gets its own subnet and names.
static MADE: AtomicU8 = AtomicU8::new(0);

/// A network namespace at `addr`, reached from the test's namespace through a veth pair
/// (the test's side at `.254` of the same /24). Deleted, with every process in it, on
/// drop.
pub struct Host {
    netns: String,
    pub addr: Ipv4Addr,
    /// The test's end of the pair, and the host's.
    outer: String,
    inner: String,
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let mut command = Command::new("ip");
    command.args(args);
    succeeded(command, "ip", args)
}

/// Runs `command` (`name args`), an error saying what it printed if it failed.
fn succeeded(mut command: Command, name: &str, args: &[&str]) -> std::io::Result<()> {
    let output = command.output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{name} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

impl Host {
    /// Why hosts cannot be made here (not root, no `ip`, namespaces refused), or `None`.
    pub fn unavailable() -> Option<String> {
        let probe = format!("cascade-probe-{}", std::process::id());
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                None
            }
            Err(error) => Some(format!("cannot make a network namespace: {error}")),
        }
    }

    /// A new host, up, its loopback up too.
    pub fn create() -> std::io::Result<Host> {
        let index = MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 10_000;
        // Interface names are at most 15 bytes.
        let tag = format!("cz{pid:04}h{index}");
        let subnet = [10, 200 + (pid % 50) as u8, index, 0];
        let addr = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        let outer_addr = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 254);
        let host = Host {
            netns: format!("cascade-{pid}-{index}"),
            addr,
            outer: format!("{tag}o"),
            inner: format!("{tag}i"),
        };
        ip(&["netns", "add", &host.netns])?;
        ip(&[
            "link",
            "add",
            &host.outer,
            "type",
            "veth",
            "peer",
            "name",
            &host.inner,
        ])?;
        ip(&["link", "set", &host.inner, "netns", &host.netns])?;
        ip(&[
            "addr",
            "add",
            &format!("{outer_addr}/24"),
            "dev",
            &host.outer,
        ])?;
        ip(&["link", "set", &host.outer, "up"])?;
        ip(&[
            "-n",
            &host.netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &host.inner,
        ])?;
        ip(&["-n", &host.netns, "link", "set", &host.inner, "up"])?;
        ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// The namespace's name, for `ip netns exec` (see `ServiceProcess::start_in`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's packets vanish: its end of the link goes down, so what is sent to it is
    /// dropped silently and nothing it sends arrives. Connections stay open on both sides.
    pub fn blackhole(&self) -> std::io::Result<()> {
        ip(&["-n", &self.netns, "link", "set", &self.inner, "down"])
    }

    /// Undoes [`Host::blackhole`] and [`Host::lose`].
    pub fn heal(&self) -> std::io::Result<()> {
        let _ = self.nft(&["delete", "table", "inet", LOSS_TABLE]);
        ip(&["-n", &self.netns, "link", "set", &self.inner, "up"])
    }

    /// Why loss cannot be made here (no `nft`), or `None`.
    pub fn loss_unavailable() -> Option<String> {
        match Command::new("nft").arg("--version").output() {
            Ok(output) if output.status.success() => None,
            _ => Some("no nft (Debian's nftables) to drop packets with".to_string()),
        }
    }

    /// Each packet the host sends or receives is dropped with probability `percent`/100
    /// (an nftables rule in its namespace: `numgen random`), as a lossy link does; TCP
    /// retransmits what is lost.
    pub fn lose(&self, percent: u8) -> std::io::Result<()> {
        let _ = self.nft(&["delete", "table", "inet", LOSS_TABLE]);
        self.nft(&["add", "table", "inet", LOSS_TABLE])?;
        // Only the link to the test's namespace loses: the host's own loopback does not.
        for (chain, hook, interface) in [
            ("incoming", "input", "iifname"),
            ("outgoing", "output", "oifname"),
        ] {
            self.nft(&[
                "add",
                "chain",
                "inet",
                LOSS_TABLE,
                chain,
                &format!("{{ type filter hook {hook} priority 0 ; }}"),
            ])?;
            self.nft(&[
                "add",
                "rule",
                "inet",
                LOSS_TABLE,
                chain,
                "meta",
                interface,
                "!=",
                "lo",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                &percent.to_string(),
                "drop",
            ])?;
        }
        Ok(())
    }

    fn nft(&self, args: &[&str]) -> std::io::Result<()> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns, "nft"])
            .args(args);
        succeeded(command, "nft", args)
    }
}

/// The nftables table [`Host::lose`] puts its rules in.
const LOSS_TABLE: &str = "cascade_loss";

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", &self.netns]);
        // Deleting the namespace deletes the pair with it; this is for a half-made host.
        let _ = ip(&["link", "del", &self.outer]);
    }
}
