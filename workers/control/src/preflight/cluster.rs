//! The cluster group: [`CLUSTER`] (the version), [`CSI_DRIVERS`], [`CONFLICTING_TOOLS`] and
//! [`REGION`]; [`PERMISSIONS`] is in `permissions`.

use super::permissions::check_permissions;
use super::vault::vault_region;
use super::*;
use std::collections::BTreeMap;

/// [`CLUSTER`] first; then [`CSI_DRIVERS`], [`PERMISSIONS`], [`CONFLICTING_TOOLS`] and
/// [`REGION`] concurrently.
pub(super) async fn cluster_checks(targets: &PreflightTargets, selection: Selection) -> Vec<Check> {
    let names = [CSI_DRIVERS, PERMISSIONS, CONFLICTING_TOOLS, REGION];
    let Some(cluster) = &targets.cluster else {
        let why =
            "no cluster credentials found (--kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster)";
        let mut checks = vec![Check::skipped(CLUSTER, why)];
        checks.extend(names.iter().map(|n| Check::skipped(n, why)));
        return checks;
    };
    let reach_fix = format!(
        "check that the API server at {} is up and that the kubeconfig (--kubeconfig, --context) is right",
        cluster.url
    );
    let version = timed(
        CLUSTER,
        targets.timeout,
        &format!("the API server at {}", cluster.url),
        &reach_fix,
        check_version(cluster, &reach_fix),
    )
    .await;
    if version.status != Status::Pass {
        let mut checks = vec![version];
        let why = "the cluster did not pass the version check";
        checks.extend(names.iter().map(|n| Check::skipped(n, why)));
        return checks;
    }
    let t = targets.timeout;
    let api = format!("the API server at {}", cluster.url);
    let (drivers, permissions, tools, region) = tokio::join!(
        timed(
            CSI_DRIVERS,
            t,
            &api,
            &reach_fix,
            check_csi_drivers(targets, cluster)
        ),
        timed(
            PERMISSIONS,
            t,
            &api,
            &reach_fix,
            check_permissions(targets, cluster, selection)
        ),
        timed(
            CONFLICTING_TOOLS,
            t,
            &api,
            &reach_fix,
            check_conflicting_tools(cluster)
        ),
        timed(REGION, t, &api, &reach_fix, check_region(targets, cluster)),
    );
    vec![version, drivers, permissions, tools, region]
}

/// Parses a version's minor number as Kubernetes reports it (`"33"`, `"27+"`).
pub fn parse_minor(minor: &str) -> Option<u32> {
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub(super) async fn check_version(cluster: &KubeTarget, reach_fix: &str) -> Check {
    let info = match cluster.client.apiserver_version().await {
        Ok(info) => info,
        Err(e) if let Some(denied) = stowage_cluster::AccessDenied::from_error(&e) => {
            return Check::fail(
                CLUSTER,
                format!(
                    "the API server at {} refused preflight: {denied}",
                    cluster.url
                ),
                denied.fix(),
            );
        }
        Err(e) => {
            return Check::fail(
                CLUSTER,
                format!(
                    "the API server at {} cannot be reached: {}",
                    cluster.url,
                    chain(&e)
                ),
                reach_fix,
            );
        }
    };
    let supported = (info.major == "1"
        && parse_minor(&info.minor).is_some_and(|m| m >= MIN_KUBERNETES_MINOR))
        || info.major.parse::<u32>().is_ok_and(|m| m > 1);
    let version = format!("{}.{}", info.major, info.minor);
    if supported {
        Check::pass(
            CLUSTER,
            format!(
                "Kubernetes {version} ({}) supports CSI snapshots",
                info.git_version
            ),
        )
    } else {
        Check::fail(
            CLUSTER,
            format!(
                "Kubernetes {version} is older than 1.{MIN_KUBERNETES_MINOR}: CSI volume snapshots are not GA there"
            ),
            format!("upgrade the cluster to Kubernetes 1.{MIN_KUBERNETES_MINOR} or newer"),
        )
    }
}

/// Lists every object of `api`, a page at a time, handing each page to `visit`.
pub(super) async fn for_each_page<K>(
    api: &Api<K>,
    mut visit: impl FnMut(ObjectList<K>),
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        visit(page);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

pub(super) fn namespace_in_scope(scope: Option<&Scope>, namespace: &str) -> bool {
    let Some(scope) = scope else {
        return true;
    };
    let listed = match &scope.namespaces {
        Namespaces::All => true,
        Namespaces::List { names } => names.iter().any(|n| n == namespace),
    };
    listed && !scope.exclude_namespaces.iter().any(|n| n == namespace)
}

pub(super) async fn check_csi_drivers(targets: &PreflightTargets, cluster: &KubeTarget) -> Check {
    let Some(disks) = &targets.disks else {
        return Check::skipped(CSI_DRIVERS, "no disk provider given (--disk-root)");
    };
    if targets.scope.as_ref().is_some_and(|s| !s.include_volumes) {
        return Check::skipped(CSI_DRIVERS, "the instance does not back up volume data");
    }
    let handled = disks.driver().to_owned();
    let mut ours = 0usize;
    let mut foreign: Vec<(String, String)> = Vec::new();
    let mut not_csi: Vec<String> = Vec::new();
    let scope = targets.scope.as_ref();
    let api: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let listed = for_each_page(&api, |page| {
        for pv in page.items {
            let spec = pv.spec.unwrap_or_default();
            let claim_ns = spec
                .claim_ref
                .as_ref()
                .and_then(|c| c.namespace.clone())
                .unwrap_or_default();
            // Unbound volumes belong to no instance; with a scope, only its claims count.
            if scope.is_some() && (claim_ns.is_empty() || !namespace_in_scope(scope, &claim_ns)) {
                continue;
            }
            let name = pv.metadata.name.unwrap_or_default();
            match spec.csi {
                Some(csi) if csi.driver == handled => ours += 1,
                Some(csi) => foreign.push((name, csi.driver)),
                None => not_csi.push(name),
            }
        }
    })
    .await;
    if let Err(e) = listed {
        return cannot_list(CSI_DRIVERS, "persistent volumes", "persistentvolumes", &e);
    }
    if !foreign.is_empty() {
        return foreign_drivers(cluster, &handled, &foreign).await;
    }
    if !not_csi.is_empty() {
        return Check::warn(
            CSI_DRIVERS,
            format!(
                "{ours} volume(s) on {handled}; {} are not CSI volumes and will be skipped by snapshots: {}",
                not_csi.len(),
                first_few(not_csi.iter().map(String::as_str), 5)
            ),
            format!(
                "to back their data up, move them to a storage class of {handled}; the resources are still backed up"
            ),
        );
    }
    Check::pass(CSI_DRIVERS, format!("{ours} volume(s), all on {handled}"))
}

pub(super) async fn check_conflicting_tools(cluster: &KubeTarget) -> Check {
    let mut found: Vec<String> = Vec::new();
    let mut fixes: BTreeSet<&str> = BTreeSet::new();
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut velero_crds: Vec<String> = Vec::new();
    let listed = for_each_page(&crds, |page| {
        velero_crds.extend(
            page.items
                .into_iter()
                .filter_map(|crd| crd.metadata.name)
                .filter(|name| name.ends_with(".velero.io")),
        );
    })
    .await;
    if let Err(e) = listed {
        return cannot_list(
            CONFLICTING_TOOLS,
            "CustomResourceDefinitions",
            "customresourcedefinitions",
            &e,
        );
    }
    if !velero_crds.is_empty() {
        found.push(format!(
            "Velero's CRDs ({})",
            first_few(velero_crds.iter().map(String::as_str), 3)
        ));
        fixes.insert("uninstall Velero (`velero uninstall`)");
    }
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    for (namespace, tool, fix) in [
        ("velero", "Velero", "uninstall Velero (`velero uninstall`)"),
        (
            "kasten-io",
            "Kasten K10",
            "uninstall Kasten K10 (`helm uninstall k10 -n kasten-io`)",
        ),
    ] {
        match namespaces.get_opt(namespace).await {
            Ok(Some(_)) => {
                found.push(format!("{tool}'s namespace {namespace:?}"));
                fixes.insert(fix);
            }
            Ok(None) => {}
            Err(e) => {
                return Check::fail(
                    CONFLICTING_TOOLS,
                    format!("cannot read namespace {namespace:?}: {}", chain(&e)),
                    "let the identity running preflight get namespaces",
                );
            }
        }
    }
    if found.is_empty() {
        Check::pass(
            CONFLICTING_TOOLS,
            "no Velero CRDs or namespace, no Kasten namespace",
        )
    } else {
        Check::fail(
            CONFLICTING_TOOLS,
            format!("another backup tool is installed: {}", found.join(", ")),
            format!(
                "{}, or make sure it never backs up what Stowage does: two tools snapshotting the same volumes and running hooks at once can fail both",
                fixes.into_iter().collect::<Vec<_>>().join("; ")
            ),
        )
    }
}

pub(super) async fn check_region(targets: &PreflightTargets, cluster: &KubeTarget) -> Check {
    let mut known: Vec<(&str, String)> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    match &targets.vault {
        Some(vault) => match vault_region(vault).await {
            Ok(Some(region)) => known.push(("vault", region)),
            Ok(None) => unknown.push("the vault's (no --vault-region and no vault.json)".into()),
            Err(e) => unknown.push(format!("the vault's ({e})")),
        },
        None => unknown.push("the vault's (no --vault)".into()),
    }
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let mut regions: BTreeSet<String> = BTreeSet::new();
    let mut unlabelled = 0usize;
    let listed = for_each_page(&nodes, |page| {
        for node in page.items {
            match node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REGION_LABEL))
            {
                Some(region) => {
                    regions.insert(region.clone());
                }
                None => unlabelled += 1,
            }
        }
    })
    .await;
    if let Err(e) = listed {
        return cannot_list(REGION, "nodes", "nodes", &e);
    }
    if regions.len() > 1 {
        return Check::fail(
            REGION,
            format!(
                "the cluster's nodes are in {} regions ({})",
                regions.len(),
                regions.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            "back up a cluster whose nodes share one region, with a vault and snapshot location in that region",
        );
    }
    match regions.pop_first() {
        Some(region) => known.push(("cluster", region)),
        None if unlabelled > 0 => {
            unknown.push(format!(
                "the cluster's (no node has the {REGION_LABEL} label)"
            ));
        }
        None => unknown.push("the cluster's (no nodes)".into()),
    }
    match targets.disks.as_ref().map(|d| d.location_region()) {
        Some(Some(region)) => known.push(("snapshot location", region.to_owned())),
        Some(None) => {
            unknown.push("the snapshot location's (the disk provider does not say)".into());
        }
        None => unknown.push("the snapshot location's (no --disk-root)".into()),
    }
    let described = known
        .iter()
        .map(|(what, region)| format!("{what}: {region}"))
        .collect::<Vec<_>>()
        .join(", ");
    if known.len() < 2 {
        return Check::skipped(
            REGION,
            format!(
                "too little to compare ({}); unknown: {}",
                if described.is_empty() {
                    "nothing known"
                } else {
                    &described
                },
                unknown.join(", ")
            ),
        );
    }
    let first = &known[0].1;
    if known.iter().all(|(_, r)| r == first) {
        let mut detail = format!("all in {first} ({described})");
        if !unknown.is_empty() {
            detail.push_str(&format!("; unknown: {}", unknown.join(", ")));
        }
        Check::pass(REGION, detail)
    } else {
        let cluster_region = known
            .iter()
            .find(|(w, _)| *w == "cluster")
            .map_or(first.as_str(), |(_, r)| r.as_str());
        Check::fail(
            REGION,
            format!("not in one region: {described}"),
            format!(
                "keep the vault, the cluster and the snapshot location in one region (the cluster's is {cluster_region}): \
                 create the vault there and point --vault at it, or configure the disk provider's snapshot location there; \
                 across regions every backup and restore pays cross-region transfer and a regional outage takes both sides"
            ),
        )
    }
}

/// The check `name` failed because listing `what` (RBAC resource `resource`) was refused or
/// failed.
fn cannot_list(name: &str, what: &str, resource: &str, error: &kube::Error) -> Check {
    if let Some(denied) = stowage_cluster::AccessDenied::from_error(error) {
        return Check::fail(name, format!("cannot list {what}: {denied}"), denied.fix());
    }
    Check::fail(
        name,
        format!("cannot list {what}: {}", chain(error)),
        format!("let the identity running preflight list {resource}"),
    )
}

/// Volumes of CSI drivers the disk provider does not handle. A driver with a
/// VolumeSnapshotClass gets CSI VolumeSnapshots (workers run with `--disk-provider csi`): the
/// operational tier only, since the vault stages read snapshot data only through the disk
/// provider (a data mover that reads other drivers' snapshots is not built). A driver with no
/// class gets nothing: its data would not be backed up at all.
async fn foreign_drivers(
    cluster: &KubeTarget,
    handled: &str,
    foreign: &[(String, String)],
) -> Check {
    let classes = match stowage_cluster::csi::SnapshotClasses::load(&cluster.client).await {
        Ok(classes) => classes,
        Err(e) => {
            return Check::fail(
                CSI_DRIVERS,
                format!("cannot list VolumeSnapshotClasses: {e}"),
                "let the identity running preflight list volumesnapshotclasses.snapshot.storage.k8s.io",
            );
        }
    };
    let mut drivers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (pv, driver) in foreign {
        drivers
            .entry(driver.as_str())
            .or_default()
            .push(pv.as_str());
    }
    let describe = |list: &[(&str, &Vec<&str>)]| {
        list.iter()
            .map(|(driver, pvs)| format!("{driver}: {}", first_few(pvs.iter().copied(), 5)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let (with_class, without): (Vec<_>, Vec<_>) = drivers
        .iter()
        .map(|(d, pvs)| (*d, pvs))
        .partition(|(driver, _)| classes.choose(driver).is_some());
    if !without.is_empty() {
        let names: Vec<&str> = without.iter().map(|(d, _)| *d).collect();
        return Check::fail(
            CSI_DRIVERS,
            format!(
                "volume(s) of CSI drivers the disk provider does not handle ({handled} only) and with no VolumeSnapshotClass, so their data would not be backed up: {}",
                describe(&without)
            ),
            if classes.crds_missing {
                format!(
                    "install the snapshot.storage.k8s.io CRDs and the external-snapshotter, create a VolumeSnapshotClass for {} and run the snapshot workers with --disk-provider csi (operational tier only); or move those volumes to a storage class of {handled}, or leave their namespaces out of the instance's scope (exclude_namespaces)",
                    names.join(", ")
                )
            } else {
                format!(
                    "create a VolumeSnapshotClass with driver: {} and run the snapshot workers with --disk-provider csi (operational tier only); or move those volumes to a storage class of {handled}, or leave their namespaces out of the instance's scope (exclude_namespaces)",
                    names.join(", ")
                )
            },
        );
    }
    Check::warn(
        CSI_DRIVERS,
        format!(
            "volume(s) of CSI drivers other than {handled} get the operational tier only: CSI VolumeSnapshots (snapshot workers with --disk-provider csi), never copied to the vault tier, since the vault stages read only {handled} volumes here: {}",
            describe(&with_class)
        ),
        format!(
            "to have their data in the vault tier (and the geo copy), move them to a storage class of {handled}; their operational snapshots and every resource are backed up either way"
        ),
    )
}
