//! Peer-set dynamics with real gateways: roaming, churn under load, persistent keepalive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use causeway_gateway::{HealthConfig, PeerSpec, generate_private_key};

use crate::lab::{
    Gateway, TUN, config, linked_pair, nft, peer, poll, require_root, tcp_stream_until,
    tcp_transfer,
};

/// B's datagrams start coming from a new address: A follows them there, and traffic A starts
/// goes to the new address too.
#[test]
fn peer_heard_from_a_new_address_gets_replies_there() -> Result<()> {
    require_root()?;
    let (a, b) = linked_pair("roam")?;
    let ga = Gateway::start(&a, "10.250.0.1:51820", "10.251.1.1")?;
    // Unbound address: B's source address follows its routes.
    let gb = Gateway::start(&b, "0.0.0.0:51820", "10.251.2.1")?;
    ga.set_peers(vec![peer(&gb, "10.250.0.2:51820", "10.251.2.0/24")])?;
    gb.set_peers(vec![peer(&ga, "10.250.0.1:51820", "10.251.1.0/24")])?;
    poll("tunnel up", || {
        Ok(ga.health_of(&gb) == Some(causeway_gateway::HealthState::Up))
    })?;
    ensure!(ga.stats()[0].endpoint == "10.250.0.2:51820".parse()?);

    // B moves: a new address, preferred as source, and the old one stops receiving.
    b.ip(&["addr", "add", "10.250.0.3/24", "dev", "veth-b"])?;
    b.ip(&[
        "route",
        "replace",
        "10.250.0.0/24",
        "dev",
        "veth-b",
        "src",
        "10.250.0.3",
    ])?;
    nft(
        &b,
        "add table inet roam
add chain inet roam input { type filter hook input priority 0; }
add rule inet roam input ip daddr 10.250.0.2 udp dport 51820 drop",
    )?;

    poll("A follows B to its new address", || {
        Ok(ga.stats()[0].endpoint == "10.250.0.3:51820".parse()?)
    })?;
    ensure!(ga.device_stats().endpoint_roams >= 1);
    // A-initiated traffic (and its replies) reaches B only at the new address.
    tcp_transfer(&a.name, &b.name, "10.251.2.1:5010".parse()?, 1 << 20)?;
    tcp_transfer(&b.name, &a.name, "10.251.1.1:5011".parse()?, 1 << 20)?;
    Ok(())
}

/// Adding, removing and re-keying other peers while a TCP stream runs to B: every byte of
/// the stream arrives in order, and B's session is never replaced.
#[test]
fn churn_of_other_peers_does_not_disturb_a_running_stream() -> Result<()> {
    require_root()?;
    let (a, b) = linked_pair("churn")?;
    let ga = Gateway::start(&a, "10.250.0.1:51820", "10.251.1.1")?;
    let gb = Gateway::start(&b, "10.250.0.2:51820", "10.251.2.1")?;
    let to_b = peer(&gb, "10.250.0.2:51820", "10.251.2.0/24");
    ga.set_peers(vec![to_b.clone()])?;
    gb.set_peers(vec![peer(&ga, "10.250.0.1:51820", "10.251.1.0/24")])?;
    poll("tunnel up", || {
        Ok(ga.health_of(&gb) == Some(causeway_gateway::HealthState::Up))
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (from, to, stop) = (a.name.clone(), b.name.clone(), stop.clone());
        thread::spawn(move || tcp_stream_until(&from, &to, "10.251.2.1:5020".parse()?, stop))
    };
    let other = |key, cidr: &str| PeerSpec {
        public_key: key,
        endpoint: "10.250.0.9:51820".parse().expect("literal"),
        allowed_ips: vec![cidr.parse().expect("literal")],
    };
    let key_c = causeway_gateway::public_key(&generate_private_key());
    let mut rx_before = 0;
    for round in 0u32..40 {
        // Re-key C, add and remove D, and move C's routes, all next to an unchanged B.
        let rekeyed_c = causeway_gateway::public_key(&generate_private_key());
        let key = if round.is_multiple_of(2) {
            key_c
        } else {
            rekeyed_c
        };
        let mut peers = vec![to_b.clone(), other(key, "10.253.0.0/16")];
        if round.is_multiple_of(3) {
            peers.push(other(
                causeway_gateway::public_key(&generate_private_key()),
                "10.254.0.0/16",
            ));
        }
        ga.set_peers(peers)?;
        let stats = ga.stats();
        let b_stats = stats
            .iter()
            .find(|s| s.public_key == gb.handle.public_key())
            .context("B is still a peer")?;
        ensure!(b_stats.last_handshake.is_some());
        ensure!(
            b_stats.tx_bytes >= rx_before,
            "B's tunnel counters never reset: {b_stats:?}"
        );
        rx_before = b_stats.tx_bytes;
        thread::sleep(Duration::from_millis(25)); // pacing the churn, not waiting for a result
    }
    ga.set_peers(vec![to_b])?;
    stop.store(true, Ordering::Relaxed);
    let bytes = stream.join().expect("stream thread panicked")?;
    ensure!(bytes > 0, "the stream carried data");
    let routes = a.ip(&["route", "show", "dev", TUN])?;
    ensure!(
        !routes.contains("10.253.0.0/16") && !routes.contains("10.254.0.0/16"),
        "churned peers' routes are gone: {routes:?}"
    );
    Ok(())
}

/// With probes (nearly) off, an idle tunnel still carries A's persistent keepalives: 32-byte
/// WireGuard messages, counted by nftables in B.
#[test]
fn persistent_keepalive_is_sent_on_an_idle_tunnel() -> Result<()> {
    require_root()?;
    let (a, b) = linked_pair("ka")?;
    let quiet = HealthConfig {
        interval: Duration::from_secs(3600),
        ..HealthConfig::default()
    };
    let ga = Gateway::spawn(
        &a,
        causeway_gateway::Config {
            persistent_keepalive: Some(1),
            health: quiet.clone(),
            ..config("10.250.0.1:51820", TUN, "10.251.1.1")
        },
    )??;
    let gb = Gateway::spawn(
        &b,
        causeway_gateway::Config {
            health: quiet,
            ..config("10.250.0.2:51820", TUN, "10.251.2.1")
        },
    )??;
    ga.set_peers(vec![peer(&gb, "10.250.0.2:51820", "10.251.2.0/24")])?;
    gb.set_peers(vec![peer(&ga, "10.250.0.1:51820", "10.251.1.0/24")])?;
    // A keepalive is a 32-byte UDP payload: IPv4 length 20 + 8 + 32.
    nft(
        &b,
        "add table inet ka
add chain inet ka input { type filter hook input priority 0; }
add rule inet ka input ip saddr 10.250.0.1 udp dport 51820 ip length 60 counter",
    )?;
    // The one probe each side sends at once completes the handshake.
    poll("handshake", || Ok(ga.stats()[0].last_handshake.is_some()))?;
    poll("three keepalives reach B", || {
        let out = b.exec(&["nft", "list", "table", "inet", "ka"])?;
        let listing = String::from_utf8_lossy(&out.stdout);
        let packets = listing
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(packets >= 3)
    })?;
    Ok(())
}
