//! Who may talk to the sandbox, and what they may do: the CA and server certificate it serves
//! HTTPS with, a bearer token per identity, the kubeconfig each identity uses, and the
//! authorizer that checks every request against the stored RBAC objects (see `rbac`).
//!
//! Identities ([`Identity`]): [`ADMIN`] (user `sandbox-admin` in `system:masters`, allowed
//! everything, as a cluster's admin kubeconfig is), and one per ServiceAccount that
//! `infra/k8s/base/rbac.yaml` defines, in the fleet namespace [`FLEET_NAMESPACE`] (user
//! `system:serviceaccount:<ns>:<name>`, groups `system:serviceaccounts`,
//! `system:serviceaccounts:<ns>`, `system:authenticated`). A service account's token
//! authenticates whether or not its ServiceAccount object exists; what it may do comes only
//! from the Roles and bindings stored in the sandbox, so until someone applies `rbac.yaml` it may
//! do nothing but discovery, as on a real cluster.
//!
//! Requests are mapped to attributes the way the API server's `RequestInfoFactory` does
//! ([`RequestAttributes::from_request`]): verb from method and path (`get`, `list`, `watch`,
//! `create`, `update`, `patch`, `delete`, `deletecollection`), API group, resource,
//! subresource, namespace and name. Discovery, `/version` and `/openapi*` are allowed to every
//! authenticated user (what `system:discovery` grants `system:authenticated`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, Method, header};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};

use crate::SandboxError;
use crate::error::ApiError;
use crate::rbac::{AccessRequest, ResourceAttributes};

/// The identity with every permission (`system:masters`).
pub const ADMIN: &str = "admin";
/// The namespace the fleet's service accounts live in (`infra/k8s/base/kustomization.yaml`).
pub const FLEET_NAMESPACE: &str = "stowage";
/// The fleet's RBAC, as shipped: its ServiceAccounts become the sandbox's identities, and
/// [`fleet_rbac`] hands its objects to whoever applies them.
const FLEET_RBAC_YAML: &str = include_str!("../../../infra/k8s/base/rbac.yaml");

/// Non-resource paths every authenticated user may `get` (Kubernetes' `system:discovery`).
const DISCOVERY_PATHS: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/version/",
    "/openapi",
    "/openapi/*",
];

/// Someone the sandbox knows by a bearer token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Short name: [`ADMIN`] or the ServiceAccount's name (`stowage-snapshot`, …).
    pub name: String,
    /// The user name the authorizer sees.
    pub user: String,
    /// The groups the authorizer sees.
    pub groups: Vec<String>,
    token: String,
}

impl Identity {
    fn new(name: &str, user: String, groups: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            user,
            groups,
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    fn service_account(namespace: &str, name: &str) -> Self {
        Self::new(
            name,
            format!("system:serviceaccount:{namespace}:{name}"),
            vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        )
    }

    /// The bearer token this identity authenticates with.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// The fleet's RBAC objects from `infra/k8s/base/rbac.yaml`, namespaced objects placed in
/// [`FLEET_NAMESPACE`] (what `kubectl apply -n stowage -f rbac.yaml` creates).
pub fn fleet_rbac() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(FLEET_RBAC_YAML)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &Value| v.is_object())
        .map(|mut object| {
            let namespaced = matches!(
                object["kind"].as_str(),
                Some("ServiceAccount" | "Role" | "RoleBinding")
            );
            if namespaced && object["metadata"]["namespace"].is_null() {
                object["metadata"]["namespace"] = json!(FLEET_NAMESPACE);
            }
            object
        })
        .collect()
}

/// Applies [`fleet_rbac`] through `client` (creating the namespace [`FLEET_NAMESPACE`] first),
/// as `kubectl create namespace stowage; kubectl apply -n stowage -f rbac.yaml` would: the
/// client's identity needs the right to (the admin has). Objects that exist are left as they are.
pub async fn apply_fleet_rbac(client: &kube::Client) -> Result<(), kube::Error> {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let mut objects = vec![json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": FLEET_NAMESPACE}})];
    objects.extend(fleet_rbac());
    for object in objects {
        let (api_version, kind) = (
            object["apiVersion"].as_str().unwrap_or_default(),
            object["kind"].as_str().unwrap_or_default(),
        );
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let plural = format!("{}s", kind.to_lowercase());
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            &plural,
        );
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let dynamic: DynamicObject =
            serde_json::from_value(object).map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams::default(), &dynamic).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The CA, the server's TLS configuration and the identities of one running sandbox.
pub(crate) struct Credentials {
    ca_pem: String,
    ca_der: Vec<u8>,
    pub server_config: Arc<rustls::ServerConfig>,
    identities: Vec<Identity>,
}

impl Credentials {
    /// A new CA, a server certificate it signs for `localhost`, `127.0.0.1` and the address
    /// served on, and a fresh token per identity.
    pub fn generate(addr: SocketAddr) -> Result<Self, SandboxError> {
        let tls = |e: rcgen::Error| SandboxError::Tls(e.to_string());
        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "stowage-sandbox-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "stowage-sandbox");
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if !addr.ip().is_unspecified() && !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
        params.subject_alt_names = vec![SanType::DnsName(
            "localhost".try_into().expect("a valid DNS name"),
        )];
        params
            .subject_alt_names
            .extend(ips.into_iter().map(SanType::IpAddress));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let server_cert = params.signed_by(&server_key, &issuer).map_err(tls)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(vec![server_cert.der().clone()], key)
            })
            .map_err(|e| SandboxError::Tls(e.to_string()))?;
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut identities = vec![Identity::new(
            ADMIN,
            "sandbox-admin".to_owned(),
            vec![
                "system:masters".to_owned(),
                "system:authenticated".to_owned(),
            ],
        )];
        identities.extend(
            fleet_rbac()
                .iter()
                .filter(|o| o["kind"] == "ServiceAccount")
                .filter_map(|o| {
                    let ns = o["metadata"]["namespace"].as_str()?;
                    Some(Identity::service_account(
                        ns,
                        o["metadata"]["name"].as_str()?,
                    ))
                }),
        );
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            server_config: Arc::new(server_config),
            identities,
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER-encoded.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    pub fn identity(&self, name: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.name == name)
    }

    /// The identity whose token the `Authorization: Bearer` header carries.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<&Identity> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        // Compare against every token, so the time taken does not tell which one matched.
        let mut found = None;
        for identity in &self.identities {
            if constant_time_eq(identity.token.as_bytes(), token.as_bytes()) {
                found = Some(identity);
            }
        }
        found
    }

    /// A kubeconfig for `identities` (one context each, named `sandbox-<identity>`), the
    /// first one current.
    pub fn kubeconfig(&self, server: &str, identities: &[&Identity]) -> Value {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let context = |i: &Identity| format!("sandbox-{}", i.name);
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "sandbox", "cluster": {
                "server": server, "certificate-authority-data": ca}}],
            "users": identities.iter().map(|i| json!({
                "name": context(i), "user": {"token": i.token}})).collect::<Vec<_>>(),
            "contexts": identities.iter().map(|i| json!({
                "name": context(i),
                "context": {"cluster": "sandbox", "user": context(i), "namespace": "default"}})).collect::<Vec<_>>(),
            "current-context": identities.first().map(|i| context(i)).unwrap_or_default(),
        })
    }

    /// Writes `<identity>.kubeconfig` for every identity and `sandbox.kubeconfig` holding all
    /// their contexts (current: the admin), readable by the owner only.
    pub fn write_kubeconfigs(
        &self,
        server: &str,
        dir: &Path,
    ) -> Result<BTreeMap<String, PathBuf>, SandboxError> {
        let io = |path: &Path, source| SandboxError::Kubeconfig {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut written = BTreeMap::new();
        let all: Vec<&Identity> = self.identities.iter().collect();
        let mut files: Vec<(PathBuf, Value)> = vec![(
            dir.join("sandbox.kubeconfig"),
            self.kubeconfig(server, &all),
        )];
        for identity in &self.identities {
            let path = dir.join(format!("{}.kubeconfig", identity.name));
            written.insert(identity.name.clone(), path.clone());
            files.push((path, self.kubeconfig(server, &[identity])));
        }
        for (path, config) in files {
            let text = serde_yaml::to_string(&config).expect("JSON values serialize as YAML");
            write_private(&path, text.as_bytes()).map_err(|e| io(&path, e))?;
        }
        Ok(written)
    }
}

/// Writes a file only its owner may read (it holds a token).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request asks, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestAttributes {
    /// A request on a resource (or a collection of them).
    Resource {
        verb: String,
        attributes: ResourceAttributes,
    },
    /// Anything else (discovery, `/version`, `/openapi/v2`): the verb is the method.
    NonResource { verb: String, path: String },
}

impl RequestAttributes {
    /// Reads the attributes of a request as Kubernetes' `RequestInfoFactory` does.
    pub fn from_request(method: &Method, path: &str, query: Option<&str>) -> Self {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let non_resource = || Self::NonResource {
            verb: method.as_str().to_lowercase(),
            path: path.to_owned(),
        };
        let (group, mut parts) = match segments.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest.to_vec()),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest.to_vec()),
            _ => return non_resource(),
        };
        let mut verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => return non_resource(),
        }
        .to_owned();
        // The deprecated `/watch/` path prefix.
        if parts.first() == Some(&"watch") {
            parts.remove(0);
            verb = "watch".to_owned();
        }
        let mut namespace = String::new();
        if parts.first() == Some(&"namespaces") && parts.len() > 1 {
            namespace = parts[1].to_owned();
            // `namespaces/<ns>/<resource>...`, unless it is a namespace's own subresource.
            if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
                parts.drain(..2);
            }
        }
        let (resource, name, subresource) = match parts.as_slice() {
            [resource] => (*resource, "", ""),
            [resource, name] => (*resource, *name, ""),
            [resource, name, sub, ..] => (*resource, *name, *sub),
            [] => return non_resource(),
        };
        if name.is_empty() {
            let watching = query.is_some_and(|q| {
                q.split('&')
                    .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
            });
            verb = match verb.as_str() {
                "get" if watching => "watch",
                "get" => "list",
                "delete" => "deletecollection",
                other => other,
            }
            .to_owned();
        }
        Self::Resource {
            verb,
            attributes: ResourceAttributes {
                namespace,
                group: group.to_owned(),
                resource: resource.to_owned(),
                subresource: subresource.to_owned(),
                name: name.to_owned(),
            },
        }
    }

    /// The review-shaped request for `identity`, for [`crate::rbac::evaluate`].
    pub fn access_request(&self, identity: &Identity) -> AccessRequest {
        let (verb, resource, path) = match self {
            Self::Resource { verb, attributes } => (verb, Some(attributes.clone()), None),
            Self::NonResource { verb, path } => (verb, None, Some(path.clone())),
        };
        AccessRequest {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            verb: verb.clone(),
            resource,
            path,
        }
    }

    /// Whether every authenticated user may do this (`system:discovery`).
    pub fn is_discovery(&self) -> bool {
        match self {
            Self::NonResource { verb, path } => {
                verb == "get"
                    && DISCOVERY_PATHS.iter().any(|p| match p.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => path == p,
                    })
            }
            Self::Resource { .. } => false,
        }
    }

    /// The 403 the API server answers when `user` may not do this.
    pub fn forbidden(&self, user: &str) -> ApiError {
        match self {
            Self::NonResource { verb, path } => ApiError::forbidden(
                format!("forbidden: User {user:?} cannot {verb} path {path:?}"),
                None,
            ),
            Self::Resource {
                verb,
                attributes: a,
            } => {
                let resource = if a.subresource.is_empty() {
                    a.resource.clone()
                } else {
                    format!("{}/{}", a.resource, a.subresource)
                };
                let scope = if a.namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace {:?}", a.namespace)
                };
                let reason = format!(
                    "User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
                    a.group
                );
                let qualified = if a.group.is_empty() {
                    a.resource.clone()
                } else {
                    format!("{}.{}", a.resource, a.group)
                };
                let message = if a.name.is_empty() {
                    format!("{qualified} is forbidden: {reason}")
                } else {
                    format!("{qualified} {:?} is forbidden: {reason}", a.name)
                };
                let mut details = json!({"name": a.name, "kind": a.resource});
                if !a.group.is_empty() {
                    details["group"] = json!(a.group);
                }
                ApiError::forbidden(message, Some(details))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, query: Option<&str>) -> (String, ResourceAttributes) {
        match RequestAttributes::from_request(&method, path, query) {
            RequestAttributes::Resource { verb, attributes } => (verb, attributes),
            other => panic!("{path}: expected a resource request, got {other:?}"),
        }
    }

    fn ra(ns: &str, group: &str, resource: &str, sub: &str, name: &str) -> ResourceAttributes {
        ResourceAttributes {
            namespace: ns.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
        }
    }

    #[test]
    fn requests_map_to_verbs_and_resources_as_the_api_server_does() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                "list",
                ra("", "", "namespaces", "", ""),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/shop",
                None,
                "get",
                ra("shop", "", "namespaces", "", "shop"),
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/shop/status",
                None,
                "update",
                ra("shop", "", "namespaces", "status", "shop"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/shop/configmaps",
                Some("watch=true&resourceVersion=3"),
                "watch",
                ra("shop", "", "configmaps", "", ""),
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/shop/configmaps",
                None,
                "watch",
                ra("shop", "", "configmaps", "", ""),
            ),
            (
                Method::POST,
                "/apis/apps/v1/namespaces/shop/deployments",
                None,
                "create",
                ra("shop", "apps", "deployments", "", ""),
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/shop/deployments/web",
                None,
                "patch",
                ra("shop", "apps", "deployments", "", "web"),
            ),
            (
                Method::DELETE,
                "/apis/apps/v1/namespaces/shop/deployments/web",
                None,
                "delete",
                ra("shop", "apps", "deployments", "", "web"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/shop/pods",
                None,
                "deletecollection",
                ra("shop", "", "pods", "", ""),
            ),
            (
                Method::GET,
                "/apis/apps/v1/deployments",
                None,
                "list",
                ra("", "apps", "deployments", "", ""),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/shop/pods/db-0/exec",
                None,
                "create",
                ra("shop", "", "pods", "exec", "db-0"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/shop/pods/db-0/exec",
                Some("command=ls"),
                "get",
                ra("shop", "", "pods", "exec", "db-0"),
            ),
            (
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                None,
                "create",
                ra("", "authorization.k8s.io", "subjectaccessreviews", "", ""),
            ),
        ];
        for (method, path, query, verb, expected) in cases {
            let (got_verb, got) = attrs(method, path, query);
            assert_eq!((got_verb.as_str(), &got), (verb, &expected), "{path}");
        }
        for path in [
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/openapi/v2",
        ] {
            let request = RequestAttributes::from_request(&Method::GET, path, None);
            assert!(request.is_discovery(), "{path}: {request:?}");
        }
        assert!(!RequestAttributes::from_request(&Method::GET, "/metrics", None).is_discovery());
        assert!(!RequestAttributes::from_request(&Method::POST, "/version", None).is_discovery());
    }

    #[test]
    fn forbidden_messages_are_worded_like_the_api_server() {
        let user = "system:serviceaccount:stowage:stowage-snapshot";
        let cases = [
            (
                Method::POST,
                "/api/v1/namespaces/shop/configmaps",
                "configmaps is forbidden: User \"system:serviceaccount:stowage:stowage-snapshot\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"shop\"",
            ),
            (
                Method::DELETE,
                "/apis/apps/v1/namespaces/shop/deployments/web",
                "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:stowage:stowage-snapshot\" cannot delete resource \"deployments\" in API group \"apps\" in the namespace \"shop\"",
            ),
            (
                Method::GET,
                "/api/v1/nodes",
                "nodes is forbidden: User \"system:serviceaccount:stowage:stowage-snapshot\" cannot list resource \"nodes\" in API group \"\" at the cluster scope",
            ),
            (
                Method::GET,
                "/metrics",
                "forbidden: User \"system:serviceaccount:stowage:stowage-snapshot\" cannot get path \"/metrics\"",
            ),
        ];
        for (method, path, message) in cases {
            let error = RequestAttributes::from_request(&method, path, None).forbidden(user);
            assert_eq!(error.code.as_u16(), 403);
            assert_eq!(error.reason, "Forbidden");
            assert_eq!(error.message, message);
        }
    }

    #[test]
    fn fleet_identities_come_from_rbac_yaml() {
        let credentials = Credentials::generate(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let names: Vec<&str> = credentials
            .identities()
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        for name in [
            ADMIN,
            "stowage-snapshot",
            "stowage-restore",
            "stowage-vault",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        let snapshot = credentials.identity("stowage-snapshot").unwrap();
        assert_eq!(
            snapshot.user,
            "system:serviceaccount:stowage:stowage-snapshot"
        );
        assert_eq!(
            snapshot.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:stowage",
                "system:authenticated"
            ]
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", snapshot.token()).parse().unwrap(),
        );
        assert_eq!(
            credentials.authenticate(&headers).unwrap().name,
            "stowage-snapshot"
        );
        headers.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(credentials.authenticate(&headers).is_none());
        let tokens: std::collections::BTreeSet<&str> = credentials
            .identities()
            .iter()
            .map(Identity::token)
            .collect();
        assert_eq!(
            tokens.len(),
            names.len(),
            "every identity has its own token"
        );
    }
}
