//! Clusters as kind makes them: all three have pods on 10.244.0.0/16 and services on
//! 10.96.0.0/12. They join as they are (the broker gives each claimed range a global one), the
//! six story steps pass, and a remote pod's source arrives as its own stable global address,
//! so that a policy in the receiving cluster can let one remote pod in and keep its
//! neighbour out. Checked only through the network, as the other lab tests.

use causeway_netlab::Addressing;
use causeway_netlab::lab::{Lab, LabSpec};
use causeway_netlab::story;
use causeway_netlab::wait::poll_until;

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

fn fail(lab: &Lab, what: &str, e: impl std::fmt::Display) -> ! {
    let mut logs = format!("--- broker ---\n{}", tail(&lab.broker_log()));
    for c in lab.topology().clusters() {
        logs.push_str(&format!(
            "\n--- c{c} gateway ---\n{}",
            tail(&lab.gateway_log(c))
        ));
    }
    panic!("{what}: {e}\n(logs in {})\n{logs}", lab.log_dir().display());
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn spec(prefix: &str) -> LabSpec {
    let mut spec = LabSpec::new(prefix, env!("CARGO_BIN_EXE_causeway"));
    spec.addressing = Addressing::SameCidrs;
    spec
}

#[test]
#[ignore = "needs root: netlab"]
fn clusters_with_the_same_cidrs_join_and_the_story_passes() {
    let mut lab = match Lab::up(spec("sct")) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    let t = lab.topology().clone();
    assert_eq!(
        t.pod_addr(1, 1),
        t.pod_addr(2, 1),
        "the same local addresses"
    );
    // Every claim got a global range, and no two clusters share one.
    let mut globals: Vec<ipnet::IpNet> = vec![];
    for (c, rows) in lab.plan() {
        assert_eq!(rows.len(), 2, "c{c}: pods and services: {rows:?}");
        for (local, global) in rows {
            assert_eq!(local.prefix_len(), global.prefix_len());
            assert!(
                globals
                    .iter()
                    .all(|g| !g.contains(&global.network()) && !global.contains(&g.network())),
                "c{c}'s {global} overlaps another cluster's"
            );
            globals.push(*global);
        }
    }
    for (n, (title, step)) in (1..).zip(story::STEPS) {
        println!("step {n}: {title}");
        match step(&mut lab) {
            Ok(account) => println!("  {account}"),
            Err(e) => fail(&lab, &format!("step {n} ({title})"), format!("{e:#}")),
        }
    }
    lab.down().expect("tearing the lab down");
}

#[test]
#[ignore = "needs root: netlab"]
fn a_policy_on_one_remote_pods_global_address_lets_it_in_and_keeps_its_neighbour_out() {
    let mut lab = match Lab::up(spec("scp")) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    let t = lab.topology().clone();
    if let Err(e) = lab.start_http_server(1, 2, "c1 pod2") {
        fail(&lab, "starting c1-pod2's server", format!("{e:#}"));
    }
    // c1-pod2 as c2 reaches it; c2's two pods as c1 sees them arrive.
    let target = lab.pod_seen_from(2, 1, 2);
    let (allowed, other) = (lab.pod_seen_from(1, 2, 1), lab.pod_seen_from(1, 2, 2));
    assert_ne!(allowed, other);
    let url = format!("http://{target}/");
    for pod in [1, 2] {
        let got = poll_until(&format!("c2-pod{pod} reaching {url}"), DEADLINE, || {
            lab.http_get(2, pod, &url).map_err(|e| format!("{e:#}"))
        });
        match got {
            Ok(body) => assert_eq!(body.trim(), "c1 pod2"),
            Err(e) => fail(&lab, "reaching c1 before the policy", format!("{e:#}")),
        }
    }

    // In c1's router (its gateway namespace): forwarded traffic to c1-pod2 is accepted from
    // c2-pod1's global address only.
    let pod2 = t.pod_addr(1, 2);
    let rules = format!(
        "table inet cwpolicy {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ip daddr {pod2} ip saddr {allowed} accept\n    ip daddr {pod2} ct state established,related accept\n    ip daddr {pod2} counter drop\n  }}\n}}\n"
    );
    let path = lab.work_dir().join("policy.nft");
    std::fs::write(&path, rules).expect("writing the policy");
    let out = lab
        .exec(&t.gw_ns(1), &["nft", "-f", &path.display().to_string()])
        .expect("loading the policy");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let body = poll_until("c2-pod1 through the policy", DEADLINE, || {
        lab.http_get(2, 1, &url).map_err(|e| format!("{e:#}"))
    })
    .unwrap_or_else(|e| fail(&lab, "the allowed pod", format!("{e:#}")));
    assert_eq!(body.trim(), "c1 pod2");
    // Its neighbour is dropped: curl gives up after its own timeout. The allowed pod still
    // gets through right after, so it is the policy, not the path, that stops the neighbour.
    for _ in 0..2 {
        let denied = lab.http_get(2, 2, &url);
        assert!(denied.is_err(), "c2-pod2 ({other}) got through: {denied:?}");
        let allowed_again = lab.http_get(2, 1, &url);
        assert!(allowed_again.is_ok(), "{allowed_again:?}");
    }
    let counted = lab
        .exec(&t.gw_ns(1), &["nft", "list", "table", "inet", "cwpolicy"])
        .expect("listing the policy");
    let listed = String::from_utf8_lossy(&counted.stdout);
    println!("{listed}");
    // The neighbour's packets were seen and dropped by the rule, not lost on the way.
    let dropped: u64 = listed
        .lines()
        .find(|l| l.contains("counter packets") && l.contains("drop"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "packets").nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "the drop rule counted nothing:\n{listed}");
    lab.down().expect("tearing the lab down");
}
