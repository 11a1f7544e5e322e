//! Shell tests: the controller with kube's real client against the in-process fake API,
//! replaying a realistic sequence (an export appears, the Service changes ports, endpoints go
//! unready, a second cluster conflicts, the export is deleted) and asserting the writes sent.
//! Decisions are tested as tables on `plan()`; these only check the wiring and the patches.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::model::ServiceKey;
use crate::source::k8s::apply::FIELD_MANAGER;
use crate::source::k8s::fake_api::{FakeApi, Recorded};
use crate::source::k8s::imports::derived_name;
use crate::testing::eventually;

const MCS: &str = "multicluster.x-k8s.io/v1beta1";

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn seed(fake: &FakeApi) {
    fake.put(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    fake.put("services", service_json(&[("tcp", 42)]));
    fake.put("endpointslices", pods_json(true));
    fake.put(
        "serviceexports",
        json!({
            "apiVersion": MCS, "kind": "ServiceExport",
            "metadata": {"name": "hello", "namespace": "shop", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:10Z"},
            "spec": {},
        }),
    );
}

fn service_json(ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port)| json!({"name": name, "port": port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "shop"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ipFamilies": ["IPv4"], "ports": ports},
    })
}

fn pods_json(ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "hello-x1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "hello"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": ready}}],
    })
}

/// Waits for `fut` for at most 10 s.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The broker: holds `exports` of the given clusters and says it is connected.
fn state(exports: &[(&str, &Export)]) -> SyncState {
    let mut view = ClusterSetView::default();
    for (cluster, e) in exports {
        view.exports
            .insert((id(cluster), e.service.clone()), (*e).clone());
    }
    SyncState {
        view,
        connected: true,
        broker: None,
        last_error: None,
        rejected: None,
    }
}

fn applies_to<'a>(writes: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    writes
        .iter()
        .filter(|w| w.path == path && w.method == http::Method::PATCH)
        .collect()
}

fn conditions(r: &Recorded) -> Vec<(String, String, String)> {
    r.body.as_ref().unwrap()["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn controller_replays_an_export_through_its_lifecycle() {
    let fake = FakeApi::default();
    seed(&fake);
    let shutdown = CancellationToken::new();
    let source = start(
        fake.client(),
        &id("c1"),
        vec!["10.255.0.0/24".parse().unwrap()],
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        source.cluster.as_str(),
        "c1",
        "no ClusterProperty: the flag's id"
    );
    let mut exports = source.exports.clone();

    // 1. The export appears: published, and once the broker holds it, imported.
    let export = within(
        "the export is published",
        exports.wait_for(|e| !e.is_empty()),
    )
    .await
    .unwrap()
    .clone()
    .remove(0);
    assert_eq!(export.service, ServiceKey::new("shop", "hello").unwrap());
    assert_eq!(export.props.exported_at, Some(1_767_225_610));
    source.publish_view(&state(&[("c1", &export)]));
    let derived = derived_name(&export.service);
    let si_path = "/apis/multicluster.x-k8s.io/v1beta1/namespaces/shop/serviceimports/hello";
    let se_status =
        "/apis/multicluster.x-k8s.io/v1beta1/namespaces/shop/serviceexports/hello/status";
    let slice_path =
        format!("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/{derived}-c1-ipv4");
    eventually("the import, its slice and the Ready condition", || {
        let si = fake.get(MCS, "serviceimports", "shop", "hello")?;
        fake.get(
            "discovery.k8s.io/v1",
            "endpointslices",
            "shop",
            &format!("{derived}-c1-ipv4"),
        )?;
        fake.get("v1", "services", "shop", &derived)?;
        let se = fake.get(MCS, "serviceexports", "shop", "hello")?;
        let ready = se["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (ready && si["status"]["clusters"][0]["cluster"] == "c1").then_some(())
    })
    .await;
    assert_eq!(
        source.clusterset_ips.borrow().get(&export.service),
        Some(&vec!["10.255.0.1".parse::<std::net::IpAddr>().unwrap()]),
        "published for the MCS DNS zone"
    );
    let writes = fake.take_writes();
    for w in &writes {
        if w.method == http::Method::PATCH {
            assert_eq!(
                w.content_type.as_deref(),
                Some("application/apply-patch+yaml"),
                "{w:?}"
            );
            assert_eq!(
                w.query.get("fieldManager").map(String::as_str),
                Some(FIELD_MANAGER)
            );
            assert_eq!(w.query.get("force").map(String::as_str), Some("true"));
        }
    }
    let si = applies_to(&writes, si_path);
    let si_body = si
        .last()
        .expect("the ServiceImport was applied")
        .body
        .clone()
        .unwrap();
    assert_eq!(si_body["spec"]["type"], "ClusterSetIP");
    assert_eq!(si_body["spec"]["ips"], json!(["10.255.0.1"]));
    assert_eq!(
        si_body["metadata"]["annotations"]["multicluster.kubernetes.io/derived-service"],
        derived
    );
    let status = applies_to(&writes, se_status);
    assert_eq!(
        conditions(status.last().unwrap()),
        [
            ("Valid".into(), "True".into(), "Valid".into()),
            ("Ready".into(), "True".into(), "Exported".into()),
            ("Conflict".into(), "False".into(), "NoConflicts".into()),
        ]
    );
    let slice = applies_to(&writes, &slice_path);
    let slice_body = slice.last().unwrap().body.clone().unwrap();
    assert_eq!(
        slice_body["endpoints"][0]["addresses"],
        json!(["10.96.0.10"])
    );
    assert_eq!(
        slice_body["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"],
        "c1"
    );

    // 2. The Service changes ports: the export and the import follow.
    fake.put("services", service_json(&[("tcp", 42), ("admin", 9000)]));
    let export = within(
        "the new port is published",
        exports.wait_for(|e| e.first().is_some_and(|e| e.ports.len() == 2)),
    )
    .await
    .unwrap()[0]
        .clone();
    source.publish_view(&state(&[("c1", &export)]));
    eventually("the import's ports follow the Service", || {
        let writes = fake.requests();
        let si = applies_to(&writes, si_path);
        let ports = si.last()?.body.as_ref()?["spec"]["ports"].as_array()?.len();
        (ports == 2).then_some(())
    })
    .await;

    // 3. The endpoints go unready: the ClusterSetIP slice's endpoint turns unready.
    fake.take_writes();
    fake.put("endpointslices", pods_json(false));
    let export = within(
        "the unready endpoint is published",
        exports.wait_for(|e| e.first().is_some_and(|e| !e.endpoints[0].ready)),
    )
    .await
    .unwrap()[0]
        .clone();
    source.publish_view(&state(&[("c1", &export)]));
    eventually("the imported slice turns unready", || {
        let writes = fake.requests();
        let slice = applies_to(&writes, &slice_path);
        let ready = &slice.last()?.body.as_ref()?["endpoints"][0]["conditions"]["ready"];
        (ready == &json!(false)).then_some(())
    })
    .await;

    // 4. A second, older cluster exports a different port: Conflict on our export.
    let mut theirs = export.clone();
    theirs.ports[0].port = 43;
    theirs.props.exported_at = Some(1_767_225_600);
    theirs.cluster_ips = vec!["10.96.1.10".parse().unwrap()];
    source.publish_view(&state(&[("c1", &export), ("c2", &theirs)]));
    eventually("Conflict=True on our export", || {
        let writes = fake.requests();
        let status = applies_to(&writes, se_status);
        let last = conditions(status.last()?);
        last.contains(&("Conflict".into(), "True".into(), "PortConflict".into()))
            .then_some(())
    })
    .await;
    let si = fake.get(MCS, "serviceimports", "shop", "hello").unwrap();
    assert_eq!(
        si["spec"]["ports"][0]["port"], 43,
        "the oldest export's port wins"
    );
    assert!(
        fake.get(
            "discovery.k8s.io/v1",
            "endpointslices",
            "shop",
            &format!("{derived}-c2-ipv4")
        )
        .is_some()
    );

    // 5. The export is deleted everywhere: the import, slices and derived Service go.
    fake.take_writes();
    fake.remove(MCS, "serviceexports", "shop", "hello");
    within("the export is withdrawn", exports.wait_for(Vec::is_empty))
        .await
        .unwrap();
    source.publish_view(&state(&[]));
    eventually("everything imported is deleted", || {
        let left = fake.names(MCS, "serviceimports").len()
            + fake.names("v1", "services").len()
            + fake.names("discovery.k8s.io/v1", "endpointslices").len();
        (left == 2).then_some(())
    })
    .await;
    assert_eq!(
        fake.names("v1", "services"),
        ["shop/hello"],
        "the user's own Service stays"
    );
    let deletes: Vec<String> = fake
        .take_writes()
        .into_iter()
        .filter(|w| w.method == http::Method::DELETE)
        .map(|w| w.path)
        .collect();
    assert!(deletes.iter().any(|p| p == si_path), "{deletes:?}");
    assert!(deletes.iter().any(|p| p == &slice_path), "{deletes:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn the_cluster_id_comes_from_the_cluster_property_when_present() {
    let fake = FakeApi::default();
    fake.put(
        "clusterproperties",
        json!({"apiVersion": "about.k8s.io/v1alpha1", "kind": "ClusterProperty",
               "metadata": {"name": "cluster.clusterset.k8s.io"}, "spec": {"value": "east"}}),
    );
    let shutdown = CancellationToken::new();
    let source = start(fake.client(), &id("flag"), vec![], shutdown.clone())
        .await
        .unwrap();
    assert_eq!(source.cluster.as_str(), "east");
    shutdown.cancel();

    fake.put(
        "clusterproperties",
        json!({"apiVersion": "about.k8s.io/v1alpha1", "kind": "ClusterProperty",
               "metadata": {"name": "cluster.clusterset.k8s.io"},
               "spec": {"value": "not.a.label"}}),
    );
    let err = start(fake.client(), &id("flag"), vec![], CancellationToken::new())
        .await
        .err()
        .expect("an invalid id is refused");
    assert!(matches!(err, Error::ClusterId(_)), "{err:?}");
}

#[tokio::test]
async fn applying_the_same_plan_twice_sends_nothing_the_second_time() {
    use crate::source::k8s::plan::tests::{Cluster, converge, hello, service, service_export};
    let mut world = [Cluster::new("c1").with(
        service_export("hello", 100, json!({})),
        Some(service("hello", hello("10.96.0.10", false))),
        None,
    )];
    converge(&mut world, &[], 200);
    let fake = FakeApi::default();
    fake.put(
        "serviceexports",
        serde_json::to_value(&*world[0].observed.service_exports[0]).unwrap(),
    );
    let client = fake.client();
    let mut applied = super::super::apply::Applied::default();
    let errors = applied
        .apply(&client, &world[0].last, &world[0].observed)
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let first = fake.take_writes().len();
    assert!(
        first >= 4,
        "import, its status, the export's status, service, slices: {first}"
    );
    let errors = applied
        .apply(&client, &world[0].last, &world[0].observed)
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(fake.take_writes().len(), 0, "nothing changed, nothing sent");
}

/// Lists (GETs of a collection without `watch=true`) per path: what a relist costs the server.
fn lists(fake: &FakeApi) -> std::collections::BTreeMap<String, usize> {
    let mut lists = std::collections::BTreeMap::new();
    for r in fake.requests() {
        if r.method == http::Method::GET && !r.query.contains_key("watch") {
            *lists.entry(r.path).or_insert(0) += 1;
        }
    }
    lists
}

/// The watch paths, each once.
fn watched(fake: &FakeApi) -> std::collections::BTreeSet<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.query.get("watch").is_some_and(|w| w == "true"))
        .map(|r| r.path)
        .collect()
}

#[tokio::test]
async fn broken_watches_resume_without_relisting_and_an_expired_one_relists_once() {
    use crate::source::k8s::fake_api::WatchFault;
    let fake = FakeApi::default();
    seed(&fake);
    let shutdown = CancellationToken::new();
    let source = start(fake.client(), &id("c1"), vec![], shutdown.clone())
        .await
        .unwrap();
    let mut exports = source.exports.clone();
    within(
        "the export is published",
        exports.wait_for(|e| !e.is_empty()),
    )
    .await
    .expect("the source runs");
    // Every watcher has listed once and is watching.
    let paths = eventually("every watcher watches", || {
        let w = watched(&fake);
        (w.len() >= 3).then_some(w)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let listed = lists(&fake);
    assert!(
        listed.values().all(|n| *n == 1),
        "one initial list per collection: {listed:?}"
    );

    // The API server breaks every watch (HTTP 500) twice over; the watchers back off and
    // re-watch from the versions they have.
    fake.break_watches(2 * paths.len(), WatchFault::Error);
    eventually("every broken watch is answered", || {
        (fake.pending_watch_faults() == 0).then_some(())
    })
    .await;
    // A change made after the breaks still arrives, through a watch, not a list.
    fake.put("services", service_json(&[("tcp", 42), ("metrics", 9090)]));
    within(
        "the new port is published",
        exports.wait_for(|e| e.first().is_some_and(|e| e.ports.len() == 2)),
    )
    .await
    .expect("the source runs");
    assert_eq!(lists(&fake), listed, "no relist after broken watches");

    // One watch is told its version expired (410): that watcher lists again, once.
    fake.break_watches(1, WatchFault::Expired);
    let relisted = eventually("the expired watcher lists again", || {
        let now = lists(&fake);
        (now != listed).then_some(now)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = lists(&fake);
    assert_eq!(after, relisted, "the relist happens once");
    let extra: usize = after.values().sum::<usize>() - listed.values().sum::<usize>();
    assert_eq!(extra, 1, "one collection relisted: {listed:?} -> {after:?}");
    shutdown.cancel();
}
