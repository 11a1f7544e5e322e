//! `causeway lab demo | up | down`: the story told on a fresh lab, or a lab left running to
//! poke at by hand, and its teardown.
//!
//! The demo tears the lab down however it ends: after the last step, after a failed step, or
//! on SIGINT/SIGTERM (the handler sets a flag every wait checks; the resulting error unwinds
//! to `Lab`'s `Drop`). A lab left by `up` is found again by `down` from its prefix alone: its
//! namespaces are `P-...` and every process in them was started by the lab.

use std::path::Path;

use anyhow::{Context, bail};

use crate::cluster::STOP_GRACE;
use crate::kube::{self, KubeLab};
use crate::kube_story;
use crate::lab::{Lab, LabSpec, PODS_PER_CLUSTER, default_work_dir};
use crate::ns;
use crate::story::{self, STEPS, WEB};
use crate::topology::{Addressing, Topology};
use crate::wait::{self, Interrupted};

/// The prefix `demo`, `up` and `down` use: namespaces `cw-c1-gw`, `cw-c2-pod1`, ...
pub const DEFAULT_PREFIX: &str = "cw";

/// Builds a lab, runs the six story steps printing each and its outcome, tears down.
/// Fails on the first failed step (after teardown).
pub fn demo(bin: &Path, addressing: Addressing) -> anyhow::Result<()> {
    wait::install_interrupt_handler().context("installing the SIGINT/SIGTERM handler")?;
    println!(
        "Building a lab of 3 clusters (namespaces {DEFAULT_PREFIX}-*) and starting the broker and gateways..."
    );
    let mut spec = LabSpec::new(DEFAULT_PREFIX, bin);
    spec.addressing = addressing;
    let mut lab = Lab::up(spec)?;
    println!("Lab up; logs in {}\n", lab.log_dir().display());
    println!("{}", describe_plan(&lab));
    let mut outcome = Ok(());
    for (number, (title, step)) in STEPS.iter().enumerate() {
        println!("Step {}: {title}", number + 1);
        match step(&mut lab) {
            Ok(account) => println!("  ok: {account}\n"),
            Err(e) => {
                println!("  FAILED: {e:#}\n  (logs in {})\n", lab.log_dir().display());
                outcome = Err(e.context(format!("step {} ({title}) failed", number + 1)));
                break;
            }
        }
    }
    println!("Tearing the lab down...");
    if let Err(e) = lab.down() {
        println!("Teardown failed: {e:#}");
        if outcome.is_ok() {
            outcome = Err(e);
        }
    } else if outcome
        .as_ref()
        .is_err_and(|e| e.downcast_ref::<Interrupted>().is_some())
    {
        println!("Interrupted; the lab is torn down.");
    }
    outcome?;
    println!("Done: all six steps passed.");
    Ok(())
}

/// Builds a lab, exports `web` from c1 (story step 1) and leaves it all running, printing
/// how to look around. `down` removes it.
pub fn up(bin: &Path, addressing: Addressing) -> anyhow::Result<()> {
    wait::install_interrupt_handler().context("installing the SIGINT/SIGTERM handler")?;
    let mut spec = LabSpec::new(DEFAULT_PREFIX, bin);
    spec.addressing = addressing;
    let mut lab = Lab::up(spec)?;
    println!("{}", describe_plan(&lab));
    let exported = story::step1_c1_exports_web(&mut lab)?;
    let p = DEFAULT_PREFIX;
    println!("The lab is up: broker in {p}-broker, gateways in {p}-c1-gw, {p}-c2-gw, {p}-c3-gw.");
    println!("{exported}\n");
    println!("Try:");
    println!("  ip netns exec {p}-c2-pod1 getent hosts {WEB}");
    println!("  ip netns exec {p}-c2-pod1 curl http://{WEB}/");
    println!("  ip netns exec {p}-wan tcpdump -ni wan0 udp port 51820");
    println!(
        "Export more by writing YAML files into {}/cN/services",
        lab.work_dir().display()
    );
    println!("Logs: {}", lab.log_dir().display());
    println!("Tear down with: causeway lab down");
    lab.detach();
    Ok(())
}

/// The address plan in plain words: each cluster's ranges and the global ones the others
/// reach it through.
pub fn describe_plan(lab: &Lab) -> String {
    let mut out = String::from("Address plan (from the broker; see `causeway status`):\n");
    for (c, rows) in lab.plan() {
        for (local, global) in rows {
            out.push_str(&format!(
                "  c{c}: {local} is reached from the other clusters as {global}\n"
            ));
        }
    }
    out
}

/// Tears down the lab with `prefix` (as left by `up` or by a crashed run): stops every process
/// in its namespaces, deletes them and their `/etc/netns` dirs. Logs stay in the work dir.
pub fn down(prefix: &str) -> anyhow::Result<()> {
    let topology = Topology::new(prefix, 3, PODS_PER_CLUSTER)?;
    let before: Vec<String> = ns::list_namespaces()?
        .into_iter()
        .filter(|n| topology.owns_namespace(n))
        .collect();
    // A kube lab's node agents run on the host, not in the lab's namespaces.
    kube::stop_host_daemons(&default_work_dir(prefix));
    ns::destroy(&topology, STOP_GRACE)?;
    let _ = std::fs::remove_dir_all(default_work_dir(prefix).join("pids"));
    let left: Vec<String> = ns::list_namespaces()?
        .into_iter()
        .filter(|n| topology.owns_namespace(n))
        .collect();
    if !left.is_empty() {
        bail!(
            "namespaces still present after teardown: {}",
            left.join(", ")
        );
    }
    if before.is_empty() {
        println!("No lab with prefix {prefix} was running.");
    } else {
        println!("Removed {} namespaces of lab {prefix}.", before.len());
    }
    Ok(())
}

/// `lab demo --kube`: builds a lab whose clusters run a real control plane, tells the user
/// story through kubectl (printing each command as typed), tears down.
pub fn demo_kube(bin: &Path) -> anyhow::Result<()> {
    wait::install_interrupt_handler().context("installing the SIGINT/SIGTERM handler")?;
    println!(
        "Building a lab of 3 clusters, each with etcd, kube-apiserver, kube-controller-manager, a node agent and its gateway..."
    );
    let mut kube = KubeLab::up(LabSpec::new(DEFAULT_PREFIX, bin))?;
    println!("Lab up; logs in {}", kube.lab().log_dir().display());
    println!("{}", kube.usage());
    let outcome = kube_story::run(&mut kube, &mut |line| println!("{line}"));
    println!("Tearing the lab down...");
    let teardown = kube.down();
    let report = outcome?;
    teardown?;
    let latencies: Vec<String> = report
        .import_latency
        .iter()
        .map(|(c, d)| format!("c{c} {} ms", d.as_millis()))
        .collect();
    println!(
        "Done: the story passed (apply -> import: {}).",
        latencies.join(", ")
    );
    Ok(())
}

/// `lab up --kube`: the kube lab left running; prints how to use its kubeconfig.
pub fn up_kube(bin: &Path) -> anyhow::Result<()> {
    wait::install_interrupt_handler().context("installing the SIGINT/SIGTERM handler")?;
    let kube = KubeLab::up(LabSpec::new(DEFAULT_PREFIX, bin))?;
    println!("The kube lab is up.");
    println!("{}", kube.usage());
    println!("Logs: {}", kube.lab().log_dir().display());
    println!("Tear down with: causeway lab down");
    kube.detach();
    Ok(())
}
