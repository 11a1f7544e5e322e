//! End to end through netlab: `causeway status`, `explain` and `diagnose` run inside c2's
//! gateway namespace against its real admin port (the default, 127.0.0.1:9990), and their
//! JSON and table outputs are parsed: both peers up, the explained answer is what `dig`
//! gets from a pod, every diagnose check passes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Output;
use std::time::Duration;

use causeway::diagnose::Report;
use causeway::status::api::{Explanation, PeerState, Status};
use causeway_netlab::cluster::service_yaml;
use causeway_netlab::lab::{Lab, LabSpec};
use causeway_netlab::story;
use causeway_netlab::wait::poll_until;

/// Generous for CI: the tunnels come up within a few seconds.
const DEADLINE: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_causeway");

fn fail(lab: &Lab, what: &str, e: impl std::fmt::Display) -> ! {
    panic!(
        "{what}: {e}\n(logs in {})\n--- c2 gateway ---\n{}",
        lab.log_dir().display(),
        lab.gateway_log(2)
    )
}

/// Runs `causeway ARGS` in c2's gateway namespace.
fn causeway(lab: &Lab, args: &[&str]) -> Output {
    let mut argv = vec![BIN];
    argv.extend_from_slice(args);
    lab.exec(&lab.topology().gw_ns(2), &argv)
        .unwrap_or_else(|e| fail(lab, &format!("running causeway {args:?}"), format!("{e:#}")))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: netlab"]
fn status_explain_and_diagnose_describe_a_real_gateway() {
    let mut lab = match Lab::up(LabSpec::new("ops", BIN)) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    if let Err(e) = story::step1_c1_exports_web(&mut lab) {
        fail(&lab, "c1 exports web", format!("{e:#}"));
    }
    let topo = lab.topology().clone();
    // As c2 (whose admin port the commands read) reaches c1's pod: its global address.
    let c1_pod = lab.pod_seen_from(2, 1, 1);
    let c2_pod = IpAddr::V4(topo.pod_addr(2, 1));
    // c2 exports a service of its own, for diagnose's "DNS answers its own exports".
    if let Err(e) = lab.write_service(2, "api.yaml", &service_yaml("shop", "api", 80, &[c2_pod])) {
        fail(&lab, "c2 exports api", format!("{e:#}"));
    }

    // status: both peers up, the broker connected, web imported from c1, api exported.
    let status: Status = poll_until("c2's status: peers c1 and c3 up", DEADLINE, || {
        let out = causeway(&lab, &["status", "--output", "json"]);
        let status: Status = serde_json::from_str(&stdout(&out))
            .map_err(|e| format!("status json: {e}: {}", stdout(&out)))?;
        let peers: Vec<(Option<&str>, PeerState)> = status
            .peers
            .iter()
            .map(|p| (p.cluster.as_deref(), p.state))
            .collect();
        let ready = peers == [(Some("c1"), PeerState::Up), (Some("c3"), PeerState::Up)]
            && status.exports.iter().any(|e| e.name == "api")
            && status.imports.iter().any(|i| i.name == "web");
        if ready {
            Ok(status)
        } else {
            Err(format!(
                "peers {peers:?}, exports {:?}, imports {:?}",
                status.exports, status.imports
            ))
        }
    })
    .unwrap_or_else(|e| fail(&lab, "status", format!("{e:#}")));
    assert!(status.ready, "{status:?}");
    assert!(status.broker.connected, "{status:?}");
    assert_eq!(status.broker.address, Some(topo.broker_listen()));
    assert!(status.broker.revision > 0);
    assert!(
        status
            .peers
            .iter()
            .all(|p| p.last_handshake_seconds.is_some())
    );

    let table = stdout(&causeway(&lab, &["status"]));
    let connections: Vec<Vec<&str>> = table
        .lines()
        .skip_while(|l| *l != "CONNECTIONS")
        .skip(2)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    let states: Vec<(&str, &str)> = connections.iter().map(|r| (r[0], r[2])).collect();
    assert_eq!(states, [("c1", "up"), ("c3", "up")], "{table}");

    // explain: the answer is what a pod's dig gets, and c1's endpoint is in, ranked remote.
    let out = causeway(&lab, &["explain", story::WEB, "--output", "json"]);
    let e: Explanation = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|err| fail(&lab, "explain json", format!("{err}: {out:?}")));
    let dns = topo.dns_listen(2);
    let dig = lab
        .exec(
            &topo.pod_ns(2, 1),
            &[
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                &format!("@{}", dns.ip()),
                story::WEB,
                "A",
            ],
        )
        .unwrap_or_else(|err| fail(&lab, "dig", format!("{err:#}")));
    let dug: BTreeSet<String> = stdout(&dig).lines().map(str::to_owned).collect();
    let explained: BTreeSet<String> = e.answer.records.iter().cloned().collect();
    assert_eq!(e.answer.rcode.as_deref(), Some("NOERROR"), "{e:?}");
    assert_eq!(explained, dug, "explain's answer vs dig's");
    assert_eq!(explained, BTreeSet::from([c1_pod.to_string()]));
    let c1 = e
        .candidates
        .iter()
        .find(|c| c.cluster == "c1")
        .unwrap_or_else(|| fail(&lab, "explain", format!("no c1 candidate: {e:?}")));
    assert_eq!(
        (c1.verdict.as_str(), c1.tier.as_str()),
        ("answered", "remote")
    );
    assert!(e.data_age_seconds.is_some());
    let text = stdout(&causeway(&lab, &["explain", story::WEB]));
    assert!(text.contains(&format!("NOERROR {c1_pod}")), "{text}");

    // diagnose: every check passes (handshakes may still be completing: poll).
    let report: Report = poll_until("c2's diagnose passes", DEADLINE, || {
        let out = causeway(&lab, &["diagnose", "--output", "json"]);
        let report: Report = serde_json::from_str(&stdout(&out))
            .map_err(|e| format!("diagnose json: {e}: {out:?}"))?;
        if report.passed && out.status.success() {
            Ok(report)
        } else {
            Err(format!("{:?}", report.checks))
        }
    })
    .unwrap_or_else(|e| fail(&lab, "diagnose", format!("{e:#}")));
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    for expected in [
        "broker",
        "ready",
        "handshake/c1",
        "probe/c1",
        "handshake/c3",
        "probe/c3",
        "dns/shop/api",
        "address-plan",
        "mtu/c1",
        "mtu/c3",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let out = causeway(&lab, &["diagnose"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("all 10 checks passed"),
        "{}",
        stdout(&out)
    );

    // A diagnose against a dead admin port fails with a clear error and a nonzero exit.
    let out = causeway(&lab, &["diagnose", "--admin", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin port 127.0.0.1:1"),
        "{out:?}"
    );
}
