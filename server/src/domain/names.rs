//! Names and addresses as validated types.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::{FieldViolation, shown};

/// A DNS label used as a resource name: lowercase a-z, 0-9 and '-',
/// 1 to `max` characters, not starting or ending with '-'.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DnsLabel(String);

impl TryFrom<String> for DnsLabel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        DnsLabel::parse("name", &s, DnsLabel::LABEL_MAX).map_err(|v| v.description)
    }
}

impl From<DnsLabel> for String {
    fn from(l: DnsLabel) -> String {
        l.0
    }
}

impl DnsLabel {
    /// Longest network name.
    pub const NETWORK_MAX: usize = 32;
    /// Longest node or client name (a DNS label).
    pub const LABEL_MAX: usize = 63;

    /// Validates `s` as a label of at most `max` characters; `field` names the
    /// proto field in the violation.
    pub fn parse(field: &str, s: &str, max: usize) -> Result<Self, FieldViolation> {
        let bad = |why: String| Err(FieldViolation::new(field, why));
        if s.is_empty() {
            return bad("must not be empty".into());
        }
        let len = s.chars().count();
        if len > max {
            return bad(format!("{} is {len} characters; at most {max}", shown(s)));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return bad(format!(
                "{s:?} contains {c:?}; only lowercase letters a-z, digits and '-' are allowed"
            ));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return bad(format!("{s:?} must not start or end with '-'"));
        }
        Ok(DnsLabel(s.to_owned()))
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a CIDR that must have no host bits set; the violation gives the
/// normalized form.
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet, FieldViolation> {
    let net = IpNet::from_str(s.trim()).map_err(|_| {
        FieldViolation::new(
            field,
            format!(
                "{} is not a CIDR range (e.g. 10.0.0.0/24 or fd00::/64)",
                shown(s)
            ),
        )
    })?;
    if net.trunc() != net {
        return Err(FieldViolation::new(
            field,
            format!("{s} has host bits set; the range is {}", net.trunc()),
        ));
    }
    Ok(net)
}

/// Parses an IPv4 network range with prefix at most /30.
pub fn parse_range4(field: &str, s: &str) -> Result<Ipv4Net, FieldViolation> {
    match parse_cidr(field, s)? {
        IpNet::V4(n) if n.prefix_len() <= 30 => Ok(n),
        IpNet::V4(n) => Err(FieldViolation::new(
            field,
            format!("{n} is too small: the prefix must be /30 or shorter"),
        )),
        IpNet::V6(n) => Err(FieldViolation::new(
            field,
            format!("{n} is IPv6; put IPv6 ranges in address_range6"),
        )),
    }
}

/// Parses an IPv6 network range with prefix at most /126.
pub fn parse_range6(field: &str, s: &str) -> Result<Ipv6Net, FieldViolation> {
    match parse_cidr(field, s)? {
        IpNet::V6(n) if n.prefix_len() <= 126 => Ok(n),
        IpNet::V6(n) => Err(FieldViolation::new(
            field,
            format!("{n} is too small: the prefix must be /126 or shorter"),
        )),
        IpNet::V4(n) => Err(FieldViolation::new(
            field,
            format!("{n} is IPv4; put IPv4 ranges in address_range"),
        )),
    }
}

/// Parses a list of IP addresses; violations name `field[i]`.
pub fn parse_ips(field: &str, list: &[String]) -> Result<Vec<IpAddr>, FieldViolation> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            IpAddr::from_str(s.trim()).map_err(|_| {
                FieldViolation::new(
                    format!("{field}[{i}]"),
                    format!("{} is not an IP address", shown(s)),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_rules() {
        let max = DnsLabel::NETWORK_MAX;
        assert!(DnsLabel::parse("n", "office-1", max).is_ok());
        assert!(DnsLabel::parse("n", "a", max).is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "Office",
            "a_b",
            "a.b",
            "a b",
            &"x".repeat(33),
        ] {
            let e = DnsLabel::parse("n", bad, max).unwrap_err();
            assert_eq!(e.field, "n", "{bad}");
        }
        assert!(DnsLabel::parse("n", &"x".repeat(32), max).is_ok());
    }

    #[test]
    fn cidr_host_bits_name_the_normalized_range() {
        let e = parse_cidr("r", "10.1.2.3/16").unwrap_err();
        assert!(e.description.contains("10.1.0.0/16"), "{}", e.description);
        assert!(parse_cidr("r", "10.1.0.0/16").is_ok());
        assert!(parse_cidr("r", "nonsense").is_err());
    }

    #[test]
    fn range_prefix_limits() {
        assert!(parse_range4("r", "10.0.0.0/30").is_ok());
        assert!(parse_range4("r", "10.0.0.0/31").is_err());
        assert!(parse_range4("r", "fd00::/64").is_err());
        assert!(parse_range6("r", "fd00::/126").is_ok());
        assert!(parse_range6("r", "fd00::/127").is_err());
        assert!(parse_range6("r", "10.0.0.0/8").is_err());
    }

    #[test]
    fn ip_lists_name_the_index() {
        let e = parse_ips("dns", &["1.1.1.1".into(), "x".into()]).unwrap_err();
        assert_eq!(e.field, "dns[1]");
        assert_eq!(parse_ips("dns", &["::1".into()]).unwrap().len(), 1);
    }
}

/// Refuses control characters (NUL among them, which PostgreSQL cannot
/// store) in free text such as a description.
pub fn check_plain_text(field: &str, s: &str) -> Result<(), FieldViolation> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(FieldViolation::new(
            field,
            format!("contains the control character {c:?}; use plain text"),
        )),
        None => Ok(()),
    }
}

/// Free text from a machine (an agent's error message) made storable:
/// control characters other than newline and tab become U+FFFD.
pub fn sanitize_text(s: String) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return s;
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_or_replaced() {
        assert!(check_plain_text("f", "laptop of ana, 2nd floor").is_ok());
        for bad in ["a\0b", "\u{7}", "line\nbreak"] {
            let v = check_plain_text("f", bad).unwrap_err();
            assert_eq!(v.field, "f");
        }
        assert_eq!(sanitize_text("ok\n\tfine".into()), "ok\n\tfine");
        assert_eq!(
            sanitize_text("nul\0x\u{1b}[1m".into()),
            "nul\u{fffd}x\u{fffd}[1m"
        );
    }
}
