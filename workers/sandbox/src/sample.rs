//! The sample application the sandbox can load: small, but with one of everything Stowage
//! must handle.
//!
//! | namespace | what | labels worth selecting on |
//! |---|---|---|
//! | `shop` (team=commerce) | deployments `web`, `cart`; statefulset `db`; services `web`, `db`; configmaps `web-config`, `db-config`; secret `db-credentials`; service account, role, role binding; pods `db-0`, `web-7d9f` (hook targets); PVC `data-db-0` → PV `pv-shop-data` (CSI `disk.stowage.local`, disk `shop-data`); widgets `blue`, `red` | `app`, `tier` (frontend/backend/data), `backup` (`skip` on `cart`) |
//! | `blog` (team=content) | deployment `wordpress`; statefulset `mysql`; services; configmap; secret; pod `mysql-0`; PVC `data-mysql-0` → `pv-blog-data` (disk `blog-data`); PVC `uploads` → `pv-blog-uploads` (**NFS**: not a CSI volume, skipped by snapshots); widget `green` | `app`, `tier` |
//! | `kube-system` | deployment and configmap `coredns` | `k8s-app=kube-dns` |
//! | cluster | node `sandbox-node-1` (region [`SAMPLE_REGION`], zone `local-1`), storage class `local-disk`, the three PVs, cluster role and binding `widget-reader`, CRD `widgets.demo.stowage.io`; the CSI snapshot CRDs (`snapshot.storage.k8s.io/v1`) and VolumeSnapshotClass [`LOCAL_SNAPSHOT_CLASS`] (default for `disk.stowage.local`, `deletionPolicy: Delete`) | `app.kubernetes.io/part-of=stowage-demo` |
//!
//! The `db-0` pod carries no exec annotations (hooks succeed); `mysql-0` has
//! `sandbox.stowage.io/exec-delay-ms: "50"` so hooks take a moment.

use serde_json::{Value, json};

/// The CSI driver of the local disk provider.
pub const LOCAL_CSI_DRIVER: &str = "disk.stowage.local";

/// The sample's VolumeSnapshotClass: the default class of [`LOCAL_CSI_DRIVER`].
pub const LOCAL_SNAPSHOT_CLASS: &str = "local-snapshots";

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

/// A printer column of a CRD version.
fn column(name: &str, path: &str, kind: &str) -> Value {
    json!({"name": name, "jsonPath": path, "type": kind})
}

/// A CRD of `snapshot.storage.k8s.io/v1`, shaped after the upstream definition
/// (kubernetes-csi/external-snapshotter `client/config/crd`): names, scope, the `status`
/// subresource, printer columns and the schema of `spec`/`status` (descriptions and CEL
/// validations left out).
fn snapshot_crd(
    kind: &str,
    plural: &str,
    short_names: &[&str],
    scope: &str,
    columns: Vec<Value>,
    properties: Value,
    required: &[&str],
) -> Value {
    let mut columns = columns;
    columns.push(column("Age", ".metadata.creationTimestamp", "date"));
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.snapshot.storage.k8s.io"),
            "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-csi/external-snapshotter/pull/814"},
        },
        "spec": {
            "group": "snapshot.storage.k8s.io",
            "names": {
                "kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                "singular": kind.to_lowercase(), "shortNames": short_names,
            },
            "scope": scope,
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": properties,
                    "required": required,
                }},
                "subresources": if kind == "VolumeSnapshotClass" { json!({}) } else { json!({"status": {}}) },
            }],
        },
    })
}

/// The three CRDs of CSI volume snapshots (`VolumeSnapshotClass`, `VolumeSnapshotContent`,
/// `VolumeSnapshot`), as a cluster with the external-snapshotter installed has them.
pub(crate) fn snapshot_crds() -> Vec<Value> {
    let string = json!({"type": "string"});
    let error = json!({"type": "object", "properties": {"message": string, "time": {"type": "string", "format": "date-time"}}});
    let class = snapshot_crd(
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
        &["vsclass", "vsclasses"],
        "Cluster",
        vec![
            column("Driver", ".driver", "string"),
            column("DeletionPolicy", ".deletionPolicy", "string"),
        ],
        json!({
            "apiVersion": string, "kind": string, "metadata": {"type": "object"},
            "deletionPolicy": {"type": "string", "enum": ["Delete", "Retain"]},
            "driver": string,
            "parameters": {"type": "object", "additionalProperties": string},
        }),
        &["deletionPolicy", "driver"],
    );
    let content = snapshot_crd(
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
        &["vsc", "vscs"],
        "Cluster",
        vec![
            column("ReadyToUse", ".status.readyToUse", "boolean"),
            column("RestoreSize", ".status.restoreSize", "integer"),
            column("DeletionPolicy", ".spec.deletionPolicy", "string"),
            column("Driver", ".spec.driver", "string"),
            column(
                "VolumeSnapshotClass",
                ".spec.volumeSnapshotClassName",
                "string",
            ),
            column("VolumeSnapshot", ".spec.volumeSnapshotRef.name", "string"),
            column(
                "VolumeSnapshotNamespace",
                ".spec.volumeSnapshotRef.namespace",
                "string",
            ),
        ],
        json!({
            "apiVersion": string, "kind": string, "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["deletionPolicy", "driver", "source", "volumeSnapshotRef"], "properties": {
                "deletionPolicy": {"type": "string", "enum": ["Delete", "Retain"]},
                "driver": string,
                "source": {"type": "object", "properties": {"snapshotHandle": string, "volumeHandle": string}},
                "sourceVolumeMode": string,
                "volumeSnapshotClassName": string,
                "volumeSnapshotRef": {"type": "object", "x-kubernetes-map-type": "atomic", "properties": {
                    "apiVersion": string, "fieldPath": string, "kind": string, "name": string,
                    "namespace": string, "resourceVersion": string, "uid": string,
                }},
            }},
            "status": {"type": "object", "properties": {
                "creationTime": {"type": "integer", "format": "int64"},
                "error": error,
                "readyToUse": {"type": "boolean"},
                "restoreSize": {"type": "integer", "format": "int64", "minimum": 0},
                "snapshotHandle": string,
                "volumeGroupSnapshotHandle": string,
            }},
        }),
        &["spec"],
    );
    let snapshot = snapshot_crd(
        "VolumeSnapshot",
        "volumesnapshots",
        &["vs"],
        "Namespaced",
        vec![
            column("ReadyToUse", ".status.readyToUse", "boolean"),
            column(
                "SourcePVC",
                ".spec.source.persistentVolumeClaimName",
                "string",
            ),
            column(
                "SourceSnapshotContent",
                ".spec.source.volumeSnapshotContentName",
                "string",
            ),
            column("RestoreSize", ".status.restoreSize", "string"),
            column("SnapshotClass", ".spec.volumeSnapshotClassName", "string"),
            column(
                "SnapshotContent",
                ".status.boundVolumeSnapshotContentName",
                "string",
            ),
            column("CreationTime", ".status.creationTime", "date"),
        ],
        json!({
            "apiVersion": string, "kind": string, "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["source"], "properties": {
                "source": {"type": "object", "properties": {
                    "persistentVolumeClaimName": string, "volumeSnapshotContentName": string,
                }},
                "volumeSnapshotClassName": string,
            }},
            "status": {"type": "object", "properties": {
                "boundVolumeSnapshotContentName": string,
                "creationTime": {"type": "string", "format": "date-time"},
                "error": error,
                "readyToUse": {"type": "boolean"},
                "restoreSize": {"type": "string"},
                "volumeGroupSnapshotName": string,
            }},
        }),
        &["spec"],
    );
    vec![class, content, snapshot]
}

/// A namespace's web tier and its database with a disk: deployment and service `web`, a
/// configmap `<web>-config`; statefulset and service `db`, a secret `<db>-credentials`, pod
/// `<db>-0` (a hook target) and its claim `data-<db>-0`, bound to PV `pv-<ns>-data` on disk
/// `<ns>-data`.
struct Stack {
    ns: &'static str,
    web: &'static str,
    web_image: &'static str,
    web_replicas: u32,
    web_port: u16,
    web_config: Value,
    db: &'static str,
    db_image: &'static str,
    db_container: &'static str,
    db_port: u16,
    db_password: &'static str,
    db_pod_annotations: Value,
    disk_size: &'static str,
}

fn stack(s: Stack) -> Vec<Value> {
    let (ns, web, db) = (s.ns, app(s.web, "frontend"), app(s.db, "data"));
    let (volume, claim_name) = (format!("pv-{ns}-data"), format!("data-{}-0", s.db));
    vec![
        deployment(ns, s.web, web.clone(), s.web_image, s.web_replicas),
        statefulset(ns, s.db, db.clone(), s.db_image, s.db_container),
        service(ns, s.web, web.clone(), s.web_port),
        service(ns, s.db, db.clone(), s.db_port),
        configmap(ns, &format!("{}-config", s.web), web, s.web_config),
        secret(
            ns,
            &format!("{}-credentials", s.db),
            db.clone(),
            json!({"password": s.db_password}),
        ),
        pod(
            ns,
            &format!("{}-0", s.db),
            db.clone(),
            s.db_container,
            s.db_pod_annotations,
        ),
        csi_volume(&volume, &format!("{ns}-data"), ns, &claim_name, s.disk_size),
        claim(ns, &claim_name, db, &volume, s.disk_size, "local-disk"),
    ]
}

/// Every object of the sample application, in an order the sandbox accepts (namespaces and
/// the CRD before what they hold).
pub(crate) fn objects() -> Vec<Value> {
    let demo = json!({"app.kubernetes.io/part-of": "stowage-demo"});
    let mut objects = snapshot_crds();
    objects.extend([
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
        json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {
                "name": LOCAL_SNAPSHOT_CLASS,
                "labels": demo.clone(),
                "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"},
            },
            "driver": LOCAL_CSI_DRIVER,
            "deletionPolicy": "Delete",
        }),
    ]);
    objects.extend(stack(Stack {
        ns: "shop",
        web: "web",
        web_image: "nginx:1.27",
        web_replicas: 2,
        web_port: 80,
        web_config: json!({"nginx.conf": "worker_processes 2;\n"}),
        db: "db",
        db_image: "postgres:16",
        db_container: "postgres",
        db_port: 5432,
        db_password: "c2VjcmV0LXBhc3N3b3Jk",
        db_pod_annotations: json!({}),
        disk_size: "1Gi",
    }));
    objects.extend([
        deployment(
            "shop",
            "cart",
            json!({"app": "cart", "tier": "backend", "backup": "skip"}),
            "shop/cart:3.1",
            1,
        ),
        configmap(
            "shop",
            "db-config",
            app("db", "data"),
            json!({"max_connections": "100"}),
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
        pod("shop", "web-7d9f", app("web", "frontend"), "web", json!({})),
        widget("shop", "blue", app("web", "frontend"), "blue", 3),
        widget("shop", "red", app("cart", "backend"), "red", 5),
    ]);
    objects.extend(stack(Stack {
        ns: "blog",
        web: "wordpress",
        web_image: "wordpress:6",
        web_replicas: 1,
        web_port: 80,
        web_config: json!({"WORDPRESS_DB_HOST": "mysql"}),
        db: "mysql",
        db_image: "mysql:8",
        db_container: "mysql",
        db_port: 3306,
        db_password: "YmxvZy1wYXNzd29yZA==",
        db_pod_annotations: json!({"sandbox.stowage.io/exec-delay-ms": "50"}),
        disk_size: "2Gi",
    }));
    objects.extend([
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
    ]);
    objects
}
