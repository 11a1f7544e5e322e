//! Batched UDP for the device shell: `recvmmsg` fills many datagrams per system call (and,
//! with UDP GRO, each slot may hold a whole run of equal-size datagrams that the kernel kept
//! together), outgoing datagrams queue until the end of a batch and leave in one `sendmmsg`,
//! plus sized socket buffers.
//!
//! Per-packet system calls are what limits a userspace tunnel on this machine (about 100k
//! packets per second per core, see `bench/RESULTS.md`), so this halves the calls on both the
//! sending side (one TUN read per packet, a fraction of a send) and the receiving side (a
//! fraction of a receive, one TUN write). No decisions here: what to send comes from the data
//! plane; a datagram the kernel will not take is dropped and counted by the caller, as a
//! router would.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use tracing::debug;

/// Datagrams per `recvmmsg` / `sendmmsg`.
pub const BATCH: usize = 32;

/// Largest datagram we receive whole: any IP packet plus WireGuard's overhead. Peers with a
/// larger MTU than ours are still read in full.
const RECV_SLOT: usize = 65536 + 64;

/// Socket buffer size asked for (both directions). The default (~200 KiB) overflows under a
/// single TCP stream: the receiving side dropped 5–19 % of datagrams in the issue's
/// measurements. 4 MiB holds a few milliseconds at 10 Gbit/s.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Sets both socket buffers to [`SOCKET_BUFFER`], past `net.core.[rw]mem_max` where we are
/// allowed to (`SO_*BUFFORCE` needs CAP_NET_ADMIN, which a gateway has). Best effort.
pub fn size_buffers(fd: RawFd) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(fd, plain, SOCKET_BUFFER);
        }
    }
}

fn setsockopt_int(fd: RawFd, name: i32, value: usize) -> io::Result<()> {
    let value = i32::try_from(value).unwrap_or(i32::MAX);
    // SAFETY: passes a pointer to an i32 and its size, as SOL_SOCKET int options expect.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `UDP_GRO` from linux/udp.h (not in the libc crate for glibc targets): as a socket option,
/// lets the kernel hand us a run of same-flow datagrams as one buffer; as a cmsg on receive,
/// the size of each datagram in it (the last may be shorter).
const UDP_GRO: i32 = 104;

/// Asks the kernel to keep UDP GSO/GRO runs whole up to this socket (one receive slot then
/// holds up to 64 KiB of datagrams, split again by [`segments`]). Best effort: `false` if the
/// kernel does not know the option (datagrams then arrive one by one, as before).
pub fn enable_gro(fd: RawFd) -> bool {
    let on: i32 = 1;
    // SAFETY: passes a pointer to an i32 and its size, as SOL_UDP int options expect.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&raw const on).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Room for one cmsg carrying an int (the `UDP_GRO` segment size), in `u64`s so that the
/// buffer is aligned for `cmsghdr`.
const CONTROL_WORDS: usize = 4;

/// The `UDP_GRO` segment size in a received message's control data, if the kernel put one
/// there (a run of datagrams coalesced into one buffer). `control` is the control buffer,
/// `len` the `msg_controllen` the kernel left.
fn gro_segment_size(control: &mut [u64], len: usize) -> Option<usize> {
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = len.min(size_of_val(control));
    // SAFETY: the CMSG_* macros walk `hdr.msg_control` within `msg_controllen` bytes (both
    // describe `control`), and return null past the end; `cmsg_len` is checked to cover an
    // int before CMSG_DATA is read (unaligned, as cmsg data may be).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP
                && (*cmsg).cmsg_type == UDP_GRO
                && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(size_of::<i32>() as u32) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
                return usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    None
}

/// The datagrams in one received buffer: `segment` bytes each (the last may be shorter) when
/// the kernel coalesced a run, else the buffer is one datagram. An empty buffer is one empty
/// datagram (UDP allows them; the data plane drops it as malformed).
pub fn segments(buf: &[u8], segment: Option<usize>) -> impl Iterator<Item = &[u8]> {
    let size = segment.unwrap_or(buf.len()).max(1);
    let empty = buf.is_empty().then_some(buf);
    buf.chunks(size).chain(empty)
}

/// Receive slots for `recvmmsg`.
pub struct RecvBatch {
    slots: Vec<Box<[u8]>>,
    names: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    controls: Vec<[u64; CONTROL_WORDS]>,
    /// Per slot, the `UDP_GRO` segment size if the slot holds a coalesced run.
    segment_sizes: Vec<Option<usize>>,
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            slots: (0..BATCH)
                .map(|_| vec![0u8; RECV_SLOT].into_boxed_slice())
                .collect(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            names: vec![unsafe { zeroed() }; BATCH],
            lens: vec![0; BATCH],
            controls: vec![[0; CONTROL_WORDS]; BATCH],
            segment_sizes: vec![None; BATCH],
            count: 0,
        }
    }

    /// One `recvmmsg` (non-blocking). Returns how many datagrams arrived; `WouldBlock` when
    /// none were waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovecs: Vec<libc::iovec> = self
            .slots
            .iter_mut()
            .map(|s| libc::iovec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut headers: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
        for (((h, iov), name), control) in headers
            .iter_mut()
            .zip(&mut iovecs)
            .zip(&mut self.names)
            .zip(&mut self.controls)
        {
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = control.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>();
        }
        // SAFETY: every header points at a live iovec over a live slot, a live
        // sockaddr_storage and a live control buffer, all sized as declared, for the duration
        // of the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        for (i, h) in headers.iter().enumerate().take(n) {
            self.lens[i] = h.msg_len as usize;
            self.segment_sizes[i] =
                gro_segment_size(&mut self.controls[i], h.msg_hdr.msg_controllen);
        }
        self.count = n;
        Ok(n)
    }

    /// The `i`th buffer of the last [`Self::recv`], its sender and its `UDP_GRO` segment
    /// size (`None`: one datagram; see [`segments`]). `None` if the kernel reported an
    /// address family we do not speak.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8], Option<usize>)> {
        if i >= self.count {
            return None;
        }
        let from = from_storage(&self.names[i])?;
        let buf = &self.slots[i][..self.lens[i].min(RECV_SLOT)];
        Some((from, buf, self.segment_sizes[i]))
    }
}

/// `UDP_SEGMENT` from linux/udp.h (not in the libc crate for glibc targets): a cmsg giving
/// the segment size of a UDP GSO send.
const UDP_SEGMENT: i32 = 103;

/// The kernel segments at most this many datagrams from one GSO send (UDP_MAX_SEGMENTS).
const MAX_SEGMENTS: usize = 64;

/// Outgoing datagrams waiting for one `sendmmsg`. Runs of datagrams to the same address with
/// the same length (the last may be shorter), as a bulk TCP stream produces, leave as one
/// UDP GSO message: the kernel walks its stack once per run, not once per datagram. If the
/// kernel refuses GSO (old kernel, no checksum offload on the route), it is turned off for
/// good and every datagram goes as its own message.
pub struct SendQueue {
    slot_len: usize,
    slots: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    names: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    count: usize,
    gso: bool,
}

/// What became of a queued datagram that could not wait.
pub enum Queued {
    Queued,
    /// Larger than a slot: the caller sends it alone.
    TooLarge,
}

impl SendQueue {
    /// Slots hold datagrams up to `slot_len` bytes (the TUN MTU plus WireGuard's overhead).
    pub fn new(slot_len: usize) -> Self {
        Self {
            slot_len,
            slots: (0..BATCH)
                .map(|_| vec![0u8; slot_len].into_boxed_slice())
                .collect(),
            lens: vec![0; BATCH],
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            names: vec![(unsafe { zeroed() }, 0); BATCH],
            count: 0,
            gso: true,
        }
    }

    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Copies `datagram` for `to` into the next slot. The caller flushes when full.
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) -> Queued {
        if datagram.len() > self.slot_len || self.is_full() {
            return Queued::TooLarge;
        }
        let i = self.count;
        self.slots[i][..datagram.len()].copy_from_slice(datagram);
        self.lens[i] = datagram.len();
        if self.addrs[i] != to || self.names[i].1 == 0 {
            self.addrs[i] = to;
            self.names[i] = to_storage(to);
        }
        self.count += 1;
        Queued::Queued
    }

    /// Sends everything queued with as few `sendmmsg` calls as the kernel allows. Returns how
    /// many datagrams could not be sent (socket buffer full, unreachable): dropped.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let mut next = 0;
        let mut dropped = 0;
        while next < self.count {
            match self.send_from(fd, next) {
                Ok(n) => next += n,
                // Everything left would block as well.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dropped += self.count - next;
                    break;
                }
                // A GSO message the kernel cannot take: retry it datagram by datagram.
                Err(e) if self.gso && is_gso_refusal(&e) => {
                    debug!(error = %e, "UDP GSO refused; sending datagrams singly from now on");
                    self.gso = false;
                }
                // The first message failed (unreachable, too big): drop its datagrams, go on.
                Err(_) => {
                    let run = self.run_len(next);
                    dropped += run;
                    next += run;
                }
            }
        }
        self.count = 0;
        dropped
    }

    /// How many datagrams from `i` on go as one message.
    fn run_len(&self, i: usize) -> usize {
        if !self.gso {
            return 1;
        }
        let size = self.lens[i];
        let mut j = i + 1;
        while j < self.count
            && j - i < MAX_SEGMENTS
            && self.addrs[j] == self.addrs[i]
            && self.lens[j] <= size
        {
            j += 1;
            if self.lens[j - 1] < size {
                break; // a shorter datagram ends a run
            }
        }
        j - i
    }

    /// One `sendmmsg` of the queued datagrams from index `from` on; how many datagrams it
    /// sent (at least one).
    fn send_from(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let mut iovecs: Vec<libc::iovec> = (from..self.count)
            .map(|i| libc::iovec {
                iov_base: self.slots[i].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            })
            .collect();
        // Message boundaries: (first datagram, datagrams in it).
        let mut runs = Vec::new();
        let mut i = from;
        while i < self.count {
            let n = self.run_len(i);
            runs.push((i, n));
            i += n;
        }
        // SAFETY: CMSG_SPACE only computes a size.
        let cmsg_space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        let mut controls = vec![0u8; cmsg_space * runs.len()];
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut headers: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; runs.len()];
        for (k, (h, &(first, n))) in headers.iter_mut().zip(&runs).enumerate() {
            let (name, len) = &mut self.names[first];
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = *len;
            h.msg_hdr.msg_iov = iovecs[first - from..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = n;
            if n > 1 {
                let control = &mut controls[k * cmsg_space..(k + 1) * cmsg_space];
                h.msg_hdr.msg_control = control.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = cmsg_space;
                let segment = u16::try_from(self.lens[first]).unwrap_or(u16::MAX);
                // SAFETY: msg_control points at cmsg_space zeroed bytes, room for exactly one
                // cmsghdr carrying a u16, so FIRSTHDR is non-null and DATA is in bounds.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
                }
            }
        }
        // SAFETY: every header points at live iovecs over live slots, a live initialised
        // sockaddr of the stated length and (for runs) a live control buffer, for the
        // duration of the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                headers.len() as u32,
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Ok(n) if n > 0 => Ok(runs.iter().take(n).map(|(_, len)| len).sum()),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

/// The errors a kernel gives for a GSO send it cannot do.
fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into the storage.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const *storage).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6) into the storage.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const *storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_buffer_splits_into_its_gro_segments() {
        let buf: Vec<u8> = (0..10).collect();
        let split = |segment| segments(&buf, segment).collect::<Vec<_>>();
        assert_eq!(split(None), vec![&buf[..]]);
        assert_eq!(split(Some(4)), vec![&buf[..4], &buf[4..8], &buf[8..]]);
        assert_eq!(split(Some(5)), vec![&buf[..5], &buf[5..]]);
        assert_eq!(split(Some(10)), vec![&buf[..]]);
        assert_eq!(split(Some(64)), vec![&buf[..]]);
        let empty: &[u8] = &[];
        assert_eq!(segments(empty, None).collect::<Vec<_>>(), vec![empty]);
        assert_eq!(segments(empty, Some(4)).collect::<Vec<_>>(), vec![empty]);
    }

    /// Writes cmsgs `(level, type, data)` into `control` the way the kernel lays them out;
    /// returns the control length.
    fn write_cmsgs(control: &mut [u64], cmsgs: &[(i32, i32, &[u8])]) -> usize {
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = size_of_val(control);
        let mut total = 0;
        // SAFETY: the buffer is large enough for the cmsgs the tests write (checked by
        // asserting each header is non-null); data is written within CMSG_LEN.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            for (level, kind, data) in cmsgs {
                assert!(!cmsg.is_null());
                (*cmsg).cmsg_level = *level;
                (*cmsg).cmsg_type = *kind;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
                total += libc::CMSG_SPACE(data.len() as u32) as usize;
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        total
    }

    #[test]
    fn the_gro_segment_size_is_read_from_control_data_and_nothing_else() {
        let size = 1452i32.to_ne_bytes();
        let mut control = [0u64; 16];
        let len = write_cmsgs(&mut control, &[(libc::SOL_UDP, UDP_GRO, &size)]);
        assert_eq!(gro_segment_size(&mut control, len), Some(1452));
        // Behind another cmsg.
        let mut control = [0u64; 16];
        let tos = 0i32.to_ne_bytes();
        let len = write_cmsgs(
            &mut control,
            &[
                (libc::SOL_IP, libc::IP_TOS, &tos[..1]),
                (libc::SOL_UDP, UDP_GRO, &size),
            ],
        );
        assert_eq!(gro_segment_size(&mut control, len), Some(1452));
        // No control data, another option only, a cmsg too short for an int, a zero or
        // negative size: no segment size.
        assert_eq!(gro_segment_size(&mut control, 0), None);
        let mut control = [0u64; 16];
        let len = write_cmsgs(&mut control, &[(libc::SOL_IP, libc::IP_TOS, &tos[..1])]);
        assert_eq!(gro_segment_size(&mut control, len), None);
        let mut control = [0u64; 16];
        let len = write_cmsgs(&mut control, &[(libc::SOL_UDP, UDP_GRO, &size[..2])]);
        assert_eq!(gro_segment_size(&mut control, len), None);
        for bad in [0i32, -1] {
            let mut control = [0u64; 16];
            let len = write_cmsgs(
                &mut control,
                &[(libc::SOL_UDP, UDP_GRO, &bad.to_ne_bytes())],
            );
            assert_eq!(gro_segment_size(&mut control, len), None);
        }
        // A control length longer than the buffer is capped, not trusted.
        let mut control = [0u64; CONTROL_WORDS];
        let len = write_cmsgs(&mut control, &[(libc::SOL_UDP, UDP_GRO, &size)]);
        assert!(len <= size_of_val(&control));
        assert_eq!(gro_segment_size(&mut control, 1 << 20), Some(1452));
    }

    #[test]
    fn a_gso_run_arrives_whole_on_a_gro_socket_and_splits_back_into_its_datagrams() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        size_buffers(b.as_raw_fd());
        assert!(enable_gro(b.as_raw_fd()), "kernel without UDP_GRO");
        let to = b.local_addr().unwrap();
        // One run: 20 datagrams of 300 bytes and a shorter last one.
        let mut sent: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 300]).collect();
        sent.push(vec![0xee; 120]);
        let mut queue = SendQueue::new(1500);
        for d in &sent {
            assert!(matches!(queue.push(to, d), Queued::Queued));
        }
        assert_eq!(queue.flush(a.as_raw_fd()), 0);
        assert!(queue.gso);

        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        let mut coalesced = 0;
        b.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        while got.len() < sent.len() {
            let mut peek = [0u8; 1];
            b.peek(&mut peek).unwrap();
            let n = batch.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (from, buf, segment) = batch.get(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                if let Some(size) = segment {
                    assert_eq!(size, 300);
                    coalesced += 1;
                }
                got.extend(segments(buf, segment).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, sent);
        assert!(
            coalesced > 0,
            "loopback kept the GSO run whole up to the socket"
        );
    }

    #[test]
    fn socket_addresses_round_trip_through_sockaddr_storage() {
        for addr in ["10.1.2.3:51820", "[fd00::1]:443", "[fe80::1%7]:9"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(from_storage(&to_storage(addr).0), Some(addr));
        }
    }

    #[test]
    fn batched_send_and_receive_move_every_datagram_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        size_buffers(b.as_raw_fd());
        let to = b.local_addr().unwrap();
        let mut queue = SendQueue::new(1500);
        for i in 0..BATCH {
            assert!(matches!(queue.push(to, &[i as u8; 100]), Queued::Queued));
        }
        assert!(queue.is_full());
        assert!(matches!(queue.push(to, &[0; 10]), Queued::TooLarge));
        assert_eq!(queue.flush(a.as_raw_fd()), 0);
        assert!(
            queue.gso,
            "loopback takes UDP GSO: the run left as one message"
        );
        assert!(matches!(
            SendQueue::new(100).push(to, &[0; 101]),
            Queued::TooLarge
        ));

        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        b.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        while got.len() < BATCH {
            // Block until something is there, then drain with recvmmsg.
            let mut peek = [0u8; 1];
            b.peek(&mut peek).unwrap();
            let n = batch.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (from, d, segment) = batch.get(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                assert_eq!(segment, None, "no UDP_GRO asked for");
                got.push(d.to_vec());
            }
        }
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; 100]);
        }
        assert!(batch.get(BATCH).is_none());
    }

    #[test]
    fn runs_of_mixed_sizes_and_destinations_all_arrive_in_order() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tb, tc) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        // (destination, length): runs broken by a shorter datagram, a longer one and a
        // change of destination.
        let plan = [
            (tb, 300),
            (tb, 300),
            (tb, 120),
            (tb, 300),
            (tc, 300),
            (tb, 400),
            (tb, 400),
        ];
        let mut queue = SendQueue::new(1500);
        for (i, (to, len)) in plan.iter().enumerate() {
            let _ = queue.push(*to, &vec![i as u8; *len]);
        }
        assert_eq!(queue.flush(a.as_raw_fd()), 0);
        assert!(queue.gso);
        for (socket, to) in [(&b, tb), (&c, tc)] {
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            for (i, (_, len)) in plan.iter().enumerate().filter(|(_, (t, _))| *t == to) {
                let mut buf = [0u8; 2048];
                let n = socket.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &vec![i as u8; *len][..], "datagram {i}");
            }
        }
    }
}
