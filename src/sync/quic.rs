//! The gateway's sync client: the tokio/quinn shell around `proto::ClusterSession`.
//!
//! [`spawn_client`] starts one task that connects to a broker (server name
//! `broker.causeway`, mutual TLS), opens one bidirectional stream, and moves messages between
//! it and the session: Hello and Publish on connect, Publish whenever the exports watch changes,
//! broker updates into the view. Every change of view or connectivity is published as a
//! [`SyncState`]. On disconnect the last view is kept (`connected: false`) and the task
//! reconnects with capped exponential backoff, moving to the next broker after a failure.
//!
//! The TLS files are re-read before every connection attempt, and checked for changes every
//! [`TLS_POLL`] while connected: new files that load (e.g. after `causeway certs rotate`) end
//! the connection and the next one presents them. Files that do not load (half-replaced)
//! leave the last good configuration in use.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::certs::{self, BROKER_SERVER_NAME};
use crate::model::{ClusterInfo, Export};
use crate::sync::Error;
use crate::sync::proto::{Backoff, ClusterSession, SessionEvent, SyncState};
use crate::sync::wire::{self, BrokerMessage, Decoder};

/// The first reconnect delay; doubles up to `SyncConfig::reconnect_backoff_max`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// A broker that does not complete the handshake in this time counts as down, and the next
/// one is tried (without it, a silent address would hold us for the 6 s idle timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the TLS files are checked for changes while connected: a rotated certificate is
/// in use within this time (plus a reconnect).
pub const TLS_POLL: Duration = Duration::from_secs(1);
/// The TLS files whose contents decide whether to reload.
const TLS_FILES: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

/// What the sync client needs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Brokers to try, in order; after a failure the next one is tried.
    pub brokers: Vec<SocketAddr>,
    /// `ca.crt`, and this cluster's `tls.crt` / `tls.key` (`causeway certs issue --cluster`).
    pub tls_dir: PathBuf,
    /// The longest wait between reconnect attempts.
    pub reconnect_backoff_max: Duration,
}

/// Starts the sync client; it runs until `shutdown` is cancelled. Must be called inside a
/// tokio runtime. Fails only on local problems (no broker, unreadable TLS files, no socket);
/// network trouble is retried forever and shows as `connected: false`.
pub fn spawn_client(
    config: SyncConfig,
    me: ClusterInfo,
    mut exports: watch::Receiver<Vec<Export>>,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<SyncState>, Error> {
    if config.brokers.is_empty() {
        return Err(Error::NoBrokers);
    }
    let tls_seen = read_tls_files(&config.tls_dir);
    let client_config = certs::client_config(&config.tls_dir)?;
    let bind: SocketAddr = if config.brokers.iter().all(SocketAddr::is_ipv4) {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint =
        quinn::Endpoint::client(bind).map_err(|source| Error::Bind { addr: bind, source })?;
    let (state, state_rx) = watch::channel(SyncState::default());
    let span = info_span!("cluster", id = %me.id);
    let initial = exports.borrow_and_update().clone();
    let driver = ClientDriver {
        endpoint,
        tls: TlsSource {
            dir: config.tls_dir,
            seen: tls_seen,
            config: client_config,
        },
        brokers: config.brokers,
        backoff: Backoff::new(INITIAL_BACKOFF, config.reconnect_backoff_max),
        session: ClusterSession::new(me, initial),
        exports,
        exports_open: true,
        state,
        broker: None,
        last_error: None,
        rejected: None,
        was_live: false,
        shutdown,
    };
    tokio::spawn(driver.run().instrument(span));
    Ok(state_rx)
}

/// How a connection ended without an error.
enum Ended {
    Shutdown,
    Resync,
    TlsChanged,
}

/// The TLS configuration and the file contents it was built from.
struct TlsSource {
    dir: PathBuf,
    seen: Option<Vec<u8>>,
    config: quinn::ClientConfig,
}

impl TlsSource {
    /// Rebuilds the configuration if the files changed and load; `true` if it was replaced.
    async fn reload(&mut self) -> bool {
        let contents = read_tls_files_async(&self.dir).await;
        if contents.is_none() || contents == self.seen {
            return false;
        }
        match certs::client_config(&self.dir) {
            Ok(config) => {
                self.config = config;
                self.seen = contents;
                info!(dir = %self.dir.display(), "TLS files changed; using the new certificate");
                true
            }
            Err(e) => {
                debug!(error = %anyhow::Error::new(e).to_string(), "TLS files changed but do not load yet; keeping the last good ones");
                false
            }
        }
    }
}

/// The TLS files' contents, concatenated; `None` if one cannot be read.
fn read_tls_files(dir: &std::path::Path) -> Option<Vec<u8>> {
    let mut all = vec![];
    for name in TLS_FILES {
        all.extend(std::fs::read(dir.join(name)).ok()?);
    }
    Some(all)
}

async fn read_tls_files_async(dir: &std::path::Path) -> Option<Vec<u8>> {
    let mut all = vec![];
    for name in TLS_FILES {
        all.extend(tokio::fs::read(dir.join(name)).await.ok()?);
    }
    Some(all)
}

struct ClientDriver {
    endpoint: quinn::Endpoint,
    tls: TlsSource,
    brokers: Vec<SocketAddr>,
    backoff: Backoff,
    session: ClusterSession,
    exports: watch::Receiver<Vec<Export>>,
    /// False once the exports sender is gone (its last value stays published).
    exports_open: bool,
    state: watch::Sender<SyncState>,
    /// The broker of the current connection or last attempt, for [`SyncState::broker`].
    broker: Option<SocketAddr>,
    last_error: Option<String>,
    rejected: Option<String>,
    /// The session was live when events were last drained.
    was_live: bool,
    shutdown: CancellationToken,
}

impl ClientDriver {
    async fn run(mut self) {
        let mut index = 0;
        loop {
            let broker = self.brokers[index % self.brokers.len()];
            let outcome = self.serve_connection(broker).await;
            let was_live = self.session.is_live();
            self.session.handle_disconnected();
            self.drain_events();
            self.was_live = false;
            match outcome {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Resync | Ended::TlsChanged) => {}
                Err(e) => {
                    let error = anyhow::Error::new(e).to_string();
                    warn!(%broker, %error, "Broker unreachable; serving the last known view");
                    self.last_error = Some(error);
                    self.publish_state();
                    index += 1;
                }
            }
            if was_live {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            debug!(delay_ms = delay.as_millis() as u64, "Reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.endpoint.close(0u32.into(), b"gateway shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    async fn serve_connection(&mut self, broker: std::net::SocketAddr) -> Result<Ended, Error> {
        self.tls.reload().await;
        self.broker = Some(broker);
        let connecting = self
            .endpoint
            .connect_with(self.tls.config.clone(), broker, BROKER_SERVER_NAME)
            .map_err(|source| Error::Connect {
                addr: broker,
                source,
            })?;
        let conn = tokio::select! {
            conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => {
                conn.map_err(|_| Error::ConnectTimeout { addr: broker, after: CONNECT_TIMEOUT })??
            }
            _ = self.shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        debug!(%broker, "Connected");
        if self.exports.has_changed().unwrap_or(false) {
            self.session
                .set_exports(self.exports.borrow_and_update().clone());
        }
        self.session.handle_connected();
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut tls_poll = tokio::time::interval(TLS_POLL);
        tls_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(message) = self.session.poll_transmit() {
                send.write_all(&wire::encode(&message)?).await?;
            }
            if let Some(ended) = self.drain_events() {
                conn.close(0u32.into(), b"resync");
                return Ok(ended);
            }
            tokio::select! {
                read = recv.read(&mut buf) => {
                    let n = read?.ok_or(Error::StreamClosed)?;
                    decoder.extend(&buf[..n]);
                    while let Some(message) = decoder.decode::<BrokerMessage>()? {
                        self.session.handle_message(message);
                    }
                }
                changed = self.exports.changed(), if self.exports_open => match changed {
                    Ok(()) => self.session.set_exports(self.exports.borrow_and_update().clone()),
                    Err(_) => self.exports_open = false,
                },
                _ = tls_poll.tick() => {
                    if self.tls.reload().await {
                        conn.close(0u32.into(), b"certificate rotated");
                        return Ok(Ended::TlsChanged);
                    }
                }
                _ = self.shutdown.cancelled() => {
                    conn.close(0u32.into(), b"gateway shutting down");
                    return Ok(Ended::Shutdown);
                }
            }
        }
    }

    /// Publishes the session's view and this driver's connection facts, if they changed.
    fn publish_state(&self) {
        let next = SyncState {
            view: self.session.view().clone(),
            connected: self.session.is_live(),
            broker: self.broker,
            last_error: self.last_error.clone(),
            rejected: self.rejected.clone(),
        };
        self.state.send_if_modified(|state| {
            let changed = *state != next;
            *state = next;
            changed
        });
    }

    /// Acts on the session's events; `Some` if the connection must end.
    fn drain_events(&mut self) -> Option<Ended> {
        let mut ended = None;
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::ViewChanged => {
                    if self.session.is_live() {
                        self.last_error = None;
                    }
                    // Our Hello was just accepted: an earlier refusal no longer stands.
                    if self.session.is_live() && !self.was_live {
                        self.rejected = None;
                    }
                    self.was_live = self.session.is_live();
                    self.publish_state();
                }
                SessionEvent::Rejected(reason) => {
                    warn!(%reason, "Broker rejected our message");
                    self.rejected = Some(reason.to_string());
                    self.publish_state();
                }
                SessionEvent::ResyncNeeded { reason } => {
                    info!(
                        ?reason,
                        "Broker updates do not follow on from our view; resyncing"
                    );
                    ended = Some(Ended::Resync);
                }
            }
        }
        ended
    }
}
