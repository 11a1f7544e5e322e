//! A deterministic simulation of a clusterset in one thread (STYLE §3, tier "simulation"):
//! several gateways' sync sessions (`sync::proto::ClusterSession`, the real core) and a
//! broker (`broker::state::BrokerState`, the real pure state, over the in-memory store) joined
//! by simulated links, on a virtual clock, with everything random drawn from one seed.
//!
//! What it does not cover yet: the broker's session protocol runs here in [`SimBroker`], a
//! small stand-in for `broker::server::StateDriver` (Hello → Snapshot or resume Delta, Publish
//! → commit and broadcast, lease ticks from `BrokerState::poll_timeout`), because that
//! protocol still lives in the QUIC shell; once it is extracted as a sans-IO `BrokerCore`, the
//! sim should drive that instead. Group commit, lost races between replicas and slow-session
//! handling are not simulated, and neither are the gateway's health probes.
//!
//! Links are reliable and ordered while up, as QUIC streams are: "loss" is a connection that
//! drops (both ends see it; in-flight messages are lost), "delay" is per-message latency, and
//! a partition keeps a gateway from reconnecting until it heals. The broker may restart
//! (losing its sessions and resume log, keeping its store).
//!
//! Invariants, checked after every step ([`World::check`]):
//! - nobody imports an endpoint nobody exports, and only the owning cluster changes its
//!   records: every export in the broker's records and in every gateway's view is one its
//!   cluster published;
//! - DNS answers only addresses that some export in the answering gateway's knowledge offers
//!   as ready;
//! - after the network heals and goes quiet, every gateway holds the broker's view, and the
//!   broker holds every gateway's current exports ([`World::check_converged`]).
//!
//! Replay a failing seed with `CAUSEWAY_SIM_SEED=<seed> cargo test -p causeway --lib
//! sim::tests::replay -- --ignored --nocapture`; `bench/sim.sh` runs many seeds.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::broker::state::{BrokerState, SessionOrigin, StateConfig};
use crate::broker::store::{MemStore, Store};
use crate::model::{
    ClusterId, ClusterInfo, Endpoint, Export, ServiceKey, ServiceKind, ServiceProps,
};
use crate::select::Health;
use crate::sync::proto::{Backoff, ClusterSession, SessionEvent};
use crate::sync::wire::{BrokerMessage, Change, ClientMessage, Delta};

/// The seeded random source: SplitMix64 (small, fast, good enough for choosing events).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub gateways: usize,
    /// Random actions (export changes, drops, partitions, restarts) before healing.
    pub actions: usize,
    /// Per mille of actions that drop a gateway's connection.
    pub drop_per_mille: u64,
    /// Per mille of actions that partition a gateway for a while.
    pub partition_per_mille: u64,
    /// Per mille of actions that restart the broker.
    pub restart_per_mille: u64,
    /// Largest one-way message latency.
    pub max_delay: Duration,
    /// The broker's lease rules (short leases exercise withholding and restoring).
    pub rules: StateConfig,
    /// A deliberate bug, to show that the invariants catch one: the broker's broadcast
    /// Deltas carry each `RemoveExport` as a harmless `UpsertCluster`, so the revision count
    /// stays right and gateways keep the removed export. (Skipping a broadcast, or a wrong
    /// resume, would not do: the next Delta's revision gap makes the gateway resync.)
    pub bug_broadcast_keeps_removed_exports: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            gateways: 3,
            actions: 60,
            drop_per_mille: 120,
            partition_per_mille: 60,
            restart_per_mille: 30,
            max_delay: Duration::from_millis(80),
            rules: StateConfig {
                lease: Duration::from_secs(3),
                ..StateConfig::default()
            },
            bug_broadcast_keeps_removed_exports: false,
        }
    }
}

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} step {}: {} (replay: CAUSEWAY_SIM_SEED={} cargo test -p causeway --lib \
             sim::tests::replay -- --ignored --nocapture)",
            self.seed, self.step, self.what, self.seed
        )
    }
}

/// Runs one seed: random actions, then heal and quiet, checking every step.
pub fn run(seed: u64, config: &SimConfig) -> Result<u64, Violation> {
    let mut world = World::new(seed, config.clone());
    for _ in 0..config.actions {
        world.act();
        // Let a little time pass between actions.
        let until = world.now + Duration::from_millis(world.rng.below(400));
        world.run_until(until)?;
    }
    world.heal();
    world.run_until(world.now + Duration::from_secs(60))?;
    world.check_converged()?;
    Ok(world.step)
}

#[derive(Debug)]
enum Event {
    /// A gateway tries to connect.
    Connect { gw: usize },
    ToBroker {
        gw: usize,
        conn: u64,
        msg: ClientMessage,
    },
    ToGateway {
        gw: usize,
        conn: u64,
        msg: BrokerMessage,
    },
    /// The broker's lease timer (`BrokerState::poll_timeout`).
    Tick,
}

struct SimGateway {
    id: ClusterId,
    session: ClusterSession,
    exports: Vec<Export>,
    /// The current connection's id, if connected.
    conn: Option<u64>,
    backoff: Backoff,
    /// No connection succeeds before this.
    partitioned_until: Instant,
    /// When the last message on each direction of the current connection arrives, to keep
    /// the link in order.
    last_up: Instant,
    last_down: Instant,
}

/// The broker's session protocol over the real `BrokerState` and `MemStore` (a stand-in for
/// `StateDriver`, see the module doc).
struct SimBroker {
    state: BrokerState,
    store: MemStore,
    /// gateway → (connection, whether its Hello was accepted).
    sessions: BTreeMap<usize, (u64, bool)>,
    commits: u64,
}

pub struct World {
    seed: u64,
    config: SimConfig,
    rng: Rng,
    now: Instant,
    step: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    next_seq: u64,
    next_conn: u64,
    tick_at: Option<Instant>,
    gateways: Vec<SimGateway>,
    broker: SimBroker,
    /// Every export each cluster ever published.
    published: BTreeMap<ClusterId, HashSet<Export>>,
    trace: bool,
}

impl World {
    pub fn new(seed: u64, config: SimConfig) -> Self {
        let now = crate::clock::now();
        let mut rng = Rng::new(seed);
        let gateways: Vec<SimGateway> = (0..config.gateways)
            .map(|i| {
                let id = ClusterId::new(format!("c{}", i + 1)).expect("a DNS label");
                let exports = random_exports(&mut rng, i);
                SimGateway {
                    session: ClusterSession::new(cluster_info(&id, i), exports.clone()),
                    id,
                    exports,
                    conn: None,
                    backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
                    partitioned_until: now,
                    last_up: now,
                    last_down: now,
                }
            })
            .collect();
        let store = MemStore::new(1);
        let state = BrokerState::new(
            store.load().expect("the memory store loads"),
            config.rules.clone(),
            now,
        );
        let mut world = Self {
            seed,
            config,
            rng,
            now,
            step: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            next_conn: 0,
            tick_at: None,
            gateways,
            broker: SimBroker {
                state,
                store,
                sessions: BTreeMap::new(),
                commits: 0,
            },
            published: BTreeMap::new(),
            trace: false,
        };
        for gw in 0..world.gateways.len() {
            world.record_published(gw);
            world.schedule(now, Event::Connect { gw });
        }
        world
    }

    /// Prints every event (for replays).
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on;
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.events.insert(seq, event);
    }

    fn delay(&mut self) -> Duration {
        Duration::from_micros(self.rng.below(self.config.max_delay.as_micros() as u64 + 1))
    }

    fn record_published(&mut self, gw: usize) {
        let g = &self.gateways[gw];
        self.published
            .entry(g.id.clone())
            .or_default()
            .extend(g.exports.iter().cloned());
    }

    /// One random action at the current time.
    fn act(&mut self) {
        let gw = self.rng.below(self.gateways.len() as u64) as usize;
        let roll = self.rng.below(1000);
        let (drop, partition, restart) = (
            self.config.drop_per_mille,
            self.config.partition_per_mille,
            self.config.restart_per_mille,
        );
        if roll < drop {
            self.trace_line(format_args!("action: drop c{}'s connection", gw + 1));
            self.disconnect(gw);
        } else if roll < drop + partition {
            let length = Duration::from_millis(500 + self.rng.below(6000));
            self.trace_line(format_args!("action: partition c{} for {length:?}", gw + 1));
            self.gateways[gw].partitioned_until = self.now + length;
            self.disconnect(gw);
        } else if roll < drop + partition + restart {
            self.trace_line(format_args!("action: restart the broker"));
            self.restart_broker();
        } else {
            let exports = random_exports(&mut self.rng, gw);
            self.trace_line(format_args!(
                "action: c{} exports {} services",
                gw + 1,
                exports.len()
            ));
            self.gateways[gw].exports = exports.clone();
            self.record_published(gw);
            self.gateways[gw].session.set_exports(exports);
            self.flush(gw);
        }
    }

    /// Ends every partition; from now on nothing is dropped.
    fn heal(&mut self) {
        self.trace_line(format_args!("heal"));
        for g in &mut self.gateways {
            g.partitioned_until = self.now;
        }
    }

    fn run_until(&mut self, until: Instant) -> Result<(), Violation> {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            let event = self
                .events
                .remove(&seq)
                .expect("every queued event is stored");
            self.now = self.now.max(at);
            self.step += 1;
            self.handle(event);
            self.arm_tick();
            self.check()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connect { gw } => self.connect(gw),
            Event::ToBroker { gw, conn, msg } => {
                if self.broker.sessions.get(&gw).map(|s| s.0) == Some(conn) {
                    self.trace_line(format_args!("c{} → broker: {}", gw + 1, kind_of(&msg)));
                    self.broker_handle(gw, conn, msg);
                }
            }
            Event::ToGateway { gw, conn, msg } => {
                if self.gateways[gw].conn == Some(conn) {
                    self.trace_line(format_args!("broker → c{}: {}", gw + 1, kind_of_b(&msg)));
                    self.gateways[gw].session.handle_message(msg);
                    self.drain_events(gw);
                    self.flush(gw);
                }
            }
            Event::Tick => {
                self.tick_at = None;
                let changes = self.broker.state.handle_timeout(self.now);
                self.commit(changes, None);
            }
        }
    }

    fn connect(&mut self, gw: usize) {
        let g = &mut self.gateways[gw];
        if g.conn.is_some() {
            return;
        }
        if self.now < g.partitioned_until {
            let retry = self.now + g.backoff.next_delay();
            self.schedule(retry, Event::Connect { gw });
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let g = &mut self.gateways[gw];
        g.conn = Some(conn);
        g.last_up = self.now;
        g.last_down = self.now;
        g.session.handle_connected();
        self.broker.sessions.insert(gw, (conn, false));
        self.trace_line(format_args!("c{} connects (conn {conn})", gw + 1));
        self.flush(gw);
    }

    /// Both ends see the connection end; a reconnect is scheduled.
    fn disconnect(&mut self, gw: usize) {
        if self.gateways[gw].conn.take().is_none() {
            return;
        }
        self.gateways[gw].session.handle_disconnected();
        self.drain_events(gw);
        if let Some((_, true)) = self.broker.sessions.remove(&gw) {
            let id = self.gateways[gw].id.clone();
            self.broker.state.handle_session_end(&id, self.now);
        }
        let retry = self.now + self.gateways[gw].backoff.next_delay();
        self.schedule(retry, Event::Connect { gw });
    }

    fn restart_broker(&mut self) {
        for gw in 0..self.gateways.len() {
            self.disconnect(gw);
        }
        let persisted = self.broker.store.load().expect("the memory store loads");
        self.broker.state = BrokerState::new(persisted, self.config.rules.clone(), self.now);
        self.broker.sessions.clear();
        self.tick_at = None;
    }

    fn drain_events(&mut self, gw: usize) {
        while let Some(event) = self.gateways[gw].session.poll_event() {
            if let SessionEvent::ResyncNeeded { .. } = event {
                // As the QUIC shell does: reconnect without a resume point.
                self.disconnect(gw);
            }
        }
    }

    /// Sends what the gateway's session queued.
    fn flush(&mut self, gw: usize) {
        let Some(conn) = self.gateways[gw].conn else {
            return;
        };
        while let Some(msg) = self.gateways[gw].session.poll_transmit() {
            let at = (self.now + self.delay()).max(self.gateways[gw].last_up);
            self.gateways[gw].last_up = at;
            self.schedule(at, Event::ToBroker { gw, conn, msg });
        }
    }

    fn send(&mut self, gw: usize, msg: BrokerMessage) {
        let Some(&(conn, _)) = self.broker.sessions.get(&gw) else {
            return;
        };
        let at = (self.now + self.delay()).max(self.gateways[gw].last_down);
        self.gateways[gw].last_down = at;
        self.schedule(at, Event::ToGateway { gw, conn, msg });
    }

    fn broker_handle(&mut self, gw: usize, conn: u64, msg: ClientMessage) {
        // The sim knows each connection's certificate: the gateway's own id.
        let cert = self.gateways[gw].id.clone();
        let hello_done = self.broker.sessions.get(&gw).is_some_and(|s| s.1);
        match msg {
            ClientMessage::Hello(hello) => match self.broker.state.handle_hello(
                &cert,
                &hello,
                &SessionOrigin {
                    broker: vec![],
                    // Each gateway's session comes from its own endpoint's address.
                    observed: Some(cluster_info(&cert, gw).wg_endpoint.ip()),
                },
            ) {
                Ok(changes) => {
                    self.commit(changes, Some(gw));
                    self.broker.state.handle_session_start(&cert, self.now);
                    self.broker.sessions.insert(gw, (conn, true));
                    let state = &self.broker.state;
                    let reply = match hello
                        .resume
                        .and_then(|r| state.changes_since(r.epoch, r.revision))
                    {
                        Some(changes) => BrokerMessage::Delta(Delta {
                            epoch: state.epoch(),
                            revision: state.revision(),
                            changes,
                        }),
                        None => BrokerMessage::Snapshot(state.snapshot()),
                    };
                    self.send(gw, reply);
                }
                Err(reason) => self.send(gw, BrokerMessage::Rejected { reason }),
            },
            ClientMessage::Publish(publish) if hello_done => {
                match self.broker.state.handle_publish(&cert, &publish) {
                    Ok(changes) => self.commit(changes, None),
                    Err(reason) => self.send(gw, BrokerMessage::Rejected { reason }),
                }
            }
            ClientMessage::Publish(_) | ClientMessage::Ack { .. } => {}
        }
    }

    /// Persists and applies `changes`, then sends them as a Delta to every session whose
    /// Hello was accepted (but `except`, which gets its own answer).
    fn commit(&mut self, changes: Vec<Change>, except: Option<usize>) {
        if changes.is_empty() {
            return;
        }
        let b = &mut self.broker;
        let revision = b.state.revision() + changes.len() as u64;
        b.store
            .apply(&changes, revision)
            .expect("the memory store applies");
        b.state.apply(&changes);
        b.commits += 1;
        let changes = if self.config.bug_broadcast_keeps_removed_exports {
            let clusters = b.state.snapshot().clusters;
            changes
                .into_iter()
                .map(|change| match change {
                    Change::RemoveExport { cluster, .. } => clusters
                        .iter()
                        .find(|c| c.id == cluster)
                        .map_or(Change::RemoveCluster(cluster), |c| {
                            Change::UpsertCluster(c.clone())
                        }),
                    other => other,
                })
                .collect()
        } else {
            changes
        };
        let delta = Delta {
            epoch: b.state.epoch(),
            revision,
            changes,
        };
        let targets: Vec<usize> = b
            .sessions
            .iter()
            .filter(|(gw, (_, hello))| *hello && Some(**gw) != except)
            .map(|(gw, _)| *gw)
            .collect();
        for gw in targets {
            self.send(gw, BrokerMessage::Delta(delta.clone()));
        }
    }

    /// Keeps a Tick queued at the broker's `poll_timeout`.
    fn arm_tick(&mut self) {
        let Some((at, _why)) = self.broker.state.poll_timeout() else {
            return;
        };
        if self.tick_at.is_none_or(|t| at < t) {
            self.tick_at = Some(at);
            self.schedule(at.max(self.now), Event::Tick);
        }
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            what,
        }
    }

    /// The invariants that hold after every step.
    pub fn check(&self) -> Result<(), Violation> {
        let published = |cluster: &ClusterId, export: &Export| {
            self.published
                .get(cluster)
                .is_some_and(|set| set.contains(export))
        };
        for (cluster, export) in self.broker.state.snapshot().exports {
            if !published(&cluster, &export) {
                return Err(self.violation(format!(
                    "the broker holds an export of {} that {cluster} never published: {export:?}",
                    export.service
                )));
            }
        }
        for g in &self.gateways {
            let view = g.session.view();
            for ((cluster, service), export) in &view.exports {
                if !published(cluster, export) {
                    return Err(self.violation(format!(
                        "{} imports {service} of {cluster}, which {cluster} never published",
                        g.id
                    )));
                }
            }
            // DNS answers only addresses some export it knows offers as ready.
            let offered: BTreeSet<IpAddr> = g
                .exports
                .iter()
                .chain(view.exports.values())
                .flat_map(|e| e.endpoints.iter().filter(|p| p.ready).map(|p| p.address))
                .collect();
            let services =
                crate::answers::dns_services(&g.id, &g.exports, view, &Health::default());
            for service in &services {
                for address in service.tiers.iter().flatten() {
                    if !offered.contains(address) {
                        return Err(self.violation(format!(
                            "{}'s DNS answers {address} for {}/{}, which no export offers ready",
                            g.id, service.namespace, service.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// After healing and quiet: every gateway is connected, holds the broker's view, and the
    /// broker holds every gateway's current exports.
    pub fn check_converged(&self) -> Result<(), Violation> {
        let snapshot = self.broker.state.snapshot();
        let held: BTreeMap<(ClusterId, ServiceKey), Export> = snapshot
            .exports
            .into_iter()
            .map(|(c, e)| ((c, e.service.clone()), e))
            .collect();
        for g in &self.gateways {
            if !g.session.is_live() {
                return Err(self.violation(format!("{} is not live after healing", g.id)));
            }
            let mine: BTreeMap<&ServiceKey, &Export> = held
                .iter()
                .filter(|((c, _), _)| *c == g.id)
                .map(|((_, s), e)| (s, e))
                .collect();
            let current: BTreeMap<&ServiceKey, &Export> =
                g.exports.iter().map(|e| (&e.service, e)).collect();
            if mine != current {
                return Err(self.violation(format!(
                    "the broker holds {} of {}'s services, it exports {}",
                    mine.len(),
                    g.id,
                    current.len()
                )));
            }
            if g.session.view().exports != held {
                return Err(self.violation(format!(
                    "{}'s view ({} exports, revision {}) differs from the broker's ({} exports, \
                     revision {})",
                    g.id,
                    g.session.view().exports.len(),
                    g.session.view().revision,
                    held.len(),
                    self.broker.state.revision()
                )));
            }
        }
        Ok(())
    }

    fn trace_line(&self, line: std::fmt::Arguments<'_>) {
        if self.trace {
            let at = self.now.saturating_duration_since(self.base());
            println!("[{:>9.3}s #{}] {line}", at.as_secs_f64(), self.step);
        }
    }

    fn base(&self) -> Instant {
        // The first gateway's backoff start is as good a base as any for relative times.
        self.gateways
            .first()
            .map_or(self.now, |g| g.partitioned_until.min(self.now))
    }
}

fn kind_of(msg: &ClientMessage) -> String {
    match msg {
        ClientMessage::Hello(h) => format!("Hello(resume {:?})", h.resume),
        ClientMessage::Publish(p) => format!("Publish({} exports)", p.exports.len()),
        ClientMessage::Ack { revision } => format!("Ack({revision})"),
    }
}

fn kind_of_b(msg: &BrokerMessage) -> String {
    match msg {
        BrokerMessage::Snapshot(s) => format!("Snapshot(e{} r{})", s.epoch, s.revision),
        BrokerMessage::Delta(d) => {
            format!("Delta(e{} r{} +{})", d.epoch, d.revision, d.changes.len())
        }
        BrokerMessage::Rejected { reason } => format!("Rejected({reason:?})"),
    }
}

fn cluster_info(id: &ClusterId, i: usize) -> ClusterInfo {
    let n = u8::try_from(i + 1).expect("fewer than 255 gateways");
    ClusterInfo {
        id: id.clone(),
        wg_endpoint: SocketAddr::from(([10, 100, 0, n], 51820)),
        wg_public_key: [n; 32],
        cidrs: vec![format!("10.{n}.0.0/16").parse().expect("a CIDR")],
        region: None,
        zone: None,
        global: vec![],
    }
}

/// Up to three of four services (`shop/s0`…`s3`), each with one to three endpoints in the
/// gateway's range, some not ready.
fn random_exports(rng: &mut Rng, gw: usize) -> Vec<Export> {
    let n = u8::try_from(gw + 1).expect("fewer than 255 gateways");
    let mut exports = Vec::new();
    for s in 0..4u8 {
        if !rng.chance(600) {
            continue;
        }
        let endpoints = (0..1 + rng.below(3))
            .map(|e| Endpoint {
                address: IpAddr::V4(Ipv4Addr::new(10, n, s, e as u8 + 1)),
                ready: rng.chance(800),
                hostname: None,
                zone: None,
            })
            .collect();
        exports.push(Export {
            service: ServiceKey::new("shop", format!("s{s}")).expect("a DNS label"),
            cluster_ips: vec![],
            ports: vec![],
            endpoints,
            props: ServiceProps {
                kind: ServiceKind::Headless,
                ..ServiceProps::default()
            },
        });
    }
    exports
}

#[cfg(test)]
mod tests;
