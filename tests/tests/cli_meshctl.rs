//! End-to-end: the built `meshctl` binary (through assert_cmd) against a
//! real `meshplane serve` process: every subcommand with its JSON output
//! parsed and checked, refusals with their field violations and exit codes,
//! and `quickstart vpn` run twice.

mod cli_support;

use std::{os::unix::fs::PermissionsExt, path::Path};

use cli_support::{Env, free_port};
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect()
}

#[test]
fn every_subcommand_against_a_real_server() {
    let e = Env::new();

    // network
    let n = e.json(&[
        "network",
        "create",
        "corp",
        "--range",
        "10.101.0.0/16",
        "--range6",
        "fd00:101::/64",
    ]);
    assert_eq!(n["name"], "corp");
    assert_eq!(n["defaultListenPort"], 51821);
    e.json(&["network", "create", "spare", "--range", "10.102.0.0/24"]);
    assert_eq!(names(&e.json(&["network", "list"])), ["corp", "spare"]);
    let n = e.json(&[
        "network",
        "update",
        "corp",
        "--mtu",
        "1380",
        "--nameservers",
        "9.9.9.9,1.1.1.1",
    ]);
    assert_eq!(n["defaultMtu"], 1380);
    assert_eq!(n["nameservers"], serde_json::json!(["9.9.9.9", "1.1.1.1"]));
    assert_eq!(e.json(&["network", "get", "corp"])["defaultMtu"], 1380);
    assert_eq!(
        e.json(&["network", "delete", "spare"]),
        serde_json::json!({})
    );
    let yaml = e.text(&["network", "get", "corp", "-o", "yaml"]);
    assert!(yaml.contains("name: corp\n"), "{yaml}");
    assert!(yaml.contains("defaultMtu: 1380\n"), "{yaml}");
    let table = e.text(&["network", "list"]);
    assert!(table.starts_with("NAME "), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");

    // key
    let k = e.json(&[
        "key",
        "create",
        "--network",
        "corp",
        "--uses",
        "3",
        "--expires",
        "24h",
        "--description",
        "walkthrough",
    ]);
    let token = k["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mpk_"));
    assert_eq!(k["usesRemaining"], 3);
    let keys = e.json(&["key", "list", "--network", "corp"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["token"], "", "tokens are never listed");
    let spare = e.json(&["key", "create", "--network", "corp", "--unlimited"]);
    e.json(&["key", "delete", spare["id"].as_str().unwrap()]);
    assert_eq!(
        e.json(&["key", "list"]).as_array().unwrap().len(),
        1,
        "revoked"
    );

    // node register / list / get / update
    let server = e.json(&[
        "node",
        "register",
        "--network",
        "corp",
        "--name",
        "server",
        "--key",
        &token,
        "--endpoint",
        "203.0.113.1:51821",
        "--state-dir",
        "server-state",
    ]);
    let state = e.path().join("server-state/corp.json");
    assert_eq!(mode(&state), 0o600);
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(kept["node_id"], server["id"]);
    assert_eq!(kept["public_key"], server["publicKey"]);
    assert!(kept["node_token"].as_str().unwrap().starts_with("mpn_"));
    let office = e
        .cmd(&[
            "node",
            "register",
            "--network",
            "corp",
            "--name",
            "office",
            "--state-dir",
            "office-state",
            "-o",
            "json",
        ])
        .env("MESHCTL_ENROLLMENT_KEY", &token)
        .output()
        .unwrap();
    assert!(office.status.success());
    let office: Value = serde_json::from_slice(&office.stdout).unwrap();
    let (server_id, office_id) = (
        server["id"].as_str().unwrap().to_owned(),
        office["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        names(&e.json(&["node", "list", "--network", "corp"])),
        ["office", "server"]
    );
    // By name or by id.
    assert_eq!(e.json(&["node", "get", "office"])["id"], office_id.as_str());
    assert_eq!(e.json(&["node", "get", &office_id])["name"], "office");
    let n = e.json(&["node", "update", "office", "--keepalive", "25"]);
    assert_eq!(n["persistentKeepalive"], 25);

    // What an agent reports shows in `node get` and `node list`.
    let office_state: Value = serde_json::from_str(
        &std::fs::read_to_string(e.path().join("office-state/corp.json")).unwrap(),
    )
    .unwrap();
    let node_token = office_state["node_token"].as_str().unwrap().to_owned();
    let url = e.server.url();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            use meshplane_sdk::proto as pb;
            meshplane_sdk::Client::builder(url)
                .connect_lazy()
                .unwrap()
                .agent()
                .with_node_token(node_token)
                .report(pb::ReportStatusRequest {
                    applied_revision: 0,
                    wireguard_interface: "mp-corp".into(),
                    host: Some(pb::HostReport {
                        interfaces: vec![
                            pb::HostInterface {
                                name: "eth0".into(),
                                addresses: vec!["192.0.2.7/24".into()],
                                up: true,
                            },
                            pb::HostInterface {
                                name: "eth2".into(),
                                addresses: vec![],
                                up: false,
                            },
                        ],
                        routes: vec![pb::HostRoute {
                            destination: "0.0.0.0/0".into(),
                            interface: "eth0".into(),
                            gateway: "192.0.2.1".into(),
                        }],
                        report_time: None,
                    }),
                    apply_error: "iptables-restore: permission denied".into(),
                    failed_revision: 3,
                    ..Default::default()
                })
                .await
                .unwrap();
        });
    let n = e.json(&["node", "get", "office"]);
    let text = e.text(&["node", "get", "office"]);
    assert!(
        text.starts_with("id  ") && text.contains("wireguard interface  "),
        "{text}"
    );
    // A server that keeps the report (ReportStatus with the host fields)
    // shows it; one that predates them leaves the fields empty.
    if n["wireguardInterface"] == "mp-corp" {
        assert_eq!(n["applyError"], "iptables-restore: permission denied");
        assert_eq!(n["host"]["interfaces"][1]["name"], "eth2");
        for want in [
            "wireguard interface  mp-corp\n",
            "apply error          revision 3: iptables-restore: permission denied\n",
            "host interfaces      eth0, eth2 (down)\n",
            "host routes          1 (0.0.0.0/0 via 192.0.2.1 dev eth0)\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let text = e.text(&["node", "list"]);
        assert!(
            text.contains("revision 3: iptables-restore: permission denied"),
            "{text}"
        );
    }
    let text = e.text(&["node", "list"]);
    assert!(
        text.lines().next().unwrap().ends_with("APPLY ERROR"),
        "{text}"
    );

    // ingress / egress (the seed's remote-access scenario)
    let n = e.json(&["ingress", "create", "server", "--network", "corp"]);
    assert!(n["ingress"].is_object(), "{n}");
    let n = e.json(&[
        "egress",
        "create",
        "office",
        "--ranges",
        "10.10.10.0/24",
        "--interface",
        "eth2",
        "--no-nat",
    ]);
    assert_eq!(n["egress"]["ranges"], serde_json::json!(["10.10.10.0/24"]));
    assert_eq!(n["egress"]["natEnabled"], false);
    let n = e.json(&[
        "egress",
        "create",
        "office",
        "--ranges",
        "10.10.10.0/24",
        "--interface",
        "eth2",
    ]);
    assert_eq!(n["egress"]["natEnabled"], true);

    // extclient
    let phone = e.json(&[
        "extclient",
        "create",
        "--network",
        "corp",
        "--ingress",
        "server",
        "--name",
        "phone",
    ]);
    let phone_id = phone["id"].as_str().unwrap().to_owned();
    assert_eq!(phone["ingressNodeId"], server_id.as_str());
    assert_eq!(
        e.json(&["extclient", "get", "phone"])["id"],
        phone_id.as_str()
    );
    let conf = e.text(&["extclient", "config", &phone_id]);
    assert!(
        conf.contains("[Interface]") && conf.contains("PrivateKey = "),
        "{conf}"
    );
    assert!(
        conf.contains("AllowedIPs = 10.10.10.0/24, 10.101.0.0/16, fd00:101::/64"),
        "{conf}"
    );
    assert!(conf.contains("Endpoint = 203.0.113.1:51821"), "{conf}");
    let j = e.json(&["extclient", "config", "phone"]);
    assert_eq!(j["config"].as_str().unwrap(), conf);
    e.text(&["extclient", "config", "phone", "--out", "phone.conf"]);
    assert_eq!(
        std::fs::read_to_string(e.path().join("phone.conf")).unwrap(),
        conf
    );
    assert_eq!(mode(&e.path().join("phone.conf")), 0o600);
    let qr = e.text(&["extclient", "config", "phone", "--qr"]);
    let rows: Vec<&str> = qr.lines().collect();
    assert!(rows.len() > 20, "{qr}");
    assert!(
        rows.iter()
            .all(|r| r.chars().count() == rows[0].chars().count())
    );
    assert!(qr.contains('▀') && qr.contains('█') && !qr.contains("PrivateKey"));
    let c = e.json(&[
        "extclient",
        "update",
        "phone",
        "--disable",
        "--dns",
        "10.101.0.1",
    ]);
    assert_eq!(
        (c["enabled"].as_bool(), c["dns"][0].as_str()),
        (Some(false), Some("10.101.0.1"))
    );
    let listed = e.json(&[
        "extclient",
        "list",
        "--network",
        "corp",
        "--ingress",
        "server",
    ]);
    assert_eq!(names(&listed), ["phone"]);
    e.json(&["extclient", "update", "phone", "--enable"]);

    // route get: the phone reaches the office LAN through server and office.
    let r = e.json(&["route", "get", "10.10.10.2", "--from", "phone"]);
    assert_eq!(r["routable"], true, "{r}");
    assert_eq!(r["egressNodeId"], office_id.as_str());
    assert_eq!(r["egressInterface"], "eth2");
    assert_eq!(r["nat"], true);
    let hops: Vec<&str> = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["at"].as_str().unwrap())
        .collect();
    assert_eq!(hops, ["phone", "server", "office"]);
    let text = e.text(&[
        "route",
        "get",
        "10.10.10.2",
        "--from",
        "phone",
        "--network",
        "corp",
    ]);
    assert!(
        text.contains("routable") && text.contains("out of eth2"),
        "{text}"
    );

    // node config: exactly what the office agent gets.
    let cfg = e.json(&["node", "config", "office"]);
    assert_eq!(cfg["nodeId"], office_id.as_str());
    assert!(
        cfg["firewall"]["iptablesRestore"]
            .as_str()
            .unwrap()
            .contains("-o eth2 -d 10.10.10.0/24 -j MASQUERADE"),
        "{cfg}"
    );
    let text = e.text(&["node", "config", "office"]);
    assert!(
        text.contains("peers:") && text.contains("MESHPLANE-FWD"),
        "{text}"
    );

    // Tables fit a narrow terminal.
    for list in [
        &["node", "list"][..],
        &["extclient", "list"],
        &["network", "list"],
    ] {
        let narrow = e.cmd(list).env("COLUMNS", "80").output().unwrap();
        let narrow = String::from_utf8(narrow.stdout).unwrap();
        assert!(narrow.lines().count() >= 2, "{narrow}");
        for line in narrow.lines() {
            assert!(line.chars().count() <= 80, "{list:?}: {line:?}");
        }
        let wide = e.text(list);
        assert!(wide.lines().any(|l| l.chars().count() > 80) || wide == narrow);
    }
    let narrow = e
        .cmd(&["node", "list"])
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    assert!(
        String::from_utf8(narrow.stdout)
            .unwrap()
            .contains(&office_id),
        "ids are never cut"
    );

    // dns: whatever the server answers, surfaced properly.
    let out = e
        .cmd(&["dns", "list", "--network", "corp", "-o", "json"])
        .output()
        .unwrap();
    if out.status.success() {
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v.is_array());
    } else {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Error: UNIMPLEMENTED: "), "{err}");
    }
    for args in [
        &[
            "dns",
            "create",
            "db",
            "--network",
            "corp",
            "--address",
            "10.101.0.9",
        ][..],
        &["dns", "hosts", "--network", "corp"],
        &["dns", "delete", "db", "--network", "corp"],
    ] {
        let out = e.cmd(args).output().unwrap();
        if !out.status.success() {
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.starts_with("Error: UNIMPLEMENTED: "), "{args:?}: {err}");
        }
    }

    // events watch: replays from a revision, one JSON object per line.
    let out = e
        .cmd(&[
            "events", "watch", "--after", "1", "--limit", "4", "-o", "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4);
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["revision"].as_u64() < w[1]["revision"].as_u64())
    );
    assert!(events[0]["revision"].as_u64().unwrap() > 1);
    let kinds: Vec<&str> = events.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"network"), "{kinds:?}");

    // Deletions.
    e.json(&["extclient", "delete", "phone"]);
    assert_eq!(e.json(&["extclient", "list"]), serde_json::json!([]));
    e.json(&["egress", "delete", "office"]);
    assert!(e.json(&["node", "get", "office"])["egress"].is_null());
    e.json(&[
        "extclient",
        "create",
        "--network",
        "corp",
        "--ingress",
        "server",
    ]);
    let err = e.fails(&["ingress", "delete", "server"], 1);
    assert!(err.contains("FAILED_PRECONDITION"), "{err}");
    e.json(&["ingress", "delete", "server", "--force"]);
    assert_eq!(e.json(&["extclient", "list"]), serde_json::json!([]));
    e.json(&["node", "delete", "office"]);
    assert_eq!(names(&e.json(&["node", "list"])), ["server"]);
    e.fails(&["network", "delete", "corp"], 1);
    e.json(&["network", "delete", "corp", "--force"]);
    assert_eq!(e.json(&["network", "list"]), serde_json::json!([]));

    // completion
    let bash = e.text(&["completion", "bash"]);
    assert!(
        bash.contains("_meshctl") && bash.contains("quickstart"),
        "completion"
    );
}

#[test]
fn refusals_show_code_and_field_violations_with_exit_codes() {
    let e = Env::new();
    let err = e.fails(&["network", "create", "lab", "--range", "10.0.0.1/24"], 1);
    assert!(err.contains("Error: INVALID_ARGUMENT: "), "{err}");
    assert!(
        err.contains(
            "  field network.address_range: 10.0.0.1/24 has host bits set; the range is 10.0.0.0/24"
        ),
        "{err}"
    );
    e.json(&["network", "create", "lab", "--range", "10.0.0.0/24"]);
    let err = e.fails(&["network", "create", "lab", "--range", "10.9.0.0/24"], 1);
    assert!(
        err.contains("ALREADY_EXISTS") && err.contains("field network.name"),
        "{err}"
    );
    let err = e.fails(&["node", "get", "nobody"], 1);
    assert!(err.contains("NOT_FOUND"), "{err}");

    // Usage errors: clap's exit code 2.
    e.fails(&["network", "create"], 2);
    e.fails(&["egress", "create", "x", "--interface", "eth2"], 2);
    e.fails(&["network", "list", "-o", "xml"], 2);
    let err = e.fails(&["network", "update", "lab"], 2);
    assert!(err.contains("nothing to change"), "{err}");

    // Credentials: none, a wrong one, and the flag and env forms.
    let elsewhere = tempfile::tempdir().unwrap();
    let err = e
        .cmd(&["network", "list"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(1));
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("--token"),
        "{err}"
    );
    e.fails(&["--token", "mpa_wrong", "network", "list"], 1);
    let token = e.server.admin_token();
    let ok = e
        .cmd(&["network", "list", "-o", "json"])
        .current_dir(elsewhere.path())
        .env("MESHCTL_TOKEN", &token)
        .output()
        .unwrap();
    assert!(ok.status.success());
    let file = e.path().join("meshplane-data/admin.token");
    let ok = e
        .cmd(&[
            "--token-file",
            file.to_str().unwrap(),
            "network",
            "get",
            "lab",
        ])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(ok.status.success());
    e.fails(
        &["--token-file", "/nonexistent/token", "network", "list"],
        1,
    );

    // The server is away: UNAVAILABLE, exit 1.
    let err = e
        .cmd(&["--timeout", "2", "network", "list"])
        .env(
            "MESHCTL_SERVER",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        msg.contains("UNAVAILABLE") || msg.contains("DEADLINE_EXCEEDED"),
        "{msg}"
    );
}

#[test]
fn quickstart_vpn_twice_leaves_exactly_five_clients() {
    let e = Env::new();
    let args = [
        "quickstart",
        "vpn",
        "--network",
        "vpn",
        "--interface",
        "eth0",
        "--clients",
        "5",
        "--out",
        "clients",
        "--endpoint",
        "203.0.113.10:51821",
        "--state-dir",
        "state",
        "--name",
        "gw",
    ];
    let first = e.cmd(&args).output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8(first.stdout).unwrap();
    assert!(out.contains("sudo wg-quick up "), "{out}");
    // The agent alternative: it takes the node over from the identity the
    // quickstart hands it.
    let agent_line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("sudo meshctl agent run "))
        .unwrap_or_else(|| panic!("no agent line in:\n{out}"));
    let agent_dir = e.path().join("state/agent-vpn");
    for want in [
        format!("--server {} ", e.server.url()),
        "--interface mp-vpn ".into(),
        format!("--state-dir {}", agent_dir.display()),
    ] {
        assert!(agent_line.contains(&want), "{want:?} missing: {agent_line}");
    }
    let progress = String::from_utf8(first.stderr).unwrap();
    assert!(
        progress.contains("[5/5] external client client-5: created"),
        "{progress}"
    );

    let second = e.cmd(&args).args(["-o", "json"]).output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let summary: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(
        summary["agentCommand"].as_str().unwrap(),
        format!("meshctl agent run {agent_line}"),
        "the second run prints the same agent line"
    );
    let progress = String::from_utf8(second.stderr).unwrap();
    assert!(
        !progress.contains("created"),
        "nothing new the second time: {progress}"
    );
    assert!(progress.contains("reusing"), "{progress}");

    // Exactly one network, one node, one enrollment key, five clients.
    assert_eq!(names(&e.json(&["network", "list"])), ["vpn"]);
    let nodes = e.json(&["node", "list", "--network", "vpn"]);
    assert_eq!(names(&nodes), ["gw"]);
    let gw = &nodes[0];
    let keys = e.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(
        keys[0]["usesRemaining"], 0,
        "its one use registered the gateway"
    );
    let clients = e.json(&["extclient", "list", "--network", "vpn"]);
    assert_eq!(
        names(&clients),
        ["client-1", "client-2", "client-3", "client-4", "client-5"]
    );
    assert_eq!(summary["clients"].as_array().unwrap().len(), 5);
    assert_eq!(summary["node"]["id"], gw["id"]);

    // The gateway: ingress with DNS on its overlay address, egress for the
    // whole internet with NAT, reached at the given endpoint.
    let addr = gw["address"].as_str().unwrap();
    assert!(addr.starts_with("10.201.0."), "{addr}");
    assert_eq!(gw["endpoint"], "203.0.113.10:51821");
    assert_eq!(gw["ingress"]["extClientDns"], serde_json::json!([addr]));
    let mut ranges: Vec<&str> = gw["egress"]["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    ranges.sort();
    assert_eq!(ranges, ["0.0.0.0/0", "::/0"]);
    assert_eq!(gw["egress"]["interface"], "eth0");
    assert_eq!(gw["egress"]["natEnabled"], true);

    // The client files: 0600, full tunnel, DNS on the gateway.
    let dir = e.path().join("clients");
    assert_eq!(mode(&dir), 0o700);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "client-1.conf",
            "client-2.conf",
            "client-3.conf",
            "client-4.conf",
            "client-5.conf"
        ]
    );
    for f in &files {
        let p = dir.join(f);
        assert_eq!(mode(&p), 0o600, "{f}");
        let conf = std::fs::read_to_string(&p).unwrap();
        assert!(conf.contains("AllowedIPs = 0.0.0.0/0, ::/0"), "{conf}");
        assert!(conf.contains(&format!("DNS = {addr}")), "{conf}");
        assert!(conf.contains("Endpoint = 203.0.113.10:51821"), "{conf}");
    }

    // The identity kept locally matches the node; the gateway's wg-quick
    // file carries that key and a peer per client.
    let state_file = e.path().join("state/vpn.json");
    assert_eq!(mode(&state_file), 0o600);
    let identity = agent_dir.join("identity.json");
    assert_eq!(mode(&identity), 0o600);
    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(&identity).unwrap()).unwrap();
    assert_eq!(identity["node_id"], gw["id"]);
    assert_eq!(identity["interface"], "mp-vpn");
    assert_eq!(summary["agentStateDir"], agent_dir.display().to_string());
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(state["node_id"], gw["id"]);
    assert_eq!(state["public_key"], gw["publicKey"]);
    let private = state["private_key"].as_str().unwrap();
    let kp = meshplane_sdk::agent::KeyPair::from_private_key(private).unwrap();
    assert_eq!(kp.public_key(), gw["publicKey"].as_str().unwrap());
    let gw_conf_path = summary["gatewayConfigFile"].as_str().unwrap();
    assert!(
        gw_conf_path.ends_with("state/mp-vpn.conf"),
        "{gw_conf_path}"
    );
    assert_eq!(mode(Path::new(gw_conf_path)), 0o600);
    let gw_conf = std::fs::read_to_string(gw_conf_path).unwrap();
    assert!(gw_conf.contains(&format!("PrivateKey = {private}\n")));
    assert_eq!(gw_conf.matches("[Peer]").count(), 5, "{gw_conf}");
    assert!(gw_conf.contains("ListenPort = 51821"));
    assert!(gw_conf.contains("PostUp = sysctl -q -w net.ipv4.ip_forward=1"));
    let v4 = std::fs::read_to_string(e.path().join("state/mp-vpn.iptables")).unwrap();
    assert!(
        v4.contains("-o eth0 -j MASQUERADE") || v4.contains("-o eth0") && v4.contains("MASQUERADE"),
        "{v4}"
    );

    // Fewer clients asked for later: nothing is deleted.
    let mut fewer = args.to_vec();
    fewer[7] = "3";
    e.cmd(&fewer).assert().success();
    assert_eq!(
        e.json(&["extclient", "list", "--network", "vpn"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
}
