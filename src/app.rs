//! The gateway daemon's wiring: the source feeds this cluster's exports to the broker; the
//! broker's view of the clusterset feeds the tunnels (one WireGuard peer per other cluster,
//! its CIDRs routed into the tunnel) and the DNS zone (every service's ready endpoints, nearest
//! first).
//!
//! `run_gateway` is the shell that owns the loop. What it answers (`desired_peers`,
//! `dns_services`) is computed in `answers`, pure; decisions about ranking live in `select`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::answers::{
    desired_peers, dns_services, health_view, own_translation, with_clusterset_ips,
};
use crate::cli::{GatewayArgs, SourceSpec};
use crate::model::{ClusterId, ClusterInfo};
use crate::sync::proto::SyncState;
use crate::sync::quic::{SyncConfig, spawn_client};

/// Loads the gateway's WireGuard private key from `dir/wg.key` (base64, as `wg genkey` writes
/// it), or generates and saves one, so that a restart keeps the identity peers know.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = dir.join("wg.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .with_context(|| format!("{} is not base64", path.display()))?;
            let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                anyhow::anyhow!("{} holds {} bytes, not 32", path.display(), b.len())
            })?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating state directory {}", dir.display()))?;
            let key = causeway_gateway::generate_private_key();
            let text = base64::engine::general_purpose::STANDARD.encode(key);
            write_private(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            info!(path = %path.display(), "Generated a new WireGuard key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// The address other gateways reach us at.
fn advertised(args: &GatewayArgs) -> anyhow::Result<SocketAddr> {
    let addr = args.wg_advertise.unwrap_or(args.wg_listen);
    if addr.ip().is_unspecified() {
        bail!(
            "--wg-listen {} is a wildcard address: give --wg-advertise, the address other gateways reach",
            addr
        );
    }
    Ok(addr)
}

/// The source address for the gateway's own traffic into the tunnel.
fn tunnel_source(args: &GatewayArgs) -> anyhow::Result<Option<IpAddr>> {
    let in_cidrs = |ip: &IpAddr| args.cidrs.iter().any(|c| c.contains(ip));
    match args.tunnel_source {
        Some(ip) if in_cidrs(&ip) => Ok(Some(ip)),
        Some(ip) => bail!(
            "--tunnel-source {ip} lies in none of --cidr {:?}",
            args.cidrs
        ),
        None => Ok(Some(args.dns_listen.ip()).filter(in_cidrs)),
    }
}

/// Runs one cluster's gateway until `shutdown` is cancelled.
pub async fn run_gateway(args: GatewayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let me = args.cluster_id.clone();
    // `--source kube`: the API client, and with --leader-elect, wait to lead (a standby holds
    // no tunnel or DNS socket); `shutdown` then also fires when leadership is lost.
    let kube_config = crate::source::k8s::run::RunConfig::from(&args);
    let admin_listen = args.admin_listen;
    let standby = async |stop| {
        let (_, task) = crate::admin::serve_standby(admin_listen, stop).await?;
        Ok(task)
    };
    let kube_prepared = crate::source::k8s::run::prepare(&kube_config, shutdown, standby).await?;
    let shutdown = kube_prepared.shutdown.clone();
    let wg_endpoint = advertised(&args)?;
    let route_source = tunnel_source(&args)?;
    let private_key = load_or_create_key(&args.state_dir)?;

    let gateway = causeway_gateway::start(
        causeway_gateway::Config {
            private_key,
            listen: args.wg_listen,
            tun_name: args.tun_name.clone(),
            mtu: args.mtu,
            persistent_keepalive: (args.keepalive > 0).then_some(args.keepalive),
            route_source,
            health: causeway_gateway::HealthConfig::default(),
        },
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("starting the WireGuard data plane on {}", args.wg_listen))?;

    let dns_zones = causeway_dns::ZoneConfig {
        zone: args.dns_zone.clone(),
        clusterset_zone: Some(args.clusterset_zone.clone()).filter(|z| !z.is_empty()),
        ttl: args.dns_ttl,
        max_addresses: args.dns_max_addresses,
    };
    let dns = causeway_dns::serve(
        causeway_dns::Config {
            listen: args.dns_listen,
            zones: dns_zones.clone(),
            upstream: args.dns_upstream,
            udp_sockets: args.dns_udp_sockets.map(usize::from),
        },
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("serving DNS on {}", args.dns_listen))?;

    // Endpoint probers record into `recorders.probes` (see admin::metrics).
    let recorders = crate::admin::metrics::Recorders::default();
    let mut kube_source = None;
    let mut kube_ips = None;
    let mut local = match &args.source {
        SourceSpec::File(dir) => {
            let services = crate::source::file::watch_probed(dir.clone(), shutdown.clone())
                .await
                .with_context(|| format!("reading the file source {}", dir.display()))?;
            // Probe failures mark endpoints not ready here, so DNS and the broker see them at
            // once.
            let probes = std::sync::Arc::new(recorders.probes.clone());
            crate::health::driver::spawn(services, probes, shutdown.clone())
        }
        // Readiness comes from the EndpointSlices, as kube-proxy sees it.
        SourceSpec::Kube => {
            let source = crate::source::k8s::run::start(&kube_config, &kube_prepared).await?;
            let exports = source.exports.clone();
            kube_ips = Some(source.clusterset_ips.clone());
            kube_source = Some(source);
            exports
        }
    };

    let info = ClusterInfo {
        id: me.clone(),
        wg_endpoint,
        wg_public_key: gateway.public_key(),
        cidrs: args.cidrs.clone(),
        region: args.region.clone(),
        zone: args.zone.clone(),
        global: vec![],
    };
    let sync_config = SyncConfig {
        brokers: args.brokers.clone(),
        tls_dir: args.tls_dir.clone(),
        reconnect_backoff_max: Duration::from_secs(5),
    };
    let mut synced = spawn_client(sync_config, info, local.clone(), shutdown.clone())
        .context("starting the broker client")?;
    let (mut admin_view, admin_view_rx) = crate::admin::ViewPublisher::new(me.clone());
    let admin_info = crate::status::GatewayInfo {
        brokers: args.brokers.clone(),
        dns_listen: dns.local_addr(),
        dns_zone: args.dns_zone.clone(),
        clusterset_zone: dns_zones.clusterset_zone.clone(),
        tunnel_mtu: args.mtu,
    };
    let (mut records, records_feed) = crate::replica::http::RecordsPublisher::new();
    let sources = crate::admin::GatewaySources {
        gateway: gateway.clone(),
        dns: dns.clone(),
        records: records_feed,
    };
    let admin = crate::admin::serve(
        args.admin_listen,
        admin_info,
        admin_view_rx,
        std::sync::Arc::new(sources),
        recorders.clone(),
        shutdown.clone(),
    )
    .await?;
    info!(cluster = %me, wg = %wg_endpoint, dns = %dns.local_addr(), admin = %admin.local_addr(), brokers = ?args.brokers, "Gateway started");

    // Never routed into a tunnel (see `desired_peers`).
    let protected: Vec<IpAddr> = args
        .brokers
        .iter()
        .map(|b| b.ip())
        .chain([wg_endpoint.ip(), args.wg_listen.ip()])
        .filter(|a| !a.is_unspecified())
        .collect();
    let mut tunnels = gateway.health();
    let mut peers_applied: Option<Vec<causeway_gateway::PeerSpec>> = None;
    let mut translation_applied: Option<Vec<causeway_gateway::Mapping>> = None;
    let mut was_connected = None;
    let mut was_reachable: Option<BTreeSet<ClusterId>> = None;
    let mut services_published: Option<Vec<causeway_dns::ServiceRecords>> = None;
    let mut answer_changes = crate::changes::ChangeTracker::default();
    loop {
        let mut state: SyncState = synced.borrow_and_update().clone();
        state.view = state.view.reached_from(&me);
        if let Some(source) = &kube_source {
            source.publish_view(&state);
        }
        let exports = local.borrow_and_update().clone();
        let health = health_view(&me, &state.view, &tunnels.borrow_and_update());
        if let (Some(before), Some(now)) = (&was_reachable, &health.reachable) {
            for lost in before.difference(now) {
                info!(cluster = %lost, "Cluster unreachable through its tunnel: left out of DNS answers");
            }
            for back in now
                .difference(before)
                .filter(|c| state.view.clusters.contains_key(*c))
            {
                info!(cluster = %back, "Cluster reachable through its tunnel");
            }
        }
        was_reachable = health.reachable.clone();
        admin_view.publish(&exports, &state, &health, crate::clock::now());
        for change in answer_changes.observe(&me, &exports, &state.view, &health) {
            crate::changes::log(&change);
            recorders.changes.record(&change);
        }
        if was_connected != Some(state.connected) {
            if state.connected || was_connected.is_some() {
                recorders.changes.broker(state.connected);
            }
            if state.connected {
                info!(broker = ?state.broker, revision = state.view.revision, "Broker connected");
            } else if was_connected.is_some() {
                warn!(broker = ?state.broker, revision = state.view.revision, "Broker unreachable: serving the last known state");
            }
            was_connected = Some(state.connected);
        }

        let mut retry = false;
        let translation = own_translation(&me, &state.view);
        if translation_applied.as_ref() != Some(&translation) {
            match gateway.set_translation(translation.clone()).await {
                Ok(()) => {
                    let plan: Vec<String> = translation.iter().map(ToString::to_string).collect();
                    info!(plan = ?plan, "Address translation updated");
                    translation_applied = Some(translation);
                }
                Err(e) => {
                    warn!(error = %e, "Could not apply the address translation; retrying");
                    retry = true;
                }
            }
        }
        let peers = desired_peers(&me, &state.view, &protected);
        if peers_applied.as_ref() != Some(&peers) {
            match gateway.set_peers(peers.clone()).await {
                Ok(()) => {
                    info!(peers = peers.len(), "Tunnel peers updated");
                    peers_applied = Some(peers);
                }
                Err(e) => {
                    warn!(error = %e, "Could not apply tunnel peers; retrying");
                    retry = true;
                }
            }
        }
        // Most wake-ups (acks, broker reconnects, health moves that change no ranking) leave
        // the answers as they are; skip the build then. Otherwise only the changed services
        // are re-encoded (`Snapshot::update`), off the runtime; changes arriving meanwhile
        // wait in the watches and are coalesced into the next build.
        let mut services = dns_services(&me, &exports, &state.view, &health);
        if let Some(ips) = &mut kube_ips {
            with_clusterset_ips(&mut services, &ips.borrow_and_update());
        }
        if services_published.as_ref() != Some(&services) {
            let (base, zones, table) = (dns.current(), dns_zones.clone(), services.clone());
            match tokio::task::spawn_blocking(move || base.update(&zones, table)).await {
                Ok(Ok(snapshot)) => {
                    dns.publish(snapshot);
                    records.publish(&dns_zones, &services);
                    services_published = Some(services);
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "Could not build the DNS snapshot; keeping the previous one")
                }
                Err(e) => {
                    warn!(error = %e, "The DNS snapshot build failed; keeping the previous one")
                }
            }
        }

        let retry_after = if retry {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = synced.changed() => if r.is_err() { break },
            r = local.changed() => if r.is_err() { break },
            r = tunnels.changed() => if r.is_err() { break },
            // Without the Kubernetes source this branch yields None, which disables it.
            Some(r) = async { Some(kube_ips.as_mut()?.changed().await) } => if r.is_err() { break },
            _ = tokio::time::sleep(retry_after) => {}
        }
    }
    info!("Gateway stopped");
    kube_prepared.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_key(dir.path()).unwrap();
        let second = load_or_create_key(dir.path()).unwrap();
        assert_eq!(first, second);
        std::fs::write(dir.path().join("wg.key"), "not base64!").unwrap();
        let err = load_or_create_key(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("wg.key"), "{err:#}");
    }
}
