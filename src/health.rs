//! Endpoint health in this cluster: active probes of its own endpoints, whose failures mark
//! them not ready in what the gateway publishes and answers.
//!
//! `prober` is the sans-IO core (schedule, deadlines, thresholds); `driver` its tokio shell,
//! which sits between the file source and the rest of the gateway: services with their probe
//! configs in, the exports the broker and this gateway's DNS see out. Peer (tunnel) health is
//! not here: it lives in `causeway_gateway::health`.

pub mod driver;
pub mod prober;

use crate::model::Export;

/// One exported service of this cluster and the probe its source configured for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalExport {
    pub export: Export,
    pub probe: Option<prober::ProbeConfig>,
}
