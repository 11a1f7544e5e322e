//! The direct encoder (`encode.rs`) writes exactly what hickory's encoding of `build.rs`'s
//! records gives, for every service it takes, and takes no service `build.rs` rejects.

use proptest::prelude::*;

use super::records::services as rich_services;
use super::*;

/// Each tree's root key, apex and answers, from the direct encoder (`None` if it declined).
fn direct(config: &ZoneConfig, service: &ServiceRecords) -> Option<Vec<TreeDump>> {
    let prepared = build::prepare(config).expect("valid zones");
    let trees = crate::zone::encode::Encoder::new(&prepared).service(service)?;
    Some(
        trees
            .into_iter()
            .map(|t| (t.root.to_vec(), t.apex, t.wire.dump()))
            .collect(),
    )
}

/// The same from hickory records (`Err` if `build.rs` rejects the service).
fn through_records(config: &ZoneConfig, service: &ServiceRecords) -> Result<Vec<TreeDump>, Error> {
    let prepared = build::prepare(config).expect("valid zones");
    Ok(build::service_trees(&prepared, service)?
        .into_iter()
        .map(|t| {
            let wire = crate::zone::wire::tree(&prepared.apexes, &t.nodes, Some(t.apex));
            (
                crate::zone::wire::name_key(&t.root).to_vec(),
                t.apex,
                wire.dump(),
            )
        })
        .collect())
}

type TreeDump = (Vec<u8>, usize, Vec<crate::zone::wire::DumpedName>);

fn configs() -> Vec<ZoneConfig> {
    let mut capped = config("svc.global", TTL);
    capped.max_addresses = 2;
    let mut alone = config("Example.ORG.", 300);
    alone.max_addresses = 1;
    vec![config("svc.global", TTL), capped, alone]
}

#[test]
fn the_rich_table_is_encoded_directly_and_as_hickory_encodes_it() {
    for config in configs() {
        for service in rich_services() {
            let direct = direct(&config, &service);
            assert!(direct.is_some(), "{} declined", service.name);
            assert_eq!(direct, through_records(&config, &service).ok());
        }
    }
}

#[test]
fn names_spelt_two_ways_and_long_names_go_through_hickory() {
    let config = config("svc.global", TTL);
    let base = rich_services().remove(0);
    let mut clusters = base.clone();
    clusters.clusters[1].cluster = "C1".into();
    let mut ports = base.clone();
    ports.ports.push(NamedPort {
        name: "HTTP".into(),
        port: 8080,
        protocol: PortProtocol::Tcp,
    });
    let mut long = base.clone();
    long.clusters[0].cluster = "c".repeat(63);
    long.namespace = "n".repeat(63);
    long.name = "s".repeat(63);
    let mut bad = base;
    bad.clusters[0].cluster = "-c1".into();
    for service in [clusters, ports, long, bad] {
        assert!(direct(&config, &service).is_none(), "{service:?}");
    }
}

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "B", "c1", "db-0", "web"]).prop_map(str::to_owned)
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..5).prop_map(|i| IpAddr::from([10, 0, 0, i])),
        (0u16..3).prop_map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i])),
    ]
}

fn addresses(most: usize) -> impl Strategy<Value = Vec<IpAddr>> {
    prop::collection::vec(address(), 0..most)
}

fn cluster() -> impl Strategy<Value = ClusterRecords> {
    (
        label(),
        0u16..3,
        addresses(4),
        prop::collection::vec((label(), address()), 0..4),
    )
        .prop_map(|(cluster, priority, addresses, hosts)| ClusterRecords {
            cluster,
            priority,
            addresses,
            hosts: hosts
                .into_iter()
                .map(|(hostname, address)| HostRecord { hostname, address })
                .collect(),
        })
}

fn port() -> impl Strategy<Value = NamedPort> {
    (
        prop::sample::select(vec!["http", "dns", "Dns", "pg"]),
        prop::sample::select(vec![80u16, 53, 5432]),
        prop::sample::select(vec![
            PortProtocol::Tcp,
            PortProtocol::Udp,
            PortProtocol::Sctp,
        ]),
    )
        .prop_map(|(name, port, protocol)| NamedPort {
            name: name.to_owned(),
            port,
            protocol,
        })
}

fn service() -> impl Strategy<Value = ServiceRecords> {
    let kind = prop_oneof![
        Just(ServiceKind::Headless),
        addresses(3).prop_map(|clusterset_ips| ServiceKind::ClusterSetIp { clusterset_ips }),
    ];
    (
        label(),
        label(),
        kind,
        prop::collection::vec(addresses(5), 0..4),
        prop::collection::vec(cluster(), 0..4),
        prop::collection::vec(port(), 0..4),
    )
        .prop_map(
            |(namespace, name, kind, tiers, clusters, ports)| ServiceRecords {
                namespace,
                name,
                kind,
                tiers,
                clusters,
                ports,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the service, the direct encoder's answers are hickory's, or it declines; it
    /// never takes a service `build.rs` rejects.
    #[test]
    fn direct_answers_equal_hickory_encoded_records(
        service in service(),
        config in prop::sample::select(configs()),
    ) {
        let expected = through_records(&config, &service).ok();
        if let Some(direct) = direct(&config, &service) {
            prop_assert_eq!(Some(direct), expected);
        }
    }
}
