//! The shell of the Kubernetes source (`causeway gateway --source kube`): reflectors observe,
//! `plan()` decides, `Applied` writes. One task owns the loop; it only moves data.
//!
//! Observes ServiceExports, Services, EndpointSlices, ServiceImports and Namespaces with
//! kube-runtime reflectors (a watch that breaks resumes from its last resourceVersion, with
//! kube's default backoff, without relisting unless the server says the version is gone).
//! Plans nothing before every store has its first full list, and imports nothing before the
//! broker's first full view (`publish_view`). Publishes this cluster's exports on a watch
//! channel, like the file source.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt as _;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::apply::Applied;
use super::crd::{ServiceExport, ServiceImport};
use super::export::{CLUSTER_ID_PROPERTY, ClusterProperty, cluster_id};
use super::plan::{Observed, Settings, plan};
use crate::model::{ClusterId, Export, IdError, ServiceKey};
use crate::sync::proto::ClusterSetView;
use crate::sync::proto::SyncState;

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the {CLUSTER_ID_PROPERTY} ClusterProperty")]
    ClusterProperty(#[source] kube::Error),
    #[error("the {CLUSTER_ID_PROPERTY} ClusterProperty is no valid cluster id")]
    ClusterId(#[source] IdError),
}

/// A running Kubernetes source.
pub struct KubeSource {
    /// This cluster's id (from the ClusterProperty, else the flag).
    pub cluster: ClusterId,
    /// This cluster's valid exports, for the broker.
    pub exports: watch::Receiver<Vec<Export>>,
    /// The clusterset IPs of this cluster's ClusterSetIP imports, for the MCS DNS zone's
    /// `S.N.svc.clusterset.local` answers.
    pub clusterset_ips: watch::Receiver<BTreeMap<ServiceKey, Vec<IpAddr>>>,
    view: watch::Sender<Option<ClusterSetView>>,
}

impl KubeSource {
    /// Hands the broker's view to the controller. Call on every sync change; the view counts
    /// once the client has been connected (and up to date) at least once, and is kept, stale,
    /// while disconnected.
    pub fn publish_view(&self, state: &SyncState) {
        let known = self.view.borrow().is_some();
        if state.connected || known {
            self.view.send_if_modified(|v| {
                let changed = v.as_ref() != Some(&state.view);
                if changed {
                    *v = Some(state.view.clone());
                }
                changed
            });
        }
    }
}

/// Resolves the cluster id and starts the controller task.
pub async fn start(
    client: kube::Client,
    flag: &ClusterId,
    clusterset_ranges: Vec<IpNet>,
    shutdown: CancellationToken,
) -> Result<KubeSource, Error> {
    let properties: Api<ClusterProperty> = Api::all(client.clone());
    let property = match properties.get_opt(CLUSTER_ID_PROPERTY).await {
        Ok(property) => property,
        // Without the about.k8s.io CRD a real API server answers a bare "404 page not found"
        // (not a NotFound Status, which get_opt would turn into None): no property either.
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        // Not allowed to read it (RBAC without `get clusterproperties`): say so and go on with
        // the flag's id, which the certificate pins anyway, rather than exit.
        Err(kube::Error::Api(status)) if status.code == 403 => {
            warn!(
                error = %status.message,
                cluster = %flag,
                "Cannot read the {CLUSTER_ID_PROPERTY} ClusterProperty (forbidden): using --cluster-id"
            );
            None
        }
        Err(e) => return Err(Error::ClusterProperty(e)),
    };
    let cluster = cluster_id(property.as_ref().map(|p| p.spec.value.as_str()), flag)
        .map_err(Error::ClusterId)?;
    if property.is_some() {
        info!(cluster = %cluster, "Cluster id from the {CLUSTER_ID_PROPERTY} ClusterProperty");
    }
    let (exports_tx, exports) = watch::channel(Vec::new());
    let (ips_tx, clusterset_ips) = watch::channel(BTreeMap::new());
    let (view, view_rx) = watch::channel(None);
    let settings = Settings {
        cluster: cluster.clone(),
        clusterset_ranges,
    };
    let outputs = Outputs {
        exports: exports_tx,
        clusterset_ips: ips_tx,
    };
    tokio::spawn(run(client, settings, outputs, view_rx, shutdown));
    Ok(KubeSource {
        cluster,
        exports,
        clusterset_ips,
        view,
    })
}

/// What the loop publishes.
struct Outputs {
    exports: watch::Sender<Vec<Export>>,
    clusterset_ips: watch::Sender<BTreeMap<ServiceKey, Vec<IpAddr>>>,
}

/// The reflectors' stores.
struct Stores {
    service_exports: Store<ServiceExport>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    service_imports: Store<ServiceImport>,
    namespaces: Store<Namespace>,
}

impl Stores {
    fn observe(&self) -> Observed {
        Observed {
            service_exports: self.service_exports.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            service_imports: self.service_imports.state(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect::<BTreeSet<_>>(),
        }
    }

    async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.service_exports.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.service_imports.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await
    }
}

/// Starts one reflector; each event bumps `tick`.
fn reflect<K>(api: Api<K>, tick: watch::Sender<u64>, shutdown: CancellationToken) -> Store<K>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = stream.next() => match event {
                    Some(Ok(_)) => { tick.send_modify(|n| *n += 1); }
                    // The API server's answer, not a peer's: a missing CRD or RBAC rule
                    // shows here, and the backoff (up to 30 s) bounds the repeats.
                    Some(Err(e)) => warn!(error = %e, "Watch failed; retrying with backoff"),
                    None => break,
                },
            }
        }
    });
    store
}

/// Coalesces a burst of watch events (an initial list, a rollout) into one plan.
const SETTLE: Duration = Duration::from_millis(50);
/// Plans again this long after a pass whose writes failed.
const RETRY: Duration = Duration::from_secs(2);

async fn run(
    client: kube::Client,
    settings: Settings,
    outputs: Outputs,
    mut view: watch::Receiver<Option<ClusterSetView>>,
    shutdown: CancellationToken,
) {
    let (tick_tx, mut tick) = watch::channel(0u64);
    let stores = Stores {
        service_exports: reflect(Api::all(client.clone()), tick_tx.clone(), shutdown.clone()),
        services: reflect(Api::all(client.clone()), tick_tx.clone(), shutdown.clone()),
        slices: reflect(Api::all(client.clone()), tick_tx.clone(), shutdown.clone()),
        service_imports: reflect(Api::all(client.clone()), tick_tx.clone(), shutdown.clone()),
        namespaces: reflect(Api::all(client.clone()), tick_tx, shutdown.clone()),
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        r = stores.ready() => if r.is_err() { return },
    }
    info!(cluster = %settings.cluster, "Kubernetes source synced");
    let mut applied = Applied::default();
    loop {
        let observed = stores.observe();
        let current_view = view.borrow_and_update().clone();
        let now =
            k8s_openapi::jiff::Timestamp::try_from(crate::clock::wall_now()).unwrap_or_default();
        let plan = plan(&observed, current_view.as_ref(), &settings, now);
        outputs.exports.send_if_modified(|e| {
            let changed = *e != plan.exports;
            if changed {
                e.clone_from(&plan.exports);
            }
            changed
        });
        let ips = plan.clusterset_ips();
        outputs.clusterset_ips.send_if_modified(|old| {
            let changed = *old != ips;
            if changed {
                *old = ips;
            }
            changed
        });
        for problem in &plan.problems {
            debug!(%problem, "Could not plan an import fully");
        }
        let errors = applied.apply(&client, &plan, &observed).await;
        for e in &errors {
            warn!(error = %e, cause = %e.source, "Kubernetes write failed; retrying");
        }
        let retry = if errors.is_empty() {
            Duration::from_secs(300)
        } else {
            RETRY
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tick.changed() => if r.is_err() { break },
            r = view.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(retry) => {}
        }
        tokio::time::sleep(SETTLE).await;
    }
}

#[cfg(test)]
mod tests;
