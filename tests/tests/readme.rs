//! The README's grpcurl walkthrough, run as written against the built server,
//! so it stays true.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use meshplane_tests::{built_binary, grpcurl};

fn walkthrough() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme
        .find("## grpcurl walkthrough")
        .expect("walkthrough section");
    let end = readme[start..]
        .find("## API status")
        .expect("status section")
        + start;
    let mut script = String::new();
    let mut inside = false;
    for line in readme[start..end].lines() {
        if line.starts_with("```sh") {
            inside = true;
        } else if line.starts_with("```") {
            inside = false;
        } else if inside {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

#[test]
fn readme_grpcurl_walkthrough_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(built_binary("meshplane"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("MESHPLANE_DATA_DIR")
        .env_remove("MESHPLANE_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn meshplane");
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(Instant::now() < deadline, "no ready line");
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(a) = line
            .trim()
            .strip_prefix("meshplane ready: serving gRPC on ")
        {
            break a.to_owned();
        }
    };
    let script = walkthrough().replace("S=127.0.0.1:50051", &format!("S={addr}"));
    assert!(
        script.contains(&format!("S={addr}")),
        "the walkthrough sets S"
    );
    let grpcurl_dir = grpcurl().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        grpcurl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .expect("bash");
    let _ = server.kill();
    let _ = server.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // The one intended refusal, and nothing else failing.
    assert_eq!(text.matches("ERROR:").count(), 1, "{text}");
    assert!(
        text.contains(r#""field":"network.address_range""#),
        "{text}"
    );
    assert!(text.contains("\"nodeToken\": \"mpn_"), "{text}");
    assert!(text.contains("\"routable\": true"), "{text}");
    assert!(text.contains("\"egressInterface\": \"eth2\""), "{text}");
    assert!(text.contains("MASQUERADE"), "{text}");
    let phone = std::fs::read_to_string(dir.path().join("phone.conf")).expect("phone.conf");
    assert!(
        phone.contains("AllowedIPs = 10.10.10.0/24, 10.101.0.0/16, fd00:101::/64"),
        "{phone}"
    );
}
