//! MSS clamping checked against a full checksum computation, for fixed cases and for any
//! option layout (proptest).

use proptest::prelude::*;

use super::*;

/// One's complement sum of `data` as 16-bit big-endian words, folded.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Whether the TCP checksum of `packet` verifies (pseudo-header included).
fn tcp_checksum_ok(packet: &[u8]) -> bool {
    let (tcp, ipv6) = tcp_offset(packet).expect("a TCP packet");
    let segment = &packet[tcp..];
    let len = segment.len() as u32;
    let pseudo = if ipv6 {
        let mut p = packet[8..40].to_vec();
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, TCP]);
        p
    } else {
        let mut p = packet[12..20].to_vec();
        p.extend_from_slice(&[0, TCP]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        p
    };
    sum(segment, sum(&pseudo, 0)) == 0xffff
}

/// A TCP segment with `flags` and `options` (padded to 4 bytes with NOPs... then END),
/// in IPv4 or IPv6, with a correct checksum.
fn segment(ipv6: bool, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(OPTION_END);
    }
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = (((20 + opts.len()) / 4) as u8) << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(&opts);
    tcp.extend_from_slice(payload);
    let mut packet = if ipv6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
        h[6] = TCP;
        h[7] = 64;
        h[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        h
    } else {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = TCP;
        h[12..16].copy_from_slice(&[10, 101, 0, 10]);
        h[16..20].copy_from_slice(&[10, 102, 0, 10]);
        h
    };
    let tcp_start = packet.len();
    packet.extend_from_slice(&tcp);
    let s = sum(&packet[tcp_start..], 0);
    let len = (packet.len() - tcp_start) as u32;
    let pseudo = if ipv6 {
        let mut p = packet[8..40].to_vec();
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, TCP]);
        p
    } else {
        let mut p = packet[12..20].to_vec();
        p.extend_from_slice(&[0, TCP, 0, 0]);
        p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        p
    };
    let checksum = !(sum(&pseudo, s) as u16);
    packet[tcp_start + 16..tcp_start + 18].copy_from_slice(&checksum.to_be_bytes());
    assert!(tcp_checksum_ok(&packet));
    packet
}

fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [OPTION_MSS, 4, hi, lo]
}

fn announced_mss(packet: &[u8]) -> Option<u16> {
    let (tcp, _) = tcp_offset(packet)?;
    let end = tcp + usize::from(packet[tcp + 12] >> 4) * 4;
    let mut i = tcp + 20;
    while i < end {
        match packet[i] {
            OPTION_END => return None,
            OPTION_NOP => i += 1,
            OPTION_MSS => return Some(u16::from_be_bytes([packet[i + 2], packet[i + 3]])),
            _ => i += usize::from(packet[i + 1]),
        }
    }
    None
}

#[test]
fn syn_with_large_mss_is_clamped_to_the_tunnel_and_checksum_still_verifies() {
    for (ipv6, mtu, want) in [(false, 1420, 1380), (true, 1420, 1360), (false, 1200, 1160)] {
        let mut p = segment(ipv6, SYN, &mss_option(1460), b"");
        assert!(clamp(&mut p, mtu));
        assert_eq!(announced_mss(&p), Some(want));
        assert!(tcp_checksum_ok(&p), "ipv6={ipv6} mtu={mtu}");
    }
}

#[test]
fn syn_ack_is_clamped_too_and_small_mss_is_left_alone() {
    let mut p = segment(false, SYN | 0x10, &mss_option(1460), b"");
    assert!(clamp(&mut p, 1420));
    assert_eq!(announced_mss(&p), Some(1380));
    let mut small = segment(false, SYN, &mss_option(536), b"");
    let before = small.clone();
    assert!(!clamp(&mut small, 1420));
    assert_eq!(small, before);
}

#[test]
fn non_syn_segments_and_non_tcp_packets_pass_unchanged() {
    let mut ack = segment(false, 0x10, &mss_option(1460), b"data");
    let before = ack.clone();
    assert!(!clamp(&mut ack, 1420));
    assert_eq!(ack, before);
    let mut udp = segment(false, SYN, &mss_option(1460), b"");
    udp[9] = 17;
    assert!(!clamp(&mut udp, 1420));
    let mut fragment = segment(false, SYN, &mss_option(1460), b"");
    fragment[7] = 1;
    assert!(!clamp(&mut fragment, 1420));
}

#[test]
fn malformed_options_are_left_alone_without_panicking() {
    let cases: Vec<Vec<u8>> = vec![
        vec![3, 0],  // length 0
        vec![3, 1],  // length 1
        vec![8, 40], // runs past the header
        vec![OPTION_MSS, 3, 5, 0xb4],
        vec![OPTION_NOP, OPTION_NOP, OPTION_NOP, OPTION_MSS],
    ];
    for options in cases {
        let mut p = segment(false, SYN, &options, b"");
        let before = p.clone();
        assert!(!clamp(&mut p, 1420), "{options:?}");
        assert_eq!(p, before);
    }
    for len in 0..=44 {
        let mut p = segment(false, SYN, &mss_option(1460), b"")[..len].to_vec();
        clamp(&mut p, 1420);
    }
}

proptest! {
    #[test]
    fn clamping_keeps_the_checksum_valid_for_any_option_layout(
        ipv6 in any::<bool>(),
        nops in 0usize..8,
        // Options before the MSS: timestamps (10 bytes) or SACK-permitted (2), in any order.
        before in proptest::collection::vec(prop_oneof![Just(vec![8u8, 10, 1, 2, 3, 4, 5, 6, 7, 8]), Just(vec![4u8, 2])], 0..3),
        mss in 0u16..=u16::MAX,
        mtu in 576u16..9000,
        payload in proptest::collection::vec(any::<u8>(), 0..5),
    ) {
        let mut options = vec![OPTION_NOP; nops];
        for o in &before {
            options.extend_from_slice(o);
        }
        options.extend_from_slice(&mss_option(mss));
        prop_assume!(options.len() <= 40);
        let mut p = segment(ipv6, SYN, &options, &payload);
        let changed = clamp(&mut p, mtu);
        let max = limit(mtu, ipv6);
        prop_assert_eq!(changed, mss > max);
        prop_assert_eq!(announced_mss(&p), Some(mss.min(max)));
        prop_assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn clamp_never_panics_on_arbitrary_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..120), mtu in any::<u16>()) {
        clamp(&mut bytes, mtu);
    }
}
