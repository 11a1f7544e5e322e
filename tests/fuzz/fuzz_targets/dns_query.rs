//! Arbitrary bytes into the DNS server's query path: the fast path (`Snapshot::answer_wire`,
//! our own parser) and, for what hickory parses, the zone lookup. Neither may panic, and every
//! fast-path answer must decode as a DNS message. Compression loops, truncated and oversized
//! messages, odd classes and opcodes come from the corpus and libFuzzer's mutations.
#![no_main]

use std::sync::LazyLock;

use causeway_dns::proto::op::Message;
use causeway_dns::proto::rr::LowerName;
use causeway_dns::{
    ClusterRecords, HostRecord, NamedPort, PortProtocol, ServiceKind, ServiceRecords, Snapshot,
    ZoneConfig,
};
use libfuzzer_sys::fuzz_target;

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let ip = |s: &str| s.parse().expect("literal address");
    let http = NamedPort {
        name: "http".into(),
        port: 80,
        protocol: PortProtocol::Tcp,
    };
    let services = vec![
        ServiceRecords {
            namespace: "shop".into(),
            name: "web".into(),
            kind: ServiceKind::ClusterSetIp {
                clusterset_ips: vec![],
            },
            tiers: vec![
                vec![ip("10.101.0.100")],
                vec![ip("10.102.0.100"), ip("fd00::102")],
            ],
            clusters: vec![
                ClusterRecords {
                    cluster: "c1".into(),
                    priority: 0,
                    addresses: vec![ip("10.101.0.100")],
                    hosts: vec![],
                },
                ClusterRecords {
                    cluster: "c2".into(),
                    priority: 1,
                    addresses: vec![ip("10.102.0.100"), ip("fd00::102")],
                    hosts: vec![],
                },
            ],
            ports: vec![http.clone()],
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "db".into(),
            kind: ServiceKind::Headless,
            tiers: vec![vec![ip("10.101.0.10"), ip("10.101.0.11")]],
            clusters: vec![ClusterRecords {
                cluster: "c1".into(),
                priority: 0,
                addresses: vec![ip("10.101.0.10"), ip("10.101.0.11")],
                hosts: vec![
                    HostRecord {
                        hostname: "db-0".into(),
                        address: ip("10.101.0.10"),
                    },
                    HostRecord {
                        hostname: "db-1".into(),
                        address: ip("10.101.0.11"),
                    },
                ],
            }],
            ports: vec![http],
        },
    ];
    Snapshot::new(&ZoneConfig::default(), services).expect("valid snapshot")
});

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if SNAPSHOT.answer_wire(
        data,
        u64::from(data.first().copied().unwrap_or(0)),
        &mut out,
    ) {
        Message::from_vec(&out).expect("fast-path answers decode");
    }
    if let Ok(message) = Message::from_vec(data) {
        for query in &message.queries {
            let _ = SNAPSHOT.answer(&LowerName::from(query.name()), query.query_type(), 0);
        }
    }
});
