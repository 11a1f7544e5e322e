//! The controller's decisions, pure: from what the reflectors observed in this cluster and the
//! broker's clusterset view, the exports to publish and every object the cluster should hold.
//!
//! `plan()` is level-based: it computes the whole desired state each time, never a delta, so
//! running it twice on the same input gives the same output, and a missed event is repaired by
//! the next run. It owns:
//! - the export side: each ServiceExport → a `model::Export` (via `export::export_of`) and its
//!   `Valid`, `Ready` and `Conflict` conditions (full `metav1.Condition`s, KEP-1645);
//! - the import side (`imports.rs`): ServiceImports, MCS EndpointSlices and derived Services,
//!   and the objects of ours that must go.
//!
//! It does not talk to the API server (`apply.rs`, `controller.rs`) nor read the clock (`now`
//! is passed in).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::crd::{ServiceExport, ServiceExportStatus, ServiceImport, condition as cond};
use super::export::{Invalid, export_of};
use crate::conflict::{Resolution, resolve};
use crate::model::{ClusterId, Export, ServiceKey};
use crate::sync::proto::ClusterSetView;

pub use super::imports::{ObjectId, ObjectKind};

/// What the plan needs besides its observations.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This cluster's id (the `source-cluster` label, `status.clusters`).
    pub cluster: ClusterId,
    /// Where clusterset IPs come from, at most one range per IP family; empty means the
    /// derived Service's API-server-assigned cluster IPs are used instead.
    pub clusterset_ranges: Vec<IpNet>,
}

/// The reflectors' stores at one moment.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub service_exports: Vec<Arc<ServiceExport>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub service_imports: Vec<Arc<ServiceImport>>,
    /// Names of the namespaces that exist (imports go only there).
    pub namespaces: BTreeSet<String>,
}

/// Everything the controller should make true.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// This cluster's valid exports, for the broker.
    pub exports: Vec<Export>,
    /// ServiceExports carrying only `status.conditions`, for SSA on the status subresource.
    pub export_statuses: Vec<ServiceExport>,
    /// Desired ServiceImports (spec and metadata; status separately below).
    pub imports: Vec<ServiceImport>,
    /// ServiceImports carrying only `status`, for SSA on the status subresource.
    pub import_statuses: Vec<ServiceImport>,
    pub slices: Vec<EndpointSlice>,
    /// Derived Services, the ones kube-proxy programs for each clusterset IP.
    pub services: Vec<Service>,
    /// Objects of ours that nothing wants any more.
    pub deletes: Vec<ObjectId>,
    /// Things the plan could not do, for logs and metrics (e.g. a full IP range).
    pub problems: Vec<String>,
}

impl Plan {
    /// The clusterset IPs of the planned ClusterSetIP imports, by service.
    pub fn clusterset_ips(&self) -> BTreeMap<ServiceKey, Vec<std::net::IpAddr>> {
        self.imports
            .iter()
            .filter_map(super::imports::clusterset_ips)
            .filter(|(_, ips)| !ips.is_empty())
            .collect()
    }
}

/// Computes the plan. `view` is the broker's clusterset view, or `None` until the first full
/// sync: then nothing is imported and nothing of ours is deleted (no garbage collection
/// before the first full sync), and no `Conflict` condition is decided yet.
pub fn plan(
    observed: &Observed,
    view: Option<&ClusterSetView>,
    settings: &Settings,
    now: Timestamp,
) -> Plan {
    let me = &settings.cluster;
    let mut out = Plan::default();

    // Export side: every ServiceExport's export or reason.
    let mut local: BTreeMap<ServiceKey, Export> = BTreeMap::new();
    let mut verdicts: Vec<(&ServiceExport, Result<ServiceKey, Invalid>)> = Vec::new();
    let mut service_exports: Vec<&Arc<ServiceExport>> = observed.service_exports.iter().collect();
    service_exports.sort_by_key(|se| (se.metadata.namespace.clone(), se.metadata.name.clone()));
    for se in service_exports {
        let namespace = se.metadata.namespace.as_deref().unwrap_or_default();
        let name = se.metadata.name.as_deref().unwrap_or_default();
        let service = observed.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_deref() == Some(name)
        });
        let exported_at = se
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        let verdict = export_of(
            service.map(|s| &**s),
            observed.slices.iter().map(|s| &**s),
            exported_at,
            super::crd::MANAGED_BY,
        )
        .map(|mut export| {
            export.props.exported_labels = se.spec.exported_labels.clone().unwrap_or_default();
            export.props.exported_annotations =
                se.spec.exported_annotations.clone().unwrap_or_default();
            let key = export.service.clone();
            local.insert(key.clone(), export);
            key
        });
        verdicts.push((se, verdict));
    }
    out.exports = local.values().cloned().collect();

    // Every cluster's export of each service: ours fresh from the stores, the others' from
    // the view (which withholds clusters whose lease at the broker expired).
    let mut by_service: BTreeMap<ServiceKey, Vec<(ClusterId, Export)>> = BTreeMap::new();
    for (key, export) in &local {
        by_service
            .entry(key.clone())
            .or_default()
            .push((me.clone(), export.clone()));
    }
    if let Some(view) = view {
        for ((cluster, key), export) in &view.exports {
            if cluster != me {
                by_service
                    .entry(key.clone())
                    .or_default()
                    .push((cluster.clone(), export.clone()));
            }
        }
    }
    let mut resolutions: BTreeMap<ServiceKey, Resolution> = BTreeMap::new();
    for (key, exports) in &by_service {
        match resolve(exports.iter().map(|(c, e)| (c, e))) {
            Ok(r) => {
                resolutions.insert(key.clone(), r);
            }
            Err(e) => out.problems.push(format!("{key}: {e}")),
        }
    }

    for (se, verdict) in &verdicts {
        let accepted = match (verdict, view) {
            (Ok(key), Some(view)) => Some(view.exports.contains_key(&(me.clone(), key.clone()))),
            _ => None,
        };
        let resolution = match (verdict, view) {
            (Ok(key), Some(_)) => resolutions.get(key),
            _ => None,
        };
        let conditions = export_conditions(se, verdict.as_ref().err(), accepted, resolution, now);
        out.export_statuses.push(ServiceExport {
            metadata: ObjectMeta {
                name: se.metadata.name.clone(),
                namespace: se.metadata.namespace.clone(),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(ServiceExportStatus { conditions }),
        });
    }

    if let Some(_view) = view {
        super::imports::plan_imports(observed, &by_service, &resolutions, settings, now, &mut out);
    }
    out
}

/// The ServiceExport's conditions. `accepted`: whether the broker holds the export (`None`
/// before the first sync or when invalid); `resolution`: the service's conflict resolution
/// over the clusterset (`None` before the first sync or when invalid).
fn export_conditions(
    se: &ServiceExport,
    invalid: Option<&Invalid>,
    accepted: Option<bool>,
    resolution: Option<&Resolution>,
    now: Timestamp,
) -> Vec<Condition> {
    let old = se
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = se.metadata.generation;
    let make = |type_: &str, status: &str, reason: &str, message: String| {
        condition(old, generation, now, type_, status, reason, message)
    };
    let mut out = Vec::new();
    match invalid {
        None => {
            out.push(make(
                cond::VALID,
                "True",
                cond::REASON_VALID,
                "Service found and exportable.".into(),
            ));
            out.push(match accepted {
                Some(true) => make(
                    cond::READY,
                    "True",
                    cond::REASON_EXPORTED,
                    "Service exported to the clusterset broker.".into(),
                ),
                _ => make(
                    cond::READY,
                    "Unknown",
                    cond::REASON_PENDING,
                    "Waiting for the clusterset broker to accept the export.".into(),
                ),
            });
            if let Some(r) = resolution {
                let status = if r.is_conflicted() { "True" } else { "False" };
                out.push(make(cond::CONFLICT, status, &r.reason(), r.message()));
            }
        }
        Some(reason) => {
            let why = match reason {
                Invalid::NoService => cond::REASON_NO_SERVICE,
                Invalid::InvalidServiceType { .. } => cond::REASON_INVALID_SERVICE_TYPE,
            };
            out.push(make(cond::VALID, "False", why, sentence(reason)));
            out.push(make(
                cond::READY,
                "False",
                cond::REASON_FAILED,
                "The export is not valid.".into(),
            ));
        }
    }
    out
}

/// A `metav1.Condition` that keeps its `lastTransitionTime` while its status stays the same.
pub(super) fn condition(
    old: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> Condition {
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// An error's message as a condition message: capitalised, with a full stop.
pub(super) fn sentence(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => text,
    }
}

#[cfg(test)]
pub(crate) mod tests;
