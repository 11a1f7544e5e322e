//! Real WireGuard between two gateways in two network namespaces joined by a veth pair.
//!
//! Each gateway runs on its own thread that has `setns`-ed into its namespace, so its TUN
//! device, UDP socket and netlink socket live there. Traffic is only ever sent to addresses
//! inside the namespaces these tests create. Needs root (CI runs as root) and `ip`/`ping`.

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
const TUN: &str = "cwt0";
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn two_gateways_carry_ping_and_tcp_through_the_tunnel_despite_garbage() -> Result<()> {
    require_root()?;
    let (a, b) = linked_pair("tun")?;
    let ga = Gateway::start(&a, "10.250.0.1:51820", "10.251.1.1")?;
    let gb = Gateway::start(&b, "10.250.0.2:51820", "10.251.2.1")?;

    // Garbage before the peers even exist, to both sides.
    let sent = send_garbage(&a.name, "10.250.0.2:51820".parse()?, 50, None)?;
    ensure!(sent == 50);

    ga.set_peers(vec![peer(&gb, "10.250.0.2:51820", "10.251.2.0/24")])?;
    gb.set_peers(vec![peer(&ga, "10.250.0.1:51820", "10.251.1.0/24")])?;

    let routes = a.ip(&["route", "show", "dev", TUN])?;
    ensure!(
        routes.contains("10.251.2.0/24") && routes.contains("src 10.251.1.1"),
        "route into the TUN device with prefsrc missing: {routes:?}"
    );

    // The first handshake takes a moment: retry ping until the deadline.
    poll("ping 10.251.2.1 from 10.251.1.1 in A", || {
        let out = a.exec(&[
            "ping",
            "-c",
            "3",
            "-W",
            "1",
            "-I",
            "10.251.1.1",
            "10.251.2.1",
        ])?;
        Ok(out.status.success())
    })?;

    // Keep garbage flowing into B's WireGuard port while a TCP transfer crosses the tunnel.
    let stop = Arc::new(AtomicBool::new(false));
    let garbage = {
        let stop = stop.clone();
        let ns = a.name.clone();
        thread::spawn(move || send_garbage(&ns, "10.250.0.2:51820".parse()?, 20_000, Some(stop)))
    };
    let transfer = tcp_transfer(&a.name, &b.name, "10.251.2.1:5001".parse()?, 1 << 20);
    stop.store(true, Ordering::Relaxed);
    let garbage_sent = garbage.join().expect("garbage thread panicked")?;
    transfer?;
    ensure!(garbage_sent > 0);

    poll("B counts the garbage", || {
        let s = gb.device_stats();
        Ok(s.malformed_datagrams + s.unknown_peer_datagrams > 0)
    })?;
    let stats_b = gb.stats();
    ensure!(stats_b.len() == 1, "B has one peer: {stats_b:?}");
    ensure!(stats_b[0].public_key == ga.handle.public_key());
    ensure!(stats_b[0].last_handshake.is_some(), "{stats_b:?}");
    ensure!(
        stats_b[0].rx_bytes >= 1 << 20,
        "B received the transfer: {stats_b:?}"
    );
    let stats_a = ga.stats();
    ensure!(
        stats_a[0].tx_bytes >= 1 << 20,
        "A sent the transfer: {stats_a:?}"
    );
    Ok(())
}

#[test]
fn set_peers_keeps_kernel_routes_in_sync_and_shutdown_removes_the_device() -> Result<()> {
    require_root()?;
    let (a, _b) = linked_pair("rt")?;
    let ga = Gateway::start(&a, "10.250.0.1:51820", "10.251.1.1")?;
    let key_b = causeway_gateway::public_key(&generate_private_key());
    let key_c = causeway_gateway::public_key(&generate_private_key());
    let spec = |key, cidrs: &[&str]| PeerSpec {
        public_key: key,
        endpoint: "10.250.0.2:51820".parse().expect("literal"),
        allowed_ips: cidrs.iter().map(|c| c.parse().expect("literal")).collect(),
    };

    ga.set_peers(vec![
        spec(key_b, &["10.251.2.0/24", "10.252.0.0/16"]),
        spec(key_c, &["10.253.0.0/16"]),
    ])?;
    let routes = a.ip(&["route", "show", "dev", TUN])?;
    for cidr in ["10.251.2.0/24", "10.252.0.0/16", "10.253.0.0/16"] {
        ensure!(routes.contains(cidr), "{cidr} missing: {routes:?}");
    }

    ga.set_peers(vec![spec(key_b, &["10.251.2.0/24"])])?;
    let routes = a.ip(&["route", "show", "dev", TUN])?;
    ensure!(routes.contains("10.251.2.0/24"), "{routes:?}");
    ensure!(
        !routes.contains("10.252.0.0/16"),
        "stale route left: {routes:?}"
    );
    ensure!(
        !routes.contains("10.253.0.0/16"),
        "stale route left: {routes:?}"
    );
    ensure!(ga.stats().len() == 1);

    ga.set_peers(vec![])?;
    let routes = a.ip(&["route", "show", "dev", TUN])?;
    ensure!(routes.trim().is_empty(), "routes left: {routes:?}");

    let ns = a.name.clone();
    drop(ga);
    poll("TUN device gone after shutdown", || {
        let out = Command::new("ip")
            .args(["-n", &ns, "link", "show", TUN])
            .output()?;
        Ok(!out.status.success())
    })?;
    Ok(())
}

#[test]
fn start_and_set_peers_fail_with_typed_errors_and_failed_routes_are_retried() -> Result<()> {
    require_root()?;
    let (a, _b) = linked_pair("err")?;
    // 10.251.9.9 is not (yet) an address of A, so the kernel refuses it as prefsrc.
    let ga = Gateway::spawn(&a, config("10.250.0.1:51820", TUN, "10.251.9.9"))??;

    let same_tun = Gateway::spawn(&a, config("10.250.0.1:51821", TUN, "10.251.1.1"))?;
    ensure!(
        matches!(&same_tun, Err(causeway_gateway::Error::OpenTun { name, .. }) if name == TUN),
        "second gateway on the same TUN name: {:?}",
        same_tun.err()
    );
    let same_port = Gateway::spawn(&a, config("10.250.0.1:51820", "cwt1", "10.251.1.1"))?;
    ensure!(
        matches!(&same_port, Err(causeway_gateway::Error::BindUdp { addr, .. }) if addr.port() == 51820),
        "second gateway on the same UDP port: {:?}",
        same_port.err()
    );
    let bad_name = Gateway::spawn(
        &a,
        config("10.250.0.1:0", "a-name-too-long-for-linux", "10.251.1.1"),
    )?;
    ensure!(matches!(
        bad_name,
        Err(causeway_gateway::Error::TunName { .. })
    ));

    let peers = vec![PeerSpec {
        public_key: causeway_gateway::public_key(&generate_private_key()),
        endpoint: "10.250.0.2:51820".parse()?,
        allowed_ips: vec!["10.251.2.0/24".parse()?],
    }];
    let refused = ga.try_set_peers(peers.clone());
    ensure!(
        matches!(
            &refused,
            Err(causeway_gateway::Error::Route {
                action: "adding",
                ..
            })
        ),
        "route with a foreign prefsrc: {refused:?}"
    );
    ensure!(
        ga.stats().len() == 1,
        "the peer set is applied even when a route fails"
    );

    a.ip(&["addr", "add", "10.251.9.9/32", "dev", "lo"])?;
    ga.set_peers(peers)?;
    let routes = a.ip(&["route", "show", "dev", TUN])?;
    ensure!(
        routes.contains("10.251.2.0/24") && routes.contains("src 10.251.9.9"),
        "the same peer set retries the failed route: {routes:?}"
    );
    Ok(())
}

/// Interop with a standard WireGuard implementation: wireguard-go in B, our gateway in A.
/// wireguard-go initiates first (we answer as responder), then we carry TCP both ways.
#[test]
fn gateway_interoperates_with_wireguard_go() -> Result<()> {
    require_root()?;
    ensure!(
        Command::new("sh")
            .args(["-c", "command -v wireguard-go && command -v wg"])
            .output()?
            .status
            .success(),
        "wireguard-go and wg not found: install wireguard-go and wireguard-tools"
    );
    let (a, b) = linked_pair("wgo")?;
    let ga = Gateway::start(&a, "10.250.0.1:51820", "10.251.1.1")?;

    // wireguard-go's UAPI socket lives in the shared /var/run/wireguard: unique name per run.
    let dev = format!("cwgo{}", std::process::id() % 100_000);
    let wg = WireguardGo::start(&b, &dev)?;
    let b_private = generate_private_key();
    let b_public = causeway_gateway::public_key(&b_private);
    let mut key_file = tempfile::NamedTempFile::new()?;
    writeln!(key_file, "{}", b64(&b_private))?;
    let key_path = key_file
        .path()
        .to_str()
        .context("temp path is UTF-8")?
        .to_owned();
    let a_public = b64(&ga.handle.public_key());
    let out = b.exec(&[
        "wg",
        "set",
        &wg.dev,
        "private-key",
        &key_path,
        "listen-port",
        "51820",
        "peer",
        &a_public,
        "endpoint",
        "10.250.0.1:51820",
        "allowed-ips",
        "10.251.1.0/24",
    ])?;
    ensure!(
        out.status.success(),
        "wg set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.ip(&["link", "set", &wg.dev, "up"])?;
    b.ip(&[
        "route",
        "add",
        "10.251.1.0/24",
        "dev",
        &wg.dev,
        "src",
        "10.251.2.1",
    ])?;

    ga.set_peers(vec![PeerSpec {
        public_key: b_public,
        endpoint: "10.250.0.2:51820".parse()?,
        allowed_ips: vec!["10.251.2.0/24".parse()?],
    }])?;

    poll("ping 10.251.1.1 from wireguard-go's side", || {
        let out = b.exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "10.251.2.1",
            "10.251.1.1",
        ])?;
        Ok(out.status.success())
    })?;
    tcp_transfer(&a.name, &b.name, "10.251.2.1:5002".parse()?, 1 << 20)?;
    tcp_transfer(&b.name, &a.name, "10.251.1.1:5003".parse()?, 1 << 20)?;
    let stats = ga.stats();
    ensure!(stats[0].last_handshake.is_some(), "{stats:?}");
    ensure!(
        stats[0].rx_bytes >= 1 << 20 && stats[0].tx_bytes >= 1 << 20,
        "{stats:?}"
    );
    drop(wg);
    Ok(())
}

/// A wireguard-go process (our child) serving interface `dev` in a namespace; killed on drop.
struct WireguardGo {
    child: std::process::Child,
    dev: String,
}

impl WireguardGo {
    fn start(ns: &Netns, dev: &str) -> Result<Self> {
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

fn b64(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn require_root() -> Result<()> {
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
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn exec(&self, args: &[&str]) -> Result<Output> {
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
fn linked_pair(tag: &str) -> Result<(Netns, Netns)> {
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

/// Deletes `cwgt-<pid>-…` namespaces whose process is gone (an earlier run that was killed).
fn remove_stale_namespaces() {
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
struct Gateway {
    handle: Handle,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Gateway {
    fn start(ns: &Netns, listen: &str, cluster_addr: &str) -> Result<Self> {
        let config = config(listen, TUN, cluster_addr);
        Self::spawn(ns, config)?.context("starting gateway")
    }

    /// Starts a gateway on a thread inside `ns`; the inner result is [`start`]'s own.
    fn spawn(ns: &Netns, config: Config) -> Result<Result<Self, causeway_gateway::Error>> {
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

    fn try_set_peers(&self, peers: Vec<PeerSpec>) -> Result<(), causeway_gateway::Error> {
        self.runtime.block_on(self.handle.set_peers(peers))
    }

    fn set_peers(&self, peers: Vec<PeerSpec>) -> Result<()> {
        Ok(self.runtime.block_on(self.handle.set_peers(peers))?)
    }

    fn stats(&self) -> Vec<causeway_gateway::PeerStats> {
        self.runtime.block_on(self.handle.stats())
    }

    fn device_stats(&self) -> causeway_gateway::DeviceStats {
        self.runtime.block_on(self.handle.device_stats())
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

fn config(listen: &str, tun: &str, route_source: &str) -> Config {
    Config {
        private_key: generate_private_key(),
        listen: listen.parse().expect("literal"),
        tun_name: tun.to_owned(),
        mtu: causeway_gateway::DEFAULT_MTU,
        persistent_keepalive: None,
        route_source: Some(route_source.parse().expect("literal")),
    }
}

fn peer(other: &Gateway, endpoint: &str, cidr: &str) -> PeerSpec {
    PeerSpec {
        public_key: other.handle.public_key(),
        endpoint: endpoint.parse().expect("literal"),
        allowed_ips: vec![cidr.parse().expect("literal")],
    }
}

/// Moves the calling thread into network namespace `name`.
fn enter(name: &str) -> Result<()> {
    let file = File::open(format!("/var/run/netns/{name}"))
        .with_context(|| format!("opening netns {name}"))?;
    // SAFETY: setns with a valid namespace fd affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter(&ns)?;
        f()
    })
}

/// Sends up to `count` garbage datagrams of assorted shapes from inside `ns` to `to`, stopping
/// early when `stop` is set. Returns how many were sent.
fn send_garbage(
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
fn tcp_transfer(from_ns: &str, to_ns: &str, to: SocketAddr, len: usize) -> Result<()> {
    let pattern = |i: usize| (i.wrapping_mul(31) % 251) as u8;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(to_ns, move || {
        let listener = TcpListener::bind(to)?;
        ready_tx.send(())?;
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let mut received = Vec::with_capacity(len);
        stream.read_to_end(&mut received)?;
        Ok(received)
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
    let received = server.join().expect("server panicked")?;
    ensure!(
        received.len() == len,
        "received {} of {len} bytes",
        received.len()
    );
    if let Some(i) = (0..len).find(|&i| received[i] != pattern(i)) {
        bail!("byte {i} differs");
    }
    Ok(())
}

/// Polls `check` until it returns true or [`DEADLINE`] passes.
fn poll(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check()? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn run(program: &str, args: &[&str]) -> Result<String> {
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
