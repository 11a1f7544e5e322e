//! Where the broker's records survive restarts.
//!
//! [`Store`] is what the broker's state task needs: load everything once at start, then
//! durably apply each batch of accepted changes before they are broadcast. [`MemStore`] keeps
//! them in memory (tests, simulations); [`RedbStore`] in a redb file (`--state PATH`), whose
//! commit is durable (fsync) when `apply` returns. The epoch is drawn at random when a store is
//! created and never changes, so gateways can tell a restarted broker (same epoch: resume) from
//! a new one (new epoch: full resync).

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::broker::state::Records;
use crate::model::{ClusterId, ClusterInfo, Export};
use crate::sync::wire::Change;

/// Everything the broker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub epoch: u64,
    pub revision: u64,
    pub clusters: Vec<ClusterInfo>,
    pub exports: Vec<(ClusterId, Export)>,
    /// Clusters whose lease ran out; their exports are kept but not served.
    pub withheld: Vec<ClusterId>,
}

impl Persisted {
    pub fn empty(epoch: u64) -> Self {
        Self {
            epoch,
            revision: 0,
            clusters: vec![],
            exports: vec![],
            withheld: vec![],
        }
    }
}

/// Durable storage of the broker's records.
///
/// A store may be shared by several brokers (replicas, `broker::etcd`): then `apply` can fail
/// with [`StoreError::Conflict`], and the store reports other replicas' commits and sessions
/// as [`StoreEvent`]s. The single-writer stores keep the defaults.
pub trait Store: Send + 'static {
    /// Everything stored, read afresh; called at start (and by a replica that fell too far
    /// behind to catch up).
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Durably applies `changes`, after which the revision is `revision`. On `Ok` the changes
    /// survive a crash; on `Err` none of them were applied. [`StoreError::Conflict`]: another
    /// writer moved the revision first; catch up and recompute.
    fn apply(&mut self, changes: &[Change], revision: u64) -> Result<(), StoreError>;
    /// The batches `(revision of their last change, changes)` committed after `revision`, in
    /// order, as far as the store still has them (`broker::replica::chain` checks they follow
    /// on). A single-writer store has nothing the broker did not commit itself: empty.
    fn committed_since(&self, _revision: u64) -> Result<Vec<(u64, Vec<Change>)>, StoreError> {
        Ok(vec![])
    }
    /// Other writers' commits and sessions, from when the store was opened; taken once.
    fn take_events(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        None
    }
    /// This broker has (or no longer has) a session of `cluster`: tells the other replicas,
    /// for their lease rules.
    fn set_presence(&mut self, _cluster: &ClusterId, _present: bool) -> Result<(), StoreError> {
        Ok(())
    }
    /// This broker's name among the store's writers.
    fn replica(&self) -> &str {
        "local"
    }
}

/// What a shared store reports about the other writers.
#[derive(Debug)]
pub enum StoreEvent {
    /// A batch was committed (by anyone, this broker included); its changes end at `revision`.
    Committed { revision: u64, changes: Vec<Change> },
    /// Replica `replica` has (or no longer has) a session of `cluster`.
    Presence {
        cluster: ClusterId,
        replica: String,
        present: bool,
    },
    /// Commits may have been missed (the watch restarted past a compaction): catch up.
    Lagging,
    /// The store cannot go on (this replica's etcd lease was lost): the broker stops.
    Failed(StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("broker state {path}")]
    Redb {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("broker state {path}: corrupt record in table {table}")]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("broker state {path}: invalid cluster id in a key of table {table}")]
    CorruptKey {
        path: PathBuf,
        table: &'static str,
        #[source]
        source: crate::model::IdError,
    },
    #[error(
        "broker state {path}: revision {stored} in the file, but changes were applied at revision {expected}"
    )]
    RevisionMismatch {
        path: PathBuf,
        stored: u64,
        expected: u64,
    },
    #[error("drawing a random epoch: {0}")]
    Random(getrandom::Error),
    #[error("another replica committed first: revision {stored}, expected {expected}")]
    Conflict { expected: u64, stored: u64 },
    #[error("etcd {endpoints}")]
    Etcd {
        endpoints: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error("etcd {endpoints}: the broker's records")]
    EtcdLayout {
        endpoints: String,
        #[source]
        source: crate::broker::etcd::LayoutError,
    },
    #[error("etcd {endpoints}: no answer within {after:?}")]
    EtcdTimeout {
        endpoints: String,
        after: std::time::Duration,
    },
    #[error("etcd {endpoints}: this replica's lease {lease:x} expired")]
    LeaseLost { endpoints: String, lease: i64 },
}

/// Where the broker keeps its records: `redb:PATH` (the embedded store, one broker) or
/// `etcd://HOST:PORT[,HOST:PORT…]` (an etcd cluster, shared by any number of broker replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Redb(PathBuf),
    /// etcd client endpoints, as URLs (`http://h1:2379`).
    Etcd(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("{0:?} is neither redb:PATH nor etcd://HOST:PORT[,HOST:PORT...]")]
    Scheme(String),
    #[error("{0:?} names no etcd endpoint")]
    NoEndpoints(String),
    #[error("etcd endpoint {0:?} is not HOST:PORT")]
    Endpoint(String),
}

impl std::str::FromStr for StoreLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                return Err(LocationError::Scheme(s.into()));
            }
            return Ok(Self::Redb(path.into()));
        }
        let hosts = s
            .strip_prefix("etcd://")
            .ok_or_else(|| LocationError::Scheme(s.into()))?;
        let mut endpoints = vec![];
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let valid = host.rsplit_once(':').is_some_and(|(h, port)| {
                !h.is_empty() && !h.contains('/') && port.parse::<u16>().is_ok()
            });
            if !valid {
                return Err(LocationError::Endpoint(host.into()));
            }
            endpoints.push(format!("http://{host}"));
        }
        if endpoints.is_empty() {
            return Err(LocationError::NoEndpoints(s.into()));
        }
        Ok(Self::Etcd(endpoints))
    }
}

/// In-memory store: loses everything with the process.
#[derive(Debug)]
pub struct MemStore {
    records: Records,
}

impl MemStore {
    pub fn new(epoch: u64) -> Self {
        Self {
            records: Records::from_persisted(Persisted::empty(epoch)),
        }
    }
}

impl Store for MemStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        Ok(self.records.to_persisted())
    }

    fn apply(&mut self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        for change in changes {
            self.records.apply(change);
        }
        debug_assert_eq!(
            self.records.revision, revision,
            "the broker's state and its store advance together"
        );
        Ok(())
    }
}

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// cluster id → postcard `ClusterInfo`.
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
/// (cluster id, namespace, name) → postcard `Export`.
const EXPORTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("exports");
/// Ids of withheld clusters.
const WITHHELD: TableDefinition<&str, ()> = TableDefinition::new("withheld");
const EPOCH_KEY: &str = "epoch";
const REVISION_KEY: &str = "revision";

/// A redb file. Opening takes redb's file lock: one broker per file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the file at `path`, creating it (with a fresh random epoch) if missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db: Database::create(path).at(path)?,
            path: path.to_owned(),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().at(&self.path)?;
        {
            let mut meta = txn.open_table(META).at(&self.path)?;
            if meta.get(EPOCH_KEY).at(&self.path)?.is_none() {
                let epoch = getrandom::u64().map_err(StoreError::Random)?;
                meta.insert(EPOCH_KEY, epoch).at(&self.path)?;
                meta.insert(REVISION_KEY, 0).at(&self.path)?;
            }
            txn.open_table(CLUSTERS).at(&self.path)?;
            txn.open_table(EXPORTS).at(&self.path)?;
            txn.open_table(WITHHELD).at(&self.path)?;
        }
        txn.commit().at(&self.path)
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        let corrupt = |table, source| StoreError::Corrupt {
            path: self.path.clone(),
            table,
            source,
        };
        let txn = self.db.begin_read().at(&self.path)?;
        let meta = txn.open_table(META).at(&self.path)?;
        let read_meta = |key| -> Result<u64, StoreError> {
            Ok(meta
                .get(key)
                .at(&self.path)?
                .map(|v| v.value())
                .unwrap_or_default())
        };
        let (epoch, revision) = (read_meta(EPOCH_KEY)?, read_meta(REVISION_KEY)?);
        let mut clusters = vec![];
        for row in txn
            .open_table(CLUSTERS)
            .at(&self.path)?
            .iter()
            .at(&self.path)?
        {
            let (_, value) = row.at(&self.path)?;
            clusters.push(postcard::from_bytes(value.value()).map_err(|e| corrupt("clusters", e))?);
        }
        let mut exports = vec![];
        for row in txn
            .open_table(EXPORTS)
            .at(&self.path)?
            .iter()
            .at(&self.path)?
        {
            let (key, value) = row.at(&self.path)?;
            let cluster: ClusterId =
                key.value()
                    .0
                    .parse()
                    .map_err(|source| StoreError::CorruptKey {
                        path: self.path.clone(),
                        table: "exports",
                        source,
                    })?;
            let export: Export =
                postcard::from_bytes(value.value()).map_err(|e| corrupt("exports", e))?;
            exports.push((cluster, export));
        }
        let mut withheld = vec![];
        for row in txn
            .open_table(WITHHELD)
            .at(&self.path)?
            .iter()
            .at(&self.path)?
        {
            let (key, _) = row.at(&self.path)?;
            withheld.push(
                key.value()
                    .parse()
                    .map_err(|source| StoreError::CorruptKey {
                        path: self.path.clone(),
                        table: "withheld",
                        source,
                    })?,
            );
        }
        Ok(Persisted {
            epoch,
            revision,
            clusters,
            exports,
            withheld,
        })
    }

    fn apply(&mut self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().at(&self.path)?;
        {
            let mut meta = txn.open_table(META).at(&self.path)?;
            let stored = meta
                .get(REVISION_KEY)
                .at(&self.path)?
                .map(|v| v.value())
                .unwrap_or_default();
            let expected = revision.saturating_sub(changes.len() as u64);
            if stored != expected {
                return Err(StoreError::RevisionMismatch {
                    path: self.path.clone(),
                    stored,
                    expected,
                });
            }
            let mut clusters = txn.open_table(CLUSTERS).at(&self.path)?;
            let mut exports = txn.open_table(EXPORTS).at(&self.path)?;
            let mut withheld = txn.open_table(WITHHELD).at(&self.path)?;
            for change in changes {
                match change {
                    Change::UpsertCluster(info) => {
                        let bytes =
                            postcard::to_stdvec(info).expect("model types always serialize");
                        clusters
                            .insert(info.id.as_str(), bytes.as_slice())
                            .at(&self.path)?;
                    }
                    Change::RemoveCluster(id) => {
                        clusters.remove(id.as_str()).at(&self.path)?;
                        withheld.remove(id.as_str()).at(&self.path)?;
                        let mut doomed: Vec<(String, String)> = vec![];
                        for row in exports.iter().at(&self.path)? {
                            let (key, _) = row.at(&self.path)?;
                            let (c, ns, name) = key.value();
                            if c == id.as_str() {
                                doomed.push((ns.to_owned(), name.to_owned()));
                            }
                        }
                        for (ns, name) in doomed {
                            exports
                                .remove((id.as_str(), ns.as_str(), name.as_str()))
                                .at(&self.path)?;
                        }
                    }
                    Change::UpsertExport { cluster, export } => {
                        let bytes =
                            postcard::to_stdvec(export).expect("model types always serialize");
                        let key = (
                            cluster.as_str(),
                            export.service.namespace.as_str(),
                            export.service.name.as_str(),
                        );
                        exports.insert(key, bytes.as_slice()).at(&self.path)?;
                    }
                    Change::RemoveExport { cluster, service } => {
                        exports
                            .remove((
                                cluster.as_str(),
                                service.namespace.as_str(),
                                service.name.as_str(),
                            ))
                            .at(&self.path)?;
                    }
                    Change::WithholdCluster(id) => {
                        withheld.insert(id.as_str(), ()).at(&self.path)?;
                    }
                    Change::RestoreCluster { cluster, .. } => {
                        withheld.remove(cluster.as_str()).at(&self.path)?;
                    }
                }
            }
            meta.insert(REVISION_KEY, revision).at(&self.path)?;
        }
        txn.commit().at(&self.path)
    }
}

/// Attaches the file's path to redb's many error types.
trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> AtPath<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Redb {
            path: path.to_owned(),
            source: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{cluster, id};

    fn export(name: &str) -> Export {
        crate::model::fixtures::export(name, "10.101.0.10")
    }
    use crate::model::ServiceKey;

    fn changes() -> Vec<Change> {
        vec![
            Change::UpsertCluster(cluster("c1")),
            Change::UpsertCluster(cluster("c2")),
            Change::UpsertExport {
                cluster: id("c1"),
                export: export("web"),
            },
            Change::UpsertExport {
                cluster: id("c1"),
                export: export("db"),
            },
            Change::UpsertExport {
                cluster: id("c2"),
                export: export("web"),
            },
            Change::RemoveExport {
                cluster: id("c1"),
                service: ServiceKey::new("shop", "db").unwrap(),
            },
            Change::WithholdCluster(id("c2")),
            Change::WithholdCluster(id("c1")),
            Change::RestoreCluster {
                cluster: id("c1"),
                exports: vec![export("web")],
            },
        ]
    }

    #[test]
    fn store_locations_parse() {
        let etcd = |hosts: &[&str]| {
            Ok(StoreLocation::Etcd(
                hosts.iter().map(|h| format!("http://{h}")).collect(),
            ))
        };
        let table: Vec<(&str, Result<StoreLocation, LocationError>)> = vec![
            (
                "redb:/var/b.redb",
                Ok(StoreLocation::Redb("/var/b.redb".into())),
            ),
            ("etcd://h1:2379", etcd(&["h1:2379"])),
            (
                "etcd://h1:2379,10.0.0.2:2379, [::1]:2379",
                etcd(&["h1:2379", "10.0.0.2:2379", "[::1]:2379"]),
            ),
            ("etcd://", Err(LocationError::NoEndpoints("etcd://".into()))),
            ("etcd://h1", Err(LocationError::Endpoint("h1".into()))),
            ("etcd://h1:x", Err(LocationError::Endpoint("h1:x".into()))),
            (
                "/var/b.redb",
                Err(LocationError::Scheme("/var/b.redb".into())),
            ),
            ("redb:", Err(LocationError::Scheme("redb:".into()))),
        ];
        for (input, expected) in table {
            assert_eq!(input.parse::<StoreLocation>(), expected, "{input}");
        }
    }

    #[test]
    fn redb_store_survives_reopening_with_the_same_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.redb");
        let epoch = {
            let mut store = RedbStore::open(&path).unwrap();
            let empty = store.load().unwrap();
            assert_eq!(empty.revision, 0);
            store.apply(&changes(), 9).unwrap();
            empty.epoch
        };
        let store = RedbStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        let mut mem = MemStore::new(epoch);
        mem.apply(&changes(), 9).unwrap();
        assert_eq!(loaded, mem.load().unwrap());
        assert_eq!(loaded.exports.len(), 2);
        assert_eq!(loaded.withheld, vec![id("c2")]);
    }

    #[test]
    fn redb_store_removing_a_cluster_removes_its_exports_and_withholding() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(&dir.path().join("b.redb")).unwrap();
        store.apply(&changes(), 9).unwrap();
        store.apply(&[Change::RemoveCluster(id("c2"))], 10).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.clusters, vec![cluster("c1")]);
        assert_eq!(loaded.exports, vec![(id("c1"), export("web"))]);
        assert!(loaded.withheld.is_empty(), "c2's withholding went with it");
        assert_eq!(loaded.revision, 10);
    }

    #[test]
    fn redb_store_refuses_changes_out_of_revision_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(&dir.path().join("b.redb")).unwrap();
        let err = store.apply(&changes(), 12).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::RevisionMismatch {
                    stored: 0,
                    expected: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.load().unwrap().revision, 0, "nothing applied");
    }

    #[test]
    fn new_stores_draw_different_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let a = RedbStore::open(&dir.path().join("a.redb"))
            .unwrap()
            .load()
            .unwrap()
            .epoch;
        let b = RedbStore::open(&dir.path().join("b.redb"))
            .unwrap()
            .load()
            .unwrap()
            .epoch;
        assert_ne!(a, b);
    }
}
