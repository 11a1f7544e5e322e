//! The MCS custom resources (KEP-1645): `ServiceExport` and `ServiceImport`, group
//! `multicluster.x-k8s.io`, the condition types and reasons, the well-known labels, and the
//! CRDs generated from these types.
//!
//! Both API versions are declared from one definition (`mcs_types!`), because upstream serves
//! `v1alpha1` with a schema identical to `v1beta1`; `v1beta1` is the storage version and the one
//! the controller reads and writes ([`ServiceExport`] and [`ServiceImport`] at this module's
//! root are the `v1beta1` types). [`service_export_crd`] and [`service_import_crd`] merge the two
//! versions into one CRD each, and `tests` checks them field by field against the upstream CRDs
//! in `../shared/mcs-api` (never copied here).
//!
//! The schema is the wire contract: when it changes, bump [`CRD_SCHEMA_REVISION`] (installers
//! compare it before replacing a CRD already on a cluster, so they never downgrade one).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps,
};
use kube::CustomResourceExt as _;
use kube::core::crd::{MergeError, merge_crds};

use crate::conflict::ConflictKind;

/// The API group of the MCS resources.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// The version the API server stores and the controller uses.
pub const STORAGE_VERSION: &str = "v1beta1";
/// Every version served, oldest first (upstream's order).
pub const SERVED_VERSIONS: [&str; 2] = ["v1alpha1", "v1beta1"];

/// Label on our CRDs: the revision of their schema. It starts at 1 and goes up by one with every
/// change to the generated schema (a field, a type, a validation, a version); an installer (or a
/// Helm hook) applies a CRD only when the cluster's copy is missing or carries a lower revision.
/// A test pins the schema's fingerprint so that a change without a bump fails.
pub const LABEL_CRD_SCHEMA_REVISION: &str = "causeway.dev/crd-schema-revision";
/// The current schema revision (see [`LABEL_CRD_SCHEMA_REVISION`]).
pub const CRD_SCHEMA_REVISION: u32 = 1;

/// MCS EndpointSlice label: the ServiceImport (service name) the slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// MCS EndpointSlice label: the cluster the endpoints come from (a DNS label; the DNS
/// `<clusterid>` of `<hostname>.<clusterid>.<svc>.<ns>`).
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";
/// EndpointSlice label naming the controller that manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`LABEL_MANAGED_BY`]: kube's own endpointslice controller must not touch our
/// slices, and the conformance suite checks the value differs from its. A label *value*: no
/// '/' (a real API server rejects the slice otherwise; the fake API did not check).
pub const MANAGED_BY: &str = "controller.causeway.dev";
/// Annotation on a ServiceImport naming the derived Service that kube-proxy programs.
pub const ANNOTATION_DERIVED_SERVICE: &str = "multicluster.kubernetes.io/derived-service";
/// The ClusterProperty (KEP-2149) holding this cluster's id.
pub const CLUSTER_PROPERTY_ID: &str = "cluster.clusterset.k8s.io";

/// The condition types and reasons of the MCS API (`v1beta1` constants). Conditions are full
/// `metav1.Condition`s; several conflict reasons are combined with commas
/// (`PortConflict,TypeConflict`, see [`crate::conflict::Resolution::reason`]).
pub mod condition {
    use super::ConflictKind;

    /// ServiceExport: the export names an exportable Service.
    pub const VALID: &str = "Valid";
    /// ServiceExport: exported to the clusterset. ServiceImport: usable in this cluster.
    pub const READY: &str = "Ready";
    /// ServiceExport: this export disagrees with others of the same service.
    pub const CONFLICT: &str = "Conflict";

    /// `Valid=True`.
    pub const REASON_VALID: &str = "Valid";
    /// `Valid=False`: no Service of that name in the namespace.
    pub const REASON_NO_SERVICE: &str = "NoService";
    /// `Valid=False`: an ExternalName Service cannot be exported.
    pub const REASON_INVALID_SERVICE_TYPE: &str = "InvalidServiceType";
    /// ServiceExport `Ready=True` in a push model (ours: the gateway pushes to the broker).
    pub const REASON_EXPORTED: &str = "Exported";
    /// `Ready=True` in a pull model; ServiceImport `Ready=True`.
    pub const REASON_READY: &str = "Ready";
    /// `Ready=False` or `Unknown`: not exported (or imported) yet.
    pub const REASON_PENDING: &str = "Pending";
    /// ServiceExport `Ready=False`: the export failed.
    pub const REASON_FAILED: &str = "Failed";
    /// ServiceImport `Ready=False`: none of the service's IP families is supported here.
    pub const REASON_IP_FAMILY_NOT_SUPPORTED: &str = "IPFamilyNotSupported";
    /// `Conflict=False`.
    pub const REASON_NO_CONFLICTS: &str = "NoConflicts";

    /// `Conflict=True` reasons, one per [`ConflictKind`].
    pub const REASON_PORT_CONFLICT: &str = ConflictKind::Port.reason();
    pub const REASON_TYPE_CONFLICT: &str = ConflictKind::Type.reason();
    pub const REASON_SESSION_AFFINITY_CONFLICT: &str = ConflictKind::SessionAffinity.reason();
    pub const REASON_SESSION_AFFINITY_CONFIG_CONFLICT: &str =
        ConflictKind::SessionAffinityConfig.reason();
    pub const REASON_ANNOTATIONS_CONFLICT: &str = ConflictKind::Annotations.reason();
    pub const REASON_LABELS_CONFLICT: &str = ConflictKind::Labels.reason();
    pub const REASON_INTERNAL_TRAFFIC_POLICY_CONFLICT: &str =
        ConflictKind::InternalTrafficPolicy.reason();
    pub const REASON_TRAFFIC_DISTRIBUTION_CONFLICT: &str =
        ConflictKind::TrafficDistribution.reason();
    pub const REASON_IP_FAMILY_CONFLICT: &str = ConflictKind::IpFamily.reason();
}

/// Declares the MCS types of one API version. Upstream keeps the two versions' schemas
/// identical, so one definition serves both, and the derive stamps each with its version.
macro_rules! mcs_types {
    ($version:tt) => {
        use std::collections::BTreeMap;

        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        use kube::CustomResource;
        use schemars::JsonSchema;
        use serde::{Deserialize, Serialize};

        /// Asks for the Service of the same namespace and name to be exported to the
        /// clusterset. The spec is optional: most exports carry none.
        #[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
        #[kube(
            group = "multicluster.x-k8s.io",
            version = $version,
            kind = "ServiceExport",
            namespaced,
            status = "ServiceExportStatus",
            shortname = "svcex",
            shortname = "svcexport",
            derive = "Default",
            derive = "PartialEq",
            printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
            doc = "ServiceExport declares that the Service with the same name and namespace as this export should be consumable from other clusters."
        )]
        #[serde(rename_all = "camelCase")]
        pub struct ServiceExportSpec {
            /// Labels to put on the ServiceImport (only these, never the Service's own).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub exported_labels: Option<BTreeMap<String, String>>,
            /// Annotations to put on the ServiceImport (only these, never the Service's own).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub exported_annotations: Option<BTreeMap<String, String>>,
        }

        /// What the controller observed about an export.
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct ServiceExportStatus {
            /// `Valid`, `Ready` and `Conflict` (see `crd::condition`), one per type.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(schema_with = "super::conditions_schema")]
            pub conditions: Vec<Condition>,
        }

        /// A service imported from the clusterset, written by the MCS controller only.
        #[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
        #[kube(
            group = "multicluster.x-k8s.io",
            version = $version,
            kind = "ServiceImport",
            namespaced,
            status = "ServiceImportStatus",
            shortname = "svcim",
            shortname = "svcimport",
            derive = "Default",
            derive = "PartialEq",
            printcolumn(name = "Type", type_ = "string", description = "The type of this ServiceImport.", json_path = ".spec.type"),
            printcolumn(name = "IP", type_ = "string", description = "The VIP for this ServiceImport.", json_path = ".spec.ips"),
            printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
            doc = "ServiceImport describes a service imported from clusters in a ClusterSet."
        )]
        #[serde(rename_all = "camelCase")]
        pub struct ServiceImportSpec {
            /// The union of the exports' ports.
            #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
            pub ports: Vec<ServicePort>,
            /// The clusterset IP(s) when `type` is `ClusterSetIP`, in `ipFamilies` order.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 2))]
            pub ips: Option<Vec<String>>,
            /// How the service is reached.
            #[serde(rename = "type")]
            pub type_: ServiceImportType,
            /// `ClientIP` or `None` (the default); ignored for `Headless`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub session_affinity: Option<String>,
            /// The `ClientIP` affinity timeout.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub session_affinity_config: Option<SessionAffinityConfig>,
            /// `IPv4` and/or `IPv6`, in the order of `ips`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 2))]
            pub ip_families: Option<Vec<String>>,
            /// `Cluster` or `Local`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub internal_traffic_policy: Option<String>,
            /// E.g. `PreferClose`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub traffic_distribution: Option<String>,
        }

        /// `ClusterSetIP` (reached through a virtual IP) or `Headless` (through the endpoints).
        #[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
        pub enum ServiceImportType {
            #[default]
            #[serde(rename = "ClusterSetIP")]
            ClusterSetIp,
            Headless,
        }

        /// One port of a ServiceImport (the MCS `ServicePort`).
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct ServicePort {
            /// A DNS label; optional when the service has a single port.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub name: Option<String>,
            /// `TCP` (default), `UDP` or `SCTP`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub protocol: Option<String>,
            /// The application protocol, e.g. `http` or `kubernetes.io/h2c`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub app_protocol: Option<String>,
            /// The port number.
            pub port: i32,
        }

        /// `sessionAffinityConfig`.
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
        pub struct SessionAffinityConfig {
            #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
            pub client_ip: Option<ClientIpConfig>,
        }

        /// `sessionAffinityConfig.clientIP`.
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct ClientIpConfig {
            /// Seconds of stickiness, 1..=86400 (Kubernetes defaults it to 10800).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub timeout_seconds: Option<i32>,
        }

        /// What the controller observed about an import.
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct ServiceImportStatus {
            /// The clusters exporting the service.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
            pub clusters: Vec<ClusterStatus>,
            /// `Ready` (see `crd::condition`).
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(schema_with = "super::conditions_schema")]
            pub conditions: Vec<Condition>,
        }

        /// One exporting cluster of a ServiceImport.
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
        pub struct ClusterStatus {
            /// The exporting cluster's id, an RFC 1123 DNS label.
            pub cluster: String,
        }
    };
}

/// The storage version, used by the controller.
pub mod v1beta1 {
    mcs_types!("v1beta1");
}

/// The older version, still served with the same schema.
pub mod v1alpha1 {
    mcs_types!("v1alpha1");
}

pub use v1beta1::{
    ClientIpConfig, ClusterStatus, ServiceExport, ServiceExportSpec, ServiceExportStatus,
    ServiceImport, ServiceImportSpec, ServiceImportStatus, ServiceImportType, ServicePort,
    SessionAffinityConfig,
};

/// The `ServiceExport` CRD: both versions, `v1beta1` stored, labelled with the schema revision.
pub fn service_export_crd() -> Result<CustomResourceDefinition, MergeError> {
    merged(
        v1alpha1::ServiceExport::crd(),
        v1beta1::ServiceExport::crd(),
        SpecDefault::EmptyObject,
    )
}

/// The `ServiceImport` CRD: both versions, `v1beta1` stored, labelled with the schema revision.
pub fn service_import_crd() -> Result<CustomResourceDefinition, MergeError> {
    merged(
        v1alpha1::ServiceImport::crd(),
        v1beta1::ServiceImport::crd(),
        SpecDefault::None,
    )
}

/// Every CRD causeway needs, in install order.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, MergeError> {
    Ok(vec![service_export_crd()?, service_import_crd()?])
}

/// Why the CRDs could not be produced (a bug in the types, never user input).
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("merging the CRD versions")]
    Merge(#[from] MergeError),
    #[error("writing a CRD as YAML")]
    Yaml(#[from] serde_norway::Error),
}

/// The CRDs as one multi-document YAML stream (what `causeway crds` prints).
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = format!(
        "# The MCS CRDs, generated by `causeway crds` from causeway's Rust types \
         (src/source/k8s/crd.rs); do not edit.\n\
         # Schema revision {CRD_SCHEMA_REVISION} (label {LABEL_CRD_SCHEMA_REVISION}).\n"
    );
    for crd in crds()? {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}

/// Whether the API server fills in a missing `spec`.
#[derive(Clone, Copy)]
enum SpecDefault {
    /// `spec: {}`: every field of the spec is optional.
    EmptyObject,
    None,
}

fn merged(
    alpha: CustomResourceDefinition,
    beta: CustomResourceDefinition,
    spec_default: SpecDefault,
) -> Result<CustomResourceDefinition, MergeError> {
    let mut crd = merge_crds(vec![alpha, beta], STORAGE_VERSION)?;
    // Upstream lists the versions oldest first; keep the same order so diffs against it are
    // readable (the API server orders by version priority anyway).
    crd.spec.versions.sort_by_key(|v| {
        SERVED_VERSIONS
            .iter()
            .position(|s| *s == v.name)
            .unwrap_or(usize::MAX)
    });
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            make_spec_optional(schema, spec_default);
            add_object_fields(schema);
        }
    }
    crd.metadata.labels.get_or_insert_default().insert(
        LABEL_CRD_SCHEMA_REVISION.into(),
        CRD_SCHEMA_REVISION.to_string(),
    );
    Ok(crd)
}

/// kube's derive makes `spec` required; upstream does not (a ServiceExport is usually created
/// with no spec at all). Our types need a `spec` to deserialize, so where every spec field is
/// optional the schema defaults it to `{}`: the API server then fills it in on every write and
/// read (structural defaulting), and objects created without one still parse. A ServiceImport
/// always has a spec when we wrote it (its `ports` and `type` are required).
fn make_spec_optional(root: &mut JSONSchemaProps, spec_default: SpecDefault) {
    if let Some(required) = root.required.as_mut() {
        required.retain(|r| r != "spec");
        if required.is_empty() {
            root.required = None;
        }
    }
    if let Some(spec) = root.properties.as_mut().and_then(|p| p.get_mut("spec")) {
        spec.default = match spec_default {
            SpecDefault::EmptyObject => Some(JSON(serde_json::json!({}))),
            SpecDefault::None => None,
        };
    }
}

/// kube leaves `apiVersion`, `kind` and `metadata` out of the schema (the API server checks
/// them anyway); upstream lists them, as controller-gen does, and so do we. schemars' `title`
/// (the Rust type name) goes: it means nothing to users.
fn add_object_fields(root: &mut JSONSchemaProps) {
    root.title = None;
    let properties = root.properties.get_or_insert_default();
    for (name, type_) in [
        ("apiVersion", "string"),
        ("kind", "string"),
        ("metadata", "object"),
    ] {
        properties.entry(name.into()).or_insert(JSONSchemaProps {
            type_: Some(type_.into()),
            ..Default::default()
        });
    }
}

/// The schema of a `[]metav1.Condition` list keyed by type, with the validations upstream's
/// controller-gen emits (k8s-openapi's own schema of `Condition` has no enum or patterns).
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "Condition contains details for one aspect of the current state of this API Resource.",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "The last time the condition transitioned from one status to another.",
                    "type": "string",
                    "format": "date-time"
                },
                "message": {
                    "description": "A human readable message indicating details about the transition; may be empty.",
                    "type": "string",
                    "maxLength": 32768
                },
                "observedGeneration": {
                    "description": "The .metadata.generation that the condition was set based upon.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0
                },
                "reason": {
                    "description": "A programmatic CamelCase identifier of the condition's last transition; several are comma-separated.",
                    "type": "string",
                    "maxLength": 1024,
                    "minLength": 1,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                },
                "status": {
                    "description": "Status of the condition, one of True, False, Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"]
                },
                "type": {
                    "description": "Type of condition in CamelCase or in foo.example.com/CamelCase.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
