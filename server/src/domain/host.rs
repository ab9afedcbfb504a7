//! What a node's agent reports about its host: its WireGuard interface's
//! name, the host's interfaces and routing table, and why an apply failed.
//! Parsed once here from the request's plain fields; inside, only typed
//! values.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::error::{FieldViolation, Result, Violations, shown};
use super::node::{Endpoint, Node};

/// Most interfaces a host report may list.
pub const MAX_INTERFACES: usize = 512;
/// Most routes a host report may list.
pub const MAX_ROUTES: usize = 8192;
/// Most addresses one interface may list.
pub const MAX_ADDRESSES: usize = 64;
/// Longest apply error kept, in bytes; longer ones are cut (at a character
/// boundary), not refused: the agent's report matters more than its prose.
pub const APPLY_ERROR_MAX: usize = 2048;

/// Validates a Linux interface name: 1-15 bytes, no '/', ':', white space or
/// control characters (NUL included), not "." or "..".
pub fn parse_ifname(field: &str, s: &str) -> Result<String, FieldViolation> {
    let bad = |why: String| Err(FieldViolation::new(field, why));
    if s.is_empty() {
        return bad("an interface name cannot be empty".into());
    }
    if s.len() > 15 {
        return bad(format!(
            "{} is {} bytes; Linux allows at most 15",
            shown(s),
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad(format!(
            "{s:?} contains {c:?}, which an interface name cannot"
        ));
    }
    if s == "." || s == ".." {
        return bad(format!("{s:?} is not an interface name"));
    }
    Ok(s.to_owned())
}

/// Validates the name of an interface that firewall rules name (an egress
/// gateway's interface, the agent's WireGuard interface): a Linux name (see
/// [`parse_ifname`]) without '"', which `iptables-restore` reads as quoting,
/// so the rendered rules would not parse. (A host may still report such an
/// interface; rules just cannot use it.)
pub fn parse_rule_ifname(field: &str, s: &str) -> Result<String, FieldViolation> {
    let name = parse_ifname(field, s)?;
    if name.contains('"') {
        return Err(FieldViolation::new(
            field,
            format!("{name:?} contains '\"', which firewall rules (iptables-restore) cannot name"),
        ));
    }
    Ok(name)
}

/// One interface of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInterface {
    /// Name (e.g. "eth0").
    pub name: String,
    /// Its addresses with their prefix length (host bits kept).
    pub addresses: Vec<IpNet>,
    /// The interface is up.
    pub up: bool,
}

/// One route of a host's routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    /// Destination range (host bits cleared).
    pub destination: IpNet,
    /// Interface the route leaves through.
    pub interface: String,
    /// Next hop, when there is one.
    pub gateway: Option<IpAddr>,
}

/// A host's interfaces and routes, as its agent last reported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// Interfaces, in the order reported.
    pub interfaces: Vec<HostInterface>,
    /// Routes, in the order reported.
    pub routes: Vec<HostRoute>,
    /// When the server received the report.
    pub report_time: DateTime<Utc>,
}

impl HostReport {
    /// The interface names, sorted.
    pub fn interface_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// Whether the host has an interface of this name.
    pub fn has_interface(&self, name: &str) -> bool {
        self.interfaces.iter().any(|i| i.name == name)
    }
}

/// One interface as sent.
#[derive(Debug, Clone, Default)]
pub struct HostInterfaceInput {
    /// name
    pub name: String,
    /// addresses
    pub addresses: Vec<String>,
    /// up
    pub up: bool,
}

/// One route as sent.
#[derive(Debug, Clone, Default)]
pub struct HostRouteInput {
    /// destination
    pub destination: String,
    /// interface
    pub interface: String,
    /// gateway (empty when none)
    pub gateway: String,
}

/// A host report as sent.
#[derive(Debug, Clone, Default)]
pub struct HostReportInput {
    /// interfaces
    pub interfaces: Vec<HostInterfaceInput>,
    /// routes
    pub routes: Vec<HostRouteInput>,
}

impl HostReportInput {
    /// Validates every interface and route; violations name their field
    /// under `field` (e.g. `host.routes[3].destination`).
    fn validate_into(
        self,
        field: &str,
        now: DateTime<Utc>,
        v: &mut Violations,
    ) -> Option<HostReport> {
        let errors = v.count();
        if self.interfaces.len() > MAX_INTERFACES {
            v.add(
                format!("{field}.interfaces"),
                format!(
                    "at most {MAX_INTERFACES} interfaces; this report has {}",
                    self.interfaces.len()
                ),
            );
        }
        if self.routes.len() > MAX_ROUTES {
            v.add(
                format!("{field}.routes"),
                format!(
                    "at most {MAX_ROUTES} routes; this report has {}",
                    self.routes.len()
                ),
            );
        }
        if v.count() > errors {
            return None;
        }
        let mut interfaces: Vec<HostInterface> = Vec::with_capacity(self.interfaces.len());
        for (i, iface) in self.interfaces.into_iter().enumerate() {
            let at = format!("{field}.interfaces[{i}]");
            let name = v.check(parse_ifname(&format!("{at}.name"), &iface.name));
            if let Some(n) = &name
                && interfaces.iter().any(|x| &x.name == n)
            {
                v.add(format!("{at}.name"), format!("{n:?} is listed twice"));
            }
            if iface.addresses.len() > MAX_ADDRESSES {
                v.add(
                    format!("{at}.addresses"),
                    format!(
                        "at most {MAX_ADDRESSES} addresses per interface; this one has {}",
                        iface.addresses.len()
                    ),
                );
                continue;
            }
            let mut addresses = Vec::with_capacity(iface.addresses.len());
            for (j, a) in iface.addresses.iter().enumerate() {
                match a.trim().parse::<IpNet>() {
                    Ok(a) => addresses.push(a),
                    Err(_) => v.add(
                        format!("{at}.addresses[{j}]"),
                        format!(
                            "{} is not an address with a prefix (e.g. 192.0.2.7/24)",
                            shown(a)
                        ),
                    ),
                }
            }
            if let Some(name) = name {
                interfaces.push(HostInterface {
                    name,
                    addresses,
                    up: iface.up,
                });
            }
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.into_iter().enumerate() {
            let at = format!("{field}.routes[{i}]");
            let destination = match r.destination.trim().parse::<IpNet>() {
                Ok(d) => Some(d.trunc()),
                Err(_) => {
                    v.add(
                        format!("{at}.destination"),
                        format!(
                            "{} is not a CIDR range (e.g. 10.0.0.0/24, 0.0.0.0/0 for the \
                             default route)",
                            shown(&r.destination)
                        ),
                    );
                    None
                }
            };
            let interface = v.check(parse_ifname(&format!("{at}.interface"), &r.interface));
            let gateway = if r.gateway.is_empty() {
                Some(None)
            } else {
                match r.gateway.trim().parse::<IpAddr>() {
                    Ok(g) => Some(Some(g)),
                    Err(_) => {
                        v.add(
                            format!("{at}.gateway"),
                            format!("{} is not an IP address", shown(&r.gateway)),
                        );
                        None
                    }
                }
            };
            if let (Some(destination), Some(interface), Some(gateway)) =
                (destination, interface, gateway)
            {
                routes.push(HostRoute {
                    destination,
                    interface,
                    gateway,
                });
            }
        }
        (v.count() == errors).then_some(HostReport {
            interfaces,
            routes,
            report_time: now,
        })
    }
}

/// A validated ReportStatus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// Revision the agent applied.
    pub applied_revision: u64,
    /// The endpoint it observes; None leaves the stored one.
    pub endpoint: Option<Endpoint>,
    /// Its WireGuard interface; None leaves the stored one.
    pub wireguard_interface: Option<String>,
    /// Its host; None leaves the stored report.
    pub host: Option<HostReport>,
    /// The failed apply (error, cut to [`APPLY_ERROR_MAX`], and revision);
    /// None clears an earlier failure.
    pub failure: Option<(String, u64)>,
}

/// ReportStatus's fields as sent.
#[derive(Debug, Clone, Default)]
pub struct StatusReportInput {
    /// applied_revision
    pub applied_revision: u64,
    /// endpoint
    pub endpoint: String,
    /// wireguard_interface
    pub wireguard_interface: String,
    /// host (None when absent)
    pub host: Option<HostReportInput>,
    /// apply_error
    pub apply_error: String,
    /// failed_revision
    pub failed_revision: u64,
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl StatusReportInput {
    /// Validates every field, reporting the violations together.
    pub fn validate(self, now: DateTime<Utc>) -> Result<StatusReport> {
        let mut v = Violations::default();
        let endpoint = if self.endpoint.is_empty() {
            Some(None)
        } else {
            v.check(Endpoint::parse("endpoint", &self.endpoint))
                .map(Some)
        };
        let wireguard_interface = if self.wireguard_interface.is_empty() {
            Some(None)
        } else {
            v.check(parse_rule_ifname(
                "wireguard_interface",
                &self.wireguard_interface,
            ))
            .map(Some)
        };
        let host = self.host.map(|h| h.validate_into("host", now, &mut v));
        v.finish()?;
        let failure = (!self.apply_error.is_empty()).then(|| {
            (
                crate::domain::names::sanitize_text(truncate(self.apply_error, APPLY_ERROR_MAX)),
                self.failed_revision,
            )
        });
        Ok(StatusReport {
            applied_revision: self.applied_revision,
            endpoint: endpoint.expect("checked"),
            wireguard_interface: wireguard_interface.expect("checked"),
            host: host.map(|h| h.expect("checked")),
            failure,
        })
    }
}

impl StatusReport {
    /// Records the report on `node` (not its last_seen, which the store
    /// keeps); returns whether a config changed: the node's own (its
    /// interface name) or its peers' (its endpoint). Only then is the change
    /// an event with a new revision: agents report often.
    pub fn apply(&self, node: &mut Node) -> bool {
        let before_iface = super::config::node_interface(node);
        let before_endpoint = node.endpoint.clone();
        node.applied_revision = self.applied_revision;
        if let Some(e) = &self.endpoint {
            node.endpoint = Some(e.clone());
        }
        if let Some(i) = &self.wireguard_interface {
            node.wireguard_interface = Some(i.clone());
        }
        if let Some(h) = &self.host {
            node.host = Some(h.clone());
        }
        match &self.failure {
            Some((e, r)) => {
                node.apply_error = Some(e.clone());
                node.failed_revision = *r;
            }
            None => {
                node.apply_error = None;
                node.failed_revision = 0;
            }
        }
        super::config::node_interface(node) != before_iface || node.endpoint != before_endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Error;
    use crate::domain::config::tests::node;

    fn iface(name: &str, addrs: &[&str]) -> HostInterfaceInput {
        HostInterfaceInput {
            name: name.into(),
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
            up: true,
        }
    }

    fn route(dest: &str, dev: &str, gw: &str) -> HostRouteInput {
        HostRouteInput {
            destination: dest.into(),
            interface: dev.into(),
            gateway: gw.into(),
        }
    }

    fn fields(r: Result<StatusReport>) -> Vec<String> {
        match r {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn interface_names_follow_linux() {
        for ok in ["wg0", "eth0", "fifteen-chars-x", "br-lan.10", "mp-corp"] {
            assert!(parse_ifname("f", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "sixteen-chars-xx",
            "a/b",
            "a:b",
            "wg 0",
            "wg\t0",
            "wg\0",
            ".",
            "..",
        ] {
            assert!(parse_ifname("f", bad).is_err(), "{bad:?}");
        }
        // Linux allows '"'; firewall rules cannot name it (found by
        // prop_firewalls_render_valid_iptables_restore_input).
        assert!(parse_ifname("f", "wg\"0").is_ok());
        let v = parse_rule_ifname("f", "wg\"0").unwrap_err();
        assert!(
            v.description.contains("iptables-restore"),
            "{}",
            v.description
        );
        assert_eq!(parse_rule_ifname("f", "wg0").unwrap(), "wg0");
        let r = StatusReportInput {
            wireguard_interface: "\"".into(),
            ..Default::default()
        }
        .validate(chrono::Utc::now());
        assert_eq!(fields(r), vec!["wireguard_interface"]);
    }

    #[test]
    fn a_good_report_parses() {
        let r = StatusReportInput {
            applied_revision: 4,
            wireguard_interface: "wg0".into(),
            host: Some(HostReportInput {
                interfaces: vec![
                    iface("lo", &["127.0.0.1/8", "::1/128"]),
                    iface("eth0", &["192.0.2.7/24"]),
                ],
                routes: vec![
                    route("0.0.0.0/0", "eth0", "192.0.2.1"),
                    route("192.0.2.7/24", "eth0", ""),
                ],
            }),
            apply_error: "é".repeat(APPLY_ERROR_MAX),
            failed_revision: 5,
            ..Default::default()
        }
        .validate(chrono::Utc::now())
        .unwrap();
        assert_eq!(r.wireguard_interface.as_deref(), Some("wg0"));
        let host = r.host.unwrap();
        assert_eq!(host.interface_names(), vec!["eth0", "lo"]);
        assert_eq!(host.interfaces[0].addresses[0].to_string(), "127.0.0.1/8");
        // Route destinations are normalized; addresses keep their host bits.
        assert_eq!(host.routes[1].destination.to_string(), "192.0.2.0/24");
        assert_eq!(host.interfaces[1].addresses[0].to_string(), "192.0.2.7/24");
        assert_eq!(host.routes[0].gateway, Some("192.0.2.1".parse().unwrap()));
        // The error is cut, not refused, and stays valid UTF-8.
        let (e, rev) = r.failure.unwrap();
        assert!(e.len() <= APPLY_ERROR_MAX && e.len() > APPLY_ERROR_MAX - 2);
        assert_eq!(rev, 5);
    }

    #[test]
    fn bad_fields_are_named() {
        let f = fields(
            StatusReportInput {
                wireguard_interface: "wg 0".into(),
                host: Some(HostReportInput {
                    interfaces: vec![iface("eth0", &["nope"]), iface("eth0", &[])],
                    routes: vec![
                        route("0.0.0.0/0", "eth0", ""),
                        route("10.0.0.0/8", "", ""),
                        route("10.0.0.0/33", "eth0", "x"),
                    ],
                }),
                ..Default::default()
            }
            .validate(chrono::Utc::now()),
        );
        assert_eq!(
            f,
            vec![
                "wireguard_interface",
                "host.interfaces[0].addresses[0]",
                "host.interfaces[1].name",
                "host.routes[1].interface",
                "host.routes[2].destination",
                "host.routes[2].gateway",
            ]
        );
    }

    #[test]
    fn sizes_are_capped_and_so_are_violations() {
        let many = |n| HostReportInput {
            interfaces: vec![],
            routes: (0..n).map(|_| route("bad", "eth0", "")).collect(),
        };
        let f = fields(
            StatusReportInput {
                host: Some(many(MAX_ROUTES + 1)),
                ..Default::default()
            }
            .validate(chrono::Utc::now()),
        );
        assert_eq!(f, vec!["host.routes"]);
        let f = fields(
            StatusReportInput {
                host: Some(many(1000)),
                ..Default::default()
            }
            .validate(chrono::Utc::now()),
        );
        assert_eq!(f.len(), crate::domain::error::MAX_VIOLATIONS);
        let addrs: Vec<String> = (0..=MAX_ADDRESSES)
            .map(|i| format!("10.0.0.{i}/24"))
            .collect();
        let f = fields(
            StatusReportInput {
                host: Some(HostReportInput {
                    interfaces: vec![HostInterfaceInput {
                        name: "eth0".into(),
                        addresses: addrs,
                        up: true,
                    }],
                    routes: vec![],
                }),
                ..Default::default()
            }
            .validate(chrono::Utc::now()),
        );
        assert_eq!(f, vec!["host.interfaces[0].addresses"]);
    }

    #[test]
    fn only_interface_and_endpoint_changes_are_config_changes() {
        let now = chrono::Utc::now();
        let mut n = node("gw", 1);
        let report = |iface: &str, err: &str| {
            StatusReportInput {
                applied_revision: 3,
                wireguard_interface: iface.into(),
                host: Some(HostReportInput::default()),
                apply_error: err.into(),
                failed_revision: 4,
                ..Default::default()
            }
            .validate(now)
            .unwrap()
        };
        assert!(report("wg0", "").apply(&mut n));
        assert_eq!(n.wireguard_interface.as_deref(), Some("wg0"));
        // The same again, an empty name, a failure, a new host report: none
        // changes a config.
        assert!(!report("wg0", "").apply(&mut n));
        assert!(!report("", "boom").apply(&mut n));
        assert_eq!(n.wireguard_interface.as_deref(), Some("wg0"));
        assert_eq!(
            (n.apply_error.as_deref(), n.failed_revision),
            (Some("boom"), 4)
        );
        assert!(!report("", "").apply(&mut n));
        assert_eq!((n.apply_error.as_deref(), n.failed_revision), (None, 0));
        assert!(n.host.is_some());
        // Naming the default explicitly changes no config either.
        let mut m = node("other", 2);
        assert!(!report("mp-corp", "").apply(&mut m));
    }
}
