//! Nearest remote first, by measured tunnel round-trip time: c1 and c2 both export `web`;
//! c3, remote to both, ranks them by the RTT its tunnel probes measure. A userspace relay in
//! c3's gateway namespace (`netlab::relay`; the kernel has no netem) delays c3's wan packets
//! to c1 and to c2 by different amounts; c3's pods get the nearer cluster's endpoint first,
//! and the order flips when the delays swap. Namespace prefix `lat`.

use std::net::IpAddr;
use std::time::Duration;

use causeway_netlab::cluster::service_yaml;
use causeway_netlab::lab::{Lab, LabSpec};
use causeway_netlab::relay::{Relay, Shaping};
use causeway_netlab::topology::UPLINK;
use causeway_netlab::wait::poll_until;

/// Propagation (broker round trip, snapshot swap) plus the RTT average settling.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const NEAR: Duration = Duration::from_millis(5);
const FAR: Duration = Duration::from_millis(60);

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn check<T>(lab: &Lab, what: &str, outcome: anyhow::Result<T>) -> T {
    outcome.unwrap_or_else(|e| {
        let mut logs = String::new();
        for c in lab.topology().clusters() {
            logs.push_str(&format!(
                "\n--- c{c} gateway ---\n{}",
                tail(&lab.gateway_log(c))
            ));
        }
        panic!("{what}: {e:#}\n(logs in {}){logs}", lab.log_dir().display())
    })
}

/// Polls c3-pod1's resolver until `web.shop.svc.global` answers exactly `want`, in order.
fn wait_for_order(lab: &Lab, want: &[IpAddr]) {
    let outcome = poll_until(
        &format!("c3-pod1 to resolve web.shop.svc.global to {want:?} in that order"),
        SETTLE_TIMEOUT,
        || match lab.resolve(3, 1, "web.shop.svc.global") {
            Ok(answer) if answer == want => Ok(()),
            Ok(answer) => Err(format!("{answer:?}")),
            Err(e) => Err(format!("{e:#}")),
        },
    );
    check(lab, "waiting for the nearest-first order", outcome);
}

#[test]
#[ignore = "needs root: netlab"]
fn the_nearer_remote_cluster_is_answered_first_and_the_order_follows_the_latency() {
    let lab = match Lab::up(LabSpec::new("lat", env!("CARGO_BIN_EXE_causeway"))) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    let t = lab.topology().clone();
    let (c1_wan, c2_wan) = (t.gw_wan_addr(1), t.gw_wan_addr(2));
    let shaped = |delay| Shaping {
        delay,
        loss_percent: 0,
    };
    let relay = Relay::start(
        &t.gw_ns(3),
        "lat0",
        UPLINK,
        &[(c1_wan, shaped(FAR)), (c2_wan, shaped(NEAR))],
    );
    let relay = check(&lab, "starting the relay in c3's gateway namespace", relay);

    let c1_web = IpAddr::V4(t.pod_addr(1, 1));
    let c2_web = IpAddr::V4(t.pod_addr(2, 1));
    let written = lab.write_service(1, "web.yaml", &service_yaml("shop", "web", 80, &[c1_web]));
    check(&lab, "exporting web from c1", written);
    let written = lab.write_service(2, "web.yaml", &service_yaml("shop", "web", 80, &[c2_web]));
    check(&lab, "exporting web from c2", written);
    // As c3 reaches them: through c1's and c2's global ranges.
    let (c1_web, c2_web) = (lab.seen_from(3, 1, c1_web), lab.seen_from(3, 2, c2_web));

    // c1 is 60 ms away from c3, c2 5 ms: c2 first.
    wait_for_order(&lab, &[c2_web, c1_web]);
    let before_swap = relay.stats();
    assert!(
        before_swap.forwarded > 0,
        "the relay carried c3's wan packets"
    );

    // Swap the latencies: c1 becomes the nearer one.
    relay.set(c1_wan, shaped(NEAR));
    relay.set(c2_wan, shaped(FAR));
    wait_for_order(&lab, &[c1_web, c2_web]);
    // And back, so the first order was not an accident of which cluster exported first.
    relay.set(c1_wan, shaped(FAR));
    relay.set(c2_wan, shaped(NEAR));
    wait_for_order(&lab, &[c2_web, c1_web]);
    assert!(relay.stats().forwarded > before_swap.forwarded);

    drop(relay);
    lab.down().expect("tearing the lab down");
}
