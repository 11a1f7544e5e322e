use std::path::PathBuf;

use serde_json::Value;

use super::*;

/// Where the upstream CRDs are kept for comparison: `../shared/mcs-api` beside the workspace,
/// else `/work/shared/mcs-api`. Never skipped: without them the compatibility claim is untested.
fn upstream_dir() -> PathBuf {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/mcs-api");
    let fixed = PathBuf::from("/work/shared/mcs-api");
    for dir in [&beside, &fixed] {
        if dir
            .join("multicluster.x-k8s.io_serviceexports.yaml")
            .is_file()
        {
            return dir.clone();
        }
    }
    panic!(
        "the upstream MCS CRDs are missing: looked in {} and {}; they are needed to check our \
         CRDs' compatibility (kubernetes-sigs/mcs-api config/crd at ded161a)",
        beside.display(),
        fixed.display()
    );
}

fn upstream(resource: &str) -> Value {
    let path = upstream_dir().join(format!("multicluster.x-k8s.io_{resource}.yaml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn ours(crd: Result<CustomResourceDefinition, MergeError>) -> Value {
    serde_json::to_value(crd.expect("our CRD versions merge")).expect("a CRD serializes")
}

/// The schema keywords that decide which objects are valid; each must be equal wherever
/// upstream sets it (`required` is compared as a set).
const KEYWORDS: [&str; 12] = [
    "type",
    "format",
    "enum",
    "maxItems",
    "minItems",
    "maxLength",
    "minLength",
    "pattern",
    "maximum",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
];

/// Walks upstream's schema and records, by field path, every way ours differs: a missing or
/// extra field, a different type, format, enum, validation or list semantics, a different
/// required set.
fn compare_schema(path: &str, theirs: &Value, ours: &Value, out: &mut Vec<String>) {
    for key in KEYWORDS {
        if let Some(want) = theirs.get(key)
            && ours.get(key) != Some(want)
        {
            out.push(format!(
                "{path}: {key} is {:?}, upstream {want}",
                ours.get(key)
            ));
        }
    }
    // `minimum: 0` upstream is an integer, ours a float (JSONSchemaProps holds an f64).
    if let Some(want) = theirs.get("minimum").and_then(Value::as_f64)
        && ours.get("minimum").and_then(Value::as_f64) != Some(want)
    {
        out.push(format!("{path}: minimum differs from upstream {want}"));
    }
    let required = |v: &Value| -> Vec<String> {
        let mut r: Vec<String> = v
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        r.sort();
        r
    };
    if required(theirs) != required(ours) {
        out.push(format!(
            "{path}: required {:?}, upstream {:?}",
            required(ours),
            required(theirs)
        ));
    }
    let empty = serde_json::Map::new();
    let props = |v: &Value| v.get("properties").and_then(Value::as_object).cloned();
    let (their_props, our_props) = (
        props(theirs).unwrap_or_else(|| empty.clone()),
        props(ours).unwrap_or_else(|| empty.clone()),
    );
    for (name, their_field) in &their_props {
        match our_props.get(name) {
            Some(our_field) => {
                compare_schema(&format!("{path}.{name}"), their_field, our_field, out)
            }
            None => out.push(format!("{path}.{name}: missing")),
        }
    }
    for name in our_props.keys().filter(|n| !their_props.contains_key(*n)) {
        out.push(format!("{path}.{name}: not in upstream"));
    }
    for nested in ["items", "additionalProperties"] {
        match (theirs.get(nested), ours.get(nested)) {
            (Some(t), Some(o)) if t.is_object() => {
                compare_schema(&format!("{path}.{nested}"), t, o, out)
            }
            (Some(t), None) if t.is_object() => out.push(format!("{path}.{nested}: missing")),
            (None, Some(_)) => out.push(format!("{path}.{nested}: not in upstream")),
            _ => {}
        }
    }
}

/// Everything about a CRD that clients and the API server see, besides the schema.
fn compare_crd(theirs: &Value, ours: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for pointer in [
        "/metadata/name",
        "/spec/group",
        "/spec/scope",
        "/spec/names/kind",
        "/spec/names/plural",
        "/spec/names/singular",
        "/spec/names/shortNames",
    ] {
        if theirs.pointer(pointer) != ours.pointer(pointer) {
            out.push(format!(
                "{pointer}: {:?}, upstream {:?}",
                ours.pointer(pointer),
                theirs.pointer(pointer)
            ));
        }
    }
    let versions = |v: &Value| {
        v.pointer("/spec/versions")
            .and_then(Value::as_array)
            .cloned()
    };
    let (their_versions, our_versions) = (
        versions(theirs).expect("upstream CRD has versions"),
        versions(ours).expect("our CRD has versions"),
    );
    let names = |vs: &[Value]| -> Vec<Value> { vs.iter().map(|v| v["name"].clone()).collect() };
    if names(&their_versions) != names(&our_versions) {
        out.push(format!(
            "versions {:?}, upstream {:?}",
            names(&our_versions),
            names(&their_versions)
        ));
    }
    for theirs in &their_versions {
        let name = theirs["name"].as_str().unwrap_or("?");
        let Some(ours) = our_versions.iter().find(|v| v["name"] == theirs["name"]) else {
            continue;
        };
        for key in ["served", "storage", "subresources"] {
            if theirs.get(key) != ours.get(key) {
                out.push(format!(
                    "{name}: {key} {:?}, upstream {:?}",
                    ours.get(key),
                    theirs.get(key)
                ));
            }
        }
        let columns = |v: &Value| -> Vec<(Value, Value, Value)> {
            v["additionalPrinterColumns"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| (c["name"].clone(), c["type"].clone(), c["jsonPath"].clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        if columns(theirs) != columns(ours) {
            out.push(format!(
                "{name}: printer columns {:?}, upstream {:?}",
                columns(ours),
                columns(theirs)
            ));
        }
        compare_schema(
            &format!("{name}:"),
            &theirs["schema"]["openAPIV3Schema"],
            &ours["schema"]["openAPIV3Schema"],
            &mut out,
        );
    }
    out
}

#[test]
fn crds_match_the_upstream_mcs_crds_field_by_field() {
    for (resource, crd) in [
        ("serviceexports", ours(service_export_crd())),
        ("serviceimports", ours(service_import_crd())),
    ] {
        let differences = compare_crd(&upstream(resource), &crd);
        assert!(
            differences.is_empty(),
            "{resource} differs from upstream:\n  {}",
            differences.join("\n  ")
        );
    }
}

/// The comparison itself must catch a difference, or the test above proves nothing.
#[test]
fn the_comparison_notices_each_kind_of_difference() {
    let theirs = upstream("serviceimports");
    let base = ours(service_import_crd());
    let schema = "/spec/versions/1/schema/openAPIV3Schema/properties";
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: [Mutation; 6] = [
        ("enum", |v| {
            v["spec"]["properties"]["type"]["enum"] = serde_json::json!(["ClusterSetIP"])
        }),
        ("type", |v| {
            v["spec"]["properties"]["ports"]["items"]["properties"]["port"]["type"] =
                "string".into()
        }),
        ("required", |v| {
            v["spec"]["required"] = serde_json::json!(["ports"])
        }),
        ("missing", |v| {
            v["spec"]["properties"]
                .as_object_mut()
                .expect("spec has properties")
                .remove("trafficDistribution");
        }),
        ("not in upstream", |v| {
            v["status"]["properties"]["extra"] = serde_json::json!({"type": "string"})
        }),
        ("x-kubernetes-list-type", |v| {
            v["status"]["properties"]["clusters"]
                .as_object_mut()
                .expect("clusters is an object")
                .remove("x-kubernetes-list-type");
        }),
    ];
    for (what, mutate) in mutations {
        let mut changed = base.clone();
        mutate(changed.pointer_mut(schema).expect("v1beta1 has properties"));
        let differences = compare_crd(&theirs, &changed);
        assert!(
            differences.iter().any(|d| d.contains(what)),
            "{what}: {differences:?}"
        );
    }
    let mut renamed = base.clone();
    renamed["spec"]["versions"][0]["name"] = "v1alpha2".into();
    assert!(!compare_crd(&theirs, &renamed).is_empty());
}

/// FNV-1a over the CRDs without descriptions: stable across Rust releases, unlike std's hasher.
fn schema_fingerprint() -> u64 {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for crd in crds().expect("our CRD versions merge") {
        let mut value = serde_json::to_value(crd).expect("a CRD serializes");
        strip(&mut value);
        for byte in value.to_string().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Changing the CRDs' schema without bumping `CRD_SCHEMA_REVISION` would let an installer keep
/// a stale CRD on a cluster. When this fails: bump the revision and pin the new fingerprint.
#[test]
fn schema_changes_bump_the_schema_revision() {
    const PINNED: (u32, u64) = (1, 15_197_051_030_633_283_151);
    assert_eq!(
        (CRD_SCHEMA_REVISION, schema_fingerprint()),
        PINNED,
        "the CRD schema changed: bump CRD_SCHEMA_REVISION and pin (revision, fingerprint)"
    );
}

#[test]
fn crds_carry_the_schema_revision_label_and_store_v1beta1() {
    for crd in crds().unwrap() {
        let labels = crd.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(LABEL_CRD_SCHEMA_REVISION),
            Some(&CRD_SCHEMA_REVISION.to_string())
        );
        let stored: Vec<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(stored, [STORAGE_VERSION]);
    }
    let yaml = crds_yaml().unwrap();
    assert_eq!(yaml.matches("---\n").count(), 2);
    assert!(yaml.contains("kind: CustomResourceDefinition"));
}

#[test]
fn objects_in_upstream_shape_round_trip() {
    let import: ServiceImport = serde_norway::from_str(
        r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: { name: hello, namespace: mcs }
spec:
  type: ClusterSetIP
  ips: [10.42.0.1, "fd00::1"]
  ipFamilies: [IPv4, IPv6]
  ports:
    - { name: tcp, protocol: TCP, port: 42, appProtocol: http }
    - { name: udp, protocol: UDP, port: 42 }
  sessionAffinity: ClientIP
  sessionAffinityConfig: { clientIP: { timeoutSeconds: 10 } }
  internalTrafficPolicy: Cluster
  trafficDistribution: PreferClose
status:
  clusters: [{ cluster: c1 }, { cluster: c2 }]
  conditions:
    - type: Ready
      status: "True"
      reason: Ready
      message: ""
      lastTransitionTime: "2026-11-23T08:00:00Z"
"#,
    )
    .unwrap();
    assert_eq!(import.spec.type_, ServiceImportType::ClusterSetIp);
    assert_eq!(import.spec.ports[0].app_protocol.as_deref(), Some("http"));
    assert_eq!(
        import
            .spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds),
        Some(10)
    );
    let status = import.status.as_ref().unwrap();
    assert_eq!(status.clusters.len(), 2);
    assert_eq!(status.conditions[0].reason, condition::REASON_READY);
    let back: ServiceImport =
        serde_json::from_value(serde_json::to_value(&import).unwrap()).unwrap();
    assert_eq!(back, import);

    // An export as users write it: the API server defaults the missing spec to `{}`.
    let export: ServiceExport = serde_norway::from_str(
        "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\n\
         metadata: { name: hello, namespace: mcs }\nspec: {}\n",
    )
    .unwrap();
    assert_eq!(export.spec, ServiceExportSpec::default());
    let json = serde_json::to_value(&export).unwrap();
    assert_eq!(json["spec"], serde_json::json!({}));
    assert!(json.get("status").is_none());
}

#[test]
fn conflict_reasons_are_the_mcs_api_names() {
    assert_eq!(condition::REASON_PORT_CONFLICT, "PortConflict");
    assert_eq!(condition::REASON_IP_FAMILY_CONFLICT, "IPFamilyConflict");
    assert_eq!(
        condition::REASON_SESSION_AFFINITY_CONFIG_CONFLICT,
        "SessionAffinityConfigConflict"
    );
}

/// The API server only accepts structural schemas: every node typed, no `$ref`, no type in
/// `anyOf`/`oneOf`/`allOf`/`not`, no `properties` beside `additionalProperties`, `nullable`
/// only with a type. Lists of type map need their keys required.
fn structural_problems(path: &str, node: &Value, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        out.push(format!("{path}: not a schema object"));
        return;
    };
    let untyped_ok = map.contains_key("x-kubernetes-int-or-string")
        || map.contains_key("x-kubernetes-preserve-unknown-fields");
    if !map.contains_key("type") && !untyped_ok {
        out.push(format!("{path}: no type"));
    }
    for forbidden in [
        "$ref",
        "definitions",
        "$schema",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
    ] {
        if map.contains_key(forbidden) {
            out.push(format!("{path}: {forbidden}"));
        }
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        out.push(format!("{path}: properties with additionalProperties"));
    }
    if map.get("x-kubernetes-list-type") == Some(&Value::from("map")) {
        let keys = map["x-kubernetes-list-map-keys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let required = node["items"]["required"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if keys.is_empty() || keys.iter().any(|k| !required.contains(k)) {
            out.push(format!("{path}: map list keys {keys:?} not all required"));
        }
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural_problems(&format!("{path}.{name}"), child, out);
        }
    }
    for nested in ["items", "additionalProperties"] {
        if let Some(child) = map.get(nested).filter(|c| c.is_object()) {
            structural_problems(&format!("{path}.{nested}"), child, out);
        }
    }
}

#[test]
fn crd_schemas_are_structural() {
    for crd in crds().unwrap() {
        let crd = serde_json::to_value(crd).unwrap();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let mut problems = Vec::new();
            let path = format!("{}/{}", crd["metadata"]["name"], version["name"]);
            structural_problems(&path, &version["schema"]["openAPIV3Schema"], &mut problems);
            assert!(problems.is_empty(), "{problems:#?}");
        }
    }
    // The check itself notices an untyped field.
    let mut problems = Vec::new();
    structural_problems(
        "x",
        &serde_json::json!({"type": "object", "properties": {"y": {}}}),
        &mut problems,
    );
    assert_eq!(problems, ["x.y: no type"]);
}

/// A label value as the API server validates it (IsValidLabelValue): at most 63 characters of
/// `[A-Za-z0-9_.-]`, starting and ending alphanumeric. The fake API does not check this; a real
/// server rejected our EndpointSlices when MANAGED_BY was "causeway.dev/controller".
#[test]
fn managed_by_is_a_valid_label_value() {
    let v = MANAGED_BY;
    assert!(!v.is_empty() && v.len() <= 63, "{v}");
    assert!(
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
        "{v}"
    );
    assert!(
        v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()
    );
    assert_ne!(v, "endpointslice-controller.k8s.io");
}
