//! The gateway daemon's wiring: the source feeds this cluster's exports to the broker; the
//! broker's view of the clusterset feeds the tunnels (one WireGuard peer per other cluster,
//! its CIDRs routed into the tunnel) and the DNS zone (every service's ready endpoints, nearest
//! first).
//!
//! The translations (`desired_peers`, `dns_services`) are pure and tested here; `run_gateway`
//! is the shell that owns the loop. Decisions about ranking live in `select`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::{GatewayArgs, SourceSpec};
use crate::model::{
    ClusterId, ClusterInfo, Endpoint, Export, Protocol, ServiceKey, check_dns_label,
};
use crate::select::{Health, Locality, select};
use crate::sync::proto::ClusterSetView;
use crate::sync::quic::{SyncConfig, SyncState, spawn_client};

/// The WireGuard peers this gateway should have: every other registered cluster, reached
/// through its global ranges (`model::plan`), never its local ones, which may be anybody's.
///
/// A range that holds a `protected` address (the brokers', any gateway's WireGuard endpoint,
/// our own) is never routed into a tunnel, whatever the broker says: it would cut this gateway
/// off from the broker or its peers. The broker refuses such claims; this is the second lock.
pub fn desired_peers(
    me: &ClusterId,
    view: &ClusterSetView,
    protected: &[IpAddr],
) -> Vec<causeway_gateway::PeerSpec> {
    let endpoints: Vec<IpAddr> = view.clusters.values().map(|c| c.wg_endpoint.ip()).collect();
    let safe = |net: &ipnet::IpNet| {
        !protected
            .iter()
            .chain(&endpoints)
            .any(|a| net.contains(&a.to_canonical()))
    };
    view.clusters
        .values()
        .filter(|c| &c.id != me)
        .map(|c| causeway_gateway::PeerSpec {
            public_key: c.wg_public_key,
            endpoint: c.wg_endpoint,
            allowed_ips: c.global.iter().map(|a| a.global).filter(safe).collect(),
        })
        .collect()
}

/// The services the DNS zones answer, each with its endpoints ranked for this cluster.
///
/// This cluster's own exports come from its source (so they resolve even before the broker has
/// echoed them back, and while it is away); every other cluster's from the broker's view.
/// `health` says which clusters are reachable and how far (see `select`).
///
/// A service is ClusterSetIP or headless as its first export says (this cluster's own, else
/// the lowest cluster id's); exports of the other kind are left out, since the broker resolves
/// such conflicts (KEP-1645: the oldest export wins) and one name cannot be both. For a
/// ClusterSetIP service each cluster answers with its cluster IPs, healthy while that cluster
/// has a ready endpoint; for a headless one, with the ready endpoints themselves. An endpoint
/// without a usable hostname gets its address with `.`/`:` replaced by `-` as its `H` label,
/// as the MCS conformance suite expects; one that still is no label gets no `H` name.
pub fn dns_services(
    me: &ClusterId,
    local: &[Export],
    view: &ClusterSetView,
    health: &Health,
) -> Vec<causeway_dns::ServiceRecords> {
    let localities = localities(view);
    exports_by_service(me, local, view)
        .into_iter()
        .map(|(service, exports)| dns_service(me, &localities, health, service, &exports))
        .collect()
}

/// Every service's exports with their clusters, as [`dns_services`] sees them: this cluster's
/// from its source first, then every other cluster's from the broker's view, by cluster id.
pub fn exports_by_service<'a>(
    me: &'a ClusterId,
    local: &'a [Export],
    view: &'a ClusterSetView,
) -> BTreeMap<&'a ServiceKey, Vec<(&'a ClusterId, &'a Export)>> {
    let mut by_service: BTreeMap<&ServiceKey, Vec<(&ClusterId, &Export)>> = BTreeMap::new();
    for export in local {
        by_service
            .entry(&export.service)
            .or_default()
            .push((me, export));
    }
    for ((cluster, service), export) in &view.exports {
        if cluster != me {
            by_service
                .entry(service)
                .or_default()
                .push((cluster, export));
        }
    }
    by_service
}

/// Where every registered cluster sits, for `select`.
pub fn localities(view: &ClusterSetView) -> BTreeMap<ClusterId, Locality> {
    view.clusters
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
        .collect()
}

/// One service's ranking as its DNS answers are built from it (see [`dns_services`]).
#[derive(Debug, Clone)]
pub struct RankedService {
    /// Headless (endpoints answered) rather than ClusterSetIP (cluster IPs answered).
    pub headless: bool,
    /// The clusters whose export is of the other kind, left out (KEP-1645 conflict).
    pub other_kind: Vec<ClusterId>,
    /// Every candidate address with its verdict and rank.
    pub selection: crate::select::Selection,
}

/// Ranks one service's exports (each with its cluster, the deciding one first) as cluster
/// `me` answers them: the rule [`dns_services`] applies, exposed for `explain`.
pub fn rank_service(
    me: &ClusterId,
    localities: &BTreeMap<ClusterId, Locality>,
    health: &Health,
    exports: &[(&ClusterId, &Export)],
) -> RankedService {
    let headless = exports
        .first()
        .is_none_or(|(_, e)| e.cluster_ips.is_empty());
    let same_kind: Vec<(&ClusterId, &Export)> = exports
        .iter()
        .filter(|(_, e)| e.cluster_ips.is_empty() == headless)
        .copied()
        .collect();
    let offered = offered(headless, &same_kind);
    let selection = select(
        me,
        localities,
        health,
        offered.iter().map(|(c, e)| (*c, e.as_slice())),
    );
    RankedService {
        headless,
        other_kind: exports
            .iter()
            .filter(|(_, e)| e.cluster_ips.is_empty() != headless)
            .map(|(c, _)| (*c).clone())
            .collect(),
        selection,
    }
}

/// What each cluster offers: its endpoints (headless), or its cluster IPs, ready while any
/// endpoint behind them is.
fn offered<'a>(
    headless: bool,
    same_kind: &[(&'a ClusterId, &Export)],
) -> Vec<(&'a ClusterId, Vec<Endpoint>)> {
    same_kind
        .iter()
        .map(|(cluster, export)| {
            let endpoints = if headless {
                export
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        hostname: Some(host_label(e)).filter(|h| !h.is_empty()),
                        ..e.clone()
                    })
                    .collect()
            } else {
                let ready = export.endpoints.iter().any(|e| e.ready);
                export
                    .cluster_ips
                    .iter()
                    .map(|ip| Endpoint {
                        address: *ip,
                        ready,
                        hostname: None,
                        zone: None,
                    })
                    .collect()
            };
            (*cluster, endpoints)
        })
        .collect()
}

fn dns_service(
    me: &ClusterId,
    localities: &BTreeMap<ClusterId, Locality>,
    health: &Health,
    service: &ServiceKey,
    exports: &[(&ClusterId, &Export)],
) -> causeway_dns::ServiceRecords {
    let RankedService {
        headless,
        selection,
        ..
    } = rank_service(me, localities, health, exports);
    let same_kind: Vec<(&ClusterId, &Export)> = exports
        .iter()
        .filter(|(_, e)| e.cluster_ips.is_empty() == headless)
        .copied()
        .collect();
    let clusters = selection
        .clusters()
        .into_iter()
        .map(|c| causeway_dns::ClusterRecords {
            cluster: c.cluster.to_string(),
            priority: u16::try_from(c.group).unwrap_or(u16::MAX),
            addresses: c.addresses,
            hosts: c
                .hosts
                .into_iter()
                .map(|(hostname, address)| causeway_dns::HostRecord { hostname, address })
                .collect(),
        })
        .collect();
    let mut ports: Vec<causeway_dns::NamedPort> = Vec::new();
    for (_, export) in &same_kind {
        for port in &export.ports {
            let Some(name) = &port.name else { continue };
            let protocol = match port.protocol {
                Protocol::Tcp => causeway_dns::PortProtocol::Tcp,
                Protocol::Udp => causeway_dns::PortProtocol::Udp,
                Protocol::Sctp => causeway_dns::PortProtocol::Sctp,
            };
            // Ports merge as a union across clusters (KEP-1645); the first spelling wins.
            if !ports
                .iter()
                .any(|p| &p.name == name && p.protocol == protocol)
                && check_dns_label("port name", name, false).is_ok()
            {
                ports.push(causeway_dns::NamedPort {
                    name: name.clone(),
                    port: port.port,
                    protocol,
                });
            }
        }
    }
    causeway_dns::ServiceRecords {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        kind: if headless {
            causeway_dns::ServiceKind::Headless
        } else {
            // No clusterset IP is allocated yet: the MCS zone answers the ranked cluster IPs.
            causeway_dns::ServiceKind::ClusterSetIp {
                clusterset_ips: Vec::new(),
            }
        },
        tiers: selection.tiers(),
        clusters,
        ports,
    }
}

/// Puts each ClusterSetIP service's allocated clusterset IPs (from the ServiceImports of the
/// Kubernetes source) into its DNS records, so that `S.N.svc.clusterset.local` answers them
/// (MCS DNS spec; conformance check 22). Services without one keep the ranked cluster IPs.
pub fn with_clusterset_ips(
    services: &mut [causeway_dns::ServiceRecords],
    ips: &BTreeMap<ServiceKey, Vec<IpAddr>>,
) {
    for service in services {
        let key = ServiceKey {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        };
        if let causeway_dns::ServiceKind::ClusterSetIp { clusterset_ips } = &mut service.kind {
            clusterset_ips.clone_from(ips.get(&key).unwrap_or(&Vec::new()));
        }
    }
}

/// An endpoint's `H` label: its hostname when that is a DNS label, else its address with
/// `.`/`:` as `-` (the MCS conformance suite's fallback); empty when neither is a label.
fn host_label(endpoint: &Endpoint) -> String {
    if let Some(hostname) = &endpoint.hostname
        && check_dns_label("hostname", hostname, false).is_ok()
    {
        return hostname.clone();
    }
    let fallback = endpoint.address.to_string().replace(['.', ':'], "-");
    if check_dns_label("hostname", &fallback, false).is_ok() {
        fallback
    } else {
        String::new()
    }
}

/// What this gateway's own tunnel probes say of the other clusters, for `select`.
///
/// A cluster whose gateway the probes report `Down` is unreachable: its endpoints leave this
/// cluster's answers at once, without waiting for the broker. A peer not probed yet (just
/// added, `Unknown`) counts as reachable, so that a new cluster is answered at once; if it
/// cannot be reached it goes `Down` within the prober's down time (under 1 s by default).
/// Remote clusters are ranked by the probes' round-trip time.
pub fn health_view(
    me: &ClusterId,
    view: &ClusterSetView,
    peers: &BTreeMap<[u8; 32], causeway_gateway::PeerHealth>,
) -> Health {
    let mut reachable = BTreeSet::from([me.clone()]);
    let mut rtt = BTreeMap::new();
    for cluster in view.clusters.values().filter(|c| &c.id != me) {
        let health = peers.get(&cluster.wg_public_key);
        if health.is_none_or(|h| h.state != causeway_gateway::HealthState::Down) {
            reachable.insert(cluster.id.clone());
        }
        if let Some(r) = health.and_then(|h| h.rtt) {
            rtt.insert(cluster.id.clone(), r);
        }
    }
    Health {
        reachable: Some(reachable),
        rtt,
        ..Health::default()
    }
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
    // `--source kube`: the API client, and with --leader-elect, wait to lead (a standby holds
    // no tunnel or DNS socket); `shutdown` then also fires when leadership is lost.
    let kube_prepared = crate::source::k8s::run::prepare(&args, shutdown).await?;
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
            let source = crate::source::k8s::run::start(&args, &kube_prepared).await?;
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
    let admin_info = crate::admin::GatewayInfo {
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

        let peers = desired_peers(&me, &state.view, &protected);
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
            global: vec![crate::model::Allocation {
                local: format!("10.10{n}.0.0/16").parse().unwrap(),
                global: format!("100.{}.0.0/16", 63 + n).parse().unwrap(),
            }],
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
                    zone: None,
                })
                .collect(),
            props: Default::default(),
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
    fn peers_are_every_other_cluster_with_its_global_ranges() {
        let v = view(&[cluster("c1", 1), cluster("c2", 2), cluster("c3", 3)], &[]);
        let peers = desired_peers(&id("c1"), &v, &[]);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, [2; 32]);
        assert_eq!(peers[0].allowed_ips, vec!["100.65.0.0/16".parse().unwrap()]);
        assert_eq!(peers[1].endpoint, "10.100.0.13:51820".parse().unwrap());
    }

    #[test]
    fn ranges_holding_the_broker_or_an_endpoint_are_never_routed() {
        let mut c2 = cluster("c2", 2);
        let mut c3 = cluster("c3", 3);
        // As an old or hostile broker might send: c2's range holds c3's endpoint, c3's the
        // broker.
        c2.global[0].global = "10.100.0.0/24".parse().unwrap();
        c3.global[0].global = "10.0.0.0/8".parse().unwrap();
        c3.global.push(crate::model::Allocation {
            local: "10.200.0.0/16".parse().unwrap(),
            global: "100.70.0.0/16".parse().unwrap(),
        });
        let v = view(&[cluster("c1", 1), c2, c3], &[]);
        let broker: IpAddr = "192.0.2.1".parse().unwrap();
        let peers = desired_peers(&id("c1"), &v, &[broker, "10.0.0.1".parse().unwrap()]);
        assert_eq!(peers[0].allowed_ips, vec![]);
        assert_eq!(peers[1].allowed_ips, vec!["100.70.0.0/16".parse().unwrap()]);
    }

    #[test]
    fn remote_addresses_are_answered_as_global_ones_and_own_stay_local() {
        let v = view(
            &[cluster("c1", 1), cluster("c2", 2)],
            &[
                (
                    "c2",
                    with_cluster_ip(
                        export("shop", "web", &["10.102.0.10", "10.99.0.1"]),
                        "10.102.128.5",
                    ),
                ),
                ("c1", export("shop", "api", &["10.101.0.10"])),
            ],
        );
        let reached = v.reached_from(&id("c1"));
        let web = &reached.exports[&(id("c2"), ServiceKey::new("shop", "web").unwrap())];
        let addresses: Vec<String> = web
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(
            addresses,
            ["100.65.0.10"],
            "untranslatable 10.99.0.1 left out"
        );
        assert_eq!(
            web.cluster_ips,
            vec!["100.65.128.5".parse::<IpAddr>().unwrap()]
        );
        let api = &reached.exports[&(id("c1"), ServiceKey::new("shop", "api").unwrap())];
        assert_eq!(api.endpoints[0].address.to_string(), "10.101.0.10");
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
        let services = dns_services(&id("c1"), &local, &v, &Health::default());
        assert_eq!(
            services.len(),
            1,
            "only the source says what c1 exports: {services:?}"
        );
        assert_eq!(
            tiers(&services[0]),
            [vec!["10.101.0.10"], vec!["10.103.0.10"]]
        );
    }

    #[test]
    fn remote_only_services_are_answered() {
        let v = view(
            &[cluster("c1", 1)],
            &[("c1", export("shop", "web", &["10.101.0.10"]))],
        );
        let services = dns_services(&id("c2"), &[], &v, &Health::default());
        assert_eq!(services[0].name, "web");
        assert_eq!(tiers(&services[0]), [vec!["10.101.0.10"]]);
    }

    fn tiers(service: &causeway_dns::ServiceRecords) -> Vec<Vec<String>> {
        service
            .tiers
            .iter()
            .map(|g| g.iter().map(IpAddr::to_string).collect())
            .collect()
    }

    fn with_cluster_ip(mut e: Export, ip: &str) -> Export {
        e.cluster_ips = vec![ip.parse().unwrap()];
        e
    }

    fn with_port(mut e: Export, name: Option<&str>, port: u16, protocol: Protocol) -> Export {
        e.ports.push(crate::model::PortSpec {
            name: name.map(str::to_owned),
            port,
            protocol,
            app_protocol: None,
        });
        e
    }

    fn unready(mut e: Export) -> Export {
        for endpoint in &mut e.endpoints {
            endpoint.ready = false;
        }
        e
    }

    /// Renders what the DNS gets for one service: kind, tiers, clusters (id, priority,
    /// addresses, hosts) and ports.
    fn render(service: &causeway_dns::ServiceRecords) -> String {
        let clusters: Vec<String> = service
            .clusters
            .iter()
            .map(|c| {
                let hosts: Vec<String> = c
                    .hosts
                    .iter()
                    .map(|h| format!("{}={}", h.hostname, h.address))
                    .collect();
                format!(
                    "{}@{}{:?}{:?}",
                    c.cluster,
                    c.priority,
                    c.addresses
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>(),
                    hosts
                )
            })
            .collect();
        let ports: Vec<String> = service
            .ports
            .iter()
            .map(|p| format!("{}/{:?}={}", p.name, p.protocol, p.port))
            .collect();
        let kind = match service.kind {
            causeway_dns::ServiceKind::Headless => "headless",
            causeway_dns::ServiceKind::ClusterSetIp { .. } => "clusterip",
        };
        format!("{kind} {:?} {clusters:?} {ports:?}", tiers(service))
    }

    #[test]
    fn dns_services_table() {
        let three = [cluster("c1", 1), cluster("c2", 2), cluster("c3", 3)];
        let mut db0 = export("shop", "db", &["10.102.0.10", "10.102.0.11"]);
        db0.endpoints[0].hostname = Some("db-0".into());
        db0.endpoints[1].hostname = Some("Not_A_Label".into());
        /// (what, this cluster's exports, others' exports, health, rendered result)
        type Case<'a> = (
            &'a str,
            Vec<Export>,
            Vec<(&'a str, Export)>,
            Health,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "cluster IPs: one address per cluster, own first, the rest one group",
                vec![with_cluster_ip(
                    export("shop", "web", &["10.101.0.10"]),
                    "10.96.1.1",
                )],
                vec![
                    (
                        "c2",
                        with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
                    ),
                    (
                        "c3",
                        with_cluster_ip(export("shop", "web", &["10.103.0.10"]), "10.96.3.1"),
                    ),
                ],
                Health::default(),
                r#"clusterip [["10.96.1.1"], ["10.96.2.1", "10.96.3.1"]] ["c1@0[\"10.96.1.1\"][]", "c2@1[\"10.96.2.1\"][]", "c3@1[\"10.96.3.1\"][]"] []"#,
            ),
            (
                "a cluster IP with no ready endpoint behind it is left out",
                vec![],
                vec![
                    (
                        "c2",
                        unready(with_cluster_ip(
                            export("shop", "web", &["10.102.0.10"]),
                            "10.96.2.1",
                        )),
                    ),
                    (
                        "c3",
                        with_cluster_ip(export("shop", "web", &["10.103.0.10"]), "10.96.3.1"),
                    ),
                ],
                Health::default(),
                r#"clusterip [["10.96.3.1"]] ["c3@0[\"10.96.3.1\"][]"] []"#,
            ),
            (
                "unreachable clusters are left out (fail closed leaves nothing)",
                vec![],
                vec![(
                    "c2",
                    with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
                )],
                Health {
                    reachable: Some(std::collections::BTreeSet::from([id("c3")])),
                    ..Health::default()
                },
                r#"clusterip [] [] []"#,
            ),
            (
                "headless: hostnames, else the address as a label",
                vec![],
                vec![("c2", db0.clone())],
                Health::default(),
                r#"headless [["10.102.0.10", "10.102.0.11"]] ["c2@0[\"10.102.0.10\", \"10.102.0.11\"][\"db-0=10.102.0.10\", \"10-102-0-11=10.102.0.11\"]"] []"#,
            ),
            (
                "named ports merge as a union; unnamed ports get no SRV",
                vec![with_port(
                    with_port(
                        export("shop", "db", &["10.101.0.10"]),
                        Some("pg"),
                        5432,
                        Protocol::Tcp,
                    ),
                    None,
                    9,
                    Protocol::Tcp,
                )],
                vec![(
                    "c2",
                    with_port(
                        with_port(db0, Some("pg"), 5433, Protocol::Tcp),
                        Some("stats"),
                        8125,
                        Protocol::Udp,
                    ),
                )],
                Health::default(),
                r#"headless [["10.101.0.10"], ["10.102.0.10", "10.102.0.11"]] ["c1@0[\"10.101.0.10\"][\"10-101-0-10=10.101.0.10\"]", "c2@1[\"10.102.0.10\", \"10.102.0.11\"][\"db-0=10.102.0.10\", \"10-102-0-11=10.102.0.11\"]"] ["pg/Tcp=5432", "stats/Udp=8125"]"#,
            ),
            (
                "the first export decides the kind; the other kind is left out",
                vec![export("shop", "web", &["10.101.0.10"])],
                vec![(
                    "c2",
                    with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
                )],
                Health::default(),
                r#"headless [["10.101.0.10"]] ["c1@0[\"10.101.0.10\"][\"10-101-0-10=10.101.0.10\"]"] []"#,
            ),
        ];
        for (what, local, remote, health, expected) in cases {
            let v = view(&three, &remote);
            let services = dns_services(&id("c1"), &local, &v, &health);
            let [service] = &services[..] else {
                panic!("{what}: one service expected, got {services:?}");
            };
            assert_eq!(render(service), expected, "{what}");
        }
    }

    #[test]
    fn dns_services_build_a_snapshot_that_answers_pinned_and_srv_names() {
        let v = view(
            &[cluster("c1", 1), cluster("c2", 2)],
            &[(
                "c2",
                with_port(
                    with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
                    Some("http"),
                    80,
                    Protocol::Tcp,
                ),
            )],
        );
        let services = dns_services(&id("c1"), &[], &v, &Health::default());
        let snapshot = causeway_dns::Snapshot::new(&causeway_dns::ZoneConfig::default(), services)
            .expect("the translation yields a valid snapshot");
        let ask = |name: &str, t| {
            let name = name.parse().unwrap();
            let answer = snapshot.answer(&name, t, 0);
            answer
                .answers()
                .iter()
                .map(|r| r.data.to_string())
                .collect::<Vec<_>>()
        };
        use causeway_dns::proto::rr::RecordType;
        assert_eq!(ask("c2.web.shop.svc.global.", RecordType::A), ["10.96.2.1"]);
        assert_eq!(
            ask("_http._tcp.web.shop.svc.global.", RecordType::SRV),
            ["0 1 80 c2.web.shop.svc.global."]
        );
    }

    #[test]
    fn clusters_whose_tunnel_is_down_are_unreachable_and_rtt_ranks_the_rest() {
        use causeway_gateway::{HealthState, PeerHealth};
        let v = view(
            &[
                cluster("c1", 1),
                cluster("c2", 2),
                cluster("c3", 3),
                cluster("c4", 4),
            ],
            &[],
        );
        let health = |state, rtt_ms: Option<u64>| PeerHealth {
            state,
            rtt: rtt_ms.map(Duration::from_millis),
            lost: 0,
            window: 0,
        };
        let peers = BTreeMap::from([
            ([2; 32], health(HealthState::Down, Some(3))),
            ([3; 32], health(HealthState::Degraded, Some(7))),
            ([4; 32], health(HealthState::Unknown, None)),
        ]);
        let h = health_view(&id("c1"), &v, &peers);
        let reachable: Vec<&str> = h
            .reachable
            .iter()
            .flatten()
            .map(ClusterId::as_str)
            .collect();
        assert_eq!(
            reachable,
            ["c1", "c3", "c4"],
            "down is out; degraded and not-yet-probed are in"
        );
        assert_eq!(h.rtt.get(&id("c3")), Some(&Duration::from_millis(7)));
        assert_eq!(h.rtt.get(&id("c4")), None);

        let services = dns_services(
            &id("c1"),
            &[],
            &view(
                &[cluster("c1", 1), cluster("c2", 2), cluster("c3", 3)],
                &[
                    ("c2", export("shop", "web", &["10.102.0.10"])),
                    ("c3", export("shop", "web", &["10.103.0.10"])),
                ],
            ),
            &h,
        );
        let answered: Vec<String> = services[0]
            .tiers
            .iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            answered,
            ["10.103.0.10"],
            "c2's endpoint is left out while its tunnel is down"
        );
    }

    #[test]
    fn clusterset_ips_from_imports_are_answered_in_the_mcs_zone() {
        let v = view(
            &[cluster("c1", 1), cluster("c2", 2)],
            &[(
                "c2",
                with_cluster_ip(export("shop", "web", &["10.102.0.10"]), "10.96.2.1"),
            )],
        );
        let mut services = dns_services(&id("c1"), &[], &v, &Health::default());
        let ips = BTreeMap::from([(
            ServiceKey::new("shop", "web").unwrap(),
            vec!["10.255.0.1".parse().unwrap()],
        )]);
        with_clusterset_ips(&mut services, &ips);
        let snapshot = causeway_dns::Snapshot::new(&causeway_dns::ZoneConfig::default(), services)
            .expect("a valid snapshot");
        let name = "web.shop.svc.clusterset.local.".parse().unwrap();
        let answer = snapshot.answer(&name, causeway_dns::proto::rr::RecordType::A, 0);
        let got: Vec<String> = answer
            .answers()
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(
            got,
            ["10.255.0.1"],
            "the ServiceImport's IP, not c2's cluster IP"
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
