//! End to end through netlab: a gateway's own tunnel probes take an unreachable cluster out of
//! its DNS answers, without the broker, and put it back when the path returns; clusters that
//! still reach it keep answering it.
//!
//! The wan path between c1 and c2 is cut with a blackhole route in c2's router (c2 can no
//! longer send to c1's gateway, so neither side's probes are answered), while c1 and c3 still
//! see each other and the broker still sees everyone.

use std::net::IpAddr;
use std::time::Duration;

use causeway_netlab::lab::{Lab, LabSpec};
use causeway_netlab::story;
use causeway_netlab::wait::{Deadline, poll_until};

/// Generous for CI; the default prober declares a peer down in under 1 s.
const DEADLINE: Duration = Duration::from_secs(20);

fn ok(lab: &Lab, what: &str, outcome: anyhow::Result<String>) {
    if let Err(e) = outcome {
        panic!(
            "{what}: {e:#}\n(logs in {})\n--- c2 gateway ---\n{}",
            lab.log_dir().display(),
            lab.gateway_log(2)
        );
    }
}

/// Polls `cluster`'s pod 1 until its answer for web satisfies `want`; returns how long it took.
fn wait_answer(
    lab: &Lab,
    cluster: usize,
    want: impl Fn(&[IpAddr]) -> bool,
    what: &str,
) -> Duration {
    let deadline = Deadline::after(DEADLINE);
    let outcome = poll_until(what, DEADLINE, || {
        match lab.resolve(cluster, 1, story::WEB) {
            Ok(answer) if want(&answer) => Ok(()),
            Ok(answer) => Err(format!("answered {answer:?}")),
            Err(e) => Err(format!("{e:#}")),
        }
    });
    if let Err(e) = outcome {
        panic!(
            "c{cluster}: {e:#}\n--- c{cluster} gateway ---\n{}",
            lab.gateway_log(cluster)
        );
    }
    deadline.elapsed()
}

#[test]
#[ignore = "needs root: netlab"]
fn a_cut_tunnel_leaves_dns_answers_at_once_and_returns_with_the_path() {
    let mut lab = match Lab::up(LabSpec::new("cwr", env!("CARGO_BIN_EXE_causeway"))) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    let outcome = story::step1_c1_exports_web(&mut lab);
    ok(&lab, "c1 exports web", outcome);
    let outcome = story::step4_c3_exports_and_prefers_itself(&mut lab);
    ok(&lab, "c3 exports web", outcome);
    let topo = lab.topology().clone();
    // As c2 reaches them (through c1's and c3's global ranges).
    let (c1, c3) = (lab.pod_seen_from(2, 1, 1), lab.pod_seen_from(2, 3, 1));
    wait_answer(
        &lab,
        2,
        |a| a.contains(&c1) && a.contains(&c3),
        "answer both c1 and c3",
    );

    let c1_gw = topo.gw_wan_addr(1).to_string();
    let blackhole = ["ip", "route", "add", "blackhole", &format!("{c1_gw}/32")];
    let out = lab
        .exec(&topo.gw_ns(2), &blackhole)
        .expect("cutting c2 from c1");
    assert!(
        out.status.success(),
        "ip route add blackhole: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let withdrawn = wait_answer(
        &lab,
        2,
        |a| a == [c3],
        "leave c1 out once its tunnel is cut",
    );
    println!("c2 stopped answering c1's endpoint {withdrawn:?} after the cut");
    let c3_answer = lab.resolve(3, 1, story::WEB).expect("resolving from c3");
    assert_eq!(
        c3_answer,
        vec![IpAddr::V4(topo.pod_addr(3, 1)), lab.pod_seen_from(3, 1, 1)],
        "c3 still reaches c1, so it keeps answering it after its own"
    );

    let restore = ["ip", "route", "del", "blackhole", &format!("{c1_gw}/32")];
    let out = lab
        .exec(&topo.gw_ns(2), &restore)
        .expect("restoring c2's path to c1");
    assert!(
        out.status.success(),
        "ip route del blackhole: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let returned = wait_answer(
        &lab,
        2,
        |a| a.contains(&c1) && a.contains(&c3),
        "answer c1 again",
    );
    println!("c2 answered c1's endpoint again {returned:?} after the path returned");
    let body = lab
        .http_get(2, 1, &format!("http://{c1}/"))
        .expect("reaching c1 again from c2");
    assert_eq!(body.trim(), story::C1_BODY);

    lab.down().expect("tearing the lab down");
}
