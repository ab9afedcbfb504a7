//! `meshctl policy`: a network's access policy (PolicyService).

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use meshplane_sdk::proto as pb;
use serde_json::Value;

use crate::{
    Ctx, Failure, Outcome,
    output::{self, Format, Table},
};

/// `meshctl policy`.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Prints a network's policy (ALLOW and no rules when it has none);
    /// `-o yaml` prints it in the form `set` reads.
    Get {
        /// The network.
        network: String,
    },
    /// Replaces a network's policy (default action and rules) with FILE's,
    /// and lists the flows that become allowed or denied.
    Set {
        /// A policy as YAML or JSON: `network`, `default_action` (ALLOW or
        /// DENY), `rules` (each: `name`, `sources`, `destinations`,
        /// `protocols`, `ports`, `action`).
        file: PathBuf,
        /// The network (default: the file's `network`).
        #[arg(long)]
        network: Option<String>,
        /// Refuse (ABORTED) unless the stored policy is at this revision
        /// (as `get` prints it): no concurrent change is overwritten.
        #[arg(long, value_name = "REVISION")]
        expected_revision: Option<u64>,
    },
    /// What `set FILE` would change, without changing anything: the flows
    /// that would become allowed (+) or denied (-).
    Diff {
        /// A policy file, as for `set`.
        file: PathBuf,
        /// The network (default: the file's `network`).
        #[arg(long)]
        network: Option<String>,
    },
    /// Whether the policy lets a packet through, and which rule decides.
    Test {
        /// The network.
        #[arg(long)]
        network: String,
        /// The sender: a node's or external client's name or id.
        #[arg(long)]
        from: String,
        /// The receiver: a node's or external client's name or id, or an
        /// IP address (also one behind an egress gateway).
        #[arg(long)]
        to: String,
        /// The protocol.
        #[arg(long, value_enum)]
        protocol: ProtocolArg,
        /// The destination port (TCP and UDP).
        #[arg(long, default_value_t = 0)]
        port: u32,
    },
}

/// A protocol on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (ICMPv6 for IPv6).
    Icmp,
}

impl ProtocolArg {
    fn pb(self) -> pb::Protocol {
        match self {
            ProtocolArg::Tcp => pb::Protocol::Tcp,
            ProtocolArg::Udp => pb::Protocol::Udp,
            ProtocolArg::Icmp => pb::Protocol::Icmp,
        }
    }
}

/// Enum values as written by hand ("deny", "tcp") in their proto names
/// ("POLICY_ACTION_DENY", "PROTOCOL_TCP"); proto names and numbers are
/// left as they are.
fn normalize(v: &mut Value) {
    fn name(v: &mut Value, prefix: &str) {
        if let Value::String(s) = v
            && !s.starts_with(prefix)
        {
            *s = format!("{prefix}{}", s.to_ascii_uppercase());
        }
    }
    let Value::Object(m) = v else { return };
    for key in ["default_action", "defaultAction"] {
        if let Some(a) = m.get_mut(key) {
            name(a, "POLICY_ACTION_");
        }
    }
    if let Some(Value::Array(rules)) = m.get_mut("rules") {
        for r in rules.iter_mut() {
            let Value::Object(r) = r else { continue };
            if let Some(a) = r.get_mut("action") {
                name(a, "POLICY_ACTION_");
            }
            if let Some(Value::Array(ps)) = r.get_mut("protocols") {
                ps.iter_mut().for_each(|p| name(p, "PROTOCOL_"));
            }
            if let Some(Value::Array(ports)) = r.get_mut("ports") {
                // `ports: [443, "8000-8999"]`: numbers are ports too.
                for p in ports.iter_mut() {
                    if let Value::Number(n) = p {
                        *p = Value::String(n.to_string());
                    }
                }
            }
        }
    }
}

/// Reads a policy file (YAML, of which JSON is a part); `network`
/// overrides the file's.
fn read_policy(path: &Path, network: Option<String>) -> Result<pb::Policy, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Local(format!("reading {}: {e}", path.display())))?;
    let mut v: Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| Failure::Local(format!("{} is not YAML or JSON: {e}", path.display())))?;
    normalize(&mut v);
    let mut p: pb::Policy = output::from_json(v)
        .map_err(|e| Failure::Local(format!("{} is not a policy: {e}", path.display())))?;
    if let Some(n) = network {
        p.network = n;
    }
    if p.network.is_empty() {
        return Err(Failure::Usage(format!(
            "{} names no network: add `network: NAME` or pass --network",
            path.display()
        )));
    }
    // Output only: a file written by `get -o yaml` holds them.
    p.revision = 0;
    p.update_time = None;
    Ok(p)
}

fn action_name(a: i32) -> &'static str {
    match pb::PolicyAction::try_from(a) {
        Ok(pb::PolicyAction::Deny) => "DENY",
        _ => "ALLOW",
    }
}

fn print_policy(p: &pb::Policy) {
    println!(
        "network {}: default {} (revision {})",
        p.network,
        action_name(p.default_action),
        p.revision
    );
    if p.rules.is_empty() {
        println!("no rules");
        return;
    }
    let mut t = Table::new(&[
        "#",
        "NAME",
        "SOURCES",
        "DESTINATIONS",
        "PROTOCOLS",
        "PORTS",
        "ACTION",
    ]);
    for (i, r) in p.rules.iter().enumerate() {
        let protocols: Vec<String> = r
            .protocols
            .iter()
            .map(|x| match pb::Protocol::try_from(*x) {
                Ok(pb::Protocol::Tcp) => "tcp".into(),
                Ok(pb::Protocol::Udp) => "udp".into(),
                Ok(pb::Protocol::Icmp) => "icmp".into(),
                _ => x.to_string(),
            })
            .collect();
        let or_any = |v: Vec<String>| {
            if v.is_empty() {
                "any".to_owned()
            } else {
                v.join(",")
            }
        };
        t.row(vec![
            i.to_string(),
            r.name.clone(),
            r.sources.join(","),
            r.destinations.join(","),
            or_any(protocols),
            or_any(r.ports.clone()),
            action_name(r.action).to_owned(),
        ]);
    }
    t.print();
}

fn print_changes(r: &pb::UpdatePolicyResponse) {
    for c in &r.changes {
        let to = if c.destination_address.is_empty() {
            c.destination.clone()
        } else {
            format!("{} ({})", c.destination, c.destination_address)
        };
        if !c.allowed.is_empty() {
            println!("+ {} -> {to}: {}", c.source, c.allowed.join(" "));
        }
        if !c.denied.is_empty() {
            println!("- {} -> {to}: {}", c.source, c.denied.join(" "));
        }
    }
    match r.total_changes as usize {
        0 => println!("no flow changes"),
        n if n > r.changes.len() => {
            println!("{n} flows change (the first {} shown)", r.changes.len())
        }
        n => println!("{n} flows change"),
    }
}

impl PolicyCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let policies = ctx.client.policies();
        match self {
            PolicyCmd::Get { network } => {
                let p = policies.get(&network).await?;
                match ctx.format {
                    Format::Table => print_policy(&p),
                    f => output::print_value(f, &output::to_json(&p)),
                }
            }
            PolicyCmd::Set {
                file,
                network,
                expected_revision,
            } => {
                let p = read_policy(&file, network)?;
                let r = policies
                    .update(pb::UpdatePolicyRequest {
                        policy: Some(p),
                        update_mask: None,
                        validate_only: false,
                        expected_revision: expected_revision.unwrap_or(0),
                    })
                    .await?;
                match ctx.format {
                    Format::Table => {
                        let p = r.policy.clone().unwrap_or_default();
                        println!(
                            "policy of {} set: default {}, {} rules (revision {})",
                            p.network,
                            action_name(p.default_action),
                            p.rules.len(),
                            p.revision
                        );
                        print_changes(&r);
                    }
                    f => output::print_value(f, &output::to_json(&r)),
                }
            }
            PolicyCmd::Diff { file, network } => {
                let p = read_policy(&file, network)?;
                let r = policies
                    .update(pb::UpdatePolicyRequest {
                        policy: Some(p),
                        update_mask: None,
                        validate_only: true,
                        expected_revision: 0,
                    })
                    .await?;
                match ctx.format {
                    Format::Table => print_changes(&r),
                    f => output::print_value(f, &output::to_json(&r)),
                }
            }
            PolicyCmd::Test {
                network,
                from,
                to,
                protocol,
                port,
            } => {
                let r = policies
                    .test_access(pb::TestAccessRequest {
                        network,
                        from,
                        to,
                        protocol: protocol.pb() as i32,
                        port,
                    })
                    .await?;
                match ctx.format {
                    Format::Table => {
                        println!("{} to {}", action_name(r.action), r.address);
                        println!("  {}", r.reason);
                    }
                    f => output::print_value(f, &output::to_json(&r)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_enums_and_port_numbers_are_accepted() {
        let mut v: Value = serde_yaml_ng::from_str(
            "network: corp\ndefault_action: deny\nrules:\n- sources: ['tag:ops']\n  \
             destinations: [10.10.10.0/24]\n  protocols: [tcp]\n  ports: [8080, '9000-9100']\n  \
             action: ALLOW\n",
        )
        .unwrap();
        normalize(&mut v);
        let p: pb::Policy = output::from_json(v).unwrap();
        assert_eq!(p.default_action, pb::PolicyAction::Deny as i32);
        assert_eq!(p.rules[0].action, pb::PolicyAction::Allow as i32);
        assert_eq!(p.rules[0].protocols, [pb::Protocol::Tcp as i32]);
        assert_eq!(p.rules[0].ports, ["8080", "9000-9100"]);
    }
}
