//! Table tests and invariants for `select`: ranking, filtering, fallback, rotation and cap.

use proptest::prelude::*;

use super::*;

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn ep(addr: &str, ready: bool) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        ready,
        hostname: None,
        zone: None,
    }
}

fn host(addr: &str, hostname: &str) -> Endpoint {
    Endpoint {
        hostname: Some(hostname.into()),
        ..ep(addr, true)
    }
}

fn loc(region: &str, zone: &str) -> Locality {
    Locality {
        region: Some(region.into()),
        zone: Some(zone.into()),
    }
}

fn addrs(list: &[IpAddr]) -> Vec<String> {
    list.iter().map(IpAddr::to_string).collect()
}

fn groups(s: &Selection) -> Vec<Vec<String>> {
    s.tiers().iter().map(|g| addrs(g)).collect()
}

/// Runs `select` from cluster `me` over `(cluster, endpoints)` pairs.
fn run(
    me: &str,
    localities: &BTreeMap<ClusterId, Locality>,
    health: &Health,
    candidates: &[(&str, Vec<Endpoint>)],
) -> Selection {
    let owned: Vec<(ClusterId, Vec<Endpoint>)> =
        candidates.iter().map(|(c, e)| (id(c), e.clone())).collect();
    select(
        &id(me),
        localities,
        health,
        owned.iter().map(|(c, e)| (c, e.as_slice())),
    )
}

#[test]
fn own_cluster_first_then_zone_then_region_then_rest() {
    let localities = BTreeMap::from([
        (id("me"), loc("eu", "eu-a")),
        (id("far"), loc("us", "us-a")),
        (id("region"), loc("eu", "eu-b")),
        (id("zone"), loc("eu", "eu-a")),
    ]);
    let s = run(
        "me",
        &localities,
        &Health::default(),
        &[
            ("far", vec![ep("10.4.0.1", true)]),
            ("region", vec![ep("10.3.0.1", true)]),
            ("zone", vec![ep("10.2.0.1", true)]),
            ("me", vec![ep("10.1.0.1", true)]),
        ],
    );
    let tiers: Vec<Tier> = s.decisions.iter().map(|d| d.rank.tier).collect();
    assert_eq!(
        tiers,
        [Tier::Local, Tier::SameZone, Tier::SameRegion, Tier::Remote]
    );
    assert_eq!(
        addrs(&s.addresses()),
        ["10.1.0.1", "10.2.0.1", "10.3.0.1", "10.4.0.1"]
    );
}

#[test]
fn filtering_table() {
    let unreachable_c = Health {
        reachable: Some(BTreeSet::from([id("b")])),
        ..Health::default()
    };
    let open = Health {
        fallback: Fallback::FailOpen,
        ..unreachable_c.clone()
    };
    let nobody = Health {
        reachable: Some(BTreeSet::new()),
        ..Health::default()
    };
    struct Case {
        what: &'static str,
        health: Health,
        candidates: Vec<(&'static str, Vec<Endpoint>)>,
        answered: &'static [&'static str],
        verdicts: &'static [Verdict],
    }
    use Excluded::{NotReady, Unreachable};
    use Verdict::{Answered, Excluded as Out, FailedOpen};
    let cases = [
        Case {
            what: "unready endpoints are left out with a reason",
            health: Health::default(),
            candidates: vec![("me", vec![ep("10.1.0.1", false), ep("10.1.0.2", true)])],
            answered: &["10.1.0.2"],
            verdicts: &[Answered, Out(NotReady)],
        },
        Case {
            what: "unreachable clusters are left out; unreachable beats not ready as the reason",
            health: unreachable_c.clone(),
            candidates: vec![
                ("b", vec![ep("10.2.0.1", true)]),
                ("c", vec![ep("10.3.0.1", true), ep("10.3.0.2", false)]),
            ],
            answered: &["10.2.0.1"],
            verdicts: &[Answered, Out(Unreachable), Out(Unreachable)],
        },
        Case {
            what: "the own cluster is always reachable",
            health: nobody.clone(),
            candidates: vec![
                ("me", vec![ep("10.1.0.1", true)]),
                ("b", vec![ep("10.2.0.1", true)]),
            ],
            answered: &["10.1.0.1"],
            verdicts: &[Answered, Out(Unreachable)],
        },
        Case {
            what: "fail closed: nothing healthy, nothing answered",
            health: unreachable_c.clone(),
            candidates: vec![
                ("b", vec![ep("10.2.0.1", false)]),
                ("c", vec![ep("10.3.0.1", true)]),
            ],
            answered: &[],
            verdicts: &[Out(NotReady), Out(Unreachable)],
        },
        Case {
            what: "fail open: nothing healthy, the last known endpoints, ranked",
            health: open.clone(),
            candidates: vec![
                ("c", vec![ep("10.3.0.1", true)]),
                ("b", vec![ep("10.2.0.1", false)]),
            ],
            answered: &["10.2.0.1", "10.3.0.1"],
            verdicts: &[FailedOpen(NotReady), FailedOpen(Unreachable)],
        },
        Case {
            what: "fail open changes nothing while one endpoint is healthy",
            health: open,
            candidates: vec![
                ("b", vec![ep("10.2.0.1", false), ep("10.2.0.2", true)]),
                ("c", vec![ep("10.3.0.1", true)]),
            ],
            answered: &["10.2.0.2"],
            verdicts: &[Answered, Out(NotReady), Out(Unreachable)],
        },
    ];
    for case in cases {
        let s = run("me", &BTreeMap::new(), &case.health, &case.candidates);
        assert_eq!(addrs(&s.addresses()), case.answered, "{}", case.what);
        let verdicts: Vec<Verdict> = s.decisions.iter().map(|d| d.verdict).collect();
        assert_eq!(verdicts, case.verdicts, "{}", case.what);
    }
}

#[test]
fn remote_clusters_follow_measured_rtt_with_unknown_last() {
    let health = Health {
        rtt: BTreeMap::from([
            (id("slow"), Duration::from_millis(80)),
            (id("quick"), Duration::from_millis(5)),
        ]),
        ..Health::default()
    };
    let s = run(
        "me",
        &BTreeMap::new(),
        &health,
        &[
            ("anon", vec![ep("10.9.0.1", true)]),
            ("slow", vec![ep("10.8.0.1", true)]),
            ("quick", vec![ep("10.7.0.1", true)]),
            ("me", vec![ep("10.1.0.1", true)]),
        ],
    );
    assert_eq!(
        groups(&s),
        [
            vec!["10.1.0.1"],
            vec!["10.7.0.1"],
            vec!["10.8.0.1"],
            vec!["10.9.0.1"]
        ]
    );
    // The order flips when the latencies swap.
    let swapped = Health {
        rtt: BTreeMap::from([
            (id("slow"), Duration::from_millis(5)),
            (id("quick"), Duration::from_millis(80)),
        ]),
        ..Health::default()
    };
    let s = run(
        "me",
        &BTreeMap::new(),
        &swapped,
        &[
            ("slow", vec![ep("10.8.0.1", true)]),
            ("quick", vec![ep("10.7.0.1", true)]),
        ],
    );
    assert_eq!(addrs(&s.addresses()), ["10.8.0.1", "10.7.0.1"]);
}

#[test]
fn equally_near_clusters_share_one_group() {
    let localities = BTreeMap::from([
        (id("me"), loc("eu", "eu-a")),
        (id("b"), loc("eu", "eu-b")),
        (id("c"), loc("eu", "eu-c")),
    ]);
    let s = run(
        "me",
        &localities,
        &Health::default(),
        &[
            ("c", vec![ep("10.3.0.1", true)]),
            ("me", vec![ep("10.1.0.1", true), ep("10.1.0.2", true)]),
            ("b", vec![ep("10.2.0.1", true)]),
        ],
    );
    assert_eq!(
        groups(&s),
        [vec!["10.1.0.1", "10.1.0.2"], vec!["10.2.0.1", "10.3.0.1"]]
    );
    let clusters: Vec<(String, usize)> = s
        .clusters()
        .iter()
        .map(|c| (c.cluster.to_string(), c.group))
        .collect();
    assert_eq!(
        clusters,
        [("me".into(), 0), ("b".into(), 1), ("c".into(), 1)]
    );
}

#[test]
fn answer_rotates_within_groups_then_caps() {
    let localities = BTreeMap::from([(id("me"), loc("eu", "eu-a")), (id("b"), loc("eu", "eu-a"))]);
    let s = run(
        "me",
        &localities,
        &Health::default(),
        &[
            (
                "me",
                vec![
                    ep("10.1.0.1", true),
                    ep("10.1.0.2", true),
                    ep("10.1.0.3", true),
                ],
            ),
            ("b", vec![ep("10.2.0.1", true), ep("10.2.0.2", true)]),
        ],
    );
    let cases: &[(u64, usize, &[&str])] = &[
        (
            0,
            0,
            &["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.2.0.1", "10.2.0.2"],
        ),
        (
            1,
            0,
            &["10.1.0.2", "10.1.0.3", "10.1.0.1", "10.2.0.2", "10.2.0.1"],
        ),
        (
            2,
            0,
            &["10.1.0.3", "10.1.0.1", "10.1.0.2", "10.2.0.1", "10.2.0.2"],
        ),
        (1, 2, &["10.1.0.2", "10.1.0.3"]),
        (2, 4, &["10.1.0.3", "10.1.0.1", "10.1.0.2", "10.2.0.1"]),
        (u64::MAX, 1, &["10.1.0.1"]),
    ];
    for (rotation, cap, expected) in cases {
        assert_eq!(
            addrs(&s.answer(*rotation, *cap)),
            *expected,
            "rotation {rotation} cap {cap}"
        );
    }
}

#[test]
fn clusters_carry_their_answered_hosts_and_unset_regions_never_match() {
    let localities = BTreeMap::from([
        (id("me"), Locality::default()),
        (id("b"), Locality::default()),
    ]);
    let s = run(
        "me",
        &localities,
        &Health::default(),
        &[
            ("b", vec![host("10.2.0.1", "db-0"), ep("10.2.0.2", false)]),
            ("c", vec![host("10.2.0.1", "db-0")]),
        ],
    );
    assert!(s.decisions.iter().all(|d| d.rank.tier == Tier::Remote));
    assert_eq!(s.addresses().len(), 1, "one address is answered once");
    let b = &s.clusters()[0];
    assert_eq!(b.cluster, id("b"));
    assert_eq!(b.hosts, [("db-0".to_owned(), "10.2.0.1".parse().unwrap())]);
}

proptest! {
    /// Never answers an unready or unreachable endpoint while a healthy one exists; with
    /// nothing healthy, fail closed answers nothing and fail open answers every known address.
    /// Local endpoints always come first, and rotation/cap only reorder and cut that answer.
    #[test]
    fn never_answers_unhealthy_while_a_healthy_endpoint_exists(
        eps in prop::collection::vec((0u8..3, 0u8..8, any::<bool>()), 0..20),
        reachable in prop::option::of(prop::collection::btree_set(0u8..3, 0..3)),
        fail_open in any::<bool>(),
        rotation in any::<u64>(),
        cap in 0usize..6,
    ) {
        let clusters = [id("a"), id("b"), id("c")];
        let me = &clusters[1];
        let health = Health {
            reachable: reachable.map(|set| set.iter().map(|c| clusters[usize::from(*c)].clone()).collect()),
            rtt: BTreeMap::new(),
            fallback: if fail_open { Fallback::FailOpen } else { Fallback::FailClosed },
        };
        let mut by_cluster: BTreeMap<ClusterId, Vec<Endpoint>> = BTreeMap::new();
        for (c, last, ready) in &eps {
            let e = Endpoint { address: IpAddr::from([10, *c, 0, *last]), ready: *ready, hostname: None, zone: None };
            by_cluster.entry(clusters[usize::from(*c)].clone()).or_default().push(e);
        }
        let s = select(me, &BTreeMap::new(), &health, by_cluster.iter().map(|(c, e)| (c, e.as_slice())));
        let healthy = |c: u8, ready: bool| {
            let cluster = &clusters[usize::from(c)];
            ready && (cluster == me || health.reachable.as_ref().is_none_or(|r| r.contains(cluster)))
        };
        let any_healthy = eps.iter().any(|(c, _, r)| healthy(*c, *r));
        let answered = s.addresses();
        for (c, last, _) in &eps {
            let addr = IpAddr::from([10, *c, 0, *last]);
            let healthy_somewhere = eps.iter().any(|(c2, l2, r2)| c2 == c && l2 == last && healthy(*c2, *r2));
            let expected = if any_healthy { healthy_somewhere } else { fail_open };
            prop_assert_eq!(answered.contains(&addr), expected, "{} any_healthy={}", addr, any_healthy);
        }
        let first_remote = answered.iter().position(|a| matches!(a, IpAddr::V4(v) if v.octets()[1] != 1));
        let last_local = answered.iter().rposition(|a| matches!(a, IpAddr::V4(v) if v.octets()[1] == 1));
        if let (Some(r), Some(l)) = (first_remote, last_local) {
            prop_assert!(l < r, "local endpoints come before remote ones: {:?}", answered);
        }
        let rotated = s.answer(rotation, cap);
        let limit = if cap == 0 { answered.len() } else { cap.min(answered.len()) };
        prop_assert_eq!(rotated.len(), limit);
        prop_assert!(rotated.iter().all(|a| answered.contains(a)), "{:?} within {:?}", rotated, answered);
    }
}
