//! What `causeway install` prints: the objects of `deploy/` for one cluster, ready for
//! `kubectl apply -f -`.
//!
//! `deploy/` is the single source: `deploy/base` (CRDs, namespace, RBAC, ConfigMap, gateway,
//! DNS Service) and `deploy/monitoring` (the ServiceMonitor) are compiled into the binary, and
//! `install` renders them through an overlay it writes itself, exactly as the per-cluster
//! overlays in `deploy/overlays/` do (a JSON 6902 patch of the ConfigMap, and of the image).
//!
//! No kustomize binary can be shipped or assumed, so this module renders the subset of
//! kustomize those files use, and refuses anything else by name rather than ignoring it:
//! - `resources`: YAML files (several documents each) and directories holding a
//!   `kustomization.yaml`, rendered recursively;
//! - `labels` with `pairs` only (no `includeSelectors`/`includeTemplates`): added to every
//!   object's `metadata.labels`;
//! - `patches` with a `target` of `kind` and `name` and an inline JSON 6902 `patch` whose ops
//!   are `add`, `replace` or `remove`. A patch that matches nothing is an error (kustomize
//!   would ignore it; here it means a typo).
//!
//! Objects come out in resource order (kustomize reorders them by kind; the set is the same,
//! and ours already puts the namespace and CRDs first). Two objects with the same
//! apiVersion, kind, namespace and name are an error, as in kustomize.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::model::ClusterId;

/// The files of `deploy/` that `install` renders, by path relative to `deploy/`.
pub const EMBEDDED: [(&str, &str); 9] = [
    (
        "base/kustomization.yaml",
        include_str!("../../../deploy/base/kustomization.yaml"),
    ),
    (
        "base/crds.yaml",
        include_str!("../../../deploy/base/crds.yaml"),
    ),
    (
        "base/namespace.yaml",
        include_str!("../../../deploy/base/namespace.yaml"),
    ),
    (
        "base/rbac.yaml",
        include_str!("../../../deploy/base/rbac.yaml"),
    ),
    (
        "base/config.yaml",
        include_str!("../../../deploy/base/config.yaml"),
    ),
    (
        "base/gateway.yaml",
        include_str!("../../../deploy/base/gateway.yaml"),
    ),
    (
        "base/dns.yaml",
        include_str!("../../../deploy/base/dns.yaml"),
    ),
    (
        "monitoring/kustomization.yaml",
        include_str!("../../../deploy/monitoring/kustomization.yaml"),
    ),
    (
        "monitoring/servicemonitor.yaml",
        include_str!("../../../deploy/monitoring/servicemonitor.yaml"),
    ),
];

/// Where the renderer reads files: the embedded copy, or a directory on disk (tests, and
/// `deploy/` users who want to check their own overlays).
pub trait Files {
    /// The file at `path` (relative to the tree's root, `/`-separated, normalized), if any.
    fn read(&self, path: &str) -> Option<String>;
}

/// The compiled-in `deploy/` files, plus any extra (path, text) pairs.
#[derive(Debug, Clone, Default)]
pub struct Embedded {
    extra: Vec<(String, String)>,
}

impl Embedded {
    pub fn with(mut self, path: &str, text: String) -> Self {
        self.extra.push((path.to_owned(), text));
        self
    }
}

impl Files for Embedded {
    fn read(&self, path: &str) -> Option<String> {
        self.extra
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .or_else(|| {
                EMBEDDED
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, t)| (*t).to_owned())
            })
    }
}

/// A directory on disk (e.g. the repository's `deploy/`).
#[derive(Debug, Clone)]
pub struct Disk(pub std::path::PathBuf);

impl Files for Disk {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(path)).ok()
    }
}

/// Why a kustomization could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: no such file (nor a directory with a kustomization.yaml)")]
    Missing { path: String },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error(
        "{path}: unsupported kustomization field {field:?} (this renderer implements resources, labels and patches)"
    )]
    Unsupported { path: String, field: String },
    #[error("{path}: patch {index}: {problem}")]
    Patch {
        path: String,
        index: usize,
        problem: String,
    },
    #[error("{path}: patch {index} targets {kind}/{name}, which is not among the resources")]
    NoTarget {
        path: String,
        index: usize,
        kind: String,
        name: String,
    },
    #[error("{id} is defined twice")]
    Duplicate { id: String },
}

/// Renders the kustomization in directory `dir` of `files` into its objects.
pub fn render(files: &dyn Files, dir: &str) -> Result<Vec<Value>, RenderError> {
    let path = join(dir, "kustomization.yaml");
    let text = files
        .read(&path)
        .ok_or_else(|| RenderError::Missing { path: path.clone() })?;
    let kustomization = parse_one(&path, &text)?;
    let Value::Object(fields) = &kustomization else {
        return Err(invalid(&path, "not a mapping"));
    };
    for field in fields.keys() {
        if !["apiVersion", "kind", "resources", "labels", "patches"].contains(&field.as_str()) {
            return Err(RenderError::Unsupported {
                path,
                field: field.clone(),
            });
        }
    }

    let mut objects = Vec::new();
    for resource in list(&path, &kustomization, "resources")? {
        let resource = resource
            .as_str()
            .ok_or_else(|| invalid(&path, "a resource is not a string"))?;
        let target = join(dir, resource);
        if files.read(&join(&target, "kustomization.yaml")).is_some() {
            objects.extend(render(files, &target)?);
        } else {
            let text = files.read(&target).ok_or(RenderError::Missing {
                path: target.clone(),
            })?;
            objects.extend(parse_all(&target, &text)?);
        }
    }

    for (index, patch) in list(&path, &kustomization, "patches")?.iter().enumerate() {
        apply_patch(&path, index, patch, &mut objects)?;
    }
    for entry in list(&path, &kustomization, "labels")? {
        add_labels(&path, entry, &mut objects)?;
    }

    let mut seen = std::collections::BTreeSet::new();
    for object in &objects {
        let id = object_id(object);
        if !seen.insert(id.clone()) {
            return Err(RenderError::Duplicate { id });
        }
    }
    Ok(objects)
}

/// Objects as one YAML stream, each document opened by `---`.
pub fn to_yaml(objects: &[Value]) -> String {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        // A serde_json::Value always serializes to YAML.
        out.push_str(&serde_norway::to_string(object).unwrap_or_default());
    }
    out
}

/// `apiVersion kind namespace/name`, how objects are told apart.
pub fn object_id(object: &Value) -> String {
    let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{} {} {}/{}",
        s("/apiVersion"),
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name")
    )
}

/// The TLS material of the gateway, from `causeway certs issue --cluster ID` (PEM text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_crt: String,
    pub tls_crt: String,
    pub tls_key: String,
}

/// What one cluster's installation needs to know.
#[derive(Debug, Clone)]
pub struct Install {
    pub cluster_id: ClusterId,
    pub brokers: Vec<SocketAddr>,
    pub cidrs: Vec<IpNet>,
    /// The gateway's and the DNS replicas' image; `None` keeps the base's `causeway:latest`.
    pub image: Option<String>,
    /// Adds `deploy/monitoring` (the ServiceMonitor; needs the Prometheus operator's CRD).
    pub service_monitor: bool,
    /// Adds the `causeway-tls` Secret; without it, create the Secret yourself.
    pub tls: Option<TlsFiles>,
}

/// Reads `ca.crt`, `tls.crt` and `tls.key` from a directory made by `causeway certs issue`.
pub fn read_tls(dir: &std::path::Path) -> std::io::Result<TlsFiles> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    Ok(TlsFiles {
        ca_crt: read("ca.crt")?,
        tls_crt: read("tls.crt")?,
        tls_key: read("tls.key")?,
    })
}

/// Renders `deploy/base` (and `deploy/monitoring`) for one cluster, through the same kind of
/// overlay as `deploy/overlays/example-c1`.
pub fn install(opts: &Install) -> Result<Vec<Value>, RenderError> {
    let join_all = |items: Vec<String>| items.join(",");
    let mut resources = vec![json!("../base")];
    if opts.service_monitor {
        resources.push(json!("../monitoring"));
    }
    let mut config_ops = vec![];
    for (key, value) in [
        ("cluster-id", opts.cluster_id.to_string()),
        (
            "broker",
            join_all(opts.brokers.iter().map(ToString::to_string).collect()),
        ),
        (
            "cidr",
            join_all(opts.cidrs.iter().map(ToString::to_string).collect()),
        ),
    ] {
        config_ops.push(json!({"op": "replace", "path": format!("/data/{key}"), "value": value}));
    }
    let mut patches = vec![json!({
        "target": {"kind": "ConfigMap", "name": "causeway-config"},
        "patch": Value::Array(config_ops).to_string(),
    })];
    if let Some(image) = &opts.image {
        // The gateway and the DNS replicas run the same binary.
        for deployment in ["causeway-gateway", "causeway-dns"] {
            patches.push(json!({
                "target": {"kind": "Deployment", "name": deployment},
                "patch": json!([{
                    "op": "replace",
                    "path": "/spec/template/spec/containers/0/image",
                    "value": image,
                }])
                .to_string(),
            }));
        }
    }
    let mut files = Embedded::default();
    if let Some(tls) = &opts.tls {
        resources.push(json!("secret.yaml"));
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "causeway-tls", "namespace": "causeway-system"},
            "type": "Opaque",
            "stringData": {
                "ca.crt": tls.ca_crt,
                "tls.crt": tls.tls_crt,
                "tls.key": tls.tls_key,
            },
        });
        files = files.with("install/secret.yaml", secret.to_string());
    }
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
        "patches": patches,
    });
    let files = files.with("install/kustomization.yaml", kustomization.to_string());
    render(&files, "install")
}

fn invalid(path: &str, problem: &str) -> RenderError {
    RenderError::Invalid {
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}

/// `dir/rel`, with `.` and `..` resolved (paths never leave the tree's root).
fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in dir.split('/').chain(rel.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn parse_all(path: &str, text: &str) -> Result<Vec<Value>, RenderError> {
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value =
            serde::Deserialize::deserialize(document).map_err(|e| RenderError::Yaml {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        match value {
            Value::Null => {}
            Value::Object(_) => objects.push(value),
            _ => return Err(invalid(path, "a document is not a mapping")),
        }
    }
    Ok(objects)
}

fn parse_one(path: &str, text: &str) -> Result<Value, RenderError> {
    let mut all = parse_all(path, text)?;
    if all.len() != 1 {
        return Err(invalid(path, "expected exactly one document"));
    }
    Ok(all.remove(0))
}

fn list<'a>(path: &str, value: &'a Value, field: &str) -> Result<&'a [Value], RenderError> {
    match value.get(field) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(invalid(path, &format!("{field} is not a list"))),
    }
}

fn add_labels(path: &str, entry: &Value, objects: &mut [Value]) -> Result<(), RenderError> {
    let Value::Object(entry) = entry else {
        return Err(invalid(path, "a labels entry is not a mapping"));
    };
    if let Some(field) = entry.keys().find(|k| k.as_str() != "pairs") {
        return Err(RenderError::Unsupported {
            path: path.to_owned(),
            field: format!("labels.{field}"),
        });
    }
    let Some(Value::Object(pairs)) = entry.get("pairs") else {
        return Err(invalid(path, "labels.pairs is not a mapping"));
    };
    for object in objects.iter_mut() {
        let labels = object
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid(path, "an object has no metadata"))?
            .entry("labels")
            .or_insert_with(|| json!({}));
        let labels = labels
            .as_object_mut()
            .ok_or_else(|| invalid(path, "metadata.labels is not a mapping"))?;
        for (key, value) in pairs {
            labels.insert(key.clone(), value.clone());
        }
    }
    Ok(())
}

fn apply_patch(
    path: &str,
    index: usize,
    patch: &Value,
    objects: &mut [Value],
) -> Result<(), RenderError> {
    let problem = |p: &str| RenderError::Patch {
        path: path.to_owned(),
        index,
        problem: p.to_owned(),
    };
    let target = patch
        .get("target")
        .and_then(Value::as_object)
        .ok_or_else(|| problem("no target (only targeted JSON 6902 patches are supported)"))?;
    if let Some(field) = target
        .keys()
        .find(|k| !["kind", "name"].contains(&k.as_str()))
    {
        return Err(problem(&format!("unsupported target field {field:?}")));
    }
    if let Some(field) = patch.as_object().and_then(|p| {
        p.keys()
            .find(|k| !["target", "patch"].contains(&k.as_str()))
    }) {
        return Err(problem(&format!("unsupported field {field:?}")));
    }
    let want = |key: &str| target.get(key).and_then(Value::as_str);
    let (kind, name) = (
        want("kind").ok_or_else(|| problem("target has no kind"))?,
        want("name").ok_or_else(|| problem("target has no name"))?,
    );
    let text = patch
        .get("patch")
        .and_then(Value::as_str)
        .ok_or_else(|| problem("no inline patch"))?;
    let ops: Value = serde_norway::from_str(text).map_err(|e| problem(&e.to_string()))?;
    let ops = ops
        .as_array()
        .ok_or_else(|| problem("the patch is not a JSON 6902 list of operations"))?;

    let mut matched = false;
    for object in objects.iter_mut().filter(|o| {
        o.get("kind").and_then(Value::as_str) == Some(kind)
            && o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
    }) {
        matched = true;
        for op in ops {
            apply_op(object, op).map_err(|p| problem(&p))?;
        }
    }
    if !matched {
        return Err(RenderError::NoTarget {
            path: path.to_owned(),
            index,
            kind: kind.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// One RFC 6902 operation: `add`, `replace` or `remove`.
fn apply_op(object: &mut Value, op: &Value) -> Result<(), String> {
    let field = |k: &str| op.get(k).and_then(Value::as_str);
    let (Some(verb), Some(pointer)) = (field("op"), field("path")) else {
        return Err("an operation needs op and path".into());
    };
    let (parent, last) = pointer
        .rsplit_once('/')
        .ok_or_else(|| format!("{pointer:?} is not a JSON pointer"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent = object
        .pointer_mut(parent)
        .ok_or_else(|| format!("{parent:?} does not exist"))?;
    let value = || op.get("value").cloned().ok_or("no value".to_owned());
    match (verb, parent) {
        ("add", Value::Array(items)) if last == "-" => items.push(value()?),
        ("add", Value::Array(items)) => {
            let i = index(&last, items.len() + 1)?;
            items.insert(i, value()?);
        }
        ("add", Value::Object(map)) => {
            map.insert(last, value()?);
        }
        ("replace", Value::Array(items)) => {
            let i = index(&last, items.len())?;
            items[i] = value()?;
        }
        ("replace", Value::Object(map)) if map.contains_key(&last) => {
            map.insert(last, value()?);
        }
        ("remove", Value::Array(items)) => {
            let i = index(&last, items.len())?;
            items.remove(i);
        }
        ("remove", Value::Object(map)) if map.contains_key(&last) => {
            map.remove(&last);
        }
        ("add" | "replace" | "remove", _) => {
            return Err(format!("{verb} {pointer:?}: no such location"));
        }
        (other, _) => return Err(format!("unsupported operation {other:?}")),
    }
    Ok(())
}

fn index(token: &str, bound: usize) -> Result<usize, String> {
    match token.parse::<usize>() {
        Ok(i) if i < bound => Ok(i),
        _ => Err(format!("{token:?} is not an index below {bound}")),
    }
}

#[cfg(test)]
mod tests;
