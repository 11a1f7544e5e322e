//! Every UDP answer parses under a strict reader: a running server on 127.0.0.1:0 is asked,
//! over UDP, for names in both zones (headless and cluster-IP services with many endpoints,
//! pinned and per-endpoint names, SRV) with and without EDNS, advertising payloads from 512 to
//! 4096, with and without the DO bit, and with an EDNS option (which the fast path leaves to
//! hickory). Each reply must decode with nothing after the last record its header counts, fit
//! the payload, carry an OPT exactly when the query did (with the query's DO bit, RFC 3225
//! §3), and, when TC is clear, hold the whole answer that TCP gives; when TC is set, a part of
//! it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use causeway_dns::{
    ClusterRecords, Config, Handle, HostRecord, NamedPort, PortProtocol, ServiceKind,
    ServiceRecords, Snapshot, ZoneConfig,
};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);
/// The payload the server offers at most (DNS Flag Day 2020).
const SERVER_PAYLOAD: usize = 1232;
const HEADLESS_CLUSTERS: u8 = 3;
const HEADLESS_PODS: u8 = 60;
const CLUSTER_IP_CLUSTERS: u8 = 60;

/// `web.shop`: a cluster-IP service exported by 60 clusters, each with an IPv4 and an IPv6
/// cluster IP; `db.shop`: headless, 60 dual-stack pods in each of 3 clusters; `one.shop`: a
/// single address, whose answers always fit.
fn services() -> Vec<ServiceRecords> {
    let ports = vec![
        NamedPort {
            name: "http".into(),
            port: 80,
            protocol: PortProtocol::Tcp,
        },
        NamedPort {
            name: "metrics".into(),
            port: 9090,
            protocol: PortProtocol::Tcp,
        },
    ];
    let web_clusters: Vec<ClusterRecords> = (0..CLUSTER_IP_CLUSTERS)
        .map(|c| ClusterRecords {
            cluster: format!("cluster-{c}"),
            priority: u16::from(c / 10),
            addresses: vec![v4(100, c, 1), v6(100, c, 1)],
            hosts: Vec::new(),
        })
        .collect();
    let web_tiers = web_clusters
        .chunks(10)
        .map(|tier| tier.iter().flat_map(|c| c.addresses.clone()).collect())
        .collect();
    let db_clusters: Vec<ClusterRecords> = (0..HEADLESS_CLUSTERS)
        .map(|c| {
            let hosts: Vec<HostRecord> = (0..HEADLESS_PODS)
                .flat_map(|p| {
                    let hostname = format!("database-replica-{p}");
                    [v4(10, c, p), v6(10, c, p)].map(|address| HostRecord {
                        hostname: hostname.clone(),
                        address,
                    })
                })
                .collect();
            ClusterRecords {
                cluster: format!("cluster-{c}"),
                priority: u16::from(c),
                addresses: hosts.iter().map(|h| h.address).collect(),
                hosts,
            }
        })
        .collect();
    let db_tiers = db_clusters.iter().map(|c| c.addresses.clone()).collect();
    vec![
        ServiceRecords {
            namespace: "shop".into(),
            name: "web".into(),
            kind: ServiceKind::ClusterSetIp {
                clusterset_ips: Vec::new(),
            },
            tiers: web_tiers,
            clusters: web_clusters,
            ports: ports.clone(),
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "db".into(),
            kind: ServiceKind::Headless,
            tiers: db_tiers,
            clusters: db_clusters,
            ports,
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "one".into(),
            kind: ServiceKind::ClusterSetIp {
                clusterset_ips: Vec::new(),
            },
            tiers: vec![vec![v4(1, 1, 1)]],
            clusters: Vec::new(),
            ports: Vec::new(),
        },
    ]
}

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, a, b, c))
}

fn v6(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        u16::from(a),
        u16::from(b),
        0,
        0,
        0,
        0,
        u16::from(c),
    ))
}

async fn start(max_addresses: usize, shutdown: &CancellationToken) -> Handle {
    let zones = ZoneConfig {
        zone: "svc.global".into(),
        clusterset_zone: Some("clusterset.local".into()),
        ttl: 5,
        max_addresses,
    };
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        zones: zones.clone(),
        upstream: None,
        udp_sockets: Some(1),
    };
    let handle = causeway_dns::serve(config, shutdown.clone())
        .await
        .expect("serve binds on loopback");
    handle.publish(Snapshot::new(&zones, services()).expect("valid snapshot"));
    handle
}

/// The OPT record a query carries.
#[derive(Debug, Clone, Copy)]
struct Opt {
    payload: u16,
    dnssec_ok: bool,
    /// An NSID option (RFC 5001), which the fast path does not answer.
    nsid: bool,
}

/// A query built octet by octet, so that the test controls every bit of it.
fn query(id: u16, name: &str, qtype: RecordType, opt: Option<Opt>) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&id.to_be_bytes());
    // RD; one question; no answer or authority; one additional record with an OPT.
    bytes.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        bytes.push(u8::try_from(label.len()).expect("short label"));
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.push(0);
    bytes.extend_from_slice(&u16::from(qtype).to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    if let Some(opt) = opt {
        let payload = opt.payload.to_be_bytes();
        let flags = if opt.dnssec_ok { 0x80 } else { 0 };
        let rdlen: u16 = if opt.nsid { 4 } else { 0 };
        bytes.extend_from_slice(&[0, 0, 41, payload[0], payload[1], 0, 0, flags, 0]);
        bytes.extend_from_slice(&rdlen.to_be_bytes());
        if opt.nsid {
            bytes.extend_from_slice(&[0, 3, 0, 0]);
        }
    }
    bytes
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

async fn tcp(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    let len = u16::try_from(packet.len()).expect("small query");
    stream.write_all(&len.to_be_bytes()).await.expect("write");
    stream.write_all(packet).await.expect("write");
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
        .await
        .expect("reply before the deadline")
        .expect("read length");
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("read reply");
    reply
}

/// Decodes a reply as a strict resolver does: every counted record whole, and not one octet
/// after the last of them.
fn strict(bytes: &[u8], what: &str) -> Message {
    let mut decoder = BinDecoder::new(bytes);
    let message = Message::read(&mut decoder).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        decoder.len(),
        0,
        "{what}: {} octets after the last counted record",
        decoder.len()
    );
    message
}

fn rendered(records: &[hickory_proto::rr::Record]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

/// The queries: both zones, the service names, pinned and per-endpoint names, and SRV.
fn questions() -> Vec<(String, RecordType)> {
    let mut questions = Vec::new();
    for zone in ["svc.global", "svc.clusterset.local"] {
        for service in ["web", "db", "one"] {
            for qtype in [RecordType::A, RecordType::AAAA] {
                questions.push((format!("{service}.shop.{zone}."), qtype));
            }
        }
        for service in ["web", "db"] {
            questions.push((
                format!("_http._tcp.{service}.shop.{zone}."),
                RecordType::SRV,
            ));
        }
        // A name that does not exist: the negative answer with its SOA.
        questions.push((format!("nothing.shop.{zone}."), RecordType::A));
        questions.push((
            format!("database-replica-7.cluster-1.db.shop.{zone}."),
            RecordType::AAAA,
        ));
    }
    questions.push(("cluster-3.db.shop.svc.global.".into(), RecordType::A));
    questions.push(("cluster-3.web.shop.svc.global.".into(), RecordType::AAAA));
    questions
}

fn opts() -> Vec<Option<Opt>> {
    let mut opts = vec![None];
    for payload in [0, 511, 512, 700, 1232, 1400, 4096] {
        for dnssec_ok in [false, true] {
            opts.push(Some(Opt {
                payload,
                dnssec_ok,
                nsid: false,
            }));
        }
    }
    opts.push(Some(Opt {
        payload: 4096,
        dnssec_ok: true,
        nsid: true,
    }));
    opts.push(Some(Opt {
        payload: 512,
        dnssec_ok: false,
        nsid: true,
    }));
    opts
}

/// The whole answer, over TCP.
async fn tcp_answer(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let what = format!("{name} {qtype} over tcp");
    let whole = strict(&tcp(addr, &query(1, name, qtype, None)).await, &what);
    assert!(!whole.metadata.truncation, "{what}: TC");
    whole
}

/// Asks every question with every OPT over UDP of the server at `addr`, and checks each reply
/// against its TCP answer, and against the TCP answer of the uncapped server at `uncapped`
/// (a capped answer rotates which addresses it keeps). Returns how many replies were
/// truncated.
async fn check_every_answer(addr: SocketAddr, uncapped: SocketAddr) -> usize {
    let mut truncated = 0;
    for (name, qtype) in questions() {
        let whole = tcp_answer(addr, &name, qtype).await;
        let every = tcp_answer(uncapped, &name, qtype).await;
        for opt in opts() {
            let what = format!("{name} {qtype} {opt:?}");
            let bytes = udp(addr, &query(2, &name, qtype, opt)).await;
            let limit = opt.map_or(512, |o| usize::from(o.payload).clamp(512, SERVER_PAYLOAD));
            assert!(bytes.len() <= limit, "{what}: {} > {limit}", bytes.len());
            let reply = strict(&bytes, &what);
            assert_eq!(reply.metadata.id, 2, "{what}");
            assert_eq!(
                reply.metadata.response_code, whole.metadata.response_code,
                "{what}"
            );
            match (opt, &reply.edns) {
                (None, None) => {}
                (Some(opt), Some(edns)) => {
                    assert_eq!(edns.flags().dnssec_ok, opt.dnssec_ok, "{what}: DO bit");
                    assert_eq!(edns.version(), 0, "{what}");
                }
                (Some(_), None) => panic!("{what}: the OPT record was dropped"),
                (None, Some(_)) => panic!("{what}: an OPT record nobody asked for"),
            }
            let (got, all) = (rendered(&reply.answers), rendered(&every.answers));
            assert!(got.is_subset(&all), "{what}: {got:?} not in {all:?}");
            let additional = rendered(&reply.additionals);
            assert!(
                additional.is_subset(&rendered(&every.additionals)),
                "{what}: additional"
            );
            if reply.metadata.truncation {
                truncated += 1;
                assert!(
                    reply.answers.len() < whole.answers.len()
                        || reply.authorities.len() < whole.authorities.len(),
                    "{what}: TC set on a whole answer"
                );
            } else {
                assert_eq!(
                    reply.answers.len(),
                    whole.answers.len(),
                    "{what}: an answer cut without TC"
                );
                assert_eq!(
                    rendered(&reply.authorities),
                    rendered(&whole.authorities),
                    "{what}"
                );
            }
        }
    }
    truncated
}

#[tokio::test]
async fn every_udp_answer_parses_strictly_uncapped() {
    let shutdown = CancellationToken::new();
    let handle = start(0, &shutdown).await;
    let truncated = check_every_answer(handle.local_addr(), handle.local_addr()).await;
    // The uncapped service names and SRV sets are far over 1232 octets: most of the matrix
    // is truncated, so the truncating path was exercised, not skipped.
    assert!(truncated >= 100, "only {truncated} truncated replies");
    shutdown.cancel();
}

#[tokio::test]
async fn every_udp_answer_parses_strictly_with_the_default_cap() {
    let shutdown = CancellationToken::new();
    let handle = start(causeway_dns::DEFAULT_MAX_ADDRESSES, &shutdown).await;
    let uncapped = start(0, &shutdown).await;
    let truncated = check_every_answer(handle.local_addr(), uncapped.local_addr()).await;
    // SRV sets still list every target.
    assert!(truncated > 0, "no truncated reply");
    shutdown.cancel();
}

/// With the default cap of 8, the headless name in `clusterset.local` answers 8 endpoints, the
/// same ones for A and AAAA, whole within 512 octets (before the cap counted endpoints, all 180
/// were answered and truncated).
#[tokio::test]
async fn the_cap_in_clusterset_local_answers_the_same_endpoints_for_a_and_aaaa() {
    let shutdown = CancellationToken::new();
    let handle = start(causeway_dns::DEFAULT_MAX_ADDRESSES, &shutdown).await;
    let addr = handle.local_addr();
    let name = "db.shop.svc.clusterset.local.";
    let mut endpoints: Vec<BTreeSet<String>> = Vec::new();
    for (id, qtype) in [
        (1, RecordType::A),
        (2, RecordType::AAAA),
        (3, RecordType::A),
    ] {
        let reply = strict(&udp(addr, &query(id, name, qtype, None)).await, name);
        assert!(!reply.metadata.truncation, "{qtype} truncated");
        assert_eq!(reply.answers.len(), causeway_dns::DEFAULT_MAX_ADDRESSES);
        // Which pod each address is: its last octet (or group) and its cluster.
        let pods: BTreeSet<String> = reply
            .answers
            .iter()
            .map(|r| match r.data.ip_addr() {
                Some(IpAddr::V4(a)) => format!("{}/{}", a.octets()[2], a.octets()[3]),
                Some(IpAddr::V6(a)) => format!("{}/{}", a.segments()[2], a.segments()[7]),
                None => panic!("not an address: {r}"),
            })
            .collect();
        endpoints.push(pods);
    }
    assert_eq!(
        endpoints[0], endpoints[1],
        "A and AAAA answer the same pods"
    );
    assert_eq!(endpoints[0], endpoints[2], "the subset is fixed");
    // The best cluster's first eight pods.
    let best: BTreeSet<String> = (0..8).map(|p| format!("0/{p}")).collect();
    assert_eq!(endpoints[0], best);
    shutdown.cancel();
}
