//! TUN offloads: the `virtio_net_hdr` the kernel puts before each packet read from a TUN
//! device opened with `IFF_VNET_HDR`, and the splitting of TCP super-packets (TSO) into
//! MTU-sized segments just before encryption.
//!
//! Pure byte work. With offloads on, one TUN `read` returns up to 64 KiB of one TCP stream
//! instead of one MTU-sized packet, which is where a userspace tunnel spends its time (one
//! system call and one trip through the kernel's TCP/IP output per packet). Checksums are left
//! to us ("partial"), so every packet that comes out of here has them computed in full. The
//! shell is [`crate::device`].

/// Length of the `virtio_net_hdr` before each packet (no `num_buffers`: TUNSETVNETHDRSZ 10).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// The fields of a `virtio_net_hdr` that matter here (native-endian u16s, as the kernel
/// writes them without TUNSETVNETLE on a little-endian machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// A packet the kernel handed us that we cannot make sense of; dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than its virtio_net_hdr")]
    NoHeader,
    #[error("unsupported GSO type {0}")]
    GsoType(u8),
    #[error("checksum offsets outside the packet")]
    ChecksumOffsets,
    #[error("TCP super-packet headers do not parse")]
    Headers,
}

impl VnetHdr {
    pub fn parse(buf: &[u8]) -> Result<Self, Malformed> {
        let h = buf.get(..VNET_HDR_LEN).ok_or(Malformed::NoHeader)?;
        let u16_at = |i: usize| u16::from_ne_bytes([h[i], h[i + 1]]);
        Ok(Self {
            flags: h[0],
            gso_type: h[1],
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

/// Turns one TUN read (header already parsed, `packet` after it) into ready packets, calling
/// `emit` for each: a plain packet as is (its checksum completed if the kernel left it
/// partial), a TCP super-packet as segments of `gso_size` payload bytes, each with its own
/// IP length, IPv4 id and checksum, TCP sequence number, flags and checksum. `scratch` must
/// hold the largest segment (headers plus `gso_size`).
pub fn split(
    hdr: VnetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&mut [u8]),
) -> Result<(), Malformed> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            emit(packet);
            Ok(())
        }
        GSO_TCPV4 | GSO_TCPV6 => segment_tcp(packet, hdr.gso_size.into(), scratch, &mut emit),
        other => Err(Malformed::GsoType(other)),
    }
}

fn segment_tcp(
    packet: &[u8],
    mss: usize,
    scratch: &mut [u8],
    emit: &mut impl FnMut(&mut [u8]),
) -> Result<(), Malformed> {
    let ipv6 = packet.first().ok_or(Malformed::Headers)? >> 4 == 6;
    let ip_len = if ipv6 {
        40
    } else {
        usize::from(packet[0] & 0x0f) * 4
    };
    let tcp_len = usize::from(packet.get(ip_len + 12).ok_or(Malformed::Headers)? >> 4) * 4;
    let headers = ip_len + tcp_len;
    if mss == 0 || tcp_len < 20 || packet.len() < headers || headers + mss > scratch.len() {
        return Err(Malformed::Headers);
    }
    let payload = &packet[headers..];
    let seq0 = u32::from_be_bytes([
        packet[ip_len + 4],
        packet[ip_len + 5],
        packet[ip_len + 6],
        packet[ip_len + 7],
    ]);
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let flags = packet[ip_len + 13];
    let count = payload.len().div_ceil(mss).max(1);
    for (k, chunk) in payload.chunks(mss).enumerate() {
        let len = headers + chunk.len();
        let seg = &mut scratch[..len];
        seg[..headers].copy_from_slice(&packet[..headers]);
        seg[headers..].copy_from_slice(chunk);
        if ipv6 {
            seg[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(k as u16).to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&seg[..ip_len], 0));
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let seq = seq0.wrapping_add((k * mss) as u32);
        seg[ip_len + 4..ip_len + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags;
        if k + 1 < count {
            f &= !(0x01 | 0x08); // FIN and PSH only on the last segment
        }
        if k > 0 {
            f &= !0x80; // CWR only on the first
        }
        seg[ip_len + 13] = f;
        tcp_checksum(seg, ip_len, ipv6);
        emit(seg);
    }
    if payload.is_empty() {
        // A "super-packet" without payload: pass the headers on as one packet.
        let seg = &mut scratch[..headers];
        seg.copy_from_slice(&packet[..headers]);
        tcp_checksum(seg, ip_len, ipv6);
        emit(seg);
    }
    Ok(())
}

/// Computes the transport checksum (TCP or UDP) of a packet from scratch, pseudo-header
/// included, where the kernel left it partial.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> Result<(), Malformed> {
    let at = start + offset;
    if at + 2 > packet.len() || packet.is_empty() {
        return Err(Malformed::ChecksumOffsets);
    }
    let ipv6 = packet[0] >> 4 == 6;
    packet[at..at + 2].copy_from_slice(&[0, 0]);
    let protocol = if ipv6 { packet[6] } else { packet[9] };
    let c = !fold(sum(
        &packet[start..],
        pseudo(packet, ipv6, protocol, packet.len() - start),
    ));
    // UDP sends a zero checksum as all ones (RFC 768).
    let c = if c == 0 && protocol == 17 { 0xffff } else { c };
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn tcp_checksum(seg: &mut [u8], ip_len: usize, ipv6: bool) {
    let at = ip_len + 16;
    seg[at..at + 2].copy_from_slice(&[0, 0]);
    let len = seg.len() - ip_len;
    let c = !fold(sum(&seg[ip_len..], pseudo(seg, ipv6, 6, len)));
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The pseudo-header's sum (RFC 793 §3.1, RFC 8200 §8.1).
fn pseudo(packet: &[u8], ipv6: bool, protocol: u8, len: usize) -> u32 {
    let addrs = if ipv6 {
        &packet[8..40]
    } else {
        &packet[12..20]
    };
    sum(addrs, 0) + u32::from(protocol) + (len as u32 >> 16) + (len as u32 & 0xffff)
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests;
