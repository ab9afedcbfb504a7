//! The agent's plan: what the host has now, what the node's config wants,
//! and the list of steps between them. Pure: no I/O, unit-tested without
//! root. The executor ([`super::linux`]) runs the steps; `--dry-run` prints
//! them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The fwmark of the WireGuard device's own UDP packets (0x6d70, "mp"; not
/// wg-quick's 51820, so both can run on one host).
pub const FWMARK: u32 = 0x6d70;
/// The routing table a full tunnel's default route lives in.
pub const TABLE: u32 = 0x6d70;
/// Priority of `lookup main suppress_prefixlength 0` (evaluated first:
/// every route of the main table but its default routes).
pub const PRIO_MAIN: u32 = 5210;
/// Priority of `not fwmark FWMARK lookup TABLE` (then everything else,
/// except the device's own marked packets, into the tunnel).
pub const PRIO_TUNNEL: u32 = 5211;

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of a range.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The family of an address.
    pub fn of_addr(a: &IpAddr) -> Self {
        match a {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// From the config's 4 / 6.
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }

    /// `iptables` or `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn default_route(self) -> IpNet {
        match self {
            Family::V4 => "0.0.0.0/0".parse().expect("valid"),
            Family::V6 => "::/0".parse().expect("valid"),
        }
    }
}

/// A kernel setting the agent turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Sysctl {
    /// net.ipv4.ip_forward
    Forward4,
    /// net.ipv6.conf.all.forwarding
    Forward6,
    /// net.ipv4.conf.all.src_valid_mark (a full tunnel's marked replies)
    SrcValidMark,
}

impl Sysctl {
    /// The family whose forwarding this is.
    pub fn family(self) -> Option<Family> {
        match self {
            Sysctl::Forward4 => Some(Family::V4),
            Sysctl::Forward6 => Some(Family::V6),
            Sysctl::SrcValidMark => None,
        }
    }

    /// The file under /proc/sys.
    pub fn path(self) -> &'static str {
        match self {
            Sysctl::Forward4 => "/proc/sys/net/ipv4/ip_forward",
            Sysctl::Forward6 => "/proc/sys/net/ipv6/conf/all/forwarding",
            Sysctl::SrcValidMark => "/proc/sys/net/ipv4/conf/all/src_valid_mark",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sysctl::Forward4 => "net.ipv4.ip_forward",
            Sysctl::Forward6 => "net.ipv6.conf.all.forwarding",
            Sysctl::SrcValidMark => "net.ipv4.conf.all.src_valid_mark",
        }
    }
}

/// A WireGuard peer as the device holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    /// Where to send its packets; `None` leaves whatever the device learnt.
    pub endpoint: Option<SocketAddr>,
    /// Ranges routed to it, sorted.
    pub allowed_ips: Vec<IpNet>,
    /// PersistentKeepalive seconds; 0 is off.
    pub keepalive: u16,
}

impl PeerSpec {
    /// Whether the device's `current` entry already is what `self` wants.
    /// An endpoint the config leaves open matches whatever the device
    /// learnt from the peer's packets.
    fn satisfied_by(&self, current: &PeerSpec) -> bool {
        self.allowed_ips == current.allowed_ips
            && self.keepalive == current.keepalive
            && (self.endpoint.is_none() || self.endpoint == current.endpoint)
    }
}

/// A jump from a built-in chain into meshplane's chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hook {
    /// IPv4 or IPv6.
    pub family: Family,
    /// "filter" or "nat".
    pub table: String,
    /// The built-in chain (FORWARD, POSTROUTING).
    pub chain: String,
    /// The rule (e.g. "-j MESHPLANE-FWD").
    pub rule: String,
}

/// One family's firewall: `iptables-restore --noflush` text and hooks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FirewallSpec {
    /// The restore text on meshplane's chains.
    pub restore: String,
    /// Jumps into them.
    pub hooks: BTreeSet<Hook>,
}

/// A host route that keeps the control path (the agent's own connection to
/// the server) out of a full tunnel: a copy of the main table's default
/// route, for one address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bypass {
    /// The server's address.
    pub address: IpAddr,
    /// The default route's next hop.
    pub gateway: Option<IpAddr>,
    /// The default route's interface.
    pub dev: String,
}

/// A route of the host's main table (not the agent's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// Destination.
    pub destination: IpNet,
    /// Interface.
    pub dev: String,
    /// Next hop.
    pub gateway: Option<IpAddr>,
}

/// How the agent makes a missing WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Create {
    /// Kernel WireGuard, through netlink.
    Kernel,
    /// A userspace implementation started as `CMD IFNAME`.
    Userspace(String),
}

/// What the node's config wants on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// Our public key (the device's private key must match it).
    pub public_key: String,
    /// WireGuard listen port.
    pub listen_port: u16,
    /// Interface MTU.
    pub mtu: u32,
    /// Overlay addresses with the network's prefix.
    pub addresses: BTreeSet<IpNet>,
    /// Peers by public key (base64).
    pub peers: BTreeMap<String, PeerSpec>,
    /// Ranges routed into the interface from the main table.
    pub routes: BTreeSet<IpNet>,
    /// Families whose whole traffic goes through the tunnel (a /0 route).
    pub full_tunnel: BTreeSet<Family>,
    /// Families that forward (gateways).
    pub forwarding: BTreeSet<Family>,
    /// Firewall per family; a family without rules is absent.
    pub firewall: BTreeMap<Family, FirewallSpec>,
    /// The server's addresses: the control path a full tunnel must spare.
    pub control: Vec<IpAddr>,
}

/// The WireGuard device as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    /// Public key of its private key, when it has one.
    pub public_key: Option<String>,
    /// Listen port.
    pub listen_port: u16,
    /// fwmark (0 is none).
    pub fwmark: u32,
    /// Peers by public key.
    pub peers: BTreeMap<String, PeerSpec>,
}

/// What the host has, as far as the agent is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The interface exists: (up, mtu).
    pub link: Option<(bool, u32)>,
    /// The WireGuard device behind it.
    pub device: Option<Device>,
    /// Addresses on the interface.
    pub addresses: BTreeSet<IpNet>,
    /// Routes into the interface in the main table (the kernel's own
    /// prefix routes excluded).
    pub routes: BTreeSet<IpNet>,
    /// Families with the full-tunnel default route in [`TABLE`].
    pub tunnel_routes: BTreeSet<Family>,
    /// Families with both policy rules of a full tunnel.
    pub tunnel_rules: BTreeSet<Family>,
    /// The main table's other routes.
    pub host_routes: Vec<HostRoute>,
    /// Bypass routes in place (recorded when added, checked against the
    /// table).
    pub bypass: BTreeSet<Bypass>,
    /// Settings that are on.
    pub sysctl_on: BTreeSet<Sysctl>,
    /// Settings the agent turned on (recorded).
    pub sysctl_ours: BTreeSet<Sysctl>,
    /// Firewall the agent applied per family (recorded), hooks as found.
    pub firewall: BTreeMap<Family, FirewallSpec>,
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the interface.
    CreateInterface(Create),
    /// Set the device's private key, listen port and fwmark and replace
    /// its peers (a new device, or a key or port change).
    ConfigureDevice {
        /// Listen port.
        listen_port: u16,
        /// fwmark.
        fwmark: u32,
        /// Every peer.
        peers: BTreeMap<String, PeerSpec>,
    },
    /// Add or update one peer in place.
    UpsertPeer(String, PeerSpec),
    /// Remove one peer.
    RemovePeer(String),
    /// Set the MTU.
    SetMtu(u32),
    /// Bring the interface up.
    SetUp,
    /// Add an overlay address.
    AddAddress(IpNet),
    /// Remove an address.
    RemoveAddress(IpNet),
    /// Route a range into the interface (main table; never replaces a
    /// route the host has).
    AddRoute(IpNet),
    /// Remove such a route.
    RemoveRoute(IpNet),
    /// Keep the server reachable outside a full tunnel.
    AddBypass(Bypass),
    /// Remove that route.
    RemoveBypass(Bypass),
    /// Default route of [`TABLE`] into the interface.
    AddTunnelRoute(Family),
    /// Remove it.
    RemoveTunnelRoute(Family),
    /// The two policy rules of a full tunnel.
    AddTunnelRules(Family),
    /// Remove them.
    RemoveTunnelRules(Family),
    /// Turn a setting on (true) or back off (false).
    SetSysctl(Sysctl, bool),
    /// `iptables-restore --noflush` of meshplane's chains, inserting the
    /// missing jumps into them in the same transaction (so a gateway never
    /// forwards through rules that are half there).
    RestoreFirewall {
        /// IPv4 or IPv6.
        family: Family,
        /// The restore text.
        restore: String,
        /// Jumps to insert with it (each only if still missing).
        hooks: BTreeSet<Hook>,
    },
    /// Delete a jump.
    RemoveHook(Hook),
    /// Flush and delete meshplane's chains of a family.
    DropChains(Family),
    /// Delete the interface (only one the agent made).
    DeleteInterface,
}

/// The steps, and what was left out on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// In order.
    pub steps: Vec<Step>,
    /// Things not done, with why (e.g. a route the host already has).
    pub notes: Vec<String>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The steps from `have` to `want` on interface `ifname`. With `create`
/// a missing interface is made that way; without, a missing interface is
/// an error the executor reports.
pub fn plan(have: &Observed, want: &Desired, ifname: &str, create: Option<&Create>) -> Plan {
    let mut p = Plan::default();
    let s = &mut p.steps;

    // The interface and its device.
    let fresh = have.link.is_none();
    if fresh {
        match create {
            Some(c) => s.push(Step::CreateInterface(c.clone())),
            None => p.notes.push(format!(
                "interface {ifname} does not exist and will not be created"
            )),
        }
    }
    let empty = Device::default();
    let device = have.device.as_ref().unwrap_or(&empty);
    let key_ok = device.public_key.as_deref() == Some(want.public_key.as_str());
    let reconfigure =
        fresh || !key_ok || device.listen_port != want.listen_port || device.fwmark != FWMARK;
    if reconfigure {
        s.push(Step::ConfigureDevice {
            listen_port: want.listen_port,
            fwmark: FWMARK,
            peers: want.peers.clone(),
        });
    } else {
        for key in device.peers.keys() {
            if !want.peers.contains_key(key) {
                s.push(Step::RemovePeer(key.clone()));
            }
        }
        for (key, spec) in &want.peers {
            match device.peers.get(key) {
                Some(cur) if spec.satisfied_by(cur) => {}
                _ => s.push(Step::UpsertPeer(key.clone(), spec.clone())),
            }
        }
    }
    let (up, mtu) = have.link.unwrap_or((false, 0));
    if want.mtu != 0 && (fresh || mtu != want.mtu) {
        s.push(Step::SetMtu(want.mtu));
    }
    for a in have.addresses.difference(&want.addresses) {
        s.push(Step::RemoveAddress(*a));
    }
    // Configuring a kernel device flushes its addresses: add them all again
    // then (adding one that is there is harmless).
    for a in &want.addresses {
        if reconfigure || !have.addresses.contains(a) {
            s.push(Step::AddAddress(*a));
        }
    }
    if fresh || !up {
        s.push(Step::SetUp);
    }

    // Routes into the interface from the main table; never on top of a
    // route the host has for the same range. Reconfiguring a kernel device
    // flushes its addresses, and their routes go with them: add all again
    // then (one that is there is harmless).
    for r in have.routes.difference(&want.routes) {
        s.push(Step::RemoveRoute(*r));
    }
    for r in &want.routes {
        if have.routes.contains(r) && !reconfigure {
            continue;
        }
        if let Some(h) = have.host_routes.iter().find(|h| h.destination == *r) {
            p.notes.push(format!(
                "route {r} not added: the host already routes it through {}",
                h.dev
            ));
            continue;
        }
        s.push(Step::AddRoute(*r));
    }

    // Full tunnel, wg-quick's way. Adding: the control path first, then the
    // tunnel's table, then the rules that send traffic into it; removing:
    // the other way round, so the control path never enters the tunnel.
    let wanted_bypass: BTreeSet<Bypass> = if want.full_tunnel.is_empty() {
        BTreeSet::new()
    } else {
        want.control
            .iter()
            .filter(|a| want.full_tunnel.contains(&Family::of_addr(a)) && !a.is_loopback())
            .filter_map(|a| bypass_for(*a, &have.host_routes))
            .collect()
    };
    for b in wanted_bypass.difference(&have.bypass) {
        s.push(Step::AddBypass(b.clone()));
    }
    for f in [Family::V4, Family::V6] {
        let want_tunnel = want.full_tunnel.contains(&f);
        if want_tunnel {
            if reconfigure || !have.tunnel_routes.contains(&f) {
                s.push(Step::AddTunnelRoute(f));
            }
            if !have.tunnel_rules.contains(&f) {
                s.push(Step::AddTunnelRules(f));
            }
        } else {
            if have.tunnel_rules.contains(&f) {
                s.push(Step::RemoveTunnelRules(f));
            }
            if have.tunnel_routes.contains(&f) {
                s.push(Step::RemoveTunnelRoute(f));
            }
        }
    }
    for b in have.bypass.difference(&wanted_bypass) {
        s.push(Step::RemoveBypass(b.clone()));
    }

    // Kernel settings: on when wanted, and only once the firewall below is
    // in place (a gateway that forwarded before its NAT rules would leave
    // un-NATed conntrack entries behind); back off, first, only when the
    // agent turned them on.
    let mut wanted_sysctl = BTreeSet::new();
    if want.forwarding.contains(&Family::V4) {
        wanted_sysctl.insert(Sysctl::Forward4);
    }
    if want.forwarding.contains(&Family::V6) {
        wanted_sysctl.insert(Sysctl::Forward6);
    }
    if want.full_tunnel.contains(&Family::V4) {
        wanted_sysctl.insert(Sysctl::SrcValidMark);
    }
    for k in have.sysctl_ours.difference(&wanted_sysctl) {
        if have.sysctl_on.contains(k) {
            s.push(Step::SetSysctl(*k, false));
        }
    }

    // Firewall: chains restored, with the missing jumps into them, when
    // either changed; a family without rules loses its jumps and chains.
    for f in [Family::V4, Family::V6] {
        let cur = have.firewall.get(&f);
        match want.firewall.get(&f) {
            Some(w) => {
                let cur_hooks = cur.map(|c| c.hooks.clone()).unwrap_or_default();
                for h in cur_hooks.difference(&w.hooks) {
                    s.push(Step::RemoveHook(h.clone()));
                }
                let missing: BTreeSet<Hook> = w.hooks.difference(&cur_hooks).cloned().collect();
                if cur.map(|c| &c.restore) != Some(&w.restore) || !missing.is_empty() {
                    s.push(Step::RestoreFirewall {
                        family: f,
                        restore: w.restore.clone(),
                        hooks: missing,
                    });
                }
            }
            None => {
                if let Some(c) = cur {
                    for h in &c.hooks {
                        s.push(Step::RemoveHook(h.clone()));
                    }
                    s.push(Step::DropChains(f));
                }
            }
        }
    }

    for k in &wanted_sysctl {
        if !have.sysctl_on.contains(k) {
            s.push(Step::SetSysctl(*k, true));
        }
    }
    p
}

/// `restore` with an insertion of each hook added to its table's section,
/// so the chains and the jumps into them change in one transaction.
pub fn with_hooks<'a>(restore: &str, hooks: impl IntoIterator<Item = &'a Hook>) -> String {
    let hooks: Vec<&Hook> = hooks.into_iter().collect();
    let insert = |table: &str, out: &mut String| {
        for h in hooks.iter().filter(|h| h.table == table) {
            out.push_str(&format!("-I {} 1 {}\n", h.chain, h.rule));
        }
    };
    let mut out = String::new();
    let mut table = String::new();
    let mut seen = BTreeSet::new();
    for line in restore.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
            seen.insert(table.clone());
        }
        if line.trim() == "COMMIT" {
            insert(&table, &mut out);
        }
        out.push_str(line);
        out.push('\n');
    }
    for t in hooks
        .iter()
        .map(|h| h.table.as_str())
        .collect::<BTreeSet<_>>()
    {
        if !seen.contains(t) {
            out.push_str(&format!("*{t}\n"));
            insert(t, &mut out);
            out.push_str("COMMIT\n");
        }
    }
    out
}

/// Everything the agent applied, removed: `meshctl agent down` and a
/// deleted node. The interface is deleted when the agent made it (its
/// addresses, routes and peers go with it); otherwise those are removed one
/// by one and the interface stays.
pub fn teardown(have: &Observed, delete_interface: bool) -> Plan {
    let want = Desired {
        public_key: have
            .device
            .as_ref()
            .and_then(|d| d.public_key.clone())
            .unwrap_or_default(),
        listen_port: have.device.as_ref().map(|d| d.listen_port).unwrap_or(0),
        ..Desired::default()
    };
    let mut p = plan(have, &want, "", None);
    p.notes.clear();
    p.steps.retain(|s| match s {
        // Nothing to configure on an interface that is going away or stays
        // as it was made.
        Step::CreateInterface(_) | Step::ConfigureDevice { .. } | Step::SetMtu(_) | Step::SetUp => {
            false
        }
        Step::RemovePeer(_) | Step::RemoveAddress(_) | Step::RemoveRoute(_) => !delete_interface,
        _ => true,
    });
    if !delete_interface
        && have.link.is_some()
        && let Some(d) = &have.device
    {
        for k in d.peers.keys() {
            let step = Step::RemovePeer(k.clone());
            if !p.steps.contains(&step) {
                p.steps.push(step);
            }
        }
    }
    if delete_interface && have.link.is_some() {
        p.steps.push(Step::DeleteInterface);
    }
    p
}

/// The bypass route for `address`: needed only when the main table reaches
/// it through a default route (which a full tunnel's
/// `suppress_prefixlength 0` rule hides); a more specific route (the
/// server on the LAN) already wins over the tunnel.
pub fn bypass_for(address: IpAddr, routes: &[HostRoute]) -> Option<Bypass> {
    let best = routes
        .iter()
        .filter(|r| r.destination.contains(&address))
        .max_by_key(|r| r.destination.prefix_len())?;
    (best.destination.prefix_len() == 0).then(|| Bypass {
        address,
        gateway: best.gateway,
        dev: best.dev.clone(),
    })
}

/// The range a family's default route covers (for display and routes).
pub fn default_route(f: Family) -> IpNet {
    f.default_route()
}

fn short(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

fn peer_text(p: &PeerSpec) -> String {
    let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
    let mut t = format!(
        "allowed-ips {}",
        if ips.is_empty() {
            "(none)".into()
        } else {
            ips.join(",")
        }
    );
    if let Some(e) = p.endpoint {
        t.push_str(&format!(" endpoint {e}"));
    }
    if p.keepalive != 0 {
        t.push_str(&format!(" keepalive {}", p.keepalive));
    }
    t
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateInterface(Create::Kernel) => {
                write!(f, "create WireGuard interface (kernel)")
            }
            Step::CreateInterface(Create::Userspace(cmd)) => {
                write!(f, "create WireGuard interface with `{cmd}`")
            }
            Step::ConfigureDevice {
                listen_port,
                fwmark,
                peers,
            } => write!(
                f,
                "wireguard: set private key, listen-port {listen_port}, fwmark {fwmark}, {} peer(s)",
                peers.len()
            ),
            Step::UpsertPeer(k, p) => {
                write!(f, "wireguard: set peer {}… {}", short(k), peer_text(p))
            }
            Step::RemovePeer(k) => write!(f, "wireguard: remove peer {}…", short(k)),
            Step::SetMtu(m) => write!(f, "link: mtu {m}"),
            Step::SetUp => write!(f, "link: up"),
            Step::AddAddress(a) => write!(f, "address: add {a}"),
            Step::RemoveAddress(a) => write!(f, "address: remove {a}"),
            Step::AddRoute(r) => write!(f, "route: add {r}"),
            Step::RemoveRoute(r) => write!(f, "route: remove {r}"),
            Step::AddBypass(b) => write!(
                f,
                "route: add {} {} dev {} (control path outside the tunnel)",
                b.address,
                b.gateway.map(|g| format!("via {g}")).unwrap_or_default(),
                b.dev
            ),
            Step::RemoveBypass(b) => write!(f, "route: remove {} dev {}", b.address, b.dev),
            Step::AddTunnelRoute(fam) => {
                write!(f, "route: add {} table {TABLE}", fam.default_route())
            }
            Step::RemoveTunnelRoute(fam) => {
                write!(f, "route: remove {} table {TABLE}", fam.default_route())
            }
            Step::AddTunnelRules(fam) => write!(
                f,
                "rule ({fam:?}): add `lookup main suppress_prefixlength 0` (pref {PRIO_MAIN}), `not fwmark {FWMARK} lookup {TABLE}` (pref {PRIO_TUNNEL})"
            ),
            Step::RemoveTunnelRules(fam) => {
                write!(f, "rule ({fam:?}): remove the full-tunnel rules")
            }
            Step::SetSysctl(k, on) => write!(f, "sysctl: {}={}", k.name(), u8::from(*on)),
            Step::RestoreFirewall {
                family,
                restore,
                hooks,
            } => write!(
                f,
                "firewall: {}-restore --noflush ({} rule(s){})",
                family.iptables(),
                restore.lines().filter(|l| l.starts_with("-A ")).count(),
                if hooks.is_empty() {
                    String::new()
                } else {
                    let h: Vec<String> = hooks
                        .iter()
                        .map(|h| format!("{} {}", h.chain, h.rule))
                        .collect();
                    format!(", inserting {}", h.join(", "))
                }
            ),
            Step::RemoveHook(h) => write!(
                f,
                "firewall: {} -t {} -D {} {}",
                h.family.iptables(),
                h.table,
                h.chain,
                h.rule
            ),
            Step::DropChains(fam) => {
                write!(f, "firewall: {} remove meshplane's chains", fam.iptables())
            }
            Step::DeleteInterface => write!(f, "delete the WireGuard interface"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn peer(ips: &[&str], endpoint: Option<&str>) -> PeerSpec {
        PeerSpec {
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            allowed_ips: ips.iter().map(|i| net(i)).collect(),
            keepalive: 20,
        }
    }

    fn want() -> Desired {
        Desired {
            public_key: "PUB".into(),
            listen_port: 51821,
            mtu: 1420,
            addresses: [net("10.101.0.3/16")].into(),
            peers: [
                (
                    "A".to_string(),
                    peer(&["10.101.0.1/32"], Some("192.0.2.1:51821")),
                ),
                (
                    "B".to_string(),
                    peer(&["10.101.0.2/32", "10.10.10.0/24"], None),
                ),
            ]
            .into(),
            routes: [net("10.10.10.0/24")].into(),
            control: vec!["192.0.2.10".parse().unwrap()],
            ..Desired::default()
        }
    }

    /// What the host looks like once `want` is applied.
    fn applied(w: &Desired) -> Observed {
        Observed {
            link: Some((true, w.mtu)),
            device: Some(Device {
                public_key: Some(w.public_key.clone()),
                listen_port: w.listen_port,
                fwmark: FWMARK,
                peers: w.peers.clone(),
            }),
            addresses: w.addresses.clone(),
            routes: w.routes.clone(),
            tunnel_routes: w.full_tunnel.clone(),
            tunnel_rules: w.full_tunnel.clone(),
            firewall: w.firewall.clone(),
            ..Observed::default()
        }
    }

    #[test]
    fn a_new_interface_is_created_configured_and_routed() {
        let p = plan(&Observed::default(), &want(), "wg0", Some(&Create::Kernel));
        assert_eq!(p.steps[0], Step::CreateInterface(Create::Kernel));
        assert!(
            matches!(&p.steps[1], Step::ConfigureDevice { peers, fwmark: FWMARK, .. } if peers.len() == 2)
        );
        assert!(p.steps.contains(&Step::AddAddress(net("10.101.0.3/16"))));
        assert!(p.steps.contains(&Step::SetUp));
        assert!(p.steps.contains(&Step::AddRoute(net("10.10.10.0/24"))));
        // Peers come with the device, not one by one.
        assert!(!p.steps.iter().any(|s| matches!(s, Step::UpsertPeer(..))));
    }

    #[test]
    fn an_applied_config_plans_nothing() {
        let w = want();
        let p = plan(&applied(&w), &w, "wg0", Some(&Create::Kernel));
        assert!(p.is_empty(), "{:?}", p.steps);
    }

    #[test]
    fn only_changed_peers_are_touched() {
        let w = want();
        let have = applied(&w);
        let mut w2 = w.clone();
        w2.peers
            .get_mut("B")
            .unwrap()
            .allowed_ips
            .push(net("10.20.0.0/16"));
        w2.peers.remove("A");
        w2.peers.insert("C".into(), peer(&["10.101.0.9/32"], None));
        let p = plan(&have, &w2, "wg0", None);
        assert_eq!(
            p.steps,
            vec![
                Step::RemovePeer("A".into()),
                Step::UpsertPeer("B".into(), w2.peers["B"].clone()),
                Step::UpsertPeer("C".into(), w2.peers["C"].clone()),
            ]
        );
    }

    #[test]
    fn a_learnt_endpoint_is_not_a_change() {
        let w = want();
        let mut have = applied(&w);
        // B has no endpoint in the config; the device learnt one.
        have.device
            .as_mut()
            .unwrap()
            .peers
            .get_mut("B")
            .unwrap()
            .endpoint = Some("198.51.100.4:40000".parse().unwrap());
        assert!(plan(&have, &w, "wg0", None).is_empty());
        // A's configured endpoint differs from the device's: set again.
        have.device
            .as_mut()
            .unwrap()
            .peers
            .get_mut("A")
            .unwrap()
            .endpoint = Some("198.51.100.4:40000".parse().unwrap());
        let p = plan(&have, &w, "wg0", None);
        assert_eq!(
            p.steps,
            vec![Step::UpsertPeer("A".into(), w.peers["A"].clone())]
        );
    }

    #[test]
    fn a_wrong_key_or_port_reconfigures_the_device() {
        // A kernel device loses its addresses, and with them its routes
        // (the full tunnel's too), when reconfigured: all come back in the
        // same plan.
        let mut w = want();
        w.full_tunnel.insert(Family::V4);
        let again = [
            Step::AddAddress(net("10.101.0.3/16")),
            Step::AddRoute(net("10.10.10.0/24")),
            Step::AddTunnelRoute(Family::V4),
        ];
        let mut have = applied(&w);
        have.sysctl_on.insert(Sysctl::SrcValidMark);
        have.device.as_mut().unwrap().public_key = Some("OTHER".into());
        let p = plan(&have, &w, "wg0", None);
        assert!(
            matches!(p.steps[0], Step::ConfigureDevice { .. }),
            "{:?}",
            p.steps
        );
        assert_eq!(p.steps[1..], again[..]);
        let mut have = applied(&w);
        have.sysctl_on.insert(Sysctl::SrcValidMark);
        have.device.as_mut().unwrap().listen_port = 1;
        let p = plan(&have, &w, "wg0", None);
        assert!(
            matches!(p.steps[0], Step::ConfigureDevice { .. }),
            "{:?}",
            p.steps
        );
        assert_eq!(p.steps[1..], again[..]);
    }

    #[test]
    fn routes_never_replace_the_hosts_own() {
        let w = want();
        let mut have = applied(&w);
        have.routes.clear();
        have.host_routes.push(HostRoute {
            destination: net("10.10.10.0/24"),
            dev: "eth1".into(),
            gateway: None,
        });
        let p = plan(&have, &w, "wg0", None);
        assert!(p.steps.is_empty());
        assert!(
            p.notes[0].contains("10.10.10.0/24") && p.notes[0].contains("eth1"),
            "{:?}",
            p.notes
        );
        // A less specific host route does not stop it.
        have.host_routes[0].destination = net("10.0.0.0/8");
        assert_eq!(
            plan(&have, &w, "wg0", None).steps,
            vec![Step::AddRoute(net("10.10.10.0/24"))]
        );
    }

    #[test]
    fn addresses_and_routes_follow_the_config() {
        let w = want();
        let mut have = applied(&w);
        have.addresses.insert(net("10.101.0.99/16"));
        have.routes.insert(net("172.16.0.0/12"));
        let p = plan(&have, &w, "wg0", None);
        assert_eq!(
            p.steps,
            vec![
                Step::RemoveAddress(net("10.101.0.99/16")),
                Step::RemoveRoute(net("172.16.0.0/12"))
            ]
        );
    }

    fn default_via(gw: &str, dev: &str) -> HostRoute {
        HostRoute {
            destination: net("0.0.0.0/0"),
            dev: dev.into(),
            gateway: Some(gw.parse().unwrap()),
        }
    }

    #[test]
    fn full_tunnel_spares_the_control_path() {
        let mut w = want();
        w.full_tunnel.insert(Family::V4);
        let mut have = applied(&want());
        have.host_routes = vec![
            default_via("192.168.1.1", "eth0"),
            HostRoute {
                destination: net("192.168.1.0/24"),
                dev: "eth0".into(),
                gateway: None,
            },
        ];
        let p = plan(&have, &w, "wg0", None);
        let bypass = Bypass {
            address: "192.0.2.10".parse().unwrap(),
            gateway: Some("192.168.1.1".parse().unwrap()),
            dev: "eth0".into(),
        };
        assert_eq!(
            p.steps,
            vec![
                Step::AddBypass(bypass.clone()),
                Step::AddTunnelRoute(Family::V4),
                Step::AddTunnelRules(Family::V4),
                Step::SetSysctl(Sysctl::SrcValidMark, true),
            ]
        );
        // Applied: nothing more. Tunnel gone: everything back, the setting
        // only when the agent turned it on.
        let mut have2 = have.clone();
        have2.bypass.insert(bypass.clone());
        have2.tunnel_routes.insert(Family::V4);
        have2.tunnel_rules.insert(Family::V4);
        have2.sysctl_on.insert(Sysctl::SrcValidMark);
        assert!(plan(&have2, &w, "wg0", None).is_empty());
        let p = plan(&have2, &want(), "wg0", None);
        assert_eq!(
            p.steps,
            vec![
                Step::RemoveTunnelRules(Family::V4),
                Step::RemoveTunnelRoute(Family::V4),
                Step::RemoveBypass(bypass),
            ]
        );
        have2.sysctl_ours.insert(Sysctl::SrcValidMark);
        assert!(
            plan(&have2, &want(), "wg0", None)
                .steps
                .contains(&Step::SetSysctl(Sysctl::SrcValidMark, false))
        );
    }

    #[test]
    fn a_server_on_a_more_specific_route_needs_no_bypass() {
        let routes = vec![
            default_via("192.168.1.1", "eth0"),
            HostRoute {
                destination: net("192.0.2.0/24"),
                dev: "eth1".into(),
                gateway: None,
            },
        ];
        assert_eq!(bypass_for("192.0.2.10".parse().unwrap(), &routes), None);
        assert!(bypass_for("203.0.113.1".parse().unwrap(), &routes).is_some());
        assert_eq!(bypass_for("203.0.113.1".parse().unwrap(), &[]), None);
    }

    fn gateway_firewall() -> FirewallSpec {
        FirewallSpec {
            restore: "*filter\n:MESHPLANE-FWD - [0:0]\n-A MESHPLANE-FWD -i wg0 -o eth1 -d 10.10.10.0/24 -j ACCEPT\nCOMMIT\n".into(),
            hooks: [Hook {
                family: Family::V4,
                table: "filter".into(),
                chain: "FORWARD".into(),
                rule: "-j MESHPLANE-FWD".into(),
            }]
            .into(),
        }
    }

    #[test]
    fn a_gateway_gets_chains_and_hooks_at_once_then_forwarding() {
        let mut w = want();
        w.forwarding.insert(Family::V4);
        w.firewall.insert(Family::V4, gateway_firewall());
        let have = applied(&want());
        let p = plan(&have, &w, "wg0", None);
        let fw = gateway_firewall();
        assert_eq!(
            p.steps,
            vec![
                Step::RestoreFirewall {
                    family: Family::V4,
                    restore: fw.restore.clone(),
                    hooks: fw.hooks.clone(),
                },
                Step::SetSysctl(Sysctl::Forward4, true),
            ],
            "forwarding only once the rules and the jumps into them are there"
        );
        // Applied (the setting turned on by the agent): nothing to do.
        let mut done = applied(&w);
        done.sysctl_on.insert(Sysctl::Forward4);
        done.sysctl_ours.insert(Sysctl::Forward4);
        assert!(plan(&done, &w, "wg0", None).is_empty());
        // A jump deleted under the agent: restored with the chains.
        let mut lost = done.clone();
        lost.firewall.get_mut(&Family::V4).unwrap().hooks.clear();
        assert_eq!(
            plan(&lost, &w, "wg0", None).steps,
            vec![Step::RestoreFirewall {
                family: Family::V4,
                restore: fw.restore.clone(),
                hooks: fw.hooks.clone(),
            }]
        );
        // No longer a gateway: forwarding off first, then hooks and chains.
        let p = plan(&done, &want(), "wg0", None);
        assert_eq!(
            p.steps,
            vec![
                Step::SetSysctl(Sysctl::Forward4, false),
                Step::RemoveHook(fw.hooks.iter().next().unwrap().clone()),
                Step::DropChains(Family::V4),
            ]
        );
        // Forwarding the host had before stays on.
        done.sysctl_ours.clear();
        assert!(
            !plan(&done, &want(), "wg0", None)
                .steps
                .contains(&Step::SetSysctl(Sysctl::Forward4, false))
        );
    }

    #[test]
    fn hooks_go_into_their_tables_section() {
        let hook = |table: &str, chain: &str, rule: &str| Hook {
            family: Family::V4,
            table: table.into(),
            chain: chain.into(),
            rule: rule.into(),
        };
        let text = "*filter\n:MESHPLANE-FWD - [0:0]\n-A MESHPLANE-FWD -j ACCEPT\nCOMMIT\n*nat\n:MESHPLANE-POSTROUTING - [0:0]\nCOMMIT\n";
        let hooks = [
            hook("filter", "FORWARD", "-j MESHPLANE-FWD"),
            hook("nat", "POSTROUTING", "-j MESHPLANE-POSTROUTING"),
            hook("mangle", "PREROUTING", "-j X"),
        ];
        assert_eq!(
            with_hooks(text, &hooks),
            "*filter\n:MESHPLANE-FWD - [0:0]\n-A MESHPLANE-FWD -j ACCEPT\n-I FORWARD 1 -j MESHPLANE-FWD\nCOMMIT\n\
             *nat\n:MESHPLANE-POSTROUTING - [0:0]\n-I POSTROUTING 1 -j MESHPLANE-POSTROUTING\nCOMMIT\n\
             *mangle\n-I PREROUTING 1 -j X\nCOMMIT\n"
        );
        assert_eq!(with_hooks(text, &[]), text);
    }

    #[test]
    fn a_changed_rule_set_is_restored_and_hooks_kept() {
        let mut w = want();
        w.firewall.insert(Family::V4, gateway_firewall());
        let have = applied(&w);
        let mut w2 = w.clone();
        w2.firewall
            .get_mut(&Family::V4)
            .unwrap()
            .restore
            .push_str("# changed\n");
        let p = plan(&have, &w2, "wg0", None);
        assert_eq!(
            p.steps,
            vec![Step::RestoreFirewall {
                family: Family::V4,
                restore: w2.firewall[&Family::V4].restore.clone(),
                hooks: BTreeSet::new(),
            }]
        );
    }

    #[test]
    fn teardown_removes_everything_applied() {
        let mut w = want();
        w.full_tunnel.insert(Family::V4);
        w.firewall.insert(Family::V4, gateway_firewall());
        let mut have = applied(&w);
        have.sysctl_on.insert(Sysctl::Forward4);
        have.sysctl_ours.insert(Sysctl::Forward4);
        let p = teardown(&have, true);
        assert_eq!(
            p.steps,
            vec![
                Step::RemoveTunnelRules(Family::V4),
                Step::RemoveTunnelRoute(Family::V4),
                Step::SetSysctl(Sysctl::Forward4, false),
                Step::RemoveHook(gateway_firewall().hooks.into_iter().next().unwrap()),
                Step::DropChains(Family::V4),
                Step::DeleteInterface,
            ]
        );
        // An interface the agent did not make stays, emptied.
        let p = teardown(&have, false);
        assert!(!p.steps.contains(&Step::DeleteInterface));
        assert!(p.steps.contains(&Step::RemovePeer("A".into())));
        assert!(p.steps.contains(&Step::RemovePeer("B".into())));
        assert!(p.steps.contains(&Step::RemoveAddress(net("10.101.0.3/16"))));
        assert!(p.steps.contains(&Step::RemoveRoute(net("10.10.10.0/24"))));
    }

    #[test]
    fn steps_read_as_commands() {
        let s = Step::UpsertPeer(
            "ABCDEFGHIJK".into(),
            peer(&["10.101.0.1/32"], Some("192.0.2.1:51821")),
        );
        assert_eq!(
            s.to_string(),
            "wireguard: set peer ABCDEFGH… allowed-ips 10.101.0.1/32 endpoint 192.0.2.1:51821 keepalive 20"
        );
        assert_eq!(
            Step::AddRoute(net("10.10.10.0/24")).to_string(),
            "route: add 10.10.10.0/24"
        );
    }
}
