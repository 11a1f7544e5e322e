//! The gateway's entry into the Kubernetes source (an edge: `anyhow` errors with context):
//! connecting to the API server, leader election, and starting the controller.
//!
//! `app::run_gateway` calls [`prepare`] first (before it opens WireGuard and DNS, so a
//! standby replica holds nothing), then [`start`] where it would start the file source, and
//! [`Prepared::finish`] when its loop ends.

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::controller::KubeSource;
use super::election::ElectionConfig;
use super::lease::{LeaseConfig, spawn};
use crate::model::ClusterId;

/// What the Kubernetes source runs with (from `causeway gateway`'s flags).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `--source kube`: connect to the API server.
    pub kube: bool,
    /// This cluster's id (`--cluster-id`).
    pub cluster_id: ClusterId,
    /// Where clusterset IPs come from (`--clusterset-ip-range`).
    pub clusterset_ip_ranges: Vec<ipnet::IpNet>,
    /// `--leader-elect`: wait to hold the Lease before running.
    pub leader_elect: bool,
    /// This replica's identity in the Lease; `None` falls back to `$HOSTNAME`.
    pub leader_elect_identity: Option<String>,
    pub leader_elect_namespace: String,
    pub leader_elect_lease: String,
}

/// What [`prepare`] set up.
pub struct Prepared {
    /// The client, with `--source kube`.
    pub client: Option<kube::Client>,
    /// The token the gateway runs under: cancelled on shutdown, and when leadership is lost.
    pub shutdown: CancellationToken,
    outer: CancellationToken,
}

impl Prepared {
    /// Turns a loss of leadership into an error, so the process exits and its restart stands
    /// by as a follower.
    pub fn finish(&self) -> anyhow::Result<()> {
        if self.shutdown.is_cancelled() && !self.outer.is_cancelled() {
            bail!("lost the leader lease: stopping so that the new leader runs alone");
        }
        Ok(())
    }
}

/// Connects to the API server (in-cluster config, else kubeconfig) for `--source kube`, and
/// with `--leader-elect` waits until this replica holds the Lease. Meanwhile the standby's
/// admin port is served by `standby`, which returns the serving task; it is stopped (and the
/// task awaited) before this returns.
pub async fn prepare(
    args: &RunConfig,
    shutdown: CancellationToken,
    standby: impl AsyncFnOnce(CancellationToken) -> anyhow::Result<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Prepared> {
    let outer = shutdown.clone();
    let client = if args.kube {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?,
        )
    } else {
        None
    };
    if !args.leader_elect {
        return Ok(Prepared {
            client,
            shutdown,
            outer,
        });
    }
    let Some(client) = client else {
        bail!("--leader-elect needs --source kube (the Lease lives in the cluster)");
    };
    let identity = args
        .leader_elect_identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|i| !i.is_empty())
        .context("--leader-elect needs an identity: set --leader-elect-identity or $POD_NAME")?;
    let config = LeaseConfig {
        namespace: args.leader_elect_namespace.clone(),
        name: args.leader_elect_lease.clone(),
        election: ElectionConfig::new(identity.clone()),
    };
    let inner = shutdown.child_token();
    let mut leading = spawn(client.clone(), config, inner.clone());
    info!(%identity, lease = %args.leader_elect_lease, "Standing by for the leader lease");
    // Alive but not ready while standing by, so the kubelet's liveness probe keeps the pod.
    let stop_standby = CancellationToken::new();
    let standby = standby(stop_standby.clone()).await?;
    let waited = tokio::select! {
        r = leading.wait_for(|l| *l) => r.map(|_| ()).context("the leader election stopped"),
        _ = shutdown.cancelled() => Ok(()),
    };
    stop_standby.cancel();
    let _ = standby.await;
    waited?;
    let lost = inner.clone();
    tokio::spawn(async move {
        let _ = leading.wait_for(|l| !*l).await;
        lost.cancel();
    });
    Ok(Prepared {
        client: Some(client),
        shutdown: inner,
        outer,
    })
}

/// Starts the controller; its cluster id (from the ClusterProperty, else the flag) must be the
/// flag's, since the TLS certificate the broker checks carries the flag's id.
pub async fn start(args: &RunConfig, prepared: &Prepared) -> anyhow::Result<KubeSource> {
    let client = prepared
        .client
        .clone()
        .context("the Kubernetes source needs a client")?;
    let source = super::controller::start(
        client,
        &args.cluster_id,
        args.clusterset_ip_ranges.clone(),
        prepared.shutdown.clone(),
    )
    .await
    .context("starting the Kubernetes source")?;
    if source.cluster != args.cluster_id {
        bail!(
            "the cluster.clusterset.k8s.io ClusterProperty says {} but --cluster-id is {}: the \
             TLS certificate carries --cluster-id, so make them agree",
            source.cluster,
            args.cluster_id
        );
    }
    Ok(source)
}
