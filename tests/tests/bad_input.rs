//! The bad-input sweep (issue #13, item 7): every RPC of every service of
//! `meshplane.v1` gets a catalogue of bad values, one table row each —
//! empty required fields, values too long, the wrong address family, host
//! bits, numbers out of range, malformed keys and endpoints, unknown mask
//! paths, ids from another network, revisions never issued, the wrong
//! credentials, control characters — and every row asserts the exact code,
//! the field violation (for INVALID_ARGUMENT, and for ALREADY_EXISTS, which
//! names the taken field too) and, where it matters, a fragment of the
//! message. Before the sweep the whole state is read (every list with all
//! fields, every node's config, every hosts file, the event log's newest
//! revision); after every row it is read again and must be unchanged: a
//! refused request writes nothing and appends no event.
//!
//! Runs on SQLite, and on PostgreSQL with `MESHPLANE_TEST_BACKEND=postgres`
//! (tests/run does both).
//!
//! A lookup by an id or name that cannot exist (malformed, too long, with a
//! NUL) is NOT_FOUND like any unknown one; a malformed *filter* or a name
//! the request validates is INVALID_ARGUMENT. Values are echoed in
//! messages only in part (the server cuts them), so even a 100 KB value
//! gets a readable refusal.
//!
//! Bugs this sweep found outside the domain, now fixed; their rows are
//! marked `.known("K…")` and run in their own test,
//! `known_bugs_get_the_correct_answer`, as regression checks:
//!
//! - K1 (PostgreSQL only): an id or name with a NUL character that the
//!   request does not validate went to the database, which refused it:
//!   INTERNAL instead of NOT_FOUND. Now the store answers NOT_FOUND (no
//!   stored value can hold a NUL), and a NUL filter matches nothing.
//! - K2: ExplainRoute echoed a bad `destination` whole, so a 100 KB one
//!   made the refusal too large for the client's header limit. Now cut
//!   like every other echo.
//! - K3: a malformed network filter (ListNodes, ListExtClients,
//!   ListEnrollmentKeys `network`, WatchEvents `networks`) was accepted and
//!   silently matched nothing. Now INVALID_ARGUMENT, like ListDnsEntries.

use std::fmt::Write as _;

use meshplane_proto::v1 as pb;
use meshplane_tests::{Authed, Bearer, TestServer, field_violations, network, wg_key};
use prost::Message as _;
use prost_types::FieldMask;
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};

/// Who a row calls as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum As {
    /// The admin token.
    Admin,
    /// No `authorization` metadata.
    Nobody,
    /// The node token of `laptop` (corp).
    Laptop,
    /// An enrollment key's token as the bearer.
    EnrollmentKey,
    /// A string that is no token at all.
    Garbage,
}

/// Declares one variant of [`Call`] per RPC, with its service's client.
macro_rules! rpcs {
    ($($svc:ident / $method:ident($req:ident) => $client:ident :: $ctor:ident . $call:ident;)*) => {
        /// One request to one RPC (a test's table: its size does not
        /// matter).
        #[derive(Debug, Clone)]
        #[allow(clippy::large_enum_variant)]
        enum Call {
            $($method(pb::$req),)*
        }

        impl Call {
            /// `Service/Method`.
            fn rpc(&self) -> &'static str {
                match self {
                    $(Call::$method(_) => concat!(stringify!($svc), "/", stringify!($method)),)*
                }
            }

            /// Sends it; a stream that opens is dropped at once.
            async fn send(self, ch: Authed) -> Result<(), Status> {
                match self {
                    $(Call::$method(r) => pb::$client::$ctor::new(ch).$call(r).await.map(drop),)*
                }
            }
        }
    };
}

rpcs! {
    NetworkService/CreateNetwork(CreateNetworkRequest) => network_service_client::NetworkServiceClient.create_network;
    NetworkService/GetNetwork(GetNetworkRequest) => network_service_client::NetworkServiceClient.get_network;
    NetworkService/ListNetworks(ListNetworksRequest) => network_service_client::NetworkServiceClient.list_networks;
    NetworkService/UpdateNetwork(UpdateNetworkRequest) => network_service_client::NetworkServiceClient.update_network;
    NetworkService/DeleteNetwork(DeleteNetworkRequest) => network_service_client::NetworkServiceClient.delete_network;
    EnrollmentKeyService/CreateEnrollmentKey(CreateEnrollmentKeyRequest) => enrollment_key_service_client::EnrollmentKeyServiceClient.create_enrollment_key;
    EnrollmentKeyService/ListEnrollmentKeys(ListEnrollmentKeysRequest) => enrollment_key_service_client::EnrollmentKeyServiceClient.list_enrollment_keys;
    EnrollmentKeyService/DeleteEnrollmentKey(DeleteEnrollmentKeyRequest) => enrollment_key_service_client::EnrollmentKeyServiceClient.delete_enrollment_key;
    NodeService/GetNode(GetNodeRequest) => node_service_client::NodeServiceClient.get_node;
    NodeService/ListNodes(ListNodesRequest) => node_service_client::NodeServiceClient.list_nodes;
    NodeService/UpdateNode(UpdateNodeRequest) => node_service_client::NodeServiceClient.update_node;
    NodeService/DeleteNode(DeleteNodeRequest) => node_service_client::NodeServiceClient.delete_node;
    NodeService/GetNodeConfig(GetNodeConfigRequest) => node_service_client::NodeServiceClient.get_node_config;
    GatewayService/CreateEgressGateway(CreateEgressGatewayRequest) => gateway_service_client::GatewayServiceClient.create_egress_gateway;
    GatewayService/DeleteEgressGateway(DeleteEgressGatewayRequest) => gateway_service_client::GatewayServiceClient.delete_egress_gateway;
    GatewayService/CreateIngressGateway(CreateIngressGatewayRequest) => gateway_service_client::GatewayServiceClient.create_ingress_gateway;
    GatewayService/DeleteIngressGateway(DeleteIngressGatewayRequest) => gateway_service_client::GatewayServiceClient.delete_ingress_gateway;
    GatewayService/ExplainRoute(ExplainRouteRequest) => gateway_service_client::GatewayServiceClient.explain_route;
    ExtClientService/CreateExtClient(CreateExtClientRequest) => ext_client_service_client::ExtClientServiceClient.create_ext_client;
    ExtClientService/GetExtClient(GetExtClientRequest) => ext_client_service_client::ExtClientServiceClient.get_ext_client;
    ExtClientService/ListExtClients(ListExtClientsRequest) => ext_client_service_client::ExtClientServiceClient.list_ext_clients;
    ExtClientService/UpdateExtClient(UpdateExtClientRequest) => ext_client_service_client::ExtClientServiceClient.update_ext_client;
    ExtClientService/DeleteExtClient(DeleteExtClientRequest) => ext_client_service_client::ExtClientServiceClient.delete_ext_client;
    ExtClientService/GetExtClientConfig(GetExtClientConfigRequest) => ext_client_service_client::ExtClientServiceClient.get_ext_client_config;
    DnsService/CreateDnsEntry(CreateDnsEntryRequest) => dns_service_client::DnsServiceClient.create_dns_entry;
    DnsService/ListDnsEntries(ListDnsEntriesRequest) => dns_service_client::DnsServiceClient.list_dns_entries;
    DnsService/DeleteDnsEntry(DeleteDnsEntryRequest) => dns_service_client::DnsServiceClient.delete_dns_entry;
    DnsService/GetHostsFile(GetHostsFileRequest) => dns_service_client::DnsServiceClient.get_hosts_file;
    AgentService/Register(RegisterRequest) => agent_service_client::AgentServiceClient.register;
    AgentService/WatchConfig(WatchConfigRequest) => agent_service_client::AgentServiceClient.watch_config;
    AgentService/ReportStatus(ReportStatusRequest) => agent_service_client::AgentServiceClient.report_status;
    EventService/WatchEvents(WatchEventsRequest) => event_service_client::EventServiceClient.watch_events;
    PolicyService/GetPolicy(GetPolicyRequest) => policy_service_client::PolicyServiceClient.get_policy;
    PolicyService/UpdatePolicy(UpdatePolicyRequest) => policy_service_client::PolicyServiceClient.update_policy;
    PolicyService/TestAccess(TestAccessRequest) => policy_service_client::PolicyServiceClient.test_access;
}

/// One row of the table: a request, who sends it, and the refusal it must
/// get.
struct Row {
    what: String,
    call: Call,
    by: As,
    code: Code,
    /// The field violation the refusal must carry (exactly this one).
    field: Option<&'static str>,
    /// A fragment of the message or of the violation's description.
    says: Option<String>,
    /// Many fields are bad: `field` is the first violation, and the
    /// refusal carries at most [`MAX_VIOLATIONS`] of them.
    many: bool,
    /// The entry of the list of known bugs at the top of this file whose
    /// correct behaviour this row asserts.
    known: Option<&'static str>,
}

/// Most violations one refusal carries (the server's cap).
const MAX_VIOLATIONS: usize = 16;

/// INVALID_ARGUMENT naming exactly `field`.
fn invalid(what: &str, call: Call, field: &'static str) -> Row {
    Row {
        what: what.to_owned(),
        call,
        by: As::Admin,
        code: Code::InvalidArgument,
        field: Some(field),
        says: None,
        many: false,
        known: None,
    }
}

/// Refused with `code` (or, for `Code::Ok`, answered without writing).
fn refused(what: &str, call: Call, code: Code) -> Row {
    Row {
        what: what.to_owned(),
        call,
        by: As::Admin,
        code,
        field: None,
        says: None,
        many: false,
        known: None,
    }
}

impl Row {
    /// The message (or the violation's description) must contain `s`.
    fn says(mut self, s: impl Into<String>) -> Self {
        self.says = Some(s.into());
        self
    }

    /// Sent as `who` instead of the admin.
    fn by(mut self, who: As) -> Self {
        self.by = who;
        self
    }

    /// The refusal (e.g. ALREADY_EXISTS) names `field`.
    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// Many fields are bad; the first violation names `field`.
    fn many(mut self) -> Self {
        self.many = true;
        self
    }

    /// The server does not give this row's (correct) answer yet: `bug` is
    /// its entry in the list at the top of this file.
    fn known(mut self, bug: &'static str) -> Self {
        self.known = Some(bug);
        self
    }
}

/// The world the rows run against. Networks `corp` (IPv4 and IPv6) and
/// `lab` (IPv4 only); in corp: `server` (endpoint, ingress gateway, with
/// the external client `phone`), `office` (egress gateway for
/// 10.10.10.0/24 out of eth2), `laptop` (behind NAT, a plain node whose
/// token the agent rows use); in lab: `labgw` (endpoint, ingress gateway);
/// custom DNS entries `db.corp` and `printer.lab`; an enrollment key for
/// corp with uses left (so a registration that half-happened would show
/// in its count) and an unlimited one for lab.
struct Fixture {
    s: TestServer,
    channel: Channel,
    corp_key: String,
    laptop_token: String,
    server: pb::Node,
    office: pb::Node,
    laptop: pb::Node,
    labgw: pb::Node,
    phone: pb::ExtClient,
    corp_key_id: String,
}

impl Fixture {
    async fn new() -> Self {
        // Hundreds of rows with bad credentials from one address: the
        // failed-authentication throttle (tests/tests/limits.rs) is off.
        let s = TestServer::start_with_options(|o| o.limits.auth_failure_limit = 0).await;
        s.create_network("corp", "10.60.0.0/24", "fd00:60::/64")
            .await;
        s.create_network("lab", "10.61.0.0/24", "").await;
        let corp = s.create_key(&["corp"], Some(10)).await;
        let lab_key = s.create_key(&["lab"], None).await.token;
        let server = s
            .node(&corp.token, "corp", "server", Some("203.0.113.1:51821"))
            .await;
        let office = s.node(&corp.token, "corp", "office", None).await;
        let mut req = meshplane_tests::register_request(&corp.token, "corp", "laptop");
        req.endpoint.clear();
        let reg = s
            .agent(None)
            .await
            .register(req)
            .await
            .unwrap()
            .into_inner();
        let labgw = s
            .node(&lab_key, "lab", "labgw", Some("198.51.100.7:51821"))
            .await;
        let office = s
            .egress(&office.id, &["10.10.10.0/24"], "eth2", None)
            .await
            .unwrap();
        let server = s.ingress(&server.id, &[]).await.unwrap();
        let labgw = s.ingress(&labgw.id, &[]).await.unwrap();
        let phone = s.ext_client("corp", &server.id, "phone").await.unwrap();
        let dns = s.dns().await;
        for (net, name, a) in [
            ("corp", "db", "10.60.0.200"),
            ("lab", "printer", "10.61.0.9"),
        ] {
            dns.clone()
                .create_dns_entry(pb::CreateDnsEntryRequest {
                    entry: Some(pb::DnsEntry {
                        network: net.into(),
                        name: name.into(),
                        address: a.into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
        let channel = s.channel().await;
        Fixture {
            channel,
            corp_key: corp.token,
            corp_key_id: corp.id,
            laptop_token: reg.node_token,
            laptop: reg.node.unwrap(),
            server,
            office,
            labgw,
            phone,
            s,
        }
    }

    fn as_(&self, who: As) -> Authed {
        let token = match who {
            As::Admin => Some(self.s.admin_token.as_str()),
            As::Nobody => None,
            As::Laptop => Some(self.laptop_token.as_str()),
            As::EnrollmentKey => Some(self.corp_key.as_str()),
            As::Garbage => Some("hunter2"),
        };
        InterceptedService::new(self.channel.clone(), Bearer::new(token))
    }

    /// Everything there is to see, with every field.
    async fn state(&self) -> State {
        let admin = || self.as_(As::Admin);
        let networks = pb::network_service_client::NetworkServiceClient::new(admin())
            .list_networks(pb::ListNetworksRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListNetworks")
            .into_inner();
        let keys = pb::enrollment_key_service_client::EnrollmentKeyServiceClient::new(admin())
            .list_enrollment_keys(pb::ListEnrollmentKeysRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListEnrollmentKeys")
            .into_inner();
        let mut nodes_c = pb::node_service_client::NodeServiceClient::new(admin());
        let nodes = nodes_c
            .list_nodes(pb::ListNodesRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListNodes")
            .into_inner();
        let clients = pb::ext_client_service_client::ExtClientServiceClient::new(admin())
            .list_ext_clients(pb::ListExtClientsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListExtClients")
            .into_inner();
        let mut configs = Vec::new();
        for n in &nodes.nodes {
            configs.push(
                nodes_c
                    .get_node_config(pb::GetNodeConfigRequest { id: n.id.clone() })
                    .await
                    .expect("GetNodeConfig")
                    .into_inner(),
            );
        }
        let mut dns_c = pb::dns_service_client::DnsServiceClient::new(admin());
        let (mut dns, mut hosts) = (Vec::new(), Vec::new());
        for n in &networks.networks {
            dns.push(
                dns_c
                    .list_dns_entries(pb::ListDnsEntriesRequest {
                        network: n.name.clone(),
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .expect("ListDnsEntries")
                    .into_inner(),
            );
            hosts.push(
                dns_c
                    .get_hosts_file(pb::GetHostsFileRequest {
                        network: n.name.clone(),
                    })
                    .await
                    .expect("GetHostsFile")
                    .into_inner()
                    .content,
            );
        }
        let mut policy_c = pb::policy_service_client::PolicyServiceClient::new(admin());
        let mut policies = Vec::new();
        for n in &networks.networks {
            policies.push(
                policy_c
                    .get_policy(pb::GetPolicyRequest {
                        network: n.name.clone(),
                    })
                    .await
                    .expect("GetPolicy")
                    .into_inner(),
            );
        }
        State {
            latest_revision: self.s.store.log_bounds().await.expect("log bounds").latest,
            policies,
            networks,
            keys,
            nodes,
            clients,
            configs,
            dns,
            hosts,
        }
    }
}

/// The whole visible state.
#[derive(Debug, Clone, PartialEq)]
struct State {
    latest_revision: u64,
    networks: pb::ListNetworksResponse,
    keys: pb::ListEnrollmentKeysResponse,
    nodes: pb::ListNodesResponse,
    clients: pb::ListExtClientsResponse,
    configs: Vec<pb::NodeConfig>,
    dns: Vec<pb::ListDnsEntriesResponse>,
    hosts: Vec<String>,
    policies: Vec<pb::Policy>,
}

impl State {
    /// Which parts differ from `other`, with both values.
    fn diff(&self, other: &State) -> String {
        let mut out = String::new();
        let mut part = |name: &str, a: String, b: String| {
            if a != b {
                let cut = |s: String| s.chars().take(3000).collect::<String>();
                let _ = write!(
                    out,
                    "\n  {name} changed:\n    before {}\n    after  {}",
                    cut(a),
                    cut(b)
                );
            }
        };
        part(
            "latest event revision",
            self.latest_revision.to_string(),
            other.latest_revision.to_string(),
        );
        part(
            "networks",
            format!("{:?}", self.networks),
            format!("{:?}", other.networks),
        );
        part(
            "enrollment keys",
            format!("{:?}", self.keys),
            format!("{:?}", other.keys),
        );
        part(
            "nodes",
            format!("{:?}", self.nodes),
            format!("{:?}", other.nodes),
        );
        part(
            "external clients",
            format!("{:?}", self.clients),
            format!("{:?}", other.clients),
        );
        part(
            "node configs",
            format!("{:?}", self.configs),
            format!("{:?}", other.configs),
        );
        part(
            "DNS entries",
            format!("{:?}", self.dns),
            format!("{:?}", other.dns),
        );
        part(
            "hosts files",
            format!("{:?}", self.hosts),
            format!("{:?}", other.hosts),
        );
        part(
            "policies",
            format!("{:?}", self.policies),
            format!("{:?}", other.policies),
        );
        out
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn create_network(n: pb::Network) -> Call {
    Call::CreateNetwork(pb::CreateNetworkRequest { network: Some(n) })
}

/// A valid new network with `f` applied.
fn new_network(f: impl FnOnce(&mut pb::Network)) -> Call {
    let mut n = network("fresh", "10.62.0.0/24", "fd00:62::/64");
    f(&mut n);
    create_network(n)
}

/// UpdateNetwork of `name` with `f` applied to the sent values.
fn update_network(name: &str, paths: &[&str], f: impl FnOnce(&mut pb::Network)) -> Call {
    let mut n = pb::Network {
        name: name.into(),
        ..Default::default()
    };
    f(&mut n);
    Call::UpdateNetwork(pb::UpdateNetworkRequest {
        network: Some(n),
        update_mask: mask(paths),
    })
}

/// A valid new enrollment key for corp with `f` applied.
fn new_key(f: impl FnOnce(&mut pb::EnrollmentKey)) -> Call {
    let mut k = pb::EnrollmentKey {
        networks: strings(&["corp"]),
        uses_remaining: 1,
        ..Default::default()
    };
    f(&mut k);
    Call::CreateEnrollmentKey(pb::CreateEnrollmentKeyRequest {
        enrollment_key: Some(k),
    })
}

/// UpdateNode of `id` with `f` applied to the sent values.
fn update_node(id: &str, paths: &[&str], f: impl FnOnce(&mut pb::Node)) -> Call {
    let mut n = pb::Node {
        id: id.into(),
        ..Default::default()
    };
    f(&mut n);
    Call::UpdateNode(pb::UpdateNodeRequest {
        node: Some(n),
        update_mask: mask(paths),
    })
}

fn egress(node_id: &str, ranges: &[&str], interface: &str) -> Call {
    Call::CreateEgressGateway(pb::CreateEgressGatewayRequest {
        node_id: node_id.into(),
        ranges: strings(ranges),
        interface: interface.into(),
        nat_enabled: None,
        ..Default::default()
    })
}

fn explain(network: &str, from: &str, destination: &str) -> Call {
    Call::ExplainRoute(pb::ExplainRouteRequest {
        network: network.into(),
        from_node_id: from.into(),
        destination: destination.into(),
    })
}

/// A valid UpdatePolicy of corp (default DENY, one rule letting tag `ops`
/// reach 10.10.10.0/24 on tcp/443) with `f` applied.
fn update_policy(paths: &[&str], f: impl FnOnce(&mut pb::UpdatePolicyRequest)) -> Call {
    let mut r = pb::UpdatePolicyRequest {
        policy: Some(pb::Policy {
            network: "corp".into(),
            default_action: pb::PolicyAction::Deny as i32,
            rules: vec![rule(|_| {})],
            ..Default::default()
        }),
        update_mask: mask(paths),
        validate_only: false,
        expected_revision: 0,
    };
    f(&mut r);
    Call::UpdatePolicy(r)
}

/// A valid rule (tag:ops -> 10.10.10.0/24 tcp/443 ALLOW) with `f` applied.
fn rule(f: impl FnOnce(&mut pb::PolicyRule)) -> pb::PolicyRule {
    let mut r = pb::PolicyRule {
        name: "ops-web".into(),
        sources: strings(&["tag:ops"]),
        destinations: strings(&["10.10.10.0/24"]),
        protocols: vec![pb::Protocol::Tcp as i32],
        ports: strings(&["443"]),
        action: pb::PolicyAction::Allow as i32,
    };
    f(&mut r);
    r
}

/// The first rule of an UpdatePolicy request.
fn rule0(r: &mut pb::UpdatePolicyRequest) -> &mut pb::PolicyRule {
    &mut r.policy.as_mut().expect("policy").rules[0]
}

/// A valid TestAccess in corp from laptop to the office over tcp/443 with
/// `f` applied.
fn test_access(from: &str, f: impl FnOnce(&mut pb::TestAccessRequest)) -> Call {
    let mut r = pb::TestAccessRequest {
        network: "corp".into(),
        from: from.into(),
        to: "office".into(),
        protocol: pb::Protocol::Tcp as i32,
        port: 443,
    };
    f(&mut r);
    Call::TestAccess(r)
}

/// A valid new external client of corp's `server` with `f` applied.
fn new_client(server: &str, f: impl FnOnce(&mut pb::CreateExtClientRequest)) -> Call {
    let mut r = pb::CreateExtClientRequest {
        network: "corp".into(),
        ingress_node_id: server.into(),
        name: "tablet".into(),
        public_key: String::new(),
        dns: vec![],
        tags: vec![],
    };
    f(&mut r);
    Call::CreateExtClient(r)
}

/// UpdateExtClient of `id` with `f` applied to the sent values.
fn update_client(id: &str, paths: &[&str], f: impl FnOnce(&mut pb::ExtClient)) -> Call {
    let mut c = pb::ExtClient {
        id: id.into(),
        ..Default::default()
    };
    f(&mut c);
    Call::UpdateExtClient(pb::UpdateExtClientRequest {
        ext_client: Some(c),
        update_mask: mask(paths),
    })
}

/// A valid new custom DNS entry in corp with `f` applied.
fn new_entry(f: impl FnOnce(&mut pb::DnsEntry)) -> Call {
    let mut e = pb::DnsEntry {
        network: "corp".into(),
        name: "cache".into(),
        address: "10.60.0.201".into(),
        ..Default::default()
    };
    f(&mut e);
    Call::CreateDnsEntry(pb::CreateDnsEntryRequest { entry: Some(e) })
}

fn delete_entry(network: &str, name: &str) -> Call {
    Call::DeleteDnsEntry(pb::DeleteDnsEntryRequest {
        network: network.into(),
        name: name.into(),
    })
}

/// A valid registration in corp with the corp key, `f` applied.
fn register(key: &str, f: impl FnOnce(&mut pb::RegisterRequest)) -> Call {
    let mut r = pb::RegisterRequest {
        enrollment_key: key.into(),
        network: "corp".into(),
        name: "desktop".into(),
        public_key: wg_key(),
        endpoint: "desktop.example.net:51821".into(),
        listen_port: None,
        os: "linux".into(),
    };
    f(&mut r);
    Call::Register(r)
}

/// A report from laptop's agent with `f` applied.
fn report(f: impl FnOnce(&mut pb::ReportStatusRequest)) -> Call {
    let mut r = pb::ReportStatusRequest::default();
    f(&mut r);
    Call::ReportStatus(r)
}

fn host(interfaces: Vec<pb::HostInterface>, routes: Vec<pb::HostRoute>) -> Option<pb::HostReport> {
    Some(pb::HostReport {
        interfaces,
        routes,
        report_time: None,
    })
}

fn iface(name: &str, addresses: &[&str]) -> pb::HostInterface {
    pb::HostInterface {
        name: name.into(),
        addresses: strings(addresses),
        up: true,
    }
}

fn route(destination: &str, interface: &str, gateway: &str) -> pb::HostRoute {
    pb::HostRoute {
        destination: destination.into(),
        interface: interface.into(),
        gateway: gateway.into(),
    }
}

fn watch_events(after_revision: u64, networks: &[&str]) -> Call {
    Call::WatchEvents(pb::WatchEventsRequest {
        after_revision,
        networks: strings(networks),
    })
}

/// A page token of the server's own form (`k:` and the key, base64url)
/// around `key`.
fn page_token(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("k:{key}"))
}

/// A DNS name of `n` characters relative to a zone: labels of 63 `a`s and
/// a shorter last one, joined by dots.
fn long_dns_name(n: usize) -> String {
    let mut out = String::new();
    while out.len() < n {
        if !out.is_empty() {
            out.push('.');
        }
        let left = n - out.len();
        out.push_str(&"a".repeat(left.min(63)));
    }
    out
}

/// Not base64 / base64 of the wrong length.
const NOT_BASE64: &str = "this is not base64!";
const SHORT_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";
/// Well past every length limit (names, labels, descriptions).
fn huge() -> String {
    "x".repeat(100_000)
}

/// One harmless, valid request per RPC (the first node, the first client),
/// for the credential rows: if a refused credential got through, the valid
/// request would write, and the state check would see it.
fn every_rpc(fx: &Fixture) -> Vec<Call> {
    let laptop = fx.laptop.id.clone();
    let phone = fx.phone.id.clone();
    vec![
        new_network(|_| {}),
        Call::GetNetwork(pb::GetNetworkRequest {
            name: "corp".into(),
        }),
        Call::ListNetworks(Default::default()),
        update_network("corp", &["default_mtu"], |n| n.default_mtu = 1300),
        Call::DeleteNetwork(pb::DeleteNetworkRequest {
            name: "lab".into(),
            force: true,
        }),
        new_key(|_| {}),
        Call::ListEnrollmentKeys(Default::default()),
        Call::DeleteEnrollmentKey(pb::DeleteEnrollmentKeyRequest {
            id: fx.corp_key_id.clone(),
        }),
        Call::GetNode(pb::GetNodeRequest { id: laptop.clone() }),
        Call::ListNodes(Default::default()),
        update_node(&laptop, &["listen_port"], |n| n.listen_port = 4000),
        Call::DeleteNode(pb::DeleteNodeRequest { id: laptop.clone() }),
        Call::GetNodeConfig(pb::GetNodeConfigRequest { id: laptop.clone() }),
        egress(&laptop, &["10.20.0.0/16"], "eth0"),
        Call::DeleteEgressGateway(pb::DeleteEgressGatewayRequest {
            node_id: fx.office.id.clone(),
        }),
        Call::CreateIngressGateway(pb::CreateIngressGatewayRequest {
            node_id: fx.server.id.clone(),
            ext_client_dns: strings(&["9.9.9.9"]),
        }),
        Call::DeleteIngressGateway(pb::DeleteIngressGatewayRequest {
            node_id: fx.server.id.clone(),
            force: true,
        }),
        explain("corp", &laptop, "10.10.10.1"),
        new_client(&fx.server.id, |_| {}),
        Call::GetExtClient(pb::GetExtClientRequest { id: phone.clone() }),
        Call::ListExtClients(Default::default()),
        update_client(&phone, &["enabled"], |c| c.enabled = false),
        Call::DeleteExtClient(pb::DeleteExtClientRequest { id: phone.clone() }),
        Call::GetExtClientConfig(pb::GetExtClientConfigRequest { id: phone }),
        new_entry(|_| {}),
        Call::ListDnsEntries(pb::ListDnsEntriesRequest {
            network: "corp".into(),
            ..Default::default()
        }),
        delete_entry("corp", "db"),
        Call::GetHostsFile(pb::GetHostsFileRequest {
            network: "corp".into(),
        }),
        register(&fx.corp_key, |_| {}),
        Call::WatchConfig(pb::WatchConfigRequest { last_revision: 0 }),
        report(|r| r.endpoint = "203.0.113.99:51821".into()),
        watch_events(0, &[]),
        Call::GetPolicy(pb::GetPolicyRequest {
            network: "corp".into(),
        }),
        update_policy(&[], |_| {}),
        test_access(&laptop, |_| {}),
    ]
}

/// Rows refusing credentials, for every RPC: no token, a token that is no
/// token, a node token on admin services (even for its own node), an
/// enrollment key as a bearer, the admin token on the agent's RPCs.
/// Register takes no bearer (the enrollment key is in the request), so it
/// has none of these.
fn credential_rows(fx: &Fixture) -> Vec<Row> {
    let mut rows = Vec::new();
    for call in every_rpc(fx) {
        let rpc = call.rpc();
        if rpc == "AgentService/Register" {
            continue;
        }
        let agent = rpc.starts_with("AgentService/");
        rows.push(
            refused("no token", call.clone(), Code::Unauthenticated)
                .by(As::Nobody)
                .says("missing credentials"),
        );
        rows.push(
            refused(
                "a bearer that is no token",
                call.clone(),
                Code::Unauthenticated,
            )
            .by(As::Garbage)
            .says("invalid or revoked token"),
        );
        rows.push(
            refused(
                "an enrollment key as the bearer",
                call.clone(),
                Code::PermissionDenied,
            )
            .by(As::EnrollmentKey)
            .says("enrollment key only works in AgentService.Register"),
        );
        if agent {
            rows.push(
                refused(
                    "the admin token on the agent's RPC",
                    call,
                    Code::PermissionDenied,
                )
                .says("node's own token"),
            );
        } else {
            rows.push(
                refused(
                    "laptop's node token on an admin service",
                    call,
                    Code::PermissionDenied,
                )
                .by(As::Laptop)
                .says("node token may only call AgentService"),
            );
        }
    }
    rows
}

/// The catalogue.
fn table(fx: &Fixture, before: &State) -> Vec<Row> {
    let server = fx.server.id.as_str();
    let office = fx.office.id.as_str();
    let laptop = fx.laptop.id.as_str();
    let labgw = fx.labgw.id.as_str();
    let phone = fx.phone.id.as_str();
    let key = fx.corp_key.as_str();
    let laptop_revision = before
        .nodes
        .nodes
        .iter()
        .find(|n| n.id == laptop)
        .expect("laptop listed")
        .config_revision;
    let latest = before.latest_revision;
    let label64 = "x".repeat(64);
    let dns_fqdn_254 = long_dns_name(254 - 1 - "corp".len());

    let mut rows = vec![
        // ---- NetworkService.CreateNetwork
        invalid(
            "network missing",
            Call::CreateNetwork(Default::default()),
            "network",
        ),
        invalid(
            "name empty",
            new_network(|n| n.name.clear()),
            "network.name",
        ),
        invalid(
            "name of 33 characters",
            new_network(|n| n.name = "x".repeat(33)),
            "network.name",
        )
        .says("at most 32"),
        invalid(
            "name of 100,000 characters",
            new_network(|n| n.name = huge()),
            "network.name",
        ),
        invalid(
            "name with upper case",
            new_network(|n| n.name = "Fresh".into()),
            "network.name",
        ),
        invalid(
            "name with a NUL",
            new_network(|n| n.name = "fr\0esh".into()),
            "network.name",
        ),
        invalid(
            "name starting with '-'",
            new_network(|n| n.name = "-fresh".into()),
            "network.name",
        ),
        invalid(
            "no range at all",
            new_network(|n| {
                n.address_range.clear();
                n.address_range6.clear();
            }),
            "network.address_range",
        ),
        invalid(
            "IPv6 in address_range",
            new_network(|n| n.address_range = "fd00:63::/64".into()),
            "network.address_range",
        )
        .says("is IPv6"),
        invalid(
            "IPv4 in address_range6",
            new_network(|n| n.address_range6 = "10.63.0.0/24".into()),
            "network.address_range6",
        )
        .says("is IPv4"),
        invalid(
            "host bits in address_range",
            new_network(|n| n.address_range = "10.62.0.7/24".into()),
            "network.address_range",
        )
        .says("the range is 10.62.0.0/24"),
        invalid(
            "host bits in address_range6",
            new_network(|n| n.address_range6 = "fd00:62::1/64".into()),
            "network.address_range6",
        )
        .says("the range is fd00:62::/64"),
        invalid(
            "address_range without a prefix",
            new_network(|n| n.address_range = "10.62.0.0".into()),
            "network.address_range",
        ),
        invalid(
            "address_range prefix /33",
            new_network(|n| n.address_range = "10.62.0.0/33".into()),
            "network.address_range",
        ),
        invalid(
            "address_range of /31 (no room)",
            new_network(|n| n.address_range = "10.62.0.0/31".into()),
            "network.address_range",
        )
        .says("/30 or shorter"),
        invalid(
            "address_range6 of /127",
            new_network(|n| n.address_range6 = "fd00:62::/127".into()),
            "network.address_range6",
        ),
        invalid(
            "address_range of 100,000 characters",
            new_network(|n| n.address_range = huge()),
            "network.address_range",
        ),
        invalid(
            "mtu 100",
            new_network(|n| n.default_mtu = 100),
            "network.default_mtu",
        ),
        invalid(
            "mtu 65536",
            new_network(|n| n.default_mtu = 65536),
            "network.default_mtu",
        ),
        invalid(
            "listen port 65536",
            new_network(|n| n.default_listen_port = 65536),
            "network.default_listen_port",
        ),
        invalid(
            "keepalive 65536",
            new_network(|n| n.default_keepalive = 65536),
            "network.default_keepalive",
        ),
        invalid(
            "keepalive u32::MAX",
            new_network(|n| n.default_keepalive = u32::MAX),
            "network.default_keepalive",
        ),
        invalid(
            "a DNS name as an ext client DNS server",
            new_network(|n| n.default_ext_client_dns = strings(&["1.1.1.1", "dns.example"])),
            "network.default_ext_client_dns[1]",
        ),
        invalid(
            "a CIDR as a nameserver",
            new_network(|n| n.nameservers = strings(&["10.0.0.53/32"])),
            "network.nameservers[0]",
        ),
        invalid(
            "an empty nameserver",
            new_network(|n| n.nameservers = strings(&[""])),
            "network.nameservers[0]",
        ),
        invalid(
            "a nameserver of 100,000 characters",
            new_network(|n| n.nameservers = vec![huge()]),
            "network.nameservers[0]",
        ),
        refused(
            "name taken",
            new_network(|n| n.name = "corp".into()),
            Code::AlreadyExists,
        )
        .field("network.name"),
        refused(
            "range overlapping lab's",
            new_network(|n| n.address_range = "10.61.0.0/25".into()),
            Code::FailedPrecondition,
        )
        .says("of network \"lab\""),
        refused(
            "range6 containing corp's",
            new_network(|n| n.address_range6 = "fd00::/16".into()),
            Code::FailedPrecondition,
        )
        .says("of network \"corp\""),
        // ---- NetworkService.GetNetwork
        invalid("name empty", Call::GetNetwork(Default::default()), "name"),
        refused(
            "unknown network",
            Call::GetNetwork(pb::GetNetworkRequest {
                name: "nope".into(),
            }),
            Code::NotFound,
        ),
        refused(
            "name of 100,000 characters",
            Call::GetNetwork(pb::GetNetworkRequest { name: huge() }),
            Code::NotFound,
        ),
        // ---- NetworkService.ListNetworks
        invalid(
            "negative page size",
            Call::ListNetworks(pb::ListNetworksRequest {
                page_size: -1,
                ..Default::default()
            }),
            "page_size",
        ),
        invalid(
            "page token that is not base64",
            Call::ListNetworks(pb::ListNetworksRequest {
                page_token: "!!".into(),
                ..Default::default()
            }),
            "page_token",
        ),
        invalid(
            "page token of another form",
            Call::ListNetworks(pb::ListNetworksRequest {
                page_token: "aGVsbG8".into(),
                ..Default::default()
            }),
            "page_token",
        ),
        invalid(
            "page token around a NUL",
            Call::ListNetworks(pb::ListNetworksRequest {
                page_token: page_token("co\0rp"),
                ..Default::default()
            }),
            "page_token",
        ),
        // ---- NetworkService.UpdateNetwork
        invalid(
            "network missing",
            Call::UpdateNetwork(Default::default()),
            "network",
        ),
        invalid(
            "name empty",
            update_network("", &["default_mtu"], |n| n.default_mtu = 1300),
            "network.name",
        ),
        invalid(
            "unknown mask path",
            update_network("corp", &["bogus"], |_| {}),
            "update_mask",
        )
        .says("unknown field"),
        invalid(
            "camelCase mask path",
            update_network("corp", &["defaultMtu"], |n| n.default_mtu = 1300),
            "update_mask",
        ),
        invalid(
            "immutable address_range in the mask",
            update_network("corp", &["address_range"], |n| {
                n.address_range = "10.70.0.0/24".into()
            }),
            "update_mask",
        )
        .says("cannot be changed"),
        invalid(
            "name in the mask",
            update_network("corp", &["name"], |_| {}),
            "update_mask",
        ),
        invalid(
            "a mask path of 100,000 characters",
            update_network("corp", &[&huge()], |_| {}),
            "update_mask",
        ),
        invalid(
            "an empty mask and nothing set",
            update_network("corp", &[], |_| {}),
            "update_mask",
        ),
        invalid(
            "an empty mask and a bad mtu",
            update_network("corp", &[], |n| n.default_mtu = 100),
            "network.default_mtu",
        ),
        invalid(
            "mtu 0 named in the mask",
            update_network("corp", &["default_mtu"], |_| {}),
            "network.default_mtu",
        ),
        invalid(
            "listen port 0 named in the mask",
            update_network("corp", &["default_listen_port"], |_| {}),
            "network.default_listen_port",
        ),
        invalid(
            "keepalive 65536",
            update_network("corp", &["default_keepalive"], |n| {
                n.default_keepalive = 65536
            }),
            "network.default_keepalive",
        ),
        invalid(
            "a bad nameserver",
            update_network("corp", &["nameservers"], |n| {
                n.nameservers = strings(&["9.9.9.9", "resolver"])
            }),
            "network.nameservers[1]",
        ),
        invalid(
            "a bad ext client DNS server",
            update_network("corp", &["default_ext_client_dns"], |n| {
                n.default_ext_client_dns = strings(&["fd00::1/64"])
            }),
            "network.default_ext_client_dns[0]",
        ),
        refused(
            "unknown network",
            update_network("nope", &["default_mtu"], |n| n.default_mtu = 1300),
            Code::NotFound,
        ),
        refused(
            "a network name with a NUL",
            update_network("co\0rp", &["default_mtu"], |n| n.default_mtu = 1300),
            Code::NotFound,
        )
        .known("K1"),
        // ---- NetworkService.DeleteNetwork
        invalid(
            "name empty",
            Call::DeleteNetwork(Default::default()),
            "name",
        ),
        refused(
            "unknown network",
            Call::DeleteNetwork(pb::DeleteNetworkRequest {
                name: "nope".into(),
                force: true,
            }),
            Code::NotFound,
        ),
        refused(
            "a network with nodes, without force",
            Call::DeleteNetwork(pb::DeleteNetworkRequest {
                name: "lab".into(),
                force: false,
            }),
            Code::FailedPrecondition,
        )
        .says("set force"),
        refused(
            "a name with a NUL",
            Call::DeleteNetwork(pb::DeleteNetworkRequest {
                name: "la\0b".into(),
                force: true,
            }),
            Code::NotFound,
        )
        .known("K1"),
        // ---- EnrollmentKeyService.CreateEnrollmentKey
        invalid(
            "key missing",
            Call::CreateEnrollmentKey(Default::default()),
            "enrollment_key",
        ),
        invalid(
            "no network",
            new_key(|k| k.networks.clear()),
            "enrollment_key.networks",
        ),
        invalid(
            "a malformed network",
            new_key(|k| k.networks = strings(&["corp", "Lab!"])),
            "enrollment_key.networks[1]",
        ),
        invalid(
            "a thousand malformed networks",
            new_key(|k| k.networks = vec!["Lab!".to_owned(); 1000]),
            "enrollment_key.networks[0]",
        )
        .many(),
        refused(
            "an unknown network",
            new_key(|k| k.networks = strings(&["corp", "nope"])),
            Code::NotFound,
        ),
        invalid(
            "no uses and not unlimited",
            new_key(|k| k.uses_remaining = 0),
            "enrollment_key.uses_remaining",
        ),
        invalid(
            "expired already",
            new_key(|k| {
                k.expire_time = Some(prost_types::Timestamp {
                    seconds: 1_000_000_000,
                    nanos: 0,
                })
            }),
            "enrollment_key.expire_time",
        )
        .says("not in the future"),
        invalid(
            "an invalid timestamp",
            new_key(|k| {
                k.expire_time = Some(prost_types::Timestamp {
                    seconds: 4_000_000_000,
                    nanos: 2_000_000_000,
                })
            }),
            "enrollment_key.expire_time",
        ),
        invalid(
            "a timestamp past year 9999",
            new_key(|k| {
                k.expire_time = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
            "enrollment_key.expire_time",
        ),
        invalid(
            "description of 257 characters",
            new_key(|k| k.description = "d".repeat(257)),
            "enrollment_key.description",
        ),
        invalid(
            "description with a bell",
            new_key(|k| k.description = "ops \u{7}".into()),
            "enrollment_key.description",
        )
        .says("control character"),
        invalid(
            "description with a NUL",
            new_key(|k| k.description = "ops\0".into()),
            "enrollment_key.description",
        ),
        // ---- EnrollmentKeyService.ListEnrollmentKeys
        invalid(
            "negative page size",
            Call::ListEnrollmentKeys(pb::ListEnrollmentKeysRequest {
                page_size: -7,
                ..Default::default()
            }),
            "page_size",
        ),
        invalid(
            "a garbage page token",
            Call::ListEnrollmentKeys(pb::ListEnrollmentKeysRequest {
                page_token: "%%%".into(),
                ..Default::default()
            }),
            "page_token",
        ),
        invalid(
            "a malformed network filter",
            Call::ListEnrollmentKeys(pb::ListEnrollmentKeysRequest {
                network: "Corp!".into(),
                ..Default::default()
            }),
            "network",
        )
        .known("K3"),
        // ---- EnrollmentKeyService.DeleteEnrollmentKey
        invalid(
            "id empty",
            Call::DeleteEnrollmentKey(Default::default()),
            "id",
        ),
        refused(
            "unknown id",
            Call::DeleteEnrollmentKey(pb::DeleteEnrollmentKeyRequest { id: "nope".into() }),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            Call::DeleteEnrollmentKey(pb::DeleteEnrollmentKeyRequest {
                id: "no\0pe".into(),
            }),
            Code::NotFound,
        )
        .known("K1"),
        refused(
            "the key's token instead of its id",
            Call::DeleteEnrollmentKey(pb::DeleteEnrollmentKeyRequest { id: key.into() }),
            Code::NotFound,
        ),
        // ---- NodeService.GetNode
        invalid("id empty", Call::GetNode(Default::default()), "id"),
        refused(
            "unknown id",
            Call::GetNode(pb::GetNodeRequest { id: "nope".into() }),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            Call::GetNode(pb::GetNodeRequest { id: "\0".into() }),
            Code::NotFound,
        )
        .known("K1"),
        refused(
            "an external client's id",
            Call::GetNode(pb::GetNodeRequest { id: phone.into() }),
            Code::NotFound,
        ),
        refused(
            "an id of 100,000 characters",
            Call::GetNode(pb::GetNodeRequest { id: huge() }),
            Code::NotFound,
        ),
        refused(
            "laptop's token asking for another node",
            Call::GetNode(pb::GetNodeRequest { id: server.into() }),
            Code::PermissionDenied,
        )
        .by(As::Laptop),
        // ---- NodeService.ListNodes
        invalid(
            "negative page size",
            Call::ListNodes(pb::ListNodesRequest {
                page_size: i32::MIN,
                ..Default::default()
            }),
            "page_size",
        ),
        invalid(
            "a garbage page token",
            Call::ListNodes(pb::ListNodesRequest {
                page_token: "not a token".into(),
                ..Default::default()
            }),
            "page_token",
        ),
        invalid(
            "a page token around a NUL",
            Call::ListNodes(pb::ListNodesRequest {
                page_token: page_token("corp/\0"),
                ..Default::default()
            }),
            "page_token",
        ),
        invalid(
            "a malformed network filter",
            Call::ListNodes(pb::ListNodesRequest {
                network: "Corp!".into(),
                ..Default::default()
            }),
            "network",
        )
        .known("K3"),
        invalid(
            "a network filter with a NUL",
            Call::ListNodes(pb::ListNodesRequest {
                network: "co\0rp".into(),
                ..Default::default()
            }),
            "network",
        )
        .known("K1, K3"),
        // ---- NodeService.UpdateNode
        invalid("node missing", Call::UpdateNode(Default::default()), "node"),
        invalid(
            "a tag that is no label",
            update_node(laptop, &["tags"], |n| n.tags = strings(&["ops", "Ops!"])),
            "node.tags[1]",
        ),
        invalid(
            "33 tags",
            update_node(laptop, &["tags"], |n| {
                n.tags = (0..33).map(|i| format!("t{i}")).collect()
            }),
            "node.tags",
        )
        .says("at most 32"),
        invalid(
            "a tag of 64 characters",
            update_node(laptop, &["tags"], |n| n.tags = vec![label64.clone()]),
            "node.tags[0]",
        ),
        invalid(
            "id empty",
            update_node("", &["name"], |n| n.name = "pc".into()),
            "node.id",
        ),
        invalid(
            "no mask",
            update_node(laptop, &[], |n| n.name = "pc".into()),
            "update_mask",
        ),
        invalid(
            "output-only address in the mask",
            update_node(laptop, &["address"], |n| n.address = "10.60.0.99".into()),
            "update_mask",
        ),
        invalid(
            "egress in the mask",
            update_node(laptop, &["egress"], |_| {}),
            "update_mask",
        ),
        invalid(
            "a thousand unknown mask paths",
            update_node(laptop, &vec!["bogus"; 1000], |_| {}),
            "update_mask",
        )
        .many(),
        invalid(
            "name with a space",
            update_node(laptop, &["name"], |n| n.name = "my laptop".into()),
            "node.name",
        ),
        invalid(
            "name of 64 characters",
            update_node(laptop, &["name"], |n| n.name = label64.clone()),
            "node.name",
        )
        .says("at most 63"),
        invalid(
            "name empty named in the mask",
            update_node(laptop, &["name"], |_| {}),
            "node.name",
        ),
        invalid(
            "endpoint without a port",
            update_node(laptop, &["endpoint"], |n| n.endpoint = "203.0.113.9".into()),
            "node.endpoint",
        ),
        invalid(
            "endpoint port 0",
            update_node(laptop, &["endpoint"], |n| {
                n.endpoint = "203.0.113.9:0".into()
            }),
            "node.endpoint",
        ),
        invalid(
            "endpoint port 65536",
            update_node(laptop, &["endpoint"], |n| {
                n.endpoint = "203.0.113.9:65536".into()
            }),
            "node.endpoint",
        ),
        invalid(
            "IPv6 endpoint without brackets",
            update_node(laptop, &["endpoint"], |n| {
                n.endpoint = "fd00::9:51821".into()
            }),
            "node.endpoint",
        )
        .says("[addr]:port"),
        invalid(
            "endpoint host with a space",
            update_node(laptop, &["endpoint"], |n| {
                n.endpoint = "my host:51821".into()
            }),
            "node.endpoint",
        ),
        invalid(
            "endpoint IPv4 out of range",
            update_node(laptop, &["endpoint"], |n| {
                n.endpoint = "300.1.1.1:51821".into()
            }),
            "node.endpoint",
        ),
        invalid(
            "endpoint of 100,000 characters",
            update_node(laptop, &["endpoint"], |n| {
                n.endpoint = format!("{}:1", huge())
            }),
            "node.endpoint",
        ),
        invalid(
            "listen port 0",
            update_node(laptop, &["listen_port"], |n| n.listen_port = 0),
            "node.listen_port",
        ),
        invalid(
            "listen port 65536",
            update_node(laptop, &["listen_port"], |n| n.listen_port = 65536),
            "node.listen_port",
        ),
        invalid(
            "keepalive 65536",
            update_node(laptop, &["persistent_keepalive"], |n| {
                n.persistent_keepalive = 65536
            }),
            "node.persistent_keepalive",
        ),
        invalid(
            "public key not base64",
            update_node(laptop, &["public_key"], |n| {
                n.public_key = NOT_BASE64.into()
            }),
            "node.public_key",
        ),
        invalid(
            "public key of 22 bytes",
            update_node(laptop, &["public_key"], |n| n.public_key = SHORT_KEY.into()),
            "node.public_key",
        )
        .says("32 bytes"),
        invalid(
            "public key empty named in the mask",
            update_node(laptop, &["public_key"], |_| {}),
            "node.public_key",
        ),
        refused(
            "name of another node",
            update_node(laptop, &["name"], |n| n.name = "server".into()),
            Code::AlreadyExists,
        )
        .field("node.name"),
        refused(
            "name of a custom DNS entry",
            update_node(laptop, &["name"], |n| n.name = "db".into()),
            Code::AlreadyExists,
        )
        .field("node.name"),
        refused(
            "name of an external client",
            update_node(laptop, &["name"], |n| n.name = "phone".into()),
            Code::AlreadyExists,
        )
        .field("node.name"),
        refused(
            "public key of another node",
            update_node(laptop, &["public_key"], |n| {
                n.public_key = fx.server.public_key.clone()
            }),
            Code::AlreadyExists,
        )
        .field("node.public_key"),
        refused(
            "public key of an external client",
            update_node(laptop, &["public_key"], |n| {
                n.public_key = fx.phone.public_key.clone()
            }),
            Code::AlreadyExists,
        )
        .field("node.public_key"),
        refused(
            "unknown id",
            update_node("nope", &["listen_port"], |n| n.listen_port = 4000),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            update_node("no\0pe", &["listen_port"], |n| n.listen_port = 4000),
            Code::NotFound,
        )
        .known("K1"),
        // ---- NodeService.DeleteNode
        invalid("id empty", Call::DeleteNode(Default::default()), "id"),
        refused(
            "unknown id",
            Call::DeleteNode(pb::DeleteNodeRequest { id: "nope".into() }),
            Code::NotFound,
        ),
        refused(
            "an external client's id",
            Call::DeleteNode(pb::DeleteNodeRequest { id: phone.into() }),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            Call::DeleteNode(pb::DeleteNodeRequest { id: "\0".into() }),
            Code::NotFound,
        )
        .known("K1"),
        // ---- NodeService.GetNodeConfig
        invalid("id empty", Call::GetNodeConfig(Default::default()), "id"),
        refused(
            "unknown id",
            Call::GetNodeConfig(pb::GetNodeConfigRequest { id: "nope".into() }),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            Call::GetNodeConfig(pb::GetNodeConfigRequest { id: "\0".into() }),
            Code::NotFound,
        ),
        // ---- GatewayService.CreateEgressGateway
        invalid(
            "node id empty",
            egress("", &["10.20.0.0/16"], "eth0"),
            "node_id",
        ),
        refused(
            "unknown node",
            egress("nope", &["10.20.0.0/16"], "eth0"),
            Code::NotFound,
        ),
        refused(
            "a node id with a NUL",
            egress("\0", &["10.20.0.0/16"], "eth0"),
            Code::NotFound,
        )
        .known("K1"),
        invalid("no range", egress(laptop, &[], "eth0"), "ranges"),
        invalid(
            "only separators",
            egress(laptop, &[", ,"], "eth0"),
            "ranges",
        ),
        invalid(
            "host bits",
            egress(laptop, &["10.20.1.0/16"], "eth0"),
            "ranges[0]",
        )
        .says("the range is 10.20.0.0/16"),
        invalid(
            "not a range, second in a list",
            egress(laptop, &["10.20.0.0/16,bogus"], "eth0"),
            "ranges[1]",
        ),
        invalid(
            "an address without a prefix",
            egress(laptop, &["10.20.0.1"], "eth0"),
            "ranges[0]",
        ),
        invalid(
            "a thousand bad ranges",
            egress(laptop, &vec!["10.20.0.1/8"; 1000], "eth0"),
            "ranges[0]",
        )
        .many(),
        invalid(
            "a range of 100,000 characters",
            egress(laptop, &[&huge()], "eth0"),
            "ranges[0]",
        ),
        invalid(
            "inside the network's own IPv4 range",
            egress(laptop, &["10.60.0.128/25"], "eth0"),
            "ranges[0]",
        )
        .says("own range 10.60.0.0/24"),
        invalid(
            "the network's own range, on the gateway replacing its egress",
            egress(office, &["10.10.10.0/24", "10.60.0.0/24"], "eth2"),
            "ranges[1]",
        ),
        invalid(
            "inside the network's own IPv6 range",
            egress(laptop, &["fd00:60::/80"], "eth0"),
            "ranges[0]",
        ),
        invalid(
            "interface empty (no host report)",
            egress(laptop, &["10.20.0.0/16"], ""),
            "interface",
        ),
        invalid(
            "interface with a space",
            egress(laptop, &["10.20.0.0/16"], "eth 0"),
            "interface",
        ),
        invalid(
            "interface of 16 bytes",
            egress(laptop, &["10.20.0.0/16"], "sixteen-chars-xx"),
            "interface",
        ),
        invalid(
            "interface with a '/'",
            egress(laptop, &["10.20.0.0/16"], "eth0/1"),
            "interface",
        ),
        invalid(
            "interface '..'",
            egress(laptop, &["10.20.0.0/16"], ".."),
            "interface",
        ),
        invalid(
            "interface with a newline",
            egress(laptop, &["10.20.0.0/16"], "eth0\n"),
            "interface",
        ),
        invalid(
            "interface with a double quote",
            egress(laptop, &["10.20.0.0/16"], "eth\"0"),
            "interface",
        )
        .says("iptables-restore"),
        refused(
            "a range another gateway serves",
            egress(laptop, &["192.168.0.0/16", "10.10.10.0/24"], "eth0"),
            Code::AlreadyExists,
        )
        .field("ranges")
        .says("\"office\""),
        // ---- GatewayService.DeleteEgressGateway
        invalid(
            "node id empty",
            Call::DeleteEgressGateway(Default::default()),
            "node_id",
        ),
        refused(
            "unknown node",
            Call::DeleteEgressGateway(pb::DeleteEgressGatewayRequest {
                node_id: "nope".into(),
            }),
            Code::NotFound,
        ),
        refused(
            "a node id with a NUL",
            Call::DeleteEgressGateway(pb::DeleteEgressGatewayRequest {
                node_id: "\0".into(),
            }),
            Code::NotFound,
        )
        .known("K1"),
        refused(
            "a node that is not an egress gateway",
            Call::DeleteEgressGateway(pb::DeleteEgressGatewayRequest {
                node_id: laptop.into(),
            }),
            Code::FailedPrecondition,
        )
        .says("not an egress gateway"),
        // ---- GatewayService.CreateIngressGateway
        invalid(
            "node id empty",
            Call::CreateIngressGateway(Default::default()),
            "node_id",
        ),
        refused(
            "unknown node",
            Call::CreateIngressGateway(pb::CreateIngressGatewayRequest {
                node_id: "nope".into(),
                ext_client_dns: vec![],
            }),
            Code::NotFound,
        ),
        refused(
            "a node id with a NUL",
            Call::CreateIngressGateway(pb::CreateIngressGatewayRequest {
                node_id: "\0".into(),
                ext_client_dns: vec![],
            }),
            Code::NotFound,
        )
        .known("K1"),
        invalid(
            "a bad DNS server",
            Call::CreateIngressGateway(pb::CreateIngressGatewayRequest {
                node_id: server.into(),
                ext_client_dns: strings(&["10.60.0.1", "dns"]),
            }),
            "ext_client_dns[1]",
        ),
        refused(
            "a node without an endpoint",
            Call::CreateIngressGateway(pb::CreateIngressGatewayRequest {
                node_id: laptop.into(),
                ext_client_dns: vec![],
            }),
            Code::FailedPrecondition,
        )
        .says("no endpoint"),
        // ---- GatewayService.DeleteIngressGateway
        invalid(
            "node id empty",
            Call::DeleteIngressGateway(Default::default()),
            "node_id",
        ),
        refused(
            "unknown node",
            Call::DeleteIngressGateway(pb::DeleteIngressGatewayRequest {
                node_id: "nope".into(),
                force: true,
            }),
            Code::NotFound,
        ),
        refused(
            "a node id with a NUL",
            Call::DeleteIngressGateway(pb::DeleteIngressGatewayRequest {
                node_id: "\0".into(),
                force: true,
            }),
            Code::NotFound,
        )
        .known("K1"),
        refused(
            "a node that is not an ingress gateway",
            Call::DeleteIngressGateway(pb::DeleteIngressGatewayRequest {
                node_id: laptop.into(),
                force: true,
            }),
            Code::FailedPrecondition,
        )
        .says("not an ingress gateway"),
        refused(
            "an ingress gateway with clients, without force",
            Call::DeleteIngressGateway(pb::DeleteIngressGatewayRequest {
                node_id: server.into(),
                force: false,
            }),
            Code::FailedPrecondition,
        )
        .says("1 external client"),
        // ---- GatewayService.ExplainRoute
        invalid(
            "network empty",
            explain("", laptop, "10.10.10.1"),
            "network",
        ),
        invalid(
            "from empty",
            explain("corp", "", "10.10.10.1"),
            "from_node_id",
        ),
        invalid(
            "destination empty",
            explain("corp", laptop, ""),
            "destination",
        ),
        invalid(
            "destination a range",
            explain("corp", laptop, "10.10.10.0/24"),
            "destination",
        ),
        invalid(
            "destination out of range",
            explain("corp", laptop, "10.10.10.256"),
            "destination",
        ),
        invalid(
            "destination of 100,000 characters",
            explain("corp", laptop, &huge()),
            "destination",
        )
        .known("K2"),
        refused(
            "unknown network",
            explain("nope", laptop, "10.10.10.1"),
            Code::NotFound,
        ),
        refused(
            "unknown node",
            explain("corp", "nope", "10.10.10.1"),
            Code::NotFound,
        ),
        refused(
            "a node id with a NUL",
            explain("corp", "\0", "10.10.10.1"),
            Code::NotFound,
        ),
        refused(
            "a node of another network",
            explain("corp", labgw, "10.10.10.1"),
            Code::NotFound,
        ),
        // ---- ExtClientService.CreateExtClient
        invalid(
            "a tag that is no label",
            new_client(server, |r| r.tags = strings(&["-ops"])),
            "tags[0]",
        ),
        invalid(
            "network empty",
            new_client(server, |r| r.network.clear()),
            "network",
        ),
        invalid(
            "network malformed",
            new_client(server, |r| r.network = "Corp".into()),
            "network",
        ),
        refused(
            "unknown network",
            new_client(server, |r| r.network = "nope".into()),
            Code::NotFound,
        ),
        invalid(
            "ingress empty",
            new_client(server, |r| r.ingress_node_id.clear()),
            "ingress_node_id",
        ),
        refused(
            "unknown ingress",
            new_client(server, |r| r.ingress_node_id = "nope".into()),
            Code::NotFound,
        ),
        refused(
            "an ingress id with a NUL",
            new_client(server, |r| r.ingress_node_id = "\0".into()),
            Code::NotFound,
        )
        .known("K1"),
        invalid(
            "the ingress gateway of another network",
            new_client(labgw, |_| {}),
            "ingress_node_id",
        )
        .says("is in network \"lab\""),
        refused(
            "a node that is not an ingress gateway",
            new_client(laptop, |_| {}),
            Code::FailedPrecondition,
        )
        .says("not an ingress gateway"),
        invalid(
            "name with '_'",
            new_client(server, |r| r.name = "my_tablet".into()),
            "name",
        ),
        invalid(
            "name of 64 characters",
            new_client(server, |r| r.name = label64.clone()),
            "name",
        ),
        invalid(
            "name of 100,000 characters",
            new_client(server, |r| r.name = huge()),
            "name",
        ),
        invalid(
            "public key not base64",
            new_client(server, |r| r.public_key = NOT_BASE64.into()),
            "public_key",
        ),
        invalid(
            "public key of 22 bytes",
            new_client(server, |r| r.public_key = SHORT_KEY.into()),
            "public_key",
        ),
        invalid(
            "a bad DNS server",
            new_client(server, |r| r.dns = strings(&["1.1.1.1", "one.one"])),
            "dns[1]",
        ),
        refused(
            "name of a node",
            new_client(server, |r| r.name = "laptop".into()),
            Code::AlreadyExists,
        )
        .field("name"),
        refused(
            "public key of a node",
            new_client(server, |r| r.public_key = fx.office.public_key.clone()),
            Code::AlreadyExists,
        )
        .field("public_key"),
        // ---- ExtClientService.GetExtClient
        invalid("id empty", Call::GetExtClient(Default::default()), "id"),
        refused(
            "unknown id",
            Call::GetExtClient(pb::GetExtClientRequest { id: "nope".into() }),
            Code::NotFound,
        ),
        refused(
            "a node's id",
            Call::GetExtClient(pb::GetExtClientRequest { id: server.into() }),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            Call::GetExtClient(pb::GetExtClientRequest { id: "\0".into() }),
            Code::NotFound,
        )
        .known("K1"),
        // ---- ExtClientService.ListExtClients
        invalid(
            "negative page size",
            Call::ListExtClients(pb::ListExtClientsRequest {
                page_size: -1,
                ..Default::default()
            }),
            "page_size",
        ),
        invalid(
            "a garbage page token",
            Call::ListExtClients(pb::ListExtClientsRequest {
                page_token: "k:corp/phone".into(),
                ..Default::default()
            }),
            "page_token",
        ),
        invalid(
            "a malformed network filter",
            Call::ListExtClients(pb::ListExtClientsRequest {
                network: "Corp!".into(),
                ..Default::default()
            }),
            "network",
        )
        .known("K3"),
        refused(
            "an ingress filter with a NUL (matches nothing, like any unknown id)",
            Call::ListExtClients(pb::ListExtClientsRequest {
                ingress_node_id: "\0".into(),
                ..Default::default()
            }),
            Code::Ok,
        )
        .known("K1"),
        // ---- ExtClientService.UpdateExtClient
        invalid(
            "a tag that is no label",
            update_client(phone, &["tags"], |c| c.tags = strings(&["ops", "a_b"])),
            "ext_client.tags[1]",
        ),
        invalid(
            "client missing",
            Call::UpdateExtClient(Default::default()),
            "ext_client",
        ),
        invalid(
            "id empty",
            update_client("", &["enabled"], |c| c.enabled = false),
            "ext_client.id",
        ),
        invalid(
            "no mask",
            update_client(phone, &[], |c| c.enabled = false),
            "update_mask",
        ),
        invalid(
            "public key in the mask",
            update_client(phone, &["public_key"], |c| c.public_key = wg_key()),
            "update_mask",
        ),
        invalid(
            "ingress in the mask",
            update_client(phone, &["ingress_node_id"], |c| {
                c.ingress_node_id = labgw.into()
            }),
            "update_mask",
        ),
        invalid(
            "name with a dot",
            update_client(phone, &["name"], |c| c.name = "my.phone".into()),
            "ext_client.name",
        ),
        invalid(
            "name of 64 characters",
            update_client(phone, &["name"], |c| c.name = label64.clone()),
            "ext_client.name",
        ),
        invalid(
            "a bad DNS server",
            update_client(phone, &["dns"], |c| {
                c.dns = strings(&["fd00::1", "fd00::g"])
            }),
            "ext_client.dns[1]",
        ),
        refused(
            "name of a node",
            update_client(phone, &["name"], |c| c.name = "office".into()),
            Code::AlreadyExists,
        )
        .field("ext_client.name"),
        refused(
            "unknown id",
            update_client("nope", &["enabled"], |c| c.enabled = false),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            update_client("\0", &["enabled"], |c| c.enabled = false),
            Code::NotFound,
        )
        .known("K1"),
        // ---- ExtClientService.DeleteExtClient
        invalid("id empty", Call::DeleteExtClient(Default::default()), "id"),
        refused(
            "unknown id",
            Call::DeleteExtClient(pb::DeleteExtClientRequest { id: "nope".into() }),
            Code::NotFound,
        ),
        refused(
            "a node's id",
            Call::DeleteExtClient(pb::DeleteExtClientRequest { id: laptop.into() }),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            Call::DeleteExtClient(pb::DeleteExtClientRequest { id: "\0".into() }),
            Code::NotFound,
        )
        .known("K1"),
        // ---- ExtClientService.GetExtClientConfig
        invalid(
            "id empty",
            Call::GetExtClientConfig(Default::default()),
            "id",
        ),
        refused(
            "unknown id",
            Call::GetExtClientConfig(pb::GetExtClientConfigRequest { id: "nope".into() }),
            Code::NotFound,
        ),
        refused(
            "an id with a NUL",
            Call::GetExtClientConfig(pb::GetExtClientConfigRequest { id: "\0".into() }),
            Code::NotFound,
        )
        .known("K1"),
        // ---- DnsService.CreateDnsEntry
        invalid(
            "entry missing",
            Call::CreateDnsEntry(Default::default()),
            "entry",
        ),
        invalid(
            "network empty",
            new_entry(|e| e.network.clear()),
            "entry.network",
        ),
        refused(
            "unknown network",
            new_entry(|e| e.network = "nope".into()),
            Code::NotFound,
        ),
        invalid("name empty", new_entry(|e| e.name.clear()), "entry.name"),
        invalid(
            "name with '_'",
            new_entry(|e| e.name = "my_db".into()),
            "entry.name",
        ),
        invalid(
            "name with an empty label",
            new_entry(|e| e.name = "a..b".into()),
            "entry.name",
        ),
        invalid(
            "a label of 64 characters",
            new_entry(|e| e.name = label64.clone()),
            "entry.name",
        )
        .says("at most 63"),
        invalid(
            "a name of 254 characters with its zone",
            new_entry(|e| e.name = dns_fqdn_254.clone()),
            "entry.name",
        )
        .says("at most 253"),
        invalid(
            "a name of 100,000 characters",
            new_entry(|e| e.name = huge()),
            "entry.name",
        ),
        invalid(
            "a name with a NUL",
            new_entry(|e| e.name = "d\0b".into()),
            "entry.name",
        ),
        invalid(
            "no address",
            new_entry(|e| e.address.clear()),
            "entry.address",
        ),
        invalid(
            "IPv6 in address",
            new_entry(|e| e.address = "fd00:60::5".into()),
            "entry.address",
        ),
        invalid(
            "IPv4 in address6",
            new_entry(|e| e.address6 = "10.60.0.5".into()),
            "entry.address6",
        ),
        invalid(
            "a range in address",
            new_entry(|e| e.address = "10.60.0.0/24".into()),
            "entry.address",
        ),
        invalid(
            "an address of 100,000 characters",
            new_entry(|e| e.address = huge()),
            "entry.address",
        ),
        refused(
            "a node's name",
            new_entry(|e| e.name = "office".into()),
            Code::AlreadyExists,
        )
        .field("entry.name"),
        refused(
            "an existing entry's name, in capitals",
            new_entry(|e| e.name = "DB".into()),
            Code::AlreadyExists,
        )
        .field("entry.name"),
        // ---- DnsService.ListDnsEntries
        invalid(
            "network empty",
            Call::ListDnsEntries(Default::default()),
            "network",
        ),
        invalid(
            "network malformed",
            Call::ListDnsEntries(pb::ListDnsEntriesRequest {
                network: "c o r p".into(),
                ..Default::default()
            }),
            "network",
        ),
        refused(
            "unknown network",
            Call::ListDnsEntries(pb::ListDnsEntriesRequest {
                network: "nope".into(),
                ..Default::default()
            }),
            Code::NotFound,
        ),
        invalid(
            "negative page size",
            Call::ListDnsEntries(pb::ListDnsEntriesRequest {
                network: "corp".into(),
                page_size: -1,
                ..Default::default()
            }),
            "page_size",
        ),
        invalid(
            "a garbage page token",
            Call::ListDnsEntries(pb::ListDnsEntriesRequest {
                network: "corp".into(),
                page_token: "=".into(),
                ..Default::default()
            }),
            "page_token",
        ),
        // ---- DnsService.DeleteDnsEntry
        invalid("network empty", delete_entry("", "db"), "network"),
        invalid("network malformed", delete_entry("CORP", "db"), "network"),
        invalid("name empty", delete_entry("corp", ""), "name"),
        invalid("name with a space", delete_entry("corp", "d b"), "name"),
        refused(
            "unknown network",
            delete_entry("nope", "db"),
            Code::NotFound,
        ),
        refused("unknown name", delete_entry("corp", "nope"), Code::NotFound),
        refused(
            "another network's entry",
            delete_entry("corp", "printer"),
            Code::NotFound,
        ),
        refused(
            "a node's automatic name",
            delete_entry("corp", "office"),
            Code::FailedPrecondition,
        )
        .says("automatic name of node"),
        refused(
            "an external client's automatic name",
            delete_entry("corp", "phone"),
            Code::FailedPrecondition,
        )
        .says("automatic name of external client"),
        // ---- DnsService.GetHostsFile
        invalid(
            "network empty",
            Call::GetHostsFile(Default::default()),
            "network",
        ),
        invalid(
            "network malformed",
            Call::GetHostsFile(pb::GetHostsFileRequest {
                network: "-corp".into(),
            }),
            "network",
        ),
        refused(
            "unknown network",
            Call::GetHostsFile(pb::GetHostsFileRequest {
                network: "nope".into(),
            }),
            Code::NotFound,
        ),
        // ---- AgentService.Register
        refused(
            "no enrollment key",
            register("", |_| {}),
            Code::Unauthenticated,
        )
        .by(As::Nobody)
        .says("enrollment_key is required"),
        refused(
            "an enrollment key that is no token",
            register("mpk_nope", |_| {}),
            Code::Unauthenticated,
        )
        .by(As::Nobody),
        refused(
            "a node token as the enrollment key",
            register(&fx.laptop_token, |_| {}),
            Code::Unauthenticated,
        )
        .by(As::Nobody),
        refused(
            "a key for another network",
            register(key, |r| r.network = "lab".into()),
            Code::PermissionDenied,
        )
        .by(As::Nobody)
        .says("not valid for network \"lab\""),
        refused(
            "an unknown network",
            register(key, |r| r.network = "nope".into()),
            Code::PermissionDenied,
        )
        .by(As::Nobody),
        invalid(
            "network empty",
            register(key, |r| r.network.clear()),
            "network",
        )
        .by(As::Nobody),
        invalid("name empty", register(key, |r| r.name.clear()), "name").by(As::Nobody),
        invalid(
            "name with upper case",
            register(key, |r| r.name = "Desktop".into()),
            "name",
        )
        .by(As::Nobody),
        invalid(
            "name of 64 characters",
            register(key, |r| r.name = label64.clone()),
            "name",
        )
        .by(As::Nobody),
        invalid(
            "public key empty",
            register(key, |r| r.public_key.clear()),
            "public_key",
        )
        .by(As::Nobody),
        invalid(
            "public key not base64",
            register(key, |r| r.public_key = NOT_BASE64.into()),
            "public_key",
        )
        .by(As::Nobody),
        invalid(
            "public key of 22 bytes",
            register(key, |r| r.public_key = SHORT_KEY.into()),
            "public_key",
        )
        .by(As::Nobody),
        invalid(
            "public key of 33 bytes",
            register(key, |r| {
                r.public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()
            }),
            "public_key",
        )
        .by(As::Nobody),
        invalid(
            "endpoint without a port",
            register(key, |r| r.endpoint = "desktop.example.net".into()),
            "endpoint",
        )
        .by(As::Nobody),
        invalid(
            "endpoint with a bad IPv6 in brackets",
            register(key, |r| r.endpoint = "[fd00::g]:51821".into()),
            "endpoint",
        )
        .by(As::Nobody),
        invalid(
            "endpoint port not a number",
            register(key, |r| r.endpoint = "desktop.example.net:http".into()),
            "endpoint",
        )
        .by(As::Nobody),
        invalid(
            "endpoint host label starting with '-'",
            register(key, |r| r.endpoint = "-desktop.example.net:51821".into()),
            "endpoint",
        )
        .by(As::Nobody),
        invalid(
            "listen port 0",
            register(key, |r| r.listen_port = Some(0)),
            "listen_port",
        )
        .by(As::Nobody),
        invalid(
            "listen port 65536",
            register(key, |r| r.listen_port = Some(65536)),
            "listen_port",
        )
        .by(As::Nobody),
        invalid(
            "os of 65 characters",
            register(key, |r| r.os = "o".repeat(65)),
            "os",
        )
        .by(As::Nobody),
        invalid(
            "os with an escape",
            register(key, |r| r.os = "linux\u{1b}[1m".into()),
            "os",
        )
        .by(As::Nobody)
        .says("control character"),
        refused(
            "name of a node",
            register(key, |r| r.name = "server".into()),
            Code::AlreadyExists,
        )
        .by(As::Nobody)
        .field("name"),
        refused(
            "name of a custom DNS entry",
            register(key, |r| r.name = "db".into()),
            Code::AlreadyExists,
        )
        .by(As::Nobody)
        .field("name"),
        refused(
            "public key of a node",
            register(key, |r| r.public_key = fx.server.public_key.clone()),
            Code::AlreadyExists,
        )
        .by(As::Nobody)
        .field("public_key"),
        // ---- AgentService.ReportStatus (as laptop)
        invalid(
            "applied revision never sent",
            report(|r| r.applied_revision = laptop_revision + 1),
            "applied_revision",
        )
        .by(As::Laptop)
        .says(format!("config is at revision {laptop_revision}")),
        invalid(
            "applied revision u64::MAX",
            report(|r| r.applied_revision = u64::MAX),
            "applied_revision",
        )
        .by(As::Laptop),
        invalid(
            "failed revision never sent",
            report(|r| {
                r.apply_error = "boom".into();
                r.failed_revision = laptop_revision + 1;
            }),
            "failed_revision",
        )
        .by(As::Laptop),
        invalid(
            "endpoint malformed",
            report(|r| r.endpoint = "nope".into()),
            "endpoint",
        )
        .by(As::Laptop),
        invalid(
            "wireguard interface with a space",
            report(|r| r.wireguard_interface = "wg 0".into()),
            "wireguard_interface",
        )
        .by(As::Laptop),
        invalid(
            "wireguard interface of 16 bytes",
            report(|r| r.wireguard_interface = "wireguard-iface0".into()),
            "wireguard_interface",
        )
        .by(As::Laptop),
        invalid(
            "wireguard interface with a NUL",
            report(|r| r.wireguard_interface = "wg\0".into()),
            "wireguard_interface",
        )
        .by(As::Laptop),
        invalid(
            "wireguard interface with a double quote",
            report(|r| r.wireguard_interface = "wg\"0".into()),
            "wireguard_interface",
        )
        .by(As::Laptop)
        .says("iptables-restore"),
        invalid(
            "wireguard interface of 100,000 characters",
            report(|r| r.wireguard_interface = huge()),
            "wireguard_interface",
        )
        .by(As::Laptop),
        invalid(
            "a hundred routes of 10,000 characters",
            report(|r| r.host = host(vec![], vec![route(&"1".repeat(10_000), "eth0", ""); 100])),
            "host.routes[0].destination",
        )
        .by(As::Laptop)
        .many(),
        invalid(
            "twenty interfaces with twenty addresses of 1,000 'é's",
            report(|r| {
                r.host = host(
                    (0..20)
                        .map(|i| pb::HostInterface {
                            name: format!("eth{i}"),
                            addresses: vec!["é".repeat(1000); 20],
                            up: true,
                        })
                        .collect(),
                    vec![],
                )
            }),
            "host.interfaces[0].addresses[0]",
        )
        .by(As::Laptop)
        .many(),
        invalid(
            "host interface without a name",
            report(|r| r.host = host(vec![iface("", &[])], vec![])),
            "host.interfaces[0].name",
        )
        .by(As::Laptop),
        invalid(
            "host interface listed twice",
            report(|r| r.host = host(vec![iface("eth0", &[]), iface("eth0", &[])], vec![])),
            "host.interfaces[1].name",
        )
        .by(As::Laptop),
        invalid(
            "host address without a prefix length",
            report(|r| r.host = host(vec![iface("eth0", &["192.0.2.7"])], vec![])),
            "host.interfaces[0].addresses[0]",
        )
        .by(As::Laptop),
        invalid(
            "host route destination not a range",
            report(|r| r.host = host(vec![], vec![route("default", "eth0", "")])),
            "host.routes[0].destination",
        )
        .by(As::Laptop),
        invalid(
            "host route without an interface",
            report(|r| r.host = host(vec![], vec![route("0.0.0.0/0", "", "")])),
            "host.routes[0].interface",
        )
        .by(As::Laptop),
        invalid(
            "host route gateway not an address",
            report(|r| r.host = host(vec![], vec![route("0.0.0.0/0", "eth0", "router")])),
            "host.routes[0].gateway",
        )
        .by(As::Laptop),
        // ---- EventService.WatchEvents
        refused(
            "after a revision never issued",
            watch_events(latest + 1, &[]),
            Code::OutOfRange,
        )
        .says(format!("newest revision is {latest}")),
        refused(
            "after u64::MAX",
            watch_events(u64::MAX, &[]),
            Code::OutOfRange,
        )
        .says("never issued"),
        invalid(
            "a malformed network filter",
            watch_events(0, &["corp", "Lab!"]),
            "networks[1]",
        )
        .known("K3"),
        // ---- PolicyService.GetPolicy
        invalid(
            "network empty",
            Call::GetPolicy(Default::default()),
            "network",
        ),
        refused(
            "unknown network",
            Call::GetPolicy(pb::GetPolicyRequest {
                network: "nope".into(),
            }),
            Code::NotFound,
        ),
        refused(
            "network of 100,000 characters",
            Call::GetPolicy(pb::GetPolicyRequest { network: huge() }),
            Code::NotFound,
        ),
        // ---- PolicyService.UpdatePolicy
        invalid(
            "policy missing",
            Call::UpdatePolicy(Default::default()),
            "policy",
        ),
        invalid(
            "network empty",
            update_policy(&[], |r| r.policy.as_mut().unwrap().network.clear()),
            "policy.network",
        ),
        refused(
            "unknown network",
            update_policy(&[], |r| r.policy.as_mut().unwrap().network = "nope".into()),
            Code::NotFound,
        ),
        invalid(
            "an unknown mask path",
            update_policy(&["revision"], |_| {}),
            "update_mask",
        )
        .says("default_action, rules"),
        invalid(
            "a rule without sources",
            update_policy(&[], |r| rule0(r).sources.clear()),
            "policy.rules[0].sources",
        )
        .says("at least one"),
        invalid(
            "a rule without destinations",
            update_policy(&[], |r| rule0(r).destinations.clear()),
            "policy.rules[0].destinations",
        ),
        invalid(
            "a destination that is no selector",
            update_policy(&[], |r| rule0(r).destinations.push("office".into())),
            "policy.rules[0].destinations[1]",
        )
        .says("tag:NAME"),
        invalid(
            "a range among the sources",
            update_policy(&[], |r| rule0(r).sources = strings(&["10.60.0.0/24"])),
            "policy.rules[0].sources[0]",
        )
        .says("destinations only"),
        invalid(
            "a tag that is no label",
            update_policy(&[], |r| rule0(r).sources = strings(&["tag:Ops Team"])),
            "policy.rules[0].sources[0]",
        ),
        invalid(
            "a range with host bits",
            update_policy(&[], |r| rule0(r).destinations = strings(&["10.10.10.1/24"])),
            "policy.rules[0].destinations[0]",
        ),
        invalid(
            "no action",
            update_policy(&[], |r| rule0(r).action = 0),
            "policy.rules[0].action",
        ),
        invalid(
            "an unknown action number",
            update_policy(&[], |r| rule0(r).action = 7),
            "policy.rules[0].action",
        ),
        invalid(
            "an unspecified protocol",
            update_policy(&[], |r| rule0(r).protocols = vec![0]),
            "policy.rules[0].protocols[0]",
        ),
        invalid(
            "port 0",
            update_policy(&[], |r| rule0(r).ports = strings(&["0"])),
            "policy.rules[0].ports[0]",
        ),
        invalid(
            "a port range backwards",
            update_policy(&[], |r| rule0(r).ports = strings(&["9000-8000"])),
            "policy.rules[0].ports[0]",
        ),
        invalid(
            "ports with ICMP",
            update_policy(&[], |r| {
                rule0(r).protocols = vec![pb::Protocol::Icmp as i32]
            }),
            "policy.rules[0].ports",
        ),
        invalid(
            "ports with every protocol",
            update_policy(&[], |r| rule0(r).protocols.clear()),
            "policy.rules[0].ports",
        ),
        invalid(
            "two rules of one name",
            update_policy(&[], |r| {
                let again = rule(|_| {});
                r.policy.as_mut().unwrap().rules.push(again);
            }),
            "policy.rules[1].name",
        ),
        invalid(
            "a rule name that is no label",
            update_policy(&[], |r| rule0(r).name = "Web Rule".into()),
            "policy.rules[0].name",
        ),
        invalid(
            "257 rules",
            update_policy(&[], |r| {
                r.policy.as_mut().unwrap().rules =
                    (0..257).map(|_| rule(|x| x.name.clear())).collect()
            }),
            "policy.rules",
        )
        .says("at most 256"),
        invalid(
            "65 sources",
            update_policy(&[], |r| {
                rule0(r).sources = (0..65).map(|i| format!("tag:t{i}")).collect()
            }),
            "policy.rules[0].sources",
        ),
        invalid(
            "bad rules are refused also with validate_only",
            update_policy(&[], |r| {
                r.validate_only = true;
                rule0(r).destinations = strings(&["nowhere"]);
            }),
            "policy.rules[0].destinations[0]",
        ),
        invalid(
            "bad rules in the mask only count",
            update_policy(&["rules"], |r| rule0(r).sources.clear()),
            "policy.rules[0].sources",
        ),
        refused(
            "an expected revision it is not at",
            update_policy(&[], |r| r.expected_revision = latest + 100),
            Code::Aborted,
        )
        .says("expected_revision"),
        refused(
            "validate_only answers and writes nothing",
            update_policy(&[], |r| r.validate_only = true),
            Code::Ok,
        ),
        // ---- PolicyService.TestAccess
        invalid(
            "network empty",
            test_access(laptop, |r| r.network.clear()),
            "network",
        ),
        invalid("from empty", test_access("", |_| {}), "from"),
        invalid("to empty", test_access(laptop, |r| r.to.clear()), "to"),
        invalid(
            "no protocol",
            test_access(laptop, |r| r.protocol = 0),
            "protocol",
        ),
        invalid(
            "an unknown protocol number",
            test_access(laptop, |r| r.protocol = 99),
            "protocol",
        ),
        invalid(
            "tcp without a port",
            test_access(laptop, |r| r.port = 0),
            "port",
        ),
        invalid(
            "udp to port 65536",
            test_access(laptop, |r| {
                r.protocol = pb::Protocol::Udp as i32;
                r.port = 65536;
            }),
            "port",
        ),
        refused(
            "unknown network",
            test_access(laptop, |r| r.network = "nope".into()),
            Code::NotFound,
        ),
        refused(
            "a sender that is no node or client",
            test_access("nobody", |_| {}),
            Code::NotFound,
        ),
        refused(
            "a receiver that is no node, client or address",
            test_access(laptop, |r| r.to = "nobody".into()),
            Code::NotFound,
        ),
        refused(
            "a sender of another network",
            test_access(labgw, |_| {}),
            Code::NotFound,
        ),
    ];
    rows.extend(credential_rows(fx));
    rows
}

/// Checks one answer against its row; the reason when it does not match.
fn mismatch(row: &Row, r: &Result<(), Status>) -> Option<String> {
    let st = match r {
        Ok(()) if row.code == Code::Ok => return None,
        Ok(()) => return Some(format!("expected {:?}, got OK", row.code)),
        Err(st) => st,
    };
    if st.code() != row.code {
        return Some(format!(
            "expected {:?}, got {:?}: {}",
            row.code,
            st.code(),
            st.message()
        ));
    }
    let violations = field_violations(st);
    if let Some(field) = row.field {
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
        if row.many {
            if fields.first() != Some(&field) || fields.len() > MAX_VIOLATIONS {
                return Some(format!(
                    "expected {field:?} first of at most {MAX_VIOLATIONS} violations, got \
                     {} starting {:?}",
                    fields.len(),
                    fields.first()
                ));
            }
        } else if fields != [field] {
            return Some(format!(
                "expected exactly the violation {field:?}, got {violations:?} ({})",
                st.message()
            ));
        }
    }
    if let Some(s) = &row.says {
        let found = st.message().contains(s.as_str())
            || violations.iter().any(|(_, d)| d.contains(s.as_str()));
        if !found {
            return Some(format!(
                "expected the message to say {s:?}, got {:?} {violations:?}",
                st.message()
            ));
        }
    }
    // What a refusal says goes back in headers (the message
    // percent-encoded, the details in base64), and clients refuse headers
    // past 16 KiB (a 6,000-character echo already makes the client see
    // INTERNAL): an echo of a huge value must not get near that.
    let message: usize = st
        .message()
        .bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                1
            } else {
                3
            }
        })
        .sum();
    let size = message + st.details().len().div_ceil(3) * 4;
    if size > 12 * 1024 {
        return Some(format!("the refusal takes {size} bytes of headers"));
    }
    None
}

/// Sends the rows `select` picks, each followed by a look at the whole
/// state; panics listing every row that did not get its answer or changed
/// something.
async fn sweep(select: fn(&Row) -> bool) {
    let fx = Fixture::new().await;
    let mut state = fx.state().await;
    let rows = table(&fx, &state);

    // Every RPC of every service in the protos has rows.
    let set = prost_types::FileDescriptorSet::decode(meshplane_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut missing = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "meshplane.v1") {
        for svc in &file.service {
            for m in &svc.method {
                let rpc = format!("{}/{}", svc.name(), m.name());
                if !rows
                    .iter()
                    .any(|r| r.call.rpc() == rpc && r.known.is_none())
                {
                    missing.push(rpc);
                }
            }
        }
    }
    assert!(missing.is_empty(), "RPCs without rows: {missing:?}");

    let mut failures = Vec::new();
    let rows: Vec<Row> = rows.into_iter().filter(select).collect();
    let count = rows.len();
    for row in rows {
        let known = row
            .known
            .map(|k| format!(" [known bug {k}]"))
            .unwrap_or_default();
        let label = format!("{} ({:?}): {}{known}", row.call.rpc(), row.by, row.what);
        let r = row.call.clone().send(fx.as_(row.by)).await;
        if let Some(why) = mismatch(&row, &r) {
            failures.push(format!("{label}: {why}"));
        }
        let after = fx.state().await;
        if after != state {
            failures.push(format!("{label}: the state changed:{}", state.diff(&after)));
            // Later rows compare with what is there now.
            state = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_rpc_refuses_bad_input_precisely_and_writes_nothing() {
    sweep(|r| r.known.is_none()).await;
}

/// The rows of the known bugs listed at the top of this file: they assert
/// the correct behaviour, so this test fails until the bugs are fixed.
#[tokio::test]
async fn known_bugs_get_the_correct_answer() {
    sweep(|r| r.known.is_some()).await;
}
