//! The README's meshctl walkthrough and quickstart, run as written with the
//! built `meshctl` against a real server, so the document stays true.

mod cli_support;

use std::process::Command;

use cli_support::{Server, free_port};
use meshplane_tests::built_binary;

/// The `sh` blocks of the README's meshctl walkthrough.
fn script() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = doc
        .find("## CLI walkthrough (meshctl)")
        .expect("walkthrough section");
    let end = doc[start + 3..].find("\n## ").expect("next section") + start + 3;
    let mut script = String::from("set -euo pipefail\n");
    let mut inside = false;
    for line in doc[start..end].lines() {
        if line.starts_with("```sh") {
            inside = true;
        } else if line.starts_with("```") {
            inside = false;
        } else if inside && !line.starts_with("cargo build") && !line.starts_with("export PATH=") {
            // The test builds meshctl and sets PATH itself.
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

#[test]
fn readme_cli_walkthrough_and_quickstart_work_as_written() {
    let dir = tempfile::tempdir().unwrap();
    // The data directory a server started in this directory uses, so
    // meshctl finds the admin token without flags, as the document says.
    let server = Server::start(&dir.path().join("meshplane-data"), free_port());
    let bin_dir = built_binary("meshctl").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = script();
    assert!(script.contains("meshctl quickstart vpn"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("MESHCTL_SERVER", server.url())
        .env("COLUMNS", "200")
        .env_remove("MESHCTL_TOKEN")
        .env_remove("MESHCTL_TOKEN_FILE")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the document's commands failed:\n{stdout}\n{stderr}"
    );
    for want in [
        "refused with exit code 1",
        "AllowedIPs = 10.10.10.0/24, 10.101.0.0/16, fd00:101::/64",
        "10.10.10.2 from phone: routable",
        "out of eth2 on node",
        "-o eth2 -d 10.10.10.0/24 -j MASQUERADE",
        "\"natEnabled\": false",
        "sudo wg-quick up ",
        "sudo meshctl agent run --server ",
        "client-5.conf",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    assert!(
        stderr.contains("field network.address_range: 10.0.0.1/24 has host bits set"),
        "{stderr}"
    );
    // The second quickstart created nothing.
    let second = stderr.rfind("network vpn: ").map(|i| &stderr[i..]).unwrap();
    assert!(
        second.contains("reusing") && !second.contains("created"),
        "{second}"
    );
}
