//! kubectl's writes, typed as a user types them: `kubectl create namespace` (a protobuf body),
//! `kubectl apply -f infra/k8s/base/rbac.yaml` (OpenAPI v3 discovery, server-side strict field
//! validation, the last-applied annotation, strategic merge patches on re-apply), `get -o yaml`
//! and `delete`. What kubectl stored is read back through kube-rs and compared with the file.
//!
//! kubectl is required (Debian: `apt-get install kubernetes-client`); a missing kubectl fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use serde_json::{Value, json};
use stowage_sandbox::SandboxHandle;

use crate::harness::{api_code, empty_cluster};

/// How kubectl reaches the sandbox: the admin kubeconfig it wrote.
fn connection_args(cluster: &SandboxHandle) -> Vec<String> {
    vec![format!(
        "--kubeconfig={}",
        crate::harness::admin_kubeconfig(cluster).display()
    )]
}

/// kubectl pointed at one sandbox, with its own discovery cache (ports are reused between runs,
/// and a cache left by another sandbox on the same port would describe other types).
struct Kubectl {
    connection: Vec<String>,
    dir: PathBuf,
}

impl Kubectl {
    fn new(cluster: &SandboxHandle) -> Self {
        let dir = std::env::temp_dir().join(format!("stowage-kubectl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            connection: connection_args(cluster),
            dir,
        }
    }

    fn output(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(&self.connection)
            .arg(format!("--cache-dir={}", self.dir.join("cache").display()))
            .arg("--request-timeout=10s")
            .args(args)
            // No kubeconfig of the machine's user may leak in (contexts, credentials, a namespace).
            .env("KUBECONFIG", "/dev/null")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubectl could not be run ({e}); install it (Debian: apt-get install \
                     kubernetes-client) — this test checks that kubectl can write to the sandbox"
                )
            })
    }

    /// Runs kubectl, which must succeed without a word on standard error (no warning, no
    /// fallback notice); answers its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "kubectl {args:?} failed or warned: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
    }

    /// Runs kubectl, which must fail; answers its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            !output.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stderr).expect("kubectl prints UTF-8")
    }

    /// Writes `text` to a file in this kubectl's directory; answers its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rbac_yaml_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/k8s/base/rbac.yaml")
}

/// The documents of a multi-document YAML file, as JSON.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Runs blocking kubectl work while the sandbox keeps serving on the test's runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test]
async fn kubectl_creates_a_namespace_and_the_objects_it_sends_as_protobuf() {
    let cluster = empty_cluster().await;
    let kubectl = Kubectl::new(&cluster);
    let (kubectl, printed) = blocking(move || {
        let created = kubectl.ok(&["create", "namespace", "stowage"]);
        let mut printed = vec![created];
        let creates: [&[&str]; 3] = [
            &["serviceaccount", "fleet"],
            &[
                "configmap",
                "settings",
                "--from-literal=region=westeurope",
                "--from-literal=empty=",
            ],
            &[
                "secret",
                "generic",
                "creds",
                "--from-literal=token=s3cr3t",
                "--type=example.com/token",
            ],
        ];
        for create in creates {
            let mut args = vec!["create", "-n", "stowage"];
            args.extend(create);
            printed.push(kubectl.ok(&args));
            // What kubectl would have sent as JSON, for comparison.
            args.extend(["--dry-run=client", "-o", "json"]);
            printed.push(kubectl.ok(&args));
        }
        (kubectl, printed)
    })
    .await;
    assert_eq!(printed[0], "namespace/stowage created\n");
    assert_eq!(printed[1], "serviceaccount/fleet created\n");
    assert_eq!(printed[3], "configmap/settings created\n");
    assert_eq!(printed[5], "secret/creds created\n");

    let client = cluster.client();
    let namespace = Api::<Namespace>::all(client.clone())
        .get("stowage")
        .await
        .unwrap();
    assert_eq!(
        namespace.status.unwrap().phase.as_deref(),
        Some("Active"),
        "a namespace kubectl created is active"
    );
    let manager = &namespace.metadata.managed_fields.unwrap()[0];
    assert_eq!(manager.manager.as_deref(), Some("kubectl-create"));

    let sent = |i: usize| -> Value { serde_json::from_str(&printed[i]).unwrap() };
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), "stowage")
        .get("fleet")
        .await
        .unwrap();
    assert_eq!(sa.metadata.namespace.as_deref(), Some("stowage"));
    assert_eq!(sent(2)["metadata"]["name"], "fleet");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "stowage")
        .get("settings")
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&cm.data).unwrap(), sent(4)["data"]);
    assert_eq!(
        serde_json::to_value(&cm.data).unwrap(),
        json!({"region": "westeurope", "empty": ""})
    );
    let secret = Api::<Secret>::namespaced(client.clone(), "stowage")
        .get("creds")
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&secret.data).unwrap(), sent(6)["data"]);
    assert_eq!(secret.data.unwrap()["token"].0, b"s3cr3t");
    assert_eq!(secret.type_.as_deref(), Some("example.com/token"));

    let (kubectl, yaml, listed, again, deleted) = blocking(move || {
        let yaml = kubectl.ok(&["get", "namespace", "stowage", "-o", "yaml"]);
        let listed = kubectl.ok(&[
            "get",
            "serviceaccounts,configmaps,secrets",
            "-n",
            "stowage",
            "-o",
            "name",
        ]);
        let again = kubectl.fails(&["create", "namespace", "stowage"]);
        let deleted = kubectl.ok(&["delete", "namespace", "stowage"]);
        (kubectl, yaml, listed, again, deleted)
    })
    .await;
    let yaml: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(yaml["metadata"]["name"], "stowage");
    assert_eq!(yaml["status"]["phase"], "Active");
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        ["configmap/settings", "secret/creds", "serviceaccount/fleet"]
    );
    assert!(
        again.contains("AlreadyExists") && again.contains("\"stowage\" already exists"),
        "{again}"
    );
    assert_eq!(deleted, "namespace \"stowage\" deleted\n");
    assert_eq!(
        api_code(Api::<Namespace>::all(client.clone()).get("stowage").await),
        (404, "NotFound".to_owned())
    );
    assert_eq!(
        api_code(
            Api::<ConfigMap>::namespaced(client, "stowage")
                .get("settings")
                .await
        ),
        (404, "NotFound".to_owned()),
        "deleting the namespace deleted what it held"
    );
    drop(kubectl);
}

/// Checks that the sandbox holds what `file` says, each object read back through kube-rs in
/// `namespace` (the one namespaced objects were applied to).
async fn assert_holds(cluster: &SandboxHandle, file: &str, namespace: &str) {
    let client = cluster.client();
    for object in documents(file) {
        let name = object["metadata"]["name"].as_str().unwrap();
        match object["kind"].as_str().unwrap() {
            "ServiceAccount" => {
                let sa = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
                    .get(name)
                    .await
                    .unwrap();
                assert_eq!(
                    sa.automount_service_account_token,
                    object["automountServiceAccountToken"].as_bool(),
                    "{name}"
                );
            }
            "ClusterRole" => {
                let role = Api::<ClusterRole>::all(client.clone())
                    .get(name)
                    .await
                    .unwrap();
                assert_eq!(
                    serde_json::to_value(&role.rules).unwrap(),
                    object["rules"],
                    "{name}"
                );
            }
            "ClusterRoleBinding" => {
                let binding = Api::<ClusterRoleBinding>::all(client.clone())
                    .get(name)
                    .await
                    .unwrap();
                assert_eq!(
                    serde_json::to_value(&binding.role_ref).unwrap(),
                    object["roleRef"]
                );
                assert_eq!(
                    serde_json::to_value(&binding.subjects).unwrap(),
                    object["subjects"],
                    "{name}"
                );
            }
            other => panic!("rbac.yaml holds a {other}, which this test does not compare"),
        }
    }
}

/// `kind/name` lines kubectl apply printed, sorted, with their verb.
fn applied(stdout: &str) -> Vec<String> {
    let mut lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn kubectl_applies_the_fleet_rbac_then_again_then_a_change() {
    let cluster = empty_cluster().await;
    let kubectl = Kubectl::new(&cluster);
    let file = std::fs::read_to_string(rbac_yaml_path()).expect("read infra/k8s/base/rbac.yaml");
    let path = rbac_yaml_path().display().to_string();
    let (kubectl, first, second) = blocking(move || {
        kubectl.ok(&["create", "namespace", "stowage"]);
        let first = kubectl.ok(&["apply", "-n", "stowage", "-f", &path]);
        let second = kubectl.ok(&["apply", "-n", "stowage", "-f", &path]);
        (kubectl, first, second)
    })
    .await;
    let objects = [
        "clusterrole.rbac.authorization.k8s.io/stowage-restore",
        "clusterrole.rbac.authorization.k8s.io/stowage-retention",
        "clusterrole.rbac.authorization.k8s.io/stowage-snapshot",
        "clusterrolebinding.rbac.authorization.k8s.io/stowage-restore",
        "clusterrolebinding.rbac.authorization.k8s.io/stowage-retention",
        "clusterrolebinding.rbac.authorization.k8s.io/stowage-snapshot",
        "serviceaccount/stowage-restore",
        "serviceaccount/stowage-retention",
        "serviceaccount/stowage-snapshot",
        "serviceaccount/stowage-vault",
    ];
    let with =
        |verb: &str| -> Vec<String> { objects.iter().map(|o| format!("{o} {verb}")).collect() };
    assert_eq!(applied(&first), with("created"));
    assert_eq!(applied(&second), with("unchanged"));
    assert_holds(&cluster, &file, "stowage").await;
    let role = Api::<ClusterRole>::all(cluster.client())
        .get("stowage-restore")
        .await
        .unwrap();
    let last_applied =
        &role.metadata.annotations.unwrap()["kubectl.kubernetes.io/last-applied-configuration"];
    let last_applied: Value = serde_json::from_str(last_applied).unwrap();
    let in_file = documents(&file)
        .into_iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "stowage-restore")
        .unwrap();
    assert_eq!(last_applied["rules"], in_file["rules"]);

    // The restore role loses "update"; the snapshot binding gains a subject.
    let changed = file
        .replace(
            r#"verbs: ["get", "list", "watch", "create", "patch", "update"]"#,
            r#"verbs: ["get", "list", "watch", "create", "patch"]"#,
        )
        .replace(
            "    name: stowage-snapshot\n    namespace: stowage\n",
            "    name: stowage-snapshot\n    namespace: stowage\n  - kind: ServiceAccount\n    name: stowage-snapshot\n    namespace: stowage-dr\n",
        );
    assert_ne!(changed, file);
    let changed_path = kubectl.file("rbac-changed.yaml", &changed);
    let (kubectl, third) = blocking(move || {
        let third = kubectl.ok(&["apply", "-n", "stowage", "-f", &changed_path]);
        (kubectl, third)
    })
    .await;
    let configured = [
        "clusterrole.rbac.authorization.k8s.io/stowage-restore",
        "clusterrolebinding.rbac.authorization.k8s.io/stowage-snapshot",
    ];
    let expected: Vec<String> = objects
        .iter()
        .map(|o| {
            let verb = if configured.contains(o) {
                "configured"
            } else {
                "unchanged"
            };
            format!("{o} {verb}")
        })
        .collect();
    assert_eq!(applied(&third), expected);
    assert_holds(&cluster, &changed, "stowage").await;

    // Without -n, the namespaced objects go to kubectl's namespace, `default`.
    let path = rbac_yaml_path().display().to_string();
    let (kubectl, default) = blocking(move || {
        let out = kubectl.ok(&["apply", "-f", &path]);
        (kubectl, out)
    })
    .await;
    assert!(
        default.contains("serviceaccount/stowage-vault created")
            && default.contains("clusterrole.rbac.authorization.k8s.io/stowage-restore configured"),
        "{default}"
    );
    assert_holds(&cluster, &file, "default").await;
    drop(kubectl);
}

#[tokio::test]
async fn strict_field_validation_refuses_an_unknown_field_and_warn_drops_it() {
    let cluster = empty_cluster().await;
    let kubectl = Kubectl::new(&cluster);
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: typo\n\
                rules:\n  - apiGroups: [\"\"]\n    resources: [\"pods\"]\n    verbs: [\"get\"]\n\
                \x20   resourceNamez: [\"web\"]\n";
    let path = kubectl.file("typo.yaml", role);
    let (kubectl, dry_run, refused) = blocking(move || {
        let dry_run = kubectl.fails(&["apply", "--dry-run=server", "-f", &path]);
        let refused = kubectl.fails(&["apply", "-f", &path]);
        (kubectl, dry_run, refused)
    })
    .await;
    assert!(dry_run.contains("does not serve dry runs"), "{dry_run}");
    assert!(
        refused.contains("strict decoding error: unknown field \"rules[0].resourceNamez\""),
        "{refused}"
    );
    let roles = Api::<ClusterRole>::all(cluster.client());
    assert_eq!(
        api_code(roles.get("typo").await),
        (404, "NotFound".to_owned()),
        "a refused object is not stored"
    );

    let path = kubectl.dir.join("typo.yaml").display().to_string();
    let warned = blocking(move || kubectl.output(&["apply", "--validate=warn", "-f", &path])).await;
    let stderr = String::from_utf8_lossy(&warned.stderr);
    let stdout = String::from_utf8_lossy(&warned.stdout);
    assert!(warned.status.success(), "{stderr}");
    assert!(
        stderr.contains("unknown field \"rules[0].resourceNamez\""),
        "{stderr}"
    );
    assert_eq!(
        stdout,
        "clusterrole.rbac.authorization.k8s.io/typo created\n"
    );
    let stored = roles.get("typo").await.unwrap();
    assert_eq!(
        serde_json::to_value(&stored.rules).unwrap(),
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
        "the unknown field was dropped"
    );
}

/// The sandbox's OpenAPI v3 documents describe a PATCH for every kind with `fieldValidation`,
/// which is why kubectl leaves validation to the server.
#[tokio::test]
async fn openapi_v3_lists_the_operations_and_parameters_served() {
    let cluster = empty_cluster().await;
    let client = cluster.client();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let request = http::Request::get(path).body(Vec::new()).unwrap();
            client.request::<Value>(request).await.unwrap()
        }
    };
    let root = get("/openapi/v3".to_owned()).await;
    let url = root["paths"]["apis/rbac.authorization.k8s.io/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        url.starts_with("/openapi/v3/apis/rbac.authorization.k8s.io/v1?hash="),
        "{url}"
    );
    let doc = get(url).await;
    let patch = &doc["paths"]["/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "rbac.authorization.k8s.io", "version": "v1", "kind": "ClusterRole"})
    );
    let params: Vec<&str> = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["fieldManager", "fieldValidation"]);
    let core = get(root["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned())
    .await;
    let create = &core["paths"]["/api/v1/namespaces"]["post"];
    assert!(
        create["requestBody"]["content"]
            .get("application/vnd.kubernetes.protobuf")
            .is_some(),
        "{create}"
    );
}

/// Strict validation of a custom resource follows its CRD's structural schema (kube-rs asks for
/// it on a merge patch).
#[tokio::test]
async fn custom_resources_are_validated_by_their_crd_schema() {
    let cluster = crate::harness::sample_cluster().await;
    let widgets = Api::<kube::api::DynamicObject>::namespaced_with(
        cluster.client(),
        "shop",
        &kube::discovery::ApiResource {
            group: "demo.stowage.io".into(),
            version: "v1".into(),
            api_version: "demo.stowage.io/v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
        },
    );
    let strict = kube::api::PatchParams::default().validation_strict();
    let typo = kube::api::Patch::Merge(json!({"spec": {"colour": "green", "size": 4}}));
    let refused = widgets.patch("blue", &strict, &typo).await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400);
            assert!(
                status
                    .message
                    .contains("strict decoding error: unknown field \"spec.colour\""),
                "{status:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let blue = widgets.get("blue").await.unwrap();
    assert_eq!(
        blue.data["spec"]["size"], 3,
        "a refused patch changes nothing"
    );

    let fine = kube::api::Patch::Merge(json!({"spec": {"color": "green", "size": 4}}));
    let patched = widgets.patch("blue", &strict, &fine).await.unwrap();
    assert_eq!(patched.data["spec"], json!({"color": "green", "size": 4}));

    let warn = kube::api::PatchParams::default().validation_warn();
    let patched = widgets.patch("blue", &warn, &typo).await.unwrap();
    assert_eq!(
        patched.data["spec"],
        json!({"color": "green", "size": 4}),
        "Warn drops the unknown field"
    );
}
