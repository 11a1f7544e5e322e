//! Real WireGuard between two gateways in two network namespaces joined by a veth pair, and
//! between a gateway and wireguard-go.
//!
//! Each gateway runs on its own thread that has `setns`-ed into its namespace, so its TUN
//! device, UDP socket and netlink socket live there. Traffic is only ever sent to addresses
//! inside the namespaces these tests create. Needs root (CI runs as root), `ip`, `ping`,
//! `wireguard-go` and `wg` (tests/install-deps.sh installs them). The fixtures are in `lab.rs`.

mod health;
mod lab;
mod mtu;
mod nat;
mod peers;

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Context, Result, ensure};
use causeway_gateway::{PeerSpec, generate_private_key};

use lab::{
    Gateway, TUN, WireguardGo, b64, config, linked_pair, peer, poll, require_root, send_garbage,
    tcp_transfer,
};

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
    // A sends the stream's datagrams as UDP GSO runs; the veth keeps them whole, so B's
    // socket (UDP_GRO on) receives runs and splits them: the checked transfer went through
    // that path.
    let device_b = gb.device_stats();
    ensure!(
        device_b.gro_datagrams > 0,
        "B received no coalesced datagrams: {device_b:?}"
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
fn a_route_that_is_not_ours_is_never_replaced_and_is_there_after_we_stop() -> Result<()> {
    require_root()?;
    let (a, _b) = linked_pair("own")?;
    // Somebody else's route for a prefix a peer will claim, and the whole table before.
    a.ip(&[
        "route",
        "add",
        "blackhole",
        "10.254.0.0/16",
        "proto",
        "static",
    ])?;
    let before = a.ip(&["route", "show", "table", "all"])?;
    let ga = Gateway::start(&a, "10.250.0.1:51820", "10.251.1.1")?;
    let key_b = causeway_gateway::public_key(&generate_private_key());
    ga.set_peers(vec![PeerSpec {
        public_key: key_b,
        endpoint: "10.250.0.2:51820".parse().expect("literal"),
        allowed_ips: vec![
            "10.254.0.0/16".parse().expect("literal"),
            "10.255.0.0/16".parse().expect("literal"),
        ],
    }])?;
    // Ours is added, marked with our protocol; theirs stays as it was.
    let ours = a.ip(&["route", "show", "proto", "202"])?;
    ensure!(ours.contains("10.255.0.0/16 dev"), "{ours:?}");
    ensure!(
        !ours.contains("10.254.0.0/16"),
        "took over a foreign route: {ours:?}"
    );
    let theirs = a.ip(&["route", "show", "10.254.0.0/16"])?;
    ensure!(
        theirs.contains("blackhole"),
        "foreign route replaced: {theirs:?}"
    );
    // Withdrawn: only our route goes; stopped: the table is exactly as before.
    ga.set_peers(vec![])?;
    ensure!(a.ip(&["route", "show", "proto", "202"])?.trim().is_empty());
    ensure!(
        a.ip(&["route", "show", "10.254.0.0/16"])?
            .contains("blackhole")
    );
    let ns = a.name.clone();
    drop(ga);
    poll("TUN device gone after shutdown", || {
        let out = Command::new("ip")
            .args(["-n", &ns, "link", "show", TUN])
            .output()?;
        Ok(!out.status.success())
    })?;
    let after = a.ip(&["route", "show", "table", "all"])?;
    let strip = |t: &str| -> Vec<String> {
        // IPv4 only (`ip route` without -6), link-local churn aside.
        t.lines()
            .filter(|l| !l.contains("fe80"))
            .map(str::to_owned)
            .collect()
    };
    ensure!(
        strip(&after) == strip(&before),
        "routes differ after stop:\nbefore {before}\nafter {after}"
    );
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
