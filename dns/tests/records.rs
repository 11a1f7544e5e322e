//! Shell tests for the richer names over the wire: cluster-pinned and per-endpoint names, SRV
//! with additional addresses, the MCS `clusterset.local` zone, rotation between queries, EDNS
//! buffer sizes, pipelined TCP, minimal ANY, and forwarding to an upstream (a second instance
//! of this server on loopback).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use causeway_dns::{
    ClusterRecords, Config, Handle, HostRecord, NamedPort, PortProtocol, ServiceKind,
    ServiceRecords, Snapshot, ZoneConfig,
};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);

fn ips(addresses: &[&str]) -> Vec<IpAddr> {
    addresses
        .iter()
        .map(|a| IpAddr::from_str(a).expect("test address"))
        .collect()
}

fn zones(zone: &str, clusterset: Option<&str>) -> ZoneConfig {
    ZoneConfig {
        zone: zone.to_owned(),
        clusterset_zone: clusterset.map(str::to_owned),
        ttl: 5,
        max_addresses: 0,
    }
}

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

/// web: cluster IPs in c1 (local) and c2; db: headless in c1 and c2; pool: three equally good
/// addresses.
fn services() -> Vec<ServiceRecords> {
    let http = NamedPort {
        name: "http".into(),
        port: 80,
        protocol: PortProtocol::Tcp,
    };
    vec![
        ServiceRecords {
            namespace: "shop".into(),
            name: "web".into(),
            kind: ServiceKind::ClusterSetIp {
                clusterset_ips: Vec::new(),
            },
            tiers: vec![ips(&["10.101.0.100"]), ips(&["10.102.0.100"])],
            clusters: vec![
                cluster("c1", 0, &["10.101.0.100"], &[]),
                cluster("c2", 3, &["10.102.0.100"], &[]),
            ],
            ports: vec![http.clone()],
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "db".into(),
            kind: ServiceKind::Headless,
            tiers: vec![ips(&["10.101.0.10"]), ips(&["10.102.0.10"])],
            clusters: vec![
                cluster("c1", 0, &["10.101.0.10"], &[("db-0", "10.101.0.10")]),
                cluster("c2", 3, &["10.102.0.10"], &[("db-0", "10.102.0.10")]),
            ],
            ports: vec![NamedPort {
                name: "pg".into(),
                port: 5432,
                protocol: PortProtocol::Tcp,
            }],
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "pool".into(),
            kind: ServiceKind::Headless,
            tiers: vec![ips(&["10.101.0.1", "10.101.0.2", "10.101.0.3"])],
            clusters: Vec::new(),
            ports: Vec::new(),
        },
    ]
}

async fn start(
    config: Config,
    services: Vec<ServiceRecords>,
    shutdown: &CancellationToken,
) -> Handle {
    let zones = config.zones.clone();
    let handle = causeway_dns::serve(config, shutdown.clone())
        .await
        .expect("serve binds on loopback");
    handle.publish(Snapshot::new(&zones, services).expect("valid snapshot"));
    handle
}

fn loopback_config(zones: ZoneConfig, upstream: Option<SocketAddr>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        zones,
        upstream,
        udp_sockets: None,
    }
}

async fn start_default(shutdown: &CancellationToken) -> Handle {
    let zones = zones("svc.global", Some("clusterset.local"));
    start(loopback_config(zones, None), services(), shutdown).await
}

fn question(id: u16, name: &str, qtype: RecordType, edns_payload: Option<u16>) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_str(name).expect("test name"),
        qtype,
    ));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message.to_vec().expect("encode")
}

async fn udp(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    socket.send_to(packet, addr).await.expect("send");
    let mut buf = vec![0; 65535];
    let (len, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("reply before the deadline")
        .expect("recv");
    buf.truncate(len);
    buf
}

async fn tcp_send(stream: &mut TcpStream, packet: &[u8]) {
    let len = u16::try_from(packet.len()).expect("small message");
    stream.write_all(&len.to_be_bytes()).await.expect("write");
    stream.write_all(packet).await.expect("write");
}

async fn tcp_read(stream: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
        .await
        .expect("reply before the deadline")
        .expect("read length");
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("read reply");
    Message::from_vec(&reply).expect("decodable reply")
}

async fn ask(addr: SocketAddr, tcp: bool, name: &str, qtype: RecordType) -> Message {
    let packet = question(7, name, qtype, Some(1232));
    if tcp {
        let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
        tcp_send(&mut stream, &packet).await;
        tcp_read(&mut stream).await
    } else {
        Message::from_vec(&udp(addr, &packet).await).expect("decodable reply")
    }
}

fn rendered(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect()
}

#[tokio::test]
async fn pinned_endpoint_and_srv_names_resolve_over_udp_and_tcp() {
    let shutdown = CancellationToken::new();
    let handle = start_default(&shutdown).await;
    let addr = handle.local_addr();
    for tcp in [false, true] {
        let pinned = ask(addr, tcp, "c2.web.shop.svc.global.", RecordType::A).await;
        assert_eq!(
            rendered(&pinned.answers),
            ["c2.web.shop.svc.global. 10.102.0.100"],
            "tcp={tcp}"
        );
        assert!(pinned.metadata.authoritative);

        let host = ask(addr, tcp, "db-0.c2.db.shop.svc.global.", RecordType::A).await;
        assert_eq!(
            rendered(&host.answers),
            ["db-0.c2.db.shop.svc.global. 10.102.0.10"]
        );

        let srv = ask(
            addr,
            tcp,
            "_http._tcp.web.shop.svc.global.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(srv.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            rendered(&srv.answers),
            [
                "_http._tcp.web.shop.svc.global. 0 1 80 c1.web.shop.svc.global.",
                "_http._tcp.web.shop.svc.global. 3 1 80 c2.web.shop.svc.global.",
            ],
            "tcp={tcp}"
        );
        assert_eq!(
            rendered(&srv.additionals),
            [
                "c1.web.shop.svc.global. 10.101.0.100",
                "c2.web.shop.svc.global. 10.102.0.100",
            ],
            "tcp={tcp}"
        );
        assert!(
            srv.edns.is_some(),
            "OPT still answered beside additional records"
        );

        let pg = ask(addr, tcp, "_pg._tcp.db.shop.svc.global.", RecordType::SRV).await;
        assert_eq!(
            rendered(&pg.answers),
            [
                "_pg._tcp.db.shop.svc.global. 0 1 5432 db-0.c1.db.shop.svc.global.",
                "_pg._tcp.db.shop.svc.global. 3 1 5432 db-0.c2.db.shop.svc.global.",
            ]
        );

        // Negative answers: NODATA and NXDOMAIN, both with the SOA.
        let nodata = ask(addr, tcp, "_http._tcp.web.shop.svc.global.", RecordType::A).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert!(matches!(&nodata.authorities[..], [soa] if matches!(soa.data, RData::SOA(_))));
        let nx = ask(
            addr,
            tcp,
            "_http._udp.web.shop.svc.global.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(&nx.authorities[..], [soa] if matches!(soa.data, RData::SOA(_))));
    }
    shutdown.cancel();
}

#[tokio::test]
async fn clusterset_zone_serves_dns_version_and_mcs_names_only() {
    let shutdown = CancellationToken::new();
    let handle = start_default(&shutdown).await;
    let addr = handle.local_addr();
    let version = ask(
        addr,
        false,
        "dns-version.clusterset.local.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(
        rendered(&version.answers),
        ["dns-version.clusterset.local. 1.0.0"]
    );
    assert!(version.metadata.authoritative);

    let web = ask(addr, false, "web.shop.svc.clusterset.local.", RecordType::A).await;
    assert_eq!(
        rendered(&web.answers),
        [
            "web.shop.svc.clusterset.local. 10.101.0.100",
            "web.shop.svc.clusterset.local. 10.102.0.100",
        ]
    );
    let pinned = ask(
        addr,
        false,
        "c1.web.shop.svc.clusterset.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(pinned.metadata.response_code, ResponseCode::NXDomain);
    let [soa] = &pinned.authorities[..] else {
        panic!("one SOA expected: {:?}", pinned.authorities);
    };
    assert_eq!(soa.name.to_string(), "clusterset.local.");

    let host = ask(
        addr,
        true,
        "db-0.c1.db.shop.svc.clusterset.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        rendered(&host.answers),
        ["db-0.c1.db.shop.svc.clusterset.local. 10.101.0.10"]
    );
    let srv = ask(
        addr,
        false,
        "_http._tcp.web.shop.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        rendered(&srv.answers),
        ["_http._tcp.web.shop.svc.clusterset.local. 0 1 80 web.shop.svc.clusterset.local."]
    );
    assert_eq!(rendered(&srv.additionals).len(), 2);
    shutdown.cancel();
}

#[tokio::test]
async fn consecutive_queries_rotate_equally_good_addresses() {
    let shutdown = CancellationToken::new();
    let handle = start_default(&shutdown).await;
    // One TCP connection: no retransmissions, so the server sees exactly these three queries.
    let mut stream = TcpStream::connect(handle.local_addr())
        .await
        .expect("tcp connect");
    let mut firsts = Vec::new();
    for id in 0..3 {
        tcp_send(
            &mut stream,
            &question(id, "pool.shop.svc.global.", RecordType::A, None),
        )
        .await;
        let reply = tcp_read(&mut stream).await;
        let mut all = rendered(&reply.answers);
        assert_eq!(all.len(), 3);
        firsts.push(all[0].clone());
        all.sort();
        assert_eq!(
            all,
            [
                "pool.shop.svc.global. 10.101.0.1",
                "pool.shop.svc.global. 10.101.0.2",
                "pool.shop.svc.global. 10.101.0.3",
            ]
        );
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(
        firsts.len(),
        3,
        "each address leads once in three queries: {firsts:?}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn udp_answers_fit_the_edns_buffer_and_tcp_answers_pipelined_queries_in_full() {
    let shutdown = CancellationToken::new();
    let zones = zones("svc.global", None);
    let many: Vec<String> = (0..120).map(|i| format!("10.1.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let big = ServiceRecords {
        namespace: "shop".into(),
        name: "big".into(),
        kind: ServiceKind::Headless,
        tiers: ips(&many).into_iter().map(|a| vec![a]).collect(),
        clusters: Vec::new(),
        ports: Vec::new(),
    };
    let handle = start(loopback_config(zones, None), vec![big], &shutdown).await;
    let addr = handle.local_addr();

    // 120 A records take 1,920 octets of answer: over every buffer a client may advertise
    // here (we offer at most 1,232), so each reply is truncated within the advertised size.
    for (advertised, limit) in [
        (None, 512),
        (Some(512), 512),
        (Some(1000), 1000),
        (Some(4096), 1232),
    ] {
        let reply = udp(
            addr,
            &question(1, "big.shop.svc.global.", RecordType::A, advertised),
        )
        .await;
        assert!(
            reply.len() <= limit,
            "{} octets for buffer {advertised:?}",
            reply.len()
        );
        assert!(
            reply.len() > limit - 40,
            "buffer {advertised:?} used: {} octets",
            reply.len()
        );
        let reply = Message::from_vec(&reply).expect("decodable reply");
        assert!(reply.metadata.truncation, "TC for buffer {advertised:?}");
    }

    // Two queries written back to back before reading (RFC 7766 §6.2.1.1 pipelining).
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    tcp_send(
        &mut stream,
        &question(11, "big.shop.svc.global.", RecordType::A, None),
    )
    .await;
    tcp_send(
        &mut stream,
        &question(12, "nope.shop.svc.global.", RecordType::A, None),
    )
    .await;
    let mut replies = [tcp_read(&mut stream).await, tcp_read(&mut stream).await];
    replies.sort_by_key(|r| r.metadata.id);
    assert_eq!(replies[0].metadata.id, 11);
    assert!(!replies[0].metadata.truncation);
    assert_eq!(replies[0].answers.len(), 120, "the whole answer over TCP");
    assert_eq!(replies[1].metadata.id, 12);
    assert_eq!(replies[1].metadata.response_code, ResponseCode::NXDomain);
    shutdown.cancel();
}

#[tokio::test]
async fn any_gets_a_minimal_answer() {
    let shutdown = CancellationToken::new();
    let handle = start_default(&shutdown).await;
    let any = ask(
        handle.local_addr(),
        false,
        "web.shop.svc.global.",
        RecordType::ANY,
    )
    .await;
    assert_eq!(any.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        rendered(&any.answers),
        [
            "web.shop.svc.global. 10.101.0.100",
            "web.shop.svc.global. 10.102.0.100"
        ],
        "one RRset (RFC 8482)"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn queries_outside_the_zones_are_forwarded_to_the_upstream_when_configured() {
    let shutdown = CancellationToken::new();
    // The upstream: another instance serving other.test.
    let other = ServiceRecords {
        namespace: "ns".into(),
        name: "api".into(),
        kind: ServiceKind::Headless,
        tiers: vec![ips(&["192.0.2.7"])],
        clusters: Vec::new(),
        ports: Vec::new(),
    };
    let upstream = start(
        loopback_config(zones("other.test", None), None),
        vec![other],
        &shutdown,
    )
    .await;
    let zones = zones("svc.global", Some("clusterset.local"));
    let front = start(
        loopback_config(zones, Some(upstream.local_addr())),
        services(),
        &shutdown,
    )
    .await;
    let addr = front.local_addr();
    for tcp in [false, true] {
        let forwarded = ask(addr, tcp, "api.ns.other.test.", RecordType::A).await;
        assert_eq!(
            forwarded.metadata.response_code,
            ResponseCode::NoError,
            "tcp={tcp}"
        );
        assert_eq!(
            rendered(&forwarded.answers),
            ["api.ns.other.test. 192.0.2.7"]
        );
        assert!(!forwarded.metadata.authoritative, "not our zone");
        assert!(forwarded.metadata.recursion_available);

        let nx = ask(addr, tcp, "nope.ns.other.test.", RecordType::A).await;
        assert_eq!(
            nx.metadata.response_code,
            ResponseCode::NXDomain,
            "tcp={tcp}"
        );
        let [soa] = &nx.authorities[..] else {
            panic!("the upstream's SOA relayed: {:?}", nx.authorities);
        };
        assert_eq!(soa.name.to_string(), "other.test.");

        let nodata = ask(addr, tcp, "api.ns.other.test.", RecordType::AAAA).await;
        assert_eq!(
            nodata.metadata.response_code,
            ResponseCode::NoError,
            "tcp={tcp}"
        );
        assert!(nodata.answers.is_empty());

        // Our own zones are still answered by us.
        let own = ask(addr, tcp, "web.shop.svc.global.", RecordType::A).await;
        assert!(own.metadata.authoritative);
    }
    // The upstream refuses what it does not serve; that comes back as SERVFAIL, not silence.
    let refused = ask(addr, false, "example.com.", RecordType::A).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::ServFail);
    shutdown.cancel();
}

#[tokio::test]
async fn without_an_upstream_queries_outside_the_zones_are_refused() {
    let shutdown = CancellationToken::new();
    let handle = start_default(&shutdown).await;
    let refused = ask(
        handle.local_addr(),
        false,
        "api.ns.other.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(!refused.metadata.authoritative);
    shutdown.cancel();
}
