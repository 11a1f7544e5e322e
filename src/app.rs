//! The gateway daemon's wiring: the source feeds this cluster's exports to the broker; the
//! broker's view of the clusterset feeds the tunnels (one WireGuard peer per other cluster,
//! its CIDRs routed into the tunnel) and the DNS zone (every service's ready endpoints, nearest
//! first).
//!
//! The translations (`desired_peers`, `dns_services`) are pure and tested here; `run_gateway`
//! is the shell that owns the loop. Decisions about ranking live in `select`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::{GatewayArgs, SourceSpec};
use crate::model::{ClusterId, ClusterInfo, Endpoint, Export, ServiceKey};
use crate::select::{Locality, select};
use crate::sync::proto::ClusterSetView;
use crate::sync::quic::{SyncConfig, SyncState, spawn_client};

/// The WireGuard peers this gateway should have: every other registered cluster.
pub fn desired_peers(me: &ClusterId, view: &ClusterSetView) -> Vec<causeway_gateway::PeerSpec> {
    view.clusters
        .values()
        .filter(|c| &c.id != me)
        .map(|c| causeway_gateway::PeerSpec {
            public_key: c.wg_public_key,
            endpoint: c.wg_endpoint,
            allowed_ips: c.cidrs.clone(),
        })
        .collect()
}

/// The services the DNS zone answers, each with its addresses ranked for this cluster.
///
/// This cluster's own exports come from its source (so they resolve even before the broker has
/// echoed them back, and while it is away); every other cluster's from the broker's view.
pub fn dns_services(
    me: &ClusterId,
    local: &[Export],
    view: &ClusterSetView,
) -> Vec<causeway_dns::ServiceRecords> {
    let localities: BTreeMap<ClusterId, Locality> = view
        .clusters
        .values()
        .map(|c| {
            (
                c.id.clone(),
                Locality {
                    region: c.region.clone(),
                    zone: c.zone.clone(),
                },
            )
        })
        .collect();
    let mut by_service: BTreeMap<&ServiceKey, Vec<(&ClusterId, &[Endpoint])>> = BTreeMap::new();
    for export in local {
        by_service
            .entry(&export.service)
            .or_default()
            .push((me, &export.endpoints));
    }
    for ((cluster, service), export) in &view.exports {
        if cluster != me {
            by_service
                .entry(service)
                .or_default()
                .push((cluster, &export.endpoints));
        }
    }
    by_service
        .into_iter()
        .map(|(service, candidates)| causeway_dns::ServiceRecords {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            addresses: select(me, &localities, candidates).addresses(),
        })
        .collect()
}

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

    let dns = causeway_dns::serve(
        causeway_dns::Config {
            listen: args.dns_listen,
            zone: args.dns_zone.clone(),
            ttl: args.dns_ttl,
        },
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("serving DNS on {}", args.dns_listen))?;

    let SourceSpec::File(dir) = &args.source;
    let mut local = crate::source::file::watch(dir.clone(), shutdown.clone())
        .await
        .with_context(|| format!("reading the file source {}", dir.display()))?;

    let info = ClusterInfo {
        id: me.clone(),
        wg_endpoint,
        wg_public_key: gateway.public_key(),
        cidrs: args.cidrs.clone(),
        region: args.region.clone(),
        zone: args.zone.clone(),
    };
    let sync_config = SyncConfig {
        brokers: args.brokers.clone(),
        tls_dir: args.tls_dir.clone(),
        reconnect_backoff_max: Duration::from_secs(5),
    };
    let mut synced = spawn_client(sync_config, info, local.clone(), shutdown.clone())
        .context("starting the broker client")?;
    info!(cluster = %me, wg = %wg_endpoint, dns = %dns.local_addr(), brokers = ?args.brokers, "Gateway started");

    let mut peers_applied: Option<Vec<causeway_gateway::PeerSpec>> = None;
    let mut was_connected = None;
    loop {
        let state: SyncState = synced.borrow_and_update().clone();
        let exports = local.borrow_and_update().clone();
        if was_connected != Some(state.connected) {
            if state.connected {
                info!(revision = state.view.revision, "Broker connected");
            } else if was_connected.is_some() {
                warn!("Broker unreachable: serving the last known state");
            }
            was_connected = Some(state.connected);
        }

        let peers = desired_peers(&me, &state.view);
        let mut retry = false;
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
        let services = dns_services(&me, &exports, &state.view);
        match causeway_dns::Snapshot::new(&args.dns_zone, args.dns_ttl, services) {
            Ok(snapshot) => dns.publish(snapshot),
            Err(e) => {
                warn!(error = %e, "Could not build the DNS snapshot; keeping the previous one")
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
            _ = tokio::time::sleep(retry_after) => {}
        }
    }
    info!("Gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn cluster(name: &str, n: u8) -> ClusterInfo {
        ClusterInfo {
            id: id(name),
            wg_endpoint: SocketAddr::from(([10, 100, 0, 10 + n], 51820)),
            wg_public_key: [n; 32],
            cidrs: vec![format!("10.10{n}.0.0/16").parse().unwrap()],
            region: None,
            zone: None,
        }
    }

    fn export(ns: &str, name: &str, addrs: &[&str]) -> Export {
        Export {
            service: ServiceKey::new(ns, name).unwrap(),
            cluster_ips: vec![],
            ports: vec![],
            endpoints: addrs
                .iter()
                .map(|a| Endpoint {
                    address: a.parse().unwrap(),
                    ready: true,
                    hostname: None,
                })
                .collect(),
        }
    }

    fn view(clusters: &[ClusterInfo], exports: &[(&str, Export)]) -> ClusterSetView {
        let mut v = ClusterSetView::default();
        for c in clusters {
            v.clusters.insert(c.id.clone(), c.clone());
        }
        for (c, e) in exports {
            v.exports.insert((id(c), e.service.clone()), e.clone());
        }
        v
    }

    #[test]
    fn peers_are_every_other_cluster_with_its_cidrs() {
        let v = view(&[cluster("c1", 1), cluster("c2", 2), cluster("c3", 3)], &[]);
        let peers = desired_peers(&id("c1"), &v);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, [2; 32]);
        assert_eq!(peers[0].allowed_ips, vec!["10.102.0.0/16".parse().unwrap()]);
        assert_eq!(peers[1].endpoint, "10.100.0.13:51820".parse().unwrap());
    }

    #[test]
    fn own_exports_come_from_the_source_and_rank_first() {
        let v = view(
            &[cluster("c1", 1), cluster("c3", 3)],
            &[
                ("c1", export("shop", "web", &["10.101.0.99"])), // stale echo of our own: ignored
                ("c3", export("shop", "web", &["10.103.0.10"])),
                ("c1", export("shop", "gone", &["10.101.0.98"])),
            ],
        );
        let local = [export("shop", "web", &["10.101.0.10"])];
        let services = dns_services(&id("c1"), &local, &v);
        assert_eq!(
            services.len(),
            1,
            "only the source says what c1 exports: {services:?}"
        );
        let addrs: Vec<String> = services[0]
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(addrs, ["10.101.0.10", "10.103.0.10"]);
    }

    #[test]
    fn remote_only_services_are_answered() {
        let v = view(
            &[cluster("c1", 1)],
            &[("c1", export("shop", "web", &["10.101.0.10"]))],
        );
        let services = dns_services(&id("c2"), &[], &v);
        assert_eq!(services[0].name, "web");
        assert_eq!(
            services[0].addresses,
            vec!["10.101.0.10".parse::<IpAddr>().unwrap()]
        );
    }

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
