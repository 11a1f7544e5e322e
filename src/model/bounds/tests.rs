//! Table tests: each case changes one field of a valid Hello or export and names the refusal.

use std::collections::BTreeMap;

use super::*;
use crate::model::fixtures::{cluster, export};
use crate::model::{PortSpec, Protocol, SessionAffinity};

#[test]
fn escaped_keeps_one_value_on_one_line() {
    let cases = [
        ("web", "web"),
        ("web\nINFO forged line", "web\\nINFO forged line"),
        ("a\r\tb", "a\\r\\tb"),
        ("esc\u{1b}[31m", "esc\\u{1b}[31m"),
        ("back\\slash", "back\\\\slash"),
        ("line\u{2028}sep", "line\\u{2028}sep"),
        ("bidi\u{202e}txt", "bidi\\u{202e}txt"),
        ("ünïcödé", "ünïcödé"),
    ];
    for (raw, shown) in cases {
        assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
    }
}

#[test]
fn a_service_key_displays_escaped() {
    let key = ServiceKey {
        namespace: "shop".into(),
        name: "web\n2026-01-01T00:00:00Z  INFO forged".into(),
    };
    let shown = key.to_string();
    assert!(!shown.contains('\n'), "{shown}");
    assert_eq!(shown, "shop/web\\n2026-01-01T00:00:00Z  INFO forged");
}

#[test]
fn hello_fields_are_bounded() {
    let ok = cluster("c1");
    assert_eq!(check_cluster(&ok), Ok(()));
    let mut located = ok.clone();
    located.region = Some("eu-west-1".into());
    located.zone = Some("eu-west-1a".into());
    assert_eq!(check_cluster(&located), Ok(()));

    type Case = (&'static str, fn(&mut ClusterInfo), Field);
    let cases: &[Case] = &[
        (
            "4 MB region",
            |c| c.region = Some("r".repeat(4 << 20)),
            Field::Region,
        ),
        (
            "region with a dot",
            |c| c.region = Some("eu.west".into()),
            Field::Region,
        ),
        (
            "empty region",
            |c| c.region = Some(String::new()),
            Field::Region,
        ),
        (
            "uppercase zone",
            |c| c.zone = Some("Zone-A".into()),
            Field::Zone,
        ),
        (
            "zone with a newline",
            |c| c.zone = Some("a\nb".into()),
            Field::Zone,
        ),
        (
            "port 0",
            |c| c.wg_endpoint.set_port(0),
            Field::WgEndpointPort,
        ),
        (
            "too many cidrs",
            |c| c.cidrs = vec![c.cidrs[0]; MAX_CIDRS + 1],
            Field::Cidrs,
        ),
    ];
    for (what, change, field) in cases {
        let mut info = ok.clone();
        change(&mut info);
        let refused = check_cluster(&info).expect_err(what);
        assert_eq!(refused.field, *field, "{what}");
        assert_eq!(refused.service, None);
        // A refusal never carries much of the value back.
        assert!(refused.to_string().len() < 200, "{what}: {refused}");
    }
}

fn port(name: Option<&str>, number: u16, app: Option<&str>) -> PortSpec {
    PortSpec {
        name: name.map(str::to_owned),
        port: number,
        protocol: Protocol::Tcp,
        app_protocol: app.map(str::to_owned),
    }
}

#[test]
fn export_fields_are_bounded() {
    let ok = {
        let mut e = export("web", "10.0.0.1");
        e.ports = vec![
            port(Some("http"), 80, Some("http")),
            port(Some("h2"), 8080, Some("kubernetes.io/h2c")),
            port(None, 65_535, None),
        ];
        e.endpoints[0].hostname = Some("web-0".into());
        e.endpoints[0].zone = Some("eu-west-1a".into());
        e.props.internal_traffic_policy = Some("Cluster".into());
        e.props.traffic_distribution = Some("PreferClose".into());
        e.props.session_affinity = SessionAffinity::ClientIp {
            timeout_seconds: Some(10_800),
        };
        e.props.exported_at = Some(1_700_000_000);
        e.props.exported_labels = BTreeMap::from([
            ("app".into(), "web".into()),
            ("example.com/tier".into(), String::new()),
        ]);
        e.props.exported_annotations =
            BTreeMap::from([("example.com/note".into(), "any text\nat all".into())]);
        e
    };
    assert_eq!(check_export("c1", &ok), Ok(()));
    // The longest names that fit: a 63-octet hostname and cluster id, with a service whose
    // `<svc>.<ns>` takes the rest of the 253 octets.
    let mut longest = ok.clone();
    longest.service.namespace = "n".repeat(63);
    longest.service.name = "s".repeat(253 - 63 - 1 - 63 - 1 - 63 - 1 - FQDN_PARENT.len() - 1);
    longest.endpoints[0].hostname = Some("h".repeat(63));
    assert_eq!(check_export(&"c".repeat(63), &longest), Ok(()));
    let mut one_more = longest.clone();
    one_more.service.name.push('s');
    assert_eq!(
        check_export(&"c".repeat(63), &one_more).map_err(|v| (v.field, v.problem)),
        Err((Field::DnsName, Problem::TooLong { len: 254, max: 253 }))
    );

    type Case = (&'static str, fn(&mut Export), Field);
    let cases: &[Case] = &[
        ("port 0", |e| e.ports[0].port = 0, Field::Port),
        (
            "too many ports",
            |e| e.ports = vec![e.ports[2].clone(); MAX_PORTS + 1],
            Field::Ports,
        ),
        (
            "three cluster ips",
            |e| e.cluster_ips = vec!["10.0.0.1".parse().unwrap(); 3],
            Field::ClusterIps,
        ),
        (
            "port name of 16",
            |e| e.ports[0].name = Some("a".repeat(16)),
            Field::PortName,
        ),
        (
            "port name with --",
            |e| e.ports[0].name = Some("a--b".into()),
            Field::PortName,
        ),
        (
            "port name of digits",
            |e| e.ports[0].name = Some("8080".into()),
            Field::PortName,
        ),
        (
            "port name uppercase",
            |e| e.ports[0].name = Some("Http".into()),
            Field::PortName,
        ),
        (
            "appProtocol with a space",
            |e| e.ports[0].app_protocol = Some("h t".into()),
            Field::AppProtocol,
        ),
        (
            "appProtocol too long",
            |e| e.ports[0].app_protocol = Some("a".repeat(64)),
            Field::AppProtocol,
        ),
        (
            "appProtocol bad prefix",
            |e| e.ports[0].app_protocol = Some("-x/h2c".into()),
            Field::AppProtocol,
        ),
        (
            "hostname with a newline",
            |e| e.endpoints[0].hostname = Some("web\n0".into()),
            Field::Hostname,
        ),
        (
            "hostname of 64",
            |e| e.endpoints[0].hostname = Some("h".repeat(64)),
            Field::Hostname,
        ),
        (
            "endpoint zone of 64",
            |e| e.endpoints[0].zone = Some("z".repeat(64)),
            Field::EndpointZone,
        ),
        (
            "endpoint zone with a space",
            |e| e.endpoints[0].zone = Some("a b".into()),
            Field::EndpointZone,
        ),
        (
            "traffic policy of 4 MB",
            |e| e.props.internal_traffic_policy = Some("x".repeat(4 << 20)),
            Field::InternalTrafficPolicy,
        ),
        (
            "traffic distribution with a newline",
            |e| e.props.traffic_distribution = Some("a\nb".into()),
            Field::TrafficDistribution,
        ),
        (
            "affinity timeout 0",
            |e| {
                e.props.session_affinity = SessionAffinity::ClientIp {
                    timeout_seconds: Some(0),
                }
            },
            Field::SessionAffinityTimeout,
        ),
        (
            "affinity timeout of a year",
            |e| {
                e.props.session_affinity = SessionAffinity::ClientIp {
                    timeout_seconds: Some(31_536_000),
                }
            },
            Field::SessionAffinityTimeout,
        ),
        (
            "negative export time",
            |e| e.props.exported_at = Some(-1),
            Field::ExportedAt,
        ),
        (
            "three ip families",
            |e| e.props.ip_families = vec![crate::model::IpFamily::V4; 3],
            Field::IpFamilies,
        ),
        (
            "label key with a space",
            |e| {
                e.props.exported_labels.insert("a b".into(), "v".into());
            },
            Field::LabelKey,
        ),
        (
            "label value of 64",
            |e| {
                e.props.exported_labels.insert("k".into(), "v".repeat(64));
            },
            Field::LabelValue,
        ),
        (
            "too many labels",
            |e| {
                e.props.exported_labels = (0..=MAX_LABELS)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect()
            },
            Field::Labels,
        ),
        (
            "annotation key with a newline",
            |e| {
                e.props
                    .exported_annotations
                    .insert("a\nb".into(), String::new());
            },
            Field::AnnotationKey,
        ),
        (
            "annotations over 256 KiB",
            |e| {
                e.props
                    .exported_annotations
                    .insert("big".into(), "x".repeat(MAX_ANNOTATIONS_BYTES));
            },
            Field::Annotations,
        ),
    ];
    for (what, change, field) in cases {
        let mut export = ok.clone();
        change(&mut export);
        let refused = check_export("cluster-with-a-long-name", &export).expect_err(what);
        assert_eq!(refused.field, *field, "{what}: {refused}");
        assert_eq!(refused.service.as_ref(), Some(&export.service));
        let shown = refused.to_string();
        assert!(!shown.contains('\n'), "{what}: {shown}");
        assert!(shown.len() < 400, "{what}: {} octets", shown.len());
    }
}

#[test]
fn clipped_key_cuts_each_part() {
    let key = ServiceKey {
        namespace: "n".repeat(1000),
        name: "é".repeat(1000),
    };
    let clipped = clipped_key(&key);
    assert_eq!(clipped.namespace.chars().count(), 64);
    assert_eq!(clipped.name.chars().count(), 64);
}
