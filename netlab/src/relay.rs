//! Latency (and loss) on the wan, added in userspace: this kernel has no netem, so a relay
//! thread holds packets back instead.
//!
//! In a namespace `ns` (a gateway's), the relay owns a TUN device; a host route per shaped
//! destination (`10.100.0.11/32 dev DEV`) sends every packet for that destination into it.
//! The relay reads each IP packet, drops it with the configured probability, holds it for the
//! configured delay (per destination, in arrival order), and writes it unchanged out of the
//! uplink through a raw IP socket bound to that device (`SO_BINDTODEVICE` makes the kernel skip
//! the host route back into the TUN). Addresses and ports are untouched, so WireGuard sees
//! the same endpoints and never roams. Only the egress of `ns` is shaped, which is enough to
//! lengthen the round trip both ways (probes from either side cross it once).
//!
//! The delays can be changed while it runs ([`Relay::set`]). Dropping the relay stops its
//! thread and closes the TUN, which removes the device and its routes.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::ns;
use crate::wait::Deadline;

/// How often the relay thread looks at its stop flag while idle.
const IDLE_WAKE: Duration = Duration::from_millis(20);
/// Bound on the `ip` commands that route into the relay.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// A packet larger than any MTU in the lab.
const MAX_PACKET: usize = 65_535;

/// What happens to packets for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shaping {
    /// Added one-way delay.
    pub delay: Duration,
    /// Packets dropped, in percent (0..=100).
    pub loss_percent: u8,
}

/// Packets the relay has seen, for the test's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    pub forwarded: u64,
    pub dropped: u64,
}

/// A running relay; see the module docs.
#[derive(Debug)]
pub struct Relay {
    ns: String,
    device: String,
    shaping: Arc<Mutex<BTreeMap<Ipv4Addr, Shaping>>>,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Relay {
    /// Creates TUN `device` in namespace `ns`, routes each destination of `paths` into it,
    /// and starts relaying what arrives out of `uplink`.
    pub fn start(
        ns: &str,
        device: &str,
        uplink: &str,
        paths: &[(Ipv4Addr, Shaping)],
    ) -> anyhow::Result<Relay> {
        let (tun_name, uplink_name) = (device.to_owned(), uplink.to_owned());
        let (tun, raw) = ns::in_netns(ns, move || -> io::Result<(OwnedFd, OwnedFd)> {
            Ok((open_tun(&tun_name)?, open_raw(&uplink_name)?))
        })
        .and_then(|opened| opened)
        .with_context(|| format!("opening the relay's TUN {device} and raw socket in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let shaping = Arc::new(Mutex::new(paths.iter().copied().collect()));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, shaping) = (stop.clone(), shaping.clone());
            let counters = (forwarded.clone(), dropped.clone());
            std::thread::spawn(move || relay_loop(&tun, &raw, &shaping, &stop, &counters))
        };
        let relay = Relay {
            ns: ns.to_owned(),
            device: device.to_owned(),
            shaping,
            stop,
            forwarded,
            dropped,
            thread: Some(thread),
        };
        // From here on, Drop undoes everything.
        ip_in(ns, &["link", "set", "dev", device, "up"])?;
        for (destination, _) in paths {
            let host = format!("{destination}/32");
            ip_in(ns, &["route", "add", &host, "dev", device])?;
        }
        Ok(relay)
    }

    /// Changes how packets for `destination` are treated from now on (packets already held
    /// keep their release time). A destination not routed into the relay is not affected.
    pub fn set(&self, destination: Ipv4Addr, shaping: Shaping) {
        self.shaping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(destination, shaping);
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// The namespace and device, for messages.
    pub fn describe(&self) -> String {
        format!("{} in {}", self.device, self.ns)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Err(e)) => eprintln!("netlab: relay {}: {e}", self.describe()),
                Err(_) => eprintln!("netlab: relay {} panicked", self.describe()),
                Ok(Ok(())) => {}
            }
        }
    }
}

fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ns::run_ok(std::process::Command::new("ip").args(&all), IP_TIMEOUT)?;
    Ok(())
}

/// The relay thread: read, drop or hold, release when due. Ends when `stop` is set.
fn relay_loop(
    tun: &OwnedFd,
    raw: &OwnedFd,
    shaping: &Mutex<BTreeMap<Ipv4Addr, Shaping>>,
    stop: &AtomicBool,
    (forwarded, dropped): &(Arc<AtomicU64>, Arc<AtomicU64>),
) -> io::Result<()> {
    let mut held: BTreeMap<Ipv4Addr, VecDeque<(Deadline, Vec<u8>)>> = BTreeMap::new();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        // Release every packet whose time has come, in arrival order per destination.
        for queue in held.values_mut() {
            while queue.front().is_some_and(|(due, _)| due.passed()) {
                if let Some((_, packet)) = queue.pop_front() {
                    send_raw(raw, &packet);
                    forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let wait = held
            .values()
            .filter_map(|q| q.front().map(|(due, _)| due.remaining()))
            .min()
            .unwrap_or(IDLE_WAKE)
            .min(IDLE_WAKE);
        if !readable(tun, wait)? {
            continue;
        }
        // SAFETY: reading into a buffer we own, at most its length.
        let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        };
        let packet = &buf[..n];
        let Some(destination) = ipv4_destination(packet) else {
            continue;
        };
        let rule = shaping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&destination)
            .copied()
            .unwrap_or_default();
        if rule.loss_percent > 0 && rng.next_percent() < rule.loss_percent {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        held.entry(destination)
            .or_default()
            .push_back((Deadline::after(rule.delay), packet.to_vec()));
    }
    Ok(())
}

/// The destination of an IPv4 packet; `None` for anything else (IPv6 router solicitations
/// the kernel sends on a fresh device, runts).
pub fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

fn readable(fd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
}

/// Sends a whole IPv4 packet as is. A failed send is a lost packet, as on a real link.
fn send_raw(raw: &OwnedFd, packet: &[u8]) {
    let Some(destination) = ipv4_destination(packet) else {
        return;
    };
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from(destination).to_be();
    // SAFETY: the buffer and the address are valid for the lengths given.
    unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
    }
}

/// A TUN device giving plain IP packets (no packet info header, no offloads).
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: a plain open(2) of a constant NUL-terminated path.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} too long"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A raw IPv4 socket that sends whole packets (`IPPROTO_RAW` implies `IP_HDRINCL`) out of
/// `uplink` only.
fn open_raw(uplink: &str) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the option value is the interface name's bytes, valid for its length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            uplink.as_ptr().cast(),
            uplink.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A tiny deterministic generator for loss decisions (no RNG crate, same drops every run).
struct XorShift(u64);

impl XorShift {
    fn next_percent(&mut self) -> u8 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        // The remainder is below 100, so it fits.
        u8::try_from(x % 100).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv4_packets_have_a_destination() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 100, 0, 11]);
        assert_eq!(ipv4_destination(&v4), Some(Ipv4Addr::new(10, 100, 0, 11)));
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        assert_eq!(ipv4_destination(&v6), None);
        assert_eq!(ipv4_destination(&v4[..19]), None);
    }

    #[test]
    fn loss_draws_spread_over_percentages() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let below_ten = (0..10_000).filter(|_| rng.next_percent() < 10).count();
        assert!((800..1200).contains(&below_ten), "{below_ten}");
    }
}
