//! Two data planes wired together in memory: real boringtun handshakes and encryption, no
//! sockets.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;

#[derive(Default)]
struct Wire {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    tun: Vec<Vec<u8>>,
}

impl Io for Wire {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.sent.push((to, datagram.to_vec()));
    }

    fn write_tun(&mut self, packet: &[u8]) {
        self.tun.push(packet.to_vec());
    }
}

const A_ADDR: &str = "10.0.0.1:51820";
const B_ADDR: &str = "10.0.0.2:51820";

struct Pair {
    a: DataPlane,
    b: DataPlane,
    wa: Wire,
    wb: Wire,
    /// The address B sees A's datagrams coming from.
    a_seen_from: SocketAddr,
}

impl Pair {
    fn new() -> Self {
        let mut a = DataPlane::new([1; 32], None, 1420);
        let mut b = DataPlane::new([2; 32], None, 1420);
        a.set_peers(vec![PeerSpec {
            public_key: b.public_key(),
            endpoint: B_ADDR.parse().unwrap(),
            allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
        }])
        .unwrap();
        b.set_peers(vec![PeerSpec {
            public_key: a.public_key(),
            endpoint: A_ADDR.parse().unwrap(),
            allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
        }])
        .unwrap();
        Self {
            a,
            b,
            wa: Wire::default(),
            wb: Wire::default(),
            a_seen_from: A_ADDR.parse().unwrap(),
        }
    }

    /// Delivers datagrams both ways until nobody sends anything.
    fn pump(&mut self) {
        for _ in 0..20 {
            let from_a = std::mem::take(&mut self.wa.sent);
            let from_b = std::mem::take(&mut self.wb.sent);
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for (to, d) in from_a {
                assert_eq!(to, B_ADDR.parse().unwrap());
                self.b.handle_datagram(self.a_seen_from, &d, &mut self.wb);
            }
            for (_to, d) in from_b {
                self.a
                    .handle_datagram(B_ADDR.parse().unwrap(), &d, &mut self.wa);
            }
        }
        panic!("datagrams still flowing after 20 rounds");
    }
}

fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&Ipv4Addr::from(src).octets());
    p[16..20].copy_from_slice(&Ipv4Addr::from(dst).octets());
    p[20..].copy_from_slice(payload);
    p
}

#[test]
fn first_packet_triggers_handshake_and_arrives_after_it() {
    let mut pair = Pair::new();
    let packet = ipv4_packet([10, 1, 0, 1], [10, 2, 0, 1], b"hello");
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    assert_eq!(pair.wa.sent.len(), 1, "a handshake initiation");
    pair.pump();
    assert_eq!(pair.wb.tun, vec![packet]);

    let reply = ipv4_packet([10, 2, 0, 1], [10, 1, 0, 1], b"world");
    pair.b.handle_tun_packet(&mut reply.clone(), &mut pair.wb);
    pair.pump();
    assert_eq!(pair.wa.tun, vec![reply]);
    let stats = pair.a.peer_stats(&|_| None);
    assert_eq!(stats.len(), 1);
    assert!(stats[0].last_handshake.is_some());
    assert!(stats[0].tx_bytes > 0 && stats[0].rx_bytes > 0);
    assert_eq!(
        (stats[0].tx_packets, stats[0].rx_packets),
        (1, 1),
        "the queued hello out, the world back"
    );
    let stats = pair.b.peer_stats(&|_| None);
    assert_eq!((stats[0].tx_packets, stats[0].rx_packets), (1, 1));
}

#[test]
fn decrypted_packet_with_foreign_inner_source_is_dropped_and_counted() {
    let mut pair = Pair::new();
    // A may send 10.9.9.9 as source (its TUN does not check), but B only accepts 10.1/16 from A.
    let spoofed = ipv4_packet([10, 9, 9, 9], [10, 2, 0, 1], b"spoof");
    pair.a.handle_tun_packet(&mut spoofed.clone(), &mut pair.wa);
    pair.pump();
    assert!(pair.wb.tun.is_empty());
    assert_eq!(pair.b.counters().spoofed_source_packets, 1);
}

#[test]
fn garbage_datagrams_are_counted_and_do_not_disturb_the_tunnel() {
    let mut pair = Pair::new();
    let from: SocketAddr = "10.0.0.66:4444".parse().unwrap();
    let mut handshake_init_len = vec![0u8; 148];
    handshake_init_len[0] = 1;
    let mut data_unknown_index = vec![0u8; 64];
    data_unknown_index[0] = 4;
    data_unknown_index[4..8].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![4, 0, 0, 0],
        vec![0u8; 2000],
        handshake_init_len,
        data_unknown_index,
    ];
    for g in &garbage {
        pair.b.handle_datagram(from, g, &mut pair.wb);
    }
    assert!(pair.wb.sent.is_empty() && pair.wb.tun.is_empty());
    let c = pair.b.counters();
    assert_eq!(c.malformed_datagrams, 5);
    assert_eq!(
        c.rejected_datagrams, 1,
        "handshake initiation with a bad mac1"
    );
    assert_eq!(c.unknown_peer_datagrams, 1);

    let packet = ipv4_packet([10, 1, 0, 1], [10, 2, 0, 1], b"still works");
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    pair.pump();
    assert_eq!(pair.wb.tun, vec![packet]);
}

#[test]
fn authenticated_datagram_from_new_address_roams_the_peer() {
    let mut pair = Pair::new();
    let packet = ipv4_packet([10, 1, 0, 1], [10, 2, 0, 1], b"one");
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    pair.pump();
    assert_eq!(
        pair.b.peer_stats(&|_| None)[0].endpoint,
        A_ADDR.parse().unwrap()
    );

    pair.a_seen_from = "10.0.0.77:6000".parse().unwrap();
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    pair.pump();
    assert_eq!(pair.b.peer_stats(&|_| None)[0].endpoint, pair.a_seen_from);
    assert_eq!(pair.b.counters().endpoint_roams, 1);

    // A replayed datagram from yet another address is rejected and does not roam.
    let replay = {
        pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
        pair.wa.sent[0].1.clone()
    };
    pair.pump();
    pair.b
        .handle_datagram("10.0.0.99:1".parse().unwrap(), &replay, &mut pair.wb);
    assert_eq!(pair.b.peer_stats(&|_| None)[0].endpoint, pair.a_seen_from);
    assert_eq!(pair.b.counters().rejected_datagrams, 1);
}

#[test]
fn packet_for_destination_nobody_owns_is_counted() {
    let mut pair = Pair::new();
    let packet = ipv4_packet([10, 1, 0, 1], [192, 168, 1, 1], b"nowhere");
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    pair.a.handle_tun_packet(&mut [0x00, 0x01], &mut pair.wa);
    assert!(pair.wa.sent.is_empty());
    assert_eq!(pair.a.counters().no_route_packets, 1);
    assert_eq!(pair.a.counters().malformed_tun_packets, 1);
}

#[test]
fn own_key_in_peer_set_is_ignored_and_removed_peer_stops_routing() {
    let mut pair = Pair::new();
    let own = pair.a.public_key();
    let routes = pair
        .a
        .set_peers(vec![PeerSpec {
            public_key: own,
            endpoint: A_ADDR.parse().unwrap(),
            allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
        }])
        .unwrap();
    assert!(
        routes.is_empty(),
        "own allowed IPs are not routed into the tunnel"
    );
    let packet = ipv4_packet([10, 1, 0, 1], [10, 2, 0, 1], b"gone");
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    assert!(pair.wa.sent.is_empty());
    assert!(pair.a.peer_stats(&|_| None).is_empty());
}

#[test]
fn route_changes_retry_what_failed_to_install() {
    let set =
        |nets: &[&str]| -> BTreeSet<IpNet> { nets.iter().map(|n| n.parse().unwrap()).collect() };
    let desired = set(&["10.1.0.0/16", "10.2.0.0/16"]);
    // 10.2/16 failed to install last time; 10.9/16 failed to be removed.
    let installed = set(&["10.1.0.0/16", "10.9.0.0/16"]);
    let changes = RouteChanges::between(&installed, &desired);
    assert_eq!(changes.add, vec!["10.2.0.0/16".parse::<IpNet>().unwrap()]);
    assert_eq!(
        changes.remove,
        vec!["10.9.0.0/16".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        RouteChanges::between(&desired, &desired),
        RouteChanges::default()
    );
}

#[test]
fn probe_through_the_tunnel_is_answered_by_the_peer_data_plane_not_its_tun() {
    let mut pair = Pair::new();
    let b_key = pair.b.public_key();
    pair.a.send_probe(&b_key, ProbeId(42), &mut pair.wa);
    pair.pump();
    assert!(pair.wb.tun.is_empty(), "B's TUN never sees the probe");
    assert!(pair.wa.tun.is_empty(), "nor A's the reply");
    assert_eq!(pair.a.poll_probe_reply(), Some((b_key, ProbeId(42))));
    assert_eq!(pair.a.poll_probe_reply(), None);
    assert_eq!(
        pair.b.poll_probe_reply(),
        None,
        "B got a request, not a reply"
    );
    assert_eq!(pair.b.counters().spoofed_source_packets, 0);

    // Unknown peers are ignored.
    pair.a.send_probe(&[9; 32], ProbeId(43), &mut pair.wa);
    assert!(pair.wa.sent.is_empty());
}

#[test]
fn probe_shaped_packet_from_the_tun_is_dropped() {
    let mut pair = Pair::new();
    let forged = probe::Message {
        kind: ProbeKind::Reply,
        id: ProbeId(1),
    }
    .encode();
    pair.a.handle_tun_packet(&mut forged.clone(), &mut pair.wa);
    assert!(pair.wa.sent.is_empty());
    assert_eq!(pair.a.counters().malformed_tun_packets, 1);
}

#[test]
fn tcp_syn_mss_is_clamped_to_the_tunnel_mtu_on_the_way_in_and_out() {
    let mut pair = Pair::new();
    // A SYN from 10.1.0.1 to 10.2.0.1 announcing MSS 1460 (a 1500-byte link behind A).
    let mut tcp = vec![0u8; 24];
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut syn = ipv4_packet([10, 1, 0, 1], [10, 2, 0, 1], &tcp);
    syn[9] = 6;
    pair.a.handle_tun_packet(&mut syn.clone(), &mut pair.wa);
    pair.pump();
    assert_eq!(pair.wb.tun.len(), 1);
    assert_eq!(
        &pair.wb.tun[0][40..44],
        &[2, 4, 0x05, 0x64],
        "1420 - 40 = 1380"
    );

    // A peer whose MTU is larger (say 9000) sends a SYN-ACK with a large MSS: clamped on the
    // way to B's TUN.
    let mut peer = DataPlane::new([3; 32], None, 9000);
    let mut wp = Wire::default();
    peer.set_peers(vec![PeerSpec {
        public_key: pair.b.public_key(),
        endpoint: B_ADDR.parse().unwrap(),
        allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
    }])
    .unwrap();
    pair.b
        .set_peers(vec![PeerSpec {
            public_key: peer.public_key(),
            endpoint: A_ADDR.parse().unwrap(),
            allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
        }])
        .unwrap();
    syn[20 + 13] = 0x12;
    syn[40..44].copy_from_slice(&[2, 4, 0x20, 0x00]);
    peer.handle_tun_packet(&mut syn.clone(), &mut wp);
    assert_eq!(&syn[40..44], &[2, 4, 0x20, 0x00], "8192 fits 9000");
    pair.wb.tun.clear();
    for _ in 0..5 {
        for (_, d) in std::mem::take(&mut wp.sent) {
            pair.b
                .handle_datagram(A_ADDR.parse().unwrap(), &d, &mut pair.wb);
        }
        for (_, d) in std::mem::take(&mut pair.wb.sent) {
            peer.handle_datagram(B_ADDR.parse().unwrap(), &d, &mut wp);
        }
    }
    assert_eq!(pair.wb.tun.len(), 1);
    assert_eq!(
        &pair.wb.tun[0][40..44],
        &[2, 4, 0x05, 0x64],
        "clamped for B's 1420"
    );
}

#[test]
fn truncated_and_replayed_real_datagrams_are_rejected_and_the_tunnel_carries_on() {
    let mut pair = Pair::new();
    let packet = ipv4_packet([10, 1, 0, 1], [10, 2, 0, 1], b"established");
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    pair.pump();
    assert_eq!(pair.wb.tun.len(), 1);

    // A real data datagram, captured on its way to B.
    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    let (_, real) = pair.wa.sent.pop().expect("a data datagram");
    pair.b
        .handle_datagram(pair.a_seen_from, &real, &mut pair.wb);
    assert_eq!(pair.wb.tun.len(), 2);
    let before = pair.b.counters();

    // Every truncation of it, then the whole thing again (a replay), from the peer's address.
    for len in 0..real.len() {
        pair.b
            .handle_datagram(pair.a_seen_from, &real[..len], &mut pair.wb);
    }
    pair.b
        .handle_datagram(pair.a_seen_from, &real, &mut pair.wb);
    let after = pair.b.counters();
    assert_eq!(
        pair.wb.tun.len(),
        2,
        "nothing decrypted twice or from a stub"
    );
    let dropped = (after.malformed_datagrams - before.malformed_datagrams)
        + (after.rejected_datagrams - before.rejected_datagrams)
        + (after.unknown_peer_datagrams - before.unknown_peer_datagrams);
    assert_eq!(
        dropped,
        real.len() as u64 + 1,
        "each one dropped and counted"
    );

    pair.a.handle_tun_packet(&mut packet.clone(), &mut pair.wa);
    pair.pump();
    assert_eq!(pair.wb.tun.len(), 3, "the tunnel still works");
}

/// Both clusters use 10.244.0.0/16 locally; A is 10.1.0.0/16 and B 10.2.0.0/16 from outside
/// (the peers' allowed IPs in [`Pair::new`]).
fn translated_pair() -> Pair {
    let mut pair = Pair::new();
    let mapping = |global: &str| {
        Translator::new(vec![crate::Mapping {
            local: "10.244.0.0/16".parse().unwrap(),
            global: global.parse().unwrap(),
        }])
        .unwrap()
    };
    pair.a.set_translation(mapping("10.1.0.0/16"));
    pair.b.set_translation(mapping("10.2.0.0/16"));
    pair
}

/// A UDP datagram (no UDP checksum) with a valid IPv4 header checksum.
fn udp_packet(src: [u8; 4], dst: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut udp = vec![0x13, 0x88, 0, 53, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    udp.extend_from_slice(data);
    let mut p = ipv4_packet(src, dst, &udp);
    let sum = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    p[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p
}

#[test]
fn pods_with_the_same_local_cidr_reach_each_other_through_global_addresses() {
    let mut pair = translated_pair();
    let hello = udp_packet([10, 244, 0, 5], [10, 2, 0, 7], b"hello");
    pair.a.handle_tun_packet(&mut hello.clone(), &mut pair.wa);
    pair.pump();
    // B's pod sees A's pod by its global address, and itself by its local one.
    let expected = udp_packet([10, 1, 0, 5], [10, 244, 0, 7], b"hello");
    assert_eq!(pair.wb.tun, vec![expected]);
    let reply = udp_packet([10, 244, 0, 7], [10, 1, 0, 5], b"world");
    pair.b.handle_tun_packet(&mut reply.clone(), &mut pair.wb);
    pair.pump();
    assert_eq!(
        pair.wa.tun,
        vec![udp_packet([10, 2, 0, 7], [10, 244, 0, 5], b"world")]
    );
    for plane in [&pair.a, &pair.b] {
        let c = plane.counters();
        assert_eq!((c.translated_packets, c.untranslatable_packets), (2, 0));
        assert_eq!(c.spoofed_source_packets, 0);
    }
}

#[test]
fn untranslatable_packets_are_dropped_and_counted_and_probes_still_work() {
    let mut pair = translated_pair();
    // From a local pod, but its total length runs past the end of the read.
    let mut cut = udp_packet([10, 244, 0, 5], [10, 2, 0, 7], b"hello");
    cut[2..4].copy_from_slice(&200u16.to_be_bytes());
    pair.a.handle_tun_packet(&mut cut, &mut pair.wa);
    assert!(
        pair.wa.sent.is_empty(),
        "nothing sent, not even a handshake"
    );
    assert_eq!(pair.a.counters().untranslatable_packets, 1);
    // Probes are originated and answered by the data planes, untranslated.
    let b_key = pair.b.public_key();
    pair.a.send_probe(&b_key, ProbeId(7), &mut pair.wa);
    pair.pump();
    assert_eq!(pair.a.poll_probe_reply(), Some((b_key, ProbeId(7))));
    assert!(pair.wa.tun.is_empty() && pair.wb.tun.is_empty());
    assert_eq!(pair.b.counters().translated_packets, 0);
    // Translation off again: the local source goes as it is, and B drops it as spoofed.
    pair.a.set_translation(Translator::default());
    let hello = udp_packet([10, 244, 0, 5], [10, 2, 0, 7], b"hello");
    pair.a.handle_tun_packet(&mut hello.clone(), &mut pair.wa);
    pair.pump();
    assert!(pair.wb.tun.is_empty());
    assert_eq!(pair.b.counters().spoofed_source_packets, 1);
}
