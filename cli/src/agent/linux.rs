//! The thin layer that reads and changes a Linux host: WireGuard through
//! `defguard_wireguard_rs` (netlink for kernel devices, the cross-platform
//! UAPI socket for userspace ones such as `wireguard-go`), links,
//! addresses, routes and rules through rtnetlink, the firewall through
//! `iptables-restore --noflush` on meshplane's own chains, kernel settings
//! through /proc/sys. It decides nothing: [`super::plan`] does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi, host::Host as WgHost,
    key::Key, net::IpAddrMask, peer::Peer as WgPeer,
};
use futures::TryStreamExt;
use ipnet::IpNet;
use meshplane_sdk::proto as pb;
use rtnetlink::{
    Handle, IpVersion, LinkUnspec, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkFlags},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
        rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
    },
};

use super::plan::{
    Create, Device, FWMARK, Family, HostRoute, Observed, PRIO_MAIN, PRIO_TUNNEL, PeerSpec, Step,
    Sysctl, TABLE,
};
use super::state::Applied;

const CHAINS: [(&str, &str); 3] = [
    ("filter", "MESHPLANE-FWD"),
    ("nat", "MESHPLANE-POSTROUTING"),
    // What the access policy lets reach the node itself (issue #14).
    ("filter", "MESHPLANE-IN"),
];

/// Whether a restore text declares `chain` (`:CHAIN - [0:0]`): a config
/// renders only the chains it uses (MESHPLANE-IN only under a restricting
/// policy, the gateway chains only on gateways).
fn declares(restore: &str, chain: &str) -> bool {
    restore.lines().any(|l| {
        l.strip_prefix(':')
            .and_then(|r| r.split_whitespace().next())
            == Some(chain)
    })
}

/// A link of the host.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    up: bool,
    mtu: u32,
}

/// A route of the main table (or [`TABLE`]), decoded.
#[derive(Debug, Clone)]
struct RouteEntry {
    table: u32,
    destination: IpNet,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
    kernel: bool,
}

/// The host, seen through netlink.
pub struct Host {
    handle: Handle,
    ifname: String,
}

/// What the host looks like, for the plan and for the server's host report.
pub struct Snapshot {
    /// For the plan.
    pub observed: Observed,
    /// For ReportStatus.
    pub report: pb::HostReport,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

fn tolerate(r: Result<(), rtnetlink::Error>, ok: &[i32], what: &str) -> Result<(), String> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if errno(&e).is_some_and(|n| ok.contains(&n)) => Ok(()),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn wg_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn socket_path(ifname: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"))
}

fn route_net(addr: Option<IpAddr>, len: u8, family: AddressFamily) -> Option<IpNet> {
    let a = match (addr, family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    IpNet::new(a, len).ok()
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn decode_route(m: &RouteMessage) -> Option<RouteEntry> {
    if m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut oif = None;
    let mut gateway = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            // A multipath route: stand for it by its first next hop.
            RouteAttribute::MultiPath(hops) if oif.is_none() => {
                if let Some(h) = hops.first() {
                    oif = Some(h.interface_index);
                    gateway = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => route_addr(g),
                        _ => None,
                    });
                }
            }
            _ => {}
        }
    }
    Some(RouteEntry {
        table,
        destination: route_net(
            dst,
            m.header.destination_prefix_length,
            m.header.address_family,
        )?,
        oif,
        gateway,
        kernel: m.header.protocol == RouteProtocol::Kernel,
    })
}

fn decode_address(m: &AddressMessage) -> Option<IpNet> {
    let mut address = None;
    let mut local = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(x) => address = Some(*x),
            AddressAttribute::Local(x) => local = Some(*x),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, m.header.prefix_len).ok()
}

fn rule_priority(m: &RuleMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

fn ip_version(f: Family) -> IpVersion {
    match f {
        Family::V4 => IpVersion::V4,
        Family::V6 => IpVersion::V6,
    }
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "running {}: {e} (install it: Debian package iptables)",
            args[0]
        )
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to {}: {e}", args[0]))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn hook_args<'a>(h: &'a super::plan::Hook, op: &'a str) -> Vec<&'a str> {
    let mut v = vec![
        h.family.iptables(),
        "-w",
        "-t",
        h.table.as_str(),
        op,
        h.chain.as_str(),
    ];
    if op == "-I" {
        v.push("1");
    }
    v.extend(h.rule.split_whitespace());
    v
}

fn wg_peer(key: &str, p: &PeerSpec) -> Result<WgPeer, String> {
    let public_key = Key::try_from(key).map_err(|e| wg_err("peer public key", e))?;
    let mut peer = WgPeer::new(public_key);
    peer.endpoint = p.endpoint;
    peer.persistent_keepalive_interval = Some(p.keepalive);
    peer.allowed_ips = p
        .allowed_ips
        .iter()
        .map(|n| IpAddrMask::new(n.addr(), n.prefix_len()))
        .collect();
    Ok(peer)
}

enum Wg {
    Kernel(WGApi<Kernel>),
    Userspace(WGApi<Userspace>),
}

impl Wg {
    fn open(ifname: &str) -> Result<Self, String> {
        if socket_path(ifname).exists() {
            WGApi::<Userspace>::new(ifname)
                .map(Wg::Userspace)
                .map_err(|e| wg_err("wireguard", e))
        } else {
            WGApi::<Kernel>::new(ifname)
                .map(Wg::Kernel)
                .map_err(|e| wg_err("wireguard", e))
        }
    }

    fn read(&self) -> Result<WgHost, String> {
        match self {
            Wg::Kernel(a) => a.read_interface_data(),
            Wg::Userspace(a) => a.read_interface_data(),
        }
        .map_err(|e| wg_err("reading the WireGuard device", e))
    }

    fn configure(
        &self,
        ifname: &str,
        private_key: &str,
        port: u16,
        peers: Vec<WgPeer>,
    ) -> Result<(), String> {
        let config = InterfaceConfiguration {
            name: ifname.to_owned(),
            prvkey: private_key.to_owned(),
            addresses: vec![],
            port,
            peers,
            mtu: None,
            fwmark: Some(FWMARK),
        };
        match self {
            // Kernel: one netlink message (it also flushes addresses; the
            // plan adds them again after this step).
            Wg::Kernel(a) => a.configure_interface(&config),
            Wg::Userspace(a) => {
                let host = WgHost::try_from(&config).map_err(|e| wg_err("private key", e))?;
                return a
                    .write_host(&host)
                    .map_err(|e| wg_err("configuring the WireGuard device", e));
            }
        }
        .map_err(|e| wg_err("configuring the WireGuard device", e))
    }

    /// Peer changes in one go: one UAPI transaction on a userspace device
    /// (a connection per peer costs ~0.1 ms each); netlink per peer on a
    /// kernel one.
    fn apply_peers(
        &self,
        ifname: &str,
        upserts: &[WgPeer],
        removals: &[Key],
    ) -> Result<(), String> {
        match self {
            Wg::Kernel(_) => {
                for k in removals {
                    self.remove(k)?;
                }
                for p in upserts {
                    self.upsert(p)?;
                }
                Ok(())
            }
            Wg::Userspace(_) => {
                use std::io::{BufRead, BufReader, Write};
                let mut text = String::from("set=1\n");
                for k in removals {
                    text.push_str(&format!("public_key={}\nremove=true\n", k.to_lower_hex()));
                }
                for p in upserts {
                    text.push_str(&p.as_uapi_update());
                }
                text.push('\n');
                let path = socket_path(ifname);
                let mut sock = std::os::unix::net::UnixStream::connect(&path)
                    .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
                sock.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| format!("UAPI socket: {e}"))?;
                sock.write_all(text.as_bytes())
                    .map_err(|e| format!("writing to {}: {e}", path.display()))?;
                let mut errno = None;
                for line in BufReader::new(&sock).lines() {
                    let line = line.map_err(|e| format!("reading from {}: {e}", path.display()))?;
                    if let Some(v) = line.strip_prefix("errno=") {
                        errno = v.trim().parse::<i32>().ok();
                        break;
                    }
                }
                match errno {
                    Some(0) => Ok(()),
                    Some(n) => Err(format!(
                        "the WireGuard device refused the peer changes: {}",
                        std::io::Error::from_raw_os_error(n)
                    )),
                    None => Err("the WireGuard device did not answer the peer changes".into()),
                }
            }
        }
    }

    fn upsert(&self, peer: &WgPeer) -> Result<(), String> {
        match self {
            Wg::Kernel(a) => a.configure_peer(peer),
            Wg::Userspace(a) => a.configure_peer(peer),
        }
        .map_err(|e| wg_err("setting a WireGuard peer", e))
    }

    fn remove(&self, key: &Key) -> Result<(), String> {
        match self {
            Wg::Kernel(a) => a.remove_peer(key),
            Wg::Userspace(a) => a.remove_peer(key),
        }
        .map_err(|e| wg_err("removing a WireGuard peer", e))
    }
}

impl Host {
    /// Opens a netlink connection in the current network namespace.
    pub fn new(ifname: &str) -> Result<Self, String> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))?;
        tokio::spawn(conn);
        Ok(Host {
            handle,
            ifname: ifname.to_owned(),
        })
    }

    async fn links(&self) -> Result<Vec<Link>, String> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| format!("listing links: {e}"))?
        {
            let mut name = None;
            let mut mtu = 0;
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::Mtu(x) => mtu = *x,
                    _ => {}
                }
            }
            if let Some(name) = name {
                out.push(Link {
                    index: m.header.index,
                    name,
                    up: m.header.flags.contains(LinkFlags::Up),
                    mtu,
                });
            }
        }
        Ok(out)
    }

    async fn addresses(&self) -> Result<Vec<(u32, IpNet)>, String> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| format!("listing addresses: {e}"))?
        {
            if let Some(n) = decode_address(&m) {
                out.push((m.header.index, n));
            }
        }
        Ok(out)
    }

    async fn routes(&self) -> Result<Vec<RouteEntry>, String> {
        let mut out = Vec::new();
        for (f, msg) in [
            (Family::V4, RouteMessageBuilder::<Ipv4Addr>::new().build()),
            (Family::V6, RouteMessageBuilder::<Ipv6Addr>::new().build()),
        ] {
            let mut s = self.handle.route().get(msg).execute();
            loop {
                match s.try_next().await {
                    Ok(Some(m)) => out.extend(decode_route(&m)),
                    Ok(None) => break,
                    // A kernel without IPv6 has no IPv6 routes to list.
                    Err(_) if f == Family::V6 && !ipv6_enabled() => break,
                    Err(e) => return Err(format!("listing routes: {e}")),
                }
            }
        }
        Ok(out)
    }

    async fn rules(&self, f: Family) -> Result<Vec<RuleMessage>, String> {
        let mut s = self.handle.rule().get(ip_version(f)).execute();
        let mut out = Vec::new();
        loop {
            match s.try_next().await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => return Ok(out),
                Err(_) if f == Family::V6 && !ipv6_enabled() => return Ok(out),
                Err(e) => return Err(format!("listing rules: {e}")),
            }
        }
    }

    async fn index(&self) -> Result<u32, String> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.name == self.ifname)
            .map(|l| l.index)
            .ok_or_else(|| format!("interface {} does not exist", self.ifname))
    }

    /// Reads the host. `applied` is what the agent recorded applying (the
    /// firewall and bypass routes cannot be told apart from others' without
    /// it).
    pub async fn observe(&self, applied: &Applied) -> Result<Snapshot, String> {
        let links = self.links().await?;
        let names: BTreeMap<u32, String> =
            links.iter().map(|l| (l.index, l.name.clone())).collect();
        let ours = links.iter().find(|l| l.name == self.ifname);
        let addresses = self.addresses().await?;
        let routes = self.routes().await?;
        let mut o = Observed {
            link: ours.map(|l| (l.up, l.mtu)),
            ..Observed::default()
        };
        if let Some(l) = ours {
            o.addresses = addresses
                .iter()
                .filter(|(i, n)| *i == l.index && !is_link_local(n))
                .map(|(_, n)| *n)
                .collect();
            let wg = Wg::open(&self.ifname)?;
            let host = wg.read()?;
            o.device = Some(Device {
                public_key: host
                    .private_key
                    .as_ref()
                    .map(|k| k.public_key().to_string()),
                listen_port: host.listen_port,
                fwmark: host.fwmark.unwrap_or(0),
                peers: host
                    .peers
                    .values()
                    .map(|p| {
                        let mut ips: Vec<IpNet> = p
                            .allowed_ips
                            .iter()
                            .filter_map(|m| IpNet::new(m.address, m.cidr).ok().map(|n| n.trunc()))
                            .collect();
                        ips.sort();
                        (
                            p.public_key.to_string(),
                            PeerSpec {
                                endpoint: p.endpoint,
                                allowed_ips: ips,
                                keepalive: p.persistent_keepalive_interval.unwrap_or(0),
                            },
                        )
                    })
                    .collect(),
            });
        }
        let our_index = ours.map(|l| l.index);
        let bypass_hosts: BTreeSet<IpNet> = applied
            .bypass
            .iter()
            .map(|b| IpNet::from(b.address))
            .collect();
        let mut found_bypass = BTreeSet::new();
        let main = u32::from(RouteMessageBuilder::<IpAddr>::new().build().header.table);
        for r in &routes {
            let via_ours = our_index.is_some() && r.oif == our_index;
            if r.table == TABLE && via_ours && r.destination.prefix_len() == 0 {
                o.tunnel_routes.insert(Family::of(&r.destination));
            }
            if r.table != main {
                continue;
            }
            if via_ours {
                if !r.kernel {
                    o.routes.insert(r.destination);
                }
                continue;
            }
            if bypass_hosts.contains(&r.destination) {
                found_bypass.insert(r.destination);
                continue;
            }
            if is_link_local(&r.destination) {
                continue;
            }
            // A route with no device (blackhole, unreachable) says nothing
            // about which interface reaches a range.
            let Some(dev) = r.oif.and_then(|i| names.get(&i).cloned()) else {
                continue;
            };
            o.host_routes.push(HostRoute {
                destination: r.destination,
                dev,
                gateway: r.gateway,
            });
        }
        o.bypass = applied
            .bypass
            .iter()
            .filter(|b| found_bypass.contains(&IpNet::from(b.address)))
            .cloned()
            .collect();
        for f in [Family::V4, Family::V6] {
            let prios: BTreeSet<u32> = self
                .rules(f)
                .await?
                .iter()
                .filter_map(rule_priority)
                .collect();
            if prios.contains(&PRIO_MAIN) && prios.contains(&PRIO_TUNNEL) {
                o.tunnel_rules.insert(f);
            }
        }
        for k in [Sysctl::Forward4, Sysctl::Forward6, Sysctl::SrcValidMark] {
            if std::fs::read_to_string(k.path()).is_ok_and(|v| v.trim() == "1") {
                o.sysctl_on.insert(k);
            }
        }
        o.sysctl_ours = applied.sysctl_ours.clone();
        for (f, fw) in &applied.firewall {
            let mut fw = fw.clone();
            // Chains gone (a reboot, a flush): restore again.
            let chains_there = CHAINS
                .iter()
                .filter(|(_, c)| declares(&fw.restore, c))
                .all(|(t, c)| run(&[f.iptables(), "-w", "-t", t, "-S", c], None).is_ok());
            if !chains_there {
                fw.restore.clear();
            }
            fw.hooks.retain(|h| run(&hook_args(h, "-C"), None).is_ok());
            o.firewall.insert(*f, fw);
        }

        let report = pb::HostReport {
            interfaces: links
                .iter()
                .filter(|l| l.name != self.ifname)
                .take(MAX_REPORT_INTERFACES)
                .map(|l| pb::HostInterface {
                    name: l.name.clone(),
                    addresses: addresses
                        .iter()
                        .filter(|(i, n)| *i == l.index && !is_link_local(n))
                        .take(MAX_REPORT_ADDRESSES)
                        .map(|(_, n)| n.to_string())
                        .collect(),
                    up: l.up,
                })
                .collect(),
            routes: o
                .host_routes
                .iter()
                .take(MAX_REPORT_ROUTES)
                .map(|r| pb::HostRoute {
                    destination: r.destination.to_string(),
                    interface: r.dev.clone(),
                    gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                })
                .collect(),
            report_time: None,
        };
        Ok(Snapshot {
            observed: o,
            report,
        })
    }

    /// Runs a run of peer steps (upserts and removals) together.
    pub fn execute_peers(&self, steps: &[&Step]) -> Result<(), String> {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for s in steps {
            match s {
                Step::UpsertPeer(k, p) => upserts.push(wg_peer(k, p)?),
                Step::RemovePeer(k) => removals
                    .push(Key::try_from(k.as_str()).map_err(|e| wg_err("peer public key", e))?),
                other => return Err(format!("not a peer step: {other}")),
            }
        }
        Wg::open(&self.ifname)?.apply_peers(&self.ifname, &upserts, &removals)
    }

    /// Runs one step, recording in `applied` what the host cannot tell
    /// apart from anyone else's.
    pub async fn execute(
        &self,
        step: &Step,
        private_key: &str,
        applied: &mut Applied,
    ) -> Result<(), String> {
        let h = &self.handle;
        match step {
            Step::CreateInterface(Create::Kernel) => {
                let mut api = WGApi::<Kernel>::new(self.ifname.clone())
                    .map_err(|e| wg_err("wireguard", e))?;
                api.create_interface().map_err(|e| {
                    format!(
                        "creating kernel WireGuard interface {}: {e} (no kernel module? start a userspace one with --userspace wireguard-go)",
                        self.ifname
                    )
                })
            }
            Step::CreateInterface(Create::Userspace(cmd)) => self.start_userspace(cmd).await,
            Step::ConfigureDevice {
                listen_port, peers, ..
            } => {
                let peers = peers
                    .iter()
                    .map(|(k, p)| wg_peer(k, p))
                    .collect::<Result<Vec<_>, _>>()?;
                Wg::open(&self.ifname)?.configure(&self.ifname, private_key, *listen_port, peers)
            }
            Step::UpsertPeer(k, p) => Wg::open(&self.ifname)?.upsert(&wg_peer(k, p)?),
            Step::RemovePeer(k) => {
                let key = Key::try_from(k.as_str()).map_err(|e| wg_err("peer public key", e))?;
                Wg::open(&self.ifname)?.remove(&key)
            }
            Step::SetMtu(mtu) => {
                let idx = self.index().await?;
                let msg = LinkUnspec::new_with_index(idx).mtu(*mtu).build();
                h.link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| format!("setting mtu: {e}"))
            }
            Step::SetUp => {
                let idx = self.index().await?;
                let msg = LinkUnspec::new_with_index(idx).up().build();
                h.link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| format!("setting link up: {e}"))
            }
            Step::AddAddress(a) => {
                let idx = self.index().await?;
                tolerate(
                    h.address()
                        .add(idx, a.addr(), a.prefix_len())
                        .execute()
                        .await,
                    &[libc::EEXIST],
                    &format!("adding address {a}"),
                )
            }
            Step::RemoveAddress(a) => {
                let idx = self.index().await?;
                let mut s = h.address().get().set_link_index_filter(idx).execute();
                while let Some(m) = s
                    .try_next()
                    .await
                    .map_err(|e| format!("listing addresses: {e}"))?
                {
                    if decode_address(&m) == Some(*a) {
                        return tolerate(
                            h.address().del(m).execute().await,
                            &[libc::EADDRNOTAVAIL, libc::ENOENT],
                            &format!("removing address {a}"),
                        );
                    }
                }
                Ok(())
            }
            Step::AddRoute(r) => {
                let idx = self.index().await?;
                let msg = route_msg(*r, Some(idx), None, None)?;
                tolerate(
                    h.route().add(msg).execute().await,
                    &[libc::EEXIST],
                    &format!("adding route {r}"),
                )
            }
            Step::RemoveRoute(r) => {
                let idx = self.index().await?;
                let msg = route_msg(*r, Some(idx), None, None)?;
                tolerate(
                    h.route().del(msg).execute().await,
                    &[libc::ESRCH, libc::ENOENT],
                    &format!("removing route {r}"),
                )
            }
            Step::AddTunnelRoute(f) => {
                let idx = self.index().await?;
                let msg = route_msg(super::plan::default_route(*f), Some(idx), None, Some(TABLE))?;
                tolerate(
                    h.route().add(msg).execute().await,
                    &[libc::EEXIST],
                    "adding the tunnel's default route",
                )
            }
            Step::RemoveTunnelRoute(f) => {
                let msg = route_msg(super::plan::default_route(*f), None, None, Some(TABLE))?;
                tolerate(
                    h.route().del(msg).execute().await,
                    &[libc::ESRCH, libc::ENOENT],
                    "removing the tunnel's default route",
                )
            }
            Step::AddTunnelRules(f) => {
                // `lookup main suppress_prefixlength 0`
                let mut main = h
                    .rule()
                    .add()
                    .priority(PRIO_MAIN)
                    .action(RuleAction::ToTable)
                    .table_id(254);
                main.message_mut().header.family = family_af(*f);
                main.message_mut()
                    .attributes
                    .push(RuleAttribute::SuppressPrefixLen(0));
                tolerate(
                    main.execute().await,
                    &[libc::EEXIST],
                    "adding rule suppress_prefixlength 0",
                )?;
                // `not fwmark FWMARK lookup TABLE`
                let mut tun = h
                    .rule()
                    .add()
                    .priority(PRIO_TUNNEL)
                    .action(RuleAction::ToTable)
                    .table_id(TABLE)
                    .fw_mark(FWMARK);
                tun.message_mut().header.family = family_af(*f);
                tun.message_mut().header.flags |= RuleFlags::Invert;
                tolerate(
                    tun.execute().await,
                    &[libc::EEXIST],
                    "adding rule not fwmark",
                )
            }
            Step::RemoveTunnelRules(f) => {
                for m in self.rules(*f).await? {
                    if matches!(rule_priority(&m), Some(p) if p == PRIO_MAIN || p == PRIO_TUNNEL) {
                        tolerate(
                            h.rule().del(m).execute().await,
                            &[libc::ENOENT],
                            "removing a full-tunnel rule",
                        )?;
                    }
                }
                Ok(())
            }
            Step::AddBypass(b) => {
                let idx = self.link_index(&b.dev).await?;
                let msg = route_msg(IpNet::from(b.address), Some(idx), b.gateway, None)?;
                tolerate(
                    h.route().add(msg).execute().await,
                    &[libc::EEXIST],
                    &format!("adding route to {}", b.address),
                )?;
                applied.bypass.insert(b.clone());
                Ok(())
            }
            Step::RemoveBypass(b) => {
                let msg = route_msg(IpNet::from(b.address), None, b.gateway, None)?;
                tolerate(
                    h.route().del(msg).execute().await,
                    &[libc::ESRCH, libc::ENOENT],
                    &format!("removing route to {}", b.address),
                )?;
                applied.bypass.remove(b);
                Ok(())
            }
            Step::SetSysctl(k, on) => {
                std::fs::write(k.path(), if *on { "1\n" } else { "0\n" })
                    .map_err(|e| format!("writing {}: {e}", k.path()))?;
                if *on {
                    applied.sysctl_ours.insert(*k);
                } else {
                    applied.sysctl_ours.remove(k);
                }
                Ok(())
            }
            Step::RestoreFirewall {
                family,
                restore,
                hooks,
            } => {
                // Only the jumps still missing now (another process may have
                // added one since the host was read).
                let missing: Vec<&super::plan::Hook> = hooks
                    .iter()
                    .filter(|h| run(&hook_args(h, "-C"), None).is_err())
                    .collect();
                let text = super::plan::with_hooks(restore, missing);
                let tool = format!("{}-restore", family.iptables());
                run(&[&tool, "-w", "--noflush"], Some(&text))?;
                let fw = applied.firewall.entry(*family).or_default();
                fw.restore = restore.clone();
                fw.hooks.extend(hooks.iter().cloned());
                Ok(())
            }
            Step::RemoveHook(hook) => {
                while run(&hook_args(hook, "-C"), None).is_ok() {
                    run(&hook_args(hook, "-D"), None)?;
                }
                if let Some(fw) = applied.firewall.get_mut(&hook.family) {
                    fw.hooks.remove(hook);
                }
                Ok(())
            }
            Step::DropChains(f) => {
                for (table, chain) in CHAINS {
                    if run(&[f.iptables(), "-w", "-t", table, "-S", chain], None).is_ok() {
                        run(&[f.iptables(), "-w", "-t", table, "-F", chain], None)?;
                        run(&[f.iptables(), "-w", "-t", table, "-X", chain], None)?;
                    }
                }
                applied.firewall.remove(f);
                Ok(())
            }
            Step::DeleteInterface => {
                if let Ok(idx) = self.index().await {
                    tolerate(
                        h.link().del(idx).execute().await,
                        &[libc::ENODEV],
                        "deleting the interface",
                    )?;
                }
                // A userspace implementation exits once its device is gone;
                // its socket may stay behind.
                let sock = socket_path(&self.ifname);
                let deadline = Instant::now() + Duration::from_secs(3);
                while sock.exists() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = std::fs::remove_file(sock);
                Ok(())
            }
        }
    }

    async fn link_index(&self, name: &str) -> Result<u32, String> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| format!("interface {name} does not exist"))
    }

    /// Starts `CMD IFNAME` (e.g. wireguard-go, which daemonizes) and waits
    /// for its device and UAPI socket.
    async fn start_userspace(&self, cmd: &str) -> Result<(), String> {
        let mut parts = cmd.split_whitespace();
        let prog = parts.next().ok_or("--userspace is empty")?;
        let mut child = Command::new(prog)
            .args(parts)
            .arg(&self.ifname)
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting `{cmd}`: {e} (Debian package wireguard-go)"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if socket_path(&self.ifname).exists() && self.index().await.is_ok() {
                // Reap the launcher when it exits (a foreground one runs on).
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait()
                && !status.success()
            {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "`{cmd} {}` exited with {status}: {}",
                    self.ifname,
                    err.trim()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{cmd} {}` made no device and UAPI socket within 10 s",
                    self.ifname
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The kernel has IPv6 (not booted with ipv6.disable=1).
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Caps of a host report (the server refuses larger ones).
const MAX_REPORT_INTERFACES: usize = 512;
const MAX_REPORT_ADDRESSES: usize = 64;
const MAX_REPORT_ROUTES: usize = 8192;

fn is_link_local(n: &IpNet) -> bool {
    match n {
        IpNet::V6(v6) => (v6.addr().segments()[0] & 0xffc0) == 0xfe80,
        IpNet::V4(_) => false,
    }
}

fn family_af(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn route_msg(
    dst: IpNet,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
    table: Option<u32>,
) -> Result<RouteMessage, String> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| format!("route {dst}: {e}"))?;
    if let Some(i) = oif {
        b = b.output_interface(i);
    }
    if let Some(g) = gateway {
        b = b
            .gateway(g)
            .map_err(|e| format!("route {dst} via {g}: {e}"))?;
    }
    if let Some(t) = table {
        b = b.table_id(t);
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_chains_are_checked() {
        let gw = "*filter\n:MESHPLANE-FWD - [0:0]\nCOMMIT\n*nat\n:MESHPLANE-POSTROUTING - [0:0]\nCOMMIT\n";
        let declared: Vec<&str> = CHAINS
            .iter()
            .filter(|(_, c)| declares(gw, c))
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(declared, ["MESHPLANE-FWD", "MESHPLANE-POSTROUTING"]);
        let node = "*filter\n:MESHPLANE-IN - [0:0]\n-A MESHPLANE-IN -j DROP\nCOMMIT\n";
        assert!(declares(node, "MESHPLANE-IN") && !declares(node, "MESHPLANE-FWD"));
        assert!(!declares("", "MESHPLANE-IN"));
    }
}
