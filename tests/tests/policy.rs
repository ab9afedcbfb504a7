//! PolicyService and tags through the API (issue #14): GetPolicy's default,
//! UpdatePolicy's preview (exactly the flows a change cuts, nothing
//! written), its field violations and its optimistic concurrency,
//! TestAccess's verdicts, and what a restricting policy does to the configs
//! nodes receive (peers left out, the INPUT chain) and to ExplainRoute.
//!
//! Runs on SQLite, and on PostgreSQL with `MESHPLANE_TEST_BACKEND=postgres`
//! (tests/run does both).

use meshplane_proto::v1 as pb;
use meshplane_tests::{Authed, TestServer, expect_code, expect_field};
use prost_types::FieldMask;
use tonic::Code;

/// Network `corp` (IPv4 and IPv6): `gw` (endpoint; egress gateway for
/// 10.10.10.0/24 out of eth2; ingress gateway with the external client
/// `phone`, tagged ops), `web` (endpoint, tagged web), `laptop` (behind
/// NAT, tagged ops and dev by UpdateNode).
struct World {
    s: TestServer,
    gw: pb::Node,
    web: pb::Node,
    laptop: pb::Node,
    phone: pb::ExtClient,
}

impl World {
    async fn new() -> Self {
        let s = TestServer::start().await;
        s.create_network("corp", "10.70.0.0/24", "fd00:70::/64")
            .await;
        let key = s.create_key(&["corp"], None).await.token;
        let gw = s.node(&key, "corp", "gw", Some("203.0.113.1:51821")).await;
        let web = s.node(&key, "corp", "web", Some("203.0.113.2:51821")).await;
        let laptop = s.node(&key, "corp", "laptop", None).await;
        s.egress(&gw.id, &["10.10.10.0/24"], "eth2", None)
            .await
            .unwrap();
        let gw = s.ingress(&gw.id, &[]).await.unwrap();
        let web = set_tags(&s, &web.id, &["web"]).await;
        // Sorted, without duplicates.
        let laptop = set_tags(&s, &laptop.id, &["ops", "dev", "ops"]).await;
        assert_eq!(laptop.tags, ["dev", "ops"]);
        let phone = s
            .ext_clients()
            .await
            .create_ext_client(pb::CreateExtClientRequest {
                network: "corp".into(),
                ingress_node_id: gw.id.clone(),
                name: "phone".into(),
                tags: vec!["ops".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(phone.tags, ["ops"]);
        World {
            s,
            gw,
            web,
            laptop,
            phone,
        }
    }

    async fn policies(&self) -> pb::policy_service_client::PolicyServiceClient<Authed> {
        pb::policy_service_client::PolicyServiceClient::new(self.s.admin().await)
    }

    async fn get(&self) -> pb::Policy {
        self.policies()
            .await
            .get_policy(pb::GetPolicyRequest {
                network: "corp".into(),
            })
            .await
            .expect("GetPolicy")
            .into_inner()
    }

    async fn update(
        &self,
        policy: pb::Policy,
        validate_only: bool,
        expected_revision: u64,
    ) -> Result<pb::UpdatePolicyResponse, tonic::Status> {
        self.policies()
            .await
            .update_policy(pb::UpdatePolicyRequest {
                policy: Some(policy),
                update_mask: None,
                validate_only,
                expected_revision,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn test(
        &self,
        from: &str,
        to: &str,
        protocol: pb::Protocol,
        port: u32,
    ) -> pb::TestAccessResponse {
        self.policies()
            .await
            .test_access(pb::TestAccessRequest {
                network: "corp".into(),
                from: from.into(),
                to: to.into(),
                protocol: protocol as i32,
                port,
            })
            .await
            .expect("TestAccess")
            .into_inner()
    }

    async fn latest(&self) -> u64 {
        self.s.store.log_bounds().await.unwrap().latest
    }
}

async fn set_tags(s: &TestServer, id: &str, tags: &[&str]) -> pb::Node {
    s.nodes()
        .await
        .update_node(pb::UpdateNodeRequest {
            node: Some(pb::Node {
                id: id.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["tags".into()],
            }),
        })
        .await
        .expect("UpdateNode tags")
        .into_inner()
}

/// Default DENY, one rule: tag ops may reach 10.10.10.0/24 on tcp/8080.
fn ops_to_lan() -> pb::Policy {
    pb::Policy {
        network: "corp".into(),
        default_action: pb::PolicyAction::Deny as i32,
        rules: vec![pb::PolicyRule {
            name: "ops-to-lan".into(),
            sources: vec!["tag:ops".into()],
            destinations: vec!["10.10.10.0/24".into()],
            protocols: vec![pb::Protocol::Tcp as i32],
            ports: vec!["8080".into()],
            action: pb::PolicyAction::Allow as i32,
        }],
        ..Default::default()
    }
}

/// A flow change as (source, destination, allowed, denied).
type Flow = (String, String, Vec<String>, Vec<String>);

fn flows(r: &pb::UpdatePolicyResponse) -> Vec<Flow> {
    r.changes
        .iter()
        .map(|c| {
            assert!(
                c.destination_address.is_empty(),
                "both addresses fare alike: {c:?}"
            );
            (
                c.source.clone(),
                c.destination.clone(),
                c.allowed.clone(),
                c.denied.clone(),
            )
        })
        .collect()
}

/// What going from allow-all to [`ops_to_lan`] cuts in [`World`]: every
/// flow between parties entirely; into the LAN, everything but tcp/8080
/// for the ops-tagged, everything for web (the gateway itself sends
/// there directly, no flow).
fn cut_by_ops_to_lan() -> Vec<Flow> {
    let all = || vec!["all".to_owned()];
    let but_8080 = || {
        ["tcp/0-8079,8081-65535", "udp", "icmp", "other"]
            .map(String::from)
            .to_vec()
    };
    let parties = ["client:phone", "node:gw", "node:laptop", "node:web"];
    let mut out = Vec::new();
    for src in parties {
        if src != "node:gw" {
            let denied = if src == "node:web" { all() } else { but_8080() };
            out.push((src.to_owned(), "10.10.10.0/24".to_owned(), vec![], denied));
        }
        for dst in parties.iter().filter(|d| **d != src) {
            out.push((src.to_owned(), dst.to_string(), vec![], all()));
        }
    }
    out
}

fn input_chain(c: &pb::NodeConfig) -> bool {
    c.firewall.as_ref().is_some_and(|f| {
        f.rules.iter().any(|r| r.chain == "MESHPLANE-IN")
            && f.iptables_restore.contains(":MESHPLANE-IN")
    })
}

#[tokio::test]
async fn get_policy_defaults_to_allow_with_no_rules() {
    let w = World::new().await;
    let p = w.get().await;
    assert_eq!(p.network, "corp");
    assert_eq!(p.default_action, pb::PolicyAction::Allow as i32);
    assert!(p.rules.is_empty());
    assert_eq!(p.revision, 0);
    assert_eq!(p.update_time, None);
    expect_code(
        w.policies()
            .await
            .get_policy(pb::GetPolicyRequest {
                network: "nope".into(),
            })
            .await,
        Code::NotFound,
    );
    // Without a policy, TestAccess allows by the default.
    let v = w.test("laptop", "web", pb::Protocol::Tcp, 22).await;
    assert_eq!(v.action, pb::PolicyAction::Allow as i32);
    assert_eq!(v.rule_index, None);
    assert_eq!(v.address, w.web.address);
}

#[tokio::test]
async fn validate_only_lists_exactly_the_flows_cut_and_changes_nothing() {
    let w = World::new().await;
    let before_rev = w.latest().await;
    let before_cfg = w.s.node_config(&w.web.id).await;
    let r = w.update(ops_to_lan(), true, 0).await.expect("preview");
    assert_eq!(flows(&r), cut_by_ops_to_lan());
    assert_eq!(r.total_changes as usize, r.changes.len());
    let ids: Vec<(&str, &str)> = r
        .changes
        .iter()
        .filter(|c| c.destination == "10.10.10.0/24")
        .map(|c| (c.source_id.as_str(), c.destination_id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            (w.phone.id.as_str(), w.gw.id.as_str()),
            (w.laptop.id.as_str(), w.gw.id.as_str()),
            (w.web.id.as_str(), w.gw.id.as_str()),
        ]
    );
    let preview = r.policy.expect("policy as it would be");
    assert_eq!(preview.default_action, pb::PolicyAction::Deny as i32);
    assert_eq!(preview.rules, ops_to_lan().rules);
    assert_eq!(preview.revision, 0);
    // Nothing written: no event, the same policy and configs.
    assert_eq!(w.latest().await, before_rev);
    assert_eq!(w.get().await.rules, vec![]);
    assert_eq!(w.s.node_config(&w.web.id).await, before_cfg);
    // The way back, previewed after the change, allows what was cut.
    let stored = w.update(ops_to_lan(), false, 0).await.unwrap();
    assert_eq!(flows(&stored), cut_by_ops_to_lan());
    let back = w
        .update(
            pb::Policy {
                network: "corp".into(),
                ..Default::default()
            },
            true,
            0,
        )
        .await
        .unwrap();
    let reversed: Vec<Flow> = cut_by_ops_to_lan()
        .into_iter()
        .map(|(s, d, a, x)| (s, d, x, a))
        .collect();
    assert_eq!(flows(&back), reversed);
    // A change that changes nothing lists nothing and writes nothing.
    let rev = w.latest().await;
    let same = w.update(ops_to_lan(), false, 0).await.unwrap();
    assert!(same.changes.is_empty() && same.total_changes == 0);
    assert_eq!(w.latest().await, rev);
}

#[tokio::test]
async fn bad_rules_are_refused_with_the_rule_and_field() {
    let w = World::new().await;
    let mut p = ops_to_lan();
    p.rules[0].destinations.push("gw".into());
    let d = expect_field(
        w.update(p, false, 0).await,
        "policy.rules[0].destinations[1]",
    );
    assert!(d.contains("tag:NAME"), "{d}");
    // Every bad field at once, each named.
    let mut p = ops_to_lan();
    p.rules.push(pb::PolicyRule {
        sources: vec!["10.0.0.0/8".into()],
        protocols: vec![pb::Protocol::Icmp as i32],
        ports: vec!["22".into()],
        ..Default::default()
    });
    let st = w.update(p, true, 0).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let fields: Vec<String> = meshplane_tests::field_violations(&st)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        [
            "policy.rules[1].sources[0]",
            "policy.rules[1].destinations",
            "policy.rules[1].ports",
            "policy.rules[1].action",
        ]
    );
    assert_eq!(w.get().await.revision, 0);
}

#[tokio::test]
async fn update_policy_with_a_stale_revision_is_aborted() {
    let w = World::new().await;
    let first = w.update(ops_to_lan(), false, 0).await.unwrap();
    let stored = first.policy.unwrap();
    assert!(stored.revision > 0);
    assert!(stored.update_time.is_some());
    assert_eq!(w.get().await, stored);
    // The policy's revision is the network's config revision of the change.
    let gw =
        w.s.nodes()
            .await
            .get_node(pb::GetNodeRequest {
                id: w.gw.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(gw.config_revision, stored.revision);

    let mut allow = ops_to_lan();
    allow.default_action = pb::PolicyAction::Allow as i32;
    let st = expect_code(
        w.update(allow.clone(), false, stored.revision + 1).await,
        Code::Aborted,
    );
    assert!(st.message().contains("expected_revision"), "{st:?}");
    expect_code(
        w.update(allow.clone(), true, stored.revision + 1).await,
        Code::Aborted,
    );
    assert_eq!(w.get().await, stored);
    let second = w
        .update(allow, false, stored.revision)
        .await
        .unwrap()
        .policy
        .unwrap();
    assert!(second.revision > stored.revision);
    assert_eq!(second.default_action, pb::PolicyAction::Allow as i32);
}

#[tokio::test]
async fn test_access_names_the_deciding_rule() {
    let w = World::new().await;
    w.update(ops_to_lan(), false, 0).await.unwrap();
    let allow = pb::PolicyAction::Allow as i32;
    let deny = pb::PolicyAction::Deny as i32;

    let v = w
        .test(&w.laptop.id, "10.10.10.5", pb::Protocol::Tcp, 8080)
        .await;
    assert_eq!((v.action, v.rule_index), (allow, Some(0)));
    assert_eq!(v.rule_name, "ops-to-lan");
    assert!(
        v.reason.contains("rule 0 (ops-to-lan) allows tcp/8080"),
        "{}",
        v.reason
    );
    assert_eq!(v.address, "10.10.10.5");

    let v = w.test("laptop", "10.10.10.5", pb::Protocol::Tcp, 22).await;
    assert_eq!((v.action, v.rule_index), (deny, None));
    assert!(v.reason.contains("default action denies"), "{}", v.reason);

    let v = w.test("phone", "10.10.10.5", pb::Protocol::Tcp, 8080).await;
    assert_eq!((v.action, v.rule_index), (allow, Some(0)));
    let v = w.test("web", "10.10.10.5", pb::Protocol::Tcp, 8080).await;
    assert_eq!(v.action, deny);
    let v = w
        .test("laptop", "10.10.10.5", pb::Protocol::Udp, 8080)
        .await;
    assert_eq!(v.action, deny);
    let v = w.test("laptop", "web", pb::Protocol::Icmp, 0).await;
    assert_eq!(
        (v.action, v.address.as_str()),
        (deny, w.web.address.as_str())
    );
}

#[tokio::test]
async fn a_denying_policy_reaches_configs_and_explain_route() {
    let w = World::new().await;
    let peers = |c: &pb::NodeConfig| c.peers.len();
    let web_before = w.s.node_config(&w.web.id).await;
    let laptop_before = w.s.node_config(&w.laptop.id).await;
    assert_eq!(peers(&web_before), 2);
    assert!(!input_chain(&web_before));
    // An agent streaming its config is woken with the new one.
    let token_owner = w.s.create_key(&["corp"], None).await.token;
    let reg = w.s.register(&token_owner, "corp", "db").await.unwrap();
    let db = reg.node.unwrap();
    let mut stream =
        w.s.agent(Some(&reg.node_token))
            .await
            .watch_config(pb::WatchConfigRequest { last_revision: 0 })
            .await
            .unwrap()
            .into_inner();
    let first = stream.message().await.unwrap().expect("first config");

    let stored = w
        .update(ops_to_lan(), false, 0)
        .await
        .unwrap()
        .policy
        .unwrap();

    // web may send nothing and receive nothing: no peers, and its INPUT
    // chain drops what arrives.
    let web = w.s.node_config(&w.web.id).await;
    assert_eq!(web.revision, stored.revision);
    assert_eq!(peers(&web), 0, "{:?}", web.peers);
    assert!(input_chain(&web));
    // laptop keeps the gateway, for the LAN only.
    let laptop = w.s.node_config(&w.laptop.id).await;
    assert_eq!(peers(&laptop), 1);
    assert!(peers(&laptop_before) > 1);
    let p = &laptop.peers[0];
    assert_eq!(p.public_key, w.gw.public_key);
    assert!(p.allowed_ips.contains(&"10.10.10.0/24".to_owned()), "{p:?}");
    assert!(input_chain(&laptop));
    // The gateway filters what it forwards into the LAN.
    let gw = w.s.node_config(&w.gw.id).await;
    let fw = gw.firewall.expect("gateway firewall");
    assert!(
        fw.iptables_restore.contains("8080"),
        "{}",
        fw.iptables_restore
    );

    let update = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let m = stream.message().await.unwrap().expect("an update");
            if m.revision >= stored.revision {
                return m;
            }
        }
    })
    .await
    .expect("the policy change reaches the streaming agent");
    assert!(update.revision > first.revision);
    assert_eq!(w.s.node_config(&db.id).await.peers.len(), 0);

    let ex = w.s.explain("corp", &w.web.id, "10.10.10.5").await;
    assert!(!ex.routable);
    assert!(ex.policy.contains("denies all traffic"), "{}", ex.policy);
    assert!(ex.reason.contains("denies all traffic"), "{}", ex.reason);
    let ex = w.s.explain("corp", &w.laptop.id, "10.10.10.5").await;
    assert!(ex.routable, "{ex:?}");
    assert!(ex.policy.contains("allows only tcp/8080"), "{}", ex.policy);

    // Back to allow-all: the configs are those from before again.
    w.update(
        pb::Policy {
            network: "corp".into(),
            ..Default::default()
        },
        false,
        0,
    )
    .await
    .unwrap();
    let web = w.s.node_config(&w.web.id).await;
    assert_eq!(peers(&web), 3, "gw, laptop and the new db");
    assert!(!input_chain(&web));
}

#[tokio::test]
async fn tags_are_set_on_create_and_update_and_a_policy_event_is_streamed() {
    let w = World::new().await;
    let c =
        w.s.ext_clients()
            .await
            .update_ext_client(pb::UpdateExtClientRequest {
                ext_client: Some(pb::ExtClient {
                    id: w.phone.id.clone(),
                    tags: vec!["phones".into(), "ops".into()],
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["tags".into()],
                }),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(c.tags, ["ops", "phones"]);
    let listed =
        w.s.nodes()
            .await
            .list_nodes(pb::ListNodesRequest {
                network: "corp".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let laptop = listed.nodes.iter().find(|n| n.name == "laptop").unwrap();
    assert_eq!(laptop.tags, ["dev", "ops"]);

    let after = w.latest().await;
    let stored = w
        .update(ops_to_lan(), false, 0)
        .await
        .unwrap()
        .policy
        .unwrap();
    let mut events = pb::event_service_client::EventServiceClient::new(w.s.admin().await)
        .watch_events(pb::WatchEventsRequest {
            after_revision: after,
            networks: vec!["corp".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let ev = events.message().await.unwrap().expect("the policy event");
    assert_eq!(ev.kind, "policy");
    assert_eq!(ev.id, "corp");
    assert_eq!(ev.revision, stored.revision);
    let Some(pb::event::Resource::Policy(p)) = ev.resource else {
        panic!("a policy event: {ev:?}")
    };
    assert_eq!(p, stored);
}
