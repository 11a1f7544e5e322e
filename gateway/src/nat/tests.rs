//! Prefix translation checked against checksums computed from scratch: tables of IPv4/IPv6
//! TCP, UDP, ICMP echo and ICMP errors (full and truncated quotes), fragments and malformed
//! packets; proptests that a translation is undone exactly by the inverse mapping, that the
//! whole path (our egress, the peer's ingress, its ICMP error back through its egress and our
//! ingress) keeps every checksum valid and hands the sender its own packet back, and that no
//! input panics or is half rewritten.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

// ---- from-scratch checksums (RFC 1071), independent of the code under test ----

fn ones_sum(data: &[u8], mut acc: u64) -> u64 {
    for pair in data.chunks(2) {
        acc += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn pseudo_header(packet: &[u8], protocol: u8, len: usize) -> Vec<u8> {
    if packet[0] >> 4 == 4 {
        let mut p = packet[12..20].to_vec();
        p.extend_from_slice(&[0, protocol]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        p
    } else {
        let mut p = packet[8..40].to_vec();
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, protocol]);
        p
    }
}

/// (protocol, transport offset, fragmented) of a whole packet, walking IPv6 extension headers.
fn transport_of(p: &[u8]) -> (u8, usize, bool) {
    if p[0] >> 4 == 4 {
        let fragmented = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
        (p[9], usize::from(p[0] & 0x0f) * 4, fragmented)
    } else {
        let (mut next, mut at, mut fragmented) = (p[6], 40, false);
        loop {
            match next {
                0 | 60 => {
                    next = p[at];
                    at += (usize::from(p[at + 1]) + 1) * 8;
                }
                44 => {
                    next = p[at];
                    fragmented = true;
                    at += 8;
                }
                _ => return (next, at, fragmented),
            }
        }
    }
}

/// Checks every checksum of a complete packet from scratch: the IPv4 header, the transport
/// checksum, and inside an ICMP error the quoted packet's, when the quote is complete.
fn verify(p: &[u8]) -> Result<(), String> {
    let v4 = p[0] >> 4 == 4;
    if v4 {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if ones_sum(&p[..ihl], 0) != 0xffff {
            return Err(format!("IPv4 header checksum of {p:02x?}"));
        }
        if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
            return Err("IPv4 total length".into());
        }
    } else if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
        return Err("IPv6 payload length".into());
    }
    let (protocol, at, fragmented) = transport_of(p);
    if fragmented {
        return Ok(()); // the transport checksum covers the reassembled datagram
    }
    let segment = &p[at..];
    let pseudo = match protocol {
        6 | 17 => true,
        58 if !v4 => true,
        1 if v4 => false,
        _ => return Ok(()),
    };
    if protocol == 17 && segment[6..8] == [0, 0] {
        return if v4 {
            Ok(())
        } else {
            Err("UDP/IPv6 without checksum".into())
        };
    }
    let start = if pseudo {
        ones_sum(&pseudo_header(p, protocol, segment.len()), 0)
    } else {
        0
    };
    if ones_sum(segment, start) != 0xffff {
        return Err(format!("protocol {protocol} checksum of {p:02x?}"));
    }
    let error = match protocol {
        1 => matches!(segment[0], 3 | 4 | 11 | 12),
        58 => segment[0] < 128,
        _ => false,
    };
    if error && quote_is_complete(&segment[8..]) {
        verify(&segment[8..]).map_err(|e| format!("quoted packet: {e}"))?;
    }
    Ok(())
}

fn quote_is_complete(q: &[u8]) -> bool {
    match q.first().map(|b| b >> 4) {
        Some(4) if q.len() >= 20 => usize::from(u16::from_be_bytes([q[2], q[3]])) == q.len(),
        Some(6) if q.len() >= 40 => usize::from(u16::from_be_bytes([q[4], q[5]])) + 40 == q.len(),
        _ => false,
    }
}

// ---- packet builders ----

/// An IP packet from `src` to `dst` around `body` (a transport header and payload whose
/// checksum field is zero), with every checksum computed from scratch.
fn packet(src: IpAddr, dst: IpAddr, protocol: u8, body: &[u8]) -> Vec<u8> {
    let mut p = header(src, dst, protocol, body.len());
    p.extend_from_slice(body);
    seal(&mut p);
    p
}

fn header(src: IpAddr, dst: IpAddr, protocol: u8, body_len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0];
            h[2..4].copy_from_slice(&((20 + body_len) as u16).to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = !(ones_sum(&h, 0) as u16);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0, 0, 0, protocol, 64];
            h[4..6].copy_from_slice(&(body_len as u16).to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h
        }
        _ => panic!("mixed families"),
    }
}

/// Computes the transport checksum of a whole (unfragmented) packet from scratch.
fn seal(p: &mut [u8]) {
    let v4 = p[0] >> 4 == 4;
    let (protocol, at, _) = transport_of(p);
    let (field, pseudo) = match protocol {
        6 => (16, true),
        17 => (6, true),
        58 if !v4 => (2, true),
        1 if v4 => (2, false),
        _ => return,
    };
    p[at + field..at + field + 2].copy_from_slice(&[0, 0]);
    let len = p.len() - at;
    let start = if pseudo {
        ones_sum(&pseudo_header(p, protocol, len), 0)
    } else {
        0
    };
    let mut c = !(ones_sum(&p[at..], start) as u16);
    if protocol == 17 && c == 0 {
        c = 0xffff;
    }
    p[at + field..at + field + 2].copy_from_slice(&c.to_be_bytes());
}

fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&5353u16.to_be_bytes());
    u[2..4].copy_from_slice(&53u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// An echo request (type 8 in ICMP, 128 in ICMPv6).
fn echo(v4: bool, payload: &[u8]) -> Vec<u8> {
    let mut e = vec![if v4 { 8 } else { 128 }, 0, 0, 0, 0x0a, 0x0b, 0, 1];
    e.extend_from_slice(payload);
    e
}

/// The ICMP error a host or router at `from` sends about `about`, quoting `quote` bytes of it.
/// `kind` is ICMP's type 3 code 4 (frag needed) / ICMPv6's type 2 (packet too big) by default.
fn icmp_error(from: IpAddr, about: &[u8], kind: (u8, u8), quote: usize) -> Vec<u8> {
    let to = source_of(about);
    let v4 = from.is_ipv4();
    let mut body = vec![kind.0, kind.1, 0, 0, 0, 0, 0, 0];
    if v4 && kind == (3, 4) {
        body[6..8].copy_from_slice(&1200u16.to_be_bytes());
    } else if !v4 && kind.0 == 2 {
        body[4..8].copy_from_slice(&1280u32.to_be_bytes());
    }
    body.extend_from_slice(&about[..quote.min(about.len())]);
    packet(from, to, if v4 { 1 } else { 58 }, &body)
}

fn source_of(p: &[u8]) -> IpAddr {
    address_in(p, 12, 8)
}

fn destination_of(p: &[u8]) -> IpAddr {
    address_in(p, 16, 24)
}

fn address_in(p: &[u8], v4_at: usize, v6_at: usize) -> IpAddr {
    if p[0] >> 4 == 4 {
        <[u8; 4]>::try_from(&p[v4_at..v4_at + 4]).unwrap().into()
    } else {
        <[u8; 16]>::try_from(&p[v6_at..v6_at + 16]).unwrap().into()
    }
}

/// The quoted packet inside an ICMP error.
fn quoted(p: &[u8]) -> &[u8] {
    let (_, at, _) = transport_of(p);
    &p[at + 8..]
}

/// How much of a quote of `len` bytes of `original` must come back exactly: all of it, unless
/// the quote ends in the middle of a transport checksum that covers the addresses (half a
/// checksum cannot be patched; the sender's kernel never reads it).
fn comparable(original: &[u8], len: usize) -> usize {
    let (protocol, at, _) = transport_of(original);
    let field = match protocol {
        6 => 16,
        17 => 6,
        58 => 2,
        _ => return len,
    };
    if len == at + field + 1 { len - 1 } else { len }
}

// ---- the address plan of the examples: two clusters with the same local CIDRs ----

const A: [(&str, &str); 2] = [
    ("10.244.0.0/16", "100.64.0.0/16"),
    ("fd00:10:244::/56", "fd63:6177:0:100::/56"),
];
const B: [(&str, &str); 2] = [
    ("10.244.0.0/16", "100.65.0.0/16"),
    ("fd00:10:244::/56", "fd63:6177:0:200::/56"),
];

fn mappings(pairs: &[(&str, &str)]) -> Vec<Mapping> {
    pairs
        .iter()
        .map(|(l, g)| Mapping {
            local: l.parse().unwrap(),
            global: g.parse().unwrap(),
        })
        .collect()
}

fn translator(pairs: &[(&str, &str)]) -> Translator {
    Translator::new(mappings(pairs)).unwrap()
}

/// The same list with local and global swapped: its egress undoes ours.
fn inverse(pairs: &[(&str, &str)]) -> Translator {
    let swapped: Vec<(&str, &str)> = pairs.iter().map(|(l, g)| (*g, *l)).collect();
    translator(&swapped)
}

/// Host `offset` of `cidr` (an entry of A or B), in the family of `v4`.
fn host(pairs: &[(&str, &str)], v4: bool, global: bool, offset: u128) -> IpAddr {
    let (l, g) = pairs[usize::from(!v4)];
    let net: IpNet = if global { g } else { l }.parse().unwrap();
    let width = if v4 { 32 } else { 128 };
    let host_mask = u128::MAX >> (128 - width + u32::from(net.prefix_len()));
    let bits = address_bits(net.network()) | (offset & host_mask);
    if v4 {
        IpAddr::from((bits as u32).to_be_bytes())
    } else {
        IpAddr::from(bits.to_be_bytes())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
    UdpNoChecksum,
    Echo,
}

fn body(kind: Kind, v4: bool, payload: &[u8]) -> (u8, Vec<u8>) {
    match kind {
        Kind::Tcp => (6, tcp(payload)),
        Kind::Udp | Kind::UdpNoChecksum => (17, udp(payload)),
        Kind::Echo => (if v4 { 1 } else { 58 }, echo(v4, payload)),
    }
}

/// A packet of `kind` from pod `x` in A (local address) to pod `y` in B (global address).
fn a_to_b(kind: Kind, v4: bool, x: u128, y: u128, payload: &[u8]) -> Vec<u8> {
    let (protocol, body) = body(kind, v4, payload);
    let mut p = packet(
        host(&A, v4, false, x),
        host(&B, v4, true, y),
        protocol,
        &body,
    );
    if kind == Kind::UdpNoChecksum {
        let at = if v4 { 26 } else { 46 };
        p[at..at + 2].copy_from_slice(&[0, 0]);
    }
    p
}

// ---- tables ----

#[test]
fn egress_and_ingress_rewrite_addresses_and_keep_checksums_valid() {
    let (a, b) = (translator(&A), translator(&B));
    for v4 in [true, false] {
        for kind in [Kind::Tcp, Kind::Udp, Kind::Echo] {
            for payload in [&b""[..], b"x", b"hello, world", &[0xff; 301]] {
                let case = format!("v4={v4} {kind:?} payload={}", payload.len());
                let original = a_to_b(kind, v4, 10, 7, payload);
                verify(&original).unwrap();
                let mut p = original.clone();
                assert_eq!(a.egress(&mut p), Verdict::Translated, "{case}");
                assert_eq!(source_of(&p), host(&A, v4, true, 10), "{case}");
                assert_eq!(destination_of(&p), host(&B, v4, true, 7), "{case}");
                verify(&p).unwrap_or_else(|e| panic!("{case} after egress: {e}"));
                assert_eq!(b.ingress(&mut p), Verdict::Translated, "{case}");
                assert_eq!(source_of(&p), host(&A, v4, true, 10), "{case}");
                assert_eq!(destination_of(&p), host(&B, v4, false, 7), "{case}");
                verify(&p).unwrap_or_else(|e| panic!("{case} after ingress: {e}"));
                assert_eq!(p.len(), original.len());
            }
        }
    }
}

#[test]
fn udp_over_ipv4_without_checksum_keeps_none() {
    let mut p = a_to_b(Kind::UdpNoChecksum, true, 10, 7, b"no checksum");
    assert_eq!(translator(&A).egress(&mut p), Verdict::Translated);
    assert_eq!(p[26..28], [0, 0]);
    verify(&p).unwrap();
}

#[test]
fn udp_over_ipv6_checksum_never_becomes_zero() {
    // Find a payload whose checksum comes out 0xffff (a computed 0) after translation: the
    // patch must write 0xffff, never 0.
    let a = translator(&A);
    let mut seen_all_ones = false;
    for n in 0..=u16::MAX {
        let mut p = a_to_b(Kind::Udp, false, 10, 7, &n.to_be_bytes());
        assert_eq!(a.egress(&mut p), Verdict::Translated);
        assert_ne!(p[46..48], [0, 0], "payload {n}");
        verify(&p).unwrap();
        seen_all_ones |= p[46..48] == [0xff, 0xff];
    }
    assert!(seen_all_ones, "some payload must hit the 0xffff case");
}

#[test]
fn packets_outside_our_prefixes_are_left_alone() {
    let a = translator(&A);
    for v4 in [true, false] {
        // From B's pod (not ours) and to A's local address (not a global one).
        let p = packet(host(&B, v4, true, 3), host(&A, v4, false, 4), 6, &tcp(b"x"));
        let mut q = p.clone();
        assert_eq!(a.egress(&mut q), Verdict::Unchanged);
        assert_eq!(a.ingress(&mut q), Verdict::Unchanged);
        assert_eq!(p, q);
    }
    let mut not_ip = vec![0x15; 60];
    assert_eq!(a.egress(&mut not_ip), Verdict::Unchanged);
    let mut empty: [u8; 0] = [];
    assert_eq!(a.ingress(&mut empty), Verdict::Unchanged);
    let mut p = a_to_b(Kind::Tcp, true, 1, 2, b"");
    assert_eq!(
        Translator::default().egress(&mut p),
        Verdict::Unchanged,
        "the empty list translates nothing"
    );
}

#[test]
fn icmp_errors_travel_back_to_the_sender_quoting_its_own_packet() {
    let (a, b) = (translator(&A), translator(&B));
    // (ICMP type, code) per family: frag needed / packet too big, port unreachable, TTL.
    let kinds4 = [(3, 4), (3, 3), (11, 0), (12, 0)];
    let kinds6 = [(2, 0), (1, 4), (3, 0), (4, 0)];
    for v4 in [true, false] {
        for kind in [Kind::Tcp, Kind::Udp, Kind::UdpNoChecksum, Kind::Echo] {
            if kind == Kind::UdpNoChecksum && !v4 {
                continue;
            }
            for &error in if v4 { &kinds4 } else { &kinds6 } {
                // Full quote; RFC 792's minimum (header + 8); header + 4 (no UDP checksum);
                // header + 17 (TCP checksum cut off); header only.
                let ip = if v4 { 20 } else { 40 };
                for quote in [usize::MAX, ip + 8, ip + 4, ip + 17, ip] {
                    let case = format!("v4={v4} {kind:?} error={error:?} quote={quote}");
                    let original = a_to_b(kind, v4, 0x0a0a, 0x0707, b"payload 123");
                    let mut p = original.clone();
                    assert_eq!(a.egress(&mut p), Verdict::Translated, "{case}");
                    assert_eq!(b.ingress(&mut p), Verdict::Translated, "{case}");
                    // B's router (local .1) answers the packet as B's pod received it.
                    let mut e = icmp_error(host(&B, v4, false, 1), &p, error, quote);
                    verify(&e).unwrap();
                    assert_eq!(b.egress(&mut e), Verdict::Translated, "{case}");
                    assert_eq!(source_of(&e), host(&B, v4, true, 1), "{case}");
                    assert_eq!(destination_of(&e), host(&A, v4, true, 0x0a0a), "{case}");
                    if quoted(&e).len() >= ip {
                        assert_eq!(
                            destination_of(quoted(&e)),
                            host(&B, v4, true, 0x0707),
                            "{case}"
                        );
                    }
                    verify(&e).unwrap_or_else(|x| panic!("{case} after B's egress: {x}"));
                    assert_eq!(a.ingress(&mut e), Verdict::Translated, "{case}");
                    assert_eq!(destination_of(&e), host(&A, v4, false, 0x0a0a), "{case}");
                    verify(&e).unwrap_or_else(|x| panic!("{case} after A's ingress: {x}"));
                    let q = quoted(&e);
                    let n = comparable(&original, q.len());
                    assert_eq!(
                        &q[..n],
                        &original[..n],
                        "{case}: the sender gets its own packet"
                    );
                }
            }
        }
    }
}

#[test]
fn ipv4_fragments_all_get_addresses_and_only_the_first_a_transport_patch() {
    let a = translator(&A);
    for kind in [Kind::Tcp, Kind::Udp, Kind::Echo] {
        let whole = a_to_b(kind, true, 10, 7, &[0x5a; 100]);
        let transport = &whole[20..];
        // Two fragments: 48 transport bytes at offset 0 (MF), the rest at 48 / 8 = 6.
        let fragment = |range: std::ops::Range<usize>, flags_offset: u16| {
            let mut f = whole[..20].to_vec();
            f[2..4].copy_from_slice(&((20 + range.len()) as u16).to_be_bytes());
            f[6..8].copy_from_slice(&flags_offset.to_be_bytes());
            f[10..12].copy_from_slice(&[0, 0]);
            let c = !(ones_sum(&f, 0) as u16);
            f[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&transport[range]);
            f
        };
        let mut first = fragment(0..48, 0x2000);
        let mut second = fragment(48..transport.len(), 6);
        let second_before = second.clone();
        assert_eq!(a.egress(&mut first), Verdict::Translated);
        assert_eq!(a.egress(&mut second), Verdict::Translated);
        for f in [&first, &second] {
            assert_eq!(source_of(f), host(&A, true, true, 10));
            verify(f).unwrap();
        }
        assert_eq!(
            second[20..],
            second_before[20..],
            "{kind:?}: no patch past offset 0"
        );
        // Reassembled, the datagram's checksums hold.
        let mut whole_again = first[..20].to_vec();
        whole_again[2..4].copy_from_slice(&(whole.len() as u16).to_be_bytes());
        whole_again[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        whole_again[10..12].copy_from_slice(&[0, 0]);
        let c = !(ones_sum(&whole_again, 0) as u16);
        whole_again[10..12].copy_from_slice(&c.to_be_bytes());
        whole_again.extend_from_slice(&first[20..]);
        whole_again.extend_from_slice(&second[20..]);
        verify(&whole_again).unwrap_or_else(|e| panic!("{kind:?} reassembled: {e}"));
    }
}

#[test]
fn ipv6_extension_headers_and_fragments_are_walked() {
    let a = translator(&A);
    let (src, dst) = (host(&A, false, false, 10), host(&B, false, true, 7));
    let segment = tcp(&[7; 64]);
    // Hop-by-hop (8 bytes of padding options) then a destination options header, then TCP.
    let mut exts = vec![60, 0, 1, 4, 0, 0, 0, 0];
    exts.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    let mut whole = header(src, dst, 0, exts.len() + segment.len());
    whole.extend_from_slice(&exts);
    whole.extend_from_slice(&segment);
    seal(&mut whole);
    verify(&whole).unwrap();
    let mut p = whole.clone();
    assert_eq!(a.egress(&mut p), Verdict::Translated);
    verify(&p).unwrap();

    // The same TCP segment in two fragments: first has the header.
    let fragment = |range: std::ops::Range<usize>, offset_flags: u16| {
        let mut f = header(src, dst, 44, 8 + range.len());
        f.extend_from_slice(&[6, 0]);
        f.extend_from_slice(&offset_flags.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 9]);
        f.extend_from_slice(&whole[56..][range]);
        f
    };
    let tcp_len = whole.len() - 56;
    let mut first = fragment(0..48, 1);
    let mut second = fragment(48..tcp_len, (48 / 8) << 3);
    let second_payload = second[48..].to_vec();
    assert_eq!(a.egress(&mut first), Verdict::Translated);
    assert_eq!(a.egress(&mut second), Verdict::Translated);
    assert_eq!(source_of(&second), host(&A, false, true, 10));
    assert_eq!(second[48..], second_payload[..]);
    // Reassembled (no extension headers), the TCP checksum holds.
    let mut again = header(host(&A, false, true, 10), dst, 6, tcp_len);
    again.extend_from_slice(&first[48..]);
    again.extend_from_slice(&second[48..]);
    verify(&again).unwrap();
}

#[test]
fn packets_that_cannot_be_rewritten_consistently_are_malformed_and_untouched() {
    let a = translator(&A);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let good4 = a_to_b(Kind::Tcp, true, 10, 7, b"abc");
    let mut long = good4.clone();
    long[2..4].copy_from_slice(&200u16.to_be_bytes());
    cases.push(("IPv4 total length past the end", long));
    let mut ihl = good4.clone();
    ihl[0] = 0x44;
    cases.push(("IPv4 header length below 20", ihl));
    let mut short_tcp = good4[..30].to_vec();
    short_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
    cases.push(("first fragment without its TCP checksum", short_tcp));
    let good6 = a_to_b(Kind::Udp, false, 10, 7, b"abc");
    let mut long6 = good6.clone();
    long6[4..6].copy_from_slice(&500u16.to_be_bytes());
    cases.push(("IPv6 payload length past the end", long6));
    let mut cut_ext = good6[..40].to_vec();
    cut_ext[6] = 0; // hop-by-hop, but nothing follows
    cut_ext[4..6].copy_from_slice(&0u16.to_be_bytes());
    cases.push(("IPv6 extension header cut off", cut_ext));
    let mut routed = header(host(&A, false, false, 10), host(&B, false, true, 7), 43, 16);
    routed.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 0]); // segments left 1
    routed.extend_from_slice(&udp(b"")[..8]);
    cases.push(("IPv6 routing header in transit", routed));
    for (case, p) in cases {
        let mut q = p.clone();
        assert_eq!(a.egress(&mut q), Verdict::Malformed, "{case}");
        assert_eq!(q, p, "{case}: untouched");
    }
    // The same shapes outside our prefixes are none of our business.
    let mut foreign = packet(
        host(&B, true, true, 1),
        host(&B, true, true, 2),
        6,
        &tcp(b""),
    );
    foreign[2..4].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(a.egress(&mut foreign), Verdict::Unchanged);
}

#[test]
fn mapping_lists_are_validated() {
    let m = |l: &str, g: &str| Mapping {
        local: l.parse().unwrap(),
        global: g.parse().unwrap(),
    };
    let cases = [
        (
            vec![m("10.0.0.0/16", "fd00::/112")],
            Err(InvalidMapping::Family(m("10.0.0.0/16", "fd00::/112"))),
        ),
        (
            vec![m("10.0.0.0/16", "100.64.0.0/24")],
            Err(InvalidMapping::PrefixLength(m(
                "10.0.0.0/16",
                "100.64.0.0/24",
            ))),
        ),
        (
            vec![
                m("10.0.0.0/16", "100.64.0.0/16"),
                m("10.0.128.0/24", "100.65.0.0/24"),
            ],
            Err(InvalidMapping::OverlappingLocals {
                first: "10.0.0.0/16".parse().unwrap(),
                second: "10.0.128.0/24".parse().unwrap(),
            }),
        ),
        (
            vec![
                m("10.0.0.0/16", "100.64.0.0/16"),
                m("10.1.0.0/24", "100.64.3.0/24"),
            ],
            Err(InvalidMapping::OverlappingGlobals {
                first: "100.64.0.0/16".parse().unwrap(),
                second: "100.64.3.0/24".parse().unwrap(),
            }),
        ),
        (
            vec![
                m("10.0.0.0/16", "100.64.0.0/16"),
                m("fd00::/64", "fd01::/64"),
                m("10.1.0.0/16", "100.65.0.0/16"),
            ],
            Ok(3),
        ),
    ];
    for (list, expected) in cases {
        let got = Translator::new(list.clone()).map(|t| t.mappings().len());
        assert_eq!(got, expected, "{list:?}");
    }
    let t = Translator::new(vec![m("10.0.0.5/16", "100.64.9.9/16")]).unwrap();
    assert_eq!(t.mappings(), &[m("10.0.0.0/16", "100.64.0.0/16")]);
}

#[test]
fn a_zero_length_prefix_and_host_routes_map_too() {
    let t = translator(&[("10.1.2.3/32", "100.64.9.9/32"), ("fd00::/0", "::/0")]);
    let mut p = packet(
        "10.1.2.3".parse().unwrap(),
        "100.65.0.1".parse().unwrap(),
        17,
        &udp(b"q"),
    );
    assert_eq!(t.egress(&mut p), Verdict::Translated);
    assert_eq!(source_of(&p), "100.64.9.9".parse::<IpAddr>().unwrap());
    verify(&p).unwrap();
}

#[test]
fn an_all_zero_icmp_echo_reply_keeps_its_checksum() {
    // Type 0, code 0, id 0, seq 0, no data: the message sums to zero, so its checksum is
    // 0xffff; a zero patch must not turn it into 0 (which a verifier rejects).
    let a = translator(&A);
    let mut p = packet(
        host(&A, true, false, 10),
        host(&B, true, true, 7),
        1,
        &[0; 8],
    );
    assert_eq!(p[22..24], [0xff, 0xff]);
    assert_eq!(a.egress(&mut p), Verdict::Translated);
    verify(&p).unwrap();
}

/// The TUN offloads (`crate::gso`): super-packets read from the TUN are split into fully
/// checksummed segments before the data plane translates them, and decrypted segments are
/// translated before the coalescer merges them and computes the partial checksum the kernel
/// completes. Both ways the kernel's view must verify.
#[test]
fn translation_composes_with_tso_splitting_and_gro_coalescing() {
    use crate::gso::{Coalescer, VNET_HDR_LEN, VnetHdr, split};
    let (a, b) = (translator(&A), translator(&B));
    for v4 in [true, false] {
        // A TSO super-packet of 3000 bytes from A's pod, its TCP checksum partial: the field
        // holds the folded pseudo-header sum (without the length, as Linux leaves it).
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut whole = a_to_b(Kind::Tcp, v4, 10, 7, &payload);
        let ip = if v4 { 20 } else { 40 };
        whole[ip + 16..ip + 18].copy_from_slice(&[0, 0]);
        let mss = 1000u16;
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = 1; // NEEDS_CSUM
        hdr[1] = if v4 { 1 } else { 4 };
        hdr[4..6].copy_from_slice(&mss.to_ne_bytes());
        hdr[6..8].copy_from_slice(&(ip as u16).to_ne_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
        let mut scratch = vec![0u8; 4096];
        let mut segments = Vec::new();
        split(
            VnetHdr::parse(&hdr).unwrap(),
            &mut whole,
            &mut scratch,
            |seg| {
                assert_eq!(a.egress(seg), Verdict::Translated);
                segments.push(seg.to_vec());
            },
        )
        .unwrap();
        assert_eq!(segments.len(), 3);
        let mut coalescer = Coalescer::new();
        for seg in &mut segments {
            verify(seg).unwrap_or_else(|e| panic!("v4={v4} segment after egress: {e}"));
            assert_eq!(source_of(seg), host(&A, v4, true, 10));
            // B decrypts it, translates, and coalesces it for one TUN write.
            assert_eq!(b.ingress(seg), Verdict::Translated);
            verify(seg).unwrap();
            assert!(coalescer.push(seg));
        }
        let merged = coalescer.take().unwrap().to_vec();
        let (vnet, p) = merged.split_at(VNET_HDR_LEN);
        assert_eq!(vnet[0], 1, "one GSO packet with a partial checksum");
        assert_eq!(destination_of(p), host(&B, v4, false, 7));
        // The kernel completes the partial checksum over the segment: it must verify.
        let mut done = p.to_vec();
        let c = !(ones_sum(&done[ip..], 0) as u16);
        done[ip + 16..ip + 18].copy_from_slice(&c.to_be_bytes());
        verify(&done).unwrap_or_else(|e| panic!("v4={v4} coalesced: {e}"));
        assert_eq!(done[ip + 20..], payload[..]);
    }
}

// ---- properties ----

fn any_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop_oneof![
            Just(Kind::Tcp),
            Just(Kind::Udp),
            Just(Kind::UdpNoChecksum),
            Just(Kind::Echo)
        ],
        any::<u128>(),
        any::<u128>(),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(v4, kind, x, y, payload)| {
            let kind = if !v4 && kind == Kind::UdpNoChecksum {
                Kind::Udp
            } else {
                kind
            };
            a_to_b(kind, v4, x, y, &payload)
        })
}

proptest! {
    #[test]
    fn the_inverse_list_undoes_a_translation_exactly(p in any_packet()) {
        let mut q = p.clone();
        prop_assert_eq!(translator(&A).egress(&mut q), Verdict::Translated);
        prop_assert!(verify(&q).is_ok(), "{:?}", verify(&q));
        prop_assert_eq!(inverse(&A).egress(&mut q), Verdict::Translated);
        prop_assert_eq!(q, p);
    }

    #[test]
    fn errors_about_any_packet_find_their_way_back_with_valid_checksums(
        p in any_packet(),
        error in 0usize..4,
        quote in 0usize..300,
        router in any::<u128>(),
    ) {
        let (a, b) = (translator(&A), translator(&B));
        let v4 = p[0] >> 4 == 4;
        let mut q = p.clone();
        prop_assert_eq!(a.egress(&mut q), Verdict::Translated);
        prop_assert_eq!(b.ingress(&mut q), Verdict::Translated);
        prop_assert!(verify(&q).is_ok(), "{:?}", verify(&q));
        let kinds = if v4 { [(3, 4), (3, 3), (11, 0), (12, 1)] } else { [(2, 0), (1, 4), (3, 0), (4, 1)] };
        let mut e = icmp_error(host(&B, v4, false, router), &q, kinds[error], quote);
        prop_assert_eq!(b.egress(&mut e), Verdict::Translated);
        prop_assert!(verify(&e).is_ok(), "{:?}", verify(&e));
        prop_assert_eq!(a.ingress(&mut e), Verdict::Translated);
        prop_assert!(verify(&e).is_ok(), "{:?}", verify(&e));
        let back = quoted(&e);
        // A quote cut inside the IP header cannot carry the rewritten address (nor a header
        // checksum that matches it): only whole headers come back as they were sent.
        if back.len() >= if v4 { 20 } else { 40 } {
            let n = comparable(&p, back.len());
            prop_assert_eq!(&back[..n], &p[..n]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
        let t = translator(&A);
        let mut p = data.clone();
        let _ = t.egress(&mut p);
        let _ = t.ingress(&mut p);
    }

    #[test]
    fn damaged_packets_never_panic_and_are_rewritten_whole_or_not_at_all(
        p in any_packet(),
        error in any::<bool>(),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (a, b) = (translator(&A), translator(&B));
        let mut p = p;
        if error {
            let mut q = p.clone();
            let _ = a.egress(&mut q);
            p = icmp_error(host(&B, p[0] >> 4 == 4, false, 1), &q, if p[0] >> 4 == 4 { (3, 4) } else { (2, 0) }, 200);
        }
        for (at, value) in damage {
            let i = at.index(p.len());
            p[i] = value;
        }
        p.truncate(cut.index(p.len() + 1));
        for (t, egress) in [(&a, true), (&b, false), (&b, true), (&a, false)] {
            let mut q = p.clone();
            let verdict = if egress { t.egress(&mut q) } else { t.ingress(&mut q) };
            if verdict != Verdict::Translated {
                prop_assert_eq!(&q, &p);
            }
        }
    }
}

/// Writes the seed corpus of the `gateway_translate` fuzz target (whose translator is A's
/// list: `crate::fuzzing::TRANSLATION`). A tool, not a check: run it with
/// `CAUSEWAY_WRITE_CORPUS=1 cargo test -p causeway-gateway --lib write_translate_corpus -- --ignored`.
/// Without the variable it does nothing, so CI's `--include-ignored` leaves the tree clean.
#[test]
#[ignore = "writes into tests/fuzz/corpus; run by hand with CAUSEWAY_WRITE_CORPUS=1"]
fn write_translate_corpus() {
    if std::env::var_os("CAUSEWAY_WRITE_CORPUS").is_none() {
        eprintln!("write_translate_corpus: set CAUSEWAY_WRITE_CORPUS=1 to rewrite the seeds");
        return;
    }
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fuzz/corpus/gateway_translate"
    );
    std::fs::create_dir_all(dir).unwrap();
    let (a, b) = (translator(&A), translator(&B));
    // An ICMP error about A's packet, as B's gateway sends it back to A.
    let error_back = |v4: bool, kind: (u8, u8), quote: usize| {
        let mut p = a_to_b(Kind::Tcp, v4, 10, 7, &[0x42; 64]);
        a.egress(&mut p);
        b.ingress(&mut p);
        let mut e = icmp_error(host(&B, v4, false, 1), &p, kind, quote);
        b.egress(&mut e);
        e
    };
    let mut first_fragment = a_to_b(Kind::Udp, true, 10, 7, &[1; 40]);
    first_fragment[6] |= 0x20; // MF
    first_fragment[10..12].copy_from_slice(&[0, 0]);
    let c = !(ones_sum(&first_fragment[..20], 0) as u16);
    first_fragment[10..12].copy_from_slice(&c.to_be_bytes());
    let mut cut = a_to_b(Kind::Tcp, true, 10, 7, b"cut");
    cut[2..4].copy_from_slice(&300u16.to_be_bytes());
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "ipv4_tcp_out",
            a_to_b(Kind::Tcp, true, 10, 7, b"GET / HTTP/1.1\r\n"),
        ),
        ("ipv6_udp_out", a_to_b(Kind::Udp, false, 10, 7, b"dns?")),
        (
            "ipv4_udp_no_checksum_out",
            a_to_b(Kind::UdpNoChecksum, true, 3, 4, b"x"),
        ),
        ("ipv6_echo_out", a_to_b(Kind::Echo, false, 10, 7, b"ping")),
        ("ipv4_frag_needed_in", error_back(true, (3, 4), 576)),
        (
            "ipv4_port_unreachable_in_short_quote",
            error_back(true, (3, 3), 28),
        ),
        ("ipv6_packet_too_big_in", error_back(false, (2, 0), 1232)),
        ("ipv4_first_fragment_out", first_fragment),
        ("ipv4_length_past_end_out", cut),
    ];
    for (name, data) in seeds {
        std::fs::write(format!("{dir}/{name}"), data).unwrap();
    }
}
