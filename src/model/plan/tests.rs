use super::*;
use crate::model::fixtures::{cluster, id};

fn net(s: &str) -> IpNet {
    s.parse().expect("a CIDR")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

fn claims(cidrs: &[&str]) -> ClusterInfo {
    let mut info = cluster("c3");
    info.wg_endpoint = "172.31.0.13:51820".parse().expect("a socket address");
    info.cidrs = cidrs.iter().map(|c| net(c)).collect();
    info
}

fn context() -> ClaimContext {
    ClaimContext {
        broker: vec![ip("172.31.0.2")],
        observed: Some(ip("172.31.0.13")),
        peer_endpoints: vec![(id("c1"), ip("172.31.0.11")), (id("c2"), ip("172.31.0.12"))],
        vouched_endpoint: None,
    }
}

fn check(cidrs: &[&str]) -> Result<(), PlanRefusal> {
    check_claims(&claims(cidrs), &context(), &PlanConfig::default())
}

#[test]
fn allocation_maps_addresses_both_ways_keeping_host_bits() {
    let a = Allocation {
        local: net("10.244.0.0/16"),
        global: net("100.65.0.0/16"),
    };
    assert_eq!(a.to_global(ip("10.244.3.7")), Some(ip("100.65.3.7")));
    assert_eq!(a.to_local(ip("100.65.3.7")), Some(ip("10.244.3.7")));
    assert_eq!(a.to_global(ip("10.245.0.1")), None);
    assert_eq!(a.to_global(ip("fd00::1")), None);
    let v6 = Allocation {
        local: net("fd00:10:244::/56"),
        global: net("fd63:6175:7365:100::/56"),
    };
    assert_eq!(
        v6.to_global(ip("fd00:10:244:12::5")),
        Some(ip("fd63:6175:7365:112::5"))
    );
}

#[test]
fn kind_defaults_are_accepted_and_overlap_is_normal() {
    assert_eq!(check(&["10.244.0.0/16", "10.96.0.0/12"]), Ok(()));
    assert_eq!(check(&["fd00:10:244::/56", "fd00:10:96::/112"]), Ok(()));
}

#[test]
fn claims_that_would_hurt_others_are_refused_with_a_reason() {
    type Expect = fn(&PlanRefusal) -> bool;
    let table: &[(&[&str], Expect)] = &[
        (&["0.0.0.0/0"], |r| {
            matches!(r, PlanRefusal::DefaultRoute { .. })
        }),
        (&["::/0"], |r| matches!(r, PlanRefusal::DefaultRoute { .. })),
        (&["172.31.0.0/24"], |r| {
            matches!(
                r,
                PlanRefusal::CoversInfrastructure {
                    what: Infrastructure::Broker(_),
                    ..
                }
            )
        }),
        (&["172.31.0.2/32"], |r| {
            matches!(r, PlanRefusal::CoversInfrastructure { .. })
        }),
        (&["172.31.0.11/32"], |r| {
            matches!(
                r,
                PlanRefusal::CoversInfrastructure {
                    what: Infrastructure::PeerEndpoint { .. },
                    ..
                }
            )
        }),
        (&["172.31.0.13/32"], |r| {
            matches!(
                r,
                PlanRefusal::CoversInfrastructure {
                    what: Infrastructure::OwnUnderlay(_),
                    ..
                }
            )
        }),
        (&["127.0.0.0/8"], |r| {
            matches!(r, PlanRefusal::Reserved { .. })
        }),
        (&["fe80::/64"], |r| {
            matches!(r, PlanRefusal::Reserved { .. })
        }),
        (&["100.64.0.0/16"], |r| {
            matches!(r, PlanRefusal::InGlobalSpace { .. })
        }),
        (&["10.244.0.0/16", "10.244.1.0/24"], |r| {
            matches!(r, PlanRefusal::Overlapping { .. })
        }),
        (&["10.244.0.1/16"], |r| {
            matches!(r, PlanRefusal::NotANetwork { .. })
        }),
    ];
    for (cidrs, want) in table {
        let got = check(cidrs);
        assert!(
            got.as_ref().is_err_and(want),
            "claims {cidrs:?}: got {got:?}"
        );
    }
}

#[test]
fn an_endpoint_must_be_where_the_session_comes_from_unless_configured() {
    let mut info = claims(&["10.244.0.0/16"]);
    info.wg_endpoint = "172.31.0.11:51820".parse().unwrap();
    assert!(matches!(
        check_claims(&info, &context(), &PlanConfig::default()),
        Err(PlanRefusal::UnvouchedEndpoint { .. })
    ));
    let mut ctx = context();
    ctx.vouched_endpoint = Some(ip("172.31.0.11"));
    ctx.peer_endpoints.clear();
    ctx.observed = Some(ip("192.0.2.7"));
    info.cidrs.clear();
    assert_eq!(check_claims(&info, &ctx, &PlanConfig::default()), Ok(()));
    ctx.vouched_endpoint = Some(ip("172.31.0.99"));
    assert!(matches!(
        check_claims(&info, &ctx, &PlanConfig::default()),
        Err(PlanRefusal::EndpointNotAsConfigured { .. })
    ));
}

#[test]
fn same_cidrs_get_distinct_global_ranges_of_the_same_length() {
    let config = PlanConfig::default();
    let kind = [net("10.244.0.0/16"), net("10.96.0.0/12")];
    let mut taken = vec![];
    let mut all = vec![];
    for _ in 0..3 {
        let allocs = allocate(&kind, &[], &taken, &config).unwrap();
        assert_eq!(allocs.len(), 2);
        for a in &allocs {
            assert_eq!(a.local.prefix_len(), a.global.prefix_len());
            assert!(IpNet::V4(config.v4).contains(&a.global));
            taken.push(a.global);
        }
        all.extend(allocs);
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(!overlaps(&a.global, &b.global), "{a} and {b} overlap");
        }
    }
    // A fourth kind-sized cluster does not fit the default /10: refused, not squeezed.
    assert!(matches!(
        allocate(&kind, &[], &taken, &config),
        Err(PlanRefusal::Exhausted { .. })
    ));
}

#[test]
fn earlier_allocations_are_kept_across_reconnects_and_changes() {
    let config = PlanConfig::default();
    let first = allocate(&[net("10.244.0.0/16")], &[], &[], &config).unwrap();
    let again = allocate(&[net("10.244.0.0/16")], &first, &[], &config).unwrap();
    assert_eq!(first, again);
    // A new claim beside it leaves the old one where it was.
    let more = allocate(
        &[net("10.244.0.0/16"), net("10.96.0.0/12")],
        &first,
        &[],
        &config,
    )
    .unwrap();
    assert_eq!(more[0], first[0]);
    assert!(!overlaps(&more[0].global, &more[1].global));
}

#[test]
fn first_fit_skips_used_blocks_and_stays_aligned() {
    let config = PlanConfig::default();
    let taken = [net("100.64.0.0/24"), net("100.64.1.0/26")];
    let got = allocate(&[net("10.0.0.0/16")], &[], &taken, &config).unwrap();
    assert_eq!(got[0].global, net("100.65.0.0/16"));
    let got = allocate(&[net("10.0.0.0/26")], &[], &taken, &config).unwrap();
    assert_eq!(got[0].global, net("100.64.1.64/26"));
    let v6 = allocate(&[net("fd00:10:244::/56")], &[], &[], &config).unwrap();
    assert_eq!(v6[0].global, net("fd63:6175:7365::/56"));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However claims arrive, no two clusters' global ranges ever overlap, and each global
        /// range has its claim's length.
        #[test]
        fn allocations_never_overlap(lens in proptest::collection::vec(16u8..=30, 1..40)) {
            let config = PlanConfig::default();
            let mut taken: Vec<IpNet> = vec![];
            for len in lens {
                let claim = IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), len).unwrap().trunc());
                match allocate(&[claim], &[], &taken, &config) {
                    Ok(a) => {
                        prop_assert_eq!(a[0].global.prefix_len(), len);
                        prop_assert!(taken.iter().all(|t| !overlaps(t, &a[0].global)));
                        taken.push(a[0].global);
                    }
                    Err(PlanRefusal::Exhausted { .. }) => {}
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
        }
    }
}
