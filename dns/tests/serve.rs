//! Shell tests: `serve` on 127.0.0.1:0, queried over real UDP and TCP sockets with hickory's
//! client, hickory's stub resolver, hand-made packets, and `dig` when it is installed.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use causeway_dns::{Config, Handle, ServiceKind, ServiceRecords, Snapshot, ZoneConfig};
use hickory_proto::op::{DnsResponse, Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::{Resolver, TokioResolver};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::net::xfer::{DnsHandle, FirstAnswer};
use hickory_server::proto::op::DnsRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const ZONE: &str = "svc.global";
const TIMEOUT: Duration = Duration::from_secs(5);

fn service(namespace: &str, name: &str, addresses: &[&str]) -> ServiceRecords {
    ServiceRecords {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        kind: ServiceKind::ClusterSetIp {
            clusterset_ips: Vec::new(),
        },
        // One preference group per address: a strict ranking, so no rotation.
        tiers: ips(addresses).into_iter().map(|a| vec![a]).collect(),
        clusters: Vec::new(),
        ports: Vec::new(),
    }
}

fn ips(addresses: &[&str]) -> Vec<IpAddr> {
    addresses
        .iter()
        .map(|a| IpAddr::from_str(a).expect("test address"))
        .collect()
}

/// svc.global and clusterset.local, TTL 5, no cap on addresses.
fn zones() -> ZoneConfig {
    ZoneConfig {
        zone: ZONE.to_owned(),
        clusterset_zone: Some("clusterset.local".to_owned()),
        ttl: 5,
        max_addresses: 0,
    }
}

fn config(listen: SocketAddr) -> Config {
    Config {
        listen,
        zones: zones(),
        upstream: None,
        udp_sockets: None,
    }
}

/// Starts a server on a free loopback port holding web.shop (v4 + v6) and db.shop (v4 only).
async fn start(shutdown: &CancellationToken) -> Handle {
    let config = config("127.0.0.1:0".parse().expect("literal address"));
    let handle = causeway_dns::serve(config, shutdown.clone())
        .await
        .expect("serve binds on loopback");
    handle.publish(
        Snapshot::new(
            &zones(),
            vec![
                service("shop", "web", &["10.102.0.10", "10.101.0.10", "fd00::10"]),
                service("shop", "db", &["10.101.0.20"]),
            ],
        )
        .expect("valid snapshot"),
    );
    handle
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

async fn client(addr: SocketAddr, transport: Transport) -> Client<TokioRuntimeProvider> {
    let provider = TokioRuntimeProvider::default();
    match transport {
        Transport::Udp => {
            let stream = UdpClientStream::builder(addr, provider)
                .with_timeout(Some(TIMEOUT))
                .build();
            let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(background);
            client
        }
        Transport::Tcp => {
            let (connect, sender) = TcpClientStream::new(addr, None, Some(TIMEOUT), provider);
            let stream = connect.await.expect("tcp connect to the server");
            let (client, background) =
                Client::<TokioRuntimeProvider>::with_timeout(stream, sender, TIMEOUT);
            tokio::spawn(background);
            client
        }
    }
}

async fn query(
    client: &mut Client<TokioRuntimeProvider>,
    name: &str,
    qtype: RecordType,
) -> DnsResponse {
    client
        .query(
            Name::from_str(name).expect("test name"),
            DNSClass::IN,
            qtype,
        )
        .await
        .unwrap_or_else(|e| panic!("query {name} {qtype}: {e}"))
}

fn rdata(response: &DnsResponse) -> Vec<String> {
    response
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect()
}

fn soa_serial(records: &[hickory_proto::rr::Record]) -> Option<u32> {
    match records {
        [record] => match &record.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn serves_a_aaaa_nxdomain_and_refused_over_udp_and_tcp() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut client = client(handle.local_addr(), transport).await;

        let a = query(&mut client, "web.shop.svc.global.", RecordType::A).await;
        assert_eq!(a.response_code, ResponseCode::NoError, "{transport:?}");
        assert!(a.authoritative, "AA on in-zone answers ({transport:?})");
        assert_eq!(rdata(&a), ["10.102.0.10", "10.101.0.10"], "{transport:?}");
        assert!(a.answers.iter().all(|r| r.ttl == 5), "{transport:?}");

        let aaaa = query(&mut client, "web.shop.svc.global.", RecordType::AAAA).await;
        assert_eq!(rdata(&aaaa), ["fd00::10"], "{transport:?}");

        let nodata = query(&mut client, "db.shop.svc.global.", RecordType::AAAA).await;
        assert_eq!(nodata.response_code, ResponseCode::NoError, "{transport:?}");
        assert!(nodata.answers.is_empty(), "{transport:?}");
        assert!(soa_serial(&nodata.authorities).is_some(), "{transport:?}");

        let nx = query(&mut client, "nope.shop.svc.global.", RecordType::A).await;
        assert_eq!(nx.response_code, ResponseCode::NXDomain, "{transport:?}");
        assert!(nx.authoritative, "{transport:?}");
        assert!(nx.answers.is_empty(), "{transport:?}");
        let [soa] = &nx.authorities[..] else {
            panic!("one SOA in authority expected, got {:?}", nx.authorities);
        };
        assert_eq!(soa.name.to_string(), "svc.global.");
        assert!(matches!(soa.data, RData::SOA(_)), "{transport:?}");

        let refused = query(&mut client, "example.com.", RecordType::A).await;
        assert_eq!(
            refused.response_code,
            ResponseCode::Refused,
            "{transport:?}"
        );
        assert!(!refused.authoritative, "{transport:?}");

        let ns = query(&mut client, "svc.global.", RecordType::NS).await;
        assert_eq!(rdata(&ns), ["ns.svc.global."], "{transport:?}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn question_is_echoed_with_the_askers_capitalisation() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    // Hand-made packet: hickory's encoder lowercases names, so it cannot ask in mixed case.
    let mut asked = vec![0x10, 0x20, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    for label in ["WeB", "sHoP", "svc", "GLOBAL"] {
        asked.push(u8::try_from(label.len()).expect("short label"));
        asked.extend_from_slice(label.as_bytes());
    }
    asked.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let reply = Message::from_vec(&udp_exchange(handle.local_addr(), &asked).await)
        .expect("decodable reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 2);
    let echoed: Vec<String> = reply.queries.iter().map(|q| q.name().to_string()).collect();
    assert_eq!(echoed, ["WeB.sHoP.svc.GLOBAL."]);
    shutdown.cancel();
}

#[tokio::test]
async fn publish_changes_the_answer_and_raises_the_serial() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let mut client = client(handle.local_addr(), Transport::Udp).await;
    let before = query(&mut client, "svc.global.", RecordType::SOA).await;
    let serial_before = soa_serial(&before.answers).expect("SOA at apex");

    // Built as an update of the snapshot being served, as the gateway does.
    handle.publish(
        handle
            .current()
            .update(&zones(), vec![service("shop", "web", &["10.103.0.10"])])
            .expect("valid snapshot"),
    );

    let deadline = causeway_dns::clock::now() + TIMEOUT;
    loop {
        let a = query(&mut client, "web.shop.svc.global.", RecordType::A).await;
        if rdata(&a) == ["10.103.0.10"] {
            break;
        }
        assert!(
            causeway_dns::clock::now() < deadline,
            "new snapshot not answered before the deadline: {:?}",
            rdata(&a)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gone = query(&mut client, "db.shop.svc.global.", RecordType::A).await;
    assert_eq!(gone.response_code, ResponseCode::NXDomain);
    let after = query(&mut client, "svc.global.", RecordType::SOA).await;
    let serial_after = soa_serial(&after.answers).expect("SOA at apex");
    assert!(
        serial_after > serial_before,
        "{serial_after} > {serial_before}"
    );
    shutdown.cancel();
}

fn resolver(addr: SocketAddr, transport: Transport) -> TokioResolver {
    let mut server = match transport {
        Transport::Udp => NameServerConfig::udp(addr.ip()),
        Transport::Tcp => NameServerConfig::tcp(addr.ip()),
    };
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    let mut options = ResolverOpts::default();
    options.timeout = TIMEOUT;
    options.cache_size = 0;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .expect("resolver builds")
}

#[tokio::test]
async fn stub_resolver_resolves_over_udp_and_tcp() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let resolver = resolver(handle.local_addr(), transport);
        let ips = resolver
            .lookup_ip("web.shop.svc.global.")
            .await
            .unwrap_or_else(|e| panic!("lookup_ip over {transport:?}: {e}"));
        let mut ips: Vec<IpAddr> = ips.iter().collect();
        ips.sort();
        assert_eq!(
            ips,
            ["10.101.0.10", "10.102.0.10", "fd00::10"]
                .map(|a| IpAddr::from_str(a).expect("literal"))
                .to_vec(),
            "{transport:?}"
        );

        let error = resolver
            .lookup_ip("nope.svc.global.")
            .await
            .expect_err("NXDOMAIN is an error for the resolver");
        assert!(error.is_nx_domain(), "{transport:?}: {error}");
        assert!(
            error.into_soa().is_some(),
            "SOA with NXDOMAIN ({transport:?})"
        );
    }
    shutdown.cancel();
}

/// Sends one raw DNS message over UDP and returns the raw reply.
async fn udp_exchange(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    socket.send_to(packet, addr).await.expect("send");
    let mut buf = vec![0; 4096];
    let (len, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("reply before the deadline")
        .expect("recv");
    buf.truncate(len);
    buf
}

fn message(op_code: OpCode, queries: &[(&str, RecordType)]) -> Message {
    let mut message = Message::new(4242, MessageType::Query, op_code);
    for (name, qtype) in queries {
        message.add_query(Query::query(
            Name::from_str(name).expect("test name"),
            *qtype,
        ));
    }
    message
}

#[tokio::test]
async fn non_query_opcodes_get_notimp() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let packet = message(OpCode::Status, &[("web.shop.svc.global.", RecordType::A)])
        .to_vec()
        .expect("encode");
    let reply = Message::from_vec(&udp_exchange(handle.local_addr(), &packet).await)
        .expect("decodable reply");
    assert_eq!(reply.metadata.id, 4242);
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
    assert!(reply.answers.is_empty());
    shutdown.cancel();
}

#[tokio::test]
async fn two_questions_or_garbage_get_formerr() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let two = message(
        OpCode::Query,
        &[
            ("web.shop.svc.global.", RecordType::A),
            ("db.shop.svc.global.", RecordType::A),
        ],
    )
    .to_vec()
    .expect("encode");
    let reply =
        Message::from_vec(&udp_exchange(handle.local_addr(), &two).await).expect("decodable reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // A valid header claiming one question, followed by a truncated name.
    let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0x3f, b'a', b'b']);
    let reply = Message::from_vec(&udp_exchange(handle.local_addr(), &garbage).await)
        .expect("decodable reply");
    assert_eq!(reply.metadata.id, 0x1234);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // The server is still answering afterwards.
    let mut client = client(handle.local_addr(), Transport::Udp).await;
    let a = query(&mut client, "db.shop.svc.global.", RecordType::A).await;
    assert_eq!(rdata(&a), ["10.101.0.20"]);
    shutdown.cancel();
}

#[tokio::test]
async fn edns_queries_get_an_opt_record_and_unknown_versions_get_badvers() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;

    let mut with_edns = message(OpCode::Query, &[("web.shop.svc.global.", RecordType::A)]);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.set_edns(edns.clone());
    let reply = Message::from_vec(
        &udp_exchange(handle.local_addr(), &with_edns.to_vec().expect("encode")).await,
    )
    .expect("decodable reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let opt = reply.edns.expect("OPT in the reply to an EDNS query");
    assert_eq!(opt.version(), 0);
    assert!(opt.max_payload() >= 512);

    let mut v1 = message(OpCode::Query, &[("web.shop.svc.global.", RecordType::A)]);
    edns.set_version(1);
    v1.set_edns(edns);
    let reply =
        Message::from_vec(&udp_exchange(handle.local_addr(), &v1.to_vec().expect("encode")).await)
            .expect("decodable reply");
    // BADVERS shares code 16 with BADSIG, so the decoder may name it either way.
    assert_eq!(
        u16::from(reply.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    shutdown.cancel();
}

/// Sends one raw DNS message over a fresh TCP connection (RFC 1035 §4.2.2 framing).
async fn tcp_exchange(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
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
    reply
}

#[tokio::test]
async fn large_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let many: Vec<String> = (0..100).map(|i| format!("10.1.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    handle.publish(
        Snapshot::new(&zones(), vec![service("shop", "big", &many)]).expect("valid snapshot"),
    );
    let packet = message(OpCode::Query, &[("big.shop.svc.global.", RecordType::A)])
        .to_vec()
        .expect("encode");

    // No EDNS: RFC 1035 §4.2.1 limits UDP to 512 octets, so the reply is truncated.
    let udp = udp_exchange(handle.local_addr(), &packet).await;
    assert!(udp.len() <= 512, "{} octets over UDP", udp.len());
    let udp = Message::from_vec(&udp).expect("decodable reply");
    assert!(udp.metadata.truncation, "TC set on a truncated UDP answer");
    assert!(udp.answers.len() < 100);

    let tcp = Message::from_vec(&tcp_exchange(handle.local_addr(), &packet).await)
        .expect("decodable reply");
    assert!(!tcp.metadata.truncation);
    let got: Vec<String> = tcp.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, many, "all addresses, in order, over TCP");
    shutdown.cancel();
}

#[tokio::test]
async fn tcp_answers_several_queries_on_one_connection() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let mut stream = TcpStream::connect(handle.local_addr())
        .await
        .expect("tcp connect");
    for (id, name) in [(1u16, "web.shop.svc.global."), (2, "db.shop.svc.global.")] {
        let mut query = message(OpCode::Query, &[(name, RecordType::A)]);
        query.metadata.id = id;
        let bytes = query.to_vec().expect("encode");
        let len = u16::try_from(bytes.len()).expect("small message");
        stream.write_all(&len.to_be_bytes()).await.expect("write");
        stream.write_all(&bytes).await.expect("write");

        let mut len = [0u8; 2];
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
            .await
            .expect("reply before the deadline")
            .expect("read length");
        let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await.expect("read reply");
        let reply = Message::from_vec(&reply).expect("decodable reply");
        assert_eq!(reply.metadata.id, id);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(!reply.answers.is_empty(), "{name}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn hickory_client_send_reaches_the_handler() {
    // The lower-level DnsHandle::send path (used by resolvers) works too.
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let client = client(handle.local_addr(), Transport::Tcp).await;
    let request = DnsRequest::from(message(
        OpCode::Query,
        &[("web.shop.svc.global.", RecordType::AAAA)],
    ));
    let response = client
        .send(request)
        .first_answer()
        .await
        .expect("answer over tcp");
    assert_eq!(rdata(&response), ["fd00::10"]);
    shutdown.cancel();
}

#[tokio::test]
async fn four_reuseport_sockets_answer_every_client_on_both_paths() {
    // Four sockets share the port; the kernel picks one per client flow, so 32 clients reach
    // all of them (short of a 4^-31 chance). Each answer must come back from the server's
    // address to the client that asked, on both the fast path and hickory's.
    let shutdown = CancellationToken::new();
    let handle = causeway_dns::serve(
        Config {
            udp_sockets: Some(4),
            ..config("127.0.0.1:0".parse().expect("literal address"))
        },
        shutdown.clone(),
    )
    .await
    .expect("serve binds on loopback");
    handle.publish(
        Snapshot::new(&zones(), vec![service("shop", "db", &["10.101.0.20"])])
            .expect("valid snapshot"),
    );
    let addr = handle.local_addr();
    let fast = message(OpCode::Query, &[("db.shop.svc.global.", RecordType::A)])
        .to_vec()
        .expect("encode");
    // An opcode the fast path declines: hickory answers NOTIMP.
    let slow = message(OpCode::Status, &[("db.shop.svc.global.", RecordType::A)])
        .to_vec()
        .expect("encode");
    let exchanges: Vec<_> = (0..64)
        .map(|k| {
            let packet = if k % 2 == 0 {
                fast.clone()
            } else {
                slow.clone()
            };
            tokio::spawn(async move { udp_exchange(addr, &packet).await })
        })
        .collect();
    for (k, exchange) in exchanges.into_iter().enumerate() {
        let reply = exchange.await.expect("exchange");
        let reply = Message::from_vec(&reply).expect("parse reply");
        if k % 2 == 0 {
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert_eq!(reply.answers.len(), 1);
        } else {
            assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_releases_the_port() {
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let addr = handle.local_addr();
    shutdown.cancel();
    let deadline = causeway_dns::clock::now() + TIMEOUT;
    loop {
        match (
            std::net::UdpSocket::bind(addr),
            std::net::TcpListener::bind(addr),
        ) {
            (Ok(_), Ok(_)) => break,
            _ => {
                assert!(
                    causeway_dns::clock::now() < deadline,
                    "port {addr} still bound after shutdown"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn serve_reports_bad_zone_and_busy_port() {
    let shutdown = CancellationToken::new();
    let bad = causeway_dns::serve(
        Config {
            zones: ZoneConfig {
                zone: "bad zone".to_owned(),
                ..zones()
            },
            ..config("127.0.0.1:0".parse().expect("literal"))
        },
        shutdown.clone(),
    )
    .await;
    assert!(
        matches!(bad, Err(causeway_dns::Error::BadZone { .. })),
        "got {bad:?}"
    );

    let handle = start(&shutdown).await;
    let busy = causeway_dns::serve(config(handle.local_addr()), shutdown.clone()).await;
    assert!(
        matches!(busy, Err(causeway_dns::Error::Bind { addr, .. }) if addr == handle.local_addr()),
        "got {busy:?}"
    );
    shutdown.cancel();
}

/// `dig` is what operators reach for; CI installs it (Debian dnsutils). Without it the test
/// fails loudly rather than skipping: set CAUSEWAY_SKIP_DIG=1 to opt out explicitly.
#[tokio::test]
async fn dig_gets_addresses_in_order_and_nxdomain_with_soa() {
    if std::env::var_os("CAUSEWAY_SKIP_DIG").is_some() {
        return;
    }
    let shutdown = CancellationToken::new();
    let handle = start(&shutdown).await;
    let port = handle.local_addr().port().to_string();
    let mut outputs = Vec::new();
    for transport in ["+notcp", "+tcp"] {
        let output = tokio::process::Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port,
                "web.shop.svc.global",
                "A",
                "+short",
            ])
            .args([transport, "+time=5", "+tries=1"])
            .output()
            .await
            .expect("dig is installed (apt-get install dnsutils)");
        assert!(
            output.status.success(),
            "dig {transport} failed: {output:?}"
        );
        outputs.push(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    for output in outputs {
        assert_eq!(output, "10.102.0.10\n10.101.0.10\n");
    }

    let output = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "nope.shop.svc.global", "A"])
        .args(["+norec", "+time=5", "+tries=1"])
        .output()
        .await
        .expect("dig is installed (apt-get install dnsutils)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("status: NXDOMAIN"), "{text}");
    assert!(text.contains("flags: qr aa"), "{text}");
    assert!(text.contains("AUTHORITY: 1"), "{text}");
    assert!(
        text.contains("svc.global.\t\t5\tIN\tSOA\tns.svc.global. hostmaster.svc.global."),
        "{text}"
    );
    shutdown.cancel();
}
