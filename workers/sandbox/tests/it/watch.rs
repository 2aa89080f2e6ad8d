//! Watches served by the sandbox, seen through kube-rs (its raw watch, kube-runtime's
//! `watcher` and `await_condition`), Stowage's own waits, and `kubectl get --watch`.

use std::collections::BTreeSet;
use std::pin::pin;
use std::process::Stdio;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::await_condition;
use kube::runtime::wait::conditions::is_crd_established;
use kube::runtime::watcher;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use serde_json::json;
use stowage_cluster::wait::{self, WaitError};
use stowage_sandbox::SandboxHandle;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{empty_cluster, sample_cluster};

/// How long any single expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn configmap(name: &str, labels: serde_json::Value, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data}))
        .unwrap()
}

async fn create_cm(api: &Api<ConfigMap>, name: &str, labels: serde_json::Value) -> ConfigMap {
    api.create(
        &PostParams::default(),
        &configmap(name, labels, json!({"k": "v"})),
    )
    .await
    .unwrap()
}

async fn patch<K>(api: &Api<K>, name: &str, patch: serde_json::Value) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap()
}

fn rv<K: Resource>(object: &K) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

async fn list_rv<K>(api: &Api<K>) -> String
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list
        .metadata
        .resource_version
        .expect("lists carry metadata.resourceVersion");
    assert!(rv.parse::<u64>().is_ok(), "list resourceVersion {rv:?}");
    rv
}

/// The next item of a stream, failing the test after [`PATIENCE`].
async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}"))
        .unwrap_or_else(|| panic!("the stream ended before {what}"))
}

/// `TYPE name` of a raw watch event (`BOOKMARK <rv>`, `ERROR <code> <reason>`).
fn describe<K: Resource>(event: &WatchEvent<K>) -> String {
    match event {
        WatchEvent::Added(o) => format!("ADDED {}", o.meta().name.as_deref().unwrap_or("?")),
        WatchEvent::Modified(o) => format!("MODIFIED {}", o.meta().name.as_deref().unwrap_or("?")),
        WatchEvent::Deleted(o) => format!("DELETED {}", o.meta().name.as_deref().unwrap_or("?")),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(s) => format!("ERROR {} {}", s.code, s.reason),
    }
}

fn object_of<K: Clone>(event: &WatchEvent<K>) -> K {
    match event {
        WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o.clone(),
        other => panic!("expected an object event, got {other:?}"),
    }
}

async fn watch_events<K>(
    api: &Api<K>,
    params: &WatchParams,
    from: &str,
) -> impl Stream<Item = WatchEvent<K>> + Unpin + use<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    let stream = api.watch(params, from).await.expect("the watch starts");
    Box::pin(stream.map(|e| e.expect("a well-formed watch event")))
}

#[tokio::test]
async fn a_watch_from_a_lists_resource_version_sees_every_later_change() {
    let cluster = empty_cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let from = list_rv(&api).await;

    // Changes made before the watch starts come from the history…
    let created = create_cm(&api, "a", json!({})).await;
    let modified = patch(&api, "a", json!({"data": {"k": "w"}})).await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let deleted_at = cluster.sandbox().resource_version();
    let mut events = watch_events(&api, &WatchParams::default(), &from).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut events, "a replayed event").await);
    }
    let names: Vec<String> = seen.iter().map(describe).collect();
    assert_eq!(names, ["ADDED a", "MODIFIED a", "DELETED a"]);
    let rvs: Vec<u64> = seen.iter().map(|e| rv(&object_of(e))).collect();
    assert_eq!(
        rvs,
        [rv(&created), rv(&modified), deleted_at],
        "events carry their own resource versions"
    );
    assert!(rvs[0] > from.parse().unwrap());
    assert_eq!(object_of(&seen[1]).data.unwrap()["k"], "w");

    // …and later ones live, from every kind of list path.
    let other_ns: Api<ConfigMap> = Api::namespaced(cluster.client(), "kube-public");
    create_cm(&other_ns, "elsewhere", json!({})).await;
    create_cm(&api, "b", json!({})).await;
    assert_eq!(
        describe(&next(&mut events, "a live event").await),
        "ADDED b",
        "a namespaced watch sees only its namespace"
    );

    let all: Api<ConfigMap> = Api::all(cluster.client());
    let mut everywhere = watch_events(&all, &WatchParams::default(), &from).await;
    let mut names = Vec::new();
    for _ in 0..5 {
        names.push(describe(
            &next(&mut everywhere, "an event of any namespace").await,
        ));
    }
    assert_eq!(
        names,
        [
            "ADDED a",
            "MODIFIED a",
            "DELETED a",
            "ADDED elsewhere",
            "ADDED b"
        ]
    );
}

#[tokio::test]
async fn a_watch_from_zero_or_unset_starts_with_the_current_state() {
    let cluster = empty_cluster().await;
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    for from in ["0", ""] {
        let expected: BTreeSet<String> = namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|ns| format!("ADDED {}", ns.name_any()))
            .collect();
        assert!(expected.contains("ADDED kube-system"), "{expected:?}");
        let mut events = watch_events(&namespaces, &WatchParams::default(), from).await;
        let mut initial = BTreeSet::new();
        for _ in 0..expected.len() {
            initial.insert(describe(&next(&mut events, "an initial ADDED").await));
        }
        assert_eq!(initial, expected, "from {from:?}");
        let name = format!("fresh{}", from.len());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            describe(&next(&mut events, "a live ADDED").await),
            format!("ADDED {name}")
        );
    }
}

#[tokio::test]
async fn selectors_filter_events_and_an_object_leaving_them_is_deleted() {
    let cluster = empty_cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let all: Api<ConfigMap> = Api::all(cluster.client());
    let from = list_rv(&api).await;
    let mut web = watch_events(&all, &WatchParams::default().labels("app=web"), &from).await;
    let mut named_y = watch_events(
        &api,
        &WatchParams::default().fields("metadata.name=y"),
        &from,
    )
    .await;

    create_cm(&api, "x", json!({"app": "web"})).await;
    create_cm(&api, "y", json!({"app": "db"})).await;
    patch(&api, "x", json!({"metadata": {"labels": {"app": "db"}}})).await;
    patch(&api, "y", json!({"metadata": {"labels": {"app": "web"}}})).await;
    patch(&api, "y", json!({"data": {"k": "changed"}})).await;
    api.delete("y", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(describe(&next(&mut web, "a selected event").await));
    }
    assert_eq!(
        seen,
        ["ADDED x", "DELETED x", "ADDED y", "MODIFIED y", "DELETED y"]
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(describe(&next(&mut named_y, "an event of y").await));
    }
    assert_eq!(seen, ["ADDED y", "MODIFIED y", "MODIFIED y", "DELETED y"]);

    // One object's own path watches that object (the older form of the name selector).
    let request = http::Request::get(format!(
        "/api/v1/namespaces/default/configmaps/x?watch=true&resourceVersion={from}"
    ))
    .body(Vec::new())
    .unwrap();
    let stream = cluster
        .client()
        .request_events::<ConfigMap>(request)
        .await
        .unwrap();
    let mut stream = pin!(stream);
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(describe(&next(&mut stream, "an event of x").await.unwrap()));
    }
    assert_eq!(seen, ["ADDED x", "MODIFIED x"]);

    let refused = api
        .watch(&WatchParams::default().fields("spec.nodeName=n"), &from)
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 400 && s.message.contains("spec.nodeName")),
        "an unsupported field selector is a 400 naming it: {:?}",
        refused.err()
    );
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version_and_timeout_seconds_ends_the_watch() {
    let cluster = empty_cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let from = list_rv(&api).await;
    let started = tokio::time::Instant::now();
    let params = WatchParams::default().timeout(1);
    let events = watch_events(&api, &params, &from).await;
    // A change to another type moves the cluster's resource version but sends no event here.
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "elsewhere"}})).unwrap(),
        )
        .await
        .unwrap();
    let latest = cluster.sandbox().resource_version();
    let all: Vec<String> = tokio::time::timeout(PATIENCE, events.map(|e| describe(&e)).collect())
        .await
        .expect("timeoutSeconds=1 ends the watch");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "ended after {:?}",
        started.elapsed()
    );
    assert_eq!(
        all.last().map(String::as_str),
        Some(format!("BOOKMARK {latest}").as_str()),
        "{all:?}"
    );
    assert!(all.iter().all(|e| e.starts_with("BOOKMARK")), "{all:?}");

    let plain = watch_events(
        &api,
        &WatchParams::default().disable_bookmarks().timeout(1),
        &from,
    )
    .await;
    let all: Vec<String> = tokio::time::timeout(PATIENCE, plain.map(|e| describe(&e)).collect())
        .await
        .unwrap();
    assert!(all.is_empty(), "no bookmarks unless asked for: {all:?}");
}

#[tokio::test]
async fn a_resource_version_older_than_the_history_gets_410_expired() {
    let cluster = empty_cluster().await;
    cluster.sandbox().set_watch_history(3);
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let old = list_rv(&api).await;
    for name in ["a", "b", "c", "d"] {
        create_cm(&api, name, json!({})).await;
    }
    let mut events = watch_events(&api, &WatchParams::default(), &old).await;
    let error = next(&mut events, "the expiry").await;
    let WatchEvent::Error(status) = &error else {
        panic!("expected an ERROR event, got {}", describe(&error));
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (410, "Expired"),
        "{status:?}"
    );
    assert!(
        status
            .message
            .contains(&format!("too old resource version: {old}")),
        "{}",
        status.message
    );
    let end = tokio::time::timeout(PATIENCE, events.next()).await.unwrap();
    assert!(end.is_none(), "the watch ends after the expiry");

    // The last three changes are still kept.
    let b: u64 = rv(&api.get("b").await.unwrap());
    let mut events = watch_events(&api, &WatchParams::default(), &b.to_string()).await;
    assert_eq!(describe(&next(&mut events, "c").await), "ADDED c");
    assert_eq!(describe(&next(&mut events, "d").await), "ADDED d");
}

#[tokio::test]
async fn deleting_a_namespace_or_a_crd_sends_deleted_for_what_they_held() {
    let cluster = sample_cluster().await;
    let client = cluster.client();
    let widget_type = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("demo.stowage.io", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::all_with(client.clone(), &widget_type);
    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let from = list_rv(&configmaps).await;
    let shop_configmaps: BTreeSet<String> = Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| format!("DELETED {}", c.name_any()))
        .collect();
    assert!(!shop_configmaps.is_empty());
    let mut cm_events = watch_events(&configmaps, &WatchParams::default(), &from).await;
    let mut widget_events = watch_events(&widgets, &WatchParams::default(), &from).await;
    let mut crd_events = watch_events(&crds, &WatchParams::default(), &from).await;
    let mut ns_events = watch_events(&namespaces, &WatchParams::default(), &from).await;

    namespaces
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..shop_configmaps.len() {
        seen.insert(describe(
            &next(&mut cm_events, "a configmap deletion").await,
        ));
    }
    assert_eq!(seen, shop_configmaps);
    assert_eq!(
        describe(&next(&mut ns_events, "the namespace deletion").await),
        "DELETED shop"
    );
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        seen.insert(describe(
            &next(&mut widget_events, "a shop widget deletion").await,
        ));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["DELETED blue".to_owned(), "DELETED red".to_owned()])
    );

    crds.delete("widgets.demo.stowage.io", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        describe(&next(&mut widget_events, "the blog widget deletion").await),
        "DELETED green"
    );
    let crd_deleted = next(&mut crd_events, "the CRD deletion").await;
    assert_eq!(describe(&crd_deleted), "DELETED widgets.demo.stowage.io");
    assert_eq!(
        rv(&object_of(&crd_deleted)),
        cluster.sandbox().resource_version(),
        "the CRD goes last"
    );
}

#[tokio::test]
async fn a_watcher_too_slow_to_keep_up_is_closed_with_410_not_buffered() {
    let cluster = empty_cluster().await;
    cluster.sandbox().set_watch_history(10);
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let from = list_rv(&api).await;
    // Opened, then not read while the cluster changes far more than the socket and the
    // sandbox's bounded buffers hold.
    let mut events = watch_events(&api, &WatchParams::default(), &from).await;
    let big = "x".repeat(16 * 1024);
    create_cm(&api, "busy", json!({})).await;
    let changes = 3000;
    for i in 0..changes {
        patch(&api, "busy", json!({"data": {"k": format!("{i}{big}")}})).await;
    }
    let mut received = 0;
    let status = loop {
        match next(&mut events, "the lag error").await {
            WatchEvent::Error(status) => break status,
            _ => received += 1,
        }
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (410, "Expired"),
        "{status:?}"
    );
    assert!(status.message.contains("behind"), "{}", status.message);
    assert!(
        received < changes,
        "the watcher was cut off, not sent all {changes} events"
    );
    assert!(
        tokio::time::timeout(PATIENCE, events.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_watches_and_relists_after_410() {
    let cluster = empty_cluster().await;
    cluster.sandbox().set_watch_history(2);
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    create_cm(&api, "before", json!({})).await;
    let mut stream = Box::pin(watcher(api.clone(), watcher::Config::default()));

    // The initial list.
    let mut listed = Vec::new();
    loop {
        match next(&mut stream, "the initial list").await.unwrap() {
            Event::Init => {}
            Event::InitApply(cm) => listed.push(cm.name_any()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?} during the initial list"),
        }
    }
    assert_eq!(listed, ["before"]);

    // Then the watch from the list's resource version: create, modify, delete.
    create_cm(&api, "a", json!({})).await;
    let applied = match next(&mut stream, "the created object").await.unwrap() {
        Event::Apply(cm) => cm,
        other => panic!("expected Apply, got {other:?}"),
    };
    assert_eq!(applied.name_any(), "a");
    patch(&api, "a", json!({"data": {"k": "w"}})).await;
    match next(&mut stream, "the modified object").await.unwrap() {
        Event::Apply(cm) => assert_eq!(cm.data.unwrap()["k"], "w"),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("a", &DeleteParams::default()).await.unwrap();
    match next(&mut stream, "the deleted object").await.unwrap() {
        Event::Delete(cm) => assert_eq!(cm.name_any(), "a"),
        other => panic!("expected Delete, got {other:?}"),
    }
    drop(stream);

    // A watcher whose list's resource version has left the history by the time it watches:
    // 410, then it lists again and recovers the current state.
    let mut stream = pin!(watcher(api.clone(), watcher::Config::default()));
    loop {
        if let Event::InitDone = next(&mut stream, "the second list").await.unwrap() {
            break;
        }
    }
    for name in ["c1", "c2", "c3"] {
        create_cm(&api, name, json!({})).await;
    }
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    match next(&mut stream, "the expiry").await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    let mut relisted = Vec::new();
    loop {
        match next(&mut stream, "the relist").await.unwrap() {
            Event::Init => relisted.clear(),
            Event::InitApply(cm) => relisted.push(cm.name_any()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?} during the relist"),
        }
    }
    assert_eq!(relisted, ["c1", "c2", "c3"]);
    create_cm(&api, "after", json!({})).await;
    match next(&mut stream, "a change after recovery").await.unwrap() {
        Event::Apply(cm) => assert_eq!(cm.name_any(), "after"),
        other => panic!("expected Apply, got {other:?}"),
    }
}

fn crd(plural: &str, kind: &str) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{plural}.test.stowage.io")},
        "spec": {
            "group": "test.stowage.io",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn await_condition_sees_a_crd_become_established() {
    let cluster = empty_cluster().await;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let name = "gadgets.test.stowage.io";
    let waiting = tokio::spawn(await_condition(crds.clone(), name, is_crd_established()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "no CRD yet, so not established");
    crds.create(&PostParams::default(), &crd("gadgets", "Gadget"))
        .await
        .unwrap();
    let established = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("established within the patience")
        .unwrap()
        .unwrap()
        .expect("the CRD exists");
    assert_eq!(established.name_any(), name);
}

#[tokio::test]
async fn await_condition_waits_for_an_object_created_later() {
    let cluster = empty_cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let ready = |cm: Option<&ConfigMap>| {
        cm.and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("ready"))
            .is_some_and(|r| r == "yes")
    };
    let waiting = tokio::spawn(await_condition(api.clone(), "later", ready));
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.create(
        &PostParams::default(),
        &configmap("later", json!({}), json!({"ready": "no"})),
    )
    .await
    .unwrap();
    // Another object's change is not this one's.
    create_cm(&api, "unrelated", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "ready=no does not satisfy the condition"
    );
    patch(&api, "later", json!({"data": {"ready": "yes"}})).await;
    let found = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the condition is seen")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(found.name_any(), "later");
    assert_eq!(found.data.unwrap()["ready"], "yes");
}

#[tokio::test]
async fn stowage_waits_answer_by_watch_and_name_what_they_waited_for() {
    let cluster = empty_cluster().await;
    let client = cluster.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Met later: answered by the watch as soon as it happens.
    let is_ready = |cm: Option<&ConfigMap>| {
        cm.is_some_and(|c| c.labels().get("ready").is_some_and(|r| r == "true"))
    };
    let waiting = tokio::spawn(wait::until(
        api.clone(),
        "job",
        "ConfigMap default/job",
        "labelled ready",
        is_ready,
        PATIENCE,
    ));
    create_cm(&api, "job", json!({})).await;
    patch(
        &api,
        "job",
        json!({"metadata": {"labels": {"ready": "true"}}}),
    )
    .await;
    let started = tokio::time::Instant::now();
    let found = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(found.labels()["ready"], "true");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Never met: the timeout names the object, the state and the time given.
    let error = wait::until(
        api.clone(),
        "job",
        "ConfigMap default/job",
        "labelled done",
        |cm: Option<&ConfigMap>| cm.is_some_and(|c| c.labels().contains_key("done")),
        Duration::from_millis(700),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, WaitError::Timeout { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "ConfigMap default/job is not labelled done after 0.7s of watching"
    );

    // Refused: an unknown type fails at once, naming what was awaited.
    let unknown = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nope.stowage.io", "v1", "Nope"),
        "nopes",
    );
    let started = tokio::time::Instant::now();
    let error = wait::until(
        Api::<DynamicObject>::namespaced_with(client.clone(), "default", &unknown),
        "x",
        "Nope default/x",
        "present",
        |o: Option<&DynamicObject>| o.is_some(),
        PATIENCE,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, WaitError::Refused { source: kube::Error::Api(s), .. } if s.code == 404),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("watching Nope default/x until it is present was refused"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refusal does not wait out the timeout"
    );

    // The restore's CRD wait: an established CRD and an absent one (not waited for).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd("doohickeys", "Doohickey"))
        .await
        .unwrap();
    stowage_cluster::apply::wait_established(
        &client,
        &[
            "doohickeys.test.stowage.io".to_owned(),
            "absent.test.stowage.io".to_owned(),
        ],
        PATIENCE,
    )
    .await
    .unwrap();
}

/// `kubectl` connected to the sandbox: the one place that says how (today `--server` and no
/// kubeconfig of the machine's user).
fn kubectl(cluster: &SandboxHandle) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("kubectl");
    command
        .arg(format!("--server={}", cluster.url()))
        .env("KUBECONFIG", "/dev/null");
    command
}

#[tokio::test]
async fn kubectl_get_watch_prints_namespaces_as_they_change() {
    let cluster = empty_cluster().await;
    let mut child = kubectl(&cluster)
        .args(["get", "namespaces", "--watch", "--output-watch-events", "--request-timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl could not be run ({e}); install it (Debian: apt-get install kubernetes-client) \
                 — this test checks that a standard client can watch the sandbox"
            )
        });
    let mut output = Output {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        stderr: child.stderr.take().unwrap(),
        printed: Vec::new(),
    };
    // The list first, as ADDED events.
    output.expect("ADDED kube-system").await;
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "watched"}})).unwrap(),
        )
        .await
        .unwrap();
    output.expect("ADDED watched").await;
    patch(
        &namespaces,
        "watched",
        json!({"metadata": {"labels": {"team": "x"}}}),
    )
    .await;
    output.expect("MODIFIED watched").await;
    namespaces
        .delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    output.expect("DELETED watched").await;
    child.kill().await.unwrap();
}

/// What a running kubectl prints.
struct Output {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::process::ChildStderr,
    printed: Vec<String>,
}

impl Output {
    /// Reads lines until one starts with `wanted` (`EVENT NAME`), or fails the test showing
    /// everything printed.
    async fn expect(&mut self, wanted: &str) {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let hit = line
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
                    == wanted;
                self.printed.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        if found != Ok(true) {
            let mut errors = String::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::AsyncReadExt::read_to_string(&mut self.stderr, &mut errors),
            )
            .await;
            panic!(
                "kubectl never printed {wanted:?}; it printed:\n{}\nstderr: {errors}",
                self.printed.join("\n")
            );
        }
    }
}
