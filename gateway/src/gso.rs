//! TUN offloads: the `virtio_net_hdr` the kernel puts before each packet read from a TUN
//! device opened with `IFF_VNET_HDR`, and the splitting of TCP super-packets (TSO) into
//! MTU-sized segments just before encryption.
//!
//! [`Coalescer`] does the reverse on the way in: consecutive decrypted segments of one TCP
//! flow become one super-packet and one TUN `write` (what GRO does for a NIC).
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

/// Merges consecutive in-order TCP segments of one flow into one super-packet for a single
/// TUN write. Only plain bulk segments qualify: ACK (PSH allowed on the last), no IPv4
/// options or fragments, identical headers apart from sequence number, IPv4 id and checksums,
/// and all but the last of the same size.
pub struct Coalescer {
    buf: Box<[u8]>,
    /// Bytes of `buf` in use after the virtio_net_hdr; 0 when nothing is pending.
    len: usize,
    ip_len: usize,
    headers: usize,
    mss: usize,
    segments: usize,
    next_seq: u32,
    /// A shorter or PSH segment ends the run.
    closed: bool,
}

/// The largest super-packet: the IPv4 total length field's limit.
const MAX_SUPER: usize = 65535;

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Self {
        Self {
            buf: vec![0; VNET_HDR_LEN + MAX_SUPER].into_boxed_slice(),
            len: 0,
            ip_len: 0,
            headers: 0,
            mss: 0,
            segments: 0,
            next_seq: 0,
            closed: false,
        }
    }

    /// Appends `packet` to the pending super-packet, or starts one if none is pending.
    /// Returns false if it does not fit the pending one (flush with [`Self::take`] and push
    /// again) or cannot be coalesced at all (write it alone).
    pub fn push(&mut self, packet: &[u8]) -> bool {
        let Some((ip_len, headers, seq)) = bulk_segment(packet) else {
            return false;
        };
        let payload = packet.len() - headers;
        if self.len == 0 {
            let out = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + packet.len()];
            out.copy_from_slice(packet);
            self.len = packet.len();
            self.ip_len = ip_len;
            self.headers = headers;
            self.mss = payload;
            self.segments = 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            self.closed = packet[ip_len + 13] & 0x08 != 0;
            return true;
        }
        let pending = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.headers];
        let fits = !self.closed
            && headers == self.headers
            && seq == self.next_seq
            && payload <= self.mss
            && self.len + payload <= MAX_SUPER
            && same_headers(pending, packet, ip_len);
        if !fits {
            return false;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&packet[headers..]);
        self.len += payload;
        self.segments += 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        if payload < self.mss || packet[ip_len + 13] & 0x08 != 0 {
            self.closed = true;
            let flags = VNET_HDR_LEN + self.ip_len + 13;
            self.buf[flags] |= packet[ip_len + 13] & 0x08;
        }
        true
    }

    /// The pending packet, ready to write to a TUN device with `IFF_VNET_HDR` (header
    /// included), and forgets it. A single segment goes as it came, behind an empty header;
    /// several go as one GSO packet with a partial TCP checksum for the kernel to finish.
    pub fn take(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let (hdr, packet) = self.buf.split_at_mut(VNET_HDR_LEN);
        let packet = &mut packet[..len];
        hdr.fill(0);
        if self.segments > 1 {
            let ipv6 = packet[0] >> 4 == 6;
            let ip_len = self.ip_len;
            if ipv6 {
                packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            } else {
                packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                packet[10..12].copy_from_slice(&[0, 0]);
                let c = !fold(sum(&packet[..ip_len], 0));
                packet[10..12].copy_from_slice(&c.to_be_bytes());
            }
            // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum; the kernel
            // adds the segment and complements.
            let tcp_len = len - ip_len;
            let partial = fold(pseudo(packet, ipv6, 6, tcp_len));
            packet[ip_len + 16..ip_len + 18].copy_from_slice(&partial.to_be_bytes());
            hdr[0] = F_NEEDS_CSUM;
            hdr[1] = if ipv6 { GSO_TCPV6 } else { GSO_TCPV4 };
            hdr[2..4].copy_from_slice(&(self.headers as u16).to_ne_bytes());
            hdr[4..6].copy_from_slice(&(self.mss as u16).to_ne_bytes());
            hdr[6..8].copy_from_slice(&(ip_len as u16).to_ne_bytes());
            hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
        }
        Some(&self.buf[..VNET_HDR_LEN + len])
    }
}

/// (IP header length, all headers' length, sequence number) of a TCP segment that may be
/// coalesced: ACK or ACK+PSH, with payload, IPv4 without options or fragmentation, or IPv6
/// with TCP as the next header.
fn bulk_segment(p: &[u8]) -> Option<(usize, usize, u32)> {
    let ip_len = match p.first()? >> 4 {
        4 if p.len() >= 20 && p[0] == 0x45 && p[9] == 6 => {
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff; // MF + offset
            (total == p.len() && fragment == 0).then_some(20)?
        }
        6 if p.len() >= 40 && p[6] == 6 => {
            let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
            (payload + 40 == p.len()).then_some(40)?
        }
        _ => return None,
    };
    let tcp = p.get(ip_len..ip_len + 20)?;
    let headers = ip_len + usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if !(flags == 0x10 || flags == 0x18) || headers < ip_len + 20 || p.len() <= headers {
        return None;
    }
    Some((
        ip_len,
        headers,
        u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
    ))
}

/// Whether two segments' headers match apart from what changes per segment (IPv4 length, id,
/// checksum; TCP sequence number, PSH, checksum).
fn same_headers(a: &[u8], b: &[u8], ip_len: usize) -> bool {
    let ip_same = if ip_len == 20 {
        a[0..2] == b[0..2] && a[6..10] == b[6..10] && a[12..20] == b[12..20]
    } else {
        a[0..4] == b[0..4] && a[6..40] == b[6..40]
    };
    let t = ip_len;
    ip_same
        && a[t..t + 4] == b[t..t + 4]
        && a[t + 8..t + 13] == b[t + 8..t + 13]
        && a[t + 14..t + 16] == b[t + 14..t + 16]
        && a[t + 18..] == b[t + 18..a.len()]
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

/// The Internet checksum's one's-complement sum of `data` (big-endian 16-bit words, an odd
/// last byte padded with zero) added to `acc`, folded to at most 16 bits.
///
/// It adds 32-bit words into a 64-bit accumulator (which the compiler vectorises) rather
/// than 16-bit words with a carry check each: 2^16 ≡ 1 modulo 0xffff, so a 32-bit word
/// counts as its two halves, and folding the carries back at the end gives the same sum.
/// This runs over every byte of every segment cut from a TSO super-packet, where it cost as
/// much as the encryption when done 16 bits at a time.
fn sum(data: &[u8], acc: u32) -> u32 {
    let mut wide = u64::from(acc);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        wide += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a, b, c] => wide += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => wide += u64::from(u16::from_be_bytes([a, b])),
        [a] => wide += u64::from(a) << 8,
        _ => {}
    }
    // At most 2^16 words of 2^32 each plus acc: well inside 64 bits. Fold to 16 bits (a
    // non-zero sum stays non-zero, as with end-around carries).
    while wide > 0xffff {
        wide = (wide & 0xffff) + (wide >> 16);
    }
    wide as u32
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests;
