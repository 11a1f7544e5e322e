//! Fixtures for the netns tests: namespaces, gateways on namespaced threads, wireguard-go,
//! traffic generators, and polling with a deadline.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use causeway_gateway::{Config, Handle, PeerSpec, generate_private_key, start};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "cwgt-";
pub const TUN: &str = "cwt0";
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A wireguard-go process (our child) serving interface `dev` in a namespace; killed on drop.
pub struct WireguardGo {
    child: std::process::Child,
    pub dev: String,
}

impl WireguardGo {
    pub fn start(ns: &Netns, dev: &str) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "wireguard-go", "-f", dev])
            // wireguard-go refuses to run where it believes a kernel module exists.
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawning wireguard-go")?;
        let wg = Self {
            child,
            dev: dev.to_owned(),
        };
        poll("wireguard-go creates its interface", || {
            Ok(ns.ip(&["link", "show", dev]).is_ok())
        })?;
        Ok(wg)
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        // SIGTERM lets wireguard-go remove its UAPI socket; SIGKILL is the fallback.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let exited = poll("wireguard-go exits", || {
            Ok(self.child.try_wait()?.is_some())
        });
        if exited.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.dev));
    }
}

pub fn b64(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("these tests need root (network namespaces, TUN); CI runs them as root");
    }
    for tool in ["ip", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .status
            .success();
        ensure!(
            found,
            "`{tool}` not found: install iproute2 and iputils-ping"
        );
    }
    Ok(())
}

/// A network namespace this test created; deleted on drop, even on panic.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        Ok(Command::new("ip").args(&full).output()?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces `cwgt-<pid>-<tag>-a/b` joined by a veth pair 10.250.0.1/24 <-> .2/24, with
/// "cluster" addresses 10.251.1.1 and 10.251.2.1 on their loopbacks.
pub fn linked_pair(tag: &str) -> Result<(Netns, Netns)> {
    remove_stale_namespaces();
    let base = format!("{PREFIX}{}-{tag}", std::process::id());
    let a = Netns::create(format!("{base}-a"))?;
    let b = Netns::create(format!("{base}-b"))?;
    run(
        "ip",
        &[
            "link", "add", "veth-a", "netns", &a.name, "type", "veth", "peer", "name", "veth-b",
            "netns", &b.name,
        ],
    )?;
    for (ns, dev, addr, cluster) in [
        (&a, "veth-a", "10.250.0.1/24", "10.251.1.1/32"),
        (&b, "veth-b", "10.250.0.2/24", "10.251.2.1/32"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
        ns.ip(&["addr", "add", cluster, "dev", "lo"])?;
    }
    Ok((a, b))
}

/// Creates namespace `cwgt-<pid>-<tag>` joined to `gw` by a veth pair: `pod0` (in the new
/// namespace, `addr`, default route via `gw_addr`'s address) and `gwp0` (in `gw`, `gw_addr`).
/// Forwarding is turned on in `gw`.
pub fn attach_pod(gw: &Netns, tag: &str, addr: &str, gw_addr: &str) -> Result<Netns> {
    let pod = Netns::create(format!("{PREFIX}{}-{tag}", std::process::id()))?;
    run(
        "ip",
        &[
            "link", "add", "gwp0", "netns", &gw.name, "type", "veth", "peer", "name", "pod0",
            "netns", &pod.name,
        ],
    )?;
    pod.ip(&["addr", "add", addr, "dev", "pod0"])?;
    pod.ip(&["link", "set", "pod0", "up"])?;
    gw.ip(&["addr", "add", gw_addr, "dev", "gwp0"])?;
    gw.ip(&["link", "set", "gwp0", "up"])?;
    let via = gw_addr.split('/').next().context("address/prefix")?;
    pod.ip(&["route", "add", "default", "via", via])?;
    let out = gw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ensure!(out.status.success(), "enabling forwarding");
    Ok(pod)
}

/// Runs an nftables script in a namespace (the rules vanish with the namespace).
pub fn nft(ns: &Netns, script: &str) -> Result<()> {
    let out = ns.exec(&["nft", script])?;
    ensure!(
        out.status.success(),
        "nft {script:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Streams a known pattern from `from_ns` to `to` (a listener in `to_ns`) until `stop` is set,
/// checking every byte on arrival. Returns how many bytes arrived, all in order.
pub fn tcp_stream_until(
    from_ns: &str,
    to_ns: &str,
    to: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let pattern = |i: u64| (i.wrapping_mul(31) % 251) as u8;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(to_ns, move || {
        let listener = TcpListener::bind(to)?;
        ready_tx.send(())?;
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(at);
            }
            for &b in &buf[..n] {
                ensure!(b == pattern(at), "byte {at} differs");
                at += 1;
            }
        }
    });
    ready_rx
        .recv_timeout(DEADLINE)
        .context("TCP server did not start")?;
    let client = in_ns(from_ns, move || {
        let mut stream = TcpStream::connect_timeout(&to, DEADLINE)?;
        stream.set_write_timeout(Some(DEADLINE))?;
        let mut at = 0u64;
        let mut chunk = vec![0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            for b in chunk.iter_mut() {
                *b = pattern(at);
                at += 1;
            }
            stream.write_all(&chunk)?;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        Ok(at)
    });
    let sent = client.join().expect("client panicked")?;
    let received = server.join().expect("server panicked")?;
    ensure!(received == sent, "received {received} of {sent} bytes");
    Ok(received)
}

/// Deletes `cwgt-<pid>-…` namespaces whose process is gone (an earlier run that was killed).
pub fn remove_stale_namespaces() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// A gateway running on its own thread inside a namespace; stopped and joined on drop.
pub struct Gateway {
    pub handle: Handle,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Gateway {
    pub fn start(ns: &Netns, listen: &str, cluster_addr: &str) -> Result<Self> {
        let config = config(listen, TUN, cluster_addr);
        Self::spawn(ns, config)?.context("starting gateway")
    }

    /// Starts a gateway on a thread inside `ns`; the inner result is [`start`]'s own.
    pub fn spawn(ns: &Netns, config: Config) -> Result<Result<Self, causeway_gateway::Error>> {
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let name = ns.name.clone();
        let token = shutdown.clone();
        let thread = thread::spawn(move || {
            enter(&name).expect("entering the test's namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime");
            rt.block_on(async move {
                let started = start(config, token.clone()).await;
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    token.cancelled().await;
                }
            });
        });
        let handle = match rx.recv_timeout(DEADLINE) {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => bail!("gateway thread did not report: {e}"),
        };
        Ok(Ok(Self {
            handle,
            shutdown,
            thread: Some(thread),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        }))
    }

    pub fn try_set_peers(&self, peers: Vec<PeerSpec>) -> Result<(), causeway_gateway::Error> {
        self.runtime.block_on(self.handle.set_peers(peers))
    }

    pub fn set_peers(&self, peers: Vec<PeerSpec>) -> Result<()> {
        Ok(self.runtime.block_on(self.handle.set_peers(peers))?)
    }

    /// Sets this gateway's prefix translation from (local, global) CIDR pairs.
    pub fn set_translation(&self, pairs: &[(&str, &str)]) -> Result<()> {
        let mappings = pairs
            .iter()
            .map(|(local, global)| {
                Ok(causeway_gateway::Mapping {
                    local: local.parse()?,
                    global: global.parse()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .runtime
            .block_on(self.handle.set_translation(mappings))?)
    }

    pub fn stats(&self) -> Vec<causeway_gateway::PeerStats> {
        self.runtime.block_on(self.handle.stats())
    }

    pub fn device_stats(&self) -> causeway_gateway::DeviceStats {
        self.runtime.block_on(self.handle.device_stats())
    }

    /// What this gateway's health watch says about `peer` now.
    pub fn health_of(&self, peer: &Gateway) -> Option<causeway_gateway::HealthState> {
        let health = self.handle.health();
        let map = health.borrow();
        map.get(&peer.handle.public_key()).map(|h| h.state)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pair with both veth ends at `mtu` bytes.
pub fn linked_pair_mtu(tag: &str, mtu: u16) -> Result<(Netns, Netns)> {
    let (a, b) = linked_pair(tag)?;
    let mtu = mtu.to_string();
    a.ip(&["link", "set", "veth-a", "mtu", &mtu])?;
    b.ip(&["link", "set", "veth-b", "mtu", &mtu])?;
    Ok((a, b))
}

pub fn config(listen: &str, tun: &str, route_source: &str) -> Config {
    Config {
        private_key: generate_private_key(),
        listen: listen.parse().expect("literal"),
        tun_name: tun.to_owned(),
        mtu: causeway_gateway::DEFAULT_MTU,
        persistent_keepalive: None,
        route_source: Some(route_source.parse().expect("literal")),
        health: causeway_gateway::HealthConfig::default(),
    }
}

pub fn peer(other: &Gateway, endpoint: &str, cidr: &str) -> PeerSpec {
    PeerSpec {
        public_key: other.handle.public_key(),
        endpoint: endpoint.parse().expect("literal"),
        allowed_ips: vec![cidr.parse().expect("literal")],
    }
}

/// Moves the calling thread into network namespace `name`.
pub fn enter(name: &str) -> Result<()> {
    let file = File::open(format!("/var/run/netns/{name}"))
        .with_context(|| format!("opening netns {name}"))?;
    // SAFETY: setns with a valid namespace fd affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter(&ns)?;
        f()
    })
}

/// Sends up to `count` garbage datagrams of assorted shapes and sizes (up to 64 KiB) from
/// inside `ns` to `to`, stopping early when `stop` is set. Returns how many were sent.
pub fn send_garbage(
    ns: &str,
    to: SocketAddr,
    count: usize,
    stop: Option<Arc<AtomicBool>>,
) -> Result<usize> {
    in_ns(ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let mut sent = 0;
        for i in 0..count {
            if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                break;
            }
            let mut datagram = vec![(i % 7) as u8; 1 + (i * 37) % 300];
            if i % 3 == 0 {
                // Looks like a data message for a receiver index nobody has.
                datagram.resize(64, 0xaa);
                datagram[..4].copy_from_slice(&4u32.to_le_bytes());
            }
            if i % 50 == 1 {
                // Oversized: larger than any tunnel packet (fragmented on the wire), up to
                // the largest UDP payload.
                datagram = vec![4; if i % 100 == 1 { 9000 } else { 65507 }];
            }
            socket.send_to(&datagram, to)?;
            sent += 1;
            if i % 100 == 99 {
                thread::sleep(Duration::from_millis(1)); // pace it; not waiting for a result
            }
        }
        Ok(sent)
    })
    .join()
    .expect("garbage sender panicked")
}

/// Streams `len` bytes of a known pattern from namespace `from_ns` to `to` (a listener in
/// `to_ns`) and checks they arrive byte-exact.
pub fn tcp_transfer(from_ns: &str, to_ns: &str, to: SocketAddr, len: usize) -> Result<()> {
    tcp_transfer_seen_from(from_ns, to_ns, to, to, len).map(|_| ())
}

/// [`tcp_transfer`] with the listener on `listen` and the client dialling `to` (an address
/// that leads there, e.g. through a translation); returns the client address the listener
/// saw.
pub fn tcp_transfer_seen_from(
    from_ns: &str,
    to_ns: &str,
    listen: SocketAddr,
    to: SocketAddr,
    len: usize,
) -> Result<SocketAddr> {
    let pattern = |i: usize| (i.wrapping_mul(31) % 251) as u8;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(to_ns, move || {
        let listener = TcpListener::bind(listen)?;
        ready_tx.send(())?;
        let (mut stream, peer) = listener.accept()?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let mut received = Vec::with_capacity(len);
        stream.read_to_end(&mut received)?;
        Ok((received, peer))
    });
    ready_rx
        .recv_timeout(DEADLINE)
        .context("TCP server did not start")?;
    let client = in_ns(from_ns, move || {
        let mut stream = TcpStream::connect_timeout(&to, DEADLINE)?;
        stream.set_write_timeout(Some(DEADLINE))?;
        let data: Vec<u8> = (0..len).map(pattern).collect();
        stream.write_all(&data)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    });
    client.join().expect("client panicked")?;
    let (received, peer) = server.join().expect("server panicked")?;
    ensure!(
        received.len() == len,
        "received {} of {len} bytes",
        received.len()
    );
    if let Some(i) = (0..len).find(|&i| received[i] != pattern(i)) {
        bail!("byte {i} differs");
    }
    Ok(peer)
}

/// Polls `check` until it returns true or [`DEADLINE`] passes.
pub fn poll(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = causeway_gateway::clock::tokio_now() + DEADLINE;
    loop {
        if check()? {
            return Ok(());
        }
        if causeway_gateway::clock::tokio_now() > deadline {
            bail!("timed out waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
