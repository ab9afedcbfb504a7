//! A minimal agent loop: register once (or reuse a node token), then follow
//! the node's config and report each revision as applied. A real agent would
//! configure WireGuard, routes and the firewall where this prints.
//!
//! ```sh
//! # register with an enrollment key:
//! MESHPLANE_ENROLLMENT_KEY=mpk_... cargo run -p meshplane-sdk --example agent -- corp laptop
//! # or run as an enrolled node:
//! MESHPLANE_NODE_TOKEN=mpn_... cargo run -p meshplane-sdk --example agent
//! ```
//!
//! Stop the server while it runs and start it again: the loop goes quiet,
//! then continues from the revision it held.

use futures::StreamExt;
use meshplane_sdk::{Client, agent::KeyPair, proto as pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server =
        std::env::var("MESHPLANE_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = Client::builder(server).connect_lazy()?;

    let token = match std::env::var("MESHPLANE_NODE_TOKEN") {
        Ok(t) => t,
        Err(_) => {
            let key = std::env::var("MESHPLANE_ENROLLMENT_KEY")
                .map_err(|_| "set MESHPLANE_NODE_TOKEN or MESHPLANE_ENROLLMENT_KEY")?;
            let mut args = std::env::args().skip(1);
            let network = args.next().ok_or("usage: agent NETWORK NAME")?;
            let name = args.next().ok_or("usage: agent NETWORK NAME")?;
            // The private key never leaves this host; a real agent keeps it
            // (and the node token) in a file only it can read.
            let keys = KeyPair::generate();
            let reg = client
                .agent()
                .register(pb::RegisterRequest {
                    enrollment_key: key,
                    network,
                    name,
                    public_key: keys.public_key().into(),
                    os: std::env::consts::OS.into(),
                    ..Default::default()
                })
                .await?;
            println!("registered node {} at {}", reg.node.id, reg.node.address);
            reg.node_token.expose().to_owned()
        }
    };

    let agent = client.agent().with_node_token(token);
    let mut configs = agent.watch_config(None);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = configs.next() => {
                let Some(cfg) = next else { break };
                let cfg = cfg?;
                println!(
                    "revision {}: {} peers, {} routes, firewall rules: {}",
                    cfg.revision,
                    cfg.peers.len(),
                    cfg.routes.len(),
                    cfg.firewall.as_ref().map_or(0, |f| f.rules.len()),
                );
                // ... apply it here, then:
                agent.report_status(cfg.revision, None).await?;
            }
        }
    }
    println!("stopped; stats: {:?}", configs.stats());
    Ok(())
}
