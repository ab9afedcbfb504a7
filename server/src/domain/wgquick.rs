//! External clients' wg-quick config files.

use std::net::IpAddr;

use ipnet::IpNet;

use super::config::host_prefixes;
use super::crypto::PrivateKey;
use super::error::{Error, Result};
use super::ext_client::ExtClient;
use super::network::Network;
use super::node::Node;

/// What an external client routes into the tunnel: the network's ranges and
/// every egress range in the network, merged (so an internet gateway makes it
/// `0.0.0.0/0, ::/0`).
pub fn ext_client_allowed_ips<'a>(
    network: &Network,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Vec<IpNet> {
    let mut all: Vec<IpNet> = network.ranges().collect();
    for n in nodes {
        if let Some(e) = &n.egress {
            all.extend(e.routed().copied());
        }
    }
    let mut merged = IpNet::aggregate(&all);
    // IPv4 first, then IPv6; each ascending.
    merged.sort_by_key(|n| (matches!(n, IpNet::V6(_)), *n));
    merged
}

/// The DNS servers a client is told to use: its own, else its ingress
/// gateway's, else the network's default.
pub fn ext_client_dns<'a>(
    network: &'a Network,
    ingress: &'a Node,
    client: &'a ExtClient,
) -> &'a [IpAddr] {
    if !client.dns.is_empty() {
        &client.dns
    } else if let Some(i) = ingress
        .ingress
        .as_ref()
        .filter(|i| !i.ext_client_dns.is_empty())
    {
        &i.ext_client_dns
    } else {
        &network.ext_client_dns
    }
}

/// Renders the client's wg-quick file. With no private key (the caller
/// supplied the public key) the file has a placeholder to fill in.
pub fn render(
    network: &Network,
    nodes: &[Node],
    client: &ExtClient,
    private_key: Option<&PrivateKey>,
) -> Result<String> {
    let ingress = nodes
        .iter()
        .find(|n| n.id == client.ingress_node_id)
        .ok_or_else(|| Error::not_found("node", &client.ingress_node_id))?;
    let endpoint = ingress.endpoint.as_ref().ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "ingress node {:?} has no endpoint, so clients cannot reach it; set its endpoint first",
            ingress.name.as_str()
        ))
    })?;
    let join = |v: Vec<String>| v.join(", ");
    let mut out = String::new();
    out.push_str(&format!(
        "# meshplane external client {:?} of network {:?}\n",
        client.name.as_str(),
        network.name.as_str()
    ));
    out.push_str("[Interface]\n");
    out.push_str(&format!(
        "Address = {}\n",
        join(
            host_prefixes(client.address, client.address6)
                .iter()
                .map(ToString::to_string)
                .collect()
        )
    ));
    match private_key {
        Some(k) => out.push_str(&format!("PrivateKey = {}\n", k.to_base64())),
        None => out.push_str("PrivateKey = <paste your private key>\n"),
    }
    let dns = ext_client_dns(network, ingress, client);
    if !dns.is_empty() {
        out.push_str(&format!(
            "DNS = {}\n",
            join(dns.iter().map(ToString::to_string).collect())
        ));
    }
    out.push_str(&format!("MTU = {}\n", network.mtu));
    out.push_str("\n[Peer]\n");
    out.push_str(&format!("PublicKey = {}\n", ingress.public_key));
    out.push_str(&format!("Endpoint = {endpoint}\n"));
    out.push_str(&format!(
        "AllowedIPs = {}\n",
        join(
            ext_client_allowed_ips(network, nodes)
                .iter()
                .map(ToString::to_string)
                .collect()
        )
    ));
    if network.keepalive > 0 {
        out.push_str(&format!("PersistentKeepalive = {}\n", network.keepalive));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::tests::{client, network, node};
    use crate::domain::node::{Egress, Endpoint, Ingress};

    #[test]
    fn vpn_config_routes_everything_and_uses_the_dns() {
        let mut server = node("server", 1);
        server.endpoint = Some(Endpoint::parse("e", "vpn.example.com:51821").unwrap());
        server.ingress = Some(Ingress {
            ext_client_dns: vec!["10.101.0.1".parse().unwrap()],
        });
        server.egress = Some(Egress {
            ranges: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            interface: "eth0".into(),
            nat: true,
            ..Default::default()
        });
        let c = client("phone", &server, 9);
        let k = PrivateKey::generate();
        let text = render(&network(), &[server.clone()], &c, Some(&k)).unwrap();
        assert!(text.contains("AllowedIPs = 0.0.0.0/0, ::/0\n"), "{text}");
        assert!(text.contains("DNS = 10.101.0.1\n"), "{text}");
        assert!(text.contains(&format!("PrivateKey = {}\n", k.to_base64())));
        assert!(text.contains("Endpoint = vpn.example.com:51821\n"));
        assert!(text.contains("Address = 10.101.1.9/32\n"));
        assert!(text.contains("PersistentKeepalive = 20\n"));
        assert!(text.contains("MTU = 1420\n"));
    }

    #[test]
    fn dns_precedence_and_placeholder() {
        let mut net = network();
        let mut server = node("server", 1);
        server.endpoint = Some(Endpoint::parse("e", "1.2.3.4:51821").unwrap());
        server.ingress = Some(Ingress::default());
        let mut c = client("phone", &server, 9);
        let text = render(&net, &[server.clone()], &c, None).unwrap();
        assert!(!text.contains("DNS ="), "no DNS anywhere: omitted");
        assert!(text.contains("PrivateKey = <paste your private key>"));
        assert!(
            text.contains("AllowedIPs = 10.101.0.0/16, fd00:101::/64\n"),
            "{text}"
        );
        net.ext_client_dns = vec!["9.9.9.9".parse().unwrap()];
        assert!(
            render(&net, &[server.clone()], &c, None)
                .unwrap()
                .contains("DNS = 9.9.9.9\n")
        );
        server.ingress = Some(Ingress {
            ext_client_dns: vec!["8.8.8.8".parse().unwrap()],
        });
        assert!(
            render(&net, &[server.clone()], &c, None)
                .unwrap()
                .contains("DNS = 8.8.8.8\n")
        );
        c.dns = vec!["1.1.1.1".parse().unwrap()];
        assert!(
            render(&net, &[server], &c, None)
                .unwrap()
                .contains("DNS = 1.1.1.1\n")
        );
    }

    #[test]
    fn no_endpoint_is_a_failed_precondition() {
        let mut server = node("server", 1);
        server.ingress = Some(Ingress::default());
        let c = client("phone", &server, 9);
        assert!(matches!(
            render(&network(), &[server], &c, None),
            Err(Error::FailedPrecondition(_))
        ));
    }
}
