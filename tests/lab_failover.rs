//! The five failover scenarios of issue 7 end to end through netlab, from a client's seat in
//! c2 (see `causeway_netlab::failover`): correctness with generous deadlines, never timing.
//! The timings are measured by `causeway lab failover` and recorded in bench/RESULTS.md.
//!
//! Each test builds its own lab (prefixes `fva`..`fve`); a lock runs them one at a time, since
//! four daemons per lab on a small CI machine are enough.

use std::sync::Mutex;

use causeway_netlab::Addressing;
use causeway_netlab::failover::{FailoverLab, Measurement, Scenario};
use causeway_netlab::lab::LabSpec;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Builds a failover lab, runs `scenarios` once each and returns what they measured; on any
/// failure, panics with the logs' location and the gateways' log tails.
fn run(prefix: &str, scenarios: &[Scenario]) -> Vec<Measurement> {
    run_with(prefix, Addressing::Distinct, scenarios)
}

fn run_with(prefix: &str, addressing: Addressing, scenarios: &[Scenario]) -> Vec<Measurement> {
    let _one = ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut spec = LabSpec::new(prefix, env!("CARGO_BIN_EXE_causeway"));
    spec.addressing = addressing;
    let mut lab = match FailoverLab::up(spec) {
        Ok(lab) => lab,
        Err(e) => panic!("the failover lab did not come up: {e:#}"),
    };
    let mut out = Vec::new();
    for &scenario in scenarios {
        match lab.run(scenario, 1) {
            Ok(m) => {
                println!("{m:?}");
                out.push(m);
            }
            Err(e) => {
                let logs: Vec<String> = (1..=3)
                    .map(|c| {
                        let log = lab.lab().gateway_log(c);
                        let lines: Vec<&str> = log.lines().collect();
                        format!(
                            "--- c{c} gateway ---\n{}",
                            lines[lines.len().saturating_sub(15)..].join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "{}: {e:#}\n(logs in {})\n{}",
                    scenario.title(),
                    lab.lab().log_dir().display(),
                    logs.join("\n")
                );
            }
        }
    }
    lab.down().expect("tearing the lab down");
    out
}

/// Withdrawn from every observed answer, the client served again (by c3), and back on c1
/// once restored.
fn assert_failed_over_and_back(m: &Measurement) {
    let title = m.scenario.title();
    assert!(m.withdraw_ms.is_some(), "{title}: not withdrawn: {m:?}");
    assert!(
        m.recovery_ms.is_some(),
        "{title}: client never recovered: {m:?}"
    );
    assert!(
        m.served_elsewhere > 0,
        "{title}: the client should have been served by c3 meanwhile: {m:?}"
    );
    assert!(
        m.return_ms.is_some(),
        "{title}: traffic not back on c1: {m:?}"
    );
}

#[test]
#[ignore = "needs root: netlab"]
fn scenario1_a_killed_endpoint_leaves_every_clusters_answers_and_the_client_fails_over() {
    let [m] = &run("fva", &[Scenario::EndpointKilled])[..] else {
        unreachable!()
    };
    assert_failed_over_and_back(m);
}

#[test]
#[ignore = "needs root: netlab"]
fn scenario2_a_killed_gateway_leaves_the_other_clusters_answers_and_the_client_fails_over() {
    let [m] = &run("fvb", &[Scenario::GatewayKilled])[..] else {
        unreachable!()
    };
    assert_failed_over_and_back(m);
}

#[test]
#[ignore = "needs root: netlab"]
fn scenario3_a_cut_wan_leaves_c2s_answers_while_c3_keeps_answering_c1() {
    let [m] = &run("fvc", &[Scenario::WanCut])[..] else {
        unreachable!()
    };
    assert_failed_over_and_back(m);
    assert_eq!(
        m.bystander_kept_target,
        Some(true),
        "c3 still reaches c1, so it keeps answering c1's endpoint"
    );
}

#[test]
#[ignore = "needs root: netlab"]
fn scenario4_with_the_broker_down_clients_see_nothing_and_c2_still_drops_its_dead_endpoint() {
    let [m] = &run("fvd", &[Scenario::BrokerDown])[..] else {
        unreachable!()
    };
    assert_eq!(m.failed, 0, "no client request fails: {m:?}");
    assert_eq!(m.served_elsewhere, 0, "all served by c1 throughout: {m:?}");
    assert!(
        m.withdraw_ms.is_some(),
        "c2 dropped its dead api endpoint without the broker: {m:?}"
    );
}

#[test]
#[ignore = "needs root: netlab"]
fn scenario5_failed_parts_come_back_and_traffic_returns_to_the_nearest_cluster() {
    let runs = run(
        "fve",
        &[
            Scenario::EndpointKilled,
            Scenario::GatewayKilled,
            Scenario::WanCut,
        ],
    );
    for m in &runs {
        assert!(
            m.return_ms.is_some(),
            "{}: traffic did not settle back on c1: {m:?}",
            m.scenario.title()
        );
    }
}

/// The five scenarios again in one lab whose three clusters all have kind's CIDRs (pods
/// 10.244.0.0/16, services 10.96.0.0/12): every cluster is reached through its global ranges,
/// and failover works as with distinct CIDRs.
#[test]
#[ignore = "needs root: netlab"]
fn all_five_scenarios_pass_when_every_cluster_has_the_same_cidrs() {
    let runs = run_with(
        "fvs",
        Addressing::SameCidrs,
        &[
            Scenario::EndpointKilled,
            Scenario::GatewayKilled,
            Scenario::WanCut,
            Scenario::BrokerDown,
        ],
    );
    let [endpoint, gateway, wan, broker] = &runs[..] else {
        unreachable!()
    };
    // Scenarios 1-3, and 5: each failed over and came back to c1.
    for m in [endpoint, gateway, wan] {
        assert_failed_over_and_back(m);
    }
    assert_eq!(wan.bystander_kept_target, Some(true), "{wan:?}");
    // Scenario 4.
    assert_eq!(broker.failed, 0, "no client request fails: {broker:?}");
    assert_eq!(broker.served_elsewhere, 0, "{broker:?}");
    assert!(broker.withdraw_ms.is_some(), "{broker:?}");
}
