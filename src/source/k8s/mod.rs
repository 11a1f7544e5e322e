//! The Kubernetes source: the Multi-Cluster Services API (KEP-1645) inside a cluster.
//!
//! This is the only place that knows Kubernetes types (STYLE §9). It owns:
//! - `crd`: the `ServiceExport` and `ServiceImport` custom resources (group
//!   `multicluster.x-k8s.io`, served at `v1beta1` and `v1alpha1`), the MCS condition types and
//!   reasons, the well-known labels, and the CRDs that `causeway crds` prints;
//! - `manifests`: what `causeway install` prints, rendered from `deploy/` (a kustomize subset);
//! - the controller (`causeway gateway --source kube`), observe → pure plan → apply:
//!   `export` (Service + EndpointSlices → `model::Export`, the cluster id), `plan` (conditions,
//!   the whole desired state) with `imports` (ServiceImports, MCS EndpointSlices, derived
//!   Services) and `alloc` (clusterset IPs), `apply` (server-side apply), `controller` (the
//!   reflectors and the loop), `election` + `lease` (leader election on a Lease), `run` (the
//!   gateway's entry: client, leadership, start), and
//!   `fake_api` (tests: an in-process API server behind a real `kube::Client`). Which MCS
//!   conformance checks which tests cover: `CONFORMANCE.md`.
//!
//! The MCS conflict rules are not here: they are model-level and live in `crate::conflict`,
//! which the controller turns into `metav1.Condition`s and ServiceImport specs.

pub mod alloc;
pub mod apply;
#[cfg(test)]
mod conformance;
pub mod controller;
pub mod crd;
pub mod election;
pub mod export;
#[cfg(test)]
pub mod fake_api;
pub mod imports;
pub mod lease;
pub mod manifests;
pub mod plan;
pub mod run;
