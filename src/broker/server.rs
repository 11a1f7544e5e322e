//! The broker's QUIC shell.
//!
//! [`Broker::run`] accepts connections; each gets a session task that reads the client's
//! certificate (a connection without a valid one never gets this far: the TLS handshake
//! refuses it), checks it against the deny list, decodes frames and forwards them as
//! [`Command`]s to the one task that owns [`BrokerState`] and the [`Store`]. That task runs on
//! a blocking thread, because every accepted change is committed (fsync) to the store before it
//! is broadcast as a Delta to every session; a ticker wakes it for lease expiry. A watcher
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
use crate::broker::state::{BrokerState, StateConfig};
use crate::broker::store::{RedbStore, Store, StoreError};
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
    /// The redb file holding clusters and exports; created if missing.
    pub state_path: PathBuf,
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
    Broker::bind(&config)?.run(shutdown).await
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
    /// Opens the store and binds the QUIC endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: &BrokerConfig) -> anyhow::Result<Self> {
        let server_config = certs::server_config(&config.tls_dir)?;
        let store = RedbStore::open(&config.state_path)?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .with_context(|| format!("binding the broker's QUIC endpoint on {}", config.listen))?;
        Self::with_store(endpoint, Box::new(store), config.options.clone())
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
            store,
            options,
            deny,
        } = self;
        let persisted = store.load()?;
        let tick = (options.rules.lease.min(options.rules.retention) / 4)
            .clamp(Duration::from_millis(10), MAX_TICK);
        let state = BrokerState::new(persisted, options.rules, clock::now());
        info!(
            addr = %endpoint.local_addr()?,
            epoch = state.epoch(),
            revision = state.revision(),
            "Broker listening"
        );
        let (commands, command_rx) = mpsc::channel(SESSION_QUEUE);
        let mut driver = tokio::task::spawn_blocking(move || {
            StateDriver {
                state,
                store,
                sessions: BTreeMap::new(),
                pending: vec![],
            }
            .run(command_rx)
        });
        // Sessions stop on shutdown, and also when the broker stops for another reason.
        let stop_sessions = shutdown.child_token();
        tokio::spawn(tick_leases(tick, commands.clone(), stop_sessions.clone()));
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
}

struct SessionHandle {
    cluster: ClusterId,
    reply: mpsc::Sender<BrokerMessage>,
}

/// Owns the state and the store; one per broker.
struct StateDriver {
    state: BrokerState,
    store: Box<dyn Store>,
    sessions: BTreeMap<u64, SessionHandle>,
    /// Accepted publishes' changes, applied to `state` but not yet stored nor broadcast. Only
    /// this task sees `state`, and a store failure stops the broker, so nobody ever observes
    /// changes that were not stored.
    pending: Vec<Change>,
}

impl StateDriver {
    /// Handles commands as they come; the publishes among those already queued are stored in
    /// one commit (one fsync) and broadcast as one Delta (group commit).
    fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), StoreError> {
        while let Some(command) = commands.blocking_recv() {
            self.handle(command)?;
            while self.pending.len() < MAX_GROUP_CHANGES {
                let Ok(command) = commands.try_recv() else {
                    break;
                };
                self.handle(command)?;
            }
            self.flush()?;
        }
        Ok(())
    }

    fn handle(&mut self, command: Command) -> Result<(), StoreError> {
        if !matches!(command, Command::Publish { .. } | Command::Ack { .. }) {
            // A Hello's snapshot or catch-up, and lease changes, follow what was broadcast.
            self.flush()?;
        }
        match command {
            Command::Hello {
                session,
                cert,
                hello,
                reply,
            } => match self.state.handle_hello(&cert, &hello) {
                Err(reason) => {
                    warn!(session, cluster = %cert, %reason, "Hello rejected");
                    let _ = reply.try_send(BrokerMessage::Rejected { reason });
                }
                Ok(changes) => {
                    for change in &changes {
                        if let Change::RestoreCluster { cluster, exports } = change {
                            info!(%cluster, exports = exports.len(), "Cluster back; its exports are served again");
                        }
                    }
                    self.commit(changes)?;
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
                        self.state.apply(&changes);
                        self.pending.extend(changes);
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
                let changes = self.state.handle_timeout(clock::now());
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
                self.commit(changes)?;
            }
        }
        Ok(())
    }

    /// Durably stores `changes`, applies them, and broadcasts them as one Delta (after the
    /// pending ones, so revisions stay in order).
    fn commit(&mut self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.flush()?;
        if changes.is_empty() {
            return Ok(());
        }
        self.state.apply(&changes);
        self.pending = changes;
        self.flush()
    }

    /// Stores the pending changes (already applied to the state) and broadcasts them.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.pending);
        let revision = self.state.revision();
        self.store.apply(&changes, revision)?;
        let delta = BrokerMessage::Delta(Delta {
            epoch: self.state.epoch(),
            revision,
            changes,
        });
        let sessions: Vec<u64> = self.sessions.keys().copied().collect();
        for session in sessions {
            self.send(session, delta.clone());
        }
        Ok(())
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

    /// Forgets a session (dropping its reply channel ends it) and releases its lease.
    fn end_session(&mut self, session: u64) -> Option<ClusterId> {
        let handle = self.sessions.remove(&session)?;
        self.state.handle_session_end(&handle.cluster, clock::now());
        Some(handle.cluster)
    }
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
                        (ClientMessage::Hello(hello), Some(reply)) => Command::Hello { session, cert: cert.clone(), hello, reply },
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
