//! Creates a network, enrolls a node (keys generated here, as its agent
//! would) and makes it an egress gateway for an office LAN, then shows the
//! path a packet takes and the firewall the node receives.
//!
//! ```sh
//! cargo run --release -p meshplane-server --bin meshplane -- serve &
//! cargo run -p meshplane-sdk --example egress_gateway
//! ```
//!
//! Environment: `MESHPLANE_SERVER` (default `http://127.0.0.1:50051`),
//! `MESHPLANE_TOKEN` (default: the contents of `meshplane-data/admin.token`).

use meshplane_sdk::{Client, Code, agent::KeyPair, proto as pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server =
        std::env::var("MESHPLANE_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let token = match std::env::var("MESHPLANE_TOKEN") {
        Ok(t) => t,
        Err(_) => std::fs::read_to_string("meshplane-data/admin.token")?,
    };
    let client = Client::builder(server)
        .token(token.trim())
        .connect()
        .await?;

    // The network (kept when it exists already).
    let wanted = pb::Network {
        name: "example".into(),
        address_range: "10.199.0.0/24".into(),
        address_range6: "fd00:199::/64".into(),
        ..Default::default()
    };
    match client.networks().create(wanted).await {
        Ok(n) => println!("created network {} ({})", n.name, n.address_range),
        Err(e) if e.code() == Code::AlreadyExists => println!("network example exists"),
        Err(e) => {
            // Field violations name what to fix.
            for v in e.field_violations() {
                eprintln!("  {}: {}", v.field, v.description);
            }
            return Err(e.into());
        }
    }

    // A one-use enrollment key, and the node registering with it.
    let key = client
        .enrollment_keys()
        .create(pb::EnrollmentKey {
            networks: vec!["example".into()],
            uses_remaining: 1,
            description: "egress example".into(),
            ..Default::default()
        })
        .await?;
    let keys = KeyPair::generate();
    let name = format!("office-{}", std::process::id());
    let reg = client
        .agent()
        .register(pb::RegisterRequest {
            enrollment_key: key.token,
            network: "example".into(),
            name: name.clone(),
            public_key: keys.public_key().into(),
            endpoint: "198.51.100.7:51821".into(),
            os: std::env::consts::OS.into(),
            ..Default::default()
        })
        .await?;
    println!(
        "registered {name} as {} at {}",
        reg.node.id, reg.node.address
    );

    // The egress gateway: the office LAN through eth2, masqueraded.
    let node = client
        .gateways()
        .create_egress(pb::CreateEgressGatewayRequest {
            node_id: reg.node.id.clone(),
            ranges: vec!["10.10.10.0/24".into()],
            interface: "eth2".into(),
            nat_enabled: None,
            ..Default::default()
        })
        .await?;
    let egress = node.egress.unwrap_or_default();
    println!(
        "egress: {} via {} (nat: {})",
        egress.ranges.join(","),
        egress.interface,
        egress.nat_enabled
    );

    let route = client
        .gateways()
        .explain_route("example", &reg.node.id, "10.10.10.2")
        .await?;
    for hop in &route.hops {
        println!("  at {}: {}", hop.at, hop.action);
    }

    let cfg = client.nodes().config(&reg.node.id).await?;
    if let Some(fw) = cfg.firewall {
        println!(
            "iptables-restore input for {name}:\n{}",
            fw.iptables_restore
        );
    }
    Ok(())
}
