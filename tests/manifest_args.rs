//! The manifests can never carry a command line the binary refuses: every container of every
//! workload in `causeway install` and in `deploy/` (each overlay; the base alone has an empty
//! ConfigMap, which the overlays fill) is parsed by the real `Cli`, with its environment as
//! the kubelet would give it: `$(VAR)` expanded from the container's `env`, and the variables
//! that clap reads (`#[arg(env = ...)]`) passed as the flags they stand for.

use std::collections::BTreeMap;
use std::path::PathBuf;

use causeway::cli::Cli;
use causeway::source::k8s::manifests::{Disk, Install, install, object_id, render};
use clap::{CommandFactory as _, Parser as _};
use serde_json::Value;

/// The pod specs of every workload kind the manifests may ship.
fn pod_spec(object: &Value) -> Option<&Value> {
    match object["kind"].as_str()? {
        "Deployment" | "DaemonSet" | "StatefulSet" | "Job" | "ReplicaSet" => {
            Some(&object["spec"]["template"]["spec"])
        }
        "Pod" => Some(&object["spec"]),
        _ => None,
    }
}

/// A container's environment as the kubelet resolves it; config map keys are looked up in
/// the same rendering, downward-API fields get sample values.
fn environment(container: &Value, object: &Value, objects: &[Value]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env var name").to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_owned()
        } else if let Some(key) = var["valueFrom"].get("configMapKeyRef") {
            let map = objects
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == key["name"])
                .unwrap_or_else(|| panic!("{}: no ConfigMap {}", object_id(object), key["name"]));
            map["data"][key["key"].as_str().expect("well-formed test input")]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no key {}", object_id(object), key["key"]))
                .to_owned()
        } else if let Some(field) = var["valueFrom"].get("fieldRef") {
            match field["fieldPath"].as_str().expect("well-formed test input") {
                "status.hostIP" | "status.podIP" => "192.0.2.10".to_owned(),
                "metadata.name" => format!(
                    "{}-7d9f8-abcde",
                    object["metadata"]["name"]
                        .as_str()
                        .expect("well-formed test input")
                ),
                "metadata.namespace" => object["metadata"]["namespace"]
                    .as_str()
                    .expect("well-formed test input")
                    .to_owned(),
                other => panic!(
                    "{}: add a sample value for fieldRef {other}",
                    object_id(object)
                ),
            }
        } else {
            panic!("{}: unsupported env source {var}", object_id(object))
        };
        env.insert(name, value);
    }
    env
}

/// `$(VAR)` expanded from `env`, as Kubernetes expands `args` (an unknown one stays as is).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

/// The full command line the binary sees in `container`: the image's entrypoint is the
/// binary (see the Dockerfile), `args` follow, and the environment variables clap reads
/// become their flags.
fn command_line(container: &Value, object: &Value, objects: &[Value]) -> Vec<String> {
    assert!(
        container.get("command").is_none(),
        "{}: the image's ENTRYPOINT is the binary; use args",
        object_id(object)
    );
    let env = environment(container, object, objects);
    let mut line = vec!["causeway".to_owned()];
    line.extend(
        container["args"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: a container without args", object_id(object)))
            .iter()
            .map(|a| expand(a.as_str().expect("string args"), &env)),
    );
    let root = Cli::command();
    let sub = root
        .get_subcommands()
        .find(|s| Some(s.get_name()) == line.get(1).map(String::as_str));
    let readable = root
        .get_arguments()
        .chain(sub.into_iter().flat_map(|s| s.get_arguments()));
    for arg in readable {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        if let Some(value) = env.get(var.to_str().expect("well-formed test input")) {
            let flag = format!("--{long}");
            if !line
                .iter()
                .any(|a| a == &flag || a.starts_with(&format!("{flag}=")))
            {
                line.push(format!("{flag}={value}"));
            }
        }
    }
    line
}

/// Parses every container in `objects`; returns how many, or the first refusal.
fn parse_all(objects: &[Value]) -> Result<usize, String> {
    let mut parsed = 0;
    for object in objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        for field in ["initContainers", "containers"] {
            for container in spec[field].as_array().into_iter().flatten() {
                let line = command_line(container, object, objects);
                Cli::try_parse_from(&line).map_err(|e| {
                    format!(
                        "{} container {}: {line:?}: {e}",
                        object_id(object),
                        container["name"]
                    )
                })?;
                parsed += 1;
            }
        }
    }
    Ok(parsed)
}

fn install_c1() -> Vec<Value> {
    install(&Install {
        cluster_id: causeway::model::ClusterId::new("c1").expect("well-formed test input"),
        brokers: vec!["203.0.113.10:7443".parse().expect("well-formed test input")],
        cidrs: vec![
            "10.244.0.0/16".parse().expect("well-formed test input"),
            "10.96.0.0/12".parse().expect("well-formed test input"),
        ],
        image: Some("registry.example/causeway:0.1.0".into()),
        service_monitor: true,
        tls: None,
    })
    .expect("well-formed test input")
}

#[test]
fn every_manifest_container_command_line_parses_with_the_real_cli() {
    let deploy = Disk(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy"));
    let mut renderings = vec![("causeway install".to_owned(), install_c1())];
    for overlay in ["overlays/example-c1", "overlays/example-c2"] {
        let objects = render(&deploy, overlay).expect("well-formed test input");
        renderings.push((format!("deploy/{overlay}"), objects));
    }
    for (what, objects) in &renderings {
        let parsed = parse_all(objects).unwrap_or_else(|e| panic!("{what}: {e}"));
        // The gateway and the DNS replicas.
        assert_eq!(parsed, 2, "{what}: containers parsed");
    }
}

#[test]
fn a_flag_the_binary_does_not_accept_is_caught() {
    let mut objects = install_c1();
    let dns = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "causeway-dns")
        .expect("well-formed test input");
    dns["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .expect("well-formed test input")
        .push("--no-such-flag".into());
    let err = parse_all(&objects).expect_err("refused");
    assert!(
        err.contains("Deployment") && err.contains("--no-such-flag"),
        "{err}"
    );

    // A value the binary refuses, and a variable that leaves the gateway without its
    // required cluster id, are caught as well.
    let mut objects = install_c1();
    for o in objects.iter_mut().filter(|o| o["kind"] == "ConfigMap") {
        o["data"]["cidr"] = "not-a-cidr".into();
    }
    assert!(
        parse_all(&objects)
            .expect_err("refused")
            .contains("not-a-cidr")
    );
    let base = render(
        &Disk(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")),
        "base",
    )
    .expect("well-formed test input");
    assert!(
        parse_all(&base).is_err(),
        "the base's empty ConfigMap cannot run"
    );
}
