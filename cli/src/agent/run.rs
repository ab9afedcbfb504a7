//! The agent's life: identity, the config stream, applying, reporting,
//! stopping and tearing down.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use futures::StreamExt;
use meshplane_sdk::{
    Client, ClientBuilder, Code,
    agent::{AgentClient, KeyPair},
    proto as pb,
};
use tokio::{sync::watch, time::Instant};

use super::{
    DownArgs, RunArgs,
    desired::desired,
    linux::Host,
    plan::{Create, Plan, Step, plan, teardown},
    retry_delay, server_addresses,
    state::{Applied, Identity, StateDir},
};
use crate::{Failure, Outcome};

/// How often the agent looks at the host between configs: repairs what
/// was changed under it and reports a changed routing table.
const RECHECK: Duration = Duration::from_secs(30);
/// How soon the agent looks again after (re)configuring the whole device.
const VERIFY: Duration = Duration::from_secs(2);

fn local(e: String) -> Failure {
    Failure::Local(e)
}

/// The host name as a DNS label (the default node name).
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut label: String = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    label = label.trim_matches('-').to_owned();
    if label.is_empty() {
        "node".into()
    } else {
        label
    }
}

async fn register(
    a: &RunArgs,
    server: &str,
    client: &Client,
    dir: &StateDir,
) -> Result<Identity, Failure> {
    let usage = |what: &str| {
        Failure::Usage(format!(
            "{what} is required on the first run ({} holds no agent identity yet)",
            dir.path().display()
        ))
    };
    let network = a.network.clone().ok_or_else(|| usage("--network"))?;
    let key = a
        .enrollment_key
        .clone()
        .ok_or_else(|| usage("--enrollment-key"))?;
    // The key pair is on disk before the server knows its public key: a
    // crash or a lost answer never leaves a node whose private key is gone
    // (the next run registers with the same key pair).
    let keys = match dir.pending_key().map_err(local)? {
        Some(private) => KeyPair::from_private_key(&private)?,
        None => {
            let k = KeyPair::generate();
            dir.save_pending_key(k.private_key().expose())
                .map_err(local)?;
            k
        }
    };
    let reg = client
        .agent()
        .register(pb::RegisterRequest {
            enrollment_key: key,
            network,
            name: a.name.clone().unwrap_or_else(host_name),
            public_key: keys.public_key().to_owned(),
            endpoint: a.endpoint.clone().unwrap_or_default(),
            listen_port: a.listen_port.map(u32::from),
            os: std::env::consts::OS.into(),
        })
        .await?;
    let id = Identity {
        node_id: reg.node.id.clone(),
        network: reg.node.network.clone(),
        name: reg.node.name.clone(),
        server: server.to_owned(),
        interface: a.interface.clone(),
        private_key: keys.private_key().expose().to_owned(),
        public_key: keys.public_key().to_owned(),
        node_token: reg.node_token.expose().to_owned(),
        created: None,
    };
    dir.save_identity(&id).map_err(local)?;
    dir.clear_pending_key().map_err(local)?;
    tracing::info!(node = %id.node_id, name = %id.name, network = %id.network,
        address = %reg.node.address, address6 = %reg.node.address6, "registered");
    Ok(id)
}

/// The identity in `dir`, or a new one registered with the server.
async fn identity(
    a: &RunArgs,
    server: &str,
    client: &Client,
    dir: &StateDir,
) -> Result<Identity, Failure> {
    let Some(id) = dir.identity().map_err(local)? else {
        return register(a, server, client, dir).await;
    };
    if let Some(n) = &a.network
        && *n != id.network
    {
        return Err(Failure::Usage(format!(
            "{} belongs to node {} of network {}, not {n}",
            dir.path().display(),
            id.name,
            id.network
        )));
    }
    if a.interface != id.interface {
        return Err(Failure::Usage(format!(
            "{} manages interface {}; run `meshctl agent down --state-dir {}` before switching to {}",
            dir.path().display(),
            id.interface,
            dir.path().display(),
            a.interface
        )));
    }
    Ok(id)
}

/// A status report: sent by a task of its own, newest first, so a server
/// that is away never holds up applying.
#[derive(Clone, PartialEq, Default)]
struct Report {
    applied: u64,
    host: Option<pb::HostReport>,
    error: String,
    failed: u64,
}

impl Report {
    fn request(&self, interface: &str) -> pb::ReportStatusRequest {
        pb::ReportStatusRequest {
            applied_revision: self.applied,
            endpoint: String::new(),
            wireguard_interface: interface.to_owned(),
            host: self.host.clone(),
            apply_error: self.error.clone(),
            failed_revision: self.failed,
        }
    }
}

fn reporter(agent: AgentClient, interface: String) -> watch::Sender<Option<Report>> {
    let (tx, mut rx) = watch::channel::<Option<Report>>(None);
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let Some(r) = rx.borrow_and_update().clone() else {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match agent.report(r.request(&interface)).await {
                Ok(()) => {
                    failures = 0;
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reporting status failed; will retry");
                    failures += 1;
                    let wait = retry_delay(failures.min(4));
                    // A newer report goes out as soon as it is there.
                    let _ = tokio::time::timeout(wait, rx.changed()).await;
                }
            }
        }
    });
    tx
}

/// The peers' endpoints that are host names, resolved without blocking the
/// agent (each lookup bounded by 2 s). A name with several addresses keeps
/// the one the device already uses, so round-robin DNS does not rewrite the
/// peer at every apply.
async fn resolve_endpoints(
    cfg: &pb::NodeConfig,
    have: &super::plan::Observed,
) -> HashMap<String, std::net::SocketAddr> {
    let current: BTreeSet<std::net::SocketAddr> = have
        .device
        .iter()
        .flat_map(|d| d.peers.values().filter_map(|p| p.endpoint))
        .collect();
    let mut out = HashMap::new();
    for p in &cfg.peers {
        let e = p.endpoint.as_str();
        if e.is_empty() || e.parse::<std::net::SocketAddr>().is_ok() || out.contains_key(e) {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(e)).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<_> = addrs.collect();
                let pick = addrs
                    .iter()
                    .find(|a| current.contains(a))
                    .or(addrs.first())
                    .copied();
                if let Some(a) = pick {
                    out.insert(e.to_owned(), a);
                }
            }
            Ok(Err(err)) => {
                tracing::debug!(endpoint = e, error = %err, "endpoint does not resolve")
            }
            Err(_) => tracing::debug!(endpoint = e, "endpoint lookup timed out"),
        }
    }
    out
}

/// Everything the running agent holds.
struct Agent {
    id: Identity,
    dir: StateDir,
    host: Host,
    applied: Applied,
    create: Create,
    control: Vec<std::net::IpAddr>,
}

impl Agent {
    /// The plan for `cfg` against the host as it is now, and the host
    /// report taken on the way.
    async fn plan(&self, cfg: &pb::NodeConfig) -> Result<(Plan, pb::HostReport), String> {
        let snap = self.host.observe(&self.applied).await?;
        let resolved = resolve_endpoints(cfg, &snap.observed).await;
        let lookup = |e: &str| resolved.get(e).copied();
        let (want, mut notes) = desired(cfg, &self.id.public_key, &self.control, &lookup);
        let mut p = plan(
            &snap.observed,
            &want,
            &self.id.interface,
            Some(&self.create),
        );
        notes.append(&mut p.notes);
        p.notes = notes;
        Ok((p, snap.report))
    }

    /// Runs `p`. A failing step does not stop the independent ones after
    /// it (an IPv6 address the host refuses must not keep IPv4 routes from
    /// being installed); it stops the plan only when the device itself could
    /// not be made or configured, and it keeps a family's forwarding off
    /// when that family's firewall failed. Consecutive peer steps go to the
    /// device together. Returns every failure.
    async fn execute(&mut self, p: &Plan) -> Result<(), String> {
        let is_peer = |s: &Step| matches!(s, Step::UpsertPeer(..) | Step::RemovePeer(_));
        let mut errors: Vec<String> = Vec::new();
        let mut firewall_failed = BTreeSet::new();
        let mut i = 0;
        while i < p.steps.len() {
            let step = &p.steps[i];
            if is_peer(step) {
                let run: Vec<&Step> = p.steps[i..].iter().take_while(|s| is_peer(s)).collect();
                for s in &run {
                    tracing::debug!(step = %s, "applying");
                }
                tracing::info!(peers = run.len(), "applying peer changes");
                if let Err(e) = self.host.execute_peers(&run) {
                    errors.push(format!("wireguard: {} peer change(s): {e}", run.len()));
                }
                i += run.len();
                continue;
            }
            i += 1;
            if let Step::SetSysctl(k, true) = step
                && k.family().is_some_and(|f| firewall_failed.contains(&f))
            {
                errors.push(format!(
                    "{step}: not done, the firewall of its family failed"
                ));
                continue;
            }
            tracing::info!(%step, "applying");
            let before = self.applied.clone();
            let r = self
                .host
                .execute(step, &self.id.private_key, &mut self.applied)
                .await;
            // Only what the host cannot tell apart is recorded; most steps
            // change nothing there.
            if self.applied != before {
                self.dir.save_applied(&self.applied)?;
            }
            if let Err(e) = r {
                tracing::error!(%step, error = %e, "step failed");
                errors.push(format!("{step}: {e}"));
                match step {
                    Step::CreateInterface(_) | Step::ConfigureDevice { .. } => break,
                    Step::RestoreFirewall { family, .. } => {
                        firewall_failed.insert(*family);
                    }
                    _ => {}
                }
                continue;
            }
            match step {
                Step::CreateInterface(c) => {
                    self.id.created = Some(c.clone());
                    self.dir.save_identity(&self.id)?;
                }
                Step::DeleteInterface => {
                    self.id.created = None;
                    self.dir.save_identity(&self.id)?;
                }
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Plans and applies `cfg`; on success the config is kept for resuming.
    /// `Ok(true)` when the device was (re)configured as a whole: the loop
    /// then looks at the host again soon, not only at the next recheck.
    async fn apply(
        &mut self,
        cfg: &pb::NodeConfig,
    ) -> (Result<bool, String>, Option<pb::HostReport>) {
        let (p, report) = match self.plan(cfg).await {
            Ok(x) => x,
            Err(e) => return (Err(e), None),
        };
        for n in &p.notes {
            tracing::warn!(note = %n, "left out");
        }
        let started = std::time::Instant::now();
        if let Err(e) = self.execute(&p).await {
            return (Err(e), Some(report));
        }
        if let Err(e) = self.dir.save_config(cfg) {
            return (Err(e), Some(report));
        }
        if !p.is_empty() {
            tracing::info!(
                revision = cfg.revision,
                steps = p.steps.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "applied"
            );
        }
        let whole = p
            .steps
            .iter()
            .any(|s| matches!(s, Step::ConfigureDevice { .. }));
        (Ok(whole), Some(report))
    }

    /// Removes what the agent applied; returns the errors of steps that
    /// failed (the others still ran).
    async fn teardown(&mut self) -> Vec<String> {
        let snap = match self.host.observe(&self.applied).await {
            Ok(s) => s,
            Err(e) => return vec![e],
        };
        let p = teardown(&snap.observed, self.id.created.is_some());
        let mut errors = Vec::new();
        for step in &p.steps {
            tracing::info!(%step, "removing");
            if let Err(e) = self
                .host
                .execute(step, &self.id.private_key, &mut self.applied)
                .await
            {
                errors.push(format!("{step}: {e}"));
            }
            if *step == Step::DeleteInterface {
                self.id.created = None;
            }
        }
        let _ = self.dir.save_applied(&self.applied);
        errors
    }
}

/// SIGTERM and SIGINT, caught from the moment this is called: a signal
/// during start-up (registration, re-applying a large config) is acted on
/// once the agent reaches its loop, never mid-step.
fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let handler =
        |k| signal(k).map_err(|e| Failure::Local(format!("installing a signal handler: {e}")));
    let mut term = handler(SignalKind::terminate())?;
    let mut int = handler(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// `meshctl agent run`.
pub async fn run(a: RunArgs, server: &str, client: ClientBuilder) -> Outcome {
    let stop = shutdown_signal()?;
    let dir = StateDir::open(&a.state_dir).map_err(local)?;
    let _lock = dir.lock().map_err(local)?;
    let client = client.timeout(Duration::from_secs(30)).connect_lazy()?;
    let id = identity(&a, server, &client, &dir).await?;
    let host = Host::new(&id.interface).map_err(local)?;
    let create = match (&a.userspace, &id.created) {
        (Some(cmd), _) => Create::Userspace(cmd.clone()),
        (None, Some(c)) => c.clone(),
        (None, None) => Create::Kernel,
    };
    let applied = dir.applied().map_err(local)?;
    let agent_client = client.agent().with_node_token(id.node_token.clone());
    let mut agent = Agent {
        control: server_addresses(server),
        id,
        dir,
        host,
        applied,
        create,
    };
    let held = agent.dir.config();
    let mut good = held.as_ref().map_or(0, |c| c.revision);

    // Tell the server which interface to render for, and what the host
    // looks like, before the first config is computed.
    let first_report = agent
        .host
        .observe(&agent.applied)
        .await
        .ok()
        .map(|s| s.report);
    let reports = reporter(agent_client.clone(), agent.id.interface.clone());
    if a.dry_run {
        let first = Report {
            applied: good,
            host: first_report,
            ..Report::default()
        };
        let _ = agent_client
            .report(first.request(&agent.id.interface))
            .await;
        return dry_run(&agent, &agent_client).await;
    }
    // Sent before the stream opens, so the first config already names this
    // interface; when the server is away the reporter keeps trying.
    let first = Report {
        applied: good,
        host: first_report.clone(),
        ..Report::default()
    };
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        agent_client.report(first.request(&agent.id.interface)),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        reports.send_replace(Some(first));
    }
    let mut last_report = first_report;
    tracing::info!(node = %agent.id.node_id, name = %agent.id.name, interface = %agent.id.interface,
        resume_from = good, "agent started");

    // After a reboot the host lacks what it had: put the last config back
    // before the server is even reachable.
    let mut current = held.clone();
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    if let Some(cfg) = &held
        && let (Err(e), _) = agent.apply(cfg).await
    {
        tracing::warn!(error = %e, "re-applying the last config failed");
    }

    let mut stream = agent_client.watch_config(held);
    let mut tick = tokio::time::interval(RECHECK);
    tick.reset();
    tokio::pin!(stop);
    loop {
        let mut apply_now = false;
        let mut recheck = false;
        tokio::select! {
            sig = &mut stop => {
                tracing::info!(signal = sig, "stopping; the dataplane stays up");
                return Ok(());
            }
            item = stream.next() => match item {
                Some(Ok(cfg)) => {
                    current = Some(cfg);
                    failures = 0;
                    apply_now = true;
                }
                Some(Err(e)) if e.code() == Code::NotFound => {
                    let errors = agent.teardown().await;
                    // Forget the node only when nothing is left behind;
                    // otherwise `agent down` can still remove the rest.
                    if errors.is_empty() {
                        let _ = agent.dir.clear(true);
                    }
                    let mut msg = format!(
                        "node {} ({}) was deleted on the server; removed what the agent applied on this host",
                        agent.id.name, agent.id.node_id
                    );
                    if !errors.is_empty() {
                        msg.push_str(&format!(" (failed: {})", errors.join("; ")));
                    }
                    return Err(Failure::Local(msg));
                }
                Some(Err(e)) => return Err(Failure::Api(e)),
                None => return Err(Failure::Local("the config stream ended".into())),
            },
            _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)).await }, if retry_at.is_some() => {
                retry_at = None;
                apply_now = true;
            }
            _ = tick.tick() => recheck = true,
        }
        let Some(cfg) = current.clone() else { continue };
        if recheck && retry_at.is_none() {
            // Between configs: repair quietly, report a changed host.
            match agent.plan(&cfg).await {
                Ok((p, report)) => {
                    if !p.is_empty() {
                        tracing::warn!(
                            steps = p.steps.len(),
                            "the host drifted from revision {}; re-applying",
                            cfg.revision
                        );
                        apply_now = true;
                    } else if Some(&report) != last_report.as_ref() {
                        last_report = Some(report.clone());
                        reports.send_replace(Some(Report {
                            applied: good,
                            host: Some(report),
                            ..Report::default()
                        }));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the host failed"),
            }
        }
        if !apply_now {
            continue;
        }
        let (result, report) = agent.apply(&cfg).await;
        if report.is_some() {
            last_report = report.clone();
        }
        match result {
            Ok(whole) => {
                if whole {
                    // A device just made or rewritten (a userspace one that
                    // started under load may take a moment): check it soon.
                    tick.reset_after(VERIFY);
                }
                good = cfg.revision;
                failures = 0;
                retry_at = None;
                reports.send_replace(Some(Report {
                    applied: good,
                    host: report,
                    ..Report::default()
                }));
            }
            Err(e) => {
                let wait = retry_delay(failures);
                failures += 1;
                tracing::error!(revision = cfg.revision, error = %e, retry_in_s = wait.as_secs(), "apply failed; the last good state stays");
                retry_at = Some(Instant::now() + wait);
                reports.send_replace(Some(Report {
                    applied: good,
                    host: report,
                    error: e,
                    failed: cfg.revision,
                }));
            }
        }
    }
}

async fn dry_run(agent: &Agent, client: &AgentClient) -> Outcome {
    let mut stream = client.watch_config(None);
    let cfg = match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(cfg))) => cfg,
        Ok(Some(Err(e))) => return Err(Failure::Api(e)),
        Ok(None) => return Err(Failure::Local("the config stream ended".into())),
        Err(_) => {
            return Err(Failure::Local(
                "no config from the server within 30 s".into(),
            ));
        }
    };
    let (p, _) = agent.plan(&cfg).await.map_err(local)?;
    println!(
        "plan for node {} ({}), revision {}, interface {}: {} step(s)",
        agent.id.name,
        agent.id.node_id,
        cfg.revision,
        agent.id.interface,
        p.steps.len()
    );
    for s in &p.steps {
        println!("  {s}");
    }
    for n in &p.notes {
        println!("  note: {n}");
    }
    Ok(())
}

/// `meshctl agent down`.
pub async fn down(a: DownArgs) -> Outcome {
    let dir = StateDir::open(&a.state_dir).map_err(local)?;
    let _lock = dir.lock().map_err(local)?;
    let id = dir.identity().map_err(local)?.ok_or_else(|| {
        Failure::Local(format!(
            "{} holds no agent identity: nothing to remove",
            a.state_dir.display()
        ))
    })?;
    let host = Host::new(&id.interface).map_err(local)?;
    let mut agent = Agent {
        applied: dir.applied().map_err(local)?,
        control: Vec::new(),
        create: Create::Kernel,
        host,
        dir,
        id,
    };
    let errors = agent.teardown().await;
    agent.dir.save_identity(&agent.id).map_err(local)?;
    if !errors.is_empty() {
        return Err(Failure::Local(format!(
            "some steps failed: {}",
            errors.join("; ")
        )));
    }
    agent.dir.clear(false).map_err(local)?;
    println!(
        "removed what the agent applied for interface {}",
        agent.id.interface
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::plan::{Device, Observed, PeerSpec};

    fn config(endpoints: &[&str]) -> pb::NodeConfig {
        pb::NodeConfig {
            peers: endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| pb::Peer {
                    public_key: format!("K{i}"),
                    endpoint: (*e).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn host_name_endpoints_resolve_and_keep_the_address_in_use() {
        let cfg = config(&[
            "localhost:51820",
            "192.0.2.1:51820",
            "",
            "no-such-host.invalid:1",
        ]);
        let got = resolve_endpoints(&cfg, &Observed::default()).await;
        // Only the host name: literal addresses need no lookup, a name that
        // does not resolve is left out (the plan notes it).
        assert_eq!(got.len(), 1, "{got:?}");
        let first = got["localhost:51820"];
        assert!(first.ip().is_loopback() && first.port() == 51820);

        // Every address of the name that the device already uses is kept.
        let all: Vec<std::net::SocketAddr> = tokio::net::lookup_host("localhost:51820")
            .await
            .unwrap()
            .collect();
        let in_use = *all.last().unwrap();
        let have = Observed {
            device: Some(Device {
                peers: [(
                    "K0".to_string(),
                    PeerSpec {
                        endpoint: Some(in_use),
                        allowed_ips: vec![],
                        keepalive: 0,
                    },
                )]
                .into(),
                ..Device::default()
            }),
            ..Observed::default()
        };
        let got = resolve_endpoints(&config(&["localhost:51820"]), &have).await;
        assert_eq!(got["localhost:51820"], in_use);
    }
}
