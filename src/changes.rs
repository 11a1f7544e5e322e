//! The gateway's state-change log lines about its answers, decided purely:
//! [`ChangeTracker::observe`] ranks every service as the DNS snapshot does and compares with
//! the last turn, returning one [`Change`] per (service, cluster, verdict) move; [`log`]
//! writes each as one line with structured fields. The first observation is the baseline
//! and yields nothing (a restart is not a flood of "restored").
//!
//! Peer up/down is logged by the data plane (per key) and by `app` (per cluster, as
//! reachability); broker connected/lost by `app` and `sync::quic`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::{info, warn};

use crate::answers::{exports_by_service, localities, rank_service};
use crate::model::{ClusterId, Export, ServiceKey};
use crate::select::{Excluded, Health, Verdict};
use crate::sync::proto::ClusterSetView;

/// Why endpoints stopped being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WithdrawnBecause {
    /// The exporting cluster reports them not ready.
    NotReady,
    /// This gateway cannot reach their cluster through its tunnel.
    Unreachable,
    /// Their cluster no longer exports them (or the service is gone).
    Removed,
}

impl WithdrawnBecause {
    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawnBecause::NotReady => "not-ready",
            WithdrawnBecause::Unreachable => "unreachable",
            WithdrawnBecause::Removed => "removed",
        }
    }
}

/// One state change of what this gateway answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These endpoints of `cluster` left the answers for `service`.
    Withdrawn {
        service: ServiceKey,
        cluster: ClusterId,
        addresses: Vec<IpAddr>,
        because: WithdrawnBecause,
    },
    /// These endpoints of `cluster` are answered again (or for the first time).
    Restored {
        service: ServiceKey,
        cluster: ClusterId,
        addresses: Vec<IpAddr>,
    },
    /// `cluster` exports `service` as the other kind (headless vs cluster IP) than the one
    /// that decides; its export is left out until that changes.
    ExportConflict {
        service: ServiceKey,
        cluster: ClusterId,
    },
    /// The conflict is over (either export went, or both agree now).
    ConflictResolved {
        service: ServiceKey,
        cluster: ClusterId,
    },
}

type Key = (ServiceKey, ClusterId, IpAddr);

/// What the last turn answered; see the module docs.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    /// Every candidate and its verdict: `None` answered, `Some(why)` left out.
    last: Option<BTreeMap<Key, Option<Excluded>>>,
    conflicts: BTreeSet<(ServiceKey, ClusterId)>,
}

impl ChangeTracker {
    /// Compares this turn's answers with the last turn's; call on every turn of the gateway
    /// loop with what it holds.
    pub fn observe(
        &mut self,
        me: &ClusterId,
        local: &[Export],
        view: &ClusterSetView,
        health: &Health,
    ) -> Vec<Change> {
        let places = localities(view);
        let mut now: BTreeMap<Key, Option<Excluded>> = BTreeMap::new();
        let mut conflicts = BTreeSet::new();
        for (service, exports) in exports_by_service(me, local, view) {
            let ranked = rank_service(me, &places, health, &exports);
            for d in &ranked.selection.decisions {
                let verdict = match d.verdict {
                    Verdict::Answered | Verdict::FailedOpen(_) => None,
                    Verdict::Excluded(why) => Some(why),
                };
                let key = (service.clone(), d.cluster.clone(), d.address);
                // An address answered through any of its entries counts as answered.
                let slot = now.entry(key).or_insert(verdict);
                if verdict.is_none() {
                    *slot = None;
                }
            }
            for cluster in ranked.other_kind {
                conflicts.insert((service.clone(), cluster));
            }
        }
        let mut changes = Vec::new();
        if let Some(last) = &self.last {
            let mut withdrawn: BTreeMap<(ServiceKey, ClusterId, WithdrawnBecause), Vec<IpAddr>> =
                BTreeMap::new();
            let mut restored: BTreeMap<(ServiceKey, ClusterId), Vec<IpAddr>> = BTreeMap::new();
            for (key, before) in last {
                if before.is_some() {
                    continue;
                }
                let because = match now.get(key) {
                    None => WithdrawnBecause::Removed,
                    Some(None) => continue,
                    Some(Some(Excluded::NotReady)) => WithdrawnBecause::NotReady,
                    Some(Some(Excluded::Unreachable)) => WithdrawnBecause::Unreachable,
                };
                let (service, cluster, address) = key.clone();
                withdrawn
                    .entry((service, cluster, because))
                    .or_default()
                    .push(address);
            }
            for (key, verdict) in &now {
                if verdict.is_none() && !matches!(last.get(key), Some(None)) {
                    let (service, cluster, address) = key.clone();
                    restored
                        .entry((service, cluster))
                        .or_default()
                        .push(address);
                }
            }
            for ((service, cluster, because), addresses) in withdrawn {
                changes.push(Change::Withdrawn {
                    service,
                    cluster,
                    addresses,
                    because,
                });
            }
            for ((service, cluster), addresses) in restored {
                changes.push(Change::Restored {
                    service,
                    cluster,
                    addresses,
                });
            }
        }
        for (service, cluster) in conflicts.difference(&self.conflicts) {
            changes.push(Change::ExportConflict {
                service: service.clone(),
                cluster: cluster.clone(),
            });
        }
        for (service, cluster) in self.conflicts.difference(&conflicts) {
            changes.push(Change::ConflictResolved {
                service: service.clone(),
                cluster: cluster.clone(),
            });
        }
        self.last = Some(now);
        self.conflicts = conflicts;
        changes
    }
}

/// Writes one change as one log line.
pub fn log(change: &Change) {
    let list = |a: &[IpAddr]| {
        a.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    match change {
        Change::Withdrawn {
            service,
            cluster,
            addresses,
            because,
        } => info!(
            %service,
            %cluster,
            addresses = %list(addresses),
            count = addresses.len(),
            reason = because.as_str(),
            "Endpoints withdrawn from DNS answers"
        ),
        Change::Restored {
            service,
            cluster,
            addresses,
        } => info!(
            %service,
            %cluster,
            addresses = %list(addresses),
            count = addresses.len(),
            "Endpoints answered in DNS"
        ),
        Change::ExportConflict { service, cluster } => warn!(
            %service,
            %cluster,
            "Export conflict: this cluster exports the service as the other kind (headless vs cluster IP); left out"
        ),
        Change::ConflictResolved { service, cluster } => {
            info!(%service, %cluster, "Export conflict resolved")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use super::*;
    use crate::model::ClusterInfo;
    use crate::model::fixtures::{id, web};

    fn view(c2: Option<Export>) -> ClusterSetView {
        let mut v = ClusterSetView::default();
        for n in 1..=2u8 {
            let c = ClusterInfo {
                id: id(&format!("c{n}")),
                wg_endpoint: SocketAddr::from(([10, 100, 0, 10 + n], 51820)),
                wg_public_key: [n; 32],
                cidrs: vec![],
                region: None,
                zone: None,
                global: vec![],
            };
            v.clusters.insert(c.id.clone(), c);
        }
        if let Some(e) = c2 {
            v.exports.insert((id("c2"), e.service.clone()), e);
        }
        v
    }

    fn ips(a: &[&str]) -> Vec<IpAddr> {
        a.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn every_move_of_an_endpoint_is_one_change_with_its_reason() {
        let me = id("c1");
        let all = Health::default();
        let c2_down = Health {
            reachable: Some(BTreeSet::from([id("c1")])),
            ..Health::default()
        };
        let mut t = ChangeTracker::default();
        let local = [web(&[("10.101.0.10", true), ("10.101.0.11", true)])];
        let c2 = web(&[("10.102.0.10", true)]);
        assert_eq!(
            t.observe(&me, &local, &view(Some(c2.clone())), &all),
            [],
            "the first turn is the baseline"
        );
        let web_key = ServiceKey::new("shop", "web").unwrap();
        let withdrawn = |cluster: &str, a: &[&str], because| Change::Withdrawn {
            service: web_key.clone(),
            cluster: id(cluster),
            addresses: ips(a),
            because,
        };
        let restored = |cluster: &str, a: &[&str]| Change::Restored {
            service: web_key.clone(),
            cluster: id(cluster),
            addresses: ips(a),
        };
        assert_eq!(
            t.observe(&me, &local, &view(Some(c2.clone())), &c2_down),
            [withdrawn(
                "c2",
                &["10.102.0.10"],
                WithdrawnBecause::Unreachable
            )]
        );
        assert_eq!(
            t.observe(&me, &local, &view(Some(c2.clone())), &all),
            [restored("c2", &["10.102.0.10"])]
        );
        let local2 = [web(&[("10.101.0.10", false), ("10.101.0.11", true)])];
        assert_eq!(
            t.observe(&me, &local2, &view(None), &all),
            [
                withdrawn("c1", &["10.101.0.10"], WithdrawnBecause::NotReady),
                withdrawn("c2", &["10.102.0.10"], WithdrawnBecause::Removed),
            ]
        );
        assert_eq!(
            t.observe(&me, &local2, &view(None), &all),
            [],
            "no move, no line"
        );

        let mut clusterip = web(&[("10.102.0.10", true)]);
        clusterip.cluster_ips = ips(&["10.96.2.1"]);
        clusterip.props.kind = crate::model::ServiceKind::ClusterSetIp;
        assert_eq!(
            t.observe(&me, &local2, &view(Some(clusterip)), &all),
            [Change::ExportConflict {
                service: web_key.clone(),
                cluster: id("c2"),
            }]
        );
        assert_eq!(
            t.observe(&me, &local2, &view(None), &all),
            [Change::ConflictResolved {
                service: web_key.clone(),
                cluster: id("c2"),
            }]
        );
    }
}
