//! Every rendered rule set is accepted by the real iptables-restore and
//! ip6tables-restore inside a throwaway network namespace, applies
//! idempotently, and NAT toggles really add and remove the MASQUERADE rule.

use meshplane_proto::v1 as pb;
use meshplane_tests::{Netns, TestServer, skip_privileged};

/// Applies a node's firewall in `ns` the way an agent does: restore the
/// chains with --noflush, then install each hook once.
fn apply(ns: &Netns, fw: &pb::FirewallConfig) {
    for (tool, text) in [
        ("iptables-restore", &fw.iptables_restore),
        ("ip6tables-restore", &fw.ip6tables_restore),
    ] {
        let (ok, out) = ns.run(&[tool, "--noflush", "--test"], text);
        assert!(ok, "{tool} --test rejected:\n{text}\n{out}");
        let (ok, out) = ns.run(&[tool, "--noflush"], text);
        assert!(ok, "{tool} failed:\n{text}\n{out}");
    }
    for h in fw.rules.iter().filter(|r| r.hook) {
        let bin = if h.family == 6 {
            "ip6tables"
        } else {
            "iptables"
        };
        let args: Vec<&str> = h.rule.split_whitespace().collect();
        let mut check = vec![bin, "-t", &h.table, "-C", &h.chain];
        check.extend(&args);
        if !ns.run(&check, "").0 {
            let mut insert = vec![bin, "-t", &h.table, "-I", &h.chain, "1"];
            insert.extend(&args);
            let (ok, out) = ns.run(&insert, "");
            assert!(ok, "installing hook {h:?}: {out}");
        }
    }
}

fn rules(ns: &Netns, bin: &str, table: &str) -> String {
    let (ok, out) = ns.run(&[bin, "-t", table, "-S"], "");
    assert!(ok, "{out}");
    out
}

#[tokio::test]
async fn rendered_rules_pass_iptables_restore_and_toggle_nat() {
    if skip_privileged("rendered_rules_pass_iptables_restore_and_toggle_nat") {
        return;
    }
    let s = TestServer::start().await;
    s.create_network("corp", "10.120.0.0/16", "fd00:120::/64")
        .await;
    let key = s.create_key(&["corp"], None).await.token;
    let server = s
        .node(&key, "corp", "server", Some("203.0.113.1:51821"))
        .await;
    let office = s.node(&key, "corp", "office", None).await;
    let plain = s.node(&key, "corp", "plain", None).await;
    s.ingress(&server.id, &[]).await.unwrap();
    s.egress(&server.id, &["0.0.0.0/0", "::/0"], "eth0", None)
        .await
        .unwrap();
    s.egress(
        &office.id,
        &["10.10.10.0/24", "fd10:10::/64"],
        "eth2",
        Some(true),
    )
    .await
    .unwrap();
    s.ext_client("corp", &server.id, "phone").await.unwrap();

    // Each node's rule set, in its own namespace.
    for n in [&server, &office, &plain] {
        let ns = Netns::new("fw");
        let fw = s.node_config(&n.id).await.firewall.unwrap();
        apply(&ns, &fw);
        // Re-applying changes nothing (no duplicated rules or hooks).
        let before = (
            rules(&ns, "iptables", "filter"),
            rules(&ns, "iptables", "nat"),
            rules(&ns, "ip6tables", "filter"),
            rules(&ns, "ip6tables", "nat"),
        );
        apply(&ns, &fw);
        let after = (
            rules(&ns, "iptables", "filter"),
            rules(&ns, "iptables", "nat"),
            rules(&ns, "ip6tables", "filter"),
            rules(&ns, "ip6tables", "nat"),
        );
        assert_eq!(before, after, "{} is not idempotent", n.name);
    }

    // NAT on, off, on again, applied for real in one namespace.
    let ns = Netns::new("nat");
    let masq4 = "-A MESHPLANE-POSTROUTING -s 10.120.0.0/16 -d 10.10.10.0/24 -o eth2 -j MASQUERADE";
    let fw = s.node_config(&office.id).await.firewall.unwrap();
    apply(&ns, &fw);
    let nat = rules(&ns, "iptables", "nat");
    assert!(nat.contains(masq4), "{nat}");
    assert!(
        nat.contains("-A POSTROUTING -j MESHPLANE-POSTROUTING"),
        "{nat}"
    );
    assert!(rules(&ns, "ip6tables", "nat").contains("-j MASQUERADE"));
    let filter = rules(&ns, "iptables", "filter");
    assert!(filter.contains("-A FORWARD -j MESHPLANE-FWD"), "{filter}");
    assert!(
        filter.contains("-A MESHPLANE-FWD -d 10.10.10.0/24 -i mp-corp -o eth2 -j ACCEPT"),
        "{filter}"
    );

    s.egress(
        &office.id,
        &["10.10.10.0/24", "fd10:10::/64"],
        "eth2",
        Some(false),
    )
    .await
    .unwrap();
    apply(&ns, &s.node_config(&office.id).await.firewall.unwrap());
    let nat = rules(&ns, "iptables", "nat");
    assert!(!nat.contains("MASQUERADE"), "NAT off left:\n{nat}");
    assert!(!rules(&ns, "ip6tables", "nat").contains("MASQUERADE"));
    assert!(rules(&ns, "iptables", "filter").contains("-d 10.10.10.0/24"));

    s.egress(
        &office.id,
        &["10.10.10.0/24", "fd10:10::/64"],
        "eth2",
        Some(true),
    )
    .await
    .unwrap();
    apply(&ns, &s.node_config(&office.id).await.firewall.unwrap());
    assert!(rules(&ns, "iptables", "nat").contains(masq4));

    // Deleting the gateway empties meshplane's chains.
    s.gateways()
        .await
        .delete_egress_gateway(pb::DeleteEgressGatewayRequest {
            node_id: office.id.clone(),
        })
        .await
        .unwrap();
    apply(&ns, &s.node_config(&office.id).await.firewall.unwrap());
    assert!(!rules(&ns, "iptables", "nat").contains("MASQUERADE"));
    assert!(!rules(&ns, "iptables", "filter").contains("-A MESHPLANE-FWD"));
}
