//! The sandbox as a Kubernetes API, seen through kube-rs.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Discovery, Scope};
use kube::{Resource, ResourceExt};
use serde_json::json;
use stowage_sandbox::LOCAL_CSI_DRIVER;

use crate::harness::{api_code, empty_cluster, sample_cluster};

fn configmap(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "data": {"key": "value"},
    }))
    .unwrap()
}

fn names<K: Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

#[tokio::test]
async fn version_answers_like_a_real_server() {
    let cluster = empty_cluster().await;
    let info = cluster.client().apiserver_version().await.unwrap();
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "33"));
    assert!(info.git_version.contains("sandbox"));
}

#[tokio::test]
async fn typed_crud_round_trip_populates_server_fields() {
    let cluster = empty_cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");

    let created = api
        .create(
            &PostParams::default(),
            &configmap("settings", &[("app", "web")]),
        )
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert!(
        meta.uid.as_ref().is_some_and(|u| u.len() == 36),
        "uid: {:?}",
        meta.uid
    );
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert!(meta.managed_fields.as_ref().is_some_and(|m| !m.is_empty()));
    let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();

    let fetched = api.get("settings").await.unwrap();
    assert_eq!(fetched.metadata.uid, created.metadata.uid);
    assert_eq!(fetched.data, created.data);

    let changed = with_entry(&fetched, "key", "other");
    let updated = api
        .replace("settings", &PostParams::default(), &changed)
        .await
        .unwrap();
    let rv2: u64 = updated
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "resourceVersion grows: {rv1} then {rv2}");
    assert_eq!(
        updated.metadata.uid, created.metadata.uid,
        "uid survives an update"
    );
    assert_eq!(
        updated.metadata.generation,
        Some(2),
        "a data change bumps the generation"
    );
    assert_eq!(updated.data.as_ref().unwrap()["key"], "other");

    let patched = api
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}, "data": {"extra": "1", "key": null}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.labels().get("app").map(String::as_str),
        Some("web"),
        "merge keeps what it does not name"
    );
    assert_eq!(
        patched.labels().get("tier").map(String::as_str),
        Some("front")
    );
    let data = patched.data.unwrap();
    assert_eq!(data.get("extra").map(String::as_str), Some("1"));
    assert!(!data.contains_key("key"), "null removes a key");

    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap().items),
        ["settings"]
    );
    let deleted = api
        .delete("settings", &DeleteParams::default())
        .await
        .unwrap();
    assert!(deleted.is_left(), "the deleted object comes back");
    assert_eq!(
        api_code(api.get("settings").await),
        (404, "NotFound".into())
    );
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn cluster_scoped_resources_work_and_lists_span_namespaces() {
    let cluster = sample_cluster().await;
    let client = cluster.client();

    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs.get("pv-shop-data").await.unwrap();
    let csi = pv.spec.unwrap().csi.unwrap();
    assert_eq!(
        (csi.driver.as_str(), csi.volume_handle.as_str()),
        (LOCAL_CSI_DRIVER, "shop-data")
    );
    assert!(pv.metadata.namespace.is_none());
    let nfs = pvs.get("pv-blog-uploads").await.unwrap();
    assert!(
        nfs.spec.unwrap().nfs.is_some(),
        "one volume is of a kind snapshots must skip"
    );

    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let mut bound: Vec<_> = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            (
                c.namespace().unwrap(),
                c.name_any(),
                c.spec.unwrap().volume_name.unwrap(),
            )
        })
        .collect();
    bound.sort();
    assert_eq!(
        bound,
        [
            ("blog".into(), "data-mysql-0".into(), "pv-blog-data".into()),
            ("blog".into(), "uploads".into(), "pv-blog-uploads".into()),
            ("shop".into(), "data-db-0".into(), "pv-shop-data".into()),
        ]
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns_names = names(&namespaces.list(&ListParams::default()).await.unwrap().items);
    ns_names.sort();
    assert_eq!(
        ns_names,
        [
            "blog",
            "default",
            "kube-node-lease",
            "kube-public",
            "kube-system",
            "shop"
        ]
    );
    assert_eq!(
        namespaces
            .get("shop")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Active")
    );

    // Deleting a namespace takes what it holds with it.
    namespaces
        .delete("blog", &DeleteParams::default())
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::all(client);
    let mut left = names(
        &deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    );
    left.sort();
    assert_eq!(left, ["cart", "coredns", "web"]);
}

#[tokio::test]
async fn label_selectors_filter_lists_with_every_operator() {
    let cluster = sample_cluster().await;
    let api: Api<ConfigMap> = Api::all(cluster.client());
    let select = |selector: &'static str| {
        let api = api.clone();
        async move {
            let mut found = names(
                &api.list(&ListParams::default().labels(selector))
                    .await
                    .unwrap()
                    .items,
            );
            found.sort();
            found
        }
    };
    assert_eq!(select("app=web").await, ["web-config"]);
    assert_eq!(
        select("tier!=data").await,
        ["coredns", "web-config", "wordpress-config"]
    );
    assert_eq!(
        select("app in (db,wordpress)").await,
        ["db-config", "wordpress-config"]
    );
    assert_eq!(
        select("tier notin (frontend)").await,
        ["coredns", "db-config"]
    );
    assert_eq!(select("k8s-app").await, ["coredns"]);
    assert_eq!(select("!tier").await, ["coredns"]);
    assert_eq!(select("tier=frontend,app!=web").await, ["wordpress-config"]);

    let bad = api.list(&ListParams::default().labels("app in (web")).await;
    assert_eq!(api_code(bad), (400, "BadRequest".into()));
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let cluster = sample_cluster().await;
    let api: Api<ConfigMap> = Api::all(cluster.client());
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        seen.extend(
            page.items
                .iter()
                .map(|c| format!("{}/{}", c.namespace().unwrap(), c.name_any())),
        );
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => {
                assert!(page.metadata.remaining_item_count.unwrap() > 0);
                params = ListParams::default().limit(2).continue_token(&token);
            }
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(
        seen,
        [
            "blog/wordpress-config",
            "kube-system/coredns",
            "shop/db-config",
            "shop/web-config"
        ]
    );
}

#[tokio::test]
async fn failures_are_status_objects_with_the_right_codes() {
    let cluster = sample_cluster().await;
    let client = cluster.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");

    assert_eq!(api_code(api.get("missing").await), (404, "NotFound".into()));
    assert_eq!(
        api_code(
            api.create(&PostParams::default(), &configmap("web-config", &[]))
                .await
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_code(
            api.create(&PostParams::default(), &ConfigMap::default())
                .await
        ),
        (422, "Invalid".into()),
        "a missing name is invalid"
    );
    assert_eq!(
        api_code(
            api.create(&PostParams::default(), &configmap("Not_A_Name", &[]))
                .await
        ),
        (422, "Invalid".into())
    );
    let mut renamed = api.get("web-config").await.unwrap();
    renamed.metadata.name = Some("other".into());
    assert_eq!(
        api_code(
            api.replace("web-config", &PostParams::default(), &renamed)
                .await
        ),
        (422, "Invalid".into()),
        "a name differing from the URL is invalid"
    );
    let nowhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    assert_eq!(
        api_code(
            nowhere
                .create(&PostParams::default(), &configmap("x", &[]))
                .await
        ),
        (404, "NotFound".into()),
        "creating in a missing namespace"
    );
    let unknown =
        ApiResource::from_gvk(&GroupVersionKind::gvk("nothing.example.com", "v1", "Thing"));
    let things: Api<DynamicObject> = Api::all_with(client.clone(), &unknown);
    assert_eq!(
        api_code(things.list(&ListParams::default()).await),
        (404, "NotFound".into())
    );

    // The Status body itself, as a client in any language sees it.
    let request = http::Request::get("/api/v1/namespaces/shop/configmaps/missing")
        .body(Vec::new())
        .unwrap();
    let body = client.request_text(request).await;
    let Err(kube::Error::Api(status)) = body else {
        panic!("expected a Status, got {body:?}")
    };
    assert_eq!(status.message, "configmaps \"missing\" not found");
    assert!(status.is_failure());
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("missing", "configmaps")
    );
}

#[tokio::test]
async fn a_stale_resource_version_is_a_conflict() {
    let cluster = sample_cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "shop");
    let original = api.get("web-config").await.unwrap();

    let first = with_entry(&original, "first", "1");
    api.replace("web-config", &PostParams::default(), &first)
        .await
        .unwrap();

    let second = with_entry(&original, "second", "2");
    let (code, reason) = api_code(
        api.replace("web-config", &PostParams::default(), &second)
            .await,
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    let stale_patch = Patch::Merge(
        json!({"metadata": {"resourceVersion": original.resource_version()}, "data": {"x": "y"}}),
    );
    assert_eq!(
        api_code(
            api.patch("web-config", &PatchParams::default(), &stale_patch)
                .await
        ),
        (409, "Conflict".into())
    );
    let current = api.get("web-config").await.unwrap();
    assert!(
        current.data.unwrap().contains_key("first"),
        "the losing writes changed nothing"
    );

    // Without a resourceVersion an update is unconditional, as for most built-in types.
    let mut unconditional = original;
    unconditional.metadata.resource_version = None;
    api.replace("web-config", &PostParams::default(), &unconditional)
        .await
        .unwrap();
}

#[tokio::test]
async fn discovery_sees_built_ins_and_crds_registered_at_run_time() {
    let cluster = empty_cluster().await;
    let client = cluster.client();
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let find = |d: &Discovery, group: &str, kind: &str| {
        d.groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(ar, _)| ar.group == group && ar.kind == kind)
    };
    for (group, kind, namespaced) in [
        ("", "ConfigMap", true),
        ("", "PersistentVolume", false),
        ("apps", "StatefulSet", true),
        ("storage.k8s.io", "StorageClass", false),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding", false),
        ("apiextensions.k8s.io", "CustomResourceDefinition", false),
    ] {
        let (ar, caps) =
            find(&discovery, group, kind).unwrap_or_else(|| panic!("{group}/{kind} discovered"));
        assert_eq!(caps.scope == Scope::Namespaced, namespaced, "{kind} scope");
        assert!(caps.supports_operation("list") && caps.supports_operation("patch"));
        assert_eq!(ar.version, "v1");
    }
    assert!(find(&discovery, "example.com", "Gadget").is_none());

    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
        )),
    );
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Cluster",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1beta1", "served": true, "storage": false}, {"name": "v1", "served": true, "storage": true}],
        },
    }))
    .unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conditions = created.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    );

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = find(&discovery, "example.com", "Gadget").expect("the new CRD is discovered");
    assert_eq!(
        (ar.version.as_str(), ar.plural.as_str(), caps.scope),
        ("v1", "gadgets", Scope::Cluster)
    );

    let gadgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let gadget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Gadget",
        "metadata": {"name": "g1", "labels": {"color": "blue"}}, "spec": {"size": 3},
    }))
    .unwrap();
    gadgets
        .create(&PostParams::default(), &gadget)
        .await
        .unwrap();
    let listed = gadgets
        .list(&ListParams::default().labels("color=blue"))
        .await
        .unwrap();
    assert_eq!(names(&listed.items), ["g1"]);
    assert_eq!(listed.items[0].data["spec"]["size"], 3);
    // The same objects are served at every served version.
    let beta = ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1beta1", "Gadget"));
    let old: Api<DynamicObject> = Api::all_with(client.clone(), &beta);
    assert_eq!(
        old.get("g1").await.unwrap().types.unwrap().api_version,
        "example.com/v1beta1"
    );

    // A malformed CRD is refused; deleting the CRD removes its type and its objects.
    let mut bad = crd.clone();
    bad.metadata.name = Some("wrong.example.com".into());
    assert_eq!(
        api_code(crds.create(&PostParams::default(), &bad).await),
        (422, "Invalid".into())
    );
    crds.delete("gadgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_code(gadgets.list(&ListParams::default()).await),
        (404, "NotFound".into())
    );
    let discovery = Discovery::new(client).run().await.unwrap();
    assert!(find(&discovery, "example.com", "Gadget").is_none());
}

#[tokio::test]
async fn sample_custom_resources_are_served() {
    let cluster = sample_cluster().await;
    let widgets = ApiResource::from_gvk(&GroupVersionKind::gvk("demo.stowage.io", "v1", "Widget"));
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client(), "shop", &widgets);
    let mut found = names(&api.list(&ListParams::default()).await.unwrap().items);
    found.sort();
    assert_eq!(found, ["blue", "red"]);
    let blue = api.get("blue").await.unwrap();
    assert_eq!(blue.data["spec"]["color"], "blue");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let cluster = empty_cluster().await;
    let client = cluster.client();
    client.apiserver_version().await.unwrap();
    cluster.shutdown().await;
    assert!(client.apiserver_version().await.is_err());
}

/// A copy of `cm` with `key` set to `value` in its data.
fn with_entry(cm: &ConfigMap, key: &str, value: &str) -> ConfigMap {
    let mut changed = cm.clone();
    changed
        .data
        .as_mut()
        .unwrap()
        .insert(key.into(), value.into());
    changed
}
