//! The collection scope matrix, against the sandbox's sample application (one integration-test binary for the cluster crate).

use std::convert::Infallible;

use serde_json::json;
use stowage_cluster::{
    CollectError, CollectOptions, CollectSummary, CollectedObject, SERVER_METADATA_FIELDS, collect,
    collect_with_options,
};
use stowage_schemas::domain::{Namespaces, Scope};

/// A sandbox holding the sample application.
async fn sample_cluster() -> stowage_sandbox::SandboxHandle {
    stowage_sandbox::Sandbox::sample_local()
        .await
        .expect("the sandbox starts with the sample app")
}

/// `Kind namespace/name` of everything collected, sorted, with the summary.
async fn collected(
    client: &kube::Client,
    scope: &Scope,
    page_size: u32,
) -> (Vec<String>, Vec<CollectedObject>, CollectSummary) {
    let mut objects = Vec::new();
    let summary = collect_with_options(client, scope, &CollectOptions { page_size }, |object| {
        objects.push(object);
        async { Ok::<(), Infallible>(()) }
    })
    .await
    .unwrap();
    let mut keys: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{} {}/{}",
                o.resource.kind,
                o.namespace.as_deref().unwrap_or(""),
                o.name
            )
        })
        .collect();
    keys.sort();
    (keys, objects, summary)
}

/// The keys collected with the default scope changed by `edit`.
async fn keys_with(client: &kube::Client, edit: impl FnOnce(&mut Scope)) -> Vec<String> {
    let mut scope = Scope::default();
    edit(&mut scope);
    collected(client, &scope, 250).await.0
}

fn namespaces(names: &[&str]) -> Namespaces {
    Namespaces::List {
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

fn has(keys: &[String], key: &str) -> bool {
    keys.iter().any(|k| k == key)
}

fn in_namespace<'a>(keys: &'a [String], ns: &str) -> Vec<&'a str> {
    keys.iter()
        .filter(|k| k.contains(&format!(" {ns}/")))
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn the_default_scope_takes_every_namespace_but_the_system_ones() {
    let cluster = sample_cluster().await;
    let (keys, objects, summary) = collected(&cluster.client(), &Scope::default(), 250).await;
    assert!(in_namespace(&keys, "kube-system").is_empty(), "{keys:#?}");
    for key in [
        "Namespace /shop",
        "Namespace /blog",
        "Namespace /default",
        "Deployment shop/web",
        "StatefulSet blog/mysql",
        "Secret shop/db-credentials",
        "Widget shop/blue",
        "Widget blog/green",
        "PersistentVolumeClaim blog/uploads",
        "PersistentVolume /pv-shop-data",
        "PersistentVolume /pv-blog-uploads",
        "StorageClass /local-disk",
        "ClusterRoleBinding /widget-reader",
        "CustomResourceDefinition /widgets.demo.stowage.io",
    ] {
        assert!(has(&keys, key), "{key} collected: {keys:#?}");
    }
    assert!(!has(&keys, "Namespace /kube-system"));
    assert_eq!(summary.objects(), keys.len());
    assert_eq!(summary.objects_by_type["Widget.demo.stowage.io"], 3);

    // Every object is stripped of what the server populated, and keeps what restore needs.
    for o in &objects {
        let meta = &o.object["metadata"];
        for field in SERVER_METADATA_FIELDS {
            assert!(
                meta.get(field).is_none(),
                "{} {} kept {field}",
                o.resource.kind,
                o.name
            );
        }
        assert!(
            o.object.get("status").is_none(),
            "{} {} kept status",
            o.resource.kind,
            o.name
        );
        assert_eq!(o.object["kind"], json!(o.resource.kind));
        assert_eq!(o.object["apiVersion"], json!(o.resource.api_version));
    }
    let claim = objects.iter().find(|o| o.name == "data-db-0").unwrap();
    assert_eq!(claim.object["spec"]["volumeName"], "pv-shop-data");
    let volume = objects.iter().find(|o| o.name == "pv-shop-data").unwrap();
    assert_eq!(volume.object["spec"]["csi"]["volumeHandle"], "shop-data");
    let service = objects
        .iter()
        .find(|o| o.resource.kind == "Service" && o.name == "web")
        .unwrap();
    assert!(
        service.object["spec"].get("clusterIP").is_none(),
        "allocated IPs are stripped"
    );
}

#[tokio::test]
async fn namespaces_created_later_are_included_and_excludes_win() {
    let cluster = sample_cluster().await;
    let sandbox = cluster.sandbox();
    sandbox
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "later"}}))
        .unwrap();
    sandbox
        .create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new", "namespace": "later"}}))
        .unwrap();
    let client = cluster.client();

    let all = keys_with(&client, |_| ()).await;
    assert!(has(&all, "Namespace /later") && has(&all, "ConfigMap later/new"));

    let without_blog = keys_with(&client, |s| {
        s.exclude_namespaces = vec!["blog".into(), "later".into()]
    })
    .await;
    assert!(
        in_namespace(&without_blog, "blog").is_empty()
            && in_namespace(&without_blog, "later").is_empty()
    );
    assert!(!has(&without_blog, "Namespace /blog"));
    assert!(
        !has(&without_blog, "PersistentVolume /pv-blog-data"),
        "volumes follow their claims"
    );
    assert!(has(&without_blog, "PersistentVolume /pv-shop-data"));
}

#[tokio::test]
async fn a_namespace_list_takes_only_those_and_system_namespaces_when_named() {
    let cluster = sample_cluster().await;
    let client = cluster.client();

    let shop = keys_with(&client, |s| {
        s.namespaces = namespaces(&["shop", "nonexistent"])
    })
    .await;
    assert!(in_namespace(&shop, "blog").is_empty());
    assert!(
        has(&shop, "Namespace /shop")
            && !has(&shop, "Namespace /blog")
            && !has(&shop, "Namespace /default")
    );
    assert!(has(&shop, "Deployment shop/cart"));
    let volumes: Vec<_> = shop
        .iter()
        .filter(|k| k.starts_with("PersistentVolume /"))
        .collect();
    assert_eq!(volumes, ["PersistentVolume /pv-shop-data"]);

    let system = keys_with(&client, |s| s.namespaces = namespaces(&["kube-system"])).await;
    assert!(
        has(&system, "Deployment kube-system/coredns") && has(&system, "Namespace /kube-system")
    );
    assert!(in_namespace(&system, "shop").is_empty());
}

#[tokio::test]
async fn label_selectors_and_within_one_or_across_several() {
    let cluster = sample_cluster().await;
    let client = cluster.client();

    let and = keys_with(&client, |s| {
        s.label_selectors = vec!["app=db,tier=data".into()]
    })
    .await;
    let namespaced: Vec<&String> = and.iter().filter(|k| !k.contains(" /")).collect();
    assert_eq!(
        namespaced,
        [
            "ConfigMap shop/db-config",
            "PersistentVolumeClaim shop/data-db-0",
            "Pod shop/db-0",
            "Secret shop/db-credentials",
            "Service shop/db",
            "StatefulSet shop/db",
        ]
    );
    let cluster_scoped: Vec<&String> = and.iter().filter(|k| k.contains(" /")).collect();
    assert_eq!(
        cluster_scoped,
        [
            "Namespace /blog",
            "Namespace /default",
            "Namespace /shop",
            "PersistentVolume /pv-shop-data"
        ],
        "namespaces always, the claimed volume, nothing else unlabelled"
    );

    let or = keys_with(&client, |s| {
        s.label_selectors = vec!["app=db".into(), "app=wordpress,tier=frontend".into()]
    })
    .await;
    for key in [
        "StatefulSet shop/db",
        "Deployment blog/wordpress",
        "PersistentVolumeClaim blog/uploads",
        "PersistentVolume /pv-blog-uploads",
        "Widget blog/green",
        "CustomResourceDefinition /widgets.demo.stowage.io",
    ] {
        assert!(has(&or, key), "{key} in {or:#?}");
    }
    assert!(
        !has(&or, "StatefulSet blog/mysql")
            && !has(&or, "Deployment shop/web")
            && !has(&or, "Widget shop/blue")
    );

    // One selector goes to the server; the CRD and PV of what it selects still follow.
    let single = keys_with(&client, |s| {
        s.label_selectors = vec!["app=wordpress".into()]
    })
    .await;
    for key in [
        "Widget blog/green",
        "CustomResourceDefinition /widgets.demo.stowage.io",
        "PersistentVolume /pv-blog-uploads",
    ] {
        assert!(has(&single, key), "{key} in {single:#?}");
    }
    assert!(!has(&single, "StorageClass /local-disk"));

    let set_based = keys_with(&client, |s| {
        s.label_selectors = vec!["tier in (backend),backup notin (keep)".into()]
    })
    .await;
    assert!(has(&set_based, "Deployment shop/cart") && has(&set_based, "Widget shop/red"));
    assert!(!has(&set_based, "Deployment shop/web"));
}

#[tokio::test]
async fn secrets_volumes_and_cluster_scoped_resources_switch_off() {
    let cluster = sample_cluster().await;
    let client = cluster.client();

    let no_secrets = keys_with(&client, |s| s.include_secrets = false).await;
    assert!(!no_secrets.iter().any(|k| k.starts_with("Secret ")));
    assert!(has(&no_secrets, "ConfigMap shop/db-config"));

    let no_volumes = keys_with(&client, |s| s.include_volumes = false).await;
    assert!(
        !no_volumes.iter().any(|k| k.starts_with("PersistentVolume")),
        "{no_volumes:#?}"
    );
    assert!(has(&no_volumes, "StatefulSet shop/db"));

    let no_cluster = keys_with(&client, |s| s.include_cluster_scoped = false).await;
    for gone in [
        "StorageClass /local-disk",
        "ClusterRole /widget-reader",
        "ClusterRoleBinding /widget-reader",
    ] {
        assert!(!has(&no_cluster, gone), "{gone}");
    }
    for kept in [
        "Namespace /shop",
        "PersistentVolume /pv-shop-data",
        "CustomResourceDefinition /widgets.demo.stowage.io",
        "Deployment shop/web",
    ] {
        assert!(
            has(&no_cluster, kept),
            "{kept} is still needed to restore what was collected"
        );
    }
}

#[tokio::test]
async fn small_pages_give_the_same_objects() {
    let cluster = sample_cluster().await;
    let client = cluster.client();
    let (big, _, big_summary) = collected(&client, &Scope::default(), 500).await;
    let (small, _, small_summary) = collected(&client, &Scope::default(), 1).await;
    assert_eq!(big, small);
    assert!(
        small_summary.pages > big_summary.pages + big.len() / 2,
        "{} vs {} pages",
        small_summary.pages,
        big_summary.pages
    );
}

#[tokio::test]
async fn a_failing_sink_stops_the_collection() {
    let cluster = sample_cluster().await;
    let mut seen = 0;
    let result = collect(&cluster.client(), &Scope::default(), |_object| {
        seen += 1;
        let fail = seen == 3;
        async move {
            if fail {
                Err(std::io::Error::other("vault unavailable"))
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert_eq!(seen, 3);
    let error = result.unwrap_err();
    assert!(matches!(error, CollectError::Sink { .. }), "{error}");
    assert!(error.to_string().contains("vault unavailable"));
}
