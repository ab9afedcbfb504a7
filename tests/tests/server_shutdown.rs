//! `meshplane serve` stops on SIGTERM even when a client keeps an HTTP/2
//! connection open and never reads the server's GOAWAY.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use meshplane_tests::built_binary;

#[test]
fn sigterm_stops_the_server_despite_a_client_that_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(built_binary("meshplane"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("MESHPLANE_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn meshplane");
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(a) = line
            .trim()
            .strip_prefix("meshplane ready: serving gRPC on ")
        {
            break a.to_owned();
        }
    };

    // An HTTP/2 client that says hello and then never reads again.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    idle.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    std::thread::sleep(Duration::from_millis(300));

    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(server.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        let _ = server.kill();
        let _ = server.wait();
    }
    drop(idle);
    let status = status.expect("meshplane serve still running 30 s after SIGTERM");
    assert!(status.success(), "exit status {status}");
}
