//! End-to-end: the built `meshplane` binary driven by the real grpcurl
//! binary, as an operator would.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use meshplane_tests::{built_binary, grpcurl};

struct Server {
    child: Child,
    addr: String,
    /// What it printed before its ready line.
    printed: String,
}

impl Server {
    // The child is owned by the returned Server, whose Drop kills and reaps it.
    #[allow(clippy::zombie_processes)]
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(built_binary("meshplane"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("MESHPLANE_DATA_DIR", data_dir)
            .env_remove("MESHPLANE_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn meshplane");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no ready line within 30 s");
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "server exited early");
            printed.push_str(&line);
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("meshplane ready: serving gRPC on ") {
                return Server {
                    child,
                    addr: addr.to_owned(),
                    printed,
                };
            }
        }
    }

    fn grpcurl(&self, token: Option<&str>, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(grpcurl());
        cmd.args(["-plaintext", "-max-time", "20"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("authorization: Bearer {t}")]);
        }
        cmd.args(args);
        let out = cmd.output().expect("run grpcurl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "meshplane exited with {st} on SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "meshplane ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn meshplane(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(built_binary("meshplane"))
        .args(args)
        .env("MESHPLANE_DATA_DIR", data_dir)
        .output()
        .expect("run meshplane");
    assert!(
        out.status.success(),
        "meshplane {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn grpcurl_lists_describes_creates_and_checks_health() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());

    // The first start wrote the admin token 0600 and printed where, never
    // the token.
    let file = dir.path().join("admin.token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(!s.printed.contains(&token), "{}", s.printed);
    assert!(
        s.printed.contains(&file.display().to_string()),
        "{}",
        s.printed
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (ok, list) = s.grpcurl(None, &[&s.addr, "list"]);
    assert!(ok, "{list}");
    for svc in [
        "meshplane.v1.NetworkService",
        "meshplane.v1.EnrollmentKeyService",
        "meshplane.v1.NodeService",
        "meshplane.v1.GatewayService",
        "meshplane.v1.ExtClientService",
        "meshplane.v1.DnsService",
        "meshplane.v1.AgentService",
        "meshplane.v1.EventService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            list.lines().any(|l| l == svc),
            "{svc} missing from:\n{list}"
        );
    }

    let (ok, desc) = s.grpcurl(None, &[&s.addr, "describe", "meshplane.v1.NetworkService"]);
    assert!(ok, "{desc}");
    assert!(desc.contains("rpc CreateNetwork"), "{desc}");

    let (ok, created) = s.grpcurl(
        Some(&token),
        &[
            "-d",
            r#"{"network":{"name":"corp","addressRange":"10.101.0.0/16","addressRange6":"fd00:101::/64"}}"#,
            &s.addr,
            "meshplane.v1.NetworkService/CreateNetwork",
        ],
    );
    assert!(ok, "{created}");
    let v: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    assert_eq!(v["name"], "corp");
    assert_eq!(v["defaultMtu"], 1420);

    // Field violations arrive decoded, naming the field.
    let (ok, bad) = s.grpcurl(
        Some(&token),
        &[
            "-d",
            r#"{"network":{"name":"lab","addressRange":"10.0.0.1/24"}}"#,
            &s.addr,
            "meshplane.v1.NetworkService/CreateNetwork",
        ],
    );
    assert!(!ok);
    assert!(bad.contains("InvalidArgument"), "{bad}");
    assert!(
        bad.contains(r#""field":"network.address_range""#) && bad.contains("10.0.0.0/24"),
        "violation not decoded:\n{bad}"
    );

    // No token: refused.
    let (ok, denied) = s.grpcurl(
        None,
        &[
            "-d",
            "{}",
            &s.addr,
            "meshplane.v1.NetworkService/ListNetworks",
        ],
    );
    assert!(!ok && denied.contains("Unauthenticated"), "{denied}");

    let (ok, health) = s.grpcurl(None, &[&s.addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && health.contains("SERVING"), "{health}");

    s.terminate();
}

#[test]
fn token_commands_create_list_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let extra = meshplane(dir.path(), &["token", "create", "--name", "ci"])
        .trim()
        .to_owned();
    assert!(extra.starts_with("mpa_"), "{extra}");
    let (ok, out) = s.grpcurl(
        Some(&extra),
        &[
            "-d",
            "{}",
            &s.addr,
            "meshplane.v1.NetworkService/ListNetworks",
        ],
    );
    assert!(ok, "{out}");

    let list = meshplane(dir.path(), &["token", "list"]);
    assert!(!list.contains(&extra), "token list leaks a secret");
    let id = list
        .lines()
        .find(|l| l.ends_with(" ci"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("ci token not listed:\n{list}"))
        .to_owned();
    assert!(list.contains("initial"), "{list}");
    meshplane(dir.path(), &["token", "revoke", &id]);
    // A verified admin token is trusted for up to a second without a
    // database lookup: the revocation takes effect within it.
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, out) = s.grpcurl(
        Some(&extra),
        &[
            "-d",
            "{}",
            &s.addr,
            "meshplane.v1.NetworkService/ListNetworks",
        ],
    );
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    s.terminate();
}
