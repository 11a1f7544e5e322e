//! The Kubernetes source: the Multi-Cluster Services API (KEP-1645) inside a cluster.
//!
//! This is the only place that knows Kubernetes types (STYLE §9). It owns:
//! - `crd`: the `ServiceExport` and `ServiceImport` custom resources (group
//!   `multicluster.x-k8s.io`, served at `v1beta1` and `v1alpha1`), the MCS condition types and
//!   reasons, the well-known labels, and the CRDs that `causeway crds` prints.
//!
//! The MCS conflict rules are not here: they are model-level and live in `crate::conflict`,
//! which the controller turns into `metav1.Condition`s and ServiceImport specs.

pub mod crd;
