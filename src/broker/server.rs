//! The broker's QUIC shell.
//!
//! [`Broker::run`] accepts connections; each gets a session task that reads the client's
//! certificate (a connection without a valid one never gets this far: the TLS handshake
//! refuses it), checks it against the deny list, decodes frames and forwards them as
//! [`Command`]s to the one task that owns [`BrokerState`] and the [`Store`]. That task runs on
//! a blocking thread, because every accepted change is committed (fsync) to the store before it
//! is broadcast as a Delta to every session; a ticker wakes it for lease expiry. A store shared
//! with other replicas (etcd) also feeds it their commits and sessions, which it applies and
//! broadcasts in the store's order (`broker::replica`). A watcher
//! re-reads the deny list file when it changes; sessions it denies are closed at once.
//! Decisions live in `broker::state` and `broker::deny`; this file only moves data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::broker::deny::{DenyList, PeerIdentity};
use crate::broker::etcd::EtcdStore;
use crate::broker::replica::{self, Follow, LocalPresence, RemotePresence};
use crate::broker::state::{BrokerState, SessionOrigin, StateConfig};
use crate::broker::store::{RedbStore, Store, StoreError, StoreEvent, StoreLocation};
use crate::certs;
use crate::clock;
use crate::model::ClusterId;
use crate::sync::wire::{
    self, BrokerMessage, Change, ClientMessage, CodecError, Decoder, Delta, Hello, Publish,
    RejectReason,
};

/// What `causeway broker` needs.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// UDP address to listen on for QUIC.
    pub listen: SocketAddr,
    /// Where clusters and exports are kept: a redb file (created if missing), or an etcd
    /// cluster shared with other broker replicas.
    pub store: StoreLocation,
    /// `ca.crt`, `tls.crt` (the broker's, `causeway certs issue --broker`) and `tls.key`.
    pub tls_dir: PathBuf,
    pub options: BrokerOptions,
}

/// The broker's tunables, whatever its store and endpoint.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Leases, per-cluster limits, resume log size.
    pub rules: StateConfig,
    /// The largest client message accepted, in bytes (at most `wire::MAX_FRAME_LEN`); a bigger
    /// one is refused with `MessageTooLarge` and skipped, the session stays up.
    pub max_message_bytes: usize,
    /// The revocation deny list file (see `broker::deny`), re-read when it changes.
    pub deny_list: Option<PathBuf>,
    /// How often the deny list file is checked for changes.
    pub deny_list_poll: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            rules: StateConfig::default(),
            max_message_bytes: wire::MAX_FRAME_LEN,
            deny_list: None,
            deny_list_poll: Duration::from_secs(1),
        }
    }
}

/// Runs the broker until `shutdown` is cancelled or its store fails.
pub async fn run(config: BrokerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    Broker::open(&config).await?.run(shutdown).await
}

/// Messages a session may have queued before it counts as too slow and is dropped (it then
/// reconnects and resumes). Each holds at most one publish's diff.
const SESSION_QUEUE: usize = 1024;
/// How long a closing session waits for the peer to acknowledge its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A client that does not take a frame within this time is stuck or hostile (its keep-alives
/// would otherwise hold the session open forever): the session ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the state task sleeps between lease checks; shorter leases check 4× per lease.
const MAX_TICK: Duration = Duration::from_secs(1);
/// Most changes stored in one group commit: bounds the Delta and the transaction.
const MAX_GROUP_CHANGES: usize = 1024;
/// Most queued messages a session writes at once (merged where they are consecutive Deltas).
const MAX_BATCH: usize = 256;
/// QUIC close codes the broker uses.
const CLOSE_REVOKED: u32 = 3;

/// A bound broker that has not started serving yet (tests bind port 0 and read the address).
pub struct Broker {
    endpoint: quinn::Endpoint,
    store: Box<dyn Store>,
    options: BrokerOptions,
    deny: DenyList,
}

impl Broker {
    /// Opens the store (connecting to etcd if it is there) and binds the QUIC endpoint.
    pub async fn open(config: &BrokerConfig) -> anyhow::Result<Self> {
        let store: Box<dyn Store> = match &config.store {
            StoreLocation::Redb(path) => Box::new(RedbStore::open(path)?),
            StoreLocation::Etcd(endpoints) => Box::new(EtcdStore::connect(endpoints).await?),
        };
        Self::with_store(bind_endpoint(config)?, store, config.options.clone())
    }

    /// [`open`](Self::open) for the embedded store, without waiting. Must be called inside a
    /// tokio runtime.
    pub fn bind(config: &BrokerConfig) -> anyhow::Result<Self> {
        let StoreLocation::Redb(path) = &config.store else {
            anyhow::bail!("a broker on etcd is opened with Broker::open");
        };
        let store = RedbStore::open(path)?;
        Self::with_store(
            bind_endpoint(config)?,
            Box::new(store),
            config.options.clone(),
        )
    }

    /// A broker over a caller-made endpoint and store. Fails if the deny list cannot be read.
    pub fn with_store(
        endpoint: quinn::Endpoint,
        store: Box<dyn Store>,
        options: BrokerOptions,
    ) -> anyhow::Result<Self> {
        let deny = match &options.deny_list {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the deny list {}", path.display()))?;
                DenyList::parse(&text)
                    .with_context(|| format!("parsing the deny list {}", path.display()))?
            }
            None => DenyList::default(),
        };
        Ok(Self {
            endpoint,
            store,
            options,
            deny,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` is cancelled. Returns once every session has ended and the store
    /// is closed, so the same state file can be opened again right away.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            endpoint,
            mut store,
            options,
            deny,
        } = self;
        let tick = (options.rules.lease.min(options.rules.retention) / 4)
            .clamp(Duration::from_millis(10), MAX_TICK);
        let (commands, command_rx) = mpsc::channel(SESSION_QUEUE);
        let store_events = store.take_events();
        let addr = endpoint.local_addr()?;
        let rules = options.rules.clone();
        let mut driver = tokio::task::spawn_blocking(move || {
            // Loading may block on the network (etcd): here, not on the runtime.
            let persisted = store.load()?;
            let state = BrokerState::new(persisted, rules.clone(), clock::now());
            info!(%addr, epoch = state.epoch(), revision = state.revision(), replica = store.replica(), "Broker listening");
            StateDriver {
                state,
                remote: RemotePresence::new(store.replica()),
                store,
                rules,
                sessions: BTreeMap::new(),
                pending: BTreeMap::new(),
                pending_changes: 0,
                local: LocalPresence::default(),
                absent: vec![],
            }
            .run(command_rx)
        });
        // Sessions stop on shutdown, and also when the broker stops for another reason.
        let stop_sessions = shutdown.child_token();
        tokio::spawn(tick_leases(tick, commands.clone(), stop_sessions.clone()));
        if let Some(events) = store_events {
            tokio::spawn(forward_store_events(
                events,
                commands.clone(),
                stop_sessions.clone(),
            ));
        }
        let (deny_tx, deny_rx) = watch::channel(Arc::new(deny));
        if let Some(path) = options.deny_list {
            tokio::spawn(
                watch_deny_list(path, options.deny_list_poll, deny_tx, stop_sessions.clone())
                    .in_current_span(),
            );
        }
        let limits = SessionLimits {
            max_message_bytes: options.max_message_bytes,
        };
        let mut sessions = tokio::task::JoinSet::new();
        let mut next_session = 0u64;
        let stopped_early = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                result = &mut driver => break Some(result),
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break None };
                    next_session += 1;
                    let remote = incoming.remote_address();
                    let session = serve_session(incoming, next_session, commands.clone(), deny_rx.clone(), limits, stop_sessions.clone());
                    sessions.spawn(session.instrument(info_span!("session", id = next_session, %remote)));
                }
            }
        };
        drop(commands);
        stop_sessions.cancel();
        endpoint.close(0u32.into(), b"broker shutting down");
        while sessions.join_next().await.is_some() {}
        let result = match stopped_early {
            Some(result) => result,
            None => driver.await,
        };
        endpoint.wait_idle().await;
        result
            .context("broker state task panicked")?
            .context("broker store failed")?;
        info!("Broker stopped");
        Ok(())
    }
}

/// From a session task (or the lease ticker) to the state task.
#[derive(Debug)]
enum Command {
    /// The session's first message; `reply` carries everything the state task sends it. The
    /// state task drops `reply` to end the session.
    Hello {
        session: u64,
        cert: ClusterId,
        hello: Hello,
        origin: SessionOrigin,
        reply: mpsc::Sender<BrokerMessage>,
    },
    Publish {
        session: u64,
        cert: ClusterId,
        publish: Publish,
    },
    Ack {
        session: u64,
        revision: u64,
    },
    Disconnected {
        session: u64,
    },
    /// Time passed: check leases.
    Tick,
    /// From a store shared with other replicas.
    Store(StoreEvent),
}

struct SessionHandle {
    cluster: ClusterId,
    reply: mpsc::Sender<BrokerMessage>,
}

/// Owns the state and the store; one per broker.
struct StateDriver {
    /// Holds exactly what the store committed, in the store's order.
    state: BrokerState,
    store: Box<dyn Store>,
    rules: StateConfig,
    sessions: BTreeMap<u64, SessionHandle>,
    /// Accepted publishes not stored yet, the latest per cluster (a publish is the full set, so
    /// it supersedes an earlier one): diffed against the state when stored, so that a diff
    /// recomputed after another replica's commit is still right.
    pending: BTreeMap<ClusterId, Publish>,
    /// The changes `pending` made when each was accepted (an estimate: diffs are computed
    /// again when stored), to bound a group commit.
    pending_changes: usize,
    local: LocalPresence,
    /// Clusters whose last session here ended: their presence keys are to be deleted.
    absent: Vec<ClusterId>,
    remote: RemotePresence,
}

impl StateDriver {
    /// Handles commands as they come; the publishes among those already queued are stored in
    /// one commit (one fsync) and broadcast as one Delta (group commit).
    fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), StoreError> {
        while let Some(command) = commands.blocking_recv() {
            self.handle(command)?;
            while self.pending_changes < MAX_GROUP_CHANGES {
                let Ok(command) = commands.try_recv() else {
                    break;
                };
                self.handle(command)?;
            }
            self.flush()?;
            self.publish_absence()?;
        }
        Ok(())
    }

    fn handle(&mut self, command: Command) -> Result<(), StoreError> {
        if !matches!(
            command,
            Command::Publish { .. } | Command::Ack { .. } | Command::Store(_)
        ) {
            // A Hello's snapshot or catch-up, and lease changes, follow what was broadcast.
            self.flush()?;
        }
        match command {
            Command::Hello {
                session,
                cert,
                hello,
                origin,
                reply,
            } => match self.state.handle_hello(&cert, &hello, &origin) {
                Err(reason) => {
                    warn!(session, cluster = %cert, %reason, "Hello rejected");
                    let _ = reply.try_send(BrokerMessage::Rejected { reason });
                }
                Ok(_) => {
                    // The other replicas learn of the session before its Hello's changes (they
                    // read both in the store's order): one that sees the cluster restored
                    // already counts its session, and does not withhold it again. Any pending
                    // deletion of its presence goes first.
                    self.publish_absence()?;
                    if self.local.handle_start(&cert) {
                        self.store.set_presence(&cert, true)?;
                    }
                    // Recomputed after losing a race to another replica, a Hello could turn into
                    // a refusal (another cluster took the endpoint or the space it claims in
                    // between); it then changes nothing, and is judged again on reconnect.
                    let changes = self.commit_with(|s| {
                        s.handle_hello(&cert, &hello, &origin).unwrap_or_default()
                    })?;
                    for change in &changes {
                        if let Change::RestoreCluster { cluster, exports } = change {
                            info!(%cluster, exports = exports.len(), "Cluster back; its exports are served again");
                        }
                    }
                    let catch_up = hello
                        .resume
                        .and_then(|r| self.state.changes_since(r.epoch, r.revision));
                    let message = match catch_up {
                        Some(changes) => BrokerMessage::Delta(Delta {
                            epoch: self.state.epoch(),
                            revision: self.state.revision(),
                            changes,
                        }),
                        None => BrokerMessage::Snapshot(self.state.snapshot()),
                    };
                    let resumed = matches!(message, BrokerMessage::Delta(_));
                    if reply.try_send(message).is_ok() {
                        info!(session, cluster = %cert, resumed, "Cluster connected");
                        self.state.handle_session_start(&cert, clock::now());
                        self.sessions.insert(
                            session,
                            SessionHandle {
                                cluster: cert,
                                reply,
                            },
                        );
                    } else if self.local.handle_end(&cert) {
                        self.absent.push(cert);
                    }
                }
            },
            Command::Publish {
                session,
                cert,
                publish,
            } => {
                if !self.sessions.contains_key(&session) {
                    return Ok(()); // dropped as too slow; its connection is closing
                }
                match self.state.handle_publish(&cert, &publish) {
                    Err(reason) => {
                        warn!(session, cluster = %cert, %reason, "Publish rejected");
                        self.send(session, BrokerMessage::Rejected { reason });
                    }
                    Ok(changes) => {
                        self.pending_changes += changes.len();
                        self.pending.insert(cert, publish);
                    }
                }
            }
            Command::Ack { session, revision } => debug!(session, revision, "Ack"),
            Command::Disconnected { session } => {
                if let Some(cluster) = self.end_session(session) {
                    info!(session, %cluster, "Cluster disconnected");
                }
            }
            Command::Tick => {
                let now = clock::now();
                let changes = self.commit_with(|s| s.handle_timeout(now))?;
                for change in &changes {
                    match change {
                        Change::WithholdCluster(cluster) => {
                            info!(%cluster, "Cluster lease expired; withholding its exports")
                        }
                        Change::RemoveCluster(cluster) => {
                            info!(%cluster, "Cluster gone past retention; removed")
                        }
                        _ => {}
                    }
                }
            }
            Command::Store(event) => self.handle_store_event(event)?,
        }
        Ok(())
    }

    /// Another replica's commit or session, from the shared store.
    fn handle_store_event(&mut self, event: StoreEvent) -> Result<(), StoreError> {
        match event {
            StoreEvent::Committed { revision, changes } => {
                match replica::follow(self.state.revision(), revision, changes.len()) {
                    Follow::Skip => {}
                    Follow::Apply => self.broadcast(changes),
                    Follow::Gap => self.catch_up()?,
                }
            }
            StoreEvent::Presence {
                cluster,
                replica,
                present: true,
            } => {
                if self.remote.handle_put(&cluster, &replica) {
                    debug!(%cluster, %replica, "Cluster has a session at another replica");
                    self.state.handle_session_start(&cluster, clock::now());
                }
            }
            StoreEvent::Presence {
                cluster,
                replica,
                present: false,
            } => {
                if self.remote.handle_delete(&cluster, &replica) {
                    debug!(%cluster, %replica, "Cluster's session at another replica ended");
                    self.state.handle_session_end(&cluster, clock::now());
                }
            }
            StoreEvent::Lagging => self.catch_up()?,
            StoreEvent::Failed(e) => return Err(e),
        }
        Ok(())
    }

    /// Computes changes against the state and stores them; after a conflict (another replica
    /// committed first) catches up and computes again. Returns what was committed, already
    /// applied and broadcast.
    fn commit_with(
        &mut self,
        compute: impl Fn(&BrokerState) -> Vec<Change>,
    ) -> Result<Vec<Change>, StoreError> {
        loop {
            let changes = compute(&self.state);
            if changes.is_empty() {
                return Ok(changes);
            }
            let revision = self.state.revision() + changes.len() as u64;
            match self.store.apply(&changes, revision) {
                Ok(()) => {
                    self.broadcast(changes.clone());
                    return Ok(changes);
                }
                Err(StoreError::Conflict { expected, stored }) => {
                    debug!(
                        expected,
                        stored, "Another replica committed first; catching up"
                    );
                    let before = self.state.revision();
                    self.catch_up()?;
                    if self.state.revision() == before {
                        // The store moved but holds nothing newer (wiped under us): stop
                        // rather than retry forever.
                        return Err(StoreError::Conflict { expected, stored });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies and broadcasts what the store committed after the state's revision; reloads
    /// everything if the store no longer has all of it.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let batches = self.store.committed_since(self.state.revision())?;
        match replica::chain(self.state.revision(), batches) {
            Some(batches) => {
                for (_, changes) in batches {
                    self.broadcast(changes);
                }
                Ok(())
            }
            None => self.reload(),
        }
    }

    /// Starts over from what the store holds, and sends every session a Snapshot.
    fn reload(&mut self) -> Result<(), StoreError> {
        let persisted = self.store.load()?;
        warn!(
            from = self.state.revision(),
            to = persisted.revision,
            "Fell behind the store's log; reloading everything"
        );
        let now = clock::now();
        let mut state = BrokerState::new(persisted, self.rules.clone(), now);
        for handle in self.sessions.values() {
            state.handle_session_start(&handle.cluster, now);
        }
        for cluster in self.remote.sessions() {
            state.handle_session_start(cluster, now);
        }
        self.state = state;
        let snapshot = BrokerMessage::Snapshot(self.state.snapshot());
        let sessions: Vec<u64> = self.sessions.keys().copied().collect();
        for session in sessions {
            self.send(session, snapshot.clone());
        }
        Ok(())
    }

    /// Stores the pending publishes' changes and broadcasts them.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_changes = 0;
        // Each was accepted when it came, and acceptance does not depend on the state.
        let changes = self.commit_with(|s| {
            pending
                .iter()
                .flat_map(|(cert, publish)| s.handle_publish(cert, publish).unwrap_or_default())
                .collect()
        })?;
        for change in &changes {
            match change {
                Change::UpsertExport { cluster, export } => {
                    info!(%cluster, service = %export.service, "Export accepted")
                }
                Change::RemoveExport { cluster, service } => {
                    info!(%cluster, %service, "Export withdrawn")
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies committed changes to the state and sends them to every session as one Delta.
    fn broadcast(&mut self, changes: Vec<Change>) {
        let revision = self.state.apply(&changes);
        let delta = BrokerMessage::Delta(Delta {
            epoch: self.state.epoch(),
            revision,
            changes,
        });
        let sessions: Vec<u64> = self.sessions.keys().copied().collect();
        for session in sessions {
            self.send(session, delta.clone());
        }
    }

    /// Queues `message` for `session`; a session whose queue is full is dropped (it will
    /// reconnect and resume) rather than letting it hold the broker back.
    fn send(&mut self, session: u64, message: BrokerMessage) {
        let Some(handle) = self.sessions.get(&session) else {
            return;
        };
        match handle.reply.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(session, cluster = %handle.cluster, "Session too slow; dropping it");
                self.end_session(session);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.end_session(session);
            }
        }
    }

    /// Forgets a session (dropping its reply channel ends it) and releases its lease; when it
    /// was the cluster's last here, the other replicas are told (by `publish_absence`).
    fn end_session(&mut self, session: u64) -> Option<ClusterId> {
        let handle = self.sessions.remove(&session)?;
        self.state.handle_session_end(&handle.cluster, clock::now());
        if self.local.handle_end(&handle.cluster) {
            self.absent.push(handle.cluster.clone());
        }
        Some(handle.cluster)
    }

    /// Deletes the presence keys of clusters whose last session here ended.
    fn publish_absence(&mut self) -> Result<(), StoreError> {
        for cluster in std::mem::take(&mut self.absent) {
            self.store.set_presence(&cluster, false)?;
        }
        Ok(())
    }
}

/// Passes a shared store's events to the state task, until `stop`.
async fn forward_store_events(
    mut events: mpsc::UnboundedReceiver<StoreEvent>,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.cancelled() => return,
        };
        let Some(event) = event else { return };
        if commands.send(Command::Store(event)).await.is_err() {
            return;
        }
    }
}

fn bind_endpoint(config: &BrokerConfig) -> anyhow::Result<quinn::Endpoint> {
    let server_config = certs::server_config(&config.tls_dir)?;
    quinn::Endpoint::server(server_config, config.listen)
        .with_context(|| format!("binding the broker's QUIC endpoint on {}", config.listen))
}

/// Wakes the state task every `tick` to check leases, until `stop`.
async fn tick_leases(tick: Duration, commands: mpsc::Sender<Command>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if commands.send(Command::Tick).await.is_err() {
                    return;
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Re-reads the deny list file every `poll` and publishes it when its contents changed and
/// parse. A file that vanishes or does not parse keeps the last good list in force (a typo must
/// not un-revoke anyone).
async fn watch_deny_list(
    path: PathBuf,
    poll: Duration,
    deny: watch::Sender<Arc<DenyList>>,
    stop: CancellationToken,
) {
    let mut last = tokio::fs::read(&path).await.ok();
    let mut interval = tokio::time::interval(poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(e) => {
                if last.take().is_some() {
                    warn!(path = %path.display(), error = %e, "Cannot read the deny list; keeping the last one");
                }
                continue;
            }
        };
        if last.as_ref() == Some(&text) {
            continue;
        }
        last = Some(text.clone());
        match DenyList::parse(&String::from_utf8_lossy(&text)) {
            Ok(list) => {
                info!(path = %path.display(), "Deny list reloaded");
                deny.send_replace(Arc::new(list));
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Deny list does not parse; keeping the last one")
            }
        }
    }
}

/// Per-session limits.
#[derive(Debug, Clone, Copy)]
struct SessionLimits {
    max_message_bytes: usize,
}

/// Why a session ended, for the debug log.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("handshake failed")]
    Handshake(#[source] quinn::ConnectionError),
    #[error("client certificate names no cluster")]
    Certificate(#[source] certs::CertError),
    #[error("{0}")]
    Revoked(String),
    #[error("connection lost")]
    Connection(#[from] quinn::ConnectionError),
    #[error("reading")]
    Read(#[from] quinn::ReadError),
    #[error("writing")]
    Write(#[from] quinn::WriteError),
    #[error("the client took no data for {WRITE_TIMEOUT:?}")]
    WriteTimeout,
    #[error("bad frame")]
    Codec(#[from] wire::CodecError),
    #[error("first message was not Hello, or Hello was repeated")]
    Protocol,
    #[error("the state task has stopped")]
    StateGone,
}

async fn serve_session(
    incoming: quinn::Incoming,
    session: u64,
    commands: mpsc::Sender<Command>,
    deny: watch::Receiver<Arc<DenyList>>,
    limits: SessionLimits,
    shutdown: CancellationToken,
) {
    let result = session_loop(incoming, session, &commands, deny, limits, &shutdown).await;
    let _ = commands.send(Command::Disconnected { session }).await;
    match result {
        Ok(()) => debug!("Session ended"),
        Err(SessionEnd::Revoked(why)) => info!(%why, "Revoked peer cut off"),
        Err(e) => debug!(error = %anyhow::Error::new(e).to_string(), "Session ended"),
    }
}

/// Closes `conn` if the deny list refuses `peer`.
fn check_revoked(
    conn: &quinn::Connection,
    deny: &DenyList,
    peer: &PeerIdentity,
) -> Result<(), SessionEnd> {
    match deny.denies(peer) {
        Some(denied) => {
            conn.close(CLOSE_REVOKED.into(), b"certificate revoked");
            Err(SessionEnd::Revoked(denied.to_string()))
        }
        None => Ok(()),
    }
}

async fn session_loop(
    incoming: quinn::Incoming,
    session: u64,
    commands: &mpsc::Sender<Command>,
    mut deny: watch::Receiver<Arc<DenyList>>,
    limits: SessionLimits,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    let conn = incoming.await.map_err(SessionEnd::Handshake)?;
    let peer = peer_identity(&conn).map_err(|e| {
        conn.close(1u32.into(), b"certificate names no cluster");
        SessionEnd::Certificate(e)
    })?;
    let cert = peer.cluster.clone();
    check_revoked(&conn, &deny.borrow_and_update(), &peer)?;
    debug!(cluster = %cert, serial = %peer.serial, "Handshake done");
    let (mut send, mut recv) = tokio::select! {
        streams = conn.accept_bi() => streams?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    // What the address plan judges the cluster's claims against (IPv4-mapped addresses of a
    // dual-stack socket compared as IPv4).
    let origin = SessionOrigin {
        broker: conn
            .local_ip()
            .map(|a| a.to_canonical())
            .into_iter()
            .collect(),
        observed: Some(conn.remote_address().ip().to_canonical()),
    };
    let (reply, mut replies) = mpsc::channel(SESSION_QUEUE);
    let mut reply = Some(reply);
    let mut decoder = Decoder::with_max(limits.max_message_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    // False once the deny list watcher is gone (its last list stays in force).
    let mut deny_open = true;
    loop {
        tokio::select! {
            read = recv.read(&mut buf) => {
                let Some(n) = read? else { return Ok(()) };
                decoder.extend(&buf[..n]);
                loop {
                    let message = match decoder.decode::<ClientMessage>() {
                        Ok(Some(message)) => message,
                        Ok(None) => break,
                        // Refused and skipped; the session goes on once it has said Hello.
                        Err(CodecError::FrameTooLarge { len, max }) if reply.is_none() => {
                            let reason = RejectReason::MessageTooLarge { len, max };
                            warn!(cluster = %cert, %reason, "Message rejected");
                            let frame = wire::encode(&BrokerMessage::Rejected { reason })?;
                            send.write_all(&frame).await?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let command = match (message, reply.take()) {
                        (ClientMessage::Hello(hello), Some(reply)) => Command::Hello { session, cert: cert.clone(), hello, origin: origin.clone(), reply },
                        (ClientMessage::Publish(publish), None) => Command::Publish { session, cert: cert.clone(), publish },
                        (ClientMessage::Ack { revision }, None) => Command::Ack { session, revision },
                        _ => {
                            conn.close(2u32.into(), b"protocol violation");
                            return Err(SessionEnd::Protocol);
                        }
                    };
                    commands.send(command).await.map_err(|_| SessionEnd::StateGone)?;
                }
            }
            out = replies.recv(), if reply.is_none() => match out {
                Some(message) => {
                    // A session that fell behind catches up with one write of merged Deltas.
                    let mut queued = vec![message];
                    while queued.len() < MAX_BATCH {
                        match replies.try_recv() {
                            Ok(message) => queued.push(message),
                            Err(_) => break,
                        }
                    }
                    let mut frames = vec![];
                    for message in wire::coalesce(queued) {
                        match (wire::encode(&message), message) {
                            (Ok(frame), _) => frames.extend(frame),
                            (Err(CodecError::FrameTooLarge { .. }), BrokerMessage::Delta(merged)) => {
                                for delta in merged.split() {
                                    frames.extend(wire::encode(&BrokerMessage::Delta(delta))?);
                                }
                            }
                            (Err(e), _) => return Err(e.into()),
                        }
                    }
                    tokio::time::timeout(WRITE_TIMEOUT, send.write_all(&frames))
                        .await
                        .map_err(|_| SessionEnd::WriteTimeout)??;
                }
                None => {
                    // The state task ended the session (rejected, or too slow): let the last
                    // frames reach the client, then close.
                    let _ = send.finish();
                    let _ = tokio::time::timeout(CLOSE_GRACE, send.stopped()).await;
                    conn.close(0u32.into(), b"session ended by broker");
                    return Ok(());
                }
            },
            changed = deny.changed(), if deny_open => match changed {
                Ok(()) => check_revoked(&conn, &deny.borrow_and_update(), &peer)?,
                Err(_) => deny_open = false,
            },
            _ = shutdown.cancelled() => {
                conn.close(0u32.into(), b"broker shutting down");
                return Ok(());
            }
        }
    }
}

fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, certs::CertError> {
    let chain = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(certs::CertError::Parse)?;
    let leaf = chain.first().ok_or(certs::CertError::Parse)?;
    Ok(PeerIdentity {
        cluster: certs::cluster_id_from_cert(leaf)?,
        serial: certs::cert_serial(leaf)?,
    })
}

#[cfg(test)]
mod tests;
