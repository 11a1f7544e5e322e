//! The lab's namespaces on their own, without any causeway daemon: addressing, isolation
//! between clusters, pods' resolv.conf, the HTTP server, wan capture, and teardown.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use causeway_netlab::capture::Transport;
use causeway_netlab::lab::{Lab, LabSpec};
use causeway_netlab::{http, ns};

fn spec(prefix: &str) -> LabSpec {
    let mut spec = LabSpec::new(prefix, "/nonexistent/causeway");
    spec.work_dir = Some(std::env::temp_dir().join(format!("netlab-test-{prefix}")));
    spec
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    let dash = format!("{prefix}-");
    ns::list_namespaces()
        .expect("listing namespaces")
        .into_iter()
        .filter(|n| n.starts_with(&dash))
        .collect()
}

fn ping(lab: &Lab, ns: &str, to: Ipv4Addr) -> bool {
    let output = lab
        .exec(ns, &["ping", "-c", "1", "-W", "2", &to.to_string()])
        .expect("running ping");
    output.status.success()
}

#[test]
#[ignore = "needs root: netlab"]
fn bare_lab_routes_within_clusters_isolates_them_and_tears_down() {
    let prefix = format!("cwnl{}", std::process::id());
    let lab = Lab::bare(spec(&prefix)).unwrap();
    let t = lab.topology().clone();
    let work_dir: PathBuf = lab.work_dir().to_owned();
    assert_eq!(namespaces_with(&prefix).len(), t.namespaces().len());

    // A pod reaches its own gateway; gateways reach each other and the broker over the wan.
    assert!(
        ping(&lab, &t.pod_ns(1, 1), t.gw_pod_addr(1)),
        "c1-pod1 cannot ping its gateway"
    );
    assert!(
        ping(&lab, &t.pod_ns(2, 2), t.gw_pod_addr(2)),
        "c2-pod2 cannot ping its gateway"
    );
    assert!(
        ping(&lab, &t.gw_ns(1), t.gw_wan_addr(2)),
        "c1-gw cannot ping c2-gw over the wan"
    );
    assert!(
        ping(&lab, &t.gw_ns(3), t.broker_addr()),
        "c3-gw cannot ping the broker"
    );
    // Without tunnels, nothing routes one cluster's pods to another's.
    assert!(
        !ping(&lab, &t.pod_ns(1, 1), t.pod_addr(2, 1)),
        "c1-pod1 reached c2-pod1 without a tunnel"
    );

    // Gateways forward; pods resolve through their gateway.
    let forward = lab
        .exec(&t.gw_ns(1), &["sysctl", "-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "1");
    let resolv = std::fs::read_to_string(ns::etc_dir(&t.pod_ns(2, 1)).join("resolv.conf")).unwrap();
    assert!(resolv.starts_with("nameserver 10.102.0.1\n"), "{resolv}");

    // The pods' HTTP server, bound inside c1-pod1, answers c1-pod2.
    let listener = ns::in_netns(&t.pod_ns(1, 1), || TcpListener::bind("0.0.0.0:80"))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || http::serve_on(listener, "hello from c1".into()));
    let url = format!("http://{}/", t.pod_addr(1, 1));
    assert_eq!(lab.http_get(1, 2, &url).unwrap(), "hello from c1");

    // A wan capture sees the gateways' pings as IPv4 between their wan addresses.
    let capture = lab.capture_wan("bare").unwrap();
    assert!(ping(&lab, &t.gw_ns(1), t.gw_wan_addr(2)));
    let packets = capture.stop().unwrap();
    let icmp_between_gateways = packets.iter().filter_map(|p| p.ipv4.as_ref()).any(|ip| {
        ip.src == t.gw_wan_addr(1)
            && ip.dst == t.gw_wan_addr(2)
            && ip.transport == Transport::Other { protocol: 1 }
    });
    assert!(
        icmp_between_gateways,
        "no ICMP c1-gw -> c2-gw among {} captured frames",
        packets.len()
    );

    drop(lab);
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
    assert!(!ns::etc_dir(&t.pod_ns(2, 1)).exists());
    std::fs::remove_dir_all(work_dir).unwrap();
}

#[test]
#[ignore = "needs root: netlab"]
fn bare_lab_removes_leftovers_of_a_crashed_run_with_the_same_prefix() {
    let prefix = format!("cwnr{}", std::process::id());
    let first = Lab::bare(spec(&prefix)).unwrap();
    let work_dir = first.work_dir().to_owned();
    first.detach(); // as if the process had crashed: namespaces stay
    assert!(!namespaces_with(&prefix).is_empty());
    let second = Lab::bare(spec(&prefix)).unwrap();
    assert_eq!(
        namespaces_with(&prefix).len(),
        second.topology().namespaces().len()
    );
    second.down().unwrap();
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
    std::fs::remove_dir_all(work_dir).unwrap();
}

#[test]
#[ignore = "needs root: netlab"]
fn daemons_restart_and_down_stops_what_a_detached_lab_left_running() {
    use causeway_netlab::cluster::{Daemon, STOP_GRACE};
    let prefix = format!("cwnd{}", std::process::id());
    let lab = Lab::bare(spec(&prefix)).unwrap();
    let work_dir = lab.work_dir().to_owned();
    let pod = lab.topology().pod_ns(1, 1);
    let sleep = std::path::Path::new("/bin/sleep");

    let mut daemon = Daemon::new("sleeper", &pod, sleep, vec!["600".into()], &work_dir);
    daemon.start().unwrap();
    assert!(daemon.is_running());
    let first = daemon.pid();
    daemon.restart(STOP_GRACE).unwrap();
    assert!(daemon.is_running());
    assert_ne!(daemon.pid(), first);
    daemon.stop(STOP_GRACE);
    assert!(!daemon.is_running());

    // A daemon left behind by a detached lab (as `causeway lab up` leaves them).
    let mut left = Daemon::new("left", &pod, sleep, vec!["600".into()], &work_dir);
    left.start().unwrap();
    left.detach();
    lab.detach();
    assert_eq!(ns::pids_in(&pod).unwrap().len(), 1);
    causeway_netlab::down(&prefix).unwrap();
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
    std::fs::remove_dir_all(work_dir).unwrap();
}
