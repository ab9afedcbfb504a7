//! DNS: custom entries, the automatic names of nodes and clients, and the
//! hosts file.

use std::net::{Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::config::DnsRecord;
use super::error::{FieldViolation, Result, Violations, shown};
use super::names::DnsLabel;

/// Where an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsKind {
    /// Created by an operator.
    Custom,
    /// A node's name.
    Node,
    /// An external client's name.
    ExtClient,
}

/// A name in a network's zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsEntry {
    /// The zone.
    pub network: DnsLabel,
    /// Name relative to the zone (e.g. "db" or "db.prod"), lowercase.
    pub name: String,
    /// IPv4 address.
    pub address: Option<Ipv4Addr>,
    /// IPv6 address.
    pub address6: Option<Ipv6Addr>,
    /// Where it comes from.
    pub kind: DnsKind,
    /// Creation time (custom entries).
    pub create_time: DateTime<Utc>,
}

/// Longest fully qualified name, without the trailing dot.
pub const NAME_MAX: usize = 253;

/// Validates a name relative to `zone`: dot-separated labels of letters,
/// digits and '-' (1-63 characters, not starting or ending with '-'), the
/// whole name with its zone at most 253 characters. Returns it lowercased.
pub fn parse_relative_name(field: &str, name: &str, zone: &str) -> Result<String, FieldViolation> {
    let bad = |why: String| Err(FieldViolation::new(field, why));
    let name = name.trim().trim_end_matches('.');
    if name.is_empty() {
        return bad("must not be empty".into());
    }
    let fqdn_len = name.len() + 1 + zone.len();
    if fqdn_len > NAME_MAX {
        return bad(format!(
            "{}.{zone} is {fqdn_len} characters; a DNS name has at most {NAME_MAX}",
            super::error::clip(name)
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad(format!("{name:?} has an empty label"));
        }
        if label.len() > 63 {
            return bad(format!(
                "label {} is {} characters; at most 63",
                shown(label),
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return bad(format!(
                "label {label:?} contains {c:?}; only letters, digits and '-' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(format!("label {label:?} must not start or end with '-'"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// CreateDnsEntry's fields as sent.
#[derive(Debug, Clone, Default)]
pub struct DnsEntryInput {
    /// network
    pub network: String,
    /// name
    pub name: String,
    /// address
    pub address: String,
    /// address6
    pub address6: String,
}

const F: &str = "entry";

impl DnsEntryInput {
    /// Validates a custom entry.
    pub fn validate(self, now: DateTime<Utc>) -> Result<DnsEntry> {
        let mut v = Violations::default();
        let network = v.check(DnsLabel::parse(
            &format!("{F}.network"),
            &self.network,
            DnsLabel::NETWORK_MAX,
        ));
        let zone = network.as_ref().map(|n| n.to_string()).unwrap_or_default();
        let name = v.check(parse_relative_name(&format!("{F}.name"), &self.name, &zone));
        let address = if self.address.is_empty() {
            None
        } else {
            match self.address.trim().parse::<Ipv4Addr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    v.add(
                        format!("{F}.address"),
                        format!("{} is not an IPv4 address", shown(&self.address)),
                    );
                    None
                }
            }
        };
        let address6 = if self.address6.is_empty() {
            None
        } else {
            match self.address6.trim().parse::<Ipv6Addr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    v.add(
                        format!("{F}.address6"),
                        format!("{} is not an IPv6 address", shown(&self.address6)),
                    );
                    None
                }
            }
        };
        if self.address.is_empty() && self.address6.is_empty() {
            v.add(
                format!("{F}.address"),
                "at least one of address (IPv4) and address6 (IPv6) is required",
            );
        }
        v.finish()?;
        Ok(DnsEntry {
            network: network.expect("checked"),
            name: name.expect("checked"),
            address,
            address6,
            kind: DnsKind::Custom,
            create_time: now,
        })
    }
}

impl DnsEntry {
    /// The entry as a record of its zone.
    pub fn record(&self) -> DnsRecord {
        DnsRecord {
            name: format!("{}.{}", self.name, self.network),
            address: self.address,
            address6: self.address6,
        }
    }
}

/// `/etc/hosts` text for records (one line per address).
pub fn hosts_file<'a>(zone: &str, records: impl IntoIterator<Item = &'a DnsRecord>) -> String {
    let mut out = format!("# meshplane network {zone}\n");
    for r in records {
        if let Some(a) = r.address {
            out.push_str(&format!("{a}\t{}\n", r.name));
        }
        if let Some(a) = r.address6 {
            out.push_str(&format!("{a}\t{}\n", r.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names() {
        assert_eq!(
            parse_relative_name("n", "DB.Prod", "corp").unwrap(),
            "db.prod"
        );
        assert_eq!(parse_relative_name("n", "db.", "corp").unwrap(), "db");
        for bad in ["", "a..b", "-a", "a-", "a_b", "a b", &"x".repeat(64)] {
            assert!(parse_relative_name("n", bad, "corp").is_err(), "{bad:?}");
        }
        let long = vec!["a".repeat(63); 4].join(".");
        assert!(
            parse_relative_name("n", &long, "corp").is_err(),
            "over 253 with the zone"
        );
        assert!(parse_relative_name("n", &"a".repeat(63), "corp").is_ok());
    }

    #[test]
    fn entries_need_an_address_of_the_right_family() {
        let e = |a: &str, a6: &str| {
            DnsEntryInput {
                network: "corp".into(),
                name: "db".into(),
                address: a.into(),
                address6: a6.into(),
            }
            .validate(Utc::now())
        };
        assert!(e("10.0.0.5", "").is_ok());
        assert!(e("", "fd00::5").is_ok());
        assert!(e("", "").is_err());
        assert!(e("fd00::5", "").is_err());
        assert!(e("", "10.0.0.5").is_err());
        assert!(e("300.0.0.1", "").is_err());
    }

    #[test]
    fn hosts_lines_per_address() {
        let t = hosts_file(
            "corp",
            &[DnsRecord {
                name: "db.corp".into(),
                address: Some("10.0.0.5".parse().unwrap()),
                address6: Some("fd00::5".parse().unwrap()),
            }],
        );
        assert_eq!(
            t,
            "# meshplane network corp\n10.0.0.5\tdb.corp\nfd00::5\tdb.corp\n"
        );
    }
}
