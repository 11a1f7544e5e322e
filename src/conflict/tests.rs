use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::model::fixtures::{export, id};
use crate::model::{Endpoint, ServiceProps};

fn port(name: Option<&str>, protocol: Protocol, number: u16) -> PortSpec {
    PortSpec {
        name: name.map(str::to_owned),
        port: number,
        protocol,
        app_protocol: None,
    }
}

/// The conformance suite's `hello`: tcp/42 and udp/42, exported at `at`.
fn hello(at: i64) -> Export {
    let mut e = export("hello", "10.101.0.10");
    e.ports = vec![
        port(Some("tcp"), Protocol::Tcp, 42),
        port(Some("udp"), Protocol::Udp, 42),
    ];
    e.props = ServiceProps {
        ip_families: vec![IpFamily::V4],
        exported_at: Some(at),
        ..Default::default()
    };
    e
}

fn resolve_all(exports: &[(&str, Export)]) -> Resolution {
    let owned: Vec<(ClusterId, Export)> = exports.iter().map(|(c, e)| (id(c), e.clone())).collect();
    resolve(owned.iter().map(|(c, e)| (c, e))).expect("one service, one export per cluster")
}

fn kinds(r: &Resolution) -> Vec<ConflictKind> {
    r.conflicts.iter().map(|c| c.kind).collect()
}

fn ids(names: &[&str]) -> Vec<ClusterId> {
    names.iter().map(|n| id(n)).collect()
}

/// Each row: what the newer export (c2, exported after c1) changes, the conflict kinds
/// expected, and a check on the merged view (the oldest export's value must win).
#[test]
fn each_conflict_kind_is_detected_and_the_oldest_export_wins() {
    type Change = fn(&mut Export);
    type Check = fn(&ImportView);
    let cases: Vec<(&str, Change, Vec<ConflictKind>, Check)> = vec![
        (
            "identical exports",
            |_| {},
            vec![],
            |v| assert_eq!(v.ports.len(), 2),
        ),
        (
            "headless against ClusterSetIP",
            |e| e.props.kind = ServiceKind::Headless,
            vec![ConflictKind::Type],
            |v| assert_eq!(v.kind, ServiceKind::ClusterSetIp),
        ),
        (
            "ClientIP against None",
            |e| {
                e.props.session_affinity = SessionAffinity::ClientIp {
                    timeout_seconds: Some(10),
                }
            },
            vec![ConflictKind::SessionAffinity],
            |v| assert_eq!(v.session_affinity, SessionAffinity::None),
        ),
        (
            "annotations",
            |e| {
                e.props
                    .exported_annotations
                    .insert("team".into(), "b".into());
            },
            vec![ConflictKind::Annotations],
            |v| assert!(v.exported_annotations.is_empty()),
        ),
        (
            "labels",
            |e| {
                e.props.exported_labels.insert("tier".into(), "web".into());
            },
            vec![ConflictKind::Labels],
            |v| assert!(v.exported_labels.is_empty()),
        ),
        (
            "internalTrafficPolicy Local against the default Cluster",
            |e| e.props.internal_traffic_policy = Some("Local".into()),
            vec![ConflictKind::InternalTrafficPolicy],
            |v| assert_eq!(v.internal_traffic_policy, None),
        ),
        (
            "explicit Cluster equals the default",
            |e| e.props.internal_traffic_policy = Some("Cluster".into()),
            vec![],
            |_| {},
        ),
        (
            "trafficDistribution",
            |e| e.props.traffic_distribution = Some("PreferClose".into()),
            vec![ConflictKind::TrafficDistribution],
            |v| assert_eq!(v.traffic_distribution, None),
        ),
        (
            "IPv6 only against IPv4",
            |e| e.props.ip_families = vec![IpFamily::V6],
            vec![ConflictKind::IpFamily],
            |v| assert_eq!(v.ip_families, [IpFamily::V4]),
        ),
        (
            "dual stack still reaches every backend over IPv4",
            |e| e.props.ip_families = vec![IpFamily::V4, IpFamily::V6],
            vec![],
            |v| assert_eq!(v.ip_families, [IpFamily::V4]),
        ),
        (
            "no families listed is not compared",
            |e| e.props.ip_families = vec![],
            vec![],
            |_| {},
        ),
        (
            "an added port (conformance: C2 adds stcp/142/SCTP)",
            |e| e.ports.push(port(Some("stcp"), Protocol::Sctp, 142)),
            vec![ConflictKind::Port],
            |v| {
                let names: Vec<_> = v.ports.iter().map(|p| p.port.name.clone()).collect();
                assert_eq!(
                    names,
                    [Some("tcp".into()), Some("udp".into()), Some("stcp".into())]
                );
            },
        ),
        (
            "same name, another number (conformance: C2 port+1)",
            |e| {
                for p in &mut e.ports {
                    p.port += 1;
                }
            },
            vec![ConflictKind::Port],
            |v| {
                let numbers: Vec<u16> = v.ports.iter().map(|p| p.port.port).collect();
                assert_eq!(numbers, [42, 42], "the oldest export's ports only");
            },
        ),
        (
            "several kinds at once",
            |e| {
                e.props.kind = ServiceKind::Headless;
                e.ports.truncate(1);
                e.props.traffic_distribution = Some("PreferClose".into());
            },
            vec![
                ConflictKind::Port,
                ConflictKind::Type,
                ConflictKind::TrafficDistribution,
            ],
            |v| assert_eq!(v.kind, ServiceKind::ClusterSetIp),
        ),
    ];
    for (name, change, expected, check) in cases {
        let mut newer = hello(200);
        change(&mut newer);
        let r = resolve_all(&[("c2", newer), ("c1", hello(100))]);
        assert_eq!(r.winner, id("c1"), "{name}");
        assert_eq!(kinds(&r), expected, "{name}");
        for c in &r.conflicts {
            assert_eq!(c.disagreeing, ids(&["c2"]), "{name}: {c:?}");
            assert!(
                c.message
                    .contains("from oldest service export in \"c1\". 1/2 clusters"),
                "{name}: {}",
                c.message
            );
        }
        assert_eq!(r.import.clusters, ids(&["c1", "c2"]), "{name}");
        check(&r.import);
    }
}

#[test]
fn session_affinity_timeouts_conflict_only_between_client_ip_exports() {
    let client_ip = |timeout: Option<i32>, at: i64| {
        let mut e = hello(at);
        e.props.session_affinity = SessionAffinity::ClientIp {
            timeout_seconds: timeout,
        };
        e
    };
    let r = resolve_all(&[
        ("c1", client_ip(Some(10), 1)),
        ("c2", client_ip(Some(20), 2)),
    ]);
    assert_eq!(kinds(&r), [ConflictKind::SessionAffinityConfig]);
    assert_eq!(
        r.import.session_affinity,
        SessionAffinity::ClientIp {
            timeout_seconds: Some(10)
        }
    );
    // No timeout means Kubernetes' default, 10800 s.
    let r = resolve_all(&[
        ("c1", client_ip(None, 1)),
        ("c2", client_ip(Some(DEFAULT_CLIENT_IP_TIMEOUT_SECONDS), 2)),
    ]);
    assert!(!r.is_conflicted(), "{:?}", r.conflicts);
    // A None export disagrees on the affinity itself, not on a timeout it does not have.
    let r = resolve_all(&[("c1", client_ip(Some(10), 1)), ("c2", hello(2))]);
    assert_eq!(kinds(&r), [ConflictKind::SessionAffinity]);
}

#[test]
fn every_export_gets_the_same_combined_condition() {
    let mut c2 = hello(200);
    c2.props.kind = ServiceKind::Headless;
    c2.ports.push(port(Some("stcp"), Protocol::Sctp, 142));
    let r = resolve_all(&[("c1", hello(100)), ("c2", c2), ("c3", hello(300))]);
    assert!(r.is_conflicted());
    // The reason is the same for every export (the controller sets it on each ServiceExport,
    // the winner's included), in the API's combination order.
    assert_eq!(r.reason(), "PortConflict,TypeConflict");
    assert!(
        r.message()
            .contains("Conflicting type. Using \"ClusterSetIP\" from oldest service export in \"c1\". 1/3 clusters disagree."),
        "{}",
        r.message()
    );
    // Disagreeing means differing from the oldest export (c1), as for every property.
    assert_eq!(
        r.conflict(ConflictKind::Port).unwrap().disagreeing,
        ids(&["c2"])
    );
    assert!(
        r.conflict(ConflictKind::Port)
            .unwrap()
            .message
            .contains("the union [tcp:tcp/42, udp:udp/42, stcp:sctp/142]")
    );

    let r = resolve_all(&[("c1", hello(100)), ("c2", hello(200))]);
    assert!(!r.is_conflicted());
    assert_eq!(r.reason(), "NoConflicts");
    assert_eq!(r.message(), "All 2 service exports agree.");
}

#[test]
fn the_oldest_export_wins_and_ties_go_to_the_smallest_cluster_id() {
    let headless = |at: Option<i64>| {
        let mut e = hello(0);
        e.props.exported_at = at;
        e.props.kind = ServiceKind::Headless;
        e
    };
    let clusterset_ip = |at: Option<i64>| {
        let mut e = hello(0);
        e.props.exported_at = at;
        e
    };
    let cases = [
        (
            "older headless b wins",
            Some(1),
            Some(2),
            "b",
            ServiceKind::Headless,
        ),
        (
            "older a wins",
            Some(2),
            Some(1),
            "a",
            ServiceKind::ClusterSetIp,
        ),
        (
            "a tie goes to a",
            Some(5),
            Some(5),
            "a",
            ServiceKind::ClusterSetIp,
        ),
        (
            "a time beats none",
            None,
            Some(9),
            "a",
            ServiceKind::ClusterSetIp,
        ),
        (
            "b's time beats none",
            Some(9),
            None,
            "b",
            ServiceKind::Headless,
        ),
        ("neither: a", None, None, "a", ServiceKind::ClusterSetIp),
    ];
    for (name, b_at, a_at, winner, kind) in cases {
        let r = resolve_all(&[("b", headless(b_at)), ("a", clusterset_ip(a_at))]);
        assert_eq!(r.winner, id(winner), "{name}");
        assert_eq!(r.import.kind, kind, "{name}");
        assert_eq!(kinds(&r), [ConflictKind::Type], "{name}");
    }
}

#[test]
fn ports_merge_by_name_then_protocol_and_port() {
    type Ports = Vec<PortSpec>;
    let tcp = |name: Option<&str>, n: u16| port(name, Protocol::Tcp, n);
    // (c1's ports, c2's ports, the union, whether that is a PortConflict).
    let cases: Vec<(&str, Ports, Ports, Ports, bool)> = vec![
        (
            "different names and numbers: both (conformance: 42 vs 4242)",
            vec![tcp(Some("a"), 42)],
            vec![tcp(Some("b"), 4242)],
            vec![tcp(Some("a"), 42), tcp(Some("b"), 4242)],
            true,
        ),
        (
            "same name, other number: the older stays",
            vec![tcp(Some("http"), 80)],
            vec![tcp(Some("http"), 8080)],
            vec![tcp(Some("http"), 80)],
            true,
        ),
        (
            "same protocol and number, other name: the older stays",
            vec![tcp(Some("http"), 80)],
            vec![tcp(Some("web"), 80)],
            vec![tcp(Some("http"), 80)],
            true,
        ),
        (
            "same number, other protocol: both",
            vec![tcp(Some("dns"), 53)],
            vec![
                tcp(Some("dns"), 53),
                port(Some("dns-udp"), Protocol::Udp, 53),
            ],
            vec![
                tcp(Some("dns"), 53),
                port(Some("dns-udp"), Protocol::Udp, 53),
            ],
            true,
        ),
        (
            "one unnamed port each, equal",
            vec![tcp(None, 80)],
            vec![tcp(None, 80)],
            vec![tcp(None, 80)],
            false,
        ),
        (
            "unnamed against named, same address",
            vec![tcp(None, 80)],
            vec![tcp(Some("http"), 80)],
            vec![tcp(None, 80)],
            true,
        ),
        (
            "same ports in another order",
            vec![tcp(Some("a"), 1), tcp(Some("b"), 2)],
            vec![tcp(Some("b"), 2), tcp(Some("a"), 1)],
            vec![tcp(Some("a"), 1), tcp(Some("b"), 2)],
            false,
        ),
        (
            "appProtocol differs on the same port",
            vec![tcp(Some("web"), 80)],
            vec![PortSpec {
                app_protocol: Some("http".into()),
                ..tcp(Some("web"), 80)
            }],
            vec![tcp(Some("web"), 80)],
            true,
        ),
    ];
    for (name, c1_ports, c2_ports, union, conflict) in cases {
        let (mut c1, mut c2) = (hello(1), hello(2));
        c1.ports = c1_ports;
        c2.ports = c2_ports;
        let r = resolve_all(&[("c1", c1), ("c2", c2)]);
        let got: Vec<PortSpec> = r.import.ports.iter().map(|m| m.port.clone()).collect();
        assert_eq!(got, union, "{name}");
        assert_eq!(
            r.conflict(ConflictKind::Port).is_some(),
            conflict,
            "{name}: {:?}",
            r.conflicts
        );
        let names: BTreeSet<_> = got.iter().filter_map(|p| p.name.clone()).collect();
        assert_eq!(
            names.len(),
            got.iter().filter(|p| p.name.is_some()).count(),
            "{name}: duplicate names"
        );
    }
}

#[test]
fn merged_ports_list_the_clusters_that_expose_them() {
    let mut c2 = hello(2);
    c2.ports = vec![
        port(Some("tcp"), Protocol::Tcp, 42),
        port(Some("extra"), Protocol::Tcp, 4242),
    ];
    let r = resolve_all(&[("c1", hello(1)), ("c2", c2)]);
    let by_name: BTreeMap<String, BTreeSet<ClusterId>> = r
        .import
        .ports
        .iter()
        .map(|m| (m.port.name.clone().unwrap(), m.clusters.clone()))
        .collect();
    assert_eq!(by_name["tcp"], BTreeSet::from([id("c1"), id("c2")]));
    assert_eq!(by_name["udp"], BTreeSet::from([id("c1")]));
    assert_eq!(by_name["extra"], BTreeSet::from([id("c2")]));
}

#[test]
fn a_single_export_never_conflicts_and_is_its_own_view() {
    let mut e = hello(7);
    e.props.exported_labels = BTreeMap::from([("a".into(), "b".into())]);
    e.props.traffic_distribution = Some("PreferClose".into());
    e.endpoints.push(Endpoint {
        address: "10.101.0.11".parse().unwrap(),
        ready: false,
        hostname: None,
        zone: None,
    });
    let r = resolve_all(&[("c1", e.clone())]);
    assert!(!r.is_conflicted());
    assert_eq!(r.import.exported_labels, e.props.exported_labels);
    assert_eq!(
        r.import.traffic_distribution.as_deref(),
        Some("PreferClose")
    );
    assert_eq!(r.import.clusters, ids(&["c1"]));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert_eq!(
        resolve(std::iter::empty()).unwrap_err(),
        ResolveError::NoExports
    );
    let (c1, c2) = (id("c1"), id("c2"));
    let (web, api) = (export("web", "10.0.0.1"), export("api", "10.0.0.2"));
    assert!(matches!(
        resolve([(&c1, &web), (&c2, &api)]),
        Err(ResolveError::MixedServices { .. })
    ));
    assert!(matches!(
        resolve([(&c1, &web), (&c1, &web)]),
        Err(ResolveError::DuplicateCluster { .. })
    ));
}

#[test]
fn reasons_fit_the_condition_reason_pattern() {
    // `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, from metav1.Condition.
    let all: Vec<&str> = ConflictKind::ALL.iter().map(|k| k.reason()).collect();
    let combined = all.join(",");
    for reason in all.iter().copied().chain([combined.as_str()]) {
        let bytes = reason.as_bytes();
        assert!(bytes[0].is_ascii_alphabetic(), "{reason}");
        assert!(
            bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"_,:".contains(b)),
            "{reason}"
        );
        assert!(bytes[bytes.len() - 1].is_ascii_alphanumeric(), "{reason}");
    }
    assert!(combined.len() <= 1024);
}
