//! One causeway gateway with one peer, from flags: what `bench/tunnel.sh` runs in each
//! namespace to measure the data plane on its own (no broker, no DNS).
//!
//! ```text
//! tunnel --tun cwb0 --listen 10.77.0.1:51820 --private-key BASE64 \
//!        --peer BASE64 --endpoint 10.77.0.2:51820 --allowed 10.78.2.0/24 \
//!        [--mtu 1420] [--route-source 10.78.1.1] [--keepalive 25]
//!        [--translate 10.244.0.0/24=100.64.0.0/24 ...]
//! ```
//! `--translate LOCAL=GLOBAL` (repeatable) turns on the prefix translation with these
//! mappings (`Handle::set_translation`); the peer's `--allowed` are then its global prefixes.
//! Keys are WireGuard's base64 (as `wg genkey` / `wg pubkey` print them). Runs until SIGINT or
//! SIGTERM, on one thread (one packet loop per core: pin it with `taskset`).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use base64::Engine;
use causeway_gateway::{Config, HealthConfig, Mapping, PeerSpec, start};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

struct Args {
    tun: String,
    listen: SocketAddr,
    private_key: [u8; 32],
    peer: [u8; 32],
    endpoint: SocketAddr,
    allowed: Vec<IpNet>,
    mtu: u16,
    route_source: Option<IpAddr>,
    keepalive: Option<u16>,
    translate: Vec<Mapping>,
}

fn key(text: &str) -> Result<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .context("a key is base64")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("a key is 32 bytes"))
}

fn parse() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut tun, mut listen, mut private_key, mut peer, mut endpoint) =
        (None, None, None, None, None);
    let mut allowed = Vec::new();
    let mut translate = Vec::new();
    let (mut mtu, mut route_source, mut keepalive) = (causeway_gateway::DEFAULT_MTU, None, None);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tun" => tun = Some(value),
            "--listen" => listen = Some(value.parse().context("--listen")?),
            "--private-key" => private_key = Some(key(&value)?),
            "--peer" => peer = Some(key(&value)?),
            "--endpoint" => endpoint = Some(value.parse().context("--endpoint")?),
            "--allowed" => allowed.push(value.parse().context("--allowed")?),
            "--mtu" => mtu = value.parse().context("--mtu")?,
            "--route-source" => route_source = Some(value.parse().context("--route-source")?),
            "--keepalive" => keepalive = Some(value.parse().context("--keepalive")?),
            "--translate" => {
                let (local, global) = value
                    .split_once('=')
                    .context("--translate takes LOCAL=GLOBAL")?;
                translate.push(Mapping {
                    local: local.parse().context("--translate local CIDR")?,
                    global: global.parse().context("--translate global prefix")?,
                });
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(Args {
        tun: tun.context("--tun is required")?,
        listen: listen.context("--listen is required")?,
        private_key: private_key.context("--private-key is required")?,
        peer: peer.context("--peer is required")?,
        endpoint: endpoint.context("--endpoint is required")?,
        allowed,
        mtu,
        route_source,
        keepalive,
        translate,
    })
}

fn main() -> Result<()> {
    let args = parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let handle = start(
            Config {
                private_key: args.private_key,
                listen: args.listen,
                tun_name: args.tun.clone(),
                mtu: args.mtu,
                persistent_keepalive: args.keepalive,
                route_source: args.route_source,
                health: HealthConfig::default(),
            },
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("starting the gateway on {}", args.tun))?;
        handle
            .set_peers(vec![PeerSpec {
                public_key: args.peer,
                endpoint: args.endpoint,
                allowed_ips: args.allowed,
            }])
            .await?;
        if !args.translate.is_empty() {
            handle.set_translation(args.translate).await?;
        }
        eprintln!("tunnel {} up on {}", args.tun, handle.local_addr());
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        for peer in handle.stats().await {
            eprintln!(
                "peer stats: last_handshake_s={} rx_bytes={} tx_bytes={} health={:?}",
                peer.last_handshake.map_or(-1.0, |d| d.as_secs_f64()),
                peer.rx_bytes,
                peer.tx_bytes,
                peer.health.state
            );
        }
        eprintln!("device stats: {:?}", handle.device_stats().await);
        shutdown.cancel();
        Ok(())
    })
}
