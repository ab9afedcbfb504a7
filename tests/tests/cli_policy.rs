//! End-to-end: `meshctl policy get|set|diff|test` (the built binary)
//! against a real `meshplane serve` process, with policy files in YAML and
//! JSON.

mod cli_support;

use cli_support::Env;

const SSH_ONLY: &str = "\
network: corp
default_action: deny
rules:
  - name: a-ssh-b
    sources: [node:a]
    destinations: [node:b]
    protocols: [tcp]
    ports: [22]
    action: allow
";

#[test]
fn policy_get_set_diff_and_test() {
    let e = Env::new();
    e.json(&[
        "network",
        "create",
        "corp",
        "--range",
        "10.103.0.0/24",
        "--range6",
        "fd00:103::/64",
    ]);
    let key = e.json(&["key", "create", "--network", "corp", "--unlimited"]);
    let key = key["token"].as_str().unwrap().to_owned();
    for (name, port) in [("a", "51821"), ("b", "51822")] {
        e.json(&[
            "node",
            "register",
            "--network",
            "corp",
            "--name",
            name,
            "--key",
            &key,
            "--endpoint",
            &format!("203.0.113.9:{port}"),
            "--state-dir",
            &format!("{name}-state"),
        ]);
    }

    // The default.
    let p = e.json(&["policy", "get", "corp"]);
    assert_eq!(p["defaultAction"], "POLICY_ACTION_ALLOW");
    assert_eq!(p["rules"], serde_json::json!([]));
    assert_eq!(p["revision"], 0);
    let table = e.text(&["policy", "get", "corp"]);
    assert!(
        table.contains("default ALLOW") && table.contains("no rules"),
        "{table}"
    );

    // The preview: exactly what would be cut, nothing written.
    let file = e.write("ssh.yaml", SSH_ONLY);
    let diff = e.text(&["policy", "diff", &file]);
    assert_eq!(
        diff,
        "- node:a -> node:b: tcp/0-21,23-65535 udp icmp other\n\
         - node:b -> node:a: all\n\
         2 flows change\n"
    );
    let d = e.json(&["policy", "diff", &file]);
    assert_eq!(d["totalChanges"], 2);
    assert_eq!(d["changes"][1]["denied"], serde_json::json!(["all"]));
    assert_eq!(e.json(&["policy", "get", "corp"])["revision"], 0);

    // Set, then read back; the YAML `get` prints sets the same policy.
    let set = e.json(&["policy", "set", &file]);
    let revision = set["policy"]["revision"].as_u64().unwrap();
    assert!(revision > 0);
    assert_eq!(set["totalChanges"], 2);
    let p = e.json(&["policy", "get", "corp"]);
    assert_eq!(p["defaultAction"], "POLICY_ACTION_DENY");
    assert_eq!(p["rules"][0]["ports"], serde_json::json!(["22"]));
    let table = e.text(&["policy", "get", "corp"]);
    assert!(
        table.contains("a-ssh-b") && table.contains("node:b"),
        "{table}"
    );
    let yaml = e.text(&["policy", "get", "corp", "-o", "yaml"]);
    let again = e.write("again.yaml", &yaml);
    let out = e.text(&["policy", "set", &again]);
    assert!(out.contains("no flow changes"), "{out}");
    // JSON files, and --network over the file's.
    let json = e.write(
        "allow.json",
        r#"{"network": "elsewhere", "defaultAction": "ALLOW"}"#,
    );
    let d = e.json(&["policy", "diff", &json, "--network", "corp"]);
    assert_eq!(d["totalChanges"], 2);

    // TestAccess.
    let t = e.json(&[
        "policy",
        "test",
        "--network",
        "corp",
        "--from",
        "a",
        "--to",
        "b",
        "--protocol",
        "tcp",
        "--port",
        "22",
    ]);
    assert_eq!(t["action"], "POLICY_ACTION_ALLOW");
    assert_eq!(t["ruleIndex"], 0);
    assert_eq!(t["ruleName"], "a-ssh-b");
    let out = e.text(&[
        "policy",
        "test",
        "--network",
        "corp",
        "--from",
        "b",
        "--to",
        "a",
        "--protocol",
        "icmp",
    ]);
    assert!(out.starts_with("DENY to 10.103.0."), "{out}");
    assert!(out.contains("default action denies"), "{out}");

    // Refusals: a stale revision, a bad rule, a file without a network.
    let err = e.fails(
        &[
            "policy",
            "set",
            &json,
            "--network",
            "corp",
            "--expected-revision",
            &(revision + 1).to_string(),
        ],
        1,
    );
    assert!(
        err.contains("ABORTED") && err.contains("expected_revision"),
        "{err}"
    );
    let bad = e.write(
        "bad.yaml",
        "network: corp\nrules:\n- sources: ['*']\n  destinations: [office]\n  action: deny\n",
    );
    let err = e.fails(&["policy", "set", &bad], 1);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("field policy.rules[0].destinations[0]"),
        "{err}"
    );
    let nameless = e.write("nameless.yaml", "default_action: deny\n");
    let err = e.fails(&["policy", "diff", &nameless], 2);
    assert!(err.contains("--network"), "{err}");
    assert_eq!(
        e.json(&["policy", "get", "corp"])["revision"].as_u64(),
        Some(revision)
    );
}

/// Tags, which policies select parties by, from the command line: set on a
/// node and on an external client, shown, cleared; a bad tag is refused
/// with the field named.
#[test]
fn tags_from_the_command_line() {
    let e = Env::new();
    e.json(&["network", "create", "lab", "--range", "10.104.0.0/24"]);
    let key = e.json(&["key", "create", "--network", "lab", "--unlimited"]);
    let key = key["token"].as_str().unwrap().to_owned();
    e.json(&[
        "node",
        "register",
        "--network",
        "lab",
        "--name",
        "gw",
        "--key",
        &key,
        "--endpoint",
        "203.0.113.9:51821",
        "--state-dir",
        "gw-state",
    ]);
    let n = e.json(&[
        "node",
        "update",
        "gw",
        "--network",
        "lab",
        "--tags",
        "ops,db",
    ]);
    let mut tags: Vec<&str> = n["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["db", "ops"]);
    let shown = e.text(&["node", "get", "gw", "--network", "lab"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("tags") && l.contains("db") && l.contains("ops")),
        "{shown}"
    );
    e.json(&["ingress", "create", "gw", "--network", "lab"]);
    let c = e.json(&[
        "extclient",
        "create",
        "--network",
        "lab",
        "--ingress",
        "gw",
        "--name",
        "phone",
        "--tags",
        "ops",
    ]);
    assert_eq!(c["tags"], serde_json::json!(["ops"]));
    let c = e.json(&[
        "extclient",
        "update",
        "phone",
        "--network",
        "lab",
        "--tags",
        "",
    ]);
    assert_eq!(
        c.get("tags").cloned().unwrap_or_default(),
        serde_json::json!([])
    );
    let n = e.json(&["node", "update", "gw", "--network", "lab", "--tags", ""]);
    assert!(
        n.get("tags").is_none_or(|t| t == &serde_json::json!([])),
        "{n}"
    );
    let bad = e.fails(
        &[
            "node",
            "update",
            "gw",
            "--network",
            "lab",
            "--tags",
            "Not A Tag",
        ],
        1,
    );
    assert!(bad.contains("tags"), "{bad}");
}
