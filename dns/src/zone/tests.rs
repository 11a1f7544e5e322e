//! Table tests for `Snapshot::answer`: every case is (query name, type) → rcode, AA, answer
//! data, and whether the SOA is in the authority section.

use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, RData, RecordType};

use super::*;

const TTL: u32 = 5;

fn ips(addresses: &[&str]) -> Vec<IpAddr> {
    addresses
        .iter()
        .map(|a| IpAddr::from_str(a).expect("test address"))
        .collect()
}

/// A ClusterSetIP service with one preference group and no clusters or ports.
fn service(namespace: &str, name: &str, addresses: &[&str]) -> ServiceRecords {
    ServiceRecords {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        kind: ServiceKind::ClusterSetIp {
            clusterset_ips: Vec::new(),
        },
        tiers: vec![ips(addresses)],
        clusters: Vec::new(),
        ports: Vec::new(),
    }
}

/// `zone` with the ttl and no cap; no clusterset zone unless it is `svc.global`.
fn config(zone: &str, ttl: u32) -> ZoneConfig {
    ZoneConfig {
        zone: zone.to_owned(),
        clusterset_zone: (zone == "svc.global").then(|| "clusterset.local".to_owned()),
        ttl,
        max_addresses: 0,
    }
}

fn snapshot() -> Snapshot {
    Snapshot::new(
        &config("svc.global", TTL),
        vec![
            service(
                "shop",
                "web",
                &["10.102.0.10", "fd00::1", "10.101.0.10", "10.102.0.10"],
            ),
            service("shop", "db", &["10.101.0.20"]),
            service("shop", "v6only", &["fd00::2"]),
            service("shop", "noaddrs", &[]),
        ],
    )
    .expect("valid snapshot")
}

fn name(s: &str) -> LowerName {
    LowerName::from_str(s).expect("test name")
}

/// The answer's rdata rendered as text, in order.
fn data(answer: &Answer<'_>) -> Vec<String> {
    answer
        .answers()
        .iter()
        .map(|r| r.data.to_string())
        .collect()
}

fn has_soa_authority(answer: &Answer<'_>) -> bool {
    matches!(answer.authority(), [soa] if matches!(soa.data, RData::SOA(_)))
}

#[test]
fn answer_table() {
    let snapshot = snapshot();
    struct Case {
        name: &'static str,
        qtype: RecordType,
        rcode: ResponseCode,
        aa: bool,
        data: &'static [&'static str],
        soa_in_authority: bool,
    }
    let noerror = |name, qtype, data| Case {
        name,
        qtype,
        rcode: ResponseCode::NoError,
        aa: true,
        data,
        soa_in_authority: false,
    };
    let nodata = |name, qtype| Case {
        name,
        qtype,
        rcode: ResponseCode::NoError,
        aa: true,
        data: &[],
        soa_in_authority: true,
    };
    let nxdomain = |name, qtype| Case {
        name,
        qtype,
        rcode: ResponseCode::NXDomain,
        aa: true,
        data: &[],
        soa_in_authority: true,
    };
    let refused = |name, qtype| Case {
        name,
        qtype,
        rcode: ResponseCode::Refused,
        aa: false,
        data: &[],
        soa_in_authority: false,
    };
    let cases = [
        // A keeps the caller's order and drops the duplicate.
        noerror(
            "web.shop.svc.global.",
            RecordType::A,
            &["10.102.0.10", "10.101.0.10"],
        ),
        noerror("web.shop.svc.global.", RecordType::AAAA, &["fd00::1"]),
        noerror("db.shop.svc.global.", RecordType::A, &["10.101.0.20"]),
        // Case-insensitive match.
        noerror(
            "WeB.ShOp.SVC.Global.",
            RecordType::A,
            &["10.102.0.10", "10.101.0.10"],
        ),
        // Only one family → the other is NODATA.
        nodata("db.shop.svc.global.", RecordType::AAAA),
        nodata("v6only.shop.svc.global.", RecordType::A),
        noerror("v6only.shop.svc.global.", RecordType::AAAA, &["fd00::2"]),
        // A service without addresses still exists.
        nodata("noaddrs.shop.svc.global.", RecordType::A),
        // Other types at a service name → NODATA.
        nodata("web.shop.svc.global.", RecordType::TXT),
        nodata("web.shop.svc.global.", RecordType::SOA),
        // ANY → one RRset, not everything at the name (RFC 8482 §4.2).
        noerror(
            "web.shop.svc.global.",
            RecordType::ANY,
            &["10.102.0.10", "10.101.0.10"],
        ),
        noerror(
            "svc.global.",
            RecordType::ANY,
            &["ns.svc.global. hostmaster.svc.global. 0 3600 600 86400 5"],
        ),
        nodata("shop.svc.global.", RecordType::ANY),
        // Empty non-terminal → NODATA, not NXDOMAIN (RFC 4592 §2.2.2).
        nodata("shop.svc.global.", RecordType::A),
        nodata("SHOP.svc.global.", RecordType::AAAA),
        // Unknown names → NXDOMAIN.
        nxdomain("nope.shop.svc.global.", RecordType::A),
        nxdomain("other.svc.global.", RecordType::A),
        nxdomain("x.web.shop.svc.global.", RecordType::A),
        nxdomain("ns.svc.global.", RecordType::A),
        // Apex.
        noerror(
            "svc.global.",
            RecordType::SOA,
            &["ns.svc.global. hostmaster.svc.global. 0 3600 600 86400 5"],
        ),
        noerror("svc.global.", RecordType::NS, &["ns.svc.global."]),
        noerror("SVC.GLOBAL.", RecordType::NS, &["ns.svc.global."]),
        nodata("svc.global.", RecordType::A),
        // Outside the zone, or a zone transfer → REFUSED.
        refused("global.", RecordType::A),
        refused("example.com.", RecordType::A),
        refused("svc.global.example.com.", RecordType::A),
        refused(".", RecordType::NS),
        refused("svc.global.", RecordType::AXFR),
        refused("svc.global.", RecordType::IXFR),
    ];
    for case in cases {
        let answer = snapshot.answer(&name(case.name), case.qtype, 0);
        let what = format!("{} {}", case.name, case.qtype);
        assert_eq!(answer.rcode(), case.rcode, "rcode for {what}");
        assert_eq!(answer.authoritative(), case.aa, "AA for {what}");
        assert_eq!(data(&answer), case.data, "answers for {what}");
        assert_eq!(
            has_soa_authority(&answer),
            case.soa_in_authority,
            "SOA in authority for {what}"
        );
    }
}

#[test]
fn answers_carry_the_configured_ttl_and_owner_name() {
    let snapshot = Snapshot::new(
        &config("svc.global", 30),
        vec![service("shop", "web", &["10.0.0.1"])],
    )
    .expect("valid snapshot");
    let answer = snapshot.answer(&name("WEB.shop.svc.global."), RecordType::A, 0);
    let [record] = answer.answers() else {
        panic!("one record expected, got {answer:?}");
    };
    assert_eq!(record.ttl, 30);
    // Owner names are stored lowercase; the question section echoes the client's spelling.
    assert_eq!(record.name.to_string(), "web.shop.svc.global.");
}

#[test]
fn negative_answers_carry_soa_with_ttl_of_min_ttl_and_minimum() {
    let snapshot = Snapshot::empty(&config("svc.global", 7)).expect("valid snapshot");
    let answer = snapshot.answer(&name("nope.svc.global."), RecordType::A, 0);
    let [soa] = answer.authority() else {
        panic!("one SOA expected, got {answer:?}");
    };
    let RData::SOA(rdata) = &soa.data else {
        panic!("SOA expected, got {soa:?}");
    };
    assert_eq!(soa.name.to_string(), "svc.global.");
    assert_eq!(soa.ttl, soa.ttl.min(rdata.minimum));
    assert_eq!(rdata.minimum, 7);
}

#[test]
fn set_serial_changes_the_soa_everywhere() {
    let mut snapshot = Snapshot::empty(&config("svc.global", TTL)).expect("valid snapshot");
    snapshot.set_serial(42);
    assert_eq!(snapshot.serial(), 42);
    let serial_of = |records: &[Record]| match records {
        [soa] => match &soa.data {
            RData::SOA(soa) => soa.serial,
            other => panic!("SOA expected, got {other:?}"),
        },
        other => panic!("one record expected, got {other:?}"),
    };
    let apex = snapshot.answer(&name("svc.global."), RecordType::SOA, 0);
    assert_eq!(serial_of(apex.answers()), 42);
    let negative = snapshot.answer(&name("nope.svc.global."), RecordType::A, 0);
    assert_eq!(serial_of(negative.authority()), 42);
}

#[test]
fn zone_with_trailing_dot_or_capitals_is_the_same_zone() {
    for zone in ["svc.global.", "SVC.Global"] {
        let snapshot = Snapshot::new(
            &config(zone, TTL),
            vec![service("shop", "web", &["10.0.0.1"])],
        )
        .expect("valid snapshot");
        let answer = snapshot.answer(&name("web.shop.svc.global."), RecordType::A, 0);
        assert_eq!(data(&answer), ["10.0.0.1"], "zone {zone}");
    }
}

#[test]
fn snapshot_rejects_bad_zones() {
    let cases = [
        ("", NameProblem::Empty),
        (".", NameProblem::Root),
        ("svc..global", NameProblem::Empty),
        ("svc global", NameProblem::NotALabel),
        (
            &*format!("{}.global", "a".repeat(64)),
            NameProblem::LabelTooLong,
        ),
    ];
    for (zone, expected) in cases {
        match Snapshot::empty(&config(zone, TTL)) {
            Err(Error::BadZone { zone: got, reason }) => {
                assert_eq!(got, zone);
                assert_eq!(reason, expected, "zone {zone:?}");
            }
            other => panic!("BadZone expected for {zone:?}, got {other:?}"),
        }
    }
}

#[test]
fn snapshot_rejects_service_names_that_are_not_single_labels() {
    let cases = [
        ("shop", "", NameProblem::Empty),
        ("", "web", NameProblem::Empty),
        ("shop", "web.evil", NameProblem::NotALabel),
        ("sh op", "web", NameProblem::NotALabel),
        ("shop", "w_b", NameProblem::NotALabel),
        ("shop", "-web", NameProblem::NotALabel),
        ("shop", "web-", NameProblem::NotALabel),
        ("shop", &*"a".repeat(64), NameProblem::LabelTooLong),
    ];
    for (namespace, svc, expected) in cases {
        match Snapshot::new(
            &config("svc.global", TTL),
            vec![service(namespace, svc, &[])],
        ) {
            Err(Error::BadServiceName { reason, .. }) => {
                assert_eq!(reason, expected, "{namespace}/{svc}")
            }
            other => panic!("BadServiceName expected for {namespace}/{svc}, got {other:?}"),
        }
    }
}

#[test]
fn snapshot_rejects_names_too_long_for_dns() {
    let zone = format!("{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63));
    let result = Snapshot::new(
        &config(&zone, TTL),
        vec![service(&"d".repeat(63), &"e".repeat(63), &[])],
    );
    assert!(
        matches!(
            result,
            Err(Error::BadServiceName {
                reason: NameProblem::NameTooLong,
                ..
            })
        ),
        "got {result:?}"
    );
}

#[test]
fn snapshot_rejects_duplicate_services_case_insensitively() {
    let result = Snapshot::new(
        &config("svc.global", TTL),
        vec![
            service("shop", "web", &["10.0.0.1"]),
            service("SHOP", "Web", &["10.0.0.2"]),
        ],
    );
    assert!(
        matches!(result, Err(Error::DuplicateService { ref namespace, ref name }) if namespace == "SHOP" && name == "Web"),
        "got {result:?}"
    );
}

mod invariants {
    use proptest::prelude::*;

    use super::*;

    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("shop".to_owned()),
            Just("web".to_owned()),
            Just("Web".to_owned()),
            // Valid labels and ones Snapshot must reject (a trailing '-'); hickory itself
            // refuses a leading '-', so queries never carry one.
            "[a-zA-Z0-9][a-zA-Z0-9-]{0,7}",
        ]
    }

    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u8..4).prop_map(|i| IpAddr::from([10, 0, 0, i])),
            (0u16..4).prop_map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i])),
        ]
    }

    fn services() -> impl Strategy<Value = Vec<ServiceRecords>> {
        prop::collection::vec(
            (label(), label(), prop::collection::vec(address(), 0..6)).prop_map(
                |(namespace, name, addresses)| ServiceRecords {
                    namespace,
                    name,
                    kind: ServiceKind::ClusterSetIp {
                        clusterset_ips: Vec::new(),
                    },
                    tiers: vec![addresses],
                    clusters: Vec::new(),
                    ports: Vec::new(),
                },
            ),
            0..6,
        )
    }

    fn query_name() -> impl Strategy<Value = String> {
        let in_zone = prop::collection::vec(label(), 0..4).prop_map(|labels| {
            let mut name = labels.join(".");
            if !name.is_empty() {
                name.push('.');
            }
            name + "svc.global."
        });
        prop_oneof![
            in_zone,
            Just("global.".to_owned()),
            Just("example.com.".to_owned()),
        ]
    }

    fn query_type() -> impl Strategy<Value = RecordType> {
        prop::sample::select(vec![
            RecordType::A,
            RecordType::AAAA,
            RecordType::SOA,
            RecordType::NS,
            RecordType::TXT,
            RecordType::ANY,
            RecordType::AXFR,
        ])
    }

    proptest! {
        /// Whatever the zone holds and whatever is asked, the answer obeys RFC 1034/2308.
        #[test]
        fn answers_obey_the_rfc_shape(
            services in services(),
            qname in query_name(),
            qtype in query_type(),
        ) {
            // Duplicates are rejected; the invariant is about snapshots that exist.
            let Ok(snapshot) = Snapshot::new(&config("svc.global", TTL), services.clone()) else {
                return Ok(());
            };
            let asked = name(&qname);
            let answer = snapshot.answer(&asked, qtype, 0);
            let in_zone = name("svc.global.").zone_of(&asked);

            if !in_zone || qtype == RecordType::AXFR {
                prop_assert_eq!(answer.rcode(), ResponseCode::Refused);
                prop_assert!(!answer.authoritative());
                return Ok(());
            }
            prop_assert!(answer.authoritative());
            match &answer {
                Answer::Records { answers: records, .. } => {
                    prop_assert!(!records.is_empty());
                    for record in records.iter() {
                        prop_assert_eq!(LowerName::new(&record.name), asked.clone());
                        prop_assert!(qtype == RecordType::ANY || record.record_type() == qtype);
                        prop_assert_eq!(record.ttl, TTL);
                    }
                }
                Answer::NoData { soa } | Answer::NxDomain { soa } => {
                    prop_assert!(matches!(soa, [s] if s.record_type() == RecordType::SOA));
                }
                Answer::Refused | Answer::OutsideZones => {
                    prop_assert!(false, "refused inside the zone")
                }
            }

            // A service's own name always exists, and A answers its v4 addresses in order.
            for service in &services {
                let own = name(&format!("{}.{}.svc.global.", service.name, service.namespace));
                if own != asked {
                    continue;
                }
                prop_assert_ne!(answer.rcode(), ResponseCode::NXDomain);
                if qtype == RecordType::A {
                    let mut expected: Vec<String> = Vec::new();
                    for a in service.tiers.iter().flatten().filter(|a| a.is_ipv4()) {
                        if !expected.contains(&a.to_string()) {
                            expected.push(a.to_string());
                        }
                    }
                    prop_assert_eq!(data(&answer), expected);
                }
            }
        }
    }
}

/// The MCS zone's cap on a headless name counts endpoints (a hostname in a cluster, or an
/// address no host names), the best first, and keeps all of each chosen endpoint's addresses.
#[test]
fn endpoint_subset_keeps_the_best_endpoints_with_both_families() {
    let host = |hostname: &str, address: &str| HostRecord {
        hostname: hostname.to_owned(),
        address: IpAddr::from_str(address).expect("test address"),
    };
    let cluster = |id: &str, hosts: Vec<HostRecord>| ClusterRecords {
        cluster: id.to_owned(),
        priority: 0,
        addresses: hosts.iter().map(|h| h.address).collect(),
        hosts,
    };
    let service = ServiceRecords {
        namespace: "shop".to_owned(),
        name: "db".to_owned(),
        kind: ServiceKind::Headless,
        // Every IPv4 address first, then every IPv6 one; a bare address in the second group.
        tiers: vec![
            ips(&[
                "10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2", "fd00::3",
            ]),
            ips(&["10.0.0.9", "10.0.1.1", "fd00:1::1"]),
        ],
        clusters: vec![
            cluster(
                "c1",
                vec![
                    host("db-0", "10.0.0.1"),
                    host("DB-0", "fd00::1"),
                    host("db-1", "10.0.0.2"),
                    host("db-1", "fd00::2"),
                    host("db-2", "10.0.0.3"),
                    host("db-2", "fd00::3"),
                ],
            ),
            // The same hostname in another cluster is another endpoint.
            cluster(
                "c2",
                vec![host("db-0", "10.0.1.1"), host("db-0", "fd00:1::1")],
            ),
        ],
        ports: Vec::new(),
    };
    let cases: &[(usize, &[&[&str]])] = &[
        (1, &[&["10.0.0.1", "fd00::1"], &[]]),
        (2, &[&["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"], &[]]),
        (
            4,
            &[
                &[
                    "10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2", "fd00::3",
                ],
                &["10.0.0.9"],
            ],
        ),
        (
            5,
            &[
                &[
                    "10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2", "fd00::3",
                ],
                &["10.0.0.9", "10.0.1.1", "fd00:1::1"],
            ],
        ),
        (
            usize::MAX,
            &[
                &[
                    "10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2", "fd00::3",
                ],
                &["10.0.0.9", "10.0.1.1", "fd00:1::1"],
            ],
        ),
    ];
    for &(cap, expected) in cases {
        let expected: Vec<Vec<IpAddr>> = expected.iter().map(|g| ips(g)).collect();
        assert_eq!(build::endpoint_subset(&service, cap), expected, "cap {cap}");
    }
}

mod encode;
mod records;
mod update;
mod wire;
