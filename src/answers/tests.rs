use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::model::{ClusterInfo, ServiceProps};

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn cluster(name: &str, n: u8) -> ClusterInfo {
    ClusterInfo {
        id: id(name),
        wg_endpoint: SocketAddr::from(([10, 100, 0, 10 + n], 51820)),
        wg_public_key: [n; 32],
        cidrs: vec![format!("10.10{n}.0.0/16").parse().unwrap()],
        region: None,
        zone: None,
        global: vec![crate::model::Allocation {
            local: format!("10.10{n}.0.0/16").parse().unwrap(),
            global: format!("100.{}.0.0/16", 63 + n).parse().unwrap(),
        }],
    }
}

fn export(ns: &str, name: &str, addrs: &[&str]) -> Export {
    Export {
        service: ServiceKey::new(ns, name).unwrap(),
        cluster_ips: vec![],
        ports: vec![],
        endpoints: addrs
            .iter()
            .map(|a| Endpoint {
                address: a.parse().unwrap(),
                ready: true,
                hostname: None,
                zone: None,
            })
            .collect(),
        props: ServiceProps {
            kind: ServiceKind::Headless,
            ..Default::default()
        },
    }
}

fn view(clusters: &[ClusterInfo], exports: &[(&str, Export)]) -> ClusterSetView {
    let mut v = ClusterSetView::default();
    for c in clusters {
        v.clusters.insert(c.id.clone(), c.clone());
    }
    for (c, e) in exports {
        v.exports.insert((id(c), e.service.clone()), e.clone());
    }
    v
}

#[test]
fn peers_are_every_other_cluster_with_its_global_ranges() {
    let v = view(&[cluster("c1", 1), cluster("c2", 2), cluster("c3", 3)], &[]);
    let peers = desired_peers(&id("c1"), &v, &[]);
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].public_key, [2; 32]);
    assert_eq!(peers[0].allowed_ips, vec!["100.65.0.0/16".parse().unwrap()]);
    assert_eq!(peers[1].endpoint, "10.100.0.13:51820".parse().unwrap());
}

#[test]
fn ranges_holding_the_broker_or_an_endpoint_are_never_routed() {
    let mut c2 = cluster("c2", 2);
    let mut c3 = cluster("c3", 3);
    // As an old or hostile broker might send: c2's range holds c3's endpoint, c3's the
    // broker.
    c2.global[0].global = "10.100.0.0/24".parse().unwrap();
    c3.global[0].global = "10.0.0.0/8".parse().unwrap();
    c3.global.push(crate::model::Allocation {
        local: "10.200.0.0/16".parse().unwrap(),
        global: "100.70.0.0/16".parse().unwrap(),
    });
    let v = view(&[cluster("c1", 1), c2, c3], &[]);
    let broker: IpAddr = "192.0.2.1".parse().unwrap();
    let peers = desired_peers(&id("c1"), &v, &[broker, "10.0.0.1".parse().unwrap()]);
    assert_eq!(peers[0].allowed_ips, vec![]);
    assert_eq!(peers[1].allowed_ips, vec!["100.70.0.0/16".parse().unwrap()]);
}

#[test]
fn remote_addresses_are_answered_as_global_ones_and_own_stay_local() {
    let v = view(
        &[cluster("c1", 1), cluster("c2", 2)],
        &[
            (
                "c2",
                with_cluster_ip(
                    export("shop", "web", &["10.102.0.10", "10.99.0.1"]),
                    "10.102.128.5",
                ),
            ),
            ("c1", export("shop", "api", &["10.101.0.10"])),
        ],
    );
    let reached = v.reached_from(&id("c1"));
    let web = &reached.exports[&(id("c2"), ServiceKey::new("shop", "web").unwrap())];
    let addresses: Vec<String> = web
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(
        addresses,
        ["100.65.0.10"],
        "untranslatable 10.99.0.1 left out"
    );
    assert_eq!(
        web.cluster_ips,
        vec!["100.65.128.5".parse::<IpAddr>().unwrap()]
    );
    let api = &reached.exports[&(id("c1"), ServiceKey::new("shop", "api").unwrap())];
    assert_eq!(api.endpoints[0].address.to_string(), "10.101.0.10");
}

#[test]
fn own_exports_come_from_the_source_and_rank_first() {
    let v = view(
        &[cluster("c1", 1), cluster("c3", 3)],
        &[
            ("c1", export("shop", "web", &["10.101.0.99"])), // stale echo of our own: ignored
            ("c3", export("shop", "web", &["10.103.0.10"])),
            ("c1", export("shop", "gone", &["10.101.0.98"])),
        ],
    );
    let local = [export("shop", "web", &["10.101.0.10"])];
    let services = dns_services(&id("c1"), &local, &v, &Health::default());
    assert_eq!(
        services.len(),
        1,
        "only the source says what c1 exports: {services:?}"
    );
    assert_eq!(
        tiers(&services[0]),
        [vec!["10.101.0.10"], vec!["10.103.0.10"]]
    );
}

#[test]
fn remote_only_services_are_answered() {
    let v = view(
        &[cluster("c1", 1)],
        &[("c1", export("shop", "web", &["10.101.0.10"]))],
    );
    let services = dns_services(&id("c2"), &[], &v, &Health::default());
    assert_eq!(services[0].name, "web");
    assert_eq!(tiers(&services[0]), [vec!["10.101.0.10"]]);
}

fn tiers(service: &causeway_dns::ServiceRecords) -> Vec<Vec<String>> {
    service
        .tiers
        .iter()
        .map(|g| g.iter().map(IpAddr::to_string).collect())
        .collect()
}

fn with_cluster_ip(mut e: Export, ip: &str) -> Export {
    e.cluster_ips = vec![ip.parse().unwrap()];
    e.props.kind = ServiceKind::ClusterSetIp;
    e
}

fn with_port(mut e: Export, name: Option<&str>, port: u16, protocol: Protocol) -> Export {
    e.ports.push(crate::model::PortSpec {
        name: name.map(str::to_owned),
        port,
        protocol,
        app_protocol: None,
    });
    e
}

fn unready(mut e: Export) -> Export {
    for endpoint in &mut e.endpoints {
        endpoint.ready = false;
    }
    e
}

/// Renders what the DNS gets for one service: kind, tiers, clusters (id, priority,
/// addresses, hosts) and ports.
fn render(service: &causeway_dns::ServiceRecords) -> String {
    let clusters: Vec<String> = service
        .clusters
        .iter()
        .map(|c| {
            let hosts: Vec<String> = c
                .hosts
                .iter()
                .map(|h| format!("{}={}", h.hostname, h.address))
                .collect();
            format!(
                "{}@{}{:?}{:?}",
                c.cluster,
                c.priority,
                c.addresses
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>(),
                hosts
            )
        })
        .collect();
    let ports: Vec<String> = service
        .ports
        .iter()
        .map(|p| format!("{}/{:?}={}", p.name, p.protocol, p.port))
        .collect();
    let kind = match service.kind {
        causeway_dns::ServiceKind::Headless => "headless",
        causeway_dns::ServiceKind::ClusterSetIp { .. } => "clusterip",
    };
    format!("{kind} {:?} {clusters:?} {ports:?}", tiers(service))
}

#[test]
fn dns_services_table() {
    let three = [cluster("c1", 1), cluster("c2", 2), cluster("c3", 3)];
    let mut db0 = export("shop", "db", &["10.102.0.10", "10.102.0.11"]);
    db0.endpoints[0].hostname = Some("db-0".into());
    db0.endpoints[1].hostname = Some("Not_A_Label".into());
    /// (what, this cluster's exports, others' exports, health, rendered result)
    type Case<'a> = (
        &'a str,
        Vec<Export>,
        Vec<(&'a str, Export)>,
        Health,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "cluster IPs: one address per cluster, own first, the rest one group",
            vec![with_cluster_ip(
                export("shop", "web", &["10.101.0.10"]),
                "10.96.1.1",
            )],
            vec![
                (
                    "c2",
                    with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
                ),
                (
                    "c3",
                    with_cluster_ip(export("shop", "web", &["10.103.0.10"]), "10.96.3.1"),
                ),
            ],
            Health::default(),
            r#"clusterip [["10.96.1.1"], ["10.96.2.1", "10.96.3.1"]] ["c1@0[\"10.96.1.1\"][]", "c2@1[\"10.96.2.1\"][]", "c3@1[\"10.96.3.1\"][]"] []"#,
        ),
        (
            "a cluster IP with no ready endpoint behind it is left out",
            vec![],
            vec![
                (
                    "c2",
                    unready(with_cluster_ip(
                        export("shop", "web", &["10.102.0.10"]),
                        "10.96.2.1",
                    )),
                ),
                (
                    "c3",
                    with_cluster_ip(export("shop", "web", &["10.103.0.10"]), "10.96.3.1"),
                ),
            ],
            Health::default(),
            r#"clusterip [["10.96.3.1"]] ["c3@0[\"10.96.3.1\"][]"] []"#,
        ),
        (
            "unreachable clusters are left out (fail closed leaves nothing)",
            vec![],
            vec![(
                "c2",
                with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
            )],
            Health {
                reachable: Some(std::collections::BTreeSet::from([id("c3")])),
                ..Health::default()
            },
            r#"clusterip [] [] []"#,
        ),
        (
            "headless: hostnames, else the address as a label",
            vec![],
            vec![("c2", db0.clone())],
            Health::default(),
            r#"headless [["10.102.0.10", "10.102.0.11"]] ["c2@0[\"10.102.0.10\", \"10.102.0.11\"][\"db-0=10.102.0.10\", \"10-102-0-11=10.102.0.11\"]"] []"#,
        ),
        (
            "named ports merge as a union; unnamed ports get no SRV",
            vec![with_port(
                with_port(
                    export("shop", "db", &["10.101.0.10"]),
                    Some("pg"),
                    5432,
                    Protocol::Tcp,
                ),
                None,
                9,
                Protocol::Tcp,
            )],
            vec![(
                "c2",
                with_port(
                    with_port(db0, Some("pg"), 5433, Protocol::Tcp),
                    Some("stats"),
                    8125,
                    Protocol::Udp,
                ),
            )],
            Health::default(),
            r#"headless [["10.101.0.10"], ["10.102.0.10", "10.102.0.11"]] ["c1@0[\"10.101.0.10\"][\"10-101-0-10=10.101.0.10\"]", "c2@1[\"10.102.0.10\", \"10.102.0.11\"][\"db-0=10.102.0.10\", \"10-102-0-11=10.102.0.11\"]"] ["pg/Tcp=5432", "stats/Udp=8125"]"#,
        ),
        (
            "the oldest export decides the kind (same age: the lowest cluster id); the other kind is left out",
            vec![export("shop", "web", &["10.101.0.10"])],
            vec![(
                "c2",
                with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
            )],
            Health::default(),
            r#"headless [["10.101.0.10"]] ["c1@0[\"10.101.0.10\"][\"10-101-0-10=10.101.0.10\"]"] []"#,
        ),
    ];
    for (what, local, remote, health, expected) in cases {
        let v = view(&three, &remote);
        let services = dns_services(&id("c1"), &local, &v, &health);
        let [service] = &services[..] else {
            panic!("{what}: one service expected, got {services:?}");
        };
        assert_eq!(render(service), expected, "{what}");
    }
}

#[test]
fn dns_services_build_a_snapshot_that_answers_pinned_and_srv_names() {
    let v = view(
        &[cluster("c1", 1), cluster("c2", 2)],
        &[(
            "c2",
            with_port(
                with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
                Some("http"),
                80,
                Protocol::Tcp,
            ),
        )],
    );
    let services = dns_services(&id("c1"), &[], &v, &Health::default());
    let snapshot = causeway_dns::Snapshot::new(&causeway_dns::ZoneConfig::default(), services)
        .expect("the translation yields a valid snapshot");
    let ask = |name: &str, t| {
        let name = name.parse().unwrap();
        let answer = snapshot.answer(&name, t, 0);
        answer
            .answers()
            .iter()
            .map(|r| r.data.to_string())
            .collect::<Vec<_>>()
    };
    use causeway_dns::proto::rr::RecordType;
    assert_eq!(ask("c2.web.shop.svc.global.", RecordType::A), ["10.96.2.1"]);
    assert_eq!(
        ask("_http._tcp.web.shop.svc.global.", RecordType::SRV),
        ["0 1 80 c2.web.shop.svc.global."]
    );
}

#[test]
fn clusters_whose_tunnel_is_down_are_unreachable_and_rtt_ranks_the_rest() {
    use causeway_gateway::{HealthState, PeerHealth};
    let v = view(
        &[
            cluster("c1", 1),
            cluster("c2", 2),
            cluster("c3", 3),
            cluster("c4", 4),
        ],
        &[],
    );
    let health = |state, rtt_ms: Option<u64>| PeerHealth {
        state,
        rtt: rtt_ms.map(Duration::from_millis),
        lost: 0,
        window: 0,
    };
    let peers = BTreeMap::from([
        ([2; 32], health(HealthState::Down, Some(3))),
        ([3; 32], health(HealthState::Degraded, Some(7))),
        ([4; 32], health(HealthState::Unknown, None)),
    ]);
    let h = health_view(&id("c1"), &v, &peers);
    let reachable: Vec<&str> = h
        .reachable
        .iter()
        .flatten()
        .map(ClusterId::as_str)
        .collect();
    assert_eq!(
        reachable,
        ["c1", "c3", "c4"],
        "down is out; degraded and not-yet-probed are in"
    );
    assert_eq!(h.rtt.get(&id("c3")), Some(&Duration::from_millis(7)));
    assert_eq!(h.rtt.get(&id("c4")), None);

    let services = dns_services(
        &id("c1"),
        &[],
        &view(
            &[cluster("c1", 1), cluster("c2", 2), cluster("c3", 3)],
            &[
                ("c2", export("shop", "web", &["10.102.0.10"])),
                ("c3", export("shop", "web", &["10.103.0.10"])),
            ],
        ),
        &h,
    );
    let answered: Vec<String> = services[0]
        .tiers
        .iter()
        .flatten()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        answered,
        ["10.103.0.10"],
        "c2's endpoint is left out while its tunnel is down"
    );
}

#[test]
fn clusterset_ips_from_imports_are_answered_in_the_mcs_zone() {
    let v = view(
        &[cluster("c1", 1), cluster("c2", 2)],
        &[(
            "c2",
            with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
        )],
    );
    let mut services = dns_services(&id("c1"), &[], &v, &Health::default());
    let ips = BTreeMap::from([(
        ServiceKey::new("shop", "web").unwrap(),
        vec!["10.255.0.1".parse().unwrap()],
    )]);
    with_clusterset_ips(&mut services, &ips);
    let snapshot = causeway_dns::Snapshot::new(&causeway_dns::ZoneConfig::default(), services)
        .expect("a valid snapshot");
    let name = "web.shop.svc.clusterset.local.".parse().unwrap();
    let answer = snapshot.answer(&name, causeway_dns::proto::rr::RecordType::A, 0);
    let got: Vec<String> = answer
        .answers()
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    assert_eq!(
        got,
        ["10.255.0.1"],
        "the ServiceImport's IP, not c2's cluster IP"
    );
}

/// While exports of one service conflict (KEP-1645), every cluster's DNS answers the kind and
/// the ports its ServiceImport shows: the oldest export's kind, whichever cluster asks and
/// whatever its cluster id, and the union of the ports, oldest export first. Each case runs
/// the Kubernetes controller's plan over a clusterset world (c1 and c2 export, c3 only
/// imports) to a fixed point, then asks each cluster's DNS from the same exports.
#[test]
fn dns_answers_the_kind_and_ports_of_the_service_import_while_exports_conflict() {
    use crate::source::k8s::crd::ServiceImportType;
    use crate::source::k8s::plan::tests::{Cluster, converge, pods, service, service_export};
    use serde_json::{Value, json};

    /// A Service spec: ClusterIP at `ip`, or headless when `ip` is `None`; `ports` are
    /// (name, port, protocol).
    fn spec(ip: Option<&str>, ports: &[(&str, u16, &str)]) -> Value {
        let ip = ip.unwrap_or("None");
        let ports: Vec<Value> = ports
            .iter()
            .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
            .collect();
        json!({"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
               "ipFamilies": ["IPv4"], "ports": ports})
    }
    /// (what, c1's spec and export time, c2's likewise, what every cluster's DNS answers and
    /// its ServiceImport shows: kind, answering clusters (or those of the other kind, left
    /// out) and ports)
    type Case = (&'static str, (Value, i64), (Value, i64), &'static str);
    let tcp = [("tcp", 42, "TCP")];
    let cases: Vec<Case> = vec![
        (
            "kind conflict: c2's ClusterSetIP export is older, so no cluster answers headless",
            (spec(None, &tcp), 200),
            (spec(Some("10.96.2.10"), &tcp), 100),
            "ClusterSetIP answered-by=[c2] other-kind=[c1] ports=[tcp/Tcp=42]",
        ),
        (
            "kind conflict: c2's headless export is older, so not the lowest id (c1) decides",
            (spec(Some("10.96.1.10"), &tcp), 200),
            (spec(None, &tcp), 100),
            "Headless answered-by=[c2] other-kind=[c1] ports=[tcp/Tcp=42]",
        ),
        (
            "kind conflict, the same age: the lowest cluster id wins",
            (spec(None, &tcp), 100),
            (spec(Some("10.96.2.10"), &tcp), 100),
            "Headless answered-by=[c1] other-kind=[c2] ports=[tcp/Tcp=42]",
        ),
        (
            "port conflict: one name, two ports; the older (c2's) keeps the name",
            (spec(Some("10.96.1.10"), &[("tcp", 42, "TCP")]), 100),
            (spec(Some("10.96.2.10"), &[("tcp", 43, "TCP")]), 50),
            "ClusterSetIP answered-by=[c1, c2] other-kind=[] ports=[tcp/Tcp=43]",
        ),
        (
            "port conflict: ports merge as a union, oldest export's first",
            (
                spec(
                    Some("10.96.1.10"),
                    &[("tcp", 42, "TCP"), ("dns", 53, "UDP")],
                ),
                100,
            ),
            (
                spec(
                    Some("10.96.2.10"),
                    &[("metrics", 9090, "TCP"), ("tcp", 42, "TCP")],
                ),
                50,
            ),
            "ClusterSetIP answered-by=[c1, c2] other-kind=[] ports=[metrics/Tcp=9090, tcp/Tcp=42, dns/Udp=53]",
        ),
    ];
    for (what, (c1, c1_at), (c2, c2_at), expected) in cases {
        let exporter = |name: &str, spec: Value, at: i64, pod: &str| {
            Cluster::new(name).with(
                service_export("hello", at, json!({})),
                Some(service("hello", spec)),
                Some(pods(
                    "hello",
                    json!([{"addresses": [pod], "hostname": "hello-0",
                            "conditions": {"ready": true}}]),
                )),
            )
        };
        let mut world = [
            exporter("c1", c1, c1_at, "10.1.0.5"),
            exporter("c2", c2, c2_at, "10.2.0.5"),
            Cluster::new("c3"),
        ];
        converge(&mut world, &[], 1000);
        // The broker's view, as `converge` built it: every cluster's exports.
        let mut clusterset = ClusterSetView::default();
        for c in &world {
            for e in &c.last.exports {
                clusterset
                    .exports
                    .insert((c.settings.cluster.clone(), e.service.clone()), e.clone());
            }
        }
        for c in &world {
            let me = &c.settings.cluster;
            let services = dns_services(me, &c.last.exports, &clusterset, &Health::default());
            let [dns] = &services[..] else {
                panic!("{what}: {me}: one service expected, got {services:?}");
            };
            let exports = exports_by_service(me, &c.last.exports, &clusterset);
            let ranked = rank_service(
                me,
                &BTreeMap::new(),
                &Health::default(),
                &exports[&ServiceKey::new("shop", "hello").unwrap()],
            );
            let kind = match dns.kind {
                causeway_dns::ServiceKind::Headless => "Headless",
                causeway_dns::ServiceKind::ClusterSetIp { .. } => "ClusterSetIP",
            };
            let mut answering: Vec<&str> =
                dns.clusters.iter().map(|c| c.cluster.as_str()).collect();
            answering.sort_unstable();
            let ports: Vec<String> = dns
                .ports
                .iter()
                .map(|p| format!("{}/{:?}={}", p.name, p.protocol, p.port))
                .collect();
            let got = format!(
                "{kind} answered-by=[{}] other-kind=[{}] ports=[{}]",
                answering.join(", "),
                ranked
                    .other_kind
                    .iter()
                    .map(ClusterId::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                ports.join(", ")
            );
            assert_eq!(got, expected, "{what}: {me}'s DNS");

            // The ServiceImport this cluster's controller wrote says the same.
            let import = &c.import("hello").expect("imported everywhere").spec;
            let import_kind = match import.type_ {
                ServiceImportType::Headless => "Headless",
                ServiceImportType::ClusterSetIp => "ClusterSetIP",
            };
            assert_eq!(import_kind, kind, "{what}: {me}'s ServiceImport type");
            let import_ports: Vec<String> = import
                .ports
                .iter()
                .map(|p| {
                    let protocol = match p.protocol.as_deref() {
                        Some("UDP") => "Udp",
                        Some("SCTP") => "Sctp",
                        _ => "Tcp",
                    };
                    format!("{}/{protocol}={}", p.name.as_deref().unwrap_or(""), p.port)
                })
                .collect();
            assert_eq!(import_ports, ports, "{what}: {me}'s ServiceImport ports");
            // For ClusterSetIP, its MCS slices come from the clusters DNS answers with. (A
            // headless import's slices also carry the pods of a ClusterSetIP export, which
            // DNS leaves out as of the other kind: not compared here.)
            if kind == "ClusterSetIP" {
                let mut sources: Vec<String> = c
                    .mcs_slices("hello")
                    .iter()
                    .filter_map(|s| {
                        s.metadata
                            .labels
                            .as_ref()?
                            .get(crate::source::k8s::crd::LABEL_SOURCE_CLUSTER)
                            .cloned()
                    })
                    .collect();
                sources.sort();
                sources.dedup();
                assert_eq!(sources, answering, "{what}: {me}'s slices");
            }
        }
    }
}
