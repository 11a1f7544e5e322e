//! Where a cluster's own services come from. Each source turns its input into the exported
//! services of this cluster (`Vec<Export>` on a watch channel). `file` needs no Kubernetes;
//! a Kubernetes source (MCS ServiceExport) lives under `source/k8s/` when it lands.

pub mod file;
pub mod k8s;
