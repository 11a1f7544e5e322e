//! The broker's QUIC shell.
//!
//! [`Broker::run`] accepts connections; each gets a session task that reads the client's
//! certificate (a connection without a valid one never gets this far: the TLS handshake
//! refuses it), decodes frames and forwards them as [`Command`]s to the one task that owns
//! [`BrokerState`] and the [`Store`]. That task runs on a blocking thread, because every
//! accepted change is committed (fsync) to the store before it is broadcast as a Delta to every
//! session. Decisions live in `broker::state`; this file only moves data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::broker::state::{BrokerState, DEFAULT_LOG_CAPACITY};
use crate::broker::store::{RedbStore, Store, StoreError};
use crate::certs;
use crate::model::ClusterId;
use crate::sync::wire::{
    self, BrokerMessage, Change, ClientMessage, Decoder, Delta, Hello, Publish,
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

/// A bound broker that has not started serving yet (tests bind port 0 and read the address).
pub struct Broker {
    endpoint: quinn::Endpoint,
    store: Box<dyn Store>,
}

impl Broker {
    /// Opens the store and binds the QUIC endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: &BrokerConfig) -> anyhow::Result<Self> {
        let server_config = certs::server_config(&config.tls_dir)?;
        let store = RedbStore::open(&config.state_path)?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .with_context(|| format!("binding the broker's QUIC endpoint on {}", config.listen))?;
        Ok(Self {
            endpoint,
            store: Box::new(store),
        })
    }

    /// A broker over a caller-made endpoint and store.
    pub fn with_store(endpoint: quinn::Endpoint, store: Box<dyn Store>) -> Self {
        Self { endpoint, store }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` is cancelled. Returns once every session has ended and the store
    /// is closed, so the same state file can be opened again right away.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { endpoint, store } = self;
        let persisted = store.load()?;
        let state = BrokerState::new(persisted, DEFAULT_LOG_CAPACITY);
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
            }
            .run(command_rx)
        });
        // Sessions stop on shutdown, and also when the broker stops for another reason.
        let stop_sessions = shutdown.child_token();
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
                    let session = serve_session(incoming, next_session, commands.clone(), stop_sessions.clone());
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

/// From a session task to the state task.
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
}

impl StateDriver {
    fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), StoreError> {
        while let Some(command) = commands.blocking_recv() {
            self.handle(command)?;
        }
        Ok(())
    }

    fn handle(&mut self, command: Command) -> Result<(), StoreError> {
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
                        self.commit(changes)?;
                    }
                }
            }
            Command::Ack { session, revision } => debug!(session, revision, "Ack"),
            Command::Disconnected { session } => {
                if let Some(handle) = self.sessions.remove(&session) {
                    info!(session, cluster = %handle.cluster, "Cluster disconnected");
                }
            }
        }
        Ok(())
    }

    /// Durably stores `changes`, applies them, and broadcasts them as one Delta.
    fn commit(&mut self, changes: Vec<Change>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let revision = self.state.revision() + changes.len() as u64;
        self.store.apply(&changes, revision)?;
        self.state.apply(&changes);
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
                self.sessions.remove(&session);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.sessions.remove(&session);
            }
        }
    }
}

/// Why a session ended, for the debug log.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("handshake failed")]
    Handshake(#[source] quinn::ConnectionError),
    #[error("client certificate names no cluster")]
    Certificate(#[source] certs::CertError),
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
    shutdown: CancellationToken,
) {
    let result = session_loop(incoming, session, &commands, &shutdown).await;
    let _ = commands.send(Command::Disconnected { session }).await;
    match result {
        Ok(()) => debug!("Session ended"),
        Err(e) => debug!(error = %anyhow::Error::new(e).to_string(), "Session ended"),
    }
}

async fn session_loop(
    incoming: quinn::Incoming,
    session: u64,
    commands: &mpsc::Sender<Command>,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    let conn = incoming.await.map_err(SessionEnd::Handshake)?;
    let cert = peer_cluster(&conn).map_err(|e| {
        conn.close(1u32.into(), b"certificate names no cluster");
        SessionEnd::Certificate(e)
    })?;
    debug!(cluster = %cert, "Handshake done");
    let (mut send, mut recv) = tokio::select! {
        streams = conn.accept_bi() => streams?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let (reply, mut replies) = mpsc::channel(SESSION_QUEUE);
    let mut reply = Some(reply);
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = recv.read(&mut buf) => {
                let Some(n) = read? else { return Ok(()) };
                decoder.extend(&buf[..n]);
                while let Some(message) = decoder.decode::<ClientMessage>()? {
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
                    let frame = wire::encode(&message)?;
                    tokio::time::timeout(WRITE_TIMEOUT, send.write_all(&frame))
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
            _ = shutdown.cancelled() => {
                conn.close(0u32.into(), b"broker shutting down");
                return Ok(());
            }
        }
    }
}

fn peer_cluster(conn: &quinn::Connection) -> Result<ClusterId, certs::CertError> {
    let chain = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(certs::CertError::Parse)?;
    let leaf = chain.first().ok_or(certs::CertError::Parse)?;
    certs::cluster_id_from_cert(leaf)
}

#[cfg(test)]
mod tests;
