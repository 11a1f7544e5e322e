//! How the broker's records are laid out in etcd, and how a batch of changes becomes the
//! operations of one transaction. Pure: the shell (`broker/etcd.rs`) sends what this builds.
//!
//! Keys, all under [`PREFIX`]:
//! - `epoch`, `revision`: decimal `u64`s. `revision` is the clusterset revision (one per
//!   change, as the wire protocol counts); every transaction compares it, so writers serialize;
//! - `clusters/<id>`: postcard `ClusterInfo`; `exports/<cluster>/<ns>/<name>`: postcard
//!   `Export`; `withheld/<id>`: empty;
//! - `log/<revision, 20 digits>`: postcard `Vec<Change>`, the batch whose last change has that
//!   revision (its first is `revision - len + 1`); the last [`LOG_KEEP`] batches are kept, so
//!   replicas that fell behind, and their gateways, catch up with deltas;
//! - `presence/<cluster>/<replica>`: empty, attached to the replica's etcd lease: the cluster
//!   has a session at that replica (see `broker::replica`).

use crate::model::{ClusterId, ClusterInfo, Export, IdError};
use crate::sync::wire::Change;

use crate::broker::store::Persisted;

pub const PREFIX: &str = "causeway/";
/// Batches kept under `log/`: at ~10 changes per batch this covers the same ground as the
/// in-memory resume log (`DEFAULT_LOG_CAPACITY`, 4096 changes) several times over.
pub const LOG_KEEP: u64 = 1024;

pub fn epoch_key() -> String {
    format!("{PREFIX}epoch")
}

pub fn revision_key() -> String {
    format!("{PREFIX}revision")
}

pub fn log_prefix() -> String {
    format!("{PREFIX}log/")
}

pub fn log_key(revision: u64) -> String {
    format!("{PREFIX}log/{revision:020}")
}

pub fn presence_prefix() -> String {
    format!("{PREFIX}presence/")
}

pub fn presence_key(cluster: &ClusterId, replica: &str) -> String {
    format!("{PREFIX}presence/{cluster}/{replica}")
}

fn cluster_key(id: &ClusterId) -> String {
    format!("{PREFIX}clusters/{id}")
}

fn withheld_key(id: &ClusterId) -> String {
    format!("{PREFIX}withheld/{id}")
}

fn exports_of(cluster: &ClusterId) -> String {
    format!("{PREFIX}exports/{cluster}/")
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOp {
    Put(String, Vec<u8>),
    Delete(String),
    /// Every key starting with this.
    DeletePrefix(String),
    /// Every key in `[from, to)`.
    DeleteRange {
        from: String,
        to: String,
    },
}

/// The operations that store `changes`, the batch that ends at `revision`: the records, the
/// batch under `log/`, the new `revision`, and trimming the log to [`LOG_KEEP`] batches.
///
/// etcd refuses a transaction that writes one key twice, so writes to the same key collapse to
/// the last one. A batch must not write a key under a cluster it also removes (the broker never
/// builds one: removals come from lease expiry, in batches of their own).
pub fn batch_ops(changes: &[Change], revision: u64) -> Vec<KeyOp> {
    let mut ops: Vec<KeyOp> = vec![];
    // A write to one key replaces any earlier write to it.
    let point = |ops: &mut Vec<KeyOp>, op: KeyOp| {
        if let KeyOp::Put(key, _) | KeyOp::Delete(key) = &op {
            ops.retain(|o| !matches!(o, KeyOp::Put(k, _) | KeyOp::Delete(k) if k == key));
        }
        ops.push(op);
    };
    for change in changes {
        match change {
            Change::UpsertCluster(info) => {
                point(&mut ops, KeyOp::Put(cluster_key(&info.id), encode(info)))
            }
            Change::RemoveCluster(id) => {
                let prefix = exports_of(id);
                ops.retain(
                    |o| !matches!(o, KeyOp::Put(k, _) | KeyOp::Delete(k) if k.starts_with(&prefix)),
                );
                point(&mut ops, KeyOp::Delete(cluster_key(id)));
                point(&mut ops, KeyOp::Delete(withheld_key(id)));
                ops.push(KeyOp::DeletePrefix(prefix));
            }
            Change::UpsertExport { cluster, export } => point(
                &mut ops,
                KeyOp::Put(export_key(cluster, export), encode(export)),
            ),
            Change::RemoveExport { cluster, service } => point(
                &mut ops,
                KeyOp::Delete(format!(
                    "{}{}/{}",
                    exports_of(cluster),
                    service.namespace,
                    service.name
                )),
            ),
            Change::WithholdCluster(id) => point(&mut ops, KeyOp::Put(withheld_key(id), vec![])),
            Change::RestoreCluster { cluster, .. } => {
                point(&mut ops, KeyOp::Delete(withheld_key(cluster)))
            }
        }
    }
    ops.push(KeyOp::Put(log_key(revision), encode(&changes)));
    ops.push(KeyOp::Put(
        revision_key(),
        revision.to_string().into_bytes(),
    ));
    if revision > LOG_KEEP {
        ops.push(KeyOp::DeleteRange {
            from: log_key(0),
            to: log_key(revision - LOG_KEEP + 1),
        });
    }
    ops
}

fn export_key(cluster: &ClusterId, export: &Export) -> String {
    format!(
        "{}{}/{}",
        exports_of(cluster),
        export.service.namespace,
        export.service.name
    )
}

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("model types always serialize")
}

/// A stored value or key that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("key {key}: value does not decode")]
    Value {
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("key {key}: not a number")]
    Number { key: String },
    #[error("key {key}: invalid cluster id")]
    Cluster {
        key: String,
        #[source]
        source: IdError,
    },
    #[error("key {key} is not one of the broker's")]
    Unknown { key: String },
}

/// A decimal `u64` value (`epoch`, `revision`).
pub fn decode_number(key: &str, value: &[u8]) -> Result<u64, LayoutError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| LayoutError::Number { key: key.into() })
}

/// The revision a `log/` key names, `None` for another key.
pub fn decode_log_key(key: &str) -> Option<u64> {
    key.strip_prefix(&log_prefix())?.parse().ok()
}

pub fn decode_log_value(key: &str, value: &[u8]) -> Result<Vec<Change>, LayoutError> {
    postcard::from_bytes(value).map_err(|source| LayoutError::Value {
        key: key.into(),
        source,
    })
}

/// The cluster and replica a `presence/` key names, `None` for another key.
pub fn decode_presence_key(key: &str) -> Option<(ClusterId, String)> {
    let rest = key.strip_prefix(&presence_prefix())?;
    let (cluster, replica) = rest.split_once('/')?;
    Some((cluster.parse().ok()?, replica.to_owned()))
}

/// The records from the keys under `clusters/`, `exports/` and `withheld/` (others are
/// refused), all read at one etcd revision.
pub fn decode_records<'a>(
    epoch: u64,
    revision: u64,
    kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Persisted, LayoutError> {
    let mut persisted = Persisted::empty(epoch);
    persisted.revision = revision;
    let value_error = |key: &str| {
        let key = key.to_owned();
        move |source| LayoutError::Value { key, source }
    };
    let cluster_id = |key: &str, s: &str| {
        s.parse::<ClusterId>()
            .map_err(|source| LayoutError::Cluster {
                key: key.into(),
                source,
            })
    };
    for (key, value) in kvs {
        let rest = key.strip_prefix(PREFIX).unwrap_or(key);
        if rest.starts_with("clusters/") {
            let info: ClusterInfo = postcard::from_bytes(value).map_err(value_error(key))?;
            persisted.clusters.push(info);
        } else if let Some(id) = rest.strip_prefix("withheld/") {
            persisted.withheld.push(cluster_id(key, id)?);
        } else if let Some(path) = rest.strip_prefix("exports/") {
            let (cluster, _) = path
                .split_once('/')
                .ok_or_else(|| LayoutError::Unknown { key: key.into() })?;
            let export: Export = postcard::from_bytes(value).map_err(value_error(key))?;
            persisted.exports.push((cluster_id(key, cluster)?, export));
        } else {
            return Err(LayoutError::Unknown { key: key.into() });
        }
    }
    Ok(persisted)
}

/// The prefixes [`decode_records`] reads.
pub fn record_prefixes() -> [String; 3] {
    [
        format!("{PREFIX}clusters/"),
        format!("{PREFIX}exports/"),
        format!("{PREFIX}withheld/"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::state::Records;
    use crate::model::ServiceKey;
    use crate::model::fixtures::{cluster, export, id};

    /// Plays `ops` on a key-value map the way etcd would.
    fn play(kv: &mut std::collections::BTreeMap<String, Vec<u8>>, ops: &[KeyOp]) {
        for op in ops {
            match op {
                KeyOp::Put(k, v) => {
                    kv.insert(k.clone(), v.clone());
                }
                KeyOp::Delete(k) => {
                    kv.remove(k);
                }
                KeyOp::DeletePrefix(p) => kv.retain(|k, _| !k.starts_with(p)),
                KeyOp::DeleteRange { from, to } => kv.retain(|k, _| k < from || k >= to),
            }
        }
    }

    fn load(kv: &std::collections::BTreeMap<String, Vec<u8>>) -> Persisted {
        let prefixes = record_prefixes();
        let revision = decode_number("revision", &kv[&revision_key()]).unwrap();
        decode_records(
            7,
            revision,
            kv.iter()
                .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
                .map(|(k, v)| (k.as_str(), v.as_slice())),
        )
        .unwrap()
    }

    #[test]
    fn batches_stored_as_keys_load_back_as_the_same_records() {
        let web = |a: &str| export("web", a);
        let batches: Vec<Vec<Change>> = vec![
            vec![
                Change::UpsertCluster(cluster("c1")),
                Change::UpsertCluster(cluster("c10")),
                Change::UpsertExport {
                    cluster: id("c1"),
                    export: web("10.0.0.1"),
                },
                Change::UpsertExport {
                    cluster: id("c1"),
                    export: export("db", "10.0.0.2"),
                },
                Change::UpsertExport {
                    cluster: id("c10"),
                    export: web("10.0.0.3"),
                },
            ],
            // The same key twice in one batch collapses to the last write.
            vec![
                Change::UpsertExport {
                    cluster: id("c1"),
                    export: web("10.0.0.4"),
                },
                Change::UpsertExport {
                    cluster: id("c1"),
                    export: web("10.0.0.5"),
                },
                Change::RemoveExport {
                    cluster: id("c1"),
                    service: ServiceKey::new("shop", "db").unwrap(),
                },
                Change::WithholdCluster(id("c10")),
            ],
            vec![Change::RestoreCluster {
                cluster: id("c10"),
                exports: vec![web("10.0.0.3")],
            }],
            vec![
                Change::WithholdCluster(id("c1")),
                Change::RemoveCluster(id("c1")),
            ],
        ];
        let mut kv = std::collections::BTreeMap::new();
        let mut records = Records {
            epoch: 7,
            ..Default::default()
        };
        for batch in &batches {
            for change in batch {
                records.apply(change);
            }
            let ops = batch_ops(batch, records.revision);
            let mut keys: Vec<&str> = ops
                .iter()
                .filter_map(|o| match o {
                    KeyOp::Put(k, _) | KeyOp::Delete(k) => Some(k.as_str()),
                    _ => None,
                })
                .collect();
            let before = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(
                keys.len(),
                before,
                "no key written twice in one transaction"
            );
            play(&mut kv, &ops);
            assert_eq!(
                load(&kv),
                records.to_persisted(),
                "after revision {}",
                records.revision
            );
            let logged = &kv[&log_key(records.revision)];
            assert_eq!(&decode_log_value("log", logged).unwrap(), batch);
        }
        assert!(
            load(&kv).exports.iter().all(|(c, _)| *c == id("c10")),
            "c1's exports went, c10's (a longer id with the same start) stayed"
        );
    }

    #[test]
    fn log_is_trimmed_to_the_last_batches() {
        let mut kv = std::collections::BTreeMap::new();
        let change = Change::WithholdCluster(id("c1"));
        for revision in 1..=LOG_KEEP + 5 {
            play(&mut kv, &batch_ops(std::slice::from_ref(&change), revision));
        }
        let logged: Vec<u64> = kv.keys().filter_map(|k| decode_log_key(k)).collect();
        assert_eq!(logged.len() as u64, LOG_KEEP);
        assert_eq!(logged.first(), Some(&6));
        assert_eq!(logged.last(), Some(&(LOG_KEEP + 5)));
    }

    #[test]
    fn keys_decode_only_as_what_they_name() {
        assert_eq!(decode_log_key(&log_key(42)), Some(42));
        assert_eq!(decode_log_key(&revision_key()), None);
        assert_eq!(
            decode_presence_key(&presence_key(&id("c1"), "r-1")),
            Some((id("c1"), "r-1".into()))
        );
        assert_eq!(decode_presence_key(&format!("{PREFIX}presence/c1")), None);
        assert_eq!(
            decode_presence_key(&format!("{PREFIX}presence/Bad_Id/r")),
            None
        );
        assert!(decode_number("revision", b"12x").is_err());
        assert!(matches!(
            decode_records(1, 0, [(&*format!("{PREFIX}other/x"), &b""[..])]),
            Err(LayoutError::Unknown { .. })
        ));
        assert!(matches!(
            decode_records(1, 0, [(&*format!("{PREFIX}clusters/c1"), &b"\xff\xff"[..])]),
            Err(LayoutError::Value { .. })
        ));
    }
}
