//! Pure endpoint selection: which endpoints of a service one cluster answers with, and in
//! what order.
//!
//! Owns the ranking rules (own cluster, then same zone, then same region, then the rest) and
//! the filtering rules (only ready endpoints). Every endpoint, in or out, carries the reason, so
//! that an operator can be shown why an answer is what it is. No I/O, no clock, no RNG: ties
//! break on cluster id then address, so the same input always gives the same answer.

use std::collections::BTreeMap;
use std::net::IpAddr;

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

/// Why an endpoint is left out of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Excluded {
    NotReady,
}

/// One endpoint's fate in a selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub cluster: ClusterId,
    pub address: IpAddr,
    pub verdict: Result<Tier, Excluded>,
}

/// The result of a selection: the answer in order, and every candidate with its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The ranked candidates first (best first), then the excluded ones.
    pub decisions: Vec<Decision>,
}

impl Selection {
    /// The addresses to answer with, best first, each once.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for d in self.decisions.iter().filter(|d| d.verdict.is_ok()) {
            if !out.contains(&d.address) {
                out.push(d.address);
            }
        }
        out
    }
}

/// Ranks the endpoints that clusters export for one service, as seen from cluster `me`.
///
/// `candidates` holds each exporting cluster with its endpoints; `localities` where each
/// cluster is (a cluster missing there is treated as remote).
pub fn select<'a>(
    me: &ClusterId,
    localities: &BTreeMap<ClusterId, Locality>,
    candidates: impl IntoIterator<Item = (&'a ClusterId, &'a [Endpoint])>,
) -> Selection {
    let unknown = Locality::default();
    let mine = localities.get(me).unwrap_or(&unknown);
    let mut decisions: Vec<Decision> = Vec::new();
    for (cluster, endpoints) in candidates {
        let theirs = localities.get(cluster).unwrap_or(&unknown);
        let tier = tier(me, mine, cluster, theirs);
        for e in endpoints {
            let verdict = if e.ready {
                Ok(tier)
            } else {
                Err(Excluded::NotReady)
            };
            decisions.push(Decision {
                cluster: cluster.clone(),
                address: e.address,
                verdict,
            });
        }
    }
    decisions.sort_by(|a, b| {
        let key = |d: &Decision| (d.verdict.is_err(), d.verdict.ok());
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn ep(addr: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            ready,
            hostname: None,
        }
    }

    fn loc(region: &str, zone: &str) -> Locality {
        Locality {
            region: Some(region.into()),
            zone: Some(zone.into()),
        }
    }

    #[test]
    fn own_cluster_first_then_zone_then_region_then_rest() {
        let localities = BTreeMap::from([
            (id("me"), loc("eu", "eu-a")),
            (id("far"), loc("us", "us-a")),
            (id("region"), loc("eu", "eu-b")),
            (id("zone"), loc("eu", "eu-a")),
        ]);
        let far = [ep("10.4.0.1", true)];
        let region = [ep("10.3.0.1", true)];
        let zone = [ep("10.2.0.1", true)];
        let mine = [ep("10.1.0.1", true)];
        let candidates = [
            (id("far"), &far[..]),
            (id("region"), &region[..]),
            (id("zone"), &zone[..]),
            (id("me"), &mine[..]),
        ];
        let s = select(
            &id("me"),
            &localities,
            candidates.iter().map(|(c, e)| (c, *e)),
        );
        let tiers: Vec<_> = s.decisions.iter().map(|d| d.verdict).collect();
        assert_eq!(
            tiers,
            vec![
                Ok(Tier::Local),
                Ok(Tier::SameZone),
                Ok(Tier::SameRegion),
                Ok(Tier::Remote)
            ]
        );
        let addrs: Vec<String> = s.addresses().iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.1.0.1", "10.2.0.1", "10.3.0.1", "10.4.0.1"]);
    }

    #[test]
    fn unready_endpoints_are_excluded_with_a_reason() {
        let eps = [ep("10.1.0.1", false), ep("10.1.0.2", true)];
        let s = select(&id("me"), &BTreeMap::new(), [(&id("me"), &eps[..])]);
        assert_eq!(s.addresses(), vec!["10.1.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.decisions[1].verdict, Err(Excluded::NotReady));
    }

    #[test]
    fn clusters_without_locality_are_remote_and_unset_regions_never_match() {
        let localities = BTreeMap::from([
            (id("me"), Locality::default()),
            (id("b"), Locality::default()),
        ]);
        let eps = [ep("10.2.0.1", true)];
        let s = select(
            &id("me"),
            &localities,
            [(&id("b"), &eps[..]), (&id("c"), &eps[..])],
        );
        assert!(s.decisions.iter().all(|d| d.verdict == Ok(Tier::Remote)));
        assert_eq!(s.addresses().len(), 1, "one address is answered once");
    }

    proptest! {
        #[test]
        fn answers_exactly_the_ready_addresses_local_ones_first(
            eps in proptest::collection::vec((0u8..3, any::<u8>(), any::<bool>()), 0..20)
        ) {
            let clusters = [id("a"), id("b"), id("c")];
            let mut by_cluster: BTreeMap<ClusterId, Vec<Endpoint>> = BTreeMap::new();
            for (c, last, ready) in &eps {
                let e = Endpoint { address: IpAddr::from([10, *c, 0, *last]), ready: *ready, hostname: None };
                by_cluster.entry(clusters[*c as usize].clone()).or_default().push(e);
            }
            let s = select(&clusters[1], &BTreeMap::new(), by_cluster.iter().map(|(c, e)| (c, e.as_slice())));
            let answered = s.addresses();
            for (c, last, ready) in &eps {
                let addr = IpAddr::from([10, *c, 0, *last]);
                let ready_somewhere = eps.iter().any(|(c2, l2, r2)| c2 == c && l2 == last && *r2);
                prop_assert_eq!(answered.contains(&addr), ready_somewhere, "{} ready={}", addr, ready);
            }
            let first_remote = answered.iter().position(|a| matches!(a, IpAddr::V4(v) if v.octets()[1] != 1));
            let last_local = answered.iter().rposition(|a| matches!(a, IpAddr::V4(v) if v.octets()[1] == 1));
            if let (Some(r), Some(l)) = (first_remote, last_local) {
                prop_assert!(l < r, "local endpoints come before remote ones: {:?}", answered);
            }
        }
    }
}
