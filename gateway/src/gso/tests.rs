//! Segmentation checked against full checksum verification and the original byte stream.

use proptest::prelude::*;

use super::*;

/// The Internet checksum sum the plain way (RFC 1071): 16-bit words, end-around carry. The
/// verifiers below use it, so they do not depend on the optimised `sum` under test.
fn reference_sum(data: &[u8], mut acc: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    fold(acc)
}

#[test]
fn checksum_sum_matches_rfc_1071s_example() {
    // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(fold(sum(&data, 0)), 0xddf2);
    assert_eq!(reference_sum(&data, 0), 0xddf2);
    assert_eq!(fold(sum(&[], 0)), 0);
    assert_eq!(fold(sum(&[0xff; 4], 0)), 0xffff);
    assert_eq!(fold(sum(&[0xff; 3], 0)), 0xff00);
    assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
}

proptest! {
    #[test]
    fn checksum_sum_equals_the_plain_16_bit_sum(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        acc in 0u32..0x0004_0000,
    ) {
        prop_assert_eq!(fold(sum(&data, acc)), reference_sum(&data, acc));
    }
}

fn transport_ok(p: &[u8]) -> bool {
    let ipv6 = p[0] >> 4 == 6;
    let ip_len = if ipv6 {
        40
    } else {
        usize::from(p[0] & 0x0f) * 4
    };
    let protocol = if ipv6 { p[6] } else { p[9] };
    reference_sum(&p[ip_len..], pseudo(p, ipv6, protocol, p.len() - ip_len)) == 0xffff
}

fn ipv4_header_ok(p: &[u8]) -> bool {
    reference_sum(&p[..20], 0) == 0xffff
}

/// A TCP super-packet (IPv4 or IPv6) with `payload`, flags `flags`, seq 1000, id 7.
fn super_packet(ipv6: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp.extend_from_slice(payload);
    let mut p = if ipv6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[6] = 6;
        h[8] = 0xfd;
        h[23] = 1;
        h[24] = 0xfd;
        h[39] = 2;
        h
    } else {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[4..6].copy_from_slice(&7u16.to_be_bytes());
        h[8] = 64;
        h[9] = 6;
        h[12..16].copy_from_slice(&[10, 78, 0, 1]);
        h[16..20].copy_from_slice(&[10, 78, 0, 2]);
        h
    };
    p.extend_from_slice(&tcp);
    p
}

fn gso(ipv6: bool, mss: u16) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if ipv6 { GSO_TCPV6 } else { GSO_TCPV4 },
        gso_size: mss,
        csum_start: if ipv6 { 40 } else { 20 },
        csum_offset: 16,
    }
}

fn run(hdr: VnetHdr, packet: &mut [u8]) -> Result<Vec<Vec<u8>>, Malformed> {
    let mut scratch = vec![0u8; 65536];
    let mut out = Vec::new();
    split(hdr, packet, &mut scratch, |p| out.push(p.to_vec()))?;
    Ok(out)
}

#[test]
fn tcp_super_packet_splits_into_mss_segments_with_valid_headers() {
    for ipv6 in [false, true] {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut p = super_packet(ipv6, 0x18 | 0x01 | 0x80, &payload);
        let segs = run(gso(ipv6, 1380), &mut p).unwrap();
        assert_eq!(segs.len(), 4, "5000 = 3 x 1380 + 860");
        let ip_len = if ipv6 { 40 } else { 20 };
        let mut stream = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            assert!(transport_ok(s), "segment {k} TCP checksum (ipv6={ipv6})");
            if ipv6 {
                assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
            } else {
                assert!(ipv4_header_ok(s), "segment {k} IP checksum");
                assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
                assert_eq!(u16::from_be_bytes([s[4], s[5]]), 7 + k as u16);
            }
            let seq =
                u32::from_be_bytes([s[ip_len + 4], s[ip_len + 5], s[ip_len + 6], s[ip_len + 7]]);
            assert_eq!(seq, 1000 + 1380 * k as u32);
            let flags = s[ip_len + 13];
            let last = k == segs.len() - 1;
            assert_eq!(flags & 0x01 != 0, last, "FIN only on the last");
            assert_eq!(flags & 0x08 != 0, last, "PSH only on the last");
            assert_eq!(flags & 0x80 != 0, k == 0, "CWR only on the first");
            assert!(flags & 0x10 != 0, "ACK on all");
            stream.extend_from_slice(&s[ip_len + 20..]);
        }
        assert_eq!(stream, payload);
    }
}

#[test]
fn plain_packet_with_partial_checksum_is_completed() {
    // UDP over IPv4 with a zero checksum field and NEEDS_CSUM.
    let mut p = vec![0u8; 20 + 8 + 5];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 78, 0, 1]);
    p[16..20].copy_from_slice(&[10, 78, 0, 2]);
    p[24..26].copy_from_slice(&13u16.to_be_bytes());
    p[28..].copy_from_slice(b"hello");
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        gso_size: 0,
        csum_start: 20,
        csum_offset: 6,
    };
    let out = run(hdr, &mut p).unwrap();
    assert_eq!(out.len(), 1);
    assert!(transport_ok(&out[0]));
    // Without NEEDS_CSUM the packet passes untouched.
    let mut q = p.clone();
    q[26] ^= 0xff;
    let untouched = run(VnetHdr { flags: 0, ..hdr }, &mut q.clone()).unwrap();
    assert_eq!(untouched, vec![q]);
}

#[test]
fn unsupported_or_broken_offload_requests_are_errors() {
    let mut p = super_packet(false, 0x10, &[1; 100]);
    assert_eq!(
        run(
            VnetHdr {
                gso_type: 3,
                ..gso(false, 1380)
            },
            &mut p
        ),
        Err(Malformed::GsoType(3))
    );
    assert_eq!(run(gso(false, 0), &mut p), Err(Malformed::Headers));
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        gso_size: 0,
        csum_start: 200,
        csum_offset: 16,
    };
    assert_eq!(run(hdr, &mut p), Err(Malformed::ChecksumOffsets));
    assert_eq!(VnetHdr::parse(&[0; 9]), Err(Malformed::NoHeader));
}

proptest! {
    #[test]
    fn split_never_panics_on_arbitrary_input(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        header in proptest::collection::vec(any::<u8>(), 10),
    ) {
        let hdr = VnetHdr::parse(&header).unwrap();
        let _ = run(hdr, &mut bytes);
    }

    #[test]
    fn any_payload_and_mss_reassemble_to_the_original_stream(
        ipv6 in any::<bool>(),
        len in 1usize..20000,
        mss in 500u16..9000,
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let mut p = super_packet(ipv6, 0x10, &payload);
        let segs = run(gso(ipv6, mss), &mut p).unwrap();
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
        let ip_len = if ipv6 { 40 } else { 20 };
        let mut stream = Vec::new();
        for s in &segs {
            prop_assert!(transport_ok(s));
            stream.extend_from_slice(&s[ip_len + 20..]);
        }
        prop_assert_eq!(stream, payload);
    }
}

/// Segments of one flow as a sender's TCP would emit them: ACK, seq advancing by `mss`.
fn segments(ipv6: bool, payload: &[u8], mss: usize) -> Vec<Vec<u8>> {
    let mut p = super_packet(ipv6, 0x18, payload);
    run(gso(ipv6, mss as u16), &mut p).unwrap()
}

#[test]
fn consecutive_segments_of_one_flow_coalesce_into_one_gso_write() {
    for ipv6 in [false, true] {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i % 249) as u8).collect();
        let segs = segments(ipv6, &payload, 1380);
        let mut c = Coalescer::new();
        for s in &segs {
            assert!(c.push(s));
        }
        let out = c.take().unwrap().to_vec();
        assert!(c.take().is_none());
        let hdr = VnetHdr::parse(&out).unwrap();
        assert_eq!(hdr.gso_type, if ipv6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(hdr.gso_size, 1380);
        let mut packet = out[VNET_HDR_LEN..].to_vec();
        let ip_len = if ipv6 { 40 } else { 20 };
        if !ipv6 {
            assert!(ipv4_header_ok(&packet));
        }
        // The partial checksum plus the segment's sum is the real checksum.
        let partial = fold(sum(&packet[ip_len..], 0));
        let mut finished = packet.clone();
        finished[ip_len + 16..ip_len + 18].copy_from_slice(&(!partial).to_be_bytes());
        assert!(transport_ok(&finished), "ipv6={ipv6}");
        // Splitting it again gives back the original segments' stream and flags.
        let again = run(hdr, &mut packet).unwrap();
        assert_eq!(again.len(), segs.len());
        for (a, b) in again.iter().zip(&segs) {
            assert_eq!(a[ip_len + 4..ip_len + 8], b[ip_len + 4..ip_len + 8], "seq");
            assert_eq!(a[ip_len + 13], b[ip_len + 13], "flags");
            assert_eq!(a[ip_len + 20..], b[ip_len + 20..], "payload");
        }
    }
}

#[test]
fn a_single_segment_passes_unchanged_and_non_bulk_packets_are_refused() {
    let segs = segments(false, &[7; 3000], 1380);
    let mut c = Coalescer::new();
    assert!(c.push(&segs[0]));
    let out = c.take().unwrap();
    assert_eq!(&out[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&out[VNET_HDR_LEN..], &segs[0][..]);

    // Out of order: refused while the run is pending.
    assert!(c.push(&segs[0]));
    assert!(!c.push(&segs[2]));
    // After the short last segment (it carries PSH), the run is closed.
    assert!(c.push(&segs[1]));
    assert!(c.push(&segs[2]));
    let more = segments(false, &[8; 100], 1380);
    assert!(!c.push(&more[0]));
    assert!(c.take().is_some());

    let syn = super_packet(false, 0x02, &[]);
    assert!(!c.push(&syn), "no payload, SYN");
    let fin = super_packet(false, 0x11, &[1; 10]);
    assert!(!c.push(&fin), "FIN");
    assert!(!c.push(&[0x45; 10]), "truncated");
}

proptest! {
    #[test]
    fn coalescer_never_panics_and_only_takes_what_it_can_rebuild(
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10),
    ) {
        let mut c = Coalescer::new();
        for p in &packets {
            if !c.push(p) {
                let _ = c.take();
                let _ = c.push(p);
            }
        }
        let _ = c.take();
    }
}
