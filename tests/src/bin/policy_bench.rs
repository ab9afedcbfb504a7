//! Policy benchmark (issue #14): the time to compute every node's config in
//! a network of `--nodes` nodes under a `--rules`-rule policy, and what a
//! one-rule change costs: how many nodes' configs it changes and the time to
//! compute them again, and what the hub's state does with that change (the
//! nodes it reaches, their updates). Pure computation, in this process: the domain's own
//! functions (`PolicyIndex`, `all_pieces`, `node_config_with`), no server.
//!
//!   cargo run --release -p meshplane-tests --bin policy_bench -- --nodes 10000 --rules 200
//!
//! The network: `--nodes` nodes in 10.64.0.0/16, each with one of `--tags`
//! tags (round robin), `--gateways` of them egress gateways for a /24 of
//! 172.16.0.0/16 each. The policy: default DENY and `--rules` ALLOW rules,
//! rule r from `tag:t(r mod T)` to `tag:t((7r + 3) mod T)` (every fourth
//! rule to one gateway's range instead) on tcp/(1000 + r).

use std::time::Instant;

use clap::Parser;
use meshplane_server::domain::{
    config::{NetworkView, NodeConfig, Zone, node_config, node_config_with},
    event::{Action as EventAction, Event, Resource},
    network::NetworkInput,
    node::{Egress, RegistrationInput},
    policy::{Action, PolicyInput, RuleInput, parse_tags, prune::Reach},
    rules,
    sync::NetworkState,
};

#[derive(Parser)]
struct Args {
    /// Nodes in the network.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Rules of the policy.
    #[arg(long, default_value_t = 200)]
    rules: usize,
    /// Distinct tags.
    #[arg(long, default_value_t = 20)]
    tags: usize,
    /// Egress gateways among the nodes.
    #[arg(long, default_value_t = 10)]
    gateways: usize,
    /// Skip the allow-all baseline (a full mesh of 10,000 nodes holds
    /// 100,000,000 peer entries).
    #[arg(long)]
    no_baseline: bool,
}

fn view(args: &Args) -> NetworkView {
    let network = NetworkInput {
        name: "bench".into(),
        address_range: "10.64.0.0/16".into(),
        ..Default::default()
    }
    .validate(meshplane_server::domain::now())
    .expect("network");
    let now = meshplane_server::domain::now();
    let nodes = (0..args.nodes)
        .map(|i| {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let reg = RegistrationInput {
                network: "bench".into(),
                name: format!("n{i}"),
                public_key: base64_key(&key),
                ..Default::default()
            }
            .validate()
            .expect("registration");
            let addr = std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(10, 64, 0, 0)) + 1 + i as u32,
            );
            let mut n =
                rules::new_node(format!("id-{i:06}"), &reg, &network, Some(addr), None, now);
            n.tags = parse_tags("tags", &[format!("t{}", i % args.tags)]).expect("tag");
            if i < args.gateways {
                n.egress = Some(Egress {
                    ranges: vec![format!("172.16.{i}.0/24").parse().unwrap()],
                    interface: "eth1".into(),
                    nat: true,
                    ..Default::default()
                });
            }
            n
        })
        .collect();
    NetworkView {
        network,
        nodes,
        ext_clients: vec![],
        dns_entries: vec![],
        revision: 1,
        policy: Default::default(),
    }
}

fn base64_key(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn policy(args: &Args, changed: bool) -> meshplane_server::domain::policy::Policy {
    let t = args.tags;
    let rules = (0..args.rules)
        .map(|r| {
            let destination = if r % 4 == 3 && args.gateways > 0 {
                format!("172.16.{}.0/24", r % args.gateways)
            } else {
                // The one-rule change: rule 0 points at another tag.
                let d = if changed && r == 0 {
                    1
                } else {
                    (7 * r + 3) % t
                };
                format!("tag:t{d}")
            };
            RuleInput {
                name: format!("r{r}"),
                sources: vec![format!("tag:t{}", r % t)],
                destinations: vec![destination],
                protocols: vec![Some(
                    meshplane_server::domain::policy::traffic::Protocol::Tcp,
                )],
                ports: vec![(1000 + r).to_string()],
                action: Some(Action::Allow),
            }
        })
        .collect();
    PolicyInput {
        default_action: Some(Action::Deny),
        rules,
    }
    .validate()
    .expect("policy")
}

/// Every node's config under the view's policy, and how long it took
/// (resolving the policy included).
fn all_configs(view: &NetworkView) -> (Vec<NodeConfig>, f64, f64) {
    let start = Instant::now();
    let reach = Reach::of_view(view);
    let zone = Zone::of(view);
    let resolved = start.elapsed().as_secs_f64();
    let configs: Vec<NodeConfig> = view
        .nodes
        .iter()
        .map(|n| node_config_with(view, &reach, &zone, &n.id).expect("config"))
        .collect();
    (configs, resolved, start.elapsed().as_secs_f64())
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let args = Args::parse();
    let mut v = view(&args);
    println!(
        "# policy_bench: {} nodes, {} tags, {} gateways, {} rules (default DENY)",
        args.nodes, args.tags, args.gateways, args.rules
    );

    if !args.no_baseline {
        // Today's behaviour for comparison: allow-all, full mesh.
        let (open, _, open_s) = all_configs(&v);
        let open_peers: usize = open.iter().map(|c| c.peers.len()).sum();
        println!(
            "allow-all: every config in {:.2} s ({:.1} µs per node), {:.0} peers per config",
            open_s,
            open_s * 1e6 / args.nodes as f64,
            open_peers as f64 / args.nodes as f64
        );
        drop(open);
    }

    // The policy, and the same policy with one rule changed: each node's
    // config under both, compared and dropped at once (all 10,000 configs
    // of a large network held together would only measure this program).
    let mut changed_view = v.clone();
    v.policy = policy(&args, false);
    changed_view.policy = policy(&args, true);
    let start = Instant::now();
    let reach = Reach::of_view(&v);
    let resolved = start.elapsed().as_secs_f64();
    let reach2 = Reach::of_view(&changed_view);
    let zone = Zone::of(&v);
    let zone2 = Zone::of(&changed_view);
    let (mut took, mut again) = (resolved, 0.0);
    let (mut peers, mut fw, mut changed) = (0usize, 0usize, 0usize);
    for n in &v.nodes {
        let t = Instant::now();
        let a = node_config_with(&v, &reach, &zone, &n.id).expect("config");
        took += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = node_config_with(&changed_view, &reach2, &zone2, &n.id).expect("config");
        again += t.elapsed().as_secs_f64();
        peers += a.peers.len();
        fw += a.firewall.rules.len();
        if a.peers != b.peers || a.firewall != b.firewall || a.routes != b.routes {
            changed += 1;
        }
    }
    println!(
        "{}-rule policy: every config in {:.2} s ({:.1} µs per node; resolving the policy {:.3} s), \
         {:.1} peers and {:.1} firewall rules per config",
        args.rules,
        took,
        took * 1e6 / args.nodes as f64,
        resolved,
        peers as f64 / args.nodes as f64,
        fw as f64 / args.nodes as f64
    );
    println!(
        "one rule changed: {changed} of {} configs differ ({:.1} %); computing every config again \
         took {:.2} s",
        args.nodes,
        changed as f64 * 100.0 / args.nodes as f64,
        again
    );
    // The preview UpdatePolicy answers with: the flows that change (the
    // first 1,000 listed, all counted).
    let t = Instant::now();
    let (first, total) = meshplane_server::domain::policy::diff::flow_changes_within(
        &v,
        &v.policy,
        &changed_view.policy,
        1000,
    );
    println!(
        "the preview of that change: {total} flows change ({} listed) in {:.3} s",
        first.len(),
        t.elapsed().as_secs_f64()
    );
    hub_write(&v, &changed_view.policy);
    println!("peak RSS {:.0} MiB", rss_mib());
}

/// What one write costs the hub while the policy is in force: a node's
/// endpoint changes, and every node's stream is sent a snapshot, computed
/// from the network's state (one resolution of the policy per revision,
/// shared by the snapshots). For comparison, a sample of snapshots each
/// resolved on its own over a copy of the network (the hub's way before),
/// extrapolated to every node.
fn hub_write(v: &NetworkView, changed: &meshplane_server::domain::policy::Policy) {
    let mut state = NetworkState::from_view(v.clone());
    let Some(first) = v.nodes.first() else {
        return;
    };
    let mut moved = first.clone();
    moved.endpoint = Some(
        meshplane_server::domain::node::Endpoint::parse("endpoint", "198.51.100.9:51820")
            .expect("endpoint"),
    );
    let t = Instant::now();
    let affected = state.apply(&Event {
        revision: v.revision + 1,
        action: EventAction::Updated,
        resource: Resource::Node(Box::new(moved)),
        time: chrono::Utc::now(),
    });
    let applied = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut entries = 0usize;
    for n in &v.nodes {
        let c = state.snapshot(&n.id).expect("snapshot");
        entries += c.peers.len() + c.dns.records.len();
    }
    let shared = t.elapsed().as_secs_f64();
    // What the hub sends now: deltas to the nodes the write reaches.
    let t = Instant::now();
    let mut reached = 0usize;
    for n in v.nodes.iter().filter(|n| affected.contains(&n.id)) {
        reached += 1;
        let d = state
            .delta(&n.id, v.revision)
            .expect("a delta from the view's revision");
        std::hint::black_box(d);
    }
    let deltas = t.elapsed().as_secs_f64();
    let sample: Vec<&str> = v
        .nodes
        .iter()
        .step_by((v.nodes.len() / 10).max(1))
        .map(|n| n.id.as_str())
        .collect();
    let t = Instant::now();
    for id in &sample {
        let view = state.view();
        let _ = node_config(&view, id).expect("config");
    }
    let alone = t.elapsed().as_secs_f64() / sample.len() as f64;
    // A node joins (tagged like the first node), then its tags change:
    // what each costs the hub, and whom it reaches.
    let mut joined = first.clone();
    joined.id = "id-joined".into();
    joined.name =
        meshplane_server::domain::names::DnsLabel::parse("name", "joined", 63).expect("name");
    joined.public_key = meshplane_server::domain::node::WgKey([0xee; 32]);
    joined.address = Some(std::net::Ipv4Addr::new(10, 64, 255, 254));
    joined.address6 = None;
    joined.egress = None;
    joined.ingress = None;
    let mut retagged = joined.clone();
    retagged.tags = v.nodes.get(1).map(|n| n.tags.clone()).unwrap_or_default();
    // Then the one-rule change of the policy.
    let policy_change =
        Resource::Policy(Box::new(meshplane_server::domain::policy::NetworkPolicy {
            network: v.network.name.clone(),
            policy: changed.clone(),
            revision: 0,
            update_time: None,
        }));
    for (what, revision, action, resource) in [
        (
            "a node joins",
            v.revision + 2,
            EventAction::Created,
            Resource::Node(Box::new(joined)),
        ),
        (
            "its tags change",
            v.revision + 3,
            EventAction::Updated,
            Resource::Node(Box::new(retagged)),
        ),
        (
            "one rule of the policy changes",
            v.revision + 4,
            EventAction::Updated,
            policy_change,
        ),
    ] {
        let held: std::collections::HashMap<String, u64> = state
            .node_ids()
            .map(|id| (id.clone(), state.node_revision(id).unwrap_or(0)))
            .collect();
        let t = Instant::now();
        let affected = state.apply(&Event {
            revision,
            action,
            resource,
            time: chrono::Utc::now(),
        });
        let applied = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut reached = 0usize;
        let mut snapshots = 0usize;
        let mut entries = 0usize;
        for id in state.node_ids().cloned().collect::<Vec<_>>() {
            if !affected.contains(&id) {
                continue;
            }
            reached += 1;
            match state.delta(&id, held.get(&id).copied().unwrap_or(0)) {
                Some(d) => {
                    entries += d.upsert_peers.len()
                        + d.remove_peers.len()
                        + d.upsert_dns.len()
                        + d.remove_dns.len();
                    std::hint::black_box(d).is_empty()
                }
                None => {
                    snapshots += 1;
                    let c = state.snapshot(&id).expect("snapshot");
                    entries += c.peers.len() + c.dns.records.len();
                    std::hint::black_box(c).peers.is_empty()
                }
            };
        }
        println!(
            "{what}: applied in {:.4} s, reaches {reached} of {} nodes ({snapshots} snapshot(s), \
             the rest deltas) in {:.3} s, {entries} peer and DNS entries sent",
            applied,
            state.node_ids().count(),
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "one write under the policy (a node's endpoint): applied in {:.3} s, reaches {reached} \
         nodes, their deltas in {:.3} s",
        applied, deltas
    );
    println!(
        "one write under the policy: applied in {:.3} s, every node's snapshot in {:.2} s \
         ({:.0} µs each, {} peers + records in all); each resolved alone instead: {:.1} ms each, \
         {:.1} s for every node (extrapolated from {})",
        applied,
        shared,
        shared * 1e6 / v.nodes.len() as f64,
        entries,
        alone * 1e3,
        alone * v.nodes.len() as f64,
        sample.len()
    );
}
