//! A node's config as a wg-quick file, so a gateway host can be brought up
//! with `wg-quick up` before (or without) an agent. The firewall goes in
//! side files fed to `iptables-restore --noflush`; the hooks into the
//! built-in chains are installed once (`-C || -I`) and removed on down.

use std::path::Path;

use meshplane_sdk::proto as pb;

/// The files of one interface.
#[derive(Debug, PartialEq)]
pub struct Files {
    /// `<interface>.conf`: the wg-quick file.
    pub conf: String,
    /// `<interface>.iptables`: IPv4 rules, when any.
    pub iptables: Option<String>,
    /// `<interface>.ip6tables`: IPv6 rules, when any.
    pub ip6tables: Option<String>,
}

/// The interface name wg-quick derives from the file name.
pub fn interface_name(cfg: &pb::NodeConfig) -> String {
    cfg.interface
        .as_ref()
        .map(|i| i.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("mp-{}", cfg.network))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Renders `cfg` with `private_key`; the side files are referenced in `dir`.
pub fn render(cfg: &pb::NodeConfig, private_key: &str, dir: &Path) -> Files {
    let name = interface_name(cfg);
    let mut c = format!(
        "# meshplane node {} in network {}, config revision {}.\n\
         # Written by `meshctl quickstart`; run it again to refresh.\n\
         [Interface]\nPrivateKey = {private_key}\n",
        cfg.node_id, cfg.network, cfg.revision
    );
    if let Some(i) = &cfg.interface {
        if !i.addresses.is_empty() {
            c.push_str(&format!("Address = {}\n", i.addresses.join(", ")));
        }
        if i.listen_port > 0 {
            c.push_str(&format!("ListenPort = {}\n", i.listen_port));
        }
        if i.mtu > 0 {
            c.push_str(&format!("MTU = {}\n", i.mtu));
        }
    }
    let fw = cfg.firewall.clone().unwrap_or_default();
    if fw.ipv4_forwarding {
        c.push_str("PostUp = sysctl -q -w net.ipv4.ip_forward=1\n");
    }
    if fw.ipv6_forwarding {
        c.push_str("PostUp = sysctl -q -w net.ipv6.conf.all.forwarding=1\n");
    }
    let file = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    let iptables = (!fw.iptables_restore.is_empty()).then(|| fw.iptables_restore.clone());
    let ip6tables = (!fw.ip6tables_restore.is_empty()).then(|| fw.ip6tables_restore.clone());
    if iptables.is_some() {
        c.push_str(&format!(
            "PostUp = iptables-restore --noflush < {}\n",
            sh_quote(&file("iptables"))
        ));
    }
    if ip6tables.is_some() {
        c.push_str(&format!(
            "PostUp = ip6tables-restore --noflush < {}\n",
            sh_quote(&file("ip6tables"))
        ));
    }
    for r in fw.rules.iter().filter(|r| r.hook) {
        let bin = if r.family == 6 {
            "ip6tables"
        } else {
            "iptables"
        };
        let rule = format!("-t {} {{}} {} {}", r.table, r.chain, r.rule);
        c.push_str(&format!(
            "PostUp = {bin} {} || {bin} {}\n",
            rule.replace("{}", "-C"),
            rule.replace("{}", "-I")
        ));
        c.push_str(&format!(
            "PostDown = {bin} {} || true\n",
            rule.replace("{}", "-D")
        ));
    }
    for p in &cfg.peers {
        c.push_str(&format!(
            "\n# {}\n[Peer]\nPublicKey = {}\n",
            p.name, p.public_key
        ));
        if !p.allowed_ips.is_empty() {
            c.push_str(&format!("AllowedIPs = {}\n", p.allowed_ips.join(", ")));
        }
        if !p.endpoint.is_empty() {
            c.push_str(&format!("Endpoint = {}\n", p.endpoint));
        }
        if p.persistent_keepalive > 0 {
            c.push_str(&format!(
                "PersistentKeepalive = {}\n",
                p.persistent_keepalive
            ));
        }
    }
    Files {
        conf: c,
        iptables,
        ip6tables,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_interface_firewall_hooks_and_peers() {
        let cfg = pb::NodeConfig {
            revision: 9,
            node_id: "n1".into(),
            network: "vpn".into(),
            interface: Some(pb::InterfaceConfig {
                name: "mp-vpn".into(),
                addresses: vec!["10.201.0.1/24".into(), "fd00:201::1/64".into()],
                listen_port: 51821,
                mtu: 1420,
            }),
            peers: vec![pb::Peer {
                public_key: "PK=".into(),
                allowed_ips: vec!["10.201.0.2/32".into(), "fd00:201::2/128".into()],
                name: "client-1".into(),
                ext_client: true,
                ..Default::default()
            }],
            firewall: Some(pb::FirewallConfig {
                ipv4_forwarding: true,
                ipv6_forwarding: false,
                rules: vec![pb::FirewallRule {
                    table: "filter".into(),
                    chain: "FORWARD".into(),
                    rule: "-j MESHPLANE-FWD".into(),
                    family: 4,
                    hook: true,
                }],
                iptables_restore: "*filter\nCOMMIT\n".into(),
                ip6tables_restore: String::new(),
            }),
            ..Default::default()
        };
        let f = render(&cfg, "PRIV=", Path::new("/st"));
        let want = "[Interface]\nPrivateKey = PRIV=\nAddress = 10.201.0.1/24, fd00:201::1/64\n\
                    ListenPort = 51821\nMTU = 1420\nPostUp = sysctl -q -w net.ipv4.ip_forward=1\n\
                    PostUp = iptables-restore --noflush < '/st/mp-vpn.iptables'\n\
                    PostUp = iptables -t filter -C FORWARD -j MESHPLANE-FWD || iptables -t filter -I FORWARD -j MESHPLANE-FWD\n\
                    PostDown = iptables -t filter -D FORWARD -j MESHPLANE-FWD || true\n\
                    \n# client-1\n[Peer]\nPublicKey = PK=\nAllowedIPs = 10.201.0.2/32, fd00:201::2/128\n";
        assert!(f.conf.ends_with(want), "{}", f.conf);
        assert_eq!(f.iptables.as_deref(), Some("*filter\nCOMMIT\n"));
        assert_eq!(f.ip6tables, None);
        assert_eq!(interface_name(&cfg), "mp-vpn");
    }
}
