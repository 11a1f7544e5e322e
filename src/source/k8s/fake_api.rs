//! An in-process fake Kubernetes API server for shell tests (`#[cfg(test)]` only).
//!
//! It is a tower `Service` that a real `kube::Client` sends its HTTP requests to, and it
//! answers in the API server's shapes: paths `/api/v1/...` and `/apis/GROUP/VERSION/...`
//! (namespaced and cluster-scoped, `/status` subresources), JSON lists carrying
//! `metadata.resourceVersion`, watches (`?watch=true&resourceVersion=N`) answered as
//! newline-delimited `{"type":"ADDED|MODIFIED|DELETED","object":…}` events, `PATCH` with
//! `application/apply-patch+yaml` and a `fieldManager`, `POST` (409 when the object exists),
//! `PUT` (409 when `metadata.resourceVersion` is stale), `DELETE` and 404 `Status` bodies.
//!
//! What it simplifies, on purpose:
//! - A watch is held open until events exist after the given resourceVersion (or a short
//!   timeout), then the response ends after those events, as a real server ends a watch at its
//!   `timeoutSeconds`; kube's watcher then re-watches from the last version without relisting.
//! - Server-side apply assumes one field manager that always sends its whole intent: an apply
//!   replaces every top-level field it names except `status` (kept), and an apply to
//!   `/status` replaces `status` only. Field ownership between managers is not modelled.
//! - Label and field selectors are refused with 400 so that a test cannot silently get
//!   unfiltered results.
//!
//! Every request is recorded ([`FakeApi::requests`]) so tests assert the patches sent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the client sent it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

/// Which collection a path names: group/version, plural, namespace ("" if none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Collection {
    gv: String,
    plural: String,
    namespace: String,
}

#[derive(Debug)]
struct Target {
    collection: Collection,
    name: Option<String>,
    status: bool,
    /// A list/watch over every namespace (`/apis/g/v/plural` for a namespaced kind).
    all_namespaces: bool,
}

#[derive(Debug, Clone)]
struct WatchEvent {
    version: u64,
    collection: Collection,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<(Collection, String), Value>,
    version: u64,
    events: Vec<WatchEvent>,
    requests: Vec<Recorded>,
    /// Faults for the next watch requests, first in first out.
    watch_faults: std::collections::VecDeque<WatchFault>,
}

/// How [`FakeApi::break_watches`] breaks a watch request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFault {
    /// HTTP 500, as from an API server that is restarting: the client should re-watch from
    /// the version it has, without listing again.
    Error,
    /// A watch `ERROR` event with a 410 `Expired` status, as a server sends when the asked
    /// resourceVersion was compacted away: the client must list again.
    Expired,
}

/// The fake server; clones share one state.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

/// How long a watch waits for an event before ending empty (real servers: minutes).
const WATCH_HOLD: Duration = Duration::from_millis(500);

impl FakeApi {
    /// A `kube::Client` whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Stores `object` (with `apiVersion`, `kind`, `metadata.name` and, when namespaced,
    /// `metadata.namespace`) under `plural`, as another actor of the cluster would; watchers
    /// see it.
    pub fn put(&self, plural: &str, object: Value) {
        let gv = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let collection = Collection {
            gv,
            plural: plural.to_owned(),
            namespace,
        };
        let mut state = self.state.lock().expect("fake api lock");
        let exists = state
            .objects
            .contains_key(&(collection.clone(), name.clone()));
        let kind = if exists { "MODIFIED" } else { "ADDED" };
        state.store(collection, name, object, kind);
        drop(state);
        self.notify();
    }

    /// Removes an object as another actor would.
    pub fn remove(&self, gv: &str, plural: &str, namespace: &str, name: &str) {
        let collection = Collection {
            gv: gv.into(),
            plural: plural.into(),
            namespace: namespace.into(),
        };
        let mut state = self.state.lock().expect("fake api lock");
        state.delete(&collection, name);
        drop(state);
        self.notify();
    }

    /// The stored object, if any.
    pub fn get(&self, gv: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let collection = Collection {
            gv: gv.into(),
            plural: plural.into(),
            namespace: namespace.into(),
        };
        let state = self.state.lock().expect("fake api lock");
        state.objects.get(&(collection, name.to_owned())).cloned()
    }

    /// Names (`ns/name`, or `name` when cluster-scoped) of the stored objects of a kind.
    pub fn names(&self, gv: &str, plural: &str) -> Vec<String> {
        let state = self.state.lock().expect("fake api lock");
        state
            .objects
            .keys()
            .filter(|(c, _)| c.gv == gv && c.plural == plural)
            .map(|(c, name)| {
                if c.namespace.is_empty() {
                    name.clone()
                } else {
                    format!("{}/{name}", c.namespace)
                }
            })
            .collect()
    }

    /// Breaks the next `n` watch requests (whichever collections they are for) with `fault`.
    pub fn break_watches(&self, n: usize, fault: WatchFault) {
        let mut state = self.state.lock().expect("fake api lock");
        state.watch_faults.extend(std::iter::repeat_n(fault, n));
    }

    /// How many faults [`FakeApi::break_watches`] queued are still to be served.
    pub fn pending_watch_faults(&self) -> usize {
        self.state.lock().expect("fake api lock").watch_faults.len()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("fake api lock").requests.clone()
    }

    /// The write requests (anything but GET) so far, drained.
    pub fn take_writes(&self) -> Vec<Recorded> {
        let mut state = self.state.lock().expect("fake api lock");
        let all = std::mem::take(&mut state.requests);
        all.into_iter()
            .filter(|r| r.method != Method::GET)
            .collect()
    }

    fn notify(&self) {
        let version = self.state.lock().expect("fake api lock").version;
        self.changed.send_replace(version);
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), percent_decode(v))
            })
            .collect();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.state
            .lock()
            .expect("fake api lock")
            .requests
            .push(Recorded {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
            });
        let Some(target) = parse_path(parts.uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        if query.contains_key("labelSelector") || query.contains_key("fieldSelector") {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the fake API does not implement selectors",
            );
        }
        let response = match (parts.method.clone(), &target.name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true") => {
                return self.watch(&target, &query).await;
            }
            (Method::GET, None) => self.list(&target),
            (Method::GET, Some(name)) => self.read(&target, name),
            (Method::PATCH, Some(name)) => {
                if content_type.as_deref() != Some("application/apply-patch+yaml") {
                    status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "the fake API only implements server-side apply patches",
                    )
                } else if !query.contains_key("fieldManager") {
                    status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "fieldManager is required for apply patch",
                    )
                } else {
                    self.apply(&target, name, body.unwrap_or(Value::Null))
                }
            }
            (Method::POST, None) => self.create(&target, body.unwrap_or(Value::Null)),
            (Method::PUT, Some(name)) => self.replace(&target, name, body.unwrap_or(Value::Null)),
            (Method::DELETE, Some(name)) => self.delete(&target, name),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not implemented by the fake API",
            ),
        };
        self.notify();
        response
    }

    fn list(&self, target: &Target) -> Response<Body> {
        let state = self.state.lock().expect("fake api lock");
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((c, _), _)| target.matches(c))
            .map(|(_, v)| v.clone())
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": items,
            }),
        )
    }

    async fn watch(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let fault = self
            .state
            .lock()
            .expect("fake api lock")
            .watch_faults
            .pop_front();
        match fault {
            Some(WatchFault::Error) => {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "the watch was broken by the test",
                );
            }
            Some(WatchFault::Expired) => {
                let line = json!({"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {since}"),
                }});
                return watch_response([line]);
            }
            None => {}
        }
        let mut changed = self.changed.subscribe();
        let deadline = crate::clock::tokio_now() + WATCH_HOLD;
        loop {
            let events: Vec<WatchEvent> = {
                let state = self.state.lock().expect("fake api lock");
                state
                    .events
                    .iter()
                    .filter(|e| e.version > since && target.matches(&e.collection))
                    .cloned()
                    .collect()
            };
            if !events.is_empty() {
                return watch_response(
                    events
                        .into_iter()
                        .map(|e| json!({"type": e.kind, "object": e.object})),
                );
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(Vec::new()))
            .expect("a valid response")
    }

    fn read(&self, target: &Target, name: &str) -> Response<Body> {
        let state = self.state.lock().expect("fake api lock");
        match state
            .objects
            .get(&(target.collection.clone(), name.to_owned()))
        {
            Some(object) => json_response(StatusCode::OK, object),
            None => not_found(name),
        }
    }

    fn apply(&self, target: &Target, name: &str, patch: Value) -> Response<Body> {
        let mut state = self.state.lock().expect("fake api lock");
        let key = (target.collection.clone(), name.to_owned());
        let existing = state.objects.get(&key).cloned();
        let merged = match (existing, target.status) {
            (None, true) => return not_found(name),
            (None, false) => {
                let mut object = patch;
                if let Some(o) = object.as_object_mut() {
                    o.remove("status");
                }
                object
            }
            (Some(mut current), true) => {
                current["status"] = patch["status"].clone();
                current
            }
            (Some(current), false) => {
                let mut object = patch;
                object["status"] = current["status"].clone();
                for keep in ["uid", "creationTimestamp"] {
                    object["metadata"][keep] = current["metadata"][keep].clone();
                }
                if object["status"].is_null()
                    && let Some(o) = object.as_object_mut()
                {
                    o.remove("status");
                }
                object
            }
        };
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let stored = state.store(target.collection.clone(), name.to_owned(), merged, kind);
        json_response(StatusCode::OK, &stored)
    }

    fn create(&self, target: &Target, object: Value) -> Response<Body> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut state = self.state.lock().expect("fake api lock");
        if state
            .objects
            .contains_key(&(target.collection.clone(), name.clone()))
        {
            return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
        }
        let stored = state.store(target.collection.clone(), name, object, "ADDED");
        json_response(StatusCode::CREATED, &stored)
    }

    fn replace(&self, target: &Target, name: &str, object: Value) -> Response<Body> {
        let mut state = self.state.lock().expect("fake api lock");
        let key = (target.collection.clone(), name.to_owned());
        let Some(current) = state.objects.get(&key) else {
            return not_found(name);
        };
        if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version",
            );
        }
        let stored = state.store(
            target.collection.clone(),
            name.to_owned(),
            object,
            "MODIFIED",
        );
        json_response(StatusCode::OK, &stored)
    }

    fn delete(&self, target: &Target, name: &str) -> Response<Body> {
        let mut state = self.state.lock().expect("fake api lock");
        match state.delete(&target.collection, name) {
            Some(object) => json_response(StatusCode::OK, &object),
            None => not_found(name),
        }
    }
}

impl State {
    /// Stores `object` with a new resourceVersion (and a uid and creationTimestamp when new)
    /// and records the watch event.
    fn store(
        &mut self,
        collection: Collection,
        name: String,
        mut object: Value,
        kind: &'static str,
    ) -> Value {
        self.version += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(self.version.to_string());
        if meta["uid"].is_null() {
            meta["uid"] = json!(format!("uid-{}", self.version));
        }
        if meta["creationTimestamp"].is_null() {
            // Deterministic: one second per write after a fixed epoch.
            let at = k8s_openapi::jiff::Timestamp::from_second(1_780_000_000 + self.version as i64)
                .unwrap_or_default();
            meta["creationTimestamp"] = json!(at.to_string());
        }
        self.events.push(WatchEvent {
            version: self.version,
            collection: collection.clone(),
            kind,
            object: object.clone(),
        });
        self.objects.insert((collection, name), object.clone());
        object
    }

    fn delete(&mut self, collection: &Collection, name: &str) -> Option<Value> {
        let mut object = self
            .objects
            .remove(&(collection.clone(), name.to_owned()))?;
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.events.push(WatchEvent {
            version: self.version,
            collection: collection.clone(),
            kind: "DELETED",
            object: object.clone(),
        });
        Some(object)
    }
}

impl Target {
    fn matches(&self, c: &Collection) -> bool {
        c.gv == self.collection.gv
            && c.plural == self.collection.plural
            && (self.all_namespaces || c.namespace == self.collection.namespace)
    }
}

/// Splits `/api/v1/...` or `/apis/GROUP/VERSION/...` into what it names.
fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let collection = |plural: &str, namespace: &str| Collection {
        gv: gv.clone(),
        plural: plural.to_owned(),
        namespace: namespace.to_owned(),
    };
    let target = |c, name: Option<&&str>, status, all| Target {
        collection: c,
        name: name.map(|n| (*n).to_owned()),
        status,
        all_namespaces: all,
    };
    Some(match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" => match tail {
            [] => target(collection(plural, ns), None, false, false),
            [name] => target(collection(plural, ns), Some(name), false, false),
            [name, "status"] => target(collection(plural, ns), Some(name), true, false),
            _ => return None,
        },
        [plural] => target(collection(plural, ""), None, false, true),
        [plural, name] => target(collection(plural, ""), Some(name), false, false),
        [plural, name, "status"] => target(collection(plural, ""), Some(name), true, false),
        _ => return None,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(value).unwrap_or_default()))
        .expect("a valid response")
}

/// A watch response: one JSON event per line.
fn watch_response(lines: impl IntoIterator<Item = Value>) -> Response<Body> {
    let mut body = Vec::new();
    for line in lines {
        body.extend(serde_json::to_vec(&line).unwrap_or_default());
        body.push(b'\n');
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid response")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn not_found(name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{name:?} not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::{WatchStreamExt as _, watcher};

    fn config_map(name: &str, value: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "shop"},
            "data": {"k": value},
        })
    }

    #[tokio::test]
    async fn kube_client_lists_watches_and_applies_through_the_fake() {
        let fake = FakeApi::default();
        fake.put("configmaps", config_map("a", "1"));
        let api: Api<ConfigMap> = Api::namespaced(fake.client(), "shop");

        let listed = api.list(&Default::default()).await.unwrap();
        assert_eq!(listed.items.len(), 1);

        let mut seen = watcher(api.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        let first = seen.next().await.unwrap().unwrap();
        assert_eq!(first.data.unwrap()["k"], "1");
        fake.put("configmaps", config_map("a", "2"));
        let second = tokio::time::timeout(Duration::from_secs(5), seen.next())
            .await
            .expect("the watch delivers the change")
            .unwrap()
            .unwrap();
        assert_eq!(second.data.unwrap()["k"], "2");

        let applied: ConfigMap =
            serde_json::from_value(config_map("b", "3")).expect("a config map");
        api.patch(
            "b",
            &PatchParams::apply("causeway").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
        let writes = fake.take_writes();
        let [w] = &writes[..] else {
            panic!("one write: {writes:?}")
        };
        assert_eq!(w.method, Method::PATCH);
        assert_eq!(w.path, "/api/v1/namespaces/shop/configmaps/b");
        assert_eq!(
            w.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(
            w.query.get("fieldManager").map(String::as_str),
            Some("causeway")
        );
        assert_eq!(
            fake.get("v1", "configmaps", "shop", "b").unwrap()["data"]["k"],
            "3"
        );
        let err = api.get("missing").await.unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 404),
            "{err:?}"
        );
    }
}
