//! Overlay address allocation. Addresses are kept as offsets from the start
//! of the network's range; the store finds the lowest free offset and these
//! functions decide whether it is usable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Address family of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Stored form.
    pub fn as_i64(self) -> i64 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// Number of addresses in `range` (saturating at `u128::MAX` for a /0).
fn size(range: IpNet) -> u128 {
    let host_bits = u32::from(range.max_prefix_len() - range.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Whether `offset` is a host address that may be handed out in `range`:
/// never offset 0 (the network address) and, in IPv4, never the broadcast
/// address.
pub fn usable(range: IpNet, offset: u128) -> bool {
    match range {
        IpNet::V4(_) => offset >= 1 && offset < size(range) - 1,
        IpNet::V6(_) => offset >= 1 && offset < size(range),
    }
}

/// Number of addresses [`usable`] allows in `range` (saturating).
pub fn capacity(range: IpNet) -> u128 {
    match range {
        IpNet::V4(_) => size(range).saturating_sub(2),
        IpNet::V6(_) => size(range).saturating_sub(1),
    }
}

/// The address at `offset` in a v4 range.
pub fn v4_at(range: Ipv4Net, offset: u128) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range.network()).wrapping_add(offset as u32))
}

/// The address at `offset` in a v6 range.
pub fn v6_at(range: Ipv6Net, offset: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(range.network()).wrapping_add(offset))
}

/// The offset of `addr` in `range`, when it is inside.
pub fn offset_of(range: IpNet, addr: IpAddr) -> Option<u128> {
    if !range.contains(&addr) {
        return None;
    }
    match (range, addr) {
        (IpNet::V4(r), IpAddr::V4(a)) => Some(u128::from(u32::from(a) - u32::from(r.network()))),
        (IpNet::V6(r), IpAddr::V6(a)) => Some(u128::from(a) - u128::from(r.network())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_29_has_six_hosts() {
        let r: IpNet = "10.0.0.0/29".parse().unwrap();
        let ok: Vec<u128> = (0..8).filter(|o| usable(r, *o)).collect();
        assert_eq!(ok, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(capacity(r), 6);
    }

    #[test]
    fn v6_excludes_only_the_subnet_address() {
        let r: IpNet = "fd00::/126".parse().unwrap();
        let ok: Vec<u128> = (0..4).filter(|o| usable(r, *o)).collect();
        assert_eq!(ok, vec![1, 2, 3]);
    }

    #[test]
    fn offsets_map_both_ways() {
        let r4: Ipv4Net = "10.1.0.0/16".parse().unwrap();
        let a = v4_at(r4, 258);
        assert_eq!(a, Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(offset_of(IpNet::V4(r4), a.into()), Some(258));
        let r6: Ipv6Net = "fd00:1::/64".parse().unwrap();
        let b = v6_at(r6, 5);
        assert_eq!(b.to_string(), "fd00:1::5");
        assert_eq!(offset_of(IpNet::V6(r6), b.into()), Some(5));
        assert_eq!(offset_of(IpNet::V4(r4), "10.2.0.1".parse().unwrap()), None);
    }
}
