//! A careless or hostile member: c3's gateway is restarted claiming, in turn, c1's CIDR, the
//! default routes, the underlay, a peer's WireGuard endpoint and the broker. Throughout, c1
//! and c2 keep their routes (every table, both families, exactly as before) and their
//! traffic; the refusals show in c3's `status`; and once c3 claims its own range again, every
//! gateway's routes are exactly what they were.

use std::collections::BTreeMap;

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
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn routes(lab: &Lab) -> BTreeMap<usize, String> {
    lab.topology()
        .clusters()
        .map(|c| {
            let r = lab
                .route_tables(c)
                .unwrap_or_else(|e| fail(lab, "reading routes", format!("{e:#}")));
            // IPv6 link-local addresses appear on the veths whenever the kernel finishes
            // duplicate address detection, claims or not: not ours to compare.
            let r: Vec<&str> = r.lines().filter(|l| !l.contains("fe80::")).collect();
            (c, r.join("\n"))
        })
        .collect()
}

/// c2-pod1 still reaches c1's web through the tunnel.
fn c2_reaches_c1(lab: &Lab, when: &str) {
    let url = format!("http://{}/", lab.pod_seen_from(2, 1, 1));
    let body = poll_until(&format!("c2-pod1 reaching c1 {when}"), DEADLINE, || {
        lab.http_get(2, 1, &url).map_err(|e| format!("{e:#}"))
    })
    .unwrap_or_else(|e| fail(lab, when, format!("{e:#}")));
    assert_eq!(body.trim(), story::C1_BODY, "{when}");
}

#[test]
#[ignore = "needs root: netlab"]
fn bad_claims_are_refused_or_contained_and_their_withdrawal_restores_every_route() {
    let mut lab = match Lab::up(LabSpec::new("clm", env!("CARGO_BIN_EXE_causeway"))) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    if let Err(e) = story::step1_c1_exports_web(&mut lab) {
        fail(&lab, "c1 exports web", format!("{e:#}"));
    }
    c2_reaches_c1(&lab, "before any claim");
    let before = routes(&lab);
    let t = lab.topology().clone();
    let c1_cidr = t.cluster_cidrs(1)[0].clone();
    let refused: [(&str, String, &str); 5] = [
        (
            "the IPv4 default route",
            "0.0.0.0/0".into(),
            "default route",
        ),
        ("the IPv6 default route", "::/0".into(), "default route"),
        ("the underlay", "10.100.0.0/24".into(), "covers"),
        (
            "c1's WireGuard endpoint",
            format!("{}/32", t.gw_wan_addr(1)),
            "WireGuard endpoint",
        ),
        (
            "the broker",
            format!("{}/32", t.broker_addr()),
            "the broker's address",
        ),
    ];
    for (what, claim, reason) in &refused {
        if let Err(e) = lab.restart_gateway_claiming(3, Some(vec![claim.clone()])) {
            fail(
                &lab,
                &format!("restarting c3 claiming {what}"),
                format!("{e:#}"),
            );
        }
        // c3's own status shows the broker's refusal and its reason.
        let status = poll_until(
            &format!("c3's status to show {what} refused"),
            DEADLINE,
            || {
                let status = lab.gateway_status(3).map_err(|e| format!("{e:#}"))?;
                if status.contains("REFUSED") && status.contains(reason) {
                    Ok(status)
                } else {
                    Err(status)
                }
            },
        )
        .unwrap_or_else(|e| fail(&lab, what, format!("{e:#}")));
        println!(
            "claim of {what} ({claim}): {}",
            status.lines().find(|l| l.contains("REFUSED")).unwrap_or("")
        );
        c2_reaches_c1(&lab, &format!("while c3 claims {what}"));
        let now = routes(&lab);
        for c in [1, 2] {
            assert_eq!(
                now[&c], before[&c],
                "c{c}'s routes changed while c3 claimed {what}"
            );
        }
    }

    // Another cluster's CIDR is not refused (overlap is normal): c3 gets a global range of
    // its own for it, and c1's traffic and routes to c2 stay as they were.
    if let Err(e) = lab.restart_gateway_claiming(3, Some(vec![c1_cidr.clone()])) {
        fail(&lab, "restarting c3 claiming c1's CIDR", format!("{e:#}"));
    }
    c2_reaches_c1(&lab, "while c3 claims c1's CIDR");
    let status = lab.gateway_status(3).unwrap_or_default();
    assert!(!status.contains("REFUSED"), "{status}");

    // Withdrawn: c3 claims its own range again; every gateway's routes are as before.
    if let Err(e) = lab.restart_gateway_claiming(3, None) {
        fail(&lab, "restarting c3 with its own claim", format!("{e:#}"));
    }
    let restored = poll_until("every gateway's routes as before", DEADLINE, || {
        let now = routes(&lab);
        if now == before {
            Ok(())
        } else {
            let differ: Vec<usize> = now
                .iter()
                .filter(|(c, r)| before.get(c) != Some(r))
                .map(|(c, _)| *c)
                .collect();
            Err(format!("routes differ in {differ:?}: {now:#?}"))
        }
    });
    if let Err(e) = restored {
        fail(&lab, "restoring the routes", format!("{e:#}"));
    }
    c2_reaches_c1(&lab, "after every claim was withdrawn");
    lab.down().expect("tearing the lab down");
}
