//! Pure endpoint selection: which endpoints of a service one cluster answers with, and in
//! what order.
//!
//! Owns the ranking rules (own cluster, then same zone, then same region, then the rest by
//! measured round-trip time), the filtering rules (only ready endpoints of reachable clusters),
//! what happens when nothing healthy remains ([`Fallback`]), and the rotation within one
//! preference group. Every endpoint, in or out, carries the reason, so that an operator can be
//! shown why an answer is what it is. No I/O, no clock, no RNG: ties break on cluster id then
//! address, and rotation takes its counter as an argument, so the same input always gives the
//! same answer.
//!
//! The DNS server (`causeway_dns`) receives the groups ([`Selection::tiers`]) and rotates
//! within them per query by the same rule as [`Selection::answer`], so that each query, not
//! each snapshot, moves the load.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::model::{ClusterId, Endpoint};

/// Where a cluster sits, as it registered with the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: Option<String>,
    pub zone: Option<String>,
}

/// How near an endpoint's cluster is to the asking cluster; lower is nearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// The asking cluster's own endpoint.
    Local,
    /// Another cluster in the same zone (same region implied).
    SameZone,
    /// Another cluster in the same region.
    SameRegion,
    /// Any other cluster.
    Remote,
}

/// An endpoint's place in the order: its tier, then (for remote clusters) the measured
/// round-trip time to its cluster, unknown last. Endpoints of equal rank are equally good and
/// rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    pub tier: Tier,
    /// `Some` for a remote cluster only: its measured round-trip time, or unknown.
    pub rtt: Option<Rtt>,
}

/// A measured round-trip time, which sorts before "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rtt {
    Measured(Duration),
    Unknown,
}

/// Why an endpoint is left out of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Excluded {
    /// The exporting cluster says the endpoint is not ready.
    NotReady,
    /// This gateway cannot reach the endpoint's cluster now.
    Unreachable,
}

/// What became of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Healthy: answered.
    Answered,
    /// Left out for this reason.
    Excluded(Excluded),
    /// Unhealthy for this reason, but answered anyway because nothing healthy remained and
    /// the policy is [`Fallback::FailOpen`].
    FailedOpen(Excluded),
}

impl Verdict {
    pub fn is_answered(self) -> bool {
        !matches!(self, Verdict::Excluded(_))
    }
}

/// What to answer when no endpoint of a service is healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Answer nothing (DNS NODATA): a client fails fast instead of connecting to an endpoint
    /// that is known to be down, and retries after the negative TTL. The default, because a
    /// wrong address costs a client a connect timeout (seconds) while NODATA costs one TTL.
    #[default]
    FailClosed,
    /// Answer the last known endpoints, unhealthy as they are, ranked as usual: for clients
    /// that would rather try than fail (health may be wrong, e.g. during a tunnel flap).
    FailOpen,
}

/// What this gateway knows about the other clusters' health, beside where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The clusters whose gateway this one can reach now; `None` = every cluster (no health
    /// information yet). The asking cluster itself is always reachable.
    pub reachable: Option<BTreeSet<ClusterId>>,
    /// Measured round-trip time to each cluster's gateway; remote clusters are ordered by it.
    pub rtt: BTreeMap<ClusterId, Duration>,
    pub fallback: Fallback,
}

/// One endpoint's fate in a selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub cluster: ClusterId,
    pub address: IpAddr,
    pub hostname: Option<String>,
    pub rank: Rank,
    pub verdict: Verdict,
}

/// The result of a selection: every candidate with its reason, answered ones first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The answered candidates first (best rank first; ties by cluster id, then address), then
    /// the excluded ones.
    pub decisions: Vec<Decision>,
}

/// What one cluster contributes to an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAnswer {
    pub cluster: ClusterId,
    /// The index of the cluster's preference group in [`Selection::tiers`] (0 = best): an SRV
    /// priority.
    pub group: usize,
    /// The cluster's answered addresses, each once, in order.
    pub addresses: Vec<IpAddr>,
    /// The answered endpoints that have a hostname.
    pub hosts: Vec<(String, IpAddr)>,
}

impl Selection {
    /// The answered addresses in preference groups, best first; each address once (in its
    /// best group). Addresses within a group are equally good.
    pub fn tiers(&self) -> Vec<Vec<IpAddr>> {
        let mut groups: Vec<(Rank, Vec<IpAddr>)> = Vec::new();
        let mut seen = BTreeSet::new();
        for d in self.answered() {
            if !seen.insert(d.address) {
                continue;
            }
            match groups.last_mut() {
                Some((rank, addresses)) if *rank == d.rank => addresses.push(d.address),
                _ => groups.push((d.rank, vec![d.address])),
            }
        }
        groups.into_iter().map(|(_, a)| a).collect()
    }

    /// The answered addresses, best first, each once (rotation 0, no cap).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.tiers().into_iter().flatten().collect()
    }

    /// The answer for query number `rotation`: each preference group rotated left by
    /// `rotation` modulo its length, best group first, then cut to `cap` addresses (0 = no
    /// cap). Consecutive rotations put each address of a group first in turn.
    pub fn answer(&self, rotation: u64, cap: usize) -> Vec<IpAddr> {
        let cap = if cap == 0 { usize::MAX } else { cap };
        let mut out = Vec::new();
        for mut group in self.tiers() {
            let len = u64::try_from(group.len()).unwrap_or(u64::MAX);
            // The remainder is below the group's length, so it fits a usize.
            let shift = usize::try_from(rotation % len.max(1)).unwrap_or(0);
            group.rotate_left(shift);
            out.extend(group);
            if out.len() >= cap {
                out.truncate(cap);
                break;
            }
        }
        out
    }

    /// The answering clusters, best first, each with its group index and its answered
    /// endpoints.
    pub fn clusters(&self) -> Vec<ClusterAnswer> {
        let ranks: Vec<Rank> = {
            let mut r: Vec<Rank> = self.answered().map(|d| d.rank).collect();
            r.dedup();
            r
        };
        let mut out: Vec<ClusterAnswer> = Vec::new();
        for d in self.answered() {
            let at = match out.iter().position(|c| c.cluster == d.cluster) {
                Some(at) => at,
                None => {
                    out.push(ClusterAnswer {
                        cluster: d.cluster.clone(),
                        group: ranks.iter().position(|r| *r == d.rank).unwrap_or(0),
                        addresses: Vec::new(),
                        hosts: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            let entry = &mut out[at];
            if !entry.addresses.contains(&d.address) {
                entry.addresses.push(d.address);
            }
            if let Some(hostname) = &d.hostname {
                entry.hosts.push((hostname.clone(), d.address));
            }
        }
        out
    }

    fn answered(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.verdict.is_answered())
    }
}

/// Ranks the endpoints that clusters export for one service, as seen from cluster `me`.
///
/// `candidates` holds each exporting cluster with its endpoints; `localities` where each
/// cluster is (a cluster missing there is treated as remote); `health` which clusters are
/// reachable, how far the remote ones are, and what to do when nothing healthy remains.
pub fn select<'a>(
    me: &ClusterId,
    localities: &BTreeMap<ClusterId, Locality>,
    health: &Health,
    candidates: impl IntoIterator<Item = (&'a ClusterId, &'a [Endpoint])>,
) -> Selection {
    let unknown = Locality::default();
    let mine = localities.get(me).unwrap_or(&unknown);
    let mut decisions: Vec<Decision> = Vec::new();
    for (cluster, endpoints) in candidates {
        let theirs = localities.get(cluster).unwrap_or(&unknown);
        let tier = tier(me, mine, cluster, theirs);
        let rank = Rank {
            tier,
            rtt: (tier == Tier::Remote).then(|| match health.rtt.get(cluster) {
                Some(rtt) => Rtt::Measured(*rtt),
                None => Rtt::Unknown,
            }),
        };
        let reachable = cluster == me
            || health
                .reachable
                .as_ref()
                .is_none_or(|set| set.contains(cluster));
        for e in endpoints {
            let verdict = if !reachable {
                Verdict::Excluded(Excluded::Unreachable)
            } else if !e.ready {
                Verdict::Excluded(Excluded::NotReady)
            } else {
                Verdict::Answered
            };
            decisions.push(Decision {
                cluster: cluster.clone(),
                address: e.address,
                hostname: e.hostname.clone(),
                rank,
                verdict,
            });
        }
    }
    let none_healthy = !decisions.iter().any(|d| d.verdict == Verdict::Answered);
    if none_healthy && health.fallback == Fallback::FailOpen {
        for d in &mut decisions {
            if let Verdict::Excluded(why) = d.verdict {
                d.verdict = Verdict::FailedOpen(why);
            }
        }
    }
    decisions.sort_by(|a, b| {
        let key = |d: &Decision| (!d.verdict.is_answered(), d.rank);
        key(a)
            .cmp(&key(b))
            .then_with(|| a.cluster.cmp(&b.cluster))
            .then_with(|| a.address.cmp(&b.address))
    });
    Selection { decisions }
}

fn tier(me: &ClusterId, mine: &Locality, cluster: &ClusterId, theirs: &Locality) -> Tier {
    let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
    if cluster == me {
        Tier::Local
    } else if same(&mine.region, &theirs.region) && same(&mine.zone, &theirs.zone) {
        Tier::SameZone
    } else if same(&mine.region, &theirs.region) {
        Tier::SameRegion
    } else {
        Tier::Remote
    }
}

#[cfg(test)]
mod tests;
