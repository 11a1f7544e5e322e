//! The MTU of the link datagrams to an address leave by, as the kernel's route says: a UDP
//! socket connected to the address (nothing is sent) and `IP_MTU`/`IPV6_MTU` read back
//! (ip(7), ipv6(7)). For `diagnose`'s check that the tunnel MTU fits the underlying link.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;

/// The path MTU the kernel knows towards `to` (the outgoing interface's MTU unless a smaller
/// one was learnt), or the error of connecting or asking.
pub fn link_mtu(to: SocketAddr) -> std::io::Result<u16> {
    let bind: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(to)?;
    let (level, name) = if to.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `socket` for the whole call, and `mtu`/`len`
    // are a properly sized and aligned c_int and its length, as getsockopt(2) requires.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u16::try_from(mtu).map_err(|_| std::io::Error::other(format!("kernel reported MTU {mtu}")))
}

/// WireGuard's overhead over a link of this family: outer IP header, UDP, and the data
/// message's header and tag (16 + 16).
pub fn wireguard_overhead(to: SocketAddr) -> u16 {
    let ip = if to.is_ipv4() { 20 } else { 40 };
    ip + 8 + 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_reports_its_mtu() {
        let mtu = link_mtu("127.0.0.1:9".parse().unwrap()).expect("loopback has an MTU");
        assert!(mtu >= 1280, "loopback MTU {mtu}");
        assert_eq!(wireguard_overhead("127.0.0.1:9".parse().unwrap()), 60);
        assert_eq!(wireguard_overhead("[::1]:9".parse().unwrap()), 80);
    }
}
