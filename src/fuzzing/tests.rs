use std::path::PathBuf;

use super::*;
use crate::model::fixtures::{cluster, export, id};
use crate::sync::wire::{Change, Delta, Hello, Publish, RejectReason, Resume, Snapshot};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// Every target's committed corpus, replayed through its entry point: what CI runs instead
/// of a fuzzer.
#[test]
fn fuzz_corpora_replay_without_panicking() {
    for (target, run) in TARGETS {
        let dir = corpus(target);
        let mut replayed = 0;
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            run(&data);
            replayed += 1;
        }
        assert!(replayed >= 4, "{target}: {replayed} corpus files");
    }
}

/// The seeds reach past the decoders: the broker corpus stores exports, the gateway corpus
/// fills a view (a corpus the decoders refuse would fuzz nothing but them).
#[test]
fn seeds_reach_the_state_behind_the_decoders() {
    let hello = std::fs::read(corpus("sync_broker").join("hello_publish")).unwrap();
    assert_eq!(
        messages::<ClientMessage>(&hello).len(),
        2,
        "a Hello and a Publish"
    );
    assert_eq!(
        broker_snapshot(&hello).exports.len(),
        1,
        "the publish is stored"
    );
    let snapshot = std::fs::read(corpus("sync_gateway").join("snapshot_delta")).unwrap();
    assert_eq!(messages::<BrokerMessage>(&snapshot).len(), 2);
    let k8s = std::fs::read(corpus("k8s_objects").join("cluster_ip")).unwrap();
    let objects: K8sObjects = serde_json::from_slice(&k8s).unwrap();
    assert!(objects.export.is_some());
    assert!(
        crate::source::k8s::export::export_of(
            objects.service.as_ref(),
            &objects.slices,
            None,
            "causeway"
        )
        .is_ok()
    );
}

fn frames(messages: &[impl serde::Serialize]) -> Vec<u8> {
    messages
        .iter()
        .flat_map(|m| wire::encode(m).expect("encodes"))
        .collect()
}

/// Rewrites the seed corpora. A tool, not a check: run it with
/// `CAUSEWAY_WRITE_CORPUS=1 cargo test -p causeway --lib write_fuzz_seeds -- --ignored`.
/// Without the variable it does nothing, so CI's `--include-ignored` leaves the tree clean.
#[test]
#[ignore = "writes into tests/fuzz/corpus; run by hand with CAUSEWAY_WRITE_CORPUS=1"]
fn write_fuzz_seeds() {
    if std::env::var_os("CAUSEWAY_WRITE_CORPUS").is_none() {
        eprintln!("write_fuzz_seeds: set CAUSEWAY_WRITE_CORPUS=1 to rewrite the seeds");
        return;
    }
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let hello = ClientMessage::Hello(Hello {
        cluster: cluster("c1"),
        resume: None,
    });
    let publish = |exports| {
        ClientMessage::Publish(Publish {
            cluster: id("c1"),
            exports,
        })
    };
    write(
        "sync_broker",
        "hello",
        &frames(std::slice::from_ref(&hello)),
    );
    write(
        "sync_broker",
        "hello_publish",
        &frames(&[hello.clone(), publish(vec![export("web", "10.101.0.10")])]),
    );
    write(
        "sync_broker",
        "publish_twice_ack",
        &frames(&[
            hello.clone(),
            publish(vec![
                export("web", "10.101.0.10"),
                export("db", "10.101.0.11"),
            ]),
            publish(vec![export("db", "10.101.0.12")]),
            ClientMessage::Ack { revision: 3 },
        ]),
    );
    write(
        "sync_broker",
        "foreign_hello",
        &frames(&[ClientMessage::Hello(Hello {
            cluster: cluster("c2"),
            resume: Some(Resume {
                epoch: 1,
                revision: 7,
            }),
        })]),
    );
    write(
        "sync_broker",
        "publish_before_hello",
        &frames(&[publish(vec![export("web", "10.101.0.10")]), hello]),
    );

    let snapshot = |epoch, revision| {
        BrokerMessage::Snapshot(Snapshot {
            epoch,
            revision,
            clusters: vec![cluster("c1"), cluster("c2")],
            exports: vec![(id("c2"), export("web", "10.102.0.10"))],
            withheld: vec![],
        })
    };
    let delta = |epoch, revision, changes| {
        BrokerMessage::Delta(Delta {
            epoch,
            revision,
            changes,
        })
    };
    write("sync_gateway", "snapshot", &frames(&[snapshot(1, 3)]));
    write(
        "sync_gateway",
        "snapshot_delta",
        &frames(&[
            snapshot(1, 3),
            delta(
                1,
                5,
                vec![
                    Change::UpsertExport {
                        cluster: id("c2"),
                        export: export("db", "10.102.0.11"),
                    },
                    Change::WithholdCluster(id("c2")),
                ],
            ),
        ]),
    );
    write(
        "sync_gateway",
        "delta_before_snapshot",
        &frames(&[delta(1, 1, vec![Change::RemoveCluster(id("c2"))])]),
    );
    write(
        "sync_gateway",
        "new_epoch_and_gap",
        &frames(&[
            snapshot(1, 3),
            delta(2, 4, vec![]),
            delta(1, 9, vec![Change::UpsertCluster(cluster("c3"))]),
        ]),
    );
    write(
        "sync_gateway",
        "rejected",
        &frames(&[BrokerMessage::Rejected {
            reason: RejectReason::TooManyServices { count: 9, max: 3 },
        }]),
    );

    let readme = include_str!("../../README.md");
    let start = readme
        .find("```yaml\nname: web")
        .expect("the README's file-source example");
    let example = &readme[start + 8..];
    let example = &example[..example.find("```").expect("fenced")];
    write("file_source", "readme_example.yaml", example.as_bytes());
    write(
        "file_source",
        "two_documents.yaml",
        b"name: db\nnamespace: shop\nexport: true\nendpoints:\n  - address: 10.101.0.11\n---\nname: api\nnamespace: shop\nclusterIPs: [10.101.128.11, fd00::11]\nports:\n  - name: grpc\n    port: 9090\n  - name: http\n    port: 80\n    protocol: UDP\n",
    );
    write(
        "file_source",
        "bad_port.yaml",
        b"name: web\nnamespace: shop\nports:\n  - port: 0\n",
    );
    write(
        "file_source",
        "unknown_key.yaml",
        b"name: web\nnamespace: shop\nexpor: true\n",
    );

    write(
        "k8s_objects",
        "cluster_ip",
        br#"{"service":{"metadata":{"name":"web","namespace":"shop"},"spec":{"clusterIP":"10.96.0.10","clusterIPs":["10.96.0.10"],"ports":[{"name":"http","port":80,"protocol":"TCP","appProtocol":"http"}],"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":60}},"ipFamilies":["IPv4"]}},"slices":[{"metadata":{"name":"web-abc","namespace":"shop","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","endpoints":[{"addresses":["10.101.0.10"],"conditions":{"ready":true},"zone":"eu-a"},{"addresses":["10.101.0.11"],"conditions":{"ready":false}}]}],"export":{"apiVersion":"multicluster.x-k8s.io/v1beta1","kind":"ServiceExport","metadata":{"name":"web","namespace":"shop","creationTimestamp":"2024-01-01T00:00:00Z"},"spec":{}}}"#,
    );
    write(
        "k8s_objects",
        "headless_rollout",
        br#"{"service":{"metadata":{"name":"db","namespace":"shop"},"spec":{"clusterIP":"None","ports":[{"port":5432}]}},"slices":[{"metadata":{"name":"db-1","namespace":"shop","labels":{"kubernetes.io/service-name":"db"}},"addressType":"IPv4","endpoints":[{"addresses":["10.101.0.20"],"hostname":"db-0"}]},{"metadata":{"name":"db-2","namespace":"shop","labels":{"kubernetes.io/service-name":"db"}},"addressType":"IPv4","endpoints":[{"addresses":["10.101.0.20","10.101.0.21"],"conditions":{"ready":false}}]}],"exportedAt":1700000000}"#,
    );
    write(
        "k8s_objects",
        "external_name",
        br#"{"service":{"metadata":{"name":"ext","namespace":"shop"},"spec":{"type":"ExternalName","externalName":"example.com"}}}"#,
    );
    write(
        "k8s_objects",
        "no_service",
        br#"{"slices":[{"metadata":{"name":"x","namespace":"shop"},"addressType":"IPv6","endpoints":[{"addresses":["fd00::1"]}]}]}"#,
    );

    for (name, query) in [
        ("a", "name=web.shop.global"),
        (
            "aaaa_clusterset",
            "name=web.shop.svc.clusterset.local&type=aaaa",
        ),
        ("srv_prefix", "name=_http._tcp.web.shop.global.&type=SRV"),
        ("escapes", "name=w%65b.shop.global&type=MX%0A&x=%zz+y"),
        ("repeated", "type=A&name=&name=second.shop.global"),
    ] {
        write("admin_query", name, query.as_bytes());
    }
}
