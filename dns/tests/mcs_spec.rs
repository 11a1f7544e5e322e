//! The `clusterset.local` zone against the MCS DNS specification (KEP-1645 `specification.md`,
//! schema 1.0.0; summarised in `shared/mcs-api/NOTES.md` §6), one test per rule, asked over the
//! wire. Every question goes over UDP (the precomputed fast path) and over TCP (hickory's
//! path), and both must give the same reply.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use causeway_dns::{
    ClusterRecords, Config, Handle, HostRecord, NamedPort, PortProtocol, ServiceKind,
    ServiceRecords, Snapshot, ZoneConfig,
};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);
const TTL: u32 = 5;
/// A small cap, so that the rules about subsets are visible with few endpoints.
const CAP: usize = 2;

fn ip(address: &str) -> IpAddr {
    IpAddr::from_str(address).expect("test address")
}

fn port(name: &str, number: u16, protocol: PortProtocol) -> NamedPort {
    NamedPort {
        name: name.into(),
        port: number,
        protocol,
    }
}

fn cluster(id: &str, priority: u16, addresses: &[&str], hosts: &[(&str, &str)]) -> ClusterRecords {
    ClusterRecords {
        cluster: id.into(),
        priority,
        addresses: addresses.iter().map(|a| ip(a)).collect(),
        hosts: hosts
            .iter()
            .map(|(hostname, address)| HostRecord {
                hostname: (*hostname).into(),
                address: ip(address),
            })
            .collect(),
    }
}

/// The clusterset:
/// - `vip`: ClusterSetIP with a dual-stack clusterset IP allocated, exported by c1 and c2;
/// - `noip`: ClusterSetIP without one (yet);
/// - `db`: headless, four ready dual-stack pods (db-0, db-1 in c1; db-0, db-1 in c2);
/// - `idle`: headless with no ready endpoint.
fn services() -> Vec<ServiceRecords> {
    let cluster_ip_service = |name: &str, clusterset_ips: Vec<IpAddr>| ServiceRecords {
        namespace: "shop".into(),
        name: name.into(),
        kind: ServiceKind::ClusterSetIp { clusterset_ips },
        tiers: vec![vec![ip("10.101.0.100")], vec![ip("10.102.0.100")]],
        clusters: vec![
            cluster("c1", 0, &["10.101.0.100"], &[]),
            cluster("c2", 3, &["10.102.0.100"], &[]),
        ],
        ports: vec![
            port("http", 80, PortProtocol::Tcp),
            port("dns", 53, PortProtocol::Udp),
        ],
    };
    let db_c1 = [
        ("db-0", "10.101.0.10"),
        ("db-0", "fd01::10"),
        ("db-1", "10.101.0.11"),
        ("db-1", "fd01::11"),
    ];
    let db_c2 = [
        ("db-0", "10.102.0.10"),
        ("db-0", "fd02::10"),
        ("db-1", "10.102.0.11"),
        ("db-1", "fd02::11"),
    ];
    let addresses = |hosts: &[(&str, &str)]| hosts.iter().map(|(_, a)| ip(a)).collect::<Vec<_>>();
    let db_ports = vec![
        port("pg", 5432, PortProtocol::Tcp),
        port("metrics", 9187, PortProtocol::Tcp),
    ];
    vec![
        cluster_ip_service("vip", vec![ip("10.200.0.1"), ip("fd00::1")]),
        cluster_ip_service("noip", Vec::new()),
        ServiceRecords {
            namespace: "shop".into(),
            name: "db".into(),
            kind: ServiceKind::Headless,
            tiers: vec![addresses(&db_c1), addresses(&db_c2)],
            clusters: vec![
                cluster("c1", 0, &db_c1.map(|(_, a)| a), &db_c1),
                cluster("c2", 3, &db_c2.map(|(_, a)| a), &db_c2),
            ],
            ports: db_ports.clone(),
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "idle".into(),
            kind: ServiceKind::Headless,
            tiers: Vec::new(),
            clusters: Vec::new(),
            ports: db_ports,
        },
    ]
}

async fn start(shutdown: &CancellationToken) -> Handle {
    let zones = ZoneConfig {
        zone: "svc.global".into(),
        clusterset_zone: Some("clusterset.local".into()),
        ttl: TTL,
        max_addresses: CAP,
    };
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        zones: zones.clone(),
        upstream: None,
        udp_sockets: None,
    };
    let handle = causeway_dns::serve(config, shutdown.clone())
        .await
        .expect("serve binds on loopback");
    handle.publish(Snapshot::new(&zones, services()).expect("valid snapshot"));
    handle
}

fn question(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_str(name).expect("test name"),
        qtype,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message.to_vec().expect("encode")
}

async fn over_udp(addr: SocketAddr, packet: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    socket.send_to(packet, addr).await.expect("send");
    let mut buf = vec![0; 65535];
    let (len, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("reply before the deadline")
        .expect("recv");
    Message::from_vec(&buf[..len]).expect("decodable reply")
}

async fn over_tcp(addr: SocketAddr, packet: &[u8]) -> Message {
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    let len = u16::try_from(packet.len()).expect("small message");
    stream.write_all(&len.to_be_bytes()).await.expect("write");
    stream.write_all(packet).await.expect("write");
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
        .await
        .expect("reply before the deadline")
        .expect("read length");
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("read reply");
    Message::from_vec(&reply).expect("decodable reply")
}

/// What a reply says, order-free within a section (rotation moves records between queries).
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: BTreeSet<String>,
    authority: BTreeSet<String>,
    additional: BTreeSet<String>,
}

fn section(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
        .map(|r| {
            assert_eq!(r.ttl, TTL, "every record carries the zone TTL: {r:?}");
            match &r.data {
                // The serial depends on publishing; the owner says which zone's SOA it is.
                RData::SOA(_) => format!("{} SOA", r.name),
                data => format!("{} {} {}", r.name, r.record_type(), data),
            }
        })
        .collect()
}

/// Asks over UDP and over TCP; both replies must say the same.
async fn ask(addr: SocketAddr, name: &str, qtype: RecordType) -> Reply {
    let packet = question(name, qtype);
    let [udp, tcp] =
        [over_udp(addr, &packet).await, over_tcp(addr, &packet).await].map(|m| Reply {
            rcode: m.metadata.response_code,
            authoritative: m.metadata.authoritative,
            answers: section(&m.answers),
            authority: section(&m.authorities),
            additional: section(&m.additionals),
        });
    assert_eq!(udp, tcp, "{name} {qtype}: UDP and TCP differ");
    udp
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

const MCS_SOA: &str = "clusterset.local. SOA";

fn assert_nxdomain(reply: &Reply, what: &str) {
    assert_eq!(reply.rcode, ResponseCode::NXDomain, "{what}: {reply:?}");
    assert!(reply.answers.is_empty(), "{what}: {reply:?}");
    assert_eq!(reply.authority, set(&[MCS_SOA]), "{what}");
    assert!(reply.authoritative, "{what}");
}

#[tokio::test]
async fn dns_version_is_a_txt_record_with_the_schema_version() {
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    let txt = ask(addr, "dns-version.clusterset.local.", RecordType::TXT).await;
    assert_eq!(txt.rcode, ResponseCode::NoError);
    assert!(txt.authoritative);
    assert_eq!(
        txt.answers,
        set(&["dns-version.clusterset.local. TXT 1.0.0"])
    );
    // Only TXT there: another type is NODATA with the SOA.
    let a = ask(addr, "dns-version.clusterset.local.", RecordType::A).await;
    assert_eq!(
        (a.rcode, a.answers.len(), a.authority),
        (ResponseCode::NoError, 0, set(&[MCS_SOA]))
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_clusterset_ip_service_answers_its_clusterset_ip_in_each_family() {
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    let a = ask(addr, "vip.shop.svc.clusterset.local.", RecordType::A).await;
    assert_eq!(
        a.answers,
        set(&["vip.shop.svc.clusterset.local. A 10.200.0.1"])
    );
    let aaaa = ask(addr, "vip.shop.svc.clusterset.local.", RecordType::AAAA).await;
    assert_eq!(
        aaaa.answers,
        set(&["vip.shop.svc.clusterset.local. AAAA fd00::1"])
    );
    // causeway's own zone keeps answering the clusters' own IPs, nearest first.
    let global = ask(addr, "vip.shop.svc.global.", RecordType::A).await;
    assert_eq!(
        global.answers,
        set(&[
            "vip.shop.svc.global. A 10.101.0.100",
            "vip.shop.svc.global. A 10.102.0.100"
        ])
    );
    shutdown.cancel();
}

#[tokio::test]
async fn without_an_allocated_clusterset_ip_the_cluster_ips_are_answered() {
    // The specification assumes an allocated IP; until one is, the name still resolves, to
    // the exporting clusters' IPs (as Lighthouse does), capped like any answer.
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    let a = ask(addr, "noip.shop.svc.clusterset.local.", RecordType::A).await;
    assert_eq!(
        a.answers,
        set(&[
            "noip.shop.svc.clusterset.local. A 10.101.0.100",
            "noip.shop.svc.clusterset.local. A 10.102.0.100"
        ])
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_clusterset_ip_service_has_one_srv_per_named_port_pointing_at_the_service() {
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    let http = ask(
        addr,
        "_http._tcp.vip.shop.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        http.answers,
        set(&[
            "_http._tcp.vip.shop.svc.clusterset.local. SRV 0 1 80 vip.shop.svc.clusterset.local."
        ])
    );
    assert_eq!(
        http.additional,
        set(&[
            "vip.shop.svc.clusterset.local. A 10.200.0.1",
            "vip.shop.svc.clusterset.local. AAAA fd00::1"
        ])
    );
    let dns = ask(
        addr,
        "_dns._udp.vip.shop.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        dns.answers,
        set(&[
            "_dns._udp.vip.shop.svc.clusterset.local. SRV 0 1 53 vip.shop.svc.clusterset.local."
        ])
    );
    // A port under the other protocol, or one the service does not name, does not exist.
    for absent in [
        "_http._udp.vip.shop.svc.clusterset.local.",
        "_grpc._tcp.vip.shop.svc.clusterset.local.",
    ] {
        assert_nxdomain(&ask(addr, absent, RecordType::SRV).await, absent);
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_headless_service_answers_its_best_cap_endpoints_the_same_subset_for_a_and_aaaa() {
    // The cap (2 here) counts endpoints in the MCS zone, not addresses per family: the two
    // best-ranked pods (c1's db-0 and db-1), with both their addresses, whatever the rotation.
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    let name = "db.shop.svc.clusterset.local.";
    for _ in 0..3 {
        let a = ask(addr, name, RecordType::A).await;
        assert_eq!(
            a.answers,
            set(&[
                "db.shop.svc.clusterset.local. A 10.101.0.10",
                "db.shop.svc.clusterset.local. A 10.101.0.11",
            ])
        );
        let aaaa = ask(addr, name, RecordType::AAAA).await;
        assert_eq!(
            aaaa.answers,
            set(&[
                "db.shop.svc.clusterset.local. AAAA fd01::10",
                "db.shop.svc.clusterset.local. AAAA fd01::11",
            ])
        );
    }
    // causeway's own zone keeps its per-family cap: the nearest cluster's two.
    let global = ask(addr, "db.shop.svc.global.", RecordType::A).await;
    assert_eq!(global.answers.len(), CAP, "{global:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_headless_service_without_ready_endpoints_is_nxdomain() {
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    for (name, qtype) in [
        ("idle.shop.svc.clusterset.local.", RecordType::A),
        ("idle.shop.svc.clusterset.local.", RecordType::AAAA),
        ("_pg._tcp.idle.shop.svc.clusterset.local.", RecordType::SRV),
    ] {
        assert_nxdomain(&ask(addr, name, qtype).await, name);
    }
    // causeway's own zone fails closed instead: the name exists, with no data.
    let global = ask(addr, "idle.shop.svc.global.", RecordType::A).await;
    assert_eq!(
        (global.rcode, global.answers.len()),
        (ResponseCode::NoError, 0)
    );
    shutdown.cancel();
}

#[tokio::test]
async fn headless_endpoints_are_named_hostname_clusterid_service_namespace() {
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    let name = "db-1.c2.db.shop.svc.clusterset.local.";
    let a = ask(addr, name, RecordType::A).await;
    assert_eq!(a.answers, set(&[&format!("{name} A 10.102.0.11")]));
    let aaaa = ask(addr, name, RecordType::AAAA).await;
    assert_eq!(aaaa.answers, set(&[&format!("{name} AAAA fd02::11")]));
    // The same hostname in the other cluster is another name.
    let other = ask(addr, "db-1.c1.db.shop.svc.clusterset.local.", RecordType::A).await;
    assert_eq!(
        other.answers,
        set(&["db-1.c1.db.shop.svc.clusterset.local. A 10.101.0.11"])
    );
    assert_nxdomain(
        &ask(addr, "db-2.c1.db.shop.svc.clusterset.local.", RecordType::A).await,
        "a hostname no endpoint has",
    );
    shutdown.cancel();
}

#[tokio::test]
async fn headless_srv_has_one_record_per_ready_endpoint_and_named_port() {
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    for (port_name, number) in [("pg", 5432), ("metrics", 9187)] {
        let name = format!("_{port_name}._tcp.db.shop.svc.clusterset.local.");
        let srv = ask(addr, &name, RecordType::SRV).await;
        let targets: BTreeSet<String> = ["db-0.c1", "db-1.c1", "db-0.c2", "db-1.c2"]
            .iter()
            .map(|host| {
                let priority = if host.ends_with("c1") { 0 } else { 3 };
                format!("{name} SRV {priority} 1 {number} {host}.db.shop.svc.clusterset.local.")
            })
            .collect();
        assert_eq!(srv.answers, targets);
        // Every target's addresses come along.
        assert_eq!(srv.additional.len(), 8, "{srv:?}");
        assert!(
            srv.additional
                .contains("db-0.c2.db.shop.svc.clusterset.local. AAAA fd02::10")
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn the_reserved_cluster_pinned_form_is_never_served() {
    let shutdown = CancellationToken::new();
    let addr = start(&shutdown).await.local_addr();
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::ANY,
    ];
    for qtype in types {
        // ClusterSetIP: no such name at all.
        let name = "c1.vip.shop.svc.clusterset.local.";
        assert_nxdomain(&ask(addr, name, qtype).await, &format!("{name} {qtype}"));
        // Headless: the name is only the empty non-terminal above `H.C.S.N` (RFC 8020 makes
        // that NOERROR), never with records.
        let name = "c1.db.shop.svc.clusterset.local.";
        let reply = ask(addr, name, qtype).await;
        assert_eq!(reply.rcode, ResponseCode::NoError, "{name} {qtype}");
        assert!(reply.answers.is_empty(), "{name} {qtype}: {reply:?}");
        assert_eq!(reply.authority, set(&[MCS_SOA]));
        // causeway's own zone serves the form.
        let global = ask(addr, "c1.vip.shop.svc.global.", RecordType::A).await;
        assert_eq!(
            global.answers,
            set(&["c1.vip.shop.svc.global. A 10.101.0.100"])
        );
    }
    shutdown.cancel();
}
