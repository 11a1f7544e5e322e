//! End to end through netlab: three clusters in network namespaces running the real broker
//! and gateways, checked only through the network (DNS from pods, HTTP through the tunnels,
//! a capture of the wan). The steps themselves live in `causeway_netlab::story`.

use causeway_netlab::lab::{Lab, LabSpec};
use causeway_netlab::story;

/// Unwraps a step's outcome, printing its account; on failure, panics with the error and
/// the tail of every daemon's log (the lab is torn down as the panic unwinds).
fn check(lab: &Lab, step: u32, outcome: anyhow::Result<String>) {
    match outcome {
        Ok(account) => println!("step {step}: {account}"),
        Err(e) => {
            let mut logs = format!("--- broker ---\n{}", tail(&lab.broker_log()));
            for c in lab.topology().clusters() {
                logs.push_str(&format!(
                    "\n--- c{c} gateway ---\n{}",
                    tail(&lab.gateway_log(c))
                ));
            }
            panic!(
                "step {step} failed: {e:#}\n(logs in {})\n{logs}",
                lab.log_dir().display()
            );
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
#[ignore = "needs root: netlab"]
fn lab_story_export_resolve_reach_failover_restart() {
    let mut lab = match Lab::up(LabSpec::new("cwt", env!("CARGO_BIN_EXE_causeway"))) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    for (n, (title, step)) in (1..).zip(story::STEPS) {
        println!("step {n}: {title}");
        let outcome = step(&mut lab);
        check(&lab, n, outcome);
    }
    lab.down().expect("tearing the lab down");
}
