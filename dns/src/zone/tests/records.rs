//! Table tests for the per-cluster, per-endpoint, SRV and MCS names, and for rotation and the
//! answer cap.

use proptest::prelude::*;

use super::*;

fn cluster(id: &str, priority: u16, addresses: &[&str], hosts: &[(&str, &str)]) -> ClusterRecords {
    ClusterRecords {
        cluster: id.to_owned(),
        priority,
        addresses: ips(addresses),
        hosts: hosts
            .iter()
            .map(|(hostname, address)| HostRecord {
                hostname: (*hostname).to_owned(),
                address: IpAddr::from_str(address).expect("test address"),
            })
            .collect(),
    }
}

fn port(name: &str, port: u16, protocol: PortProtocol) -> NamedPort {
    NamedPort {
        name: name.to_owned(),
        port,
        protocol,
    }
}

fn cluster_set_ip(clusterset_ips: &[&str]) -> ServiceKind {
    ServiceKind::ClusterSetIp {
        clusterset_ips: ips(clusterset_ips),
    }
}

/// web (cluster IPs in c1, c2, c3), db (headless in c1, c2), empty (headless, nothing ready),
/// vip (with a ClusterSetIP).
pub(super) fn services() -> Vec<ServiceRecords> {
    vec![
        ServiceRecords {
            namespace: "shop".into(),
            name: "web".into(),
            kind: cluster_set_ip(&[]),
            tiers: vec![
                ips(&["10.101.0.100"]),
                ips(&["10.102.0.100", "fd00::102", "10.103.0.100"]),
            ],
            clusters: vec![
                cluster("c1", 0, &["10.101.0.100"], &[]),
                cluster("c2", 1, &["10.102.0.100", "fd00::102"], &[]),
                cluster("c3", 1, &["10.103.0.100"], &[]),
            ],
            ports: vec![
                port("http", 80, PortProtocol::Tcp),
                port("dns", 53, PortProtocol::Udp),
            ],
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "db".into(),
            kind: ServiceKind::Headless,
            tiers: vec![ips(&["10.101.0.10", "10.101.0.11"]), ips(&["10.102.0.10"])],
            clusters: vec![
                cluster(
                    "c1",
                    0,
                    &["10.101.0.10", "10.101.0.11"],
                    &[("db-0", "10.101.0.10"), ("db-1", "10.101.0.11")],
                ),
                cluster("c2", 1, &["10.102.0.10"], &[("db-0", "10.102.0.10")]),
            ],
            ports: vec![port("pg", 5432, PortProtocol::Tcp)],
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "empty".into(),
            kind: ServiceKind::Headless,
            tiers: vec![],
            clusters: vec![],
            ports: vec![port("pg", 5432, PortProtocol::Tcp)],
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "vip".into(),
            kind: cluster_set_ip(&["10.200.0.1"]),
            tiers: vec![ips(&["10.101.0.50"])],
            clusters: vec![cluster("c1", 0, &["10.101.0.50"], &[])],
            ports: vec![port("http", 80, PortProtocol::Tcp)],
        },
    ]
}

pub(super) fn records_snapshot() -> Snapshot {
    Snapshot::new(&config("svc.global", TTL), services()).expect("valid snapshot")
}

fn additional(answer: &Answer<'_>) -> Vec<String> {
    answer
        .additional()
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect()
}

#[test]
fn cluster_endpoint_srv_and_mcs_names_table() {
    let snapshot = records_snapshot();
    // (name, type, rcode, answer data); NXDOMAIN/NODATA carry the SOA (checked below).
    let nx = ResponseCode::NXDomain;
    let ok = ResponseCode::NoError;
    let cases: &[(&str, RecordType, ResponseCode, &[&str])] = &[
        // Cluster-pinned names in svc.global.
        (
            "c2.web.shop.svc.global.",
            RecordType::A,
            ok,
            &["10.102.0.100"],
        ),
        (
            "C2.Web.shop.svc.global.",
            RecordType::AAAA,
            ok,
            &["fd00::102"],
        ),
        ("c3.web.shop.svc.global.", RecordType::AAAA, ok, &[]),
        ("c9.web.shop.svc.global.", RecordType::A, nx, &[]),
        (
            "c1.db.shop.svc.global.",
            RecordType::A,
            ok,
            &["10.101.0.10", "10.101.0.11"],
        ),
        // Headless endpoints by hostname, per cluster.
        (
            "db-1.c1.db.shop.svc.global.",
            RecordType::A,
            ok,
            &["10.101.0.11"],
        ),
        (
            "db-0.c2.db.shop.svc.global.",
            RecordType::A,
            ok,
            &["10.102.0.10"],
        ),
        ("db-1.c2.db.shop.svc.global.", RecordType::A, nx, &[]),
        // SRV per named port: per-cluster targets for cluster IPs, per-endpoint for headless.
        (
            "_http._tcp.web.shop.svc.global.",
            RecordType::SRV,
            ok,
            &[
                "0 1 80 c1.web.shop.svc.global.",
                "1 1 80 c2.web.shop.svc.global.",
                "1 1 80 c3.web.shop.svc.global.",
            ],
        ),
        (
            "_dns._udp.web.shop.svc.global.",
            RecordType::SRV,
            ok,
            &[
                "0 1 53 c1.web.shop.svc.global.",
                "1 1 53 c2.web.shop.svc.global.",
                "1 1 53 c3.web.shop.svc.global.",
            ],
        ),
        ("_http._udp.web.shop.svc.global.", RecordType::SRV, nx, &[]),
        ("_http._tcp.web.shop.svc.global.", RecordType::A, ok, &[]),
        ("_tcp.web.shop.svc.global.", RecordType::SRV, ok, &[]),
        (
            "_pg._tcp.db.shop.svc.global.",
            RecordType::SRV,
            ok,
            &[
                "0 1 5432 db-0.c1.db.shop.svc.global.",
                "0 1 5432 db-1.c1.db.shop.svc.global.",
                "1 1 5432 db-0.c2.db.shop.svc.global.",
            ],
        ),
        // Nothing ready: the names exist (fail closed) in causeway's zone.
        ("empty.shop.svc.global.", RecordType::A, ok, &[]),
        ("_pg._tcp.empty.shop.svc.global.", RecordType::SRV, ok, &[]),
        ("vip.shop.svc.global.", RecordType::A, ok, &["10.101.0.50"]),
        // The MCS zone.
        (
            "dns-version.clusterset.local.",
            RecordType::TXT,
            ok,
            &["1.0.0"],
        ),
        (
            "clusterset.local.",
            RecordType::NS,
            ok,
            &["ns.clusterset.local."],
        ),
        ("svc.clusterset.local.", RecordType::A, ok, &[]),
        (
            "web.shop.svc.clusterset.local.",
            RecordType::A,
            ok,
            &["10.101.0.100", "10.102.0.100", "10.103.0.100"],
        ),
        (
            "vip.shop.svc.clusterset.local.",
            RecordType::A,
            ok,
            &["10.200.0.1"],
        ),
        // No cluster-pinned names there (reserved by the MCS DNS specification).
        ("c1.web.shop.svc.clusterset.local.", RecordType::A, nx, &[]),
        ("c1.db.shop.svc.clusterset.local.", RecordType::A, ok, &[]),
        (
            "db-0.c2.db.shop.svc.clusterset.local.",
            RecordType::A,
            ok,
            &["10.102.0.10"],
        ),
        (
            "_http._tcp.web.shop.svc.clusterset.local.",
            RecordType::SRV,
            ok,
            &["0 1 80 web.shop.svc.clusterset.local."],
        ),
        (
            "_pg._tcp.db.shop.svc.clusterset.local.",
            RecordType::SRV,
            ok,
            &[
                "0 1 5432 db-0.c1.db.shop.svc.clusterset.local.",
                "0 1 5432 db-1.c1.db.shop.svc.clusterset.local.",
                "1 1 5432 db-0.c2.db.shop.svc.clusterset.local.",
            ],
        ),
        // Headless with nothing ready is NXDOMAIN under the MCS rules.
        ("empty.shop.svc.clusterset.local.", RecordType::A, nx, &[]),
        (
            "_pg._tcp.empty.shop.svc.clusterset.local.",
            RecordType::SRV,
            nx,
            &[],
        ),
        // causeway's own names do not leak into the other zone.
        ("web.shop.clusterset.local.", RecordType::A, nx, &[]),
        ("dns-version.svc.global.", RecordType::TXT, nx, &[]),
    ];
    for (qname, qtype, rcode, expected) in cases {
        let answer = snapshot.answer(&name(qname), *qtype, 0);
        let what = format!("{qname} {qtype}");
        assert_eq!(answer.rcode(), *rcode, "rcode for {what}");
        assert!(answer.authoritative(), "AA for {what}");
        assert_eq!(data(&answer), *expected, "answers for {what}");
        assert_eq!(
            has_soa_authority(&answer),
            expected.is_empty(),
            "SOA for {what}"
        );
        if expected.is_empty() {
            let apex = if qname.ends_with("clusterset.local.") {
                "clusterset.local."
            } else {
                "svc.global."
            };
            assert_eq!(
                answer.authority()[0].name.to_string(),
                apex,
                "SOA owner for {what}"
            );
        }
    }
}

#[test]
fn srv_targets_resolve_and_their_addresses_come_as_additional_records() {
    let snapshot = records_snapshot();
    let srv = snapshot.answer(&name("_http._tcp.web.shop.svc.global."), RecordType::SRV, 0);
    assert_eq!(
        additional(&srv),
        [
            "c1.web.shop.svc.global. 10.101.0.100",
            "c2.web.shop.svc.global. 10.102.0.100",
            "c2.web.shop.svc.global. fd00::102",
            "c3.web.shop.svc.global. 10.103.0.100",
        ]
    );
    for zone in ["svc.global.", "svc.clusterset.local."] {
        for (srv_name, service) in [("_http._tcp", "web"), ("_pg._tcp", "db")] {
            let srv = snapshot.answer(
                &name(&format!("{srv_name}.{service}.shop.{zone}")),
                RecordType::SRV,
                0,
            );
            assert!(!srv.answers().is_empty(), "{srv_name}.{service} in {zone}");
            for record in srv.answers() {
                let RData::SRV(rdata) = &record.data else {
                    panic!("SRV expected, got {record:?}");
                };
                let target = LowerName::new(&rdata.target);
                let a = snapshot.answer(&target, RecordType::A, 0);
                assert!(!a.answers().is_empty(), "target {target} resolves");
                for address in a.answers() {
                    let rendered = format!("{} {}", address.name, address.data);
                    assert!(
                        additional(&srv).contains(&rendered),
                        "{rendered} in additional"
                    );
                }
            }
        }
    }
    let db = snapshot.answer(&name("_pg._tcp.db.shop.svc.global."), RecordType::SRV, 0);
    assert_eq!(
        additional(&db),
        [
            "db-0.c1.db.shop.svc.global. 10.101.0.10",
            "db-1.c1.db.shop.svc.global. 10.101.0.11",
            "db-0.c2.db.shop.svc.global. 10.102.0.10",
        ]
    );
}

#[test]
fn any_gets_one_rrset_and_mcs_names_follow_the_query_case() {
    let snapshot = records_snapshot();
    let any = snapshot.answer(&name("c2.web.shop.svc.global."), RecordType::ANY, 0);
    assert_eq!(data(&any), ["10.102.0.100"], "the A set only (RFC 8482)");
    let upper = snapshot.answer(&name("DNS-VERSION.ClusterSet.Local."), RecordType::TXT, 0);
    assert_eq!(data(&upper), ["1.0.0"]);
}

fn rotating() -> ServiceRecords {
    let mut s = service("shop", "rot", &[]);
    s.tiers = vec![
        ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        ips(&["10.0.1.1", "10.0.1.2"]),
    ];
    s
}

#[test]
fn answers_rotate_within_each_group_and_the_cap_keeps_the_best_groups() {
    let cases: &[(usize, u64, &[&str])] = &[
        (
            0,
            0,
            &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.1.2"],
        ),
        (
            0,
            1,
            &["10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.1.2", "10.0.1.1"],
        ),
        (
            0,
            2,
            &["10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.1.2"],
        ),
        (
            0,
            3,
            &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.2", "10.0.1.1"],
        ),
        (2, 0, &["10.0.0.1", "10.0.0.2"]),
        (2, 1, &["10.0.0.2", "10.0.0.3"]),
        (2, 2, &["10.0.0.3", "10.0.0.1"]),
        (4, 1, &["10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.1.2"]),
        (
            9,
            4,
            &["10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.1.1", "10.0.1.2"],
        ),
        (1, u64::MAX, &["10.0.0.1"]),
    ];
    for (cap, rotation, expected) in cases {
        let mut config = config("svc.global", TTL);
        config.max_addresses = *cap;
        let snapshot = Snapshot::new(&config, vec![rotating()]).expect("valid snapshot");
        let answer = snapshot.answer(&name("rot.shop.svc.global."), RecordType::A, *rotation);
        assert_eq!(data(&answer), *expected, "cap {cap} rotation {rotation}");
    }
}

#[test]
fn the_cap_applies_to_cluster_and_additional_records_too() {
    let mut config = config("svc.global", TTL);
    config.max_addresses = 1;
    let snapshot = Snapshot::new(&config, services()).expect("valid snapshot");
    let pinned = snapshot.answer(&name("c1.db.shop.svc.global."), RecordType::A, 1);
    assert_eq!(data(&pinned), ["10.101.0.11"]);
    let srv = snapshot.answer(&name("_http._tcp.web.shop.svc.global."), RecordType::SRV, 0);
    assert_eq!(
        srv.answers().len(),
        3,
        "SRV records are not addresses: uncapped"
    );
    assert_eq!(additional(&srv).len(), 4, "one A (and one AAAA) per target");
}

#[test]
fn bad_cluster_hostname_or_port_labels_are_typed_errors() {
    type Mutation = fn(&mut ServiceRecords);
    let cases: [(&str, Mutation); 3] = [
        ("cluster", |s| s.clusters[0].cluster = "c_1".into()),
        ("hostname", |s| {
            s.clusters[0].hosts[0].hostname = "db.0".into()
        }),
        ("port", |s| s.ports[0].name = "-pg".into()),
    ];
    for (what, mutate) in cases {
        let mut broken = services();
        mutate(&mut broken[1]);
        match Snapshot::new(&config("svc.global", TTL), broken) {
            Err(Error::BadRecordName {
                what: got,
                namespace,
                name,
                ..
            }) => {
                assert_eq!(
                    (got, namespace.as_str(), name.as_str()),
                    (what, "shop", "db")
                );
            }
            other => panic!("BadRecordName for {what} expected, got {other:?}"),
        }
    }
}

#[test]
fn overlapping_zones_are_rejected() {
    for (zone, clusterset) in [
        ("svc.global", "svc.global"),
        ("clusterset.local", "svc.clusterset.local"),
        ("a.b", "b"),
    ] {
        let config = ZoneConfig {
            zone: zone.into(),
            clusterset_zone: Some(clusterset.into()),
            ttl: TTL,
            max_addresses: 0,
        };
        assert!(
            matches!(
                Snapshot::empty(&config),
                Err(Error::OverlappingZones { .. })
            ),
            "{zone} vs {clusterset}"
        );
    }
}

proptest! {
    /// Whatever the groups, cap and rotation: the answer is a permutation within each group,
    /// groups keep their order, and exactly min(cap, distinct addresses) records come back.
    #[test]
    fn rotation_permutes_within_groups_and_the_cap_truncates(
        groups in prop::collection::vec(prop::collection::btree_set(0u8..32, 0..5), 0..4),
        cap in 0usize..8,
        rotation in any::<u64>(),
    ) {
        // Distinct addresses across groups: an address belongs to its first group.
        let mut seen = std::collections::BTreeSet::new();
        let groups: Vec<Vec<IpAddr>> = groups
            .iter()
            .map(|g| g.iter().filter(|o| seen.insert(**o)).map(|o| IpAddr::from([10, 0, 0, *o])).collect())
            .collect();
        let mut config = config("svc.global", TTL);
        config.max_addresses = cap;
        let mut service = service("shop", "p", &[]);
        service.tiers = groups.clone();
        let snapshot = Snapshot::new(&config, vec![service]).expect("valid snapshot");
        let answer = snapshot.answer(&name("p.shop.svc.global."), RecordType::A, rotation);
        let got: Vec<IpAddr> = answer
            .answers()
            .iter()
            .map(|r| match r.data { RData::A(a) => IpAddr::V4(a.0), _ => panic!("A only") })
            .collect();
        let total: usize = groups.iter().map(Vec::len).sum();
        let limit = if cap == 0 { total } else { cap.min(total) };
        prop_assert_eq!(got.len(), limit);
        let group_of = |a: &IpAddr| groups.iter().position(|g| g.contains(a));
        let order: Vec<Option<usize>> = got.iter().map(group_of).collect();
        prop_assert!(order.iter().all(Option::is_some), "only known addresses: {:?}", got);
        prop_assert!(order.windows(2).all(|w| w[0] <= w[1]), "groups in order: {:?}", order);
        // Every group fully answered is a rotation of itself.
        let mut start = 0;
        for group in &groups {
            if start + group.len() > got.len() { break; }
            let slice = &got[start..start + group.len()];
            let doubled: Vec<IpAddr> = group.iter().chain(group).copied().collect();
            prop_assert!(group.is_empty() || doubled.windows(group.len()).any(|w| w == slice), "{:?} rotates {:?}", slice, group);
            start += group.len();
        }
    }
}
