//! A typed handle per admin service. Handles are cheap to clone; each call
//! takes the client's deadline and retry policy unless the handle was given
//! its own with `with_timeout` / `with_retry`.

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use prost_types::FieldMask;

use crate::{
    client::{AuthChannel, CallOptions},
    error::{Error, Result},
    proto::{
        self as pb, dns_service_client::DnsServiceClient,
        enrollment_key_service_client::EnrollmentKeyServiceClient,
        event_service_client::EventServiceClient,
        ext_client_service_client::ExtClientServiceClient,
        gateway_service_client::GatewayServiceClient, network_service_client::NetworkServiceClient,
        node_service_client::NodeServiceClient, policy_service_client::PolicyServiceClient,
    },
    retry::RetryPolicy,
};

fn mask(fields: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: fields.iter().map(|f| f.to_string()).collect(),
    })
}

/// Fetches every page of a `List*` RPC: `page(token)` returns the items of
/// one page and the next page's token.
async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (mut got, next) = page(token).await?;
        items.append(&mut got);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

/// The largest page the server hands out.
const PAGE: i32 = 1000;

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident, $client:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            c: $client<AuthChannel>,
            opts: CallOptions,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("timeout", &self.opts.timeout)
                    .finish_non_exhaustive()
            }
        }

        impl $name {
            pub(crate) fn new(channel: AuthChannel, opts: CallOptions) -> Self {
                Self {
                    c: $client::new(channel),
                    opts,
                }
            }

            /// The same handle with another per-call deadline (retries
            /// included).
            pub fn with_timeout(mut self, timeout: Duration) -> Self {
                self.opts.timeout = Some(timeout);
                self
            }

            /// The same handle with another retry policy.
            pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
                self.opts.retry = policy;
                self
            }
        }
    };
}

handle!(
    /// NetworkService: networks and their defaults.
    ///
    /// ```no_run
    /// # async fn demo(client: meshplane_sdk::Client) -> meshplane_sdk::Result<()> {
    /// use meshplane_sdk::proto::Network;
    ///
    /// let net = client
    ///     .networks()
    ///     .create(Network {
    ///         name: "corp".into(),
    ///         address_range: "10.101.0.0/16".into(),
    ///         address_range6: "fd00:101::/64".into(),
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// assert_eq!(net.default_listen_port, 51821);
    /// # Ok(()) }
    /// ```
    Networks,
    NetworkServiceClient
);

impl Networks {
    /// CreateNetwork. Not retried.
    pub async fn create(&self, network: pb::Network) -> Result<pb::Network> {
        let msg = pb::CreateNetworkRequest {
            network: Some(network),
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.create_network(r).await
            })
            .await
    }

    /// GetNetwork by name.
    pub async fn get(&self, name: &str) -> Result<pb::Network> {
        let msg = pb::GetNetworkRequest { name: name.into() };
        self.opts
            .unary(&self.c, true, msg, |mut c, r| async move {
                c.get_network(r).await
            })
            .await
    }

    /// One page of ListNetworks.
    pub async fn list(&self, req: pb::ListNetworksRequest) -> Result<pb::ListNetworksResponse> {
        self.opts
            .unary(&self.c, true, req, |mut c, r| async move {
                c.list_networks(r).await
            })
            .await
    }

    /// Every network, following the pages.
    pub async fn list_all(&self) -> Result<Vec<pb::Network>> {
        all_pages(|page_token| async move {
            let r = self
                .list(pb::ListNetworksRequest {
                    page_size: PAGE,
                    page_token,
                })
                .await?;
            Ok((r.networks, r.next_page_token))
        })
        .await
    }

    /// UpdateNetwork: changes `fields` (proto field names, e.g.
    /// `default_mtu`; empty changes every updatable field) of the network
    /// named `network.name`. Not retried.
    pub async fn update(&self, network: pb::Network, fields: &[&str]) -> Result<pb::Network> {
        let msg = pb::UpdateNetworkRequest {
            network: Some(network),
            update_mask: mask(fields),
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.update_network(r).await
            })
            .await
    }

    /// DeleteNetwork; `force` also deletes its nodes, clients and names. Not
    /// retried.
    pub async fn delete(&self, name: &str, force: bool) -> Result<()> {
        let msg = pb::DeleteNetworkRequest {
            name: name.into(),
            force,
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.delete_network(r).await
            })
            .await
    }
}

handle!(
    /// EnrollmentKeyService: keys agents register with.
    EnrollmentKeys,
    EnrollmentKeyServiceClient
);

impl EnrollmentKeys {
    /// CreateEnrollmentKey; the returned key is the only place its token
    /// appears. Not retried.
    pub async fn create(&self, key: pb::EnrollmentKey) -> Result<pb::EnrollmentKey> {
        let msg = pb::CreateEnrollmentKeyRequest {
            enrollment_key: Some(key),
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.create_enrollment_key(r).await
            })
            .await
    }

    /// One page of ListEnrollmentKeys.
    pub async fn list(
        &self,
        req: pb::ListEnrollmentKeysRequest,
    ) -> Result<pb::ListEnrollmentKeysResponse> {
        self.opts
            .unary(&self.c, true, req, |mut c, r| async move {
                c.list_enrollment_keys(r).await
            })
            .await
    }

    /// Every key (of `network`, when given), following the pages.
    pub async fn list_all(&self, network: Option<&str>) -> Result<Vec<pb::EnrollmentKey>> {
        let network = network.unwrap_or_default();
        all_pages(|page_token| async move {
            let r = self
                .list(pb::ListEnrollmentKeysRequest {
                    network: network.into(),
                    page_size: PAGE,
                    page_token,
                })
                .await?;
            Ok((r.enrollment_keys, r.next_page_token))
        })
        .await
    }

    /// DeleteEnrollmentKey (revokes it). Not retried.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let msg = pb::DeleteEnrollmentKeyRequest { id: id.into() };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.delete_enrollment_key(r).await
            })
            .await
    }
}

handle!(
    /// NodeService: registered nodes and the config each one receives.
    Nodes,
    NodeServiceClient
);

impl Nodes {
    /// GetNode.
    pub async fn get(&self, id: &str) -> Result<pb::Node> {
        let msg = pb::GetNodeRequest { id: id.into() };
        self.opts
            .unary(
                &self.c,
                true,
                msg,
                |mut c, r| async move { c.get_node(r).await },
            )
            .await
    }

    /// One page of ListNodes.
    pub async fn list(&self, req: pb::ListNodesRequest) -> Result<pb::ListNodesResponse> {
        self.opts
            .unary(&self.c, true, req, |mut c, r| async move {
                c.list_nodes(r).await
            })
            .await
    }

    /// Every node (of `network`, when given), following the pages.
    pub async fn list_all(&self, network: Option<&str>) -> Result<Vec<pb::Node>> {
        let network = network.unwrap_or_default();
        all_pages(|page_token| async move {
            let r = self
                .list(pb::ListNodesRequest {
                    network: network.into(),
                    page_size: PAGE,
                    page_token,
                })
                .await?;
            Ok((r.nodes, r.next_page_token))
        })
        .await
    }

    /// UpdateNode: changes `fields` (`name`, `endpoint`, `listen_port`,
    /// `persistent_keepalive`, `public_key`) of the node `node.id`. Not
    /// retried.
    pub async fn update(&self, node: pb::Node, fields: &[&str]) -> Result<pb::Node> {
        let msg = pb::UpdateNodeRequest {
            node: Some(node),
            update_mask: mask(fields),
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.update_node(r).await
            })
            .await
    }

    /// DeleteNode. Not retried.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let msg = pb::DeleteNodeRequest { id: id.into() };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.delete_node(r).await
            })
            .await
    }

    /// GetNodeConfig: exactly the config the node's agent receives.
    pub async fn config(&self, id: &str) -> Result<pb::NodeConfig> {
        let msg = pb::GetNodeConfigRequest { id: id.into() };
        self.opts
            .unary(&self.c, true, msg, |mut c, r| async move {
                c.get_node_config(r).await
            })
            .await
    }
}

handle!(
    /// GatewayService: egress and ingress gateways, and ExplainRoute.
    ///
    /// ```no_run
    /// # async fn demo(client: meshplane_sdk::Client, office_id: &str) -> meshplane_sdk::Result<()> {
    /// use meshplane_sdk::proto::CreateEgressGatewayRequest;
    ///
    /// let node = client
    ///     .gateways()
    ///     .create_egress(CreateEgressGatewayRequest {
    ///         node_id: office_id.into(),
    ///         ranges: vec!["10.10.10.0/24".into()],
    ///         interface: "eth2".into(),
    ///         nat_enabled: None, // NAT on
    ///         ..Default::default() // no metric: the ranges are its alone
    ///     })
    ///     .await?;
    /// assert!(node.egress.is_some());
    /// let route = client.gateways().explain_route("corp", office_id, "10.10.10.2").await?;
    /// println!("routable: {}", route.routable);
    /// # Ok(()) }
    /// ```
    Gateways,
    GatewayServiceClient
);

impl Gateways {
    /// CreateEgressGateway (replaces any egress the node had). Not retried.
    pub async fn create_egress(&self, req: pb::CreateEgressGatewayRequest) -> Result<pb::Node> {
        self.opts
            .unary(&self.c, false, req, |mut c, r| async move {
                c.create_egress_gateway(r).await
            })
            .await
    }

    /// DeleteEgressGateway. Not retried.
    pub async fn delete_egress(&self, node_id: &str) -> Result<()> {
        let msg = pb::DeleteEgressGatewayRequest {
            node_id: node_id.into(),
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.delete_egress_gateway(r).await
            })
            .await
    }

    /// CreateIngressGateway. Not retried.
    pub async fn create_ingress(&self, req: pb::CreateIngressGatewayRequest) -> Result<pb::Node> {
        self.opts
            .unary(&self.c, false, req, |mut c, r| async move {
                c.create_ingress_gateway(r).await
            })
            .await
    }

    /// DeleteIngressGateway; `force` also deletes its external clients. Not
    /// retried.
    pub async fn delete_ingress(&self, node_id: &str, force: bool) -> Result<()> {
        let msg = pb::DeleteIngressGatewayRequest {
            node_id: node_id.into(),
            force,
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.delete_ingress_gateway(r).await
            })
            .await
    }

    /// ExplainRoute: the path a packet from node or external client `from`
    /// (an id) to `destination` (an IP) takes in `network`.
    pub async fn explain_route(
        &self,
        network: &str,
        from: &str,
        destination: &str,
    ) -> Result<pb::ExplainRouteResponse> {
        let msg = pb::ExplainRouteRequest {
            network: network.into(),
            from_node_id: from.into(),
            destination: destination.into(),
        };
        self.opts
            .unary(&self.c, true, msg, |mut c, r| async move {
                c.explain_route(r).await
            })
            .await
    }
}

handle!(
    /// ExtClientService: plain WireGuard devices behind an ingress gateway.
    ExtClients,
    ExtClientServiceClient
);

impl ExtClients {
    /// CreateExtClient (the server generates the key pair unless
    /// `public_key` is set). Not retried.
    pub async fn create(&self, req: pb::CreateExtClientRequest) -> Result<pb::ExtClient> {
        self.opts
            .unary(&self.c, false, req, |mut c, r| async move {
                c.create_ext_client(r).await
            })
            .await
    }

    /// GetExtClient.
    pub async fn get(&self, id: &str) -> Result<pb::ExtClient> {
        let msg = pb::GetExtClientRequest { id: id.into() };
        self.opts
            .unary(&self.c, true, msg, |mut c, r| async move {
                c.get_ext_client(r).await
            })
            .await
    }

    /// One page of ListExtClients.
    pub async fn list(&self, req: pb::ListExtClientsRequest) -> Result<pb::ListExtClientsResponse> {
        self.opts
            .unary(&self.c, true, req, |mut c, r| async move {
                c.list_ext_clients(r).await
            })
            .await
    }

    /// Every client (of `network` and/or `ingress_node_id`, when given),
    /// following the pages.
    pub async fn list_all(
        &self,
        network: Option<&str>,
        ingress_node_id: Option<&str>,
    ) -> Result<Vec<pb::ExtClient>> {
        let network = network.unwrap_or_default();
        let ingress = ingress_node_id.unwrap_or_default();
        all_pages(|page_token| async move {
            let r = self
                .list(pb::ListExtClientsRequest {
                    network: network.into(),
                    ingress_node_id: ingress.into(),
                    page_size: PAGE,
                    page_token,
                })
                .await?;
            Ok((r.ext_clients, r.next_page_token))
        })
        .await
    }

    /// UpdateExtClient: changes `fields` (`name`, `dns`, `enabled`) of the
    /// client `client.id`. Not retried.
    pub async fn update(&self, client: pb::ExtClient, fields: &[&str]) -> Result<pb::ExtClient> {
        let msg = pb::UpdateExtClientRequest {
            ext_client: Some(client),
            update_mask: mask(fields),
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.update_ext_client(r).await
            })
            .await
    }

    /// DeleteExtClient. Not retried.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let msg = pb::DeleteExtClientRequest { id: id.into() };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.delete_ext_client(r).await
            })
            .await
    }

    /// GetExtClientConfig: the client's wg-quick file (with its private key
    /// when the server generated it) and the revision it was rendered at.
    pub async fn config(&self, id: &str) -> Result<pb::GetExtClientConfigResponse> {
        let msg = pb::GetExtClientConfigRequest { id: id.into() };
        self.opts
            .unary(&self.c, true, msg, |mut c, r| async move {
                c.get_ext_client_config(r).await
            })
            .await
    }
}

handle!(
    /// DnsService: names in a network's zone.
    Dns,
    DnsServiceClient
);

impl Dns {
    /// CreateDnsEntry. Not retried.
    pub async fn create(&self, entry: pb::DnsEntry) -> Result<pb::DnsEntry> {
        let msg = pb::CreateDnsEntryRequest { entry: Some(entry) };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.create_dns_entry(r).await
            })
            .await
    }

    /// One page of ListDnsEntries.
    pub async fn list(&self, req: pb::ListDnsEntriesRequest) -> Result<pb::ListDnsEntriesResponse> {
        self.opts
            .unary(&self.c, true, req, |mut c, r| async move {
                c.list_dns_entries(r).await
            })
            .await
    }

    /// Every entry of `network`, following the pages.
    pub async fn list_all(&self, network: &str) -> Result<Vec<pb::DnsEntry>> {
        all_pages(|page_token| async move {
            let r = self
                .list(pb::ListDnsEntriesRequest {
                    network: network.into(),
                    page_size: PAGE,
                    page_token,
                })
                .await?;
            Ok((r.entries, r.next_page_token))
        })
        .await
    }

    /// DeleteDnsEntry. Not retried.
    pub async fn delete(&self, network: &str, name: &str) -> Result<()> {
        let msg = pb::DeleteDnsEntryRequest {
            network: network.into(),
            name: name.into(),
        };
        self.opts
            .unary(&self.c, false, msg, |mut c, r| async move {
                c.delete_dns_entry(r).await
            })
            .await
    }

    /// GetHostsFile: the network's names in `/etc/hosts` format.
    pub async fn hosts_file(&self, network: &str) -> Result<String> {
        let msg = pb::GetHostsFileRequest {
            network: network.into(),
        };
        self.opts
            .unary(&self.c, true, msg, |mut c, r| async move {
                c.get_hosts_file(r).await
            })
            .await
            .map(|r| r.content)
    }
}

handle!(
    /// EventService: resource changes as a stream.
    ///
    /// ```no_run
    /// # async fn demo(client: meshplane_sdk::Client) -> meshplane_sdk::Result<()> {
    /// use futures::StreamExt;
    /// use meshplane_sdk::proto::WatchEventsRequest;
    ///
    /// let mut events = client.events().watch(WatchEventsRequest::default()).await?;
    /// while let Some(e) = events.next().await {
    ///     let e = e?;
    ///     println!("{} {} {}", e.revision, e.kind, e.id);
    /// }
    /// # Ok(()) }
    /// ```
    Events,
    EventServiceClient
);

/// A stream of events; ends when the server ends it, and yields the error
/// that broke it, if any.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event>> + Send>>;

impl Events {
    /// WatchEvents: opening the stream is retried on UNAVAILABLE; the
    /// stream itself has no deadline.
    pub async fn watch(&self, req: pb::WatchEventsRequest) -> Result<EventStream> {
        let s = self
            .opts
            .open_stream(
                &self.c,
                req,
                |mut c, r| async move { c.watch_events(r).await },
            )
            .await?;
        Ok(Box::pin(s.map(|r| r.map_err(Error::from))))
    }
}

handle!(
    /// PolicyService: a network's access policy, its preview and TestAccess.
    Policies,
    PolicyServiceClient
);

impl Policies {
    /// GetPolicy (ALLOW and no rules when the network has none).
    pub async fn get(&self, network: &str) -> Result<pb::Policy> {
        let msg = pb::GetPolicyRequest {
            network: network.into(),
        };
        self.opts
            .unary(&self.c, true, msg, |mut c, r| async move {
                c.get_policy(r).await
            })
            .await
    }

    /// UpdatePolicy (with `validate_only`, a preview that writes nothing).
    /// Not retried.
    pub async fn update(&self, req: pb::UpdatePolicyRequest) -> Result<pb::UpdatePolicyResponse> {
        self.opts
            .unary(&self.c, false, req, |mut c, r| async move {
                c.update_policy(r).await
            })
            .await
    }

    /// TestAccess.
    pub async fn test_access(&self, req: pb::TestAccessRequest) -> Result<pb::TestAccessResponse> {
        self.opts
            .unary(&self.c, true, req, |mut c, r| async move {
                c.test_access(r).await
            })
            .await
    }
}
