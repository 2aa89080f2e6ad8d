//! The sample application the sandbox can load: small, but with one of everything Stowage
//! must handle.
//!
//! | namespace | what | labels worth selecting on |
//! |---|---|---|
//! | `shop` (team=commerce) | deployments `web`, `cart`; statefulset `db`; services `web`, `db`; configmaps `web-config`, `db-config`; secret `db-credentials`; service account, role, role binding; pods `db-0`, `web-7d9f` (hook targets); PVC `data-db-0` → PV `pv-shop-data` (CSI `disk.stowage.local`, disk `shop-data`); widgets `blue`, `red` | `app`, `tier` (frontend/backend/data), `backup` (`skip` on `cart`) |
//! | `blog` (team=content) | deployment `wordpress`; statefulset `mysql`; services; configmap; secret; pod `mysql-0`; PVC `data-mysql-0` → `pv-blog-data` (disk `blog-data`); PVC `uploads` → `pv-blog-uploads` (**NFS**: not a CSI volume, skipped by snapshots); widget `green` | `app`, `tier` |
//! | `kube-system` | deployment and configmap `coredns` | `k8s-app=kube-dns` |
//! | cluster | node `sandbox-node-1` (region [`SAMPLE_REGION`], zone `local-1`), storage class `local-disk`, the three PVs, cluster role and binding `widget-reader`, CRD `widgets.demo.stowage.io` | `app.kubernetes.io/part-of=stowage-demo` |
//!
//! The `db-0` pod carries no exec annotations (hooks succeed); `mysql-0` has
//! `sandbox.stowage.io/exec-delay-ms: "50"` so hooks take a moment.

use serde_json::{Value, json};

/// The CSI driver of the local disk provider.
pub const LOCAL_CSI_DRIVER: &str = "disk.stowage.local";

/// The region of the sample app's node (`topology.kubernetes.io/region`): the same name the
/// local disk provider reports for its snapshots (`stowage_disk::LOCAL_REGION`), so a local
/// vault in that region passes the preflight region check.
pub const SAMPLE_REGION: &str = "local";

fn meta(name: &str, namespace: Option<&str>, labels: Value) -> Value {
    let mut m = json!({"name": name, "labels": labels});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

/// The `app` and `tier` labels most of the sample's objects carry.
fn app(app: &str, tier: &str) -> Value {
    json!({"app": app, "tier": tier})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(name, None, labels)})
}

fn pod_template(app: &str, image: &str, container: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": container, "image": image}]},
    })
}

fn deployment(ns: &str, name: &str, labels: Value, image: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(name, Some(ns), labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, image, name),
        },
    })
}

fn statefulset(ns: &str, name: &str, labels: Value, image: &str, container: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta(name, Some(ns), labels),
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, image, container),
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "local-disk",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }],
        },
    })
}

fn service(ns: &str, name: &str, labels: Value, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(name, Some(ns), labels),
        "spec": {
            "selector": {"app": name},
            "ports": [{"port": port, "targetPort": port, "protocol": "TCP"}],
            "clusterIP": "10.96.0.10",
            "type": "ClusterIP",
        },
    })
}

fn configmap(ns: &str, name: &str, labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(name, Some(ns), labels), "data": data})
}

fn secret(ns: &str, name: &str, labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(name, Some(ns), labels), "type": "Opaque", "data": data})
}

fn pod(ns: &str, name: &str, labels: Value, container: &str, annotations: Value) -> Value {
    let mut m = meta(name, Some(ns), labels);
    m["annotations"] = annotations;
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": m,
        "spec": {"containers": [{"name": container, "image": format!("{container}:latest")}]},
        "status": {"phase": "Running"},
    })
}

fn csi_volume(name: &str, disk: &str, claim_ns: &str, claim: &str, size: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": meta(name, None, json!({"app.kubernetes.io/part-of": "stowage-demo"})),
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "local-disk",
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": claim_ns, "name": claim},
            "csi": {"driver": LOCAL_CSI_DRIVER, "volumeHandle": disk, "fsType": "ext4"},
        },
        "status": {"phase": "Bound"},
    })
}

fn claim(ns: &str, name: &str, labels: Value, volume: &str, size: &str, class: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": meta(name, Some(ns), labels),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "resources": {"requests": {"storage": size}},
            "volumeName": volume,
            "volumeMode": "Filesystem",
        },
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": size}},
    })
}

fn widget(ns: &str, name: &str, labels: Value, color: &str, size: u32) -> Value {
    json!({
        "apiVersion": "demo.stowage.io/v1", "kind": "Widget",
        "metadata": meta(name, Some(ns), labels),
        "spec": {"color": color, "size": size},
    })
}

/// The CRD of the sample application's custom resources.
pub(crate) fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": meta("widgets.demo.stowage.io", None, json!({"app.kubernetes.io/part-of": "stowage-demo"})),
        "spec": {
            "group": "demo.stowage.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {
                    "color": {"type": "string"}, "size": {"type": "integer"},
                }}}}},
            }],
        },
    })
}

/// Every object of the sample application, in an order the sandbox accepts (namespaces and
/// the CRD before what they hold).
pub(crate) fn objects() -> Vec<Value> {
    let demo = json!({"app.kubernetes.io/part-of": "stowage-demo"});
    vec![
        namespace("shop", json!({"team": "commerce", "env": "prod"})),
        namespace("blog", json!({"team": "content", "env": "prod"})),
        widget_crd(),
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": meta("sandbox-node-1", None, json!({
                "kubernetes.io/hostname": "sandbox-node-1",
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/region": SAMPLE_REGION,
                "topology.kubernetes.io/zone": format!("{SAMPLE_REGION}-1"),
            })),
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }),
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": meta("local-disk", None, demo.clone()),
            "provisioner": LOCAL_CSI_DRIVER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer",
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": meta("widget-reader", None, demo.clone()),
            "rules": [{"apiGroups": ["demo.stowage.io"], "resources": ["widgets"], "verbs": ["get", "list"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": meta("widget-reader", None, demo.clone()),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "widget-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "shop", "namespace": "shop"}],
        }),
        // shop
        deployment("shop", "web", app("web", "frontend"), "nginx:1.27", 2),
        deployment(
            "shop",
            "cart",
            json!({"app": "cart", "tier": "backend", "backup": "skip"}),
            "shop/cart:3.1",
            1,
        ),
        statefulset("shop", "db", app("db", "data"), "postgres:16", "postgres"),
        service("shop", "web", app("web", "frontend"), 80),
        service("shop", "db", app("db", "data"), 5432),
        configmap(
            "shop",
            "web-config",
            app("web", "frontend"),
            json!({"nginx.conf": "worker_processes 2;\n"}),
        ),
        configmap(
            "shop",
            "db-config",
            app("db", "data"),
            json!({"max_connections": "100"}),
        ),
        secret(
            "shop",
            "db-credentials",
            app("db", "data"),
            json!({"password": "c2VjcmV0LXBhc3N3b3Jk"}),
        ),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("shop", Some("shop"), json!({"app": "web"}))}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta("config-reader", Some("shop"), json!({"app": "web"})),
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": meta("config-reader", Some("shop"), json!({"app": "web"})),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "config-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "shop", "namespace": "shop"}],
        }),
        pod("shop", "db-0", app("db", "data"), "postgres", json!({})),
        pod("shop", "web-7d9f", app("web", "frontend"), "web", json!({})),
        csi_volume("pv-shop-data", "shop-data", "shop", "data-db-0", "1Gi"),
        claim(
            "shop",
            "data-db-0",
            app("db", "data"),
            "pv-shop-data",
            "1Gi",
            "local-disk",
        ),
        widget("shop", "blue", app("web", "frontend"), "blue", 3),
        widget("shop", "red", app("cart", "backend"), "red", 5),
        // blog
        deployment(
            "blog",
            "wordpress",
            app("wordpress", "frontend"),
            "wordpress:6",
            1,
        ),
        statefulset("blog", "mysql", app("mysql", "data"), "mysql:8", "mysql"),
        service("blog", "wordpress", app("wordpress", "frontend"), 80),
        service("blog", "mysql", app("mysql", "data"), 3306),
        configmap(
            "blog",
            "wordpress-config",
            app("wordpress", "frontend"),
            json!({"WORDPRESS_DB_HOST": "mysql"}),
        ),
        secret(
            "blog",
            "mysql-credentials",
            app("mysql", "data"),
            json!({"password": "YmxvZy1wYXNzd29yZA=="}),
        ),
        pod(
            "blog",
            "mysql-0",
            app("mysql", "data"),
            "mysql",
            json!({"sandbox.stowage.io/exec-delay-ms": "50"}),
        ),
        csi_volume("pv-blog-data", "blog-data", "blog", "data-mysql-0", "2Gi"),
        claim(
            "blog",
            "data-mysql-0",
            app("mysql", "data"),
            "pv-blog-data",
            "2Gi",
            "local-disk",
        ),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": meta("pv-blog-uploads", None, demo),
            "spec": {
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "blog", "name": "uploads"},
                "nfs": {"server": "nfs.example.internal", "path": "/exports/blog-uploads"},
            },
            "status": {"phase": "Bound"},
        }),
        claim(
            "blog",
            "uploads",
            app("wordpress", "frontend"),
            "pv-blog-uploads",
            "5Gi",
            "",
        ),
        widget("blog", "green", app("wordpress", "frontend"), "green", 1),
        // kube-system: present so that "never collect kube-system unless asked" is tested.
        deployment(
            "kube-system",
            "coredns",
            json!({"k8s-app": "kube-dns"}),
            "coredns:1.11",
            2,
        ),
        configmap(
            "kube-system",
            "coredns",
            json!({"k8s-app": "kube-dns"}),
            json!({"Corefile": ".:53 { forward . /etc/resolv.conf }"}),
        ),
    ]
}
