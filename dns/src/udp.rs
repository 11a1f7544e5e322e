//! Batched UDP for the server's receive threads: one `recvmmsg` fills up to [`BATCH`]
//! queries with their senders' addresses, the answers go back in one `sendmmsg` to the very
//! addresses the kernel wrote (IPv4 or IPv6, never converted on the way), and a [`Stop`]
//! wakes a thread blocked waiting for datagrams so that it exits promptly.
//!
//! Every buffer is allocated once, in [`Batch::new`]: receiving, answering and sending a batch
//! allocates nothing. All of the crate's `unsafe` lives here. No DNS here: what to answer is
//! the caller's (`server.rs`), which sees a query as bytes and fills a reply buffer.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Datagrams per `recvmmsg` / `sendmmsg`. Under load a batch fills up and one system call
/// each way serves this many queries; idle, a batch holds whatever one wakeup found.
pub(crate) const BATCH: usize = 32;
// The queued set is a u64 bit set.
const _: () = assert!(BATCH <= 64);

/// Receive buffer per datagram: queries are small, but a hostile one may not be, and it must
/// be read whole to be judged (anything longer is cut, and then fails to parse).
pub(crate) const QUERY_SLOT: usize = 4096;

/// Reply buffer capacity per datagram: the largest fast-path answer (the EDNS payload we
/// offer). A longer reply still fits, at the cost of one allocation that is then kept.
pub(crate) const REPLY_CAPACITY: usize = 1232;

/// Receive buffer asked of the kernel per socket. The default (208 KiB, about 270 queries
/// counting the kernel's per-datagram overhead) overflows when a resolver's burst lands while
/// the thread is busy: dnsperf with 1,000 queries in flight lost 0.4 % of them there, and each
/// loss costs its client a retry timeout. 4 MiB holds about 5,000 queries, some 50 ms of work
/// at 100k answers per second: well inside any client's timeout.
pub(crate) const RECEIVE_BUFFER: usize = 4 << 20;

/// `sizeof(struct sockaddr_storage)`, as the kernel takes it.
const NAME_LEN: libc::socklen_t = size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// Asks for a [`RECEIVE_BUFFER`]-octet receive buffer on `socket`: past `net.core.rmem_max`
/// where we may (SO_RCVBUFFORCE needs CAP_NET_ADMIN), else up to it. Best effort: a smaller
/// buffer only means drops sooner under bursts.
pub(crate) fn size_receive_buffer(socket: BorrowedFd<'_>) {
    let size = i32::try_from(RECEIVE_BUFFER).unwrap_or(i32::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: passes a pointer to a live i32 and its size, as SOL_SOCKET int options
        // expect.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Preallocated buffers for one socket's batches: queries in, senders, replies out.
///
/// Order of use, per batch: [`Batch::recv`], then for each datagram [`Batch::query`] /
/// [`Batch::answer`] (and [`Batch::source`] for datagrams handed elsewhere), then
/// [`Batch::send`], then [`Batch::answered`] to account for what went out.
pub(crate) struct Batch {
    /// `BATCH` receive slots of [`QUERY_SLOT`] octets, one after another.
    queries: Box<[u8]>,
    /// Octets received in each slot (at most [`QUERY_SLOT`]).
    lens: [usize; BATCH],
    /// Each sender's address as the kernel wrote it, and its length: the reply's destination.
    names: [libc::sockaddr_storage; BATCH],
    name_lens: [libc::socklen_t; BATCH],
    /// One reply buffer per slot, kept across batches.
    replies: Box<[Vec<u8>]>,
    /// The slots whose reply is queued, in order (`answering[..answers]`), and as a bit set.
    answering: [usize; BATCH],
    answers: usize,
    queued: u64,
    /// Datagrams received by the last [`Batch::recv`].
    count: usize,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Self {
            queries: vec![0u8; BATCH * QUERY_SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            names: unsafe { zeroed() },
            name_lens: [0; BATCH],
            replies: (0..BATCH)
                .map(|_| Vec::with_capacity(REPLY_CAPACITY))
                .collect(),
            answering: [0; BATCH],
            answers: 0,
            queued: 0,
            count: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams waiting on `socket` without blocking (one
    /// `recvmmsg`), replacing the previous batch. `WouldBlock` when none were waiting.
    pub(crate) fn recv(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        self.count = 0;
        self.answers = 0;
        self.queued = 0;
        // SAFETY: iovec and mmsghdr are plain old data; all-zero is a valid value.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, ((header, iovec), slot)) in headers
            .iter_mut()
            .zip(&mut iovecs)
            .zip(self.queries.chunks_exact_mut(QUERY_SLOT))
            .enumerate()
        {
            iovec.iov_base = slot.as_mut_ptr().cast();
            iovec.iov_len = slot.len();
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = (&raw mut self.names[i]).cast();
            header.msg_hdr.msg_namelen = NAME_LEN;
        }
        // SAFETY: each header points at one live iovec over its own live QUERY_SLOT-octet
        // slot and at its own live sockaddr_storage of the declared length; nothing else
        // touches them during the call, and `headers` holds BATCH entries.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        for (i, header) in headers.iter().enumerate().take(n) {
            self.lens[i] = (header.msg_len as usize).min(QUERY_SLOT);
            self.name_lens[i] = header.msg_hdr.msg_namelen.min(NAME_LEN);
        }
        self.count = n;
        Ok(n)
    }

    /// How many datagrams the last [`Batch::recv`] brought.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The `i`th datagram of the batch (empty past [`Batch::len`]).
    pub(crate) fn query(&self, i: usize) -> &[u8] {
        if i >= self.count {
            return &[];
        }
        &self.queries[i * QUERY_SLOT..][..self.lens[i]]
    }

    /// Who sent the `i`th datagram; `None` past [`Batch::len`] or for an address family
    /// other than IPv4 and IPv6 (which a UDP/IP socket does not produce).
    pub(crate) fn source(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.count {
            return None;
        }
        from_storage(&self.names[i], self.name_lens[i])
    }

    /// Lets `reply` write the answer to the `i`th datagram into that slot's reply buffer
    /// (cleared first is up to `reply`); when it returns true the answer is queued for
    /// [`Batch::send`]. Returns what `reply` returned; false past [`Batch::len`] or for a
    /// slot already answered.
    pub(crate) fn answer(
        &mut self,
        i: usize,
        reply: impl FnOnce(&[u8], &mut Vec<u8>) -> bool,
    ) -> bool {
        if i >= self.count || self.queued & (1 << i) != 0 {
            return false;
        }
        let query = &self.queries[i * QUERY_SLOT..][..self.lens[i]];
        if !reply(query, &mut self.replies[i]) {
            return false;
        }
        self.answering[self.answers] = i;
        self.answers += 1;
        self.queued |= 1 << i;
        true
    }

    /// Sends every queued answer to its datagram's sender with as few `sendmmsg` calls as
    /// the kernel allows (one, normally), blocking while the socket's send buffer is full.
    /// An answer the kernel refuses outright (no route, say) is skipped: returns how many
    /// were, with the last such error.
    pub(crate) fn send(&mut self, socket: BorrowedFd<'_>) -> (usize, Option<io::Error>) {
        // SAFETY: iovec and mmsghdr are plain old data; all-zero is a valid value.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let queued = &self.answering[..self.answers];
        for ((header, iovec), &i) in headers.iter_mut().zip(&mut iovecs).zip(queued) {
            let reply = &self.replies[i];
            // sendmmsg only reads through these pointers, despite their `*mut` type.
            iovec.iov_base = reply.as_ptr().cast_mut().cast();
            iovec.iov_len = reply.len();
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = (&raw const self.names[i]).cast_mut().cast();
            header.msg_hdr.msg_namelen = self.name_lens[i];
        }
        let mut skipped = 0;
        let mut last_error = None;
        let mut next = 0;
        while next < queued.len() {
            let remaining = &mut headers[next..queued.len()];
            // SAFETY: each of the `remaining.len()` headers points at one live iovec over a
            // live reply buffer of the stated length and at a live sockaddr of the stated
            // length (as the kernel wrote it); the kernel only reads them during the call.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    remaining.as_mut_ptr(),
                    remaining.len() as libc::c_uint,
                    0,
                )
            };
            match usize::try_from(n) {
                Ok(sent) if sent > 0 => next += sent,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        // The first remaining message failed on its own: skip it, go on.
                        skipped += 1;
                        next += 1;
                        last_error = Some(error);
                    }
                }
            }
        }
        (skipped, last_error)
    }

    /// The queued answers, each with its query, in the order they were queued.
    pub(crate) fn answered(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.answering[..self.answers]
            .iter()
            .map(|&i| (self.query(i), self.replies[i].as_slice()))
    }
}

/// Tells receive threads to stop, and wakes those blocked in [`Stop::wait_readable`] (an
/// eventfd every waiter polls beside its socket). Shared by all the threads of one server.
pub(crate) struct Stop {
    stopped: AtomicBool,
    wake: OwnedFd,
}

/// What [`Stop::wait_readable`] woke up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wakeup {
    /// The socket has a datagram (or an error) to read.
    Readable,
    /// [`Stop::stop`] was called.
    Stopped,
}

impl Stop {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor that
        // nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            stopped: AtomicBool::new(false),
            // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Marks the threads stopped and wakes every waiter, now and later (the eventfd is never
    /// read, so it stays readable). Idempotent.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes the 8 octets of a live u64 to the eventfd, as eventfd(2) expects.
        // Failure only means the counter is saturated: it is readable already.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Whether [`Stop::stop`] was called: checked between batches, which under load never
    /// wait.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Blocks until `socket` is readable or the threads are stopped.
    pub(crate) fn wait_readable(&self, socket: BorrowedFd<'_>) -> io::Result<Wakeup> {
        loop {
            if self.is_stopped() {
                return Ok(Wakeup::Stopped);
            }
            let mut fds = [
                libc::pollfd {
                    fd: socket.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: passes a live array of two pollfds and its length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if rc < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if fds[1].revents != 0 {
                return Ok(Wakeup::Stopped);
            }
            if fds[0].revents != 0 {
                return Ok(Wakeup::Readable);
            }
        }
    }
}

/// The address in `storage` (as recvmmsg wrote it, `len` octets), if IPv4 or IPv6.
fn from_storage(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and aligned for.
            let sin = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it is large
            // enough and aligned for.
            let sin6 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
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
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn bound(addr: &str) -> UdpSocket {
        let socket = UdpSocket::bind(addr).expect("bind loopback");
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        socket
    }

    /// Receives until `want` datagrams are in the batch (they may arrive over several calls
    /// only if the kernel is slow; one recv normally takes them all).
    fn recv_at_least(batch: &mut Batch, server: &UdpSocket, stop: &Stop, want: usize) {
        assert_eq!(
            stop.wait_readable(server.as_fd()).expect("poll"),
            Wakeup::Readable
        );
        let n = batch.recv(server.as_fd()).expect("recvmmsg");
        assert!(n >= 1 && n <= want, "got {n}");
    }

    #[test]
    fn batch_answers_each_sender_at_its_own_address() {
        let server = bound("127.0.0.1:0");
        let addr = server.local_addr().expect("addr");
        let clients: Vec<UdpSocket> = (0..5).map(|_| bound("127.0.0.1:0")).collect();
        for (k, client) in clients.iter().enumerate() {
            client.send_to(&[b'q', k as u8], addr).expect("send");
        }
        let stop = Stop::new().expect("eventfd");
        let mut batch = Batch::new();
        let mut seen = Vec::new();
        while seen.len() < clients.len() {
            recv_at_least(&mut batch, &server, &stop, clients.len() - seen.len());
            for i in 0..batch.len() {
                let from = batch.source(i).expect("ipv4 sender");
                seen.push(from);
                // Answer every other query: unanswered slots must not be sent.
                batch.answer(i, |query, out| {
                    out.clear();
                    out.extend_from_slice(b"a");
                    out.extend_from_slice(query);
                    query[1] % 2 == 0
                });
            }
            assert_eq!(batch.send(server.as_fd()).0, 0);
        }
        let mut expected: Vec<SocketAddr> = clients
            .iter()
            .map(|c| c.local_addr().expect("addr"))
            .collect();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected);
        for (k, client) in clients.iter().enumerate() {
            if k % 2 == 1 {
                continue;
            }
            let mut buf = [0u8; 16];
            let (len, from) = client.recv_from(&mut buf).expect("answer");
            assert_eq!(from, addr);
            assert_eq!(&buf[..len], &[b'a', b'q', k as u8]);
        }
        clients[1].set_nonblocking(true).expect("nonblocking");
        assert!(
            clients[1].recv_from(&mut [0u8; 16]).is_err(),
            "unanswered got a reply"
        );
    }

    #[test]
    fn batch_speaks_ipv6() {
        let Ok(server) = UdpSocket::bind("[::1]:0") else {
            panic!("this test needs IPv6 loopback");
        };
        server.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let client = bound("[::1]:0");
        client
            .send_to(b"v6", server.local_addr().expect("addr"))
            .expect("send");
        let stop = Stop::new().expect("eventfd");
        let mut batch = Batch::new();
        recv_at_least(&mut batch, &server, &stop, 1);
        assert_eq!(batch.query(0), b"v6");
        assert_eq!(batch.source(0), Some(client.local_addr().expect("addr")));
        assert!(batch.answer(0, |q, out| {
            out.clear();
            out.extend_from_slice(q);
            true
        }));
        assert_eq!(batch.send(server.as_fd()).0, 0);
        let mut buf = [0u8; 8];
        let (len, _) = client.recv_from(&mut buf).expect("answer");
        assert_eq!(&buf[..len], b"v6");
    }

    #[test]
    fn recv_without_datagrams_would_block_and_a_long_one_is_cut() {
        let server = bound("127.0.0.1:0");
        let mut batch = Batch::new();
        let error = batch.recv(server.as_fd()).expect_err("nothing waiting");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(batch.len(), 0);

        let client = bound("127.0.0.1:0");
        client
            .send_to(
                &vec![7u8; QUERY_SLOT + 100],
                server.local_addr().expect("addr"),
            )
            .expect("send");
        let stop = Stop::new().expect("eventfd");
        recv_at_least(&mut batch, &server, &stop, 1);
        assert_eq!(batch.query(0).len(), QUERY_SLOT);
        assert_eq!(batch.query(1), b"");
        assert_eq!(batch.source(1), None);
    }

    #[test]
    fn a_slot_is_answered_at_most_once() {
        let server = bound("127.0.0.1:0");
        let client = bound("127.0.0.1:0");
        client
            .send_to(b"x", server.local_addr().expect("addr"))
            .expect("send");
        let stop = Stop::new().expect("eventfd");
        let mut batch = Batch::new();
        recv_at_least(&mut batch, &server, &stop, 1);
        let fill = |_: &[u8], out: &mut Vec<u8>| {
            out.clear();
            out.push(1);
            true
        };
        assert!(batch.answer(0, fill));
        assert!(!batch.answer(0, fill));
        assert!(!batch.answer(5, fill));
        assert_eq!(batch.answered().count(), 1);
    }

    #[test]
    fn receive_buffer_grows_past_the_default() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        let before = socket.recv_buffer_size().expect("SO_RCVBUF");
        size_receive_buffer(socket.as_fd());
        let after = socket.recv_buffer_size().expect("SO_RCVBUF");
        // The kernel caps the plain option at rmem_max, which may be the default itself.
        assert!(after >= before, "{after} < {before}");
    }

    #[test]
    fn stop_wakes_a_blocked_waiter() {
        let server = bound("127.0.0.1:0");
        let stop = Arc::new(Stop::new().expect("eventfd"));
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait_readable(server.as_fd()).expect("poll"))
        };
        stop.stop();
        assert_eq!(waiter.join().expect("no panic"), Wakeup::Stopped);
        assert!(stop.is_stopped());
        // Later waits return at once too.
        let other = bound("127.0.0.1:0");
        assert_eq!(
            stop.wait_readable(other.as_fd()).expect("poll"),
            Wakeup::Stopped
        );
    }
}
