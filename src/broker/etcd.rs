//! The broker's store in an etcd cluster (`causeway broker --store etcd://h1:2379,…`), shared
//! by any number of broker replicas: the shell around `layout` (keys, transactions) and
//! `broker::replica` (the rules replicas follow).
//!
//! - **Writes.** [`Store::apply`] is one transaction that compares the stored clusterset
//!   revision with the one the batch builds on, then writes the records, the batch under
//!   `log/`, and the new revision. Another replica's commit in between makes it fail with
//!   [`StoreError::Conflict`]; the state task then catches up and recomputes. The clusterset
//!   revision is a counter kept in etcd (one per change, as gateways count), not etcd's own
//!   revision (one per transaction, and moved by presence keys too); each batch is one etcd
//!   revision.
//! - **Reads.** A watch on `log/` and `presence/`, started at open from the etcd revision of
//!   the first read, reports every commit (this replica's own too: skipped as already applied)
//!   and every presence key as [`StoreEvent`]s. A broken watch (its etcd member died) is
//!   restarted from the last etcd revision seen; one restarted past a compaction reports
//!   [`StoreEvent::Lagging`], and the state task reads the missed batches from `log/`.
//! - **Epoch.** Drawn at random by the first broker that finds none, in a create-if-absent
//!   transaction: every replica serves the same one, so a gateway resumes on any of them.
//! - **Leases.** Each replica holds an etcd lease ([`REPLICA_LEASE_TTL`]); its presence keys
//!   hang on it and vanish when it dies. Losing the lease (etcd unreachable for longer than
//!   the TTL) stops the broker: its gateways move to another replica.
//!
//! The store's trait is synchronous (the state task runs on a blocking thread); each call
//! blocks on the runtime the store was opened in, retrying transient errors for
//! [`RPC_DEADLINE`]. etcd must accept transactions as large as the broker's biggest batch:
//! run it with `--max-txn-ops` ≥ `--max-services` + 3 and `--max-request-bytes` ≥ 16 MiB.

mod layout;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

pub use layout::LayoutError;

use crate::broker::store::{Persisted, Store, StoreError, StoreEvent};
use crate::clock;
use crate::model::ClusterId;
use crate::sync::wire::Change;

/// Seconds a replica's etcd lease lives without renewal: a dead replica's sessions stop
/// counting for the clusters' leases this long after it died. Renewed every third of it.
pub const REPLICA_LEASE_TTL: i64 = 5;
/// How long one store call retries before it fails (an etcd leader election takes ~1 s).
pub const RPC_DEADLINE: Duration = Duration::from_secs(10);
/// The largest answer accepted when loading everything (gRPC's default is 4 MiB, about 30k
/// exports of a few endpoints).
const MAX_LOAD_BYTES: usize = 256 * 1024 * 1024;
/// Pause before restarting a broken watch or keep-alive stream.
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// An open store; background tasks (watch, lease keep-alive) stop when it is dropped, and the
/// lease is revoked, so this replica's presence keys go at once.
pub struct EtcdStore {
    client: Client,
    runtime: Handle,
    endpoints: String,
    replica: String,
    lease: i64,
    events: Option<mpsc::UnboundedReceiver<StoreEvent>>,
    _stop: DropGuard,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (URLs), creates the epoch if the clusterset has none, takes this
    /// replica's lease and starts following the store. Must be called inside a tokio runtime;
    /// the store's calls then block on it (from a blocking thread).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let names = endpoints.join(",");
        let err = |source| StoreError::Etcd {
            endpoints: names.clone(),
            source: Box::new(source),
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(err)?;
        let epoch = getrandom::u64().map_err(StoreError::Random)?;
        let create = Txn::new()
            .when([Compare::create_revision(
                layout::epoch_key(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(layout::epoch_key(), epoch.to_string(), None),
                TxnOp::put(layout::revision_key(), "0", None),
            ]);
        let created = retry(&names, || {
            let (mut kv, txn) = (client.kv_client(), create.clone());
            async move { kv.txn(txn).await }
        })
        .await?
        .succeeded();
        if created {
            info!(endpoints = %names, epoch, "New clusterset in etcd");
        }
        let replica = format!("{:016x}", getrandom::u64().map_err(StoreError::Random)?);
        let lease = retry(&names, || {
            let mut c = client.lease_client();
            async move { c.grant(REPLICA_LEASE_TTL, None).await }
        })
        .await?
        .id();
        let (events, rx) = mpsc::unbounded_channel();
        // Presence held now, then every change after this read.
        let held = retry(&names, || {
            let mut kv = client.kv_client();
            async move {
                kv.get(
                    layout::presence_prefix(),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
            }
        })
        .await?;
        let read_at = held.header().map(|h| h.revision()).unwrap_or_default();
        for kv in held.kvs() {
            if let Some(event) = kv.key_str().ok().and_then(|k| presence_event(k, true)) {
                let _ = events.send(event);
            }
        }
        let stop = CancellationToken::new();
        let endpoints_label = names.clone();
        tokio::spawn(watch(
            client.clone(),
            read_at + 1,
            events.clone(),
            stop.clone(),
            endpoints_label.clone(),
        ));
        tokio::spawn(keep_alive(
            client.clone(),
            lease,
            events,
            stop.clone(),
            endpoints_label,
        ));
        info!(endpoints = %names, %replica, lease = format_args!("{lease:x}"), "Broker replica joined the etcd store");
        Ok(Self {
            client,
            runtime: Handle::current(),
            endpoints: names,
            replica,
            lease,
            events: Some(rx),
            _stop: stop.drop_guard(),
        })
    }

    fn layout_err(&self, source: LayoutError) -> StoreError {
        StoreError::EtcdLayout {
            endpoints: self.endpoints.clone(),
            source,
        }
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        let mut read = vec![
            TxnOp::get(layout::epoch_key(), None),
            TxnOp::get(layout::revision_key(), None),
        ];
        for prefix in layout::record_prefixes() {
            read.push(TxnOp::get(prefix, Some(GetOptions::new().with_prefix())));
        }
        // One transaction: everything at one etcd revision.
        let txn = Txn::new().and_then(read);
        let response = self.runtime.block_on(async {
            retry(&self.endpoints, || {
                let kv = self.client.kv_client();
                let (mut kv, txn) = (kv.max_decoding_message_size(MAX_LOAD_BYTES), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
        })?;
        let gets: Vec<_> = response
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(get) => Some(get),
                _ => None,
            })
            .collect();
        let number = |i: usize, key: String| -> Result<u64, StoreError> {
            match gets.get(i).and_then(|g| g.kvs().first()) {
                Some(kv) => layout::decode_number(&key, kv.value()).map_err(|e| self.layout_err(e)),
                None => Ok(0),
            }
        };
        let epoch = number(0, layout::epoch_key())?;
        let revision = number(1, layout::revision_key())?;
        let kvs = gets
            .iter()
            .skip(2)
            .flat_map(|g| g.kvs())
            .filter_map(|kv| Some((kv.key_str().ok()?, kv.value())));
        layout::decode_records(epoch, revision, kvs).map_err(|e| self.layout_err(e))
    }

    fn apply(&mut self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        let expected = revision.saturating_sub(changes.len() as u64);
        let ops: Vec<TxnOp> = layout::batch_ops(changes, revision)
            .into_iter()
            .map(txn_op)
            .collect();
        let txn = Txn::new()
            .when([Compare::value(
                layout::revision_key(),
                CompareOp::Equal,
                expected.to_string(),
            )])
            .and_then(ops)
            .or_else([TxnOp::get(layout::revision_key(), None)]);
        let response = self.runtime.block_on(async {
            retry(&self.endpoints, || {
                let (mut kv, txn) = (self.client.kv_client(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
        })?;
        if response.succeeded() {
            return Ok(());
        }
        let stored = match response.op_responses().first() {
            Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                Some(kv) => {
                    layout::decode_number("revision", kv.value()).map_err(|e| self.layout_err(e))?
                }
                None => 0,
            },
            _ => 0,
        };
        Err(StoreError::Conflict { expected, stored })
    }

    fn committed_since(&self, revision: u64) -> Result<Vec<(u64, Vec<Change>)>, StoreError> {
        let from = layout::log_key(revision.saturating_add(1));
        let to = layout::log_key(u64::MAX);
        let response = self.runtime.block_on(async {
            retry(&self.endpoints, || {
                let kv = self.client.kv_client();
                let kv = kv.max_decoding_message_size(MAX_LOAD_BYTES);
                let (mut kv, from, to) = (kv, from.clone(), to.clone());
                async move { kv.get(from, Some(GetOptions::new().with_range(to))).await }
            })
            .await
        })?;
        let mut batches = vec![];
        for kv in response.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some(at) = layout::decode_log_key(key) else {
                continue;
            };
            let changes =
                layout::decode_log_value(key, kv.value()).map_err(|e| self.layout_err(e))?;
            batches.push((at, changes));
        }
        Ok(batches)
    }

    fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        self.events.take()
    }

    fn set_presence(&mut self, cluster: &ClusterId, present: bool) -> Result<(), StoreError> {
        let key = layout::presence_key(cluster, &self.replica);
        let lease = self.lease;
        self.runtime.block_on(async {
            retry(&self.endpoints, || {
                let (mut kv, key) = (self.client.kv_client(), key.clone());
                async move {
                    if present {
                        kv.put(key, "", Some(PutOptions::new().with_lease(lease)))
                            .await
                            .map(drop)
                    } else {
                        kv.delete(key, None).await.map(drop)
                    }
                }
            })
            .await
        })
    }

    fn replica(&self) -> &str {
        &self.replica
    }
}

fn txn_op(op: layout::KeyOp) -> TxnOp {
    match op {
        layout::KeyOp::Put(key, value) => TxnOp::put(key, value, None),
        layout::KeyOp::Delete(key) => TxnOp::delete(key, None),
        layout::KeyOp::DeletePrefix(prefix) => {
            TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
        }
        layout::KeyOp::DeleteRange { from, to } => {
            TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)))
        }
    }
}

/// Calls `call` until it succeeds, an error is not worth retrying, or [`RPC_DEADLINE`]
/// passed. A retried transaction may have been applied by the failed attempt: the revision
/// compare then fails, and the caller catches up as after any conflict.
async fn retry<T, F, Fut>(endpoints: &str, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = clock::now() + RPC_DEADLINE;
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if retryable(&e) && clock::now() + delay < deadline => {
                debug!(endpoints, error = %e, "etcd call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) if retryable(&e) => {
                return Err(StoreError::EtcdTimeout {
                    endpoints: endpoints.into(),
                    after: RPC_DEADLINE,
                });
            }
            Err(e) => {
                return Err(StoreError::Etcd {
                    endpoints: endpoints.into(),
                    source: Box::new(e),
                });
            }
        }
    }
}

/// Whether another attempt may succeed: transport trouble and unavailable members, not a
/// refused request (too many operations, too large).
fn retryable(error: &etcd_client::Error) -> bool {
    match error {
        // gRPC codes: 1 cancelled, 2 unknown, 4 deadline exceeded, 10 aborted, 13 internal,
        // 14 unavailable (no leader, member down).
        etcd_client::Error::GRpcStatus(status) => {
            matches!(i32::from(status.code()), 1 | 2 | 4 | 10 | 13 | 14)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn presence_event(key: &str, present: bool) -> Option<StoreEvent> {
    let (cluster, replica) = layout::decode_presence_key(key)?;
    Some(StoreEvent::Presence {
        cluster,
        replica,
        present,
    })
}

/// Reports commits and presence from etcd revision `next` on, until `stop` or the receiver is
/// gone; restarts the watch where it broke.
async fn watch(
    mut client: Client,
    mut next: i64,
    events: mpsc::UnboundedSender<StoreEvent>,
    stop: CancellationToken,
    endpoints: String,
) {
    // `log/` through `presence/`: no other broker key sorts between them.
    let to = format!("{}presence0", layout::PREFIX);
    loop {
        let options = WatchOptions::new()
            .with_range(to.clone())
            .with_start_revision(next);
        let started = tokio::select! {
            _ = stop.cancelled() => return,
            started = client.watch(layout::log_prefix(), Some(options)) => started,
        };
        match started {
            Ok(mut stream) => loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    message = stream.message() => message,
                };
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => break,
                    Err(e) => {
                        debug!(%endpoints, error = %e, "etcd watch broke; restarting");
                        break;
                    }
                };
                if response.canceled() {
                    if response.compact_revision() > next {
                        warn!(%endpoints, from = next, compacted = response.compact_revision(), "etcd history compacted under the watch; catching up from the log");
                        next = response.compact_revision();
                        if events.send(StoreEvent::Lagging).is_err() {
                            return;
                        }
                    }
                    break;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    next = next.max(kv.mod_revision() + 1);
                    let Ok(key) = kv.key_str() else { continue };
                    let put = event.event_type() == EventType::Put;
                    let reported = match layout::decode_log_key(key) {
                        Some(revision) if put => match layout::decode_log_value(key, kv.value()) {
                            Ok(changes) => StoreEvent::Committed { revision, changes },
                            Err(source) => StoreEvent::Failed(StoreError::EtcdLayout {
                                endpoints: endpoints.clone(),
                                source,
                            }),
                        },
                        Some(_) => continue, // trimmed from the log
                        None => match presence_event(key, put) {
                            Some(event) => event,
                            None => continue,
                        },
                    };
                    if events.send(reported).is_err() {
                        return;
                    }
                }
            },
            Err(e) => debug!(%endpoints, error = %e, "etcd watch did not start; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESTART_DELAY) => {}
        }
    }
}

/// Renews this replica's lease every third of its TTL until `stop`, then revokes it. A lease
/// found expired is reported as [`StoreEvent::Failed`].
async fn keep_alive(
    mut client: Client,
    lease: i64,
    events: mpsc::UnboundedSender<StoreEvent>,
    stop: CancellationToken,
    endpoints: String,
) {
    let period = Duration::from_millis(REPLICA_LEASE_TTL as u64 * 1000 / 3);
    'reopen: loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => break,
            opened = client.lease_keep_alive(lease) => opened,
        };
        match opened {
            Ok((mut keeper, mut stream)) => loop {
                let renewed = tokio::select! {
                    _ = stop.cancelled() => break 'reopen,
                    renewed = async {
                        keeper.keep_alive().await?;
                        stream.message().await
                    } => renewed,
                };
                match renewed {
                    Ok(Some(response)) if response.ttl() > 0 => {}
                    Ok(Some(_)) => {
                        let _ = events.send(StoreEvent::Failed(StoreError::LeaseLost {
                            endpoints,
                            lease,
                        }));
                        return;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(%endpoints, error = %e, "etcd lease keep-alive broke; reopening");
                        break;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break 'reopen,
                    _ = tokio::time::sleep(period) => {}
                }
            },
            Err(e) => {
                debug!(%endpoints, error = %e, "etcd lease keep-alive did not open; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(RESTART_DELAY) => {}
        }
    }
    // Graceful exit: this replica's presence keys go now rather than after the TTL.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
}
