//! Clusterset IP allocation for ClusterSetIP ServiceImports: one address per IP family, from
//! configured ranges, stable for the import's life.
//!
//! Pure. The allocation is not stored anywhere but in the ServiceImports themselves
//! (`spec.ips`): the controller passes the addresses its imports already hold, and each keeps
//! them as long as they are still in range and not taken twice. So a restart, or a standby
//! taking over, keeps every address. New imports get the lowest free address.
//!
//! The derived Service that kube-proxy routes takes these as its `spec.clusterIPs`, so the
//! ranges must lie inside the cluster's service CIDR; give them the low, statically-assigned
//! band that KEP-3070 reserves so the API server never hands them out itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::model::{IpFamily, ServiceKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no clusterset IP range is configured for {family:?}")]
    NoRange { family: IpFamily },
    #[error("the clusterset IP range {range} is full")]
    Exhausted { range: IpNet },
}

/// Allocates addresses for `wanted` (each import's IP families, in `ipFamilies` order) given
/// the addresses the existing imports `held`. Returns, per import, its addresses in family
/// order, or why it has none. Deterministic: imports are served in key order.
pub fn allocate(
    ranges: &[IpNet],
    held: &BTreeMap<ServiceKey, Vec<IpAddr>>,
    wanted: &BTreeMap<ServiceKey, Vec<IpFamily>>,
) -> BTreeMap<ServiceKey, Result<Vec<IpAddr>, AllocError>> {
    let range_of = |family: IpFamily| {
        ranges.iter().find(|r| {
            matches!(
                (family, r),
                (IpFamily::V4, IpNet::V4(_)) | (IpFamily::V6, IpNet::V6(_))
            )
        })
    };
    // First pass: every import keeps what it holds (in range, its family, not a duplicate).
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let mut kept: BTreeMap<&ServiceKey, BTreeMap<IpFamily, IpAddr>> = BTreeMap::new();
    for (key, families) in wanted {
        for ip in held.get(key).into_iter().flatten() {
            let family = family_of(ip);
            let fits = families.contains(&family)
                && range_of(family).is_some_and(|r| r.contains(ip))
                && !used.contains(ip);
            if fits {
                used.insert(*ip);
                kept.entry(key).or_default().entry(family).or_insert(*ip);
            }
        }
    }
    // Second pass: the rest get the lowest free address of their family's range.
    let mut out = BTreeMap::new();
    for (key, families) in wanted {
        let families: Vec<IpFamily> = if families.is_empty() {
            vec![IpFamily::V4]
        } else {
            families.clone()
        };
        let result = families
            .iter()
            .map(|&family| {
                if let Some(ip) = kept.get(key).and_then(|k| k.get(&family)) {
                    return Ok(*ip);
                }
                let range = range_of(family).ok_or(AllocError::NoRange { family })?;
                let ip =
                    lowest_free(range, &used).ok_or(AllocError::Exhausted { range: *range })?;
                used.insert(ip);
                Ok(ip)
            })
            .collect();
        out.insert(key.clone(), result);
    }
    out
}

pub fn family_of(ip: &IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    }
}

/// The lowest address of `range` not in `used`, skipping the network address (and, for
/// IPv4, the broadcast address).
fn lowest_free(range: &IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let (first, last): (u128, u128) = match range {
        IpNet::V4(n) => (
            u32::from(n.network()) as u128 + 1,
            (u32::from(n.broadcast()) as u128).saturating_sub(1),
        ),
        IpNet::V6(n) => (u128::from(n.network()) + 1, u128::from(n.broadcast())),
    };
    let to_ip = |v: u128| match range {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    };
    // The lowest free address is among the first `used.len() + 1` candidates.
    (first..=last)
        .take(used.len() + 1)
        .map(to_ip)
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("shop", name).unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ranges() -> Vec<IpNet> {
        vec![
            "10.96.0.0/29".parse().unwrap(),
            "fd00::/126".parse().unwrap(),
        ]
    }

    #[test]
    fn one_address_per_family_in_family_order() {
        let wanted = BTreeMap::from([
            (key("a"), vec![IpFamily::V6, IpFamily::V4]),
            (key("b"), vec![IpFamily::V4]),
        ]);
        let got = allocate(&ranges(), &BTreeMap::new(), &wanted);
        assert_eq!(got[&key("a")], Ok(ips(&["fd00::1", "10.96.0.1"])));
        assert_eq!(got[&key("b")], Ok(ips(&["10.96.0.2"])));
    }

    #[test]
    fn held_addresses_stay_even_when_a_lower_one_is_free() {
        let held = BTreeMap::from([(key("b"), ips(&["10.96.0.5"]))]);
        let wanted = BTreeMap::from([
            (key("a"), vec![IpFamily::V4]),
            (key("b"), vec![IpFamily::V4]),
        ]);
        let got = allocate(&ranges(), &held, &wanted);
        assert_eq!(got[&key("b")], Ok(ips(&["10.96.0.5"])), "stable");
        assert_eq!(got[&key("a")], Ok(ips(&["10.96.0.1"])));
        // Running again with the result as the held state changes nothing.
        let held: BTreeMap<_, _> = got.into_iter().map(|(k, v)| (k, v.unwrap())).collect();
        let again = allocate(&ranges(), &held, &wanted);
        assert_eq!(again[&key("a")], Ok(held[&key("a")].clone()));
        assert_eq!(again[&key("b")], Ok(held[&key("b")].clone()));
    }

    #[test]
    fn duplicates_and_out_of_range_holdings_are_reallocated() {
        let held = BTreeMap::from([
            (key("a"), ips(&["10.96.0.3"])),
            (key("b"), ips(&["10.96.0.3"])),
            (key("c"), ips(&["192.168.0.1"])),
        ]);
        let wanted = BTreeMap::from([
            (key("a"), vec![IpFamily::V4]),
            (key("b"), vec![IpFamily::V4]),
            (key("c"), vec![IpFamily::V4]),
        ]);
        let got = allocate(&ranges(), &held, &wanted);
        assert_eq!(
            got[&key("a")],
            Ok(ips(&["10.96.0.3"])),
            "first holder keeps it"
        );
        assert_eq!(got[&key("b")], Ok(ips(&["10.96.0.1"])));
        assert_eq!(got[&key("c")], Ok(ips(&["10.96.0.2"])));
    }

    #[test]
    fn a_full_range_or_a_missing_family_is_an_error_for_that_import_only() {
        let wanted: BTreeMap<_, _> = (0..7)
            .map(|i| (key(&format!("s{i}")), vec![IpFamily::V4]))
            .chain([(key("z"), vec![IpFamily::V4])])
            .collect();
        let v4_only = vec!["10.96.0.0/29".parse().unwrap()];
        let got = allocate(&v4_only, &BTreeMap::new(), &wanted);
        // A /29 has six usable addresses: .1 to .6.
        assert_eq!(got.values().filter(|r| r.is_ok()).count(), 6);
        assert_eq!(
            got[&key("z")],
            Err(AllocError::Exhausted { range: v4_only[0] })
        );
        let v6 = BTreeMap::from([(key("a"), vec![IpFamily::V6])]);
        assert_eq!(
            allocate(&v4_only, &BTreeMap::new(), &v6)[&key("a")],
            Err(AllocError::NoRange {
                family: IpFamily::V6
            })
        );
    }
}
