//! The gateway's admin port (`--admin-listen`, default `127.0.0.1:9990`): what an operator and
//! the CLI see of a running gateway.
//!
//! - `GET /metrics`: Prometheus text exposition (see `metrics` for every family);
//! - `GET /healthz`: 200 while the process serves HTTP at all;
//! - `GET /readyz`: 200 once ready, 503 before, by the rule of [`readiness`];
//! - `GET /api/v1/status`: the [`crate::status::api::Status`] document `causeway status` and `diagnose` read;
//! - `GET /api/v1/explain?name=NAME&type=A|AAAA|SRV`: the [`crate::status::api::Explanation`] of `explain`;
//! - `GET /api/v1/dns/records?instance=I&after=G&wait_ms=W`: the long poll DNS replicas
//!   follow (`crate::replica`).
//!
//! The gateway loop publishes a [`GatewayView`] on every change; the server reads the latest
//! one, and asks the data plane and the DNS server for their live counters per request
//! ([`Sources`]). Module map: `server` (the axum shell),
//! `metrics` (the exposition and the endpoint-probe recorder), `lookup` (one real DNS query),
//! `client` (the CLI's JSON GET), `link_mtu` (the kernel's MTU towards a peer); the HTTP
//! plumbing itself is `crate::http`.

pub mod client;
pub mod link_mtu;
pub mod lookup;
pub mod metrics;
mod server;

use std::time::Instant;

use futures::future::BoxFuture;

use crate::model::{ClusterId, Export};
use crate::select::Health;
use crate::status::GatewayView;
use crate::sync::proto::SyncState;

pub use server::{AdminServer, serve, serve_standby};

/// The admin address unless `--admin-listen` says otherwise: loopback only, since the API
/// shows the whole clusterset's topology.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9990";

/// Where the server reads live counters; the gateway passes its data plane and DNS handles,
/// tests pass fakes.
pub trait Sources: Send + Sync + 'static {
    /// Every peer's counters now.
    fn peer_stats(&self) -> BoxFuture<'_, Vec<causeway_gateway::PeerStats>>;
    /// The data plane's drop counters now.
    fn device_stats(&self) -> BoxFuture<'_, causeway_gateway::DeviceStats>;
    /// The DNS server's query counters now.
    fn dns_stats(&self) -> causeway_dns::StatsSnapshot;
    /// The records the DNS serves, for `GET /api/v1/dns/records` (DNS replicas); `None`
    /// answers that route 404.
    fn dns_records(&self) -> Option<crate::replica::http::RecordsFeed> {
        None
    }
}

/// The running gateway's handles as [`Sources`].
#[derive(Debug, Clone)]
pub struct GatewaySources {
    pub gateway: causeway_gateway::Handle,
    pub dns: causeway_dns::Handle,
    pub records: crate::replica::http::RecordsFeed,
}

impl Sources for GatewaySources {
    fn peer_stats(&self) -> BoxFuture<'_, Vec<causeway_gateway::PeerStats>> {
        Box::pin(self.gateway.stats())
    }
    fn device_stats(&self) -> BoxFuture<'_, causeway_gateway::DeviceStats> {
        Box::pin(self.gateway.device_stats())
    }
    fn dns_stats(&self) -> causeway_dns::StatsSnapshot {
        self.dns.stats()
    }
    fn dns_records(&self) -> Option<crate::replica::http::RecordsFeed> {
        Some(self.records.clone())
    }
}

/// The readiness rule of `/readyz`: ready once the DNS listener answers (a real SOA query
/// for the zone apex, `dns_answers`) and a full view from the broker has been loaded in this
/// process. Once ready it stays ready while the broker is away: the last known view is
/// served. (The gateway keeps no view on disk, so after a restart it is not ready until the
/// broker is reached again.) Returns the verdict and its reason in words.
pub fn readiness(view: &GatewayView, dns_answers: Result<(), String>) -> (bool, String) {
    match (dns_answers, view.synced()) {
        (Err(why), _) => (false, format!("DNS is not answering: {why}")),
        (Ok(()), false) => (
            false,
            "DNS is serving, but no view has been synced from the broker yet".to_owned(),
        ),
        (Ok(()), true) if view.sync.connected => (
            true,
            format!(
                "DNS is serving and the broker's view (revision {}) is loaded",
                view.sync.view.revision
            ),
        ),
        (Ok(()), true) => (
            true,
            format!(
                "DNS is serving the last known view (revision {}); the broker is unreachable",
                view.sync.view.revision
            ),
        ),
    }
}

/// Publishes the gateway loop's state to the admin server, stamping when the synced view
/// last changed (for the sync lag and readiness).
#[derive(Debug)]
pub struct ViewPublisher {
    tx: tokio::sync::watch::Sender<GatewayView>,
    /// The (epoch, revision) of the view last seen while connected.
    seen: Option<(u64, u64)>,
}

impl ViewPublisher {
    /// A publisher and the receiver to hand to [`serve`].
    pub fn new(cluster: ClusterId) -> (Self, tokio::sync::watch::Receiver<GatewayView>) {
        let (tx, rx) = tokio::sync::watch::channel(GatewayView::new(cluster));
        (Self { tx, seen: None }, rx)
    }

    /// Call on every turn of the gateway loop with what it holds now.
    pub fn publish(&mut self, local: &[Export], sync: &SyncState, health: &Health, now: Instant) {
        let at = (sync.view.epoch, sync.view.revision);
        let updated = sync.connected && self.seen != Some(at);
        if updated {
            self.seen = Some(at);
        }
        self.tx.send_modify(|v| {
            v.local = local.to_vec();
            v.sync = sync.clone();
            v.health = health.clone();
            if updated {
                v.last_update = Some(now);
            }
        });
    }
}

#[cfg(test)]
mod tests;
