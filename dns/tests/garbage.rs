//! Robustness: malformed queries (random bytes, mutated queries, compression loops, truncated
//! and oversized messages, odd classes and opcodes) get FORMERR, another error rcode, or no
//! reply at all, never a crash: the server keeps answering afterwards, over UDP and TCP.
//! Deterministic: the packets come from a fixed-seed xorshift generator.

use std::str::FromStr;
use std::time::Duration;

use causeway_dns::{Config, ServiceKind, ServiceRecords, Snapshot, ZoneConfig};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).expect("small")).expect("small")
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn valid_query(id: u16) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_str("web.shop.svc.global.").expect("name"),
        RecordType::A,
    ));
    message.to_vec().expect("encode")
}

/// One hostile packet of a kind chosen by the generator.
fn hostile(rng: &mut XorShift, id: u16) -> Vec<u8> {
    let mut packet = valid_query(id);
    match rng.below(8) {
        // Random bytes of random length (including empty and header-only).
        0 => (0..rng.below(600)).map(|_| rng.byte()).collect(),
        // A few flipped bytes.
        1 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(packet.len());
                packet[at] = rng.byte();
            }
            packet
        }
        // Truncated anywhere.
        2 => {
            packet.truncate(rng.below(packet.len()));
            packet
        }
        // A compression pointer to itself in the question (a loop).
        3 => {
            packet.truncate(12);
            packet.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
            packet
        }
        // Two pointers to each other.
        4 => {
            packet.truncate(12);
            packet.extend_from_slice(&[0x01, b'a', 0xc0, 0x12, 0xc0, 0x0c, 0, 1, 0, 1]);
            packet
        }
        // Odd class (CH, HS, NONE, ANY, unassigned) or opcode (1..=15), or QR already set.
        5 => {
            let len = packet.len();
            packet[len - 2..]
                .copy_from_slice(&[[0, 3], [0, 4], [0, 254], [0, 255], [0x12, 0x34]][rng.below(5)]);
            packet
        }
        6 => {
            packet[2] = (packet[2] & 0x87)
                | (u8::try_from(1 + rng.below(15)).expect("small") << 3)
                | (rng.byte() & 0x80);
            packet
        }
        // Counts that promise far more than follows, and an oversized message.
        _ => {
            packet[4..12].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff]);
            packet.resize(
                if rng.below(2) == 0 {
                    packet.len()
                } else {
                    4000
                },
                0x3f,
            );
            packet
        }
    }
}

#[tokio::test]
async fn hostile_packets_never_stop_the_server() {
    let shutdown = CancellationToken::new();
    let zones = ZoneConfig {
        max_addresses: 0,
        ..ZoneConfig::default()
    };
    let handle = causeway_dns::serve(
        Config {
            listen: "127.0.0.1:0".parse().expect("literal"),
            zones: zones.clone(),
            upstream: None,
            udp_sockets: None,
        },
        shutdown.clone(),
    )
    .await
    .expect("serve binds on loopback");
    let web = ServiceRecords {
        namespace: "shop".into(),
        name: "web".into(),
        kind: ServiceKind::Headless,
        tiers: vec![vec!["10.1.0.1".parse().expect("literal")]],
        clusters: Vec::new(),
        ports: Vec::new(),
    };
    handle.publish(Snapshot::new(&zones, vec![web]).expect("valid snapshot"));
    let addr = handle.local_addr();

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let mut replies = Vec::new();
    for round in 0..40u16 {
        for i in 0..50u16 {
            let packet = hostile(&mut rng, round * 50 + i);
            socket.send_to(&packet, addr).await.expect("send");
        }
        // A valid query after every batch must be answered: the server is still up.
        let probe_id = 60_000 + round;
        socket
            .send_to(&valid_query(probe_id), addr)
            .await
            .expect("send");
        let deadline = causeway_dns::clock::now() + TIMEOUT;
        loop {
            let mut buf = vec![0; 65535];
            let (len, _) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no answer to the probe after round {round}"))
                .expect("recv");
            let reply = Message::from_vec(&buf[..len]).expect("every reply is a decodable message");
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            if reply.metadata.id == probe_id {
                assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
                assert_eq!(reply.answers.len(), 1);
                break;
            }
            replies.push(reply.metadata.response_code);
        }
    }
    assert!(
        replies.contains(&ResponseCode::FormErr),
        "malformed queries get FORMERR: {replies:?}"
    );

    // TCP: garbage frames, a frame longer than what follows, then a valid query on a new
    // connection.
    let mut rng = XorShift(7);
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
        let packet = hostile(&mut rng, 1);
        let claimed = if rng.below(2) == 0 {
            packet.len() + 100
        } else {
            packet.len()
        };
        let len = u16::try_from(claimed).expect("small");
        let _ = stream.write_all(&len.to_be_bytes()).await;
        let _ = stream.write_all(&packet).await;
        let _ = stream.shutdown().await;
    }
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    let query = valid_query(4242);
    let len = u16::try_from(query.len()).expect("small");
    stream.write_all(&len.to_be_bytes()).await.expect("write");
    stream.write_all(&query).await.expect("write");
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
        .await
        .expect("reply before the deadline")
        .expect("read length");
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("read reply");
    let reply = Message::from_vec(&reply).expect("decodable");
    assert_eq!(reply.metadata.id, 4242);
    assert_eq!(reply.answers.len(), 1);
    shutdown.cancel();
}

/// The committed fuzz corpus (`tests/fuzz/corpus/dns_query`) replays through both query paths
/// of a snapshot without a panic, and every fast-path answer decodes.
#[test]
fn fuzz_corpus_replays_through_both_paths() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus/dns_query");
    let web = ServiceRecords {
        namespace: "shop".into(),
        name: "web".into(),
        kind: ServiceKind::Headless,
        tiers: vec![vec!["10.1.0.1".parse().expect("literal")]],
        clusters: Vec::new(),
        ports: Vec::new(),
    };
    let snapshot = Snapshot::new(&ZoneConfig::default(), vec![web]).expect("valid snapshot");
    let mut replayed = 0;
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("directory entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        if snapshot.answer_wire(&data, 0, &mut out) {
            Message::from_vec(&out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        if let Ok(message) = Message::from_vec(&data) {
            for query in &message.queries {
                let name = hickory_proto::rr::LowerName::from(query.name());
                let _ = snapshot.answer(&name, query.query_type(), 0);
            }
        }
        replayed += 1;
    }
    assert!(
        replayed >= 10,
        "corpus found in {}: {replayed} files",
        dir.display()
    );
}
