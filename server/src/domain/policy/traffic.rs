//! What a packet carries, as far as a policy cares: its protocol and, for
//! TCP and UDP, its destination port; and exact sets of such traffic, for
//! computing what a policy allows between two parties and what a change
//! alters.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::super::error::{FieldViolation, shown};

/// A protocol a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
}

impl Protocol {
    /// Whether rules may name ports with it.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    /// Lowercase name ("tcp", "udp", "icmp").
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of destination ports, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (≥ first).
    pub last: u16,
}

impl PortRange {
    /// One port.
    pub fn one(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Parses "443" or "8000-8999".
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let bad = |why: &str| FieldViolation::new(field, format!("{}: {why}", shown(s)));
        let port = |p: &str| -> Result<u16, FieldViolation> {
            match p.trim().parse::<u32>() {
                Ok(n @ 1..=65535) => Ok(n as u16),
                Ok(_) => Err(bad("ports are 1 to 65535")),
                Err(_) => Err(bad("expected a port (443) or a range (8000-8999)")),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(bad("the range's first port is after its last"));
        }
        Ok(PortRange { first, last })
    }

    /// Whether `port` is in it.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PortRange::parse("ports", &s).map_err(|v| v.description)
    }
}

impl From<PortRange> for String {
    fn from(p: PortRange) -> String {
        p.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `ports` sorted, overlapping and adjacent ranges merged.
pub fn normalize_ports(mut ports: Vec<PortRange>) -> Vec<PortRange> {
    ports.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ports.len());
    for p in ports {
        match out.last_mut() {
            Some(l) if u32::from(p.first) <= u32::from(l.last) + 1 => l.last = l.last.max(p.last),
            _ => out.push(p),
        }
    }
    out
}

/// One packet's protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Traffic {
    /// TCP to a port.
    Tcp(u16),
    /// UDP to a port.
    Udp(u16),
    /// ICMP (ICMPv6 for IPv6).
    Icmp,
    /// Another IP protocol, by number (only "every protocol" rules match
    /// it).
    Other(u8),
}

impl Traffic {
    /// `TestAccess`'s protocol and port: the protocol is required (None:
    /// unspecified or unknown), a port from 1 to 65535 with TCP and UDP;
    /// ICMP ignores the port.
    pub fn from_request(protocol: Option<Protocol>, port: u32) -> Result<Self, FieldViolation> {
        let port_of = || {
            u16::try_from(port).ok().filter(|p| *p >= 1).ok_or_else(|| {
                FieldViolation::new(
                    "port",
                    format!("{port}: TCP and UDP need a port from 1 to 65535"),
                )
            })
        };
        match protocol {
            Some(Protocol::Tcp) => Ok(Traffic::Tcp(port_of()?)),
            Some(Protocol::Udp) => Ok(Traffic::Udp(port_of()?)),
            Some(Protocol::Icmp) => Ok(Traffic::Icmp),
            None => Err(FieldViolation::new(
                "protocol",
                "is required: TCP, UDP or ICMP",
            )),
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Traffic::Tcp(p) => write!(f, "tcp/{p}"),
            Traffic::Udp(p) => write!(f, "udp/{p}"),
            Traffic::Icmp => f.write_str("icmp"),
            Traffic::Other(n) => write!(f, "protocol {n}"),
        }
    }
}

/// A set of ports 0-65535: sorted, disjoint, non-adjacent inclusive
/// ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// Every port.
    pub fn all() -> Self {
        PortSet(vec![(0, u16::MAX)])
    }

    /// No port.
    pub fn none() -> Self {
        PortSet(Vec::new())
    }

    /// The ports of `ranges` (normalized ones).
    pub fn of(ranges: &[PortRange]) -> Self {
        PortSet(
            normalize_ports(ranges.to_vec())
                .into_iter()
                .map(|r| (r.first, r.last))
                .collect(),
        )
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether it holds every port.
    pub fn is_all(&self) -> bool {
        self.0 == [(0, u16::MAX)]
    }

    /// Whether `p` is in it.
    pub fn contains(&self, p: u16) -> bool {
        self.0.iter().any(|(a, b)| *a <= p && p <= *b)
    }

    /// Its complement.
    pub fn complement(&self) -> Self {
        let mut out = Vec::new();
        let mut next: u32 = 0;
        for (a, b) in &self.0 {
            if u32::from(*a) > next {
                out.push((next as u16, a - 1));
            }
            next = u32::from(*b) + 1;
        }
        if next <= u32::from(u16::MAX) {
            out.push((next as u16, u16::MAX));
        }
        PortSet(out)
    }

    /// Union.
    pub fn union(&self, o: &Self) -> Self {
        let mut all: Vec<(u16, u16)> = self.0.iter().chain(&o.0).copied().collect();
        all.sort();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(all.len());
        for (a, b) in all {
            match out.last_mut() {
                Some(l) if u32::from(a) <= u32::from(l.1) + 1 => l.1 = l.1.max(b),
                _ => out.push((a, b)),
            }
        }
        PortSet(out)
    }

    /// Intersection.
    pub fn intersect(&self, o: &Self) -> Self {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < o.0.len() {
            let (a1, b1) = self.0[i];
            let (a2, b2) = o.0[j];
            let (a, b) = (a1.max(a2), b1.min(b2));
            if a <= b {
                out.push((a, b));
            }
            if b1 < b2 { i += 1 } else { j += 1 }
        }
        PortSet(out)
    }

    /// Difference.
    pub fn minus(&self, o: &Self) -> Self {
        self.intersect(&o.complement())
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// An exact set of traffic: TCP and UDP ports, ICMP, and every other
/// protocol (which rules can only match all together, by naming no
/// protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TrafficSet {
    /// TCP destination ports.
    pub tcp: PortSet,
    /// UDP destination ports.
    pub udp: PortSet,
    /// ICMP / ICMPv6.
    pub icmp: bool,
    /// Every protocol other than TCP, UDP and ICMP.
    pub other: bool,
}

impl TrafficSet {
    /// All traffic.
    pub fn all() -> Self {
        TrafficSet {
            tcp: PortSet::all(),
            udp: PortSet::all(),
            icmp: true,
            other: true,
        }
    }

    /// No traffic.
    pub fn none() -> Self {
        TrafficSet::default()
    }

    /// What a rule with these protocols (empty: all) and ports (empty: all)
    /// matches.
    pub fn of_rule(protocols: &[Protocol], ports: &[PortRange]) -> Self {
        let ports = if ports.is_empty() {
            PortSet::all()
        } else {
            PortSet::of(ports)
        };
        if protocols.is_empty() {
            return TrafficSet {
                tcp: ports.clone(),
                udp: ports,
                icmp: true,
                other: true,
            };
        }
        let has = |p: Protocol| protocols.contains(&p);
        TrafficSet {
            tcp: if has(Protocol::Tcp) {
                ports.clone()
            } else {
                PortSet::none()
            },
            udp: if has(Protocol::Udp) {
                ports
            } else {
                PortSet::none()
            },
            icmp: has(Protocol::Icmp),
            other: false,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && !self.icmp && !self.other
    }

    /// Whether it holds all traffic.
    pub fn is_all(&self) -> bool {
        *self == TrafficSet::all()
    }

    /// Whether it holds `t`.
    pub fn contains(&self, t: Traffic) -> bool {
        match t {
            Traffic::Tcp(p) => self.tcp.contains(p),
            Traffic::Udp(p) => self.udp.contains(p),
            Traffic::Icmp => self.icmp,
            Traffic::Other(_) => self.other,
        }
    }

    /// Union.
    pub fn union(&self, o: &Self) -> Self {
        TrafficSet {
            tcp: self.tcp.union(&o.tcp),
            udp: self.udp.union(&o.udp),
            icmp: self.icmp || o.icmp,
            other: self.other || o.other,
        }
    }

    /// Intersection.
    pub fn intersect(&self, o: &Self) -> Self {
        TrafficSet {
            tcp: self.tcp.intersect(&o.tcp),
            udp: self.udp.intersect(&o.udp),
            icmp: self.icmp && o.icmp,
            other: self.other && o.other,
        }
    }

    /// Difference.
    pub fn minus(&self, o: &Self) -> Self {
        TrafficSet {
            tcp: self.tcp.minus(&o.tcp),
            udp: self.udp.minus(&o.udp),
            icmp: self.icmp && !o.icmp,
            other: self.other && !o.other,
        }
    }

    /// In words, as `FlowChange.allowed` lists it: `["all"]`, or some of
    /// "tcp" / "tcp/443,8000-8999", "udp…", "icmp", "other"; empty when
    /// empty.
    pub fn describe(&self) -> Vec<String> {
        if self.is_all() {
            return vec!["all".into()];
        }
        let mut out = Vec::new();
        for (name, ports) in [("tcp", &self.tcp), ("udp", &self.udp)] {
            if ports.is_all() {
                out.push(name.to_owned());
            } else if !ports.is_empty() {
                out.push(format!("{name}/{ports}"));
            }
        }
        if self.icmp {
            out.push("icmp".into());
        }
        if self.other {
            out.push("other".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_name_the_field() {
        assert_eq!(PortRange::parse("p", "443").unwrap(), PortRange::one(443));
        assert_eq!(
            PortRange::parse("p", "8000-8999").unwrap().to_string(),
            "8000-8999"
        );
        for bad in ["0", "65536", "9-8", "http", "", "1-", "-1"] {
            let e = PortRange::parse("rules[0].ports[2]", bad).unwrap_err();
            assert_eq!(e.field, "rules[0].ports[2]", "{bad}");
        }
        assert_eq!(
            normalize_ports(vec![
                PortRange::one(81),
                PortRange::one(80),
                PortRange::parse("p", "82-90").unwrap(),
                PortRange::one(100),
            ]),
            vec![PortRange::parse("p", "80-90").unwrap(), PortRange::one(100)]
        );
    }

    #[test]
    fn port_sets_complement_union_intersect_and_subtract() {
        let a = PortSet::of(&[PortRange::one(22), PortRange::parse("p", "80-90").unwrap()]);
        assert_eq!(a.complement().complement(), a);
        assert_eq!(a.union(&a.complement()), PortSet::all());
        assert!(a.intersect(&a.complement()).is_empty());
        let b = PortSet::of(&[PortRange::parse("p", "85-100").unwrap()]);
        assert_eq!(a.intersect(&b).to_string(), "85-90");
        assert_eq!(a.minus(&b).to_string(), "22,80-84");
        assert_eq!(a.union(&b).to_string(), "22,80-100");
        assert_eq!(PortSet::all().complement(), PortSet::none());
    }

    #[test]
    fn test_access_traffic_needs_a_protocol_and_a_port_for_tcp_and_udp() {
        assert_eq!(
            Traffic::from_request(Some(Protocol::Tcp), 443),
            Ok(Traffic::Tcp(443))
        );
        assert_eq!(
            Traffic::from_request(Some(Protocol::Icmp), 0),
            Ok(Traffic::Icmp)
        );
        for (proto, port, field) in [
            (None, 80, "protocol"),
            (Some(Protocol::Udp), 0, "port"),
            (Some(Protocol::Tcp), 65536, "port"),
        ] {
            assert_eq!(Traffic::from_request(proto, port).unwrap_err().field, field);
        }
    }

    #[test]
    fn traffic_sets_describe_themselves() {
        assert_eq!(TrafficSet::all().describe(), vec!["all"]);
        assert!(TrafficSet::none().describe().is_empty());
        let web = TrafficSet::of_rule(&[Protocol::Tcp], &[PortRange::one(443), PortRange::one(80)]);
        assert_eq!(web.describe(), vec!["tcp/80,443"]);
        assert!(web.contains(Traffic::Tcp(443)) && !web.contains(Traffic::Udp(443)));
        let rest = TrafficSet::all().minus(&web);
        assert_eq!(
            rest.describe(),
            vec!["tcp/0-79,81-442,444-65535", "udp", "icmp", "other"]
        );
        assert!(TrafficSet::of_rule(&[], &[]).is_all());
    }
}
