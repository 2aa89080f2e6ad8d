//! The ARM client against the REST-reference stand-in: every long-running-operation style,
//! throttling, failures, permissions and the refusals that name their fix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stowage_azure::arm::{COMPUTE_API_VERSION, refuse_oversized};
use stowage_azure::permissions::{SNAPSHOT_GROUP_ACTIONS, check_access};
use stowage_azure::{Access, ArmClient, AzureError, NewDisk, ResourceId};

use crate::arm_server::{ArmServer, LroStyle, PRINCIPAL, SUBSCRIPTION, TOKEN};
use crate::harness::{StaticToken, client, settings};

const GIB: u64 = 1 << 30;

fn tags() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("stowage.io/instance".to_owned(), "prod-apps".to_owned()),
        ("stowage.io/recovery-point".to_owned(), "rp-1".to_owned()),
    ])
}

/// The whole snapshot life: incremental snapshot, read SAS, end of access, delete, in one
/// long-running-operation style.
async fn snapshot_lifecycle(style: LroStyle) {
    let server = ArmServer::start().await;
    server.lock().style = style;
    server.lock().polls = 2;
    let disk_id = server.add_disk("MC_rg_aks_westeurope", "pvc-1", 64 * GIB, "AllowAll");
    let arm = client(&server);

    let disk = arm
        .get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap();
    assert_eq!(disk.size_bytes(), Some(64 * GIB));
    let snapshot = arm
        .create_incremental_snapshot("stowage-snapshots", "stowage-abc", &disk, &tags())
        .await
        .unwrap();
    assert_eq!(
        snapshot.properties.provisioning_state.as_deref(),
        Some("Succeeded"),
        "{style:?}"
    );
    assert_eq!(snapshot.properties.incremental, Some(true));
    assert_eq!(snapshot.tags, tags());
    assert_eq!(snapshot.location, "westeurope");
    let put = &server.seen("PUT", "/snapshots/stowage-abc")[0];
    assert_eq!(
        put.body["properties"]["creationData"],
        json!({"createOption": "Copy", "sourceResourceId": disk_id})
    );
    assert_eq!(put.body["properties"]["incremental"], json!(true));

    let id = ResourceId::snapshot(SUBSCRIPTION, "stowage-snapshots", "stowage-abc");
    let sas = arm
        .grant_access(&id, Access::Read, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(sas.expose().as_str().contains("sig=SECRETSIG"));
    assert!(!sas.to_string().contains("SECRETSIG"));
    assert_eq!(
        server
            .lock()
            .grants
            .get(&id.to_string().to_lowercase())
            .map(String::as_str),
        Some("Read")
    );
    let begin = &server.seen("POST", "/stowage-abc/beginGetAccess")[0];
    assert_eq!(
        begin.body,
        json!({"access": "Read", "durationInSeconds": 3600})
    );

    arm.revoke_access(&id).await.unwrap();
    assert!(
        server.lock().grants.is_empty(),
        "{style:?}: endGetAccess did not finish"
    );

    arm.delete(&id).await.unwrap();
    let gone = arm.get(&id).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    assert!(gone.to_string().contains("ResourceNotFound"), "{gone}");
    // Deleting again, and ending access of what is gone, are no-ops.
    arm.delete(&id).await.unwrap();
    arm.revoke_access(&id).await.unwrap();

    // Every request: the token, the pinned api-version, a fresh client request id.
    let requests = server.lock().requests.clone();
    let mut ids = std::collections::HashSet::new();
    for r in &requests {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
        assert!(
            r.query
                .contains(&format!("api-version={COMPUTE_API_VERSION}")),
            "{} {}?{}",
            r.method,
            r.path,
            r.query
        );
        assert!(ids.insert(r.client_request_id.clone().expect("x-ms-client-request-id")));
    }
    if style != LroStyle::BodyOnly {
        assert!(
            requests.iter().any(|r| r.path.contains("/operations/")),
            "{style:?}: the operations were never polled"
        );
    }
}

#[tokio::test]
async fn snapshots_through_azure_async_operation() {
    snapshot_lifecycle(LroStyle::AsyncOperation).await;
}

#[tokio::test]
async fn snapshots_through_location() {
    snapshot_lifecycle(LroStyle::LocationOnly).await;
}

#[tokio::test]
async fn snapshots_answered_with_the_body_only() {
    snapshot_lifecycle(LroStyle::BodyOnly).await;
}

#[tokio::test]
async fn upload_disks_for_hydration_and_copies_for_operational_restores() {
    let server = ArmServer::start().await;
    let disk_id = server.add_disk("MC_rg", "pvc-2", 32 * GIB, "AllowAll");
    let arm = client(&server);
    let new = NewDisk {
        location: "westeurope".into(),
        sku: Some("StandardSSD_LRS".into()),
        tags: BTreeMap::from([("stowage.io/restore".to_owned(), "r-1".to_owned())]),
    };

    // Not a fixed VHD's size: refused by ARM, a permanent error naming the disk.
    let err = arm
        .create_upload_disk("stowage-staging", "bad", 32 * GIB, &new)
        .await
        .unwrap_err();
    assert!(
        (err.status(), err.code()) == (Some(400), Some("InvalidParameter")),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("/disks/bad"), "{err}");

    let disk = arm
        .create_upload_disk("stowage-staging", "staging-1", 32 * GIB + 512, &new)
        .await
        .unwrap();
    assert_eq!(disk.properties.disk_state.as_deref(), Some("ReadyToUpload"));
    assert_eq!(
        server.seen("PUT", "/disks/staging-1")[0].body["sku"],
        json!({"name": "StandardSSD_LRS"})
    );
    let id = ResourceId::disk(SUBSCRIPTION, "stowage-staging", "staging-1");
    arm.grant_access(&id, Access::Write, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        arm.get(&id).await.unwrap().properties.disk_state.as_deref(),
        Some("ActiveUpload")
    );
    arm.revoke_access(&id).await.unwrap();
    assert_eq!(
        arm.get(&id).await.unwrap().properties.disk_state.as_deref(),
        Some("Unattached")
    );
    // Write access to a disk that is not an upload disk: ARM's 409, not retried.
    let err = arm
        .grant_access(&id, Access::Write, Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(err.status() == Some(409), "{err}");
    assert!(!err.is_transient(), "{err}");

    let source = arm
        .get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap();
    let snapshot = arm
        .create_incremental_snapshot("snaps", "s-1", &source, &tags())
        .await
        .unwrap();
    let copy = arm
        .create_disk_from_snapshot("restored", "pvc-2-restored", &snapshot, &new)
        .await
        .unwrap();
    assert_eq!(copy.size_bytes(), Some(32 * GIB));
    arm.delete(&id).await.unwrap();
    assert!(arm.get(&id).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after() {
    let server = ArmServer::start().await;
    let disk_id = server.add_disk("MC_rg", "pvc-1", GIB, "AllowAll");
    {
        let mut s = server.lock();
        s.retry_after = 1;
        s.throttle.extend([429, 503]);
    }
    let arm = client(&server);
    let started = Instant::now();
    arm.get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap();
    let waited = started.elapsed();
    // Two waits of at least Retry-After (1 s) each, though the retry policy's own delay is 10 ms.
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");
    assert_eq!(server.seen("GET", "/disks/pvc-1").len(), 3);

    // Throttled past the retry budget: a transient error that says what to do.
    server.lock().retry_after = 0;
    server.lock().throttle.extend([429; 10]);
    let err = arm
        .get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("TooManyRequests") && err.to_string().contains("throttling"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_operation_is_reported_with_its_code() {
    for style in [LroStyle::AsyncOperation, LroStyle::LocationOnly] {
        let server = ArmServer::start().await;
        server.lock().style = style;
        let disk_id = server.add_disk("MC_rg", "pvc-1", GIB, "AllowAll");
        let arm = client(&server);
        let disk = arm
            .get(&ResourceId::parse(&disk_id).unwrap())
            .await
            .unwrap();
        server.lock().fail_next = Some((
            "QuotaExceeded".into(),
            "Operation results in exceeding quota limits of snapshots.".into(),
        ));
        let err = arm
            .create_incremental_snapshot("snaps", "s-1", &disk, &tags())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("QuotaExceeded") && text.contains("/snapshots/s-1"),
            "{style:?}: {text}"
        );
        assert!(!err.is_transient(), "{style:?}: {text}");
    }
}

#[tokio::test]
async fn a_missing_role_names_the_action_role_and_scope() {
    let server = ArmServer::start().await;
    let disk_id = server.add_disk("MC_rg", "pvc-1", GIB, "AllowAll");
    server
        .lock()
        .denied
        .push("Microsoft.Compute/snapshots/write".into());
    let arm = client(&server);
    let disk = arm
        .get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap();
    let err = arm
        .create_incremental_snapshot("snaps", "s-1", &disk, &tags())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(text.contains("AuthorizationFailed"), "{text}");
    assert!(
        text.contains(&format!(
            "az role assignment create --assignee-object-id {PRINCIPAL} --assignee-principal-type ServicePrincipal --role \"Disk Snapshot Contributor\" --scope /subscriptions/{SUBSCRIPTION}/resourceGroups/snaps"
        )),
        "{text}"
    );

    // A missing read on the source disk points at Disk Backup Reader.
    server
        .lock()
        .denied
        .push("Microsoft.Compute/disks/read".into());
    let text = arm
        .get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("--role \"Disk Backup Reader\" --scope /subscriptions/")
            && text.contains("/resourceGroups/MC_rg"),
        "{text}"
    );
}

#[tokio::test]
async fn private_disks_are_refused_before_asking_for_access() {
    let server = ArmServer::start().await;
    let arm = client(&server);
    for policy in ["AllowPrivate", "DenyAll"] {
        let disk_id = server.add_disk("MC_rg", &format!("private-{policy}"), GIB, policy);
        let id = ResourceId::parse(&disk_id).unwrap();
        let err = arm
            .grant_access(&id, Access::Read, Duration::from_secs(60))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AzureError::Refused { .. }), "{text}");
        assert!(text.contains(&disk_id) && text.contains(policy), "{text}");
        assert!(
            text.contains(&format!(
                "az disk update --ids {disk_id} --network-access-policy AllowAll"
            )),
            "{text}"
        );
    }
    assert!(
        server.seen("POST", "/beginGetAccess").is_empty(),
        "beginGetAccess was asked for a private disk"
    );

    let big = server.add_disk("MC_rg", "huge", 64 * GIB, "AllowAll");
    let id = ResourceId::parse(&big).unwrap();
    let disk = arm.get(&id).await.unwrap();
    let err = refuse_oversized(&id, &disk, 32 * GIB)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("64 GiB is over the vault tier's limit of 32 GiB") && err.contains(&big),
        "{err}"
    );
    refuse_oversized(&id, &disk, 64 * GIB).unwrap();
}

#[tokio::test]
async fn preflight_reads_every_page_of_permissions() {
    let server = ArmServer::start().await;
    let scope = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/snaps");
    server.lock().permissions.insert(
        scope.to_lowercase(),
        vec![
            json!({"actions": ["Microsoft.Compute/snapshots/read"], "notActions": []}),
            json!({"actions": ["Microsoft.Compute/snapshots/*"], "notActions": ["Microsoft.Compute/snapshots/delete"], "dataActions": [], "notDataActions": []}),
        ],
    );
    let arm = client(&server);
    let check = check_access(&arm, &scope, SNAPSHOT_GROUP_ACTIONS)
        .await
        .unwrap();
    assert_eq!(
        check.missing,
        vec!["Microsoft.Compute/snapshots/delete".to_owned()]
    );
    assert_eq!(
        check.fix,
        vec![format!(
            "az role assignment create --assignee <the workers' identity> --role \"Disk Snapshot Contributor\" --scope {scope}"
        )]
    );
    assert_eq!(
        server
            .seen("GET", "/providers/Microsoft.Authorization/permissions")
            .len(),
        2,
        "nextLink not followed"
    );

    let empty = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/other");
    let check = check_access(&arm, &empty, SNAPSHOT_GROUP_ACTIONS)
        .await
        .unwrap();
    assert_eq!(check.missing.len(), SNAPSHOT_GROUP_ACTIONS.len());
}

#[tokio::test]
async fn a_refused_token_and_a_remote_plain_http_endpoint() {
    let server = ArmServer::start().await;
    let disk_id = server.add_disk("MC_rg", "pvc-1", GIB, "AllowAll");

    #[derive(Debug)]
    struct WrongToken;
    #[async_trait::async_trait]
    impl azure_core::credentials::TokenCredential for WrongToken {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            Ok(azure_core::credentials::AccessToken::new(
                azure_core::credentials::Secret::new("expired"),
                azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
            ))
        }
    }
    let arm = ArmClient::new(settings(&server), Arc::new(WrongToken)).unwrap();
    let err = arm
        .get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap_err();
    assert!(err.status() == Some(401), "{err}");
    assert!(
        err.to_string().contains("az account show") && !err.to_string().contains("expired"),
        "{err}"
    );

    let mut remote = settings(&server);
    remote.endpoint = azure_core::http::Url::parse("http://management.example.com").unwrap();
    let err = ArmClient::new(remote, Arc::new(StaticToken)).unwrap_err();
    assert!(err.to_string().contains("must be https"), "{err}");
}

#[tokio::test]
async fn operations_that_never_finish_time_out() {
    let server = ArmServer::start().await;
    server.lock().polls = 1000;
    let disk_id = server.add_disk("MC_rg", "pvc-1", GIB, "AllowAll");
    let mut settings = settings(&server);
    settings.operation_timeout = Duration::from_millis(300);
    let arm = ArmClient::new(settings, Arc::new(StaticToken)).unwrap();
    let disk = arm
        .get(&ResourceId::parse(&disk_id).unwrap())
        .await
        .unwrap();
    let err = arm
        .create_incremental_snapshot("snaps", "slow", &disk, &tags())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AzureError::Timeout { .. }) && err.is_transient(),
        "{err}"
    );
}
