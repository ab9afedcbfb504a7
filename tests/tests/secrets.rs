//! No secret in what the server writes: the real `meshplane serve` runs a
//! full scenario at trace level, and everything it printed is searched for
//! every secret the scenario created or presented.

use std::{
    io::Read,
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use meshplane_proto::v1 as pb;
use meshplane_tests::{Authed, Bearer, built_binary, register_request};
use tonic::{service::interceptor::InterceptedService, transport::Endpoint};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, out: &Path, err: &Path) -> Server {
    start_with(dir, out, err, None)
}

// The child is owned by the returned Server, whose Drop kills and reaps it.
#[allow(clippy::zombie_processes)]
fn start_with(dir: &Path, out: &Path, err: &Path, secret_env: Option<&str>) -> Server {
    let mut cmd = Command::new(built_binary("meshplane"));
    if let Some(k) = secret_env {
        cmd.env("MESHPLANE_SECRET_KEY", k);
    }
    let child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MESHPLANE_DATA_DIR", dir)
        .env_remove("MESHPLANE_DATABASE_URL")
        .env("RUST_LOG", "trace")
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .expect("spawn meshplane");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.strip_prefix("meshplane ready: serving gRPC on "))
        {
            return Server {
                child,
                addr: addr.trim().to_owned(),
            };
        }
        assert!(
            Instant::now() < deadline,
            "no ready line within 30 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn authed(addr: &str, token: Option<&str>) -> Authed {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    InterceptedService::new(ch, Bearer::new(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_writes_no_secret_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let data = dir.path().join("data");
    let mut server = start(&data, &out, &err);
    let addr = server.addr.clone();
    let admin_token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let mut secrets = vec![
        admin_token.clone(),
        std::fs::read_to_string(data.join("secret.key"))
            .unwrap()
            .trim()
            .to_owned(),
    ];
    let admin = || authed(&addr, Some(&admin_token));

    pb::network_service_client::NetworkServiceClient::new(admin().await)
        .create_network(pb::CreateNetworkRequest {
            network: Some(meshplane_tests::network("corp", "10.9.0.0/24", "")),
        })
        .await
        .unwrap();
    let key = pb::enrollment_key_service_client::EnrollmentKeyServiceClient::new(admin().await)
        .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
            enrollment_key: Some(pb::EnrollmentKey {
                networks: vec!["corp".into()],
                unlimited: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    secrets.push(key.clone());
    let mut agent = pb::agent_service_client::AgentServiceClient::new(authed(&addr, None).await);
    let mut req = register_request(&key, "corp", "gw");
    req.endpoint = "198.51.100.1:51821".into();
    let reg = agent.register(req).await.unwrap().into_inner();
    secrets.push(reg.node_token.clone());
    let node = reg.node.unwrap();
    // The agent's calls with its token: a stream and a report.
    let mut agent = pb::agent_service_client::AgentServiceClient::new(
        authed(&addr, Some(&reg.node_token)).await,
    );
    let mut st = agent
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = st.message().await.unwrap().unwrap();
    agent
        .report_status(pb::ReportStatusRequest {
            applied_revision: first.revision,
            apply_error: format!("a failure mentioning nothing secret {}", node.name),
            failed_revision: first.revision,
            ..Default::default()
        })
        .await
        .unwrap();
    // An external client with a server-generated key: its private key
    // leaves the server only in its config file.
    let gw = pb::gateway_service_client::GatewayServiceClient::new(admin().await);
    gw.clone()
        .create_ingress_gateway(pb::CreateIngressGatewayRequest {
            node_id: node.id.clone(),
            ext_client_dns: vec![],
        })
        .await
        .unwrap();
    let mut ext = pb::ext_client_service_client::ExtClientServiceClient::new(admin().await);
    let client = ext
        .create_ext_client(pb::CreateExtClientRequest {
            network: "corp".into(),
            ingress_node_id: node.id.clone(),
            name: "phone".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let file = ext
        .get_ext_client_config(pb::GetExtClientConfigRequest {
            id: client.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .config;
    let private = file
        .lines()
        .find_map(|l| l.strip_prefix("PrivateKey = "))
        .expect("a private key in the file")
        .trim()
        .to_owned();
    secrets.push(private);
    // Wrong credentials are secrets too: someone's typo of a real one.
    let mut parts = admin_token.splitn(3, '_');
    let (kind, id) = (parts.next().unwrap(), parts.next().unwrap());
    let wrong = format!("{kind}_{id}_ThisIsAWrongSecretThatMustNotBeLogged0000000");
    let bad =
        pb::network_service_client::NetworkServiceClient::new(authed(&addr, Some(&wrong)).await)
            .list_networks(pb::ListNetworksRequest::default())
            .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::Unauthenticated);
    secrets.push(wrong);
    drop(st);

    // Stop it cleanly so everything is flushed.
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "meshplane ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut text = String::new();
    for f in [&out, &err] {
        std::fs::File::open(f)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
    }
    assert!(
        text.lines().count() > 100,
        "trace level wrote little; is RUST_LOG honoured? {text}"
    );
    for s in &secrets {
        // The whole secret, and (for tokens `mpX_<id>_<secret>`) its secret
        // part alone. The secret part is URL-safe base64 and may itself hold
        // `_`, so split at the first two only.
        let part = match s.splitn(3, '_').collect::<Vec<_>>()[..] {
            [_, _, secret] => secret,
            _ => s.as_str(),
        };
        assert!(
            part.len() >= 40,
            "a secret too short to search for: {part:?}"
        );
        for needle in [s.as_str(), part] {
            assert!(
                !text.contains(needle),
                "the server's output contains a secret ({}…): line {:?}",
                &needle[..6.min(needle.len())],
                text.lines().find(|l| l.contains(needle))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_can_come_from_the_environment() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let data = dir.path().join("data");
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let mut config = None;
    for round in 0..2 {
        let server = start_with(&data, &out, &err, Some(&key));
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
        let admin = authed(&server.addr, Some(token.trim())).await;
        let mut ext = pb::ext_client_service_client::ExtClientServiceClient::new(admin.clone());
        if round == 0 {
            pb::network_service_client::NetworkServiceClient::new(admin.clone())
                .create_network(pb::CreateNetworkRequest {
                    network: Some(meshplane_tests::network("corp", "10.9.0.0/24", "")),
                })
                .await
                .unwrap();
            let k =
                pb::enrollment_key_service_client::EnrollmentKeyServiceClient::new(admin.clone())
                    .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
                        enrollment_key: Some(pb::EnrollmentKey {
                            networks: vec!["corp".into()],
                            unlimited: true,
                            ..Default::default()
                        }),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .token;
            let mut req = register_request(&k, "corp", "gw");
            req.endpoint = "198.51.100.1:51821".into();
            let node =
                pb::agent_service_client::AgentServiceClient::new(authed(&server.addr, None).await)
                    .register(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .node
                    .unwrap();
            pb::gateway_service_client::GatewayServiceClient::new(admin.clone())
                .create_ingress_gateway(pb::CreateIngressGatewayRequest {
                    node_id: node.id.clone(),
                    ext_client_dns: vec![],
                })
                .await
                .unwrap();
            ext.create_ext_client(pb::CreateExtClientRequest {
                network: "corp".into(),
                ingress_node_id: node.id,
                name: "phone".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let id = ext
            .list_ext_clients(pb::ListExtClientsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ext_clients[0]
            .id
            .clone();
        let file = ext
            .get_ext_client_config(pb::GetExtClientConfigRequest { id })
            .await
            .expect("the sealed key opens with the key from the environment")
            .into_inner()
            .config;
        // The same key after a restart: the same private key comes out.
        match &config {
            None => config = Some(file),
            Some(first) => assert_eq!(first, &file),
        }
        assert!(
            !data.join("secret.key").exists(),
            "no key file written when the key comes from the environment"
        );
        drop(server);
    }
}
