//! Shared by the SDK and CLI end-to-end tests: the built `meshplane` binary
//! as a real server process on a fixed loopback port, so it can be stopped
//! and started again at the same address.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use meshplane_tests::built_binary;

/// A free loopback port (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `meshplane serve` process.
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `meshplane serve` on `127.0.0.1:port` with `data_dir`, and
    /// waits for its ready line.
    pub fn start(data_dir: &Path, port: u16) -> Self {
        let mut s = Server {
            child: None,
            addr: format!("127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
        };
        s.spawn();
        s
    }

    // The child is owned by the Server, whose Drop kills and reaps it.
    #[allow(clippy::zombie_processes)]
    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(built_binary("meshplane"))
                .args(["serve", "--listen", &self.addr])
                .env("MESHPLANE_DATA_DIR", &self.data_dir)
                .env_remove("MESHPLANE_DATABASE_URL")
                .env_remove("MESHPLANE_SECRET_KEY_FILE")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn meshplane");
            let mut out = BufReader::new(child.stdout.take().expect("stdout"));
            let want = format!("meshplane ready: serving gRPC on {}", self.addr);
            let mut line = String::new();
            let ready = loop {
                line.clear();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    break false;
                }
                if line.trim() == want {
                    break true;
                }
            };
            if ready {
                // Keep reading stdout so the server never blocks on it.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while out.read_line(&mut sink).unwrap_or(0) > 0 {
                        sink.clear();
                    }
                });
                self.child = Some(child);
                return;
            }
            // The port may still be held by the previous process: retry.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "meshplane did not start on {} within 30 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin token the server wrote.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    /// Kills the process (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same address and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server whose data directory is `<dir>/meshplane-data`, so meshctl run
/// in `<dir>` finds the admin token by default.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: Server,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("meshplane-data"), free_port());
        Env { dir, server }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `meshctl ARGS` in the directory, talking to the server.
    pub fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(built_binary("meshctl"));
        c.current_dir(self.path())
            .env("MESHCTL_SERVER", self.server.url())
            .env_remove("MESHCTL_TOKEN")
            .env_remove("MESHCTL_TOKEN_FILE")
            .env_remove("MESHCTL_ENROLLMENT_KEY")
            .env("COLUMNS", "200")
            .timeout(Duration::from_secs(60))
            .args(args);
        c
    }

    /// Runs `meshctl ARGS -o json`, expects success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cmd(args).args(["-o", "json"]).output().unwrap();
        assert!(
            out.status.success(),
            "meshctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "meshctl {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `meshctl ARGS`, expects success, returns stdout.
    pub fn text(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "meshctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `meshctl ARGS`, expects exit `code`, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "meshctl {args:?}: {err}");
        err
    }

    /// Writes `text` to `name` in the directory; returns `name`.
    pub fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.path().join(name), text).unwrap();
        name.to_owned()
    }
}
