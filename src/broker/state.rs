//! The broker's pure state: who owns which record, what a publish changes, whose lease ran
//! out, and what a reconnecting gateway missed.
//!
//! A cluster's certificate decides which records it may write; a Hello or Publish that claims
//! another cluster is [`Rejected`], as is a Publish over the [`StateConfig`] limits and a Hello
//! or Publish with a field out of its bound (`model::bounds`, checked here). A Publish
//! carries the cluster's full export set and is diffed into [`Change`]s. Each change advances
//! the revision by one; the last `log_capacity` changes are kept so a gateway resuming from a
//! recent revision gets a Delta instead of a Snapshot.
//!
//! Leases: a cluster holds its lease while it has a session; when its last session ends the
//! lease runs for `StateConfig::lease`, then the cluster is withheld ([`Change::WithholdCluster`]:
//! its exports leave what gateways get, but are kept); it is restored when it says Hello again.
//! A cluster gone for `StateConfig::retention` is removed ([`Change::RemoveCluster`]). Time is
//! passed in; a restart of the broker starts every cluster's lease afresh (the broker cannot
//! know how long a cluster was gone while it was down).
//!
//! No I/O: the shell (`broker/server.rs`) persists the changes that `handle_*` returns through a
//! `Store`, then calls [`BrokerState::apply`], then broadcasts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use std::net::IpAddr;

use crate::broker::Rejected;
use crate::broker::store::Persisted;
use crate::model::plan::{self, ClaimContext, PlanConfig, PlanRefusal};
use crate::model::{ClusterId, ClusterInfo, Export, ServiceKey, bounds};
use crate::sync::wire::{Change, Hello, Publish, Snapshot};

/// How many recent changes are kept for resuming gateways: at ~10 changes per cluster
/// restart this covers a few hundred clusters reconnecting after a broker blip.
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

/// The broker's rules that take numbers. `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// How long a cluster's records stay served after its last session ended. Shorter hides a
    /// dead cluster sooner but withholds a live one on a brief broker-link blip.
    pub lease: Duration,
    /// How long after its last session a cluster is removed altogether (it must register
    /// again). Should exceed `lease`.
    pub retention: Duration,
    /// Most services one cluster may export.
    pub max_services: usize,
    /// Most endpoints one cluster may export, summed over its services.
    pub max_endpoints: usize,
    /// Recent changes kept for resuming gateways (memory: one `Change` each).
    pub log_capacity: usize,
    /// The address plan: the global supernets and how many ranges a cluster may claim.
    pub plan: PlanConfig,
    /// WireGuard endpoint addresses the operator vouches for, by cluster (`--endpoint
    /// c1=IP`): a cluster listed here must advertise exactly this address; one not listed must
    /// advertise the address its sessions come from.
    pub endpoints: BTreeMap<ClusterId, IpAddr>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            retention: Duration::from_secs(24 * 3600),
            // 10k services with 10 endpoints each encode to ~4 MiB, well under the 16 MiB frame.
            max_services: 10_000,
            max_endpoints: 100_000,
            log_capacity: DEFAULT_LOG_CAPACITY,
            plan: PlanConfig::default(),
            endpoints: BTreeMap::new(),
        }
    }
}

/// Where a session reached the broker from, as its shell sees it: the input to judging a
/// cluster's address claims. `Default` (nothing known) skips the checks that need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOrigin {
    /// The broker's own address(es) on this session.
    pub broker: Vec<IpAddr>,
    /// The session's source address.
    pub observed: Option<IpAddr>,
}

/// Everything the broker holds, and how a change modifies it. Shared by [`BrokerState`] and
/// the in-memory store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    pub epoch: u64,
    pub revision: u64,
    pub clusters: BTreeMap<ClusterId, ClusterInfo>,
    pub exports: BTreeMap<(ClusterId, ServiceKey), Export>,
    pub withheld: BTreeSet<ClusterId>,
}

impl Records {
    pub fn from_persisted(persisted: Persisted) -> Self {
        let Persisted {
            epoch,
            revision,
            clusters,
            exports,
            withheld,
        } = persisted;
        Self {
            epoch,
            revision,
            clusters: clusters.into_iter().map(|c| (c.id.clone(), c)).collect(),
            exports: exports
                .into_iter()
                .map(|(c, e)| ((c, e.service.clone()), e))
                .collect(),
            withheld: withheld.into_iter().collect(),
        }
    }

    pub fn to_persisted(&self) -> Persisted {
        Persisted {
            epoch: self.epoch,
            revision: self.revision,
            clusters: self.clusters.values().cloned().collect(),
            exports: self
                .exports
                .iter()
                .map(|((c, _), e)| (c.clone(), e.clone()))
                .collect(),
            withheld: self.withheld.iter().cloned().collect(),
        }
    }

    /// Applies one change and advances the revision by one.
    pub fn apply(&mut self, change: &Change) {
        self.revision += 1;
        match change {
            Change::UpsertCluster(info) => {
                self.clusters.insert(info.id.clone(), info.clone());
            }
            Change::RemoveCluster(id) => {
                self.clusters.remove(id);
                self.withheld.remove(id);
                self.exports.retain(|(c, _), _| c != id);
            }
            Change::UpsertExport { cluster, export } => {
                self.exports
                    .insert((cluster.clone(), export.service.clone()), export.clone());
            }
            Change::RemoveExport { cluster, service } => {
                self.exports.remove(&(cluster.clone(), service.clone()));
            }
            Change::WithholdCluster(id) => {
                self.withheld.insert(id.clone());
            }
            Change::RestoreCluster { cluster, .. } => {
                // The exports in the change are the ones held here.
                self.withheld.remove(cluster);
            }
        }
    }

    fn exports_of<'a>(&'a self, cluster: &'a ClusterId) -> impl Iterator<Item = &'a Export> + 'a {
        self.exports
            .iter()
            .filter(move |((c, _), _)| c == cluster)
            .map(|(_, e)| e)
    }
}

/// Whether a cluster holds its lease, and since when it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Presence {
    sessions: usize,
    /// When the last session ended (or the broker started); meaningful when `sessions == 0`.
    gone_since: Instant,
}

#[derive(Debug, Clone)]
pub struct BrokerState {
    records: Records,
    presence: BTreeMap<ClusterId, Presence>,
    /// `(revision, change)`, consecutive revisions ending at `records.revision`.
    log: VecDeque<(u64, Change)>,
    config: StateConfig,
}

impl BrokerState {
    /// Starts from what the store loaded, at `now`: every loaded cluster's lease starts running
    /// (it keeps its records if it reconnects within `lease`). The resume log starts empty.
    pub fn new(persisted: Persisted, config: StateConfig, now: Instant) -> Self {
        let records = Records::from_persisted(persisted);
        let presence = records
            .clusters
            .keys()
            .map(|id| {
                (
                    id.clone(),
                    Presence {
                        sessions: 0,
                        gone_since: now,
                    },
                )
            })
            .collect();
        Self {
            records,
            presence,
            log: VecDeque::new(),
            config,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.records.epoch
    }

    pub fn revision(&self) -> u64 {
        self.records.revision
    }

    /// A gateway (authenticated as `cert`) registers. Returns the changes to persist and
    /// apply: its `ClusterInfo` if new or different, and its restoration if it was withheld.
    /// Does not modify the state; call [`handle_session_start`](Self::handle_session_start)
    /// once the changes are applied.
    ///
    /// The cluster's claims are judged against the address plan (`model::plan`): a refused
    /// claim refuses the whole Hello, and leaves what the broker held for the cluster as it
    /// was. Accepted claims get their global ranges here; a claim the cluster made before
    /// keeps its range.
    pub fn handle_hello(
        &self,
        cert: &ClusterId,
        hello: &Hello,
        origin: &SessionOrigin,
    ) -> Result<Vec<Change>, Rejected> {
        check_owner(cert, &hello.cluster.id)?;
        bounds::check_cluster(&hello.cluster).map_err(Rejected::OutOfBounds)?;
        let context = ClaimContext {
            broker: origin.broker.clone(),
            observed: origin.observed,
            peer_endpoints: self
                .records
                .clusters
                .values()
                .filter(|c| &c.id != cert)
                .map(|c| (c.id.clone(), c.wg_endpoint.ip()))
                .collect(),
            vouched_endpoint: self.config.endpoints.get(cert).copied(),
        };
        let config = &self.config.plan;
        plan::check_claims(&hello.cluster, &context, config).map_err(Rejected::AddressPlan)?;
        let held = self.records.clusters.get(cert);
        let taken: Vec<_> = self
            .records
            .clusters
            .values()
            .filter(|c| &c.id != cert)
            .flat_map(|c| c.global.iter().map(|a| a.global))
            .collect();
        let previous = held.map(|c| c.global.as_slice()).unwrap_or_default();
        let mut info = hello.cluster.clone();
        info.global =
            plan::allocate(&info.cidrs, previous, &taken, config).map_err(Rejected::AddressPlan)?;
        let mut changes = vec![];
        if held != Some(&info) {
            changes.push(Change::UpsertCluster(info));
        }
        if self.records.withheld.contains(cert) {
            changes.push(Change::RestoreCluster {
                cluster: cert.clone(),
                exports: self.records.exports_of(cert).cloned().collect(),
            });
        }
        Ok(changes)
    }

    /// A session of `cluster` was accepted (after its Hello): it holds the lease.
    pub fn handle_session_start(&mut self, cluster: &ClusterId, now: Instant) {
        self.presence
            .entry(cluster.clone())
            .or_insert(Presence {
                sessions: 0,
                gone_since: now,
            })
            .sessions += 1;
    }

    /// A session of `cluster` that was started ended; when it was the last, the lease starts
    /// running out.
    pub fn handle_session_end(&mut self, cluster: &ClusterId, now: Instant) {
        if let Some(p) = self.presence.get_mut(cluster) {
            p.sessions = p.sessions.saturating_sub(1);
            if p.sessions == 0 {
                p.gone_since = now;
            }
        }
    }

    /// Which leases ran out by `now`: a [`Change::WithholdCluster`] for each cluster gone for
    /// `lease`, a [`Change::RemoveCluster`] for each gone for `retention`; and a
    /// [`Change::RestoreCluster`] for each withheld cluster that holds a session after all
    /// (replicas sharing a store see a cluster's sessions come and go a little apart, and one
    /// may withhold it just as it connects to another). Does not modify the state: persist and
    /// [`apply`](Self::apply) them like any other change.
    pub fn handle_timeout(&self, now: Instant) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .presence
            .iter()
            .filter(|(id, p)| p.sessions > 0 && self.records.withheld.contains(*id))
            .map(|(id, _)| Change::RestoreCluster {
                cluster: id.clone(),
                exports: self.records.exports_of(id).cloned().collect(),
            })
            .collect();
        for (id, p) in self.absent() {
            let gone = now.saturating_duration_since(p.gone_since);
            if gone >= self.config.retention {
                changes.push(Change::RemoveCluster(id.clone()));
            } else if gone >= self.config.lease && !self.records.withheld.contains(id) {
                changes.push(Change::WithholdCluster(id.clone()));
            }
        }
        changes
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.absent()
            .flat_map(|(id, p)| {
                let withhold = (!self.records.withheld.contains(id))
                    .then(|| (p.gone_since + self.config.lease, "lease expiry"));
                let remove = Some((p.gone_since + self.config.retention, "retention expiry"));
                withhold.into_iter().chain(remove)
            })
            .min_by_key(|(at, _)| *at)
    }

    /// Registered clusters without a session.
    fn absent(&self) -> impl Iterator<Item = (&ClusterId, &Presence)> {
        self.presence
            .iter()
            .filter(|(id, p)| p.sessions == 0 && self.records.clusters.contains_key(*id))
    }

    /// A gateway publishes its full export set. Returns the diff against what the broker holds
    /// for that cluster (upserts in service order, then removals), or why it was refused (then
    /// nothing of it applies). Does not modify the state.
    pub fn handle_publish(
        &self,
        cert: &ClusterId,
        publish: &Publish,
    ) -> Result<Vec<Change>, Rejected> {
        check_owner(cert, &publish.cluster)?;
        let (count, max) = (publish.exports.len(), self.config.max_services);
        if count > max {
            return Err(Rejected::TooManyServices { count, max });
        }
        let count = publish.exports.iter().map(|e| e.endpoints.len()).sum();
        let max = self.config.max_endpoints;
        if count > max {
            return Err(Rejected::TooManyEndpoints { count, max });
        }
        let claims = self
            .records
            .clusters
            .get(cert)
            .map(|c| c.cidrs.as_slice())
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        for export in &publish.exports {
            check_addresses(export, claims).map_err(Rejected::AddressPlan)?;
            let service = &export.service;
            if ServiceKey::new(service.namespace.as_str(), service.name.as_str()).is_err() {
                return Err(Rejected::InvalidService {
                    service: bounds::clipped_key(service),
                });
            }
            if !seen.insert(service) {
                return Err(Rejected::DuplicateService {
                    service: service.clone(),
                });
            }
            bounds::check_export(cert.as_str(), export).map_err(Rejected::OutOfBounds)?;
        }
        let mut sorted: Vec<&Export> = publish.exports.iter().collect();
        sorted.sort_by(|a, b| a.service.cmp(&b.service));
        let held = &self.records.exports;
        let mut changes: Vec<Change> = sorted
            .into_iter()
            .filter(|e| held.get(&(cert.clone(), e.service.clone())) != Some(*e))
            .map(|e| Change::UpsertExport {
                cluster: cert.clone(),
                export: e.clone(),
            })
            .collect();
        changes.extend(
            held.keys()
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
            self.records.apply(change);
            if let Change::RemoveCluster(id) = change {
                self.presence.remove(id);
            }
            self.log.push_back((self.records.revision, change.clone()));
            if self.log.len() > self.config.log_capacity {
                self.log.pop_front();
            }
        }
        self.records.revision
    }

    /// The clusterset at the current revision, as gateways get it: withheld clusters' exports
    /// left out.
    pub fn snapshot(&self) -> Snapshot {
        let r = &self.records;
        Snapshot {
            epoch: r.epoch,
            revision: r.revision,
            clusters: r.clusters.values().cloned().collect(),
            exports: r
                .exports
                .iter()
                .filter(|((c, _), _)| !r.withheld.contains(c))
                .map(|((c, _), e)| (c.clone(), e.clone()))
                .collect(),
            withheld: r.withheld.iter().cloned().collect(),
        }
    }

    /// The changes after `revision` of `epoch`, or `None` if the log does not cover them (or the
    /// epoch differs, or the revision is from the future): the gateway needs a Snapshot.
    pub fn changes_since(&self, epoch: u64, revision: u64) -> Option<Vec<Change>> {
        if epoch != self.epoch() || revision > self.revision() {
            return None;
        }
        if revision == self.revision() {
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

/// Every address a cluster exports (endpoints and cluster IPs) must lie in its own claimed
/// ranges, and be one other clusters can reach: otherwise it would be translated into, or
/// routed towards, somebody else's space.
fn check_addresses(export: &Export, claims: &[ipnet::IpNet]) -> Result<(), PlanRefusal> {
    let addresses = export
        .endpoints
        .iter()
        .map(|e| e.address)
        .chain(export.cluster_ips.iter().copied());
    for address in addresses {
        let service = export.service.to_string();
        if !plan::is_routable(address) {
            return Err(PlanRefusal::AddressNotRoutable { service, address });
        }
        if !claims.iter().any(|c| c.contains(&address)) {
            return Err(PlanRefusal::AddressOutsideClaims { service, address });
        }
    }
    Ok(())
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
    use crate::model::fixtures::{cluster, export, id};

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("shop", name).unwrap()
    }

    fn publish(cluster: &str, exports: Vec<Export>) -> Publish {
        Publish {
            cluster: id(cluster),
            exports,
        }
    }

    /// A session from loopback, where the fixture clusters' endpoints are.
    fn origin() -> SessionOrigin {
        SessionOrigin {
            broker: vec![],
            observed: Some("127.0.0.1".parse().unwrap()),
        }
    }

    fn config() -> StateConfig {
        StateConfig {
            lease: Duration::from_secs(15),
            retention: Duration::from_secs(60),
            max_services: 3,
            max_endpoints: 4,
            log_capacity: 8,
            ..StateConfig::default()
        }
    }

    fn state() -> BrokerState {
        BrokerState::new(Persisted::empty(42), config(), crate::clock::now())
    }

    /// A state where c1 and c2 have registered (their claims hold the fixtures' addresses):
    /// the revision stands at 2.
    fn registered() -> BrokerState {
        let mut s = state();
        for name in ["c1", "c2"] {
            let hello = Hello {
                cluster: cluster(name),
                resume: None,
            };
            let changes = s.handle_hello(&id(name), &hello, &origin()).unwrap();
            s.apply(&changes);
        }
        s
    }

    fn accept(state: &mut BrokerState, cert: &str, p: Publish) -> Vec<Change> {
        let changes = state.handle_publish(&id(cert), &p).unwrap();
        state.apply(&changes);
        changes
    }

    #[test]
    fn publish_is_diffed_against_the_clusters_current_exports() {
        let mut s = registered();
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
        let mut revision = 2; // c1 and c2 registered
        for (what, exports, expected) in table {
            let changes = accept(&mut s, "c1", publish("c1", exports));
            assert_eq!(changes, expected, "{what}");
            revision += expected.len() as u64;
            assert_eq!(s.revision(), revision, "{what}");
        }
    }

    #[test]
    fn hello_with_a_forbidden_claim_is_refused_and_changes_nothing() {
        let s = registered();
        let before = s.snapshot();
        let broker_origin = SessionOrigin {
            broker: vec!["192.0.2.2".parse().unwrap()],
            observed: Some("127.0.0.1".parse().unwrap()),
        };
        for claim in [
            "0.0.0.0/0",
            "::/0",
            "192.0.2.0/24",
            "192.0.2.2/32",
            "127.0.0.1/32",
        ] {
            let mut info = cluster("c3");
            info.cidrs = vec![claim.parse().unwrap()];
            let hello = Hello {
                cluster: info,
                resume: None,
            };
            let refused = s.handle_hello(&id("c3"), &hello, &broker_origin);
            assert!(
                matches!(refused, Err(Rejected::AddressPlan(_))),
                "{claim}: {refused:?}"
            );
        }
        assert_eq!(s.snapshot(), before);
    }

    #[test]
    fn a_cluster_claiming_anothers_cidr_gets_its_own_global_range() {
        let mut s = registered();
        let mut info = cluster("c3");
        info.cidrs = vec!["10.101.0.0/16".parse().unwrap()];
        let hello = Hello {
            cluster: info,
            resume: None,
        };
        let changes = s.handle_hello(&id("c3"), &hello, &origin()).unwrap();
        s.apply(&changes);
        let snap = s.snapshot();
        let global_of = |c: &str| -> Vec<ipnet::IpNet> {
            let info = snap.clusters.iter().find(|x| x.id == id(c)).unwrap();
            info.global
                .iter()
                .filter(|a| a.local == "10.101.0.0/16".parse::<ipnet::IpNet>().unwrap())
                .map(|a| a.global)
                .collect()
        };
        let (c1, c3) = (global_of("c1"), global_of("c3"));
        assert_eq!((c1.len(), c3.len()), (1, 1));
        assert_ne!(c1, c3, "the same local range, two global ones");
        // c1's records are untouched by c3's claim.
        assert_eq!(
            registered().snapshot().clusters[0],
            snap.clusters[0],
            "c1 as it was"
        );
    }

    #[test]
    fn exported_addresses_outside_the_claims_or_unroutable_are_refused() {
        let s = registered();
        for address in [
            "10.200.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            let refused = s.handle_publish(&id("c1"), &publish("c1", vec![export("web", address)]));
            assert!(
                matches!(refused, Err(Rejected::AddressPlan(_))),
                "{address}: {refused:?}"
            );
        }
        let mut e = export("web", "10.0.0.1");
        e.cluster_ips = vec!["10.250.0.1".parse().unwrap()];
        assert!(matches!(
            s.handle_publish(&id("c1"), &publish("c1", vec![e])),
            Err(Rejected::AddressPlan(
                PlanRefusal::AddressOutsideClaims { .. }
            ))
        ));
    }

    #[test]
    fn publish_leaves_other_clusters_exports_alone() {
        let mut s = registered();
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
        assert_eq!(s.handle_hello(&id("c1"), &hello, &origin()), Err(rejected));
    }

    #[test]
    fn publish_with_invalid_or_duplicate_service_is_rejected() {
        let s = registered();
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
        let changes = s.handle_hello(&id("c1"), &hello, &origin()).unwrap();
        let Change::UpsertCluster(held) = &changes[0] else {
            panic!("not an upsert: {changes:?}")
        };
        assert_eq!(held.global.len(), 3, "a global range per claim: {held:?}");
        let registered = held.clone();
        assert_eq!(changes, vec![Change::UpsertCluster(registered.clone())]);
        s.apply(&changes);
        assert_eq!(
            s.handle_hello(&id("c1"), &hello, &origin()).unwrap(),
            vec![]
        );
        let mut moved = cluster("c1");
        moved.wg_endpoint = "127.0.0.1:51821".parse().unwrap();
        let hello = Hello {
            cluster: moved.clone(),
            resume: None,
        };
        moved.global = registered.global;
        assert_eq!(
            s.handle_hello(&id("c1"), &hello, &origin()).unwrap(),
            vec![Change::UpsertCluster(moved)],
            "the endpoint moved; the claims kept their global ranges"
        );
    }

    #[test]
    fn changes_since_serves_the_log_or_asks_for_a_snapshot() {
        let mut s = registered(); // log capacity 8; c1 and c2 at revisions 1 and 2
        for i in 0..10u8 {
            accept(
                &mut s,
                "c1",
                publish("c1", vec![export("web", &format!("10.0.0.{i}"))]),
            );
        }
        assert_eq!(s.revision(), 12);
        let table: Vec<(&str, u64, u64, Option<usize>)> = vec![
            ("up to date", 42, 12, Some(0)),
            ("one behind", 42, 11, Some(1)),
            ("oldest covered", 42, 4, Some(8)),
            ("older than the log", 42, 3, None),
            ("other epoch", 41, 12, None),
            ("future revision", 42, 13, None),
        ];
        for (what, epoch, revision, expected) in table {
            assert_eq!(
                s.changes_since(epoch, revision).map(|c| c.len()),
                expected,
                "{what}"
            );
        }
        let last = s.changes_since(42, 11).unwrap();
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
        let mut s = registered();
        accept(&mut s, "c1", publish("c1", vec![export("web", "10.0.0.1")]));
        let snap = s.snapshot();
        let restarted = BrokerState::new(
            Persisted {
                epoch: snap.epoch,
                revision: snap.revision,
                clusters: snap.clusters,
                exports: snap.exports,
                withheld: snap.withheld,
            },
            config(),
            crate::clock::now(),
        );
        assert_eq!(restarted.changes_since(42, 3), Some(vec![]));
        assert_eq!(restarted.changes_since(42, 2), None);
        assert_eq!(restarted.snapshot(), s.snapshot());
    }

    fn hello(name: &str) -> Hello {
        Hello {
            cluster: cluster(name),
            resume: None,
        }
    }

    /// Registers `name` with one export and a live session at `now`.
    fn register(s: &mut BrokerState, name: &str, address: &str, now: Instant) {
        let changes = s.handle_hello(&id(name), &hello(name), &origin()).unwrap();
        s.apply(&changes);
        s.handle_session_start(&id(name), now);
        accept(s, name, publish(name, vec![export("web", address)]));
    }

    fn step(s: &mut BrokerState, now: Instant) -> Vec<Change> {
        let changes = s.handle_timeout(now);
        s.apply(&changes);
        changes
    }

    #[test]
    fn lease_runs_out_after_the_last_session_then_retention_removes() {
        let t0 = crate::clock::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut s = state(); // lease 15 s, retention 60 s
        register(&mut s, "c1", "10.0.0.1", t0);
        register(&mut s, "c2", "10.0.0.2", t0);
        s.handle_session_start(&id("c1"), t0); // a second session of c1
        s.handle_session_end(&id("c1"), at(1));
        s.handle_session_end(&id("c1"), at(5)); // the last one: lease runs from here
        let withhold = vec![Change::WithholdCluster(id("c1"))];
        let remove = vec![Change::RemoveCluster(id("c1"))];
        let table: Vec<(&str, u64, Vec<Change>)> = vec![
            ("session up: nothing", 4, vec![]),
            ("within the lease", 19, vec![]),
            ("lease ran out", 20, withhold.clone()),
            ("withheld only once", 40, vec![]),
            ("within retention", 64, vec![]),
            ("retention ran out", 65, remove),
            ("removed only once", 500, vec![]),
        ];
        for (what, secs, expected) in table {
            assert_eq!(step(&mut s, at(secs)), expected, "{what}");
        }
        let snap = s.snapshot();
        let ids: Vec<&ClusterId> = snap.clusters.iter().map(|c| &c.id).collect();
        assert_eq!(ids, [&id("c2")], "c2 holds its session");
        assert_eq!(snap.exports, vec![(id("c2"), export("web", "10.0.0.2"))]);
        assert!(snap.withheld.is_empty());
    }

    #[test]
    fn withheld_cluster_is_kept_but_not_served_and_returns_on_hello() {
        let t0 = crate::clock::now();
        let mut s = state();
        register(&mut s, "c1", "10.0.0.1", t0);
        register(&mut s, "c2", "10.0.0.2", t0);
        s.handle_session_end(&id("c1"), t0);
        assert_eq!(
            s.poll_timeout(),
            Some((t0 + Duration::from_secs(15), "lease expiry"))
        );
        step(&mut s, t0 + Duration::from_secs(15));
        assert_eq!(
            s.poll_timeout(),
            Some((t0 + Duration::from_secs(60), "retention expiry"))
        );
        let snap = s.snapshot();
        assert_eq!(snap.clusters.len(), 2, "its registration stays");
        assert_eq!(snap.exports, vec![(id("c2"), export("web", "10.0.0.2"))]);
        assert_eq!(snap.withheld, vec![id("c1")]);

        let changes = s.handle_hello(&id("c1"), &hello("c1"), &origin()).unwrap();
        assert_eq!(
            changes,
            vec![Change::RestoreCluster {
                cluster: id("c1"),
                exports: vec![export("web", "10.0.0.1")],
            }]
        );
        s.apply(&changes);
        s.handle_session_start(&id("c1"), t0 + Duration::from_secs(16));
        assert_eq!(s.snapshot().exports.len(), 2, "served again");
        assert_eq!(s.poll_timeout(), None, "everyone holds a lease");
        assert!(step(&mut s, t0 + Duration::from_secs(1000)).is_empty());
    }

    #[test]
    fn withheld_cluster_holding_a_session_is_restored_on_timeout() {
        let t0 = crate::clock::now();
        let mut s = state();
        register(&mut s, "c1", "10.0.0.1", t0);
        s.handle_session_end(&id("c1"), t0);
        assert_eq!(
            step(&mut s, t0 + Duration::from_secs(15)),
            vec![Change::WithholdCluster(id("c1"))]
        );
        // Another replica's session of c1, seen here after the withhold went out.
        s.handle_session_start(&id("c1"), t0 + Duration::from_secs(16));
        let restore = vec![Change::RestoreCluster {
            cluster: id("c1"),
            exports: vec![export("web", "10.0.0.1")],
        }];
        assert_eq!(step(&mut s, t0 + Duration::from_secs(16)), restore);
        assert!(
            step(&mut s, t0 + Duration::from_secs(17)).is_empty(),
            "restored once"
        );
        assert_eq!(s.snapshot().exports.len(), 1, "served again");
    }

    #[test]
    fn restarted_broker_gives_loaded_clusters_a_fresh_lease() {
        let t0 = crate::clock::now();
        let mut s = state();
        register(&mut s, "c1", "10.0.0.1", t0);
        let restarted_at = t0 + Duration::from_secs(100);
        let mut restarted = BrokerState::new(
            Records {
                epoch: 42,
                revision: s.revision(),
                clusters: [(id("c1"), cluster("c1"))].into(),
                exports: [((id("c1"), key("web")), export("web", "10.0.0.1"))].into(),
                withheld: BTreeSet::new(),
            }
            .to_persisted(),
            config(),
            restarted_at,
        );
        assert!(step(&mut restarted, restarted_at + Duration::from_secs(14)).is_empty());
        assert_eq!(
            step(&mut restarted, restarted_at + Duration::from_secs(15)),
            vec![Change::WithholdCluster(id("c1"))]
        );
    }

    #[test]
    fn publish_over_the_limits_is_rejected_whole() {
        let mut s = registered(); // at most 3 services, 4 endpoints
        accept(&mut s, "c1", publish("c1", vec![export("web", "10.0.0.1")]));
        let before = s.snapshot();
        let many = |n: usize| -> Vec<Export> {
            (0..n)
                .map(|i| export(&format!("s{i}"), "10.0.0.1"))
                .collect()
        };
        let mut fat = export("web", "10.0.0.1");
        fat.endpoints = vec![fat.endpoints[0].clone(); 5];
        let table: Vec<(&str, Vec<Export>, Result<usize, Rejected>)> = vec![
            ("at the service limit", many(3), Ok(4)),
            (
                "one service over",
                many(4),
                Err(Rejected::TooManyServices { count: 4, max: 3 }),
            ),
            (
                "endpoints over, summed",
                vec![fat.clone()],
                Err(Rejected::TooManyEndpoints { count: 5, max: 4 }),
            ),
            (
                "endpoints over across services",
                vec![export("a", "10.0.0.1"), {
                    let mut e = export("b", "10.0.0.1");
                    e.endpoints = vec![e.endpoints[0].clone(); 4];
                    e
                }],
                Err(Rejected::TooManyEndpoints { count: 5, max: 4 }),
            ),
        ];
        for (what, exports, expected) in table {
            let result = s
                .handle_publish(&id("c1"), &publish("c1", exports))
                .map(|c| c.len());
            assert_eq!(result, expected, "{what}");
            assert_eq!(s.snapshot(), before, "{what}: nothing applied");
        }
    }
}
