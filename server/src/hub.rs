//! The hub: every network's config state, kept current by following the
//! event log, and a latest-revision cell per node that config streams wait
//! on.
//!
//! Writers never wait for agents: a write commits (with its event) in the
//! store, nudges the hub, and returns. The hub applies new events in order
//! and bumps the cells of exactly the nodes whose config changed. Each
//! stream, when its cell moves, computes one delta from the revision it last
//! sent to the current one; a slow stream simply skips ahead, so it always
//! ends on the latest config and nothing is ever dropped or queued without
//! bound. Because the hub follows the durable log rather than in-process
//! calls, replicas sharing a database can each run one.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::domain::{
    Error, Result,
    config::{NetworkView, NodeConfig},
    event::{Action, Event, Resource},
    sync::{Affected, Delta, NetworkState},
};
use crate::store::Store;

/// Events read from the store per batch.
const BATCH: usize = 1000;

/// Limits that keep a reconnect storm from sinking the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Config streams open at once.
    pub max_streams: usize,
    /// Config streams one node may hold open at once (two lets an agent
    /// reconnect while the server has not yet noticed its old stream is
    /// gone).
    pub max_streams_per_node: usize,
    /// Snapshots being built at once.
    pub snapshot_concurrency: usize,
    /// How long a stream waits for a snapshot slot before it is told to
    /// retry.
    pub snapshot_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 100_000,
            max_streams_per_node: DEFAULT_STREAMS_PER_NODE,
            snapshot_concurrency: 64,
            snapshot_wait: Duration::from_secs(10),
        }
    }
}

/// Config streams one node may hold by default.
pub const DEFAULT_STREAMS_PER_NODE: usize = 2;

/// Updates a stream may fall behind before the oldest events it owes stop
/// waiting for it (see [`Owed`]).
const MAX_OWED: usize = 256;

/// One event's fan-out, measured when the fan-out histogram is on: held by
/// every node stream it woke (through [`Owed`]); when the last of them has
/// sent an update covering it (or gone away), the slowest send is
/// observed.
struct Fanout {
    applied: Instant,
    /// Microseconds from `applied` to the slowest send so far, plus one (0:
    /// nothing sent yet).
    slowest_us: AtomicU64,
    histogram: Histogram,
}

impl Drop for Fanout {
    fn drop(&mut self) {
        let us = self.slowest_us.load(Ordering::Relaxed);
        if us > 0 {
            self.histogram.observe((us - 1) as f64 / 1e6);
        }
    }
}

/// An event a node's streams have not yet sent an update for.
struct Owed {
    revision: u64,
    fanout: Arc<Fanout>,
}

/// What a node's streams owe, oldest first (one queue per node: the first
/// of its streams to send an update covering an event settles it).
pub struct OwedQueue(std::sync::Mutex<Vec<Owed>>);

impl OwedQueue {
    fn new() -> Arc<Self> {
        Arc::new(OwedQueue(std::sync::Mutex::new(Vec::new())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Owed>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, owed: Owed) {
        let mut q = self.lock();
        if q.len() >= MAX_OWED {
            // A stalled stream stops holding the oldest events open.
            q.remove(0);
        }
        q.push(owed);
    }

    /// A stream of the node has sent an update at `revision`: every event
    /// it covers is settled for this node.
    pub fn sent(&self, revision: u64) {
        let settled: Vec<Owed> = {
            let mut q = self.lock();
            if q.is_empty() {
                return;
            }
            let n = q.partition_point(|o| o.revision <= revision);
            q.drain(..n).collect()
        };
        let now = Instant::now();
        for o in settled {
            let us = now.saturating_duration_since(o.fanout.applied).as_micros() as u64;
            o.fanout.slowest_us.fetch_max(us + 1, Ordering::Relaxed);
        }
    }
}

/// A node's latest-revision cell and what its streams owe.
struct Cell {
    tx: watch::Sender<u64>,
    owed: Arc<OwedQueue>,
}

impl Cell {
    fn new(revision: u64) -> Self {
        Cell {
            tx: watch::Sender::new(revision),
            owed: OwedQueue::new(),
        }
    }
}

#[derive(Default)]
struct State {
    /// Revision of the last event applied.
    cursor: u64,
    networks: HashMap<String, NetworkState>,
    node_network: HashMap<String, String>,
    /// Latest config revision per node; streams watch these. Kept current
    /// only while a stream watches (see `listening`); [`Hub::subscribe`]
    /// brings a cell up to date before it hands it out.
    cells: HashMap<String, Cell>,
    /// Per network, the nodes whose cells a stream may be watching (pruned
    /// when their last stream has gone): an event wakes these, so its cost
    /// grows with the streams it reaches, not with the network's nodes.
    listening: HashMap<String, HashSet<String>>,
}

/// What a config stream sends next.
#[derive(Debug, Clone)]
pub enum Update {
    /// The whole config.
    Snapshot(NodeConfig),
    /// The changes since the revision sent last.
    Delta(Delta),
}

impl Update {
    /// Revision after the update.
    pub fn revision(&self) -> u64 {
        match self {
            Update::Snapshot(s) => s.revision,
            Update::Delta(d) => d.revision,
        }
    }
}

/// What the hub knows of a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// A name of a network's zone (the zone apex has no addresses).
    Found(crate::domain::config::DnsRecord),
    /// Inside a network's zone, but no such name.
    NoSuchName,
    /// Outside every zone.
    NotOurs,
}

/// Counts an open config stream (in all and for its node) until dropped.
pub struct StreamGuard {
    total: Arc<AtomicUsize>,
    per_node: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    node: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_node = self.per_node.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_node.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                per_node.remove(&self.node);
            }
        }
    }
}

/// See the module documentation.
pub struct Hub {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    /// Nodes streaming from any replica, as shared presence last said.
    present: RwLock<HashSet<String>>,
    /// Of those, the ones not streaming from this replica when it said so
    /// (those are known here at once: see [`Hub::up`]).
    elsewhere: RwLock<HashSet<String>>,
    /// What the failover watch saw of egress gateways' presence (also read
    /// by ExplainRoute).
    pub egress_presence: std::sync::Mutex<crate::failover::Presence>,
    /// The newest revision other replicas announced (0: none, or unknown).
    announced: std::sync::atomic::AtomicU64,
    catching_up: Mutex<()>,
    nudge: Notify,
    latest: watch::Sender<u64>,
    streams: Arc<AtomicUsize>,
    /// Config streams open per node.
    per_node: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    snapshots: Arc<Semaphore>,
    limits: Limits,
    /// Where fan-out latencies go (set when metrics are on).
    fanout: std::sync::OnceLock<Histogram>,
}

impl Hub {
    /// Loads every network from the store, consistently with the event log.
    pub async fn load(store: Arc<dyn Store>, limits: Limits) -> Result<Arc<Hub>> {
        let (cursor, views) = store.load_all().await?;
        let state = State::from_views(cursor, views, HashMap::new());
        Ok(Arc::new(Hub {
            store,
            state: RwLock::new(state),
            present: RwLock::new(HashSet::new()),
            elsewhere: RwLock::new(HashSet::new()),
            egress_presence: std::sync::Mutex::new(crate::failover::Presence::default()),
            announced: std::sync::atomic::AtomicU64::new(0),
            catching_up: Mutex::new(()),
            nudge: Notify::new(),
            latest: watch::Sender::new(cursor),
            streams: Arc::new(AtomicUsize::new(0)),
            per_node: Arc::default(),
            snapshots: Arc::new(Semaphore::new(limits.snapshot_concurrency)),
            limits,
            fanout: std::sync::OnceLock::new(),
        }))
    }

    /// Measures fan-out from now on: for each event that wakes config
    /// streams, the time from the hub applying it to the last woken node
    /// having been sent an update covering it goes into `histogram`.
    pub fn measure_fanout(&self, histogram: Histogram) {
        let _ = self.fanout.set(histogram);
    }

    /// Revision of the last event applied.
    pub fn cursor(&self) -> u64 {
        self.read().cursor
    }

    /// Tells the follower new events are there.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Follows the event log until `stop` flips: applies new events when
    /// nudged (by this process's writes, or by other replicas' through the
    /// store's notifications), and at least every `poll` as a fallback. While
    /// the notification channel is up, the fallback poll is 10 times slower.
    pub fn spawn_follower(
        self: &Arc<Self>,
        poll: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        let listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = tokio::spawn(Self::listen(hub.clone(), listening.clone(), stop.clone()));
        tokio::spawn(async move {
            let _listener = AbortOnDrop(listener);
            loop {
                let wait = if listening.load(Ordering::Relaxed) {
                    poll.saturating_mul(10)
                } else {
                    poll
                };
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = hub.nudge.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                if let Err(e) = hub.catch_up().await {
                    tracing::warn!(error = %e, "following the event log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
    }

    /// Nudges the follower whenever the store announces a revision newer
    /// than the hub's; reconnects (after a pause) when the channel drops,
    /// and nudges then too, since announcements may have been lost.
    async fn listen(
        hub: Arc<Hub>,
        listening: Arc<std::sync::atomic::AtomicBool>,
        stop: watch::Receiver<bool>,
    ) {
        use futures::StreamExt;
        while !*stop.borrow() {
            match hub.store.notifications().await {
                Ok(None) => return,
                Ok(Some(mut stream)) => {
                    listening.store(true, Ordering::Relaxed);
                    hub.nudge();
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(rev) if rev != 0 && rev <= hub.read().cursor => {}
                            Ok(rev) => {
                                hub.announced.fetch_max(rev, Ordering::Relaxed);
                                hub.nudge();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "change notifications failed");
                                break;
                            }
                        }
                    }
                    listening.store(false, Ordering::Relaxed);
                    hub.nudge();
                }
                Err(e) => tracing::warn!(error = %e, "listening for changes failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Applies every event newer than what the hub holds. Revisions are
    /// dense and commit in order (see [`Store::events_after`]), and pruning
    /// removes only a prefix, so the next event is always `cursor + 1`;
    /// when it is not, the events the hub needed were pruned while it was
    /// behind, and it reloads everything from the store (streams then get
    /// snapshots).
    pub async fn catch_up(&self) -> Result<()> {
        let _one = self.catching_up.lock().await;
        self.follow().await
    }

    /// [`Hub::catch_up`] for a caller that knows the log holds `revision`
    /// (a write it just committed): nothing to read when the hub has applied
    /// that far already — as it has, usually, for all but the first of the
    /// writes a batch committed together, which the first one's read
    /// brought in.
    pub async fn catch_up_to(&self, revision: u64) -> Result<()> {
        if self.read().cursor >= revision {
            return Ok(());
        }
        let _one = self.catching_up.lock().await;
        if self.read().cursor >= revision {
            return Ok(());
        }
        self.follow().await
    }

    /// Reads and applies events until a read comes back short: since
    /// revisions commit in order, a short read held every event committed
    /// before it began.
    async fn follow(&self) -> Result<()> {
        loop {
            let cursor = self.read().cursor;
            let events = self.store.events_after(cursor, BATCH).await?;
            if events.is_empty() {
                return Ok(());
            }
            if events[0].revision > cursor + 1 {
                // Pruning only ever removes a prefix of the log: the
                // events this hub needed are gone for good.
                tracing::warn!(
                    cursor,
                    next = events[0].revision,
                    "events this replica needed were pruned; reloading the whole state"
                );
                self.reload().await?;
                continue;
            }
            let last = events.last().map(|e| e.revision).unwrap_or(cursor);
            {
                let fanout = self.fanout.get().map(|h| (h, Instant::now()));
                let mut st = self.write();
                for ev in &events {
                    st.apply(ev, fanout);
                }
                st.cursor = last;
            }
            self.latest.send_replace(last);
            if events.len() < BATCH {
                return Ok(());
            }
        }
    }

    /// Replaces the whole state with a fresh load; nodes that still exist
    /// keep their cells (their streams stay open and get snapshots), gone
    /// ones lose them (their streams end).
    async fn reload(&self) -> Result<()> {
        let (cursor, views) = self.store.load_all().await?;
        {
            let mut st = self.write();
            let cells = std::mem::take(&mut st.cells);
            *st = State::from_views(cursor, views, cells);
        }
        self.latest.send_replace(cursor);
        Ok(())
    }

    /// Records which nodes stream from any replica (from shared presence),
    /// `here` being those this replica recorded in that round.
    pub fn set_present(&self, nodes: impl IntoIterator<Item = String>, here: &[String]) {
        let set: HashSet<String> = nodes.into_iter().collect();
        let here: HashSet<&String> = here.iter().collect();
        let elsewhere = set.iter().filter(|n| !here.contains(n)).cloned().collect();
        *self.present.write().unwrap_or_else(|p| p.into_inner()) = set;
        *self.elsewhere.write().unwrap_or_else(|p| p.into_inner()) = elsewhere;
    }

    /// Whether a config stream of the node is open: on this replica as of
    /// now, or on another as shared presence last said. Unlike
    /// [`Hub::connected`], a stream that closed here counts as gone at
    /// once, not at the next presence round (a node streaming from two
    /// replicas, this one among them, may count as gone until then).
    pub fn up(&self, node_id: &str) -> bool {
        self.read()
            .cells
            .get(node_id)
            .is_some_and(|c| c.tx.receiver_count() > 0)
            || self
                .elsewhere
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(node_id)
    }

    /// Nodes with a config stream open on this replica.
    pub fn streaming_here(&self) -> Vec<String> {
        self.read()
            .cells
            .iter()
            .filter(|(_, c)| c.tx.receiver_count() > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest event revision applied, as a cell to wait on.
    pub fn latest(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// A node's latest-revision cell, and the queue of events its streams
    /// owe an update for (see [`OwedQueue::sent`]); None when the node does
    /// not exist.
    pub fn subscribe(&self, node_id: &str) -> Option<(watch::Receiver<u64>, Arc<OwedQueue>)> {
        let mut st = self.write();
        let st = &mut *st;
        let network = st.node_network.get(node_id)?;
        let revision = st.networks.get(network)?.node_revision(node_id)?;
        let cell = st.cells.get(node_id)?;
        // Nobody may have watched it for a while: bring it up to date
        // (under the write lock, so no event slips in between).
        cell.tx.send_if_modified(|v| {
            let moved = *v != revision;
            *v = revision;
            moved
        });
        st.listening
            .entry(network.clone())
            .or_default()
            .insert(node_id.to_owned());
        Some((cell.tx.subscribe(), cell.owed.clone()))
    }

    /// Whether a config stream of the node is open, on this replica or (as
    /// shared presence last said) on another.
    pub fn connected(&self, node_id: &str) -> bool {
        self.read()
            .cells
            .get(node_id)
            .is_some_and(|c| c.tx.receiver_count() > 0)
            || self
                .present
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(node_id)
    }

    /// The revision of a node's current config.
    pub fn node_revision(&self, node_id: &str) -> Option<u64> {
        let st = self.read();
        let net = st.node_network.get(node_id)?;
        st.networks.get(net)?.node_revision(node_id)
    }

    /// A network's current state as a plain view (what its configs are
    /// computed from); None when there is no such network.
    pub fn network_view(&self, network: &str) -> Option<NetworkView> {
        self.read().networks.get(network).map(NetworkState::view)
    }

    /// Every egress range several gateways of a network serve: the network,
    /// the range, and the gateways (copied; their host reports left out).
    pub fn shared_ranges(&self) -> Vec<(String, ipnet::IpNet, Vec<crate::domain::node::Node>)> {
        let st = self.read();
        st.networks
            .iter()
            .flat_map(|(name, n)| {
                n.shared_ranges()
                    .into_iter()
                    .map(move |(r, g)| (name.clone(), r, g.into_iter().cloned().collect()))
            })
            .collect()
    }

    /// Whether another replica announced a revision this hub has not
    /// applied yet.
    pub fn behind(&self) -> bool {
        self.announced.load(Ordering::Relaxed) > self.read().cursor
    }

    /// One network as the hub holds it.
    pub fn network(&self, name: &str) -> Option<crate::domain::network::Network> {
        self.read().networks.get(name).map(|n| n.network().clone())
    }

    /// A node's whole config.
    pub fn snapshot(&self, node_id: &str) -> Option<NodeConfig> {
        let st = self.read();
        let net = st.node_network.get(node_id)?;
        st.networks.get(net)?.snapshot(node_id)
    }

    /// Looks a name up in the networks' zones (`name` without trailing dot,
    /// any case). Answers follow the store: the hub applies every change.
    pub fn dns_lookup(&self, name: &str) -> DnsAnswer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let zone = name.rsplit('.').next().unwrap_or_default();
        let st = self.read();
        let Some(net) = st.networks.get(zone) else {
            return DnsAnswer::NotOurs;
        };
        if name == zone {
            return DnsAnswer::Found(crate::domain::config::DnsRecord {
                name,
                address: None,
                address6: None,
            });
        }
        match net.dns_record(&name) {
            Some(r) => DnsAnswer::Found(r.clone()),
            None => DnsAnswer::NoSuchName,
        }
    }

    /// Upstream resolvers for a query from `src`: the nameservers of the
    /// network whose range holds `src`, else every network's nameservers (in
    /// network name order, without repeats).
    pub fn upstreams_for(&self, src: std::net::IpAddr) -> Vec<std::net::IpAddr> {
        let st = self.read();
        let mut names: Vec<&String> = st.networks.keys().collect();
        names.sort();
        if let Some(n) = names.iter().find(|n| {
            st.networks[n.as_str()]
                .network()
                .ranges()
                .any(|r| r.contains(&src))
        }) {
            return st.networks[n.as_str()].network().nameservers.clone();
        }
        let mut out = Vec::new();
        for n in names {
            for ns in &st.networks[n.as_str()].network().nameservers {
                if !out.contains(ns) {
                    out.push(*ns);
                }
            }
        }
        out
    }

    /// Counts a new config stream of `node`; RESOURCE_EXHAUSTED past the
    /// server's limit or the node's.
    pub fn admit(&self, node: &str) -> Result<StreamGuard> {
        {
            let mut per_node = self.per_node.lock().unwrap_or_else(|p| p.into_inner());
            let held = per_node.entry(node.to_owned()).or_insert(0);
            let most = self.limits.max_streams_per_node.max(1);
            if *held >= most {
                return Err(Error::ResourceExhausted(format!(
                    "node {node} already holds {held} config streams, the most one node may \
                     hold at once ({most}); close one first"
                )));
            }
            *held += 1;
        }
        // Seen up now, even if its stream closes before the failover
        // watch's next round looks.
        self.egress_presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saw_up(node, crate::domain::now());
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        let guard = StreamGuard {
            total: self.streams.clone(),
            per_node: self.per_node.clone(),
            node: node.to_owned(),
        };
        if n >= self.limits.max_streams {
            return Err(Error::ResourceExhausted(format!(
                "this server holds its limit of {} config streams; retry with backoff",
                self.limits.max_streams
            )));
        }
        Ok(guard)
    }

    /// Config streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Nodes with at least one config stream open on this replica.
    pub fn connected_here(&self) -> usize {
        self.per_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// What a node holding revision `from` (0: nothing) needs next: a delta
    /// when one can be computed, else a snapshot, built under the snapshot
    /// concurrency limit. None when the node is gone.
    pub async fn update_since(&self, node_id: &str, from: u64) -> Result<Option<Update>> {
        if from != 0 {
            let st = self.read();
            let Some(net) = st.node_network.get(node_id) else {
                return Ok(None);
            };
            if let Some(d) = st.networks.get(net).and_then(|n| n.delta(node_id, from)) {
                return Ok(Some(Update::Delta(d)));
            }
        }
        let _permit: OwnedSemaphorePermit = tokio::time::timeout(
            self.limits.snapshot_wait,
            self.snapshots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            Error::ResourceExhausted(
                "too many agents are fetching full configs at once; retry shortly".into(),
            )
        })?
        .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        Ok(self.snapshot(node_id).map(Update::Snapshot))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl State {
    /// The state of a fresh load at `cursor`, reusing `cells` of nodes that
    /// still exist (moved to their network's revision).
    fn from_views(cursor: u64, views: Vec<NetworkView>, mut cells: HashMap<String, Cell>) -> State {
        let mut state = State {
            cursor,
            ..Default::default()
        };
        for view in views {
            for n in &view.nodes {
                state
                    .node_network
                    .insert(n.id.clone(), view.network.name.to_string());
                let cell = match cells.remove(&n.id) {
                    Some(c) => {
                        c.tx.send_replace(view.revision);
                        if c.tx.receiver_count() > 0 {
                            state
                                .listening
                                .entry(view.network.name.to_string())
                                .or_default()
                                .insert(n.id.clone());
                        }
                        c
                    }
                    None => Cell::new(view.revision),
                };
                state.cells.insert(n.id.clone(), cell);
            }
            state
                .networks
                .insert(view.network.name.to_string(), NetworkState::from_view(view));
        }
        state
    }

    /// Applies one event and bumps the cells of the nodes whose config it
    /// changed; with `fanout` (the histogram and when the batch was
    /// applied), the nodes streaming here owe the event an update.
    fn apply(&mut self, ev: &Event, fanout: Option<(&Histogram, Instant)>) {
        let Some(net) = ev.resource.network() else {
            return;
        };
        match (&ev.resource, ev.action) {
            (Resource::Network(n), Action::Created) => {
                self.networks.entry(net).or_insert_with(|| {
                    NetworkState::from_view(NetworkView {
                        network: n.clone(),
                        nodes: vec![],
                        ext_clients: vec![],
                        dns_entries: vec![],
                        revision: ev.revision,
                        policy: Default::default(),
                    })
                });
                return;
            }
            (Resource::Network(_), Action::Deleted) => {
                self.listening.remove(&net);
                if let Some(state) = self.networks.remove(&net) {
                    for id in state.node_ids() {
                        self.node_network.remove(id);
                        // Dropping the cell ends the node's streams.
                        self.cells.remove(id);
                    }
                }
                return;
            }
            _ => {}
        }
        let Some(state) = self.networks.get_mut(&net) else {
            return;
        };
        let affected = state.apply(ev);
        if let Resource::Node(n) = &ev.resource {
            match ev.action {
                Action::Deleted => {
                    self.node_network.remove(&n.id);
                    self.cells.remove(&n.id);
                }
                _ => {
                    self.node_network.insert(n.id.clone(), net.clone());
                    self.cells
                        .entry(n.id.clone())
                        .or_insert_with(|| Cell::new(ev.revision));
                }
            }
        }
        if affected == Affected::Nobody {
            return;
        }
        let Some(listening) = self.listening.get_mut(&net) else {
            return;
        };
        let cells = &self.cells;
        let mut measured: Option<Arc<Fanout>> = None;
        let mut wake = |id: &str, cell: &Cell| {
            let Some(rev) = state.node_revision(id) else {
                return;
            };
            cell.tx.send_replace(rev);
            if let Some((histogram, applied)) = fanout {
                let f = measured.get_or_insert_with(|| {
                    Arc::new(Fanout {
                        applied,
                        slowest_us: AtomicU64::new(0),
                        histogram: histogram.clone(),
                    })
                });
                cell.owed.push(Owed {
                    revision: rev,
                    fanout: f.clone(),
                });
            }
        };
        match &affected {
            // A few nodes of many streaming (a node joining a large network
            // under a policy): look only at them.
            Affected::Some(ids) if ids.len() < listening.len() => {
                for id in ids {
                    if let Some(cell) = cells.get(id)
                        && cell.tx.receiver_count() > 0
                        && listening.contains(id)
                    {
                        wake(id, cell);
                    }
                }
            }
            _ => listening.retain(|id| {
                let Some(cell) = cells.get(id) else {
                    return false;
                };
                if cell.tx.receiver_count() == 0 {
                    // Its last stream has gone; a new one subscribes afresh.
                    return false;
                }
                if affected.contains(id) {
                    wake(id, cell);
                }
                true
            }),
        }
    }
}
