//! `meshctl agent`: the host agent. It registers the host as a node once,
//! follows the node's config over `WatchConfig` and applies it to the host
//! (WireGuard, addresses, routes, firewall), reporting each applied revision.
//!
//! The rest of the CLI does not reach into this tree. Inside it:
//! - [`plan`] and [`desired`]: pure; what the host has + what the config
//!   wants → steps;
//! - `linux`: the thin executor (netlink, UAPI, iptables-restore, sysctl);
//! - [`state`]: the state directory.

pub mod desired;
#[cfg(target_os = "linux")]
mod linux;
pub mod plan;
pub mod state;

use std::{
    net::{IpAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Subcommand};

use crate::Outcome;

/// The host agent.
#[derive(Subcommand)]
pub enum AgentCmd {
    /// Registers this host (first run), then applies the node's config as it
    /// changes, until stopped. SIGTERM/SIGINT leave the dataplane up.
    Run(RunArgs),
    /// Removes everything the agent applied: peers, addresses, routes,
    /// rules, firewall chains, and the interface when the agent made it.
    /// The identity stays, so a later `run` rejoins as the same node.
    Down(DownArgs),
}

/// `meshctl agent run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Network to join (first run; later runs check it).
    #[arg(long, env = "MESHCTL_AGENT_NETWORK")]
    pub network: Option<String>,
    /// Enrollment key (first run only).
    #[arg(long, env = "MESHCTL_ENROLLMENT_KEY", hide_env_values = true)]
    pub enrollment_key: Option<String>,
    /// Node name [default: the host name].
    #[arg(long, env = "MESHCTL_AGENT_NAME")]
    pub name: Option<String>,
    /// WireGuard interface to manage. Used as it is when it exists (kernel,
    /// or a userspace device); made otherwise (see --userspace).
    #[arg(long, env = "MESHCTL_AGENT_INTERFACE")]
    pub interface: String,
    /// host:port other nodes dial (first run; empty behind NAT).
    #[arg(long, env = "MESHCTL_AGENT_ENDPOINT")]
    pub endpoint: Option<String>,
    /// WireGuard listen port (first run) [default: the network's].
    #[arg(long, env = "MESHCTL_AGENT_LISTEN_PORT")]
    pub listen_port: Option<u16>,
    /// Directory for the identity (key pair, node token) and what was
    /// applied; files are mode 0600.
    #[arg(long, env = "MESHCTL_AGENT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Make a missing interface with this userspace implementation, run as
    /// `CMD IFNAME` (e.g. `wireguard-go`) [default: kernel WireGuard].
    #[arg(long, env = "MESHCTL_AGENT_USERSPACE")]
    pub userspace: Option<String>,
    /// Print the plan for the node's current config and exit, changing
    /// nothing on the host (registers first when there is no identity).
    #[arg(long)]
    pub dry_run: bool,
}

/// `meshctl agent down`.
#[derive(Args, Debug)]
pub struct DownArgs {
    /// The agent's state directory.
    #[arg(long, env = "MESHCTL_AGENT_STATE_DIR")]
    pub state_dir: PathBuf,
}

impl AgentCmd {
    /// Runs the command. `server` is the global `--server`, `client` a
    /// builder for it with the global TLS flags applied.
    pub async fn run(self, server: &str, client: meshplane_sdk::ClientBuilder) -> Outcome {
        init_logging();
        match self {
            AgentCmd::Run(a) => run::run(a, server, client).await,
            AgentCmd::Down(a) => run::down(a).await,
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHCTL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,defguard_wireguard_rs=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// The addresses of the server in `url` (http://host:port), for the
/// control path a full tunnel must spare.
pub fn server_addresses(url: &str) -> Vec<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority.starts_with('[') || authority.matches(':').count() == 1 {
        authority.to_owned()
    } else {
        let port = if url.starts_with("https") { 443 } else { 80 };
        format!("{authority}:{port}")
    };
    let mut v: Vec<IpAddr> = with_port
        .to_socket_addrs()
        .map(|i| i.map(|s| s.ip()).collect())
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// Retry delays after a failed apply: 1 s doubling to 60 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

#[cfg(target_os = "linux")]
mod run;

#[cfg(not(target_os = "linux"))]
mod run {
    use super::*;
    use crate::Failure;
    pub async fn run(_: RunArgs, _: &str, _: meshplane_sdk::ClientBuilder) -> Outcome {
        Err(Failure::Local("the agent runs on Linux only".into()))
    }
    pub async fn down(_: DownArgs) -> Outcome {
        Err(Failure::Local("the agent runs on Linux only".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_resolve_to_addresses() {
        assert_eq!(
            server_addresses("http://127.0.0.1:50051"),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            server_addresses("http://[::1]:50051/"),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(server_addresses("http://no-such-host.invalid:1").is_empty());
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(30), Duration::from_secs(60));
    }
}
