//! `echo`: the dataplane test's echo service and its client.
//!
//! `echo serve PORT ADDR...` answers on TCP and UDP on each ADDR (IPv4 or
//! IPv6) at PORT: every line (TCP) or datagram (UDP) it receives is answered
//! with the source address it saw, followed by a newline. Binding each
//! address (not the wildcard) makes UDP answers leave from the address the
//! question was sent to, so NAT and WireGuard's allowed IPs see the reply
//! they expect.
//!
//! `echo ask tcp|udp ADDR:PORT [TIMEOUT_MS]` sends one question, prints the
//! answer (the address the server saw) on stdout and exits 0; it exits 1
//! with the reason on stderr when no answer came within the timeout
//! (default 1000 ms).
//!
//! `echo probe ADDR:PORT TOTAL_MS` asks over UDP every 10 ms, each time from
//! a new socket (errors such as "no route" are retried), until the first
//! answer, which it prints with how long it waited (`ANSWER MS`); it exits 1
//! when none came within TOTAL_MS. It measures when a path starts working
//! for new flows, to about 10 ms.
//!
//! `echo flow ADDR:PORT TOTAL_MS` is the same from one socket: a single UDP
//! flow (one source port), as a long-lived UDP application would keep.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", port, addrs @ ..] if !addrs.is_empty() => serve(port, addrs),
        ["ask", proto, addr] => ask(proto, addr, "1000", "0"),
        ["ask", proto, addr, timeout_ms] => ask(proto, addr, timeout_ms, "0"),
        ["ask", proto, addr, timeout_ms, port] => ask(proto, addr, timeout_ms, port),
        ["probe", addr, total_ms] => probe(addr, total_ms, false),
        ["flow", addr, total_ms] => probe(addr, total_ms, true),
        _ => {
            eprintln!(
                "usage: echo serve PORT ADDR... | echo ask tcp|udp ADDR:PORT [TIMEOUT_MS [LOCAL_PORT]] | echo probe|flow ADDR:PORT TOTAL_MS"
            );
            ExitCode::from(2)
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn serve(port: &str, addrs: &[&str]) -> ExitCode {
    let port: u16 = match port.parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("echo: bad port {port:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut threads = Vec::new();
    for a in addrs {
        let ip: IpAddr = match a.parse() {
            Ok(ip) => ip,
            Err(e) => {
                eprintln!("echo: bad address {a:?}: {e}");
                return ExitCode::from(2);
            }
        };
        let at = SocketAddr::new(ip, port);
        let tcp = match TcpListener::bind(at) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("echo: binding tcp {at}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let udp = match UdpSocket::bind(at) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("echo: binding udp {at}: {e}");
                return ExitCode::FAILURE;
            }
        };
        threads.push(std::thread::spawn(move || {
            for conn in tcp.incoming().flatten() {
                std::thread::spawn(move || answer_tcp(conn));
            }
        }));
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let reply = format!("{}\n", canonical(from.ip()));
                    let _ = udp.send_to(reply.as_bytes(), from);
                }
            }
        }));
    }
    println!("echo: serving on port {port} at {}", addrs.join(" "));
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

fn answer_tcp(conn: TcpStream) {
    let Ok(peer) = conn.peer_addr() else { return };
    let reply = format!("{}\n", canonical(peer.ip()));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap_or(0) > 0 {
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// One question; a UDP ask from `local_port` (0: any) lets the caller make
/// sure it is a new flow for conntrack (a random port can repeat one of an
/// earlier flow whose entry, NATed or not, is still there).
fn ask(proto: &str, addr: &str, timeout_ms: &str, local_port: &str) -> ExitCode {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("echo: bad address {addr:?} (want IP:PORT or [IPv6]:PORT)");
        return ExitCode::from(2);
    };
    let Ok(ms) = timeout_ms.parse::<u64>() else {
        eprintln!("echo: bad timeout {timeout_ms:?}");
        return ExitCode::from(2);
    };
    let Ok(local_port) = local_port.parse::<u16>() else {
        eprintln!("echo: bad local port {local_port:?}");
        return ExitCode::from(2);
    };
    let timeout = Duration::from_millis(ms.max(1));
    let answer = match proto {
        "tcp" => ask_tcp(addr, timeout),
        "udp" => ask_udp(addr, timeout, local_port),
        other => Err(format!("unknown protocol {other:?} (tcp or udp)")),
    };
    match answer {
        Ok(a) => {
            println!("{a}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo: {proto} {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ask_tcp(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"hello\n").map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    if buf.is_empty() {
        return Err("connection closed without an answer".into());
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn ask_udp(addr: SocketAddr, timeout: Duration, local_port: u16) -> Result<String, String> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, local_port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, local_port).into()
    };
    let s = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
    s.connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.send(b"hello\n").map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).map_err(|e| format!("no answer: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

fn probe(addr: &str, total_ms: &str, one_flow: bool) -> ExitCode {
    let (Ok(addr), Ok(total)) = (addr.parse::<SocketAddr>(), total_ms.parse::<u64>()) else {
        eprintln!("echo: bad probe arguments {addr:?} {total_ms:?}");
        return ExitCode::from(2);
    };
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let start = std::time::Instant::now();
    let deadline = start + Duration::from_millis(total);
    let mut last_error = String::from("no answer");
    let mut buf = [0u8; 1500];
    let mut kept: Option<UdpSocket> = None;
    while std::time::Instant::now() < deadline {
        // probe: a fresh socket (so a fresh source port) each try, so every
        // try is a new flow for conntrack, as a new connection would be.
        // Reusing one flow (`flow`) measures instead when the gateway's NAT
        // state for that flow, made by its first packet, works.
        let s = match kept.take() {
            Some(s) => s,
            None => match UdpSocket::bind(local) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("echo: bind: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
        if let Err(e) = s.send_to(b"hello\n", addr) {
            last_error = format!("send: {e}");
            std::thread::sleep(Duration::from_millis(10));
            if one_flow {
                kept = Some(s);
            }
            continue;
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) if from == addr => {
                let answer = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                println!("{answer} {}", start.elapsed().as_millis());
                return ExitCode::SUCCESS;
            }
            Ok((_, from)) => last_error = format!("answer from {from}"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                last_error = "no answer".into()
            }
            Err(e) => last_error = format!("receive: {e}"),
        }
        if one_flow {
            kept = Some(s);
        }
    }
    eprintln!("echo: probe {addr}: nothing within {total} ms (last: {last_error})");
    ExitCode::FAILURE
}
