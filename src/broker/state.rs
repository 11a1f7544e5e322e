//! The broker's pure state: who owns which record, what a publish changes, and what a
//! reconnecting gateway missed.
//!
//! A cluster's certificate decides which records it may write; a Hello or Publish that claims
//! another cluster is [`Rejected`]. A Publish carries the cluster's full export set and is
//! diffed into [`Change`]s. Each change advances the revision by one; the last
//! `log_capacity` changes are kept so a gateway resuming from a recent revision gets a Delta
//! instead of a Snapshot. No I/O: the shell (`broker/server.rs`) persists the changes that
//! `handle_*` returns through a `Store`, then calls [`BrokerState::apply`], then broadcasts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::broker::Rejected;
use crate::broker::store::Persisted;
use crate::model::{ClusterId, ClusterInfo, Export, ServiceKey};
use crate::sync::wire::{Change, Hello, Publish, Snapshot};

/// How many recent changes are kept for resuming gateways: at ~10 changes per cluster
/// restart this covers a few hundred clusters reconnecting after a broker blip.
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct BrokerState {
    epoch: u64,
    revision: u64,
    clusters: BTreeMap<ClusterId, ClusterInfo>,
    exports: BTreeMap<(ClusterId, ServiceKey), Export>,
    /// `(revision, change)`, consecutive revisions ending at `self.revision`.
    log: VecDeque<(u64, Change)>,
    log_capacity: usize,
}

impl BrokerState {
    /// Starts from what the store loaded; the resume log starts empty.
    pub fn new(persisted: Persisted, log_capacity: usize) -> Self {
        let Persisted {
            epoch,
            revision,
            clusters,
            exports,
        } = persisted;
        Self {
            epoch,
            revision,
            clusters: clusters.into_iter().map(|c| (c.id.clone(), c)).collect(),
            exports: exports
                .into_iter()
                .map(|(c, e)| ((c, e.service.clone()), e))
                .collect(),
            log: VecDeque::new(),
            log_capacity,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A gateway (authenticated as `cert`) registers. Returns the changes to persist and
    /// apply: its `ClusterInfo` if new or different. Does not modify the state.
    pub fn handle_hello(&self, cert: &ClusterId, hello: &Hello) -> Result<Vec<Change>, Rejected> {
        check_owner(cert, &hello.cluster.id)?;
        Ok(match self.clusters.get(cert) {
            Some(info) if *info == hello.cluster => vec![],
            _ => vec![Change::UpsertCluster(hello.cluster.clone())],
        })
    }

    /// A gateway publishes its full export set. Returns the diff against what the broker holds
    /// for that cluster (upserts in service order, then removals). Does not modify the state.
    pub fn handle_publish(
        &self,
        cert: &ClusterId,
        publish: &Publish,
    ) -> Result<Vec<Change>, Rejected> {
        check_owner(cert, &publish.cluster)?;
        let mut seen = BTreeSet::new();
        for export in &publish.exports {
            let service = &export.service;
            if ServiceKey::new(service.namespace.as_str(), service.name.as_str()).is_err() {
                return Err(Rejected::InvalidService {
                    service: service.clone(),
                });
            }
            if !seen.insert(service) {
                return Err(Rejected::DuplicateService {
                    service: service.clone(),
                });
            }
        }
        let mut sorted: Vec<&Export> = publish.exports.iter().collect();
        sorted.sort_by(|a, b| a.service.cmp(&b.service));
        let mut changes: Vec<Change> = sorted
            .into_iter()
            .filter(|e| self.exports.get(&(cert.clone(), e.service.clone())) != Some(*e))
            .map(|e| Change::UpsertExport {
                cluster: cert.clone(),
                export: e.clone(),
            })
            .collect();
        changes.extend(
            self.exports
                .keys()
                .filter(|(c, s)| c == cert && !seen.contains(s))
                .map(|(c, s)| Change::RemoveExport {
                    cluster: c.clone(),
                    service: s.clone(),
                }),
        );
        Ok(changes)
    }

    /// Applies changes returned by `handle_*` (after the shell persisted them) and returns the
    /// new revision: one more per change.
    pub fn apply(&mut self, changes: &[Change]) -> u64 {
        for change in changes {
            self.revision += 1;
            match change {
                Change::UpsertCluster(info) => {
                    self.clusters.insert(info.id.clone(), info.clone());
                }
                Change::RemoveCluster(id) => {
                    self.clusters.remove(id);
                    self.exports.retain(|(c, _), _| c != id);
                }
                Change::UpsertExport { cluster, export } => {
                    self.exports
                        .insert((cluster.clone(), export.service.clone()), export.clone());
                }
                Change::RemoveExport { cluster, service } => {
                    self.exports.remove(&(cluster.clone(), service.clone()));
                }
            }
            self.log.push_back((self.revision, change.clone()));
            if self.log.len() > self.log_capacity {
                self.log.pop_front();
            }
        }
        self.revision
    }

    /// The whole clusterset at the current revision.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            epoch: self.epoch,
            revision: self.revision,
            clusters: self.clusters.values().cloned().collect(),
            exports: self
                .exports
                .iter()
                .map(|((c, _), e)| (c.clone(), e.clone()))
                .collect(),
        }
    }

    /// The changes after `revision` of `epoch`, or `None` if the log does not cover them (or the
    /// epoch differs, or the revision is from the future): the gateway needs a Snapshot.
    pub fn changes_since(&self, epoch: u64, revision: u64) -> Option<Vec<Change>> {
        if epoch != self.epoch || revision > self.revision {
            return None;
        }
        if revision == self.revision {
            return Some(vec![]);
        }
        let first = self.log.front()?.0;
        if first > revision + 1 {
            return None;
        }
        Some(
            self.log
                .iter()
                .filter(|(r, _)| *r > revision)
                .map(|(_, c)| c.clone())
                .collect(),
        )
    }
}

fn check_owner(cert: &ClusterId, claimed: &ClusterId) -> Result<(), Rejected> {
    if cert != claimed {
        return Err(Rejected::ForeignCluster {
            cert: cert.clone(),
            claimed: claimed.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, PortSpec, Protocol};

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("shop", name).unwrap()
    }

    fn cluster(name: &str) -> ClusterInfo {
        ClusterInfo {
            id: id(name),
            wg_endpoint: "10.100.0.11:51820".parse().unwrap(),
            wg_public_key: [3; 32],
            cidrs: vec![],
            region: None,
            zone: None,
        }
    }

    fn export(name: &str, address: &str) -> Export {
        Export {
            service: key(name),
            cluster_ips: vec![],
            ports: vec![PortSpec {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
            }],
            endpoints: vec![Endpoint {
                address: address.parse().unwrap(),
                ready: true,
                hostname: None,
            }],
        }
    }

    fn publish(cluster: &str, exports: Vec<Export>) -> Publish {
        Publish {
            cluster: id(cluster),
            exports,
        }
    }

    fn state() -> BrokerState {
        BrokerState::new(Persisted::empty(42), 8)
    }

    fn accept(state: &mut BrokerState, cert: &str, p: Publish) -> Vec<Change> {
        let changes = state.handle_publish(&id(cert), &p).unwrap();
        state.apply(&changes);
        changes
    }

    #[test]
    fn publish_is_diffed_against_the_clusters_current_exports() {
        let mut s = state();
        let upsert = |n: &str, a: &str| Change::UpsertExport {
            cluster: id("c1"),
            export: export(n, a),
        };
        let remove = |n: &str| Change::RemoveExport {
            cluster: id("c1"),
            service: key(n),
        };
        let table: Vec<(&str, Vec<Export>, Vec<Change>)> = vec![
            (
                "first publish adds all",
                vec![export("web", "10.0.0.1"), export("db", "10.0.0.2")],
                vec![upsert("db", "10.0.0.2"), upsert("web", "10.0.0.1")],
            ),
            (
                "same set changes nothing",
                vec![export("db", "10.0.0.2"), export("web", "10.0.0.1")],
                vec![],
            ),
            (
                "changed endpoint is upserted",
                vec![export("web", "10.0.0.9"), export("db", "10.0.0.2")],
                vec![upsert("web", "10.0.0.9")],
            ),
            (
                "missing export is removed",
                vec![export("web", "10.0.0.9")],
                vec![remove("db")],
            ),
            ("empty set removes everything", vec![], vec![remove("web")]),
        ];
        let mut revision = 0;
        for (what, exports, expected) in table {
            let changes = accept(&mut s, "c1", publish("c1", exports));
            assert_eq!(changes, expected, "{what}");
            revision += expected.len() as u64;
            assert_eq!(s.revision(), revision, "{what}");
        }
    }

    #[test]
    fn publish_leaves_other_clusters_exports_alone() {
        let mut s = state();
        accept(&mut s, "c2", publish("c2", vec![export("web", "10.0.0.5")]));
        let changes = accept(&mut s, "c1", publish("c1", vec![]));
        assert!(changes.is_empty());
        assert_eq!(s.snapshot().exports.len(), 1);
    }

    #[test]
    fn broker_rejects_write_for_foreign_cluster() {
        let s = state();
        let rejected = Rejected::ForeignCluster {
            cert: id("c1"),
            claimed: id("c2"),
        };
        assert_eq!(
            s.handle_publish(&id("c1"), &publish("c2", vec![])),
            Err(rejected.clone())
        );
        let hello = Hello {
            cluster: cluster("c2"),
            resume: None,
        };
        assert_eq!(s.handle_hello(&id("c1"), &hello), Err(rejected));
    }

    #[test]
    fn publish_with_invalid_or_duplicate_service_is_rejected() {
        let s = state();
        let mut bad = export("web", "10.0.0.1");
        bad.service.name = "Not_OK".into();
        assert!(matches!(
            s.handle_publish(&id("c1"), &publish("c1", vec![bad])),
            Err(Rejected::InvalidService { .. })
        ));
        let twice = vec![export("web", "10.0.0.1"), export("web", "10.0.0.2")];
        assert_eq!(
            s.handle_publish(&id("c1"), &publish("c1", twice)),
            Err(Rejected::DuplicateService {
                service: key("web")
            })
        );
    }

    #[test]
    fn hello_upserts_cluster_info_only_when_it_changed() {
        let mut s = state();
        let hello = Hello {
            cluster: cluster("c1"),
            resume: None,
        };
        let changes = s.handle_hello(&id("c1"), &hello).unwrap();
        assert_eq!(changes, vec![Change::UpsertCluster(cluster("c1"))]);
        s.apply(&changes);
        assert_eq!(s.handle_hello(&id("c1"), &hello).unwrap(), vec![]);
        let mut moved = cluster("c1");
        moved.wg_endpoint = "10.100.0.99:51820".parse().unwrap();
        let hello = Hello {
            cluster: moved.clone(),
            resume: None,
        };
        assert_eq!(
            s.handle_hello(&id("c1"), &hello).unwrap(),
            vec![Change::UpsertCluster(moved)]
        );
    }

    #[test]
    fn changes_since_serves_the_log_or_asks_for_a_snapshot() {
        let mut s = state(); // log capacity 8
        for i in 0..10u8 {
            accept(
                &mut s,
                "c1",
                publish("c1", vec![export("web", &format!("10.0.0.{i}"))]),
            );
        }
        assert_eq!(s.revision(), 10);
        let table: Vec<(&str, u64, u64, Option<usize>)> = vec![
            ("up to date", 42, 10, Some(0)),
            ("one behind", 42, 9, Some(1)),
            ("oldest covered", 42, 2, Some(8)),
            ("older than the log", 42, 1, None),
            ("other epoch", 41, 10, None),
            ("future revision", 42, 11, None),
        ];
        for (what, epoch, revision, expected) in table {
            assert_eq!(
                s.changes_since(epoch, revision).map(|c| c.len()),
                expected,
                "{what}"
            );
        }
        let last = s.changes_since(42, 9).unwrap();
        assert_eq!(
            last,
            vec![Change::UpsertExport {
                cluster: id("c1"),
                export: export("web", "10.0.0.9")
            }]
        );
    }

    #[test]
    fn restarted_state_resumes_only_gateways_already_up_to_date() {
        let mut s = state();
        accept(&mut s, "c1", publish("c1", vec![export("web", "10.0.0.1")]));
        let snap = s.snapshot();
        let restarted = BrokerState::new(
            Persisted {
                epoch: snap.epoch,
                revision: snap.revision,
                clusters: snap.clusters,
                exports: snap.exports,
            },
            8,
        );
        assert_eq!(restarted.changes_since(42, 1), Some(vec![]));
        assert_eq!(restarted.changes_since(42, 0), None);
        assert_eq!(restarted.snapshot(), s.snapshot());
    }
}
