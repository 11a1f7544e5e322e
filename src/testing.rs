//! Test support shared by the crate's tests (compiled only for them): waiting for a condition
//! with a deadline ([`eventually`], [`eventually_async`]), a clusterset PKI in a temporary
//! directory ([`Pki`]) and a gateway's sync client against a real broker ([`SyncClient`]).
//! The model's builders are `model::fixtures`, beside the types they fill in.
//!
//! Integration tests under `tests/` cannot reach this module (it is `cfg(test)`); they use
//! `netlab` for their labs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::fixtures::id;
use crate::model::{ClusterInfo, Export};
use crate::sync::{SyncConfig, SyncState, spawn_client};

/// How long a test waits for something that should happen: generous, since CI machines are
/// slow and shared; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`] saying `what`.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    eventually_async(what, async || check()).await
}

/// [`eventually`] for a check that must await (a DNS query, an HTTP GET).
pub async fn eventually_async<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = crate::clock::tokio_now() + DEADLINE;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(
            crate::clock::tokio_now() < deadline,
            "timed out after {DEADLINE:?} waiting: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A clusterset CA with a broker certificate and one per cluster, in a temporary directory
/// removed on drop: `path("ca")`, `path("broker")`, `path("c1")`, … are TLS directories.
pub struct Pki {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Pki {
    /// The CA, the broker's certificate and one for each of `clusters`.
    pub fn new(clusters: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().to_owned();
        crate::certs::init_ca(&root.join("ca")).expect("a CA");
        crate::certs::issue_broker(&root.join("ca"), &root.join("broker"))
            .expect("the broker's certificate");
        for c in clusters {
            crate::certs::issue_cluster(&root.join("ca"), &id(c), &root.join(c))
                .expect("a cluster certificate");
        }
        Self { _dir: dir, root }
    }

    /// The directory `name` under the PKI's root.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// A gateway's sync client (`sync::spawn_client`) with the certificate in `tls_dir`: publish
/// through `exports`, observe through `state`. Stops on drop.
pub struct SyncClient {
    pub exports: watch::Sender<Vec<Export>>,
    pub state: watch::Receiver<SyncState>,
    _shutdown: tokio_util::sync::DropGuard,
}

impl SyncClient {
    /// Starts a client of `brokers` (tried in order) publishing `exports` as `me`.
    pub fn start(
        tls_dir: PathBuf,
        me: ClusterInfo,
        brokers: Vec<SocketAddr>,
        exports: Vec<Export>,
    ) -> Self {
        let (exports, exports_rx) = watch::channel(exports);
        let shutdown = CancellationToken::new();
        let config = SyncConfig {
            brokers,
            tls_dir,
            reconnect_backoff_max: Duration::from_millis(500),
        };
        let state = spawn_client(config, me, exports_rx, shutdown.clone())
            .expect("starting the sync client");
        Self {
            exports,
            state,
            _shutdown: shutdown.drop_guard(),
        }
    }

    /// Waits until the client's state satisfies `predicate` (returning that state), or
    /// panics after `deadline` saying `what`, with the last state.
    pub async fn wait_for_within(
        &mut self,
        deadline: Duration,
        what: &str,
        predicate: impl Fn(&SyncState) -> bool,
    ) -> SyncState {
        let result = tokio::time::timeout(deadline, self.state.wait_for(|s| predicate(s)))
            .await
            .map(|r| r.map(|state| state.clone()));
        match result {
            Ok(Ok(state)) => state,
            _ => panic!(
                "timed out waiting for {what}; last state: {:#?}",
                *self.state.borrow()
            ),
        }
    }

    /// [`Self::wait_for_within`] the [`DEADLINE`].
    pub async fn wait_for(
        &mut self,
        what: &str,
        predicate: impl Fn(&SyncState) -> bool,
    ) -> SyncState {
        self.wait_for_within(DEADLINE, what, predicate).await
    }
}
