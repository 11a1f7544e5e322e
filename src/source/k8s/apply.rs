//! Makes a [`Plan`] true in the cluster: server-side apply (field manager `causeway`, forced,
//! since only this controller writes these fields) of every desired object and status, and
//! deletes of ours that nothing wants.
//!
//! Idempotent and level-based: applying the same plan again sends nothing new. [`Applied`]
//! remembers what was last applied (ignoring conditions' `lastTransitionTime`) and skips an
//! object whose desired state is unchanged and which still exists; anything else is applied,
//! so an object someone deleted or edited comes back on the next plan. Errors are collected
//! and returned, never abort the pass: the controller retries on its next run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::crd::ServiceImport;
use super::plan::{ObjectKind, Observed, Plan};

/// Our field manager for server-side apply.
pub const FIELD_MANAGER: &str = "causeway";

/// Which object, and whether its status subresource.
type Key = (&'static str, String, String, bool);

/// What was last applied, per object (see the module doc).
#[derive(Debug, Default)]
pub struct Applied {
    last: BTreeMap<Key, Value>,
}

/// One failed write.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {namespace}/{name}")]
pub struct WriteFailed {
    pub verb: &'static str,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

impl Applied {
    /// Applies `plan` through `client`; `observed` says which objects exist now.
    pub async fn apply(
        &mut self,
        client: &kube::Client,
        plan: &Plan,
        observed: &Observed,
    ) -> Vec<WriteFailed> {
        let mut errors = Vec::new();
        let exists = |names: Vec<(String, String)>| names.into_iter().collect::<BTreeSet<_>>();
        let imports = exists(observed.service_imports.iter().map(|o| id(&**o)).collect());
        let exports = exists(observed.service_exports.iter().map(|o| id(&**o)).collect());
        let slices = exists(observed.slices.iter().map(|o| id(&**o)).collect());
        let services = exists(observed.services.iter().map(|o| id(&**o)).collect());

        for si in &plan.imports {
            self.apply_one(client, si, false, &imports, &mut errors)
                .await;
        }
        for si in &plan.import_statuses {
            self.apply_one(client, si, true, &imports, &mut errors)
                .await;
        }
        for se in &plan.export_statuses {
            self.apply_one(client, se, true, &exports, &mut errors)
                .await;
        }
        for service in &plan.services {
            self.apply_one(client, service, false, &services, &mut errors)
                .await;
        }
        for slice in &plan.slices {
            self.apply_one(client, slice, false, &slices, &mut errors)
                .await;
        }
        for gone in &plan.deletes {
            let result = match gone.kind {
                ObjectKind::ServiceImport => {
                    delete::<ServiceImport>(client, &gone.namespace, &gone.name).await
                }
                ObjectKind::EndpointSlice => {
                    delete::<EndpointSlice>(client, &gone.namespace, &gone.name).await
                }
                ObjectKind::Service => delete::<Service>(client, &gone.namespace, &gone.name).await,
            };
            let kind = match gone.kind {
                ObjectKind::ServiceImport => "ServiceImport",
                ObjectKind::EndpointSlice => "EndpointSlice",
                ObjectKind::Service => "Service",
            };
            self.last.retain(|(k, ns, n, _), _| {
                !(*k == kind && *ns == gone.namespace && *n == gone.name)
            });
            if let Err(source) = result {
                errors.push(WriteFailed {
                    verb: "deleting",
                    kind,
                    namespace: gone.namespace.clone(),
                    name: gone.name.clone(),
                    source,
                });
            }
        }
        errors
    }

    async fn apply_one<K>(
        &mut self,
        client: &kube::Client,
        object: &K,
        status: bool,
        existing: &BTreeSet<(String, String)>,
        errors: &mut Vec<WriteFailed>,
    ) where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
        K::DynamicType: Default,
    {
        let (namespace, name) = id(object);
        let kind = kind_of::<K>();
        let key: Key = (kind, namespace.clone(), name.clone(), status);
        let desired = fingerprint(serde_json::to_value(object).unwrap_or_default());
        let unchanged = self.last.get(&key) == Some(&desired);
        if unchanged && existing.contains(&(namespace.clone(), name.clone())) {
            return;
        }
        let api: Api<K> = Api::namespaced(client.clone(), &namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let result = if status {
            api.patch_status(&name, &params, &Patch::Apply(object))
                .await
        } else {
            api.patch(&name, &params, &Patch::Apply(object)).await
        };
        match result {
            Ok(_) => {
                self.last.insert(key, desired);
            }
            Err(source) => {
                self.last.remove(&key);
                errors.push(WriteFailed {
                    verb: if status {
                        "applying the status of"
                    } else {
                        "applying"
                    },
                    kind,
                    namespace,
                    name,
                    source,
                });
            }
        }
    }
}

fn kind_of<K: Resource>() -> &'static str
where
    K::DynamicType: Default,
{
    match K::kind(&Default::default()).as_ref() {
        "ServiceImport" => "ServiceImport",
        "ServiceExport" => "ServiceExport",
        "EndpointSlice" => "EndpointSlice",
        "Service" => "Service",
        _ => "object",
    }
}

fn id<K: Resource>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

async fn delete<K>(client: &kube::Client, namespace: &str, name: &str) -> kube::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The object without the conditions' `lastTransitionTime`s, which the plan may restamp while
/// its own previous write has not come back through the watch yet.
fn fingerprint(mut value: Value) -> Value {
    if let Some(conditions) = value
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conditions {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
    }
    value
}
