//! Ownership before deletion, end to end on the real RabbitMQ: a crafted `job.restore` whose
//! staging section names the sample app's live disks (dry run and not) leaves them intact —
//! neither deleted by the release step nor adopted as a restored volume — and the restore's
//! `restore.completed` says why.

use std::time::{Duration, Instant};

use stowage_disk::{DiskId, DiskProvider, LocalDiskProvider};
use stowage_runtime::client::submit;
use stowage_runtime::{StageConfig, Worker};
use stowage_schemas::domain::Tier;
use stowage_schemas::events::RestoreCompleted;
use stowage_schemas::jobs::{RestoreJob, RestoreOptions, StagedDisk, Staging};
use stowage_schemas::{Envelope, Message};
use stowage_stages::{ClusterContext, RestoreStage, SnapshotStage};
use stowage_tests::{Bus, RunningWorker, shared_rabbit_bus};
use stowage_vault::catalog;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, sample_app, shop_backup};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(120);

/// Waits for the event `routing_key` on `probe` that `wanted` accepts.
async fn wait_event(
    bus: &Bus,
    probe: &str,
    routing_key: &str,
    wanted: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = Instant::now() + WAIT;
    loop {
        for delivery in bus.drain(probe).await {
            if delivery.routing_key != routing_key {
                continue;
            }
            let envelope = stowage_runtime::envelope::decode_delivery(&delivery)
                .expect("an event the stages emitted");
            if wanted(&envelope.message) {
                return envelope.message;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {routing_key} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn disk_bytes(disks: &LocalDiskProvider, disk: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 2 * MIB as usize];
    disks
        .read_disk(&DiskId(disk.into()), MIB, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("disk {disk} is gone or unreadable: {e}"));
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_never_deletes_or_adopts_a_disk_it_did_not_make() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let dir = TempDir::new("ownership");
    let vault = BlobStore::local_folder(dir.path().join("vault"), LocalDurability::OsBuffered)
        .unwrap()
        .with_key(&stowage_vault::crypto::VaultKey::generate().unwrap());
    let (disks, cluster) = sample_app(&dir.path().join("disks"), &vault, [0x5a, 0xb1]).await;
    let ctx = ClusterContext::new(vault.clone(), disks.clone(), "sandbox", cluster.target());
    // The sample app's instance is of cluster `sandbox`: these workers serve it.
    let config = stowage_runtime::WorkerConfig {
        cluster: Some("sandbox".into()),
        ..bus.worker_config()
    };
    let topology = config.topology();
    let worker = Worker::new(bus.broker.clone(), config)
        .stage(SnapshotStage(ctx.clone()), StageConfig::default())
        .stage(RestoreStage(ctx), StageConfig::default());
    let fleet = RunningWorker::spawn(worker, WAIT).await;
    let probe = bus.probe_events().await;

    // A real backup, so the crafted restores name a real recovery point.
    submit(bus.broker.as_ref(), &bus.names, &shop_backup())
        .await
        .unwrap();
    wait_event(&bus, &probe, "rp.created", |_| true).await;
    let rp = catalog::read_recovery_point(&vault, "shop", "rp-1")
        .await
        .unwrap();
    assert_eq!(rp.volumes.len(), 2, "{rp:?}");
    let before = [
        disk_bytes(&disks, "shop-data").await,
        disk_bytes(&disks, "blog-data").await,
    ];

    for dry_run in [true, false] {
        let restore_id = format!("crafted-{}", if dry_run { "dry" } else { "real" });
        // The staging section names the application's own disks as "staging disks".
        let staging = Staging {
            location: "vault".into(),
            resources: rp.resources.clone(),
            disks: rp
                .volumes
                .iter()
                .map(|v| StagedDisk {
                    volume_id: v.volume_id.clone(),
                    disk_id: v.volume_id.clone(),
                    size_bytes: v.size_bytes,
                })
                .collect(),
        };
        assert!(staging.disks.iter().any(|d| d.disk_id == "blog-data"));
        let job = Envelope::new(
            restore_id.clone(),
            Message::Restore(RestoreJob {
                restore_id: restore_id.clone(),
                instance: "shop".into(),
                recovery_point_id: "rp-1".into(),
                source_tier: Tier::Vault,
                staging: Some(staging),
                options: RestoreOptions {
                    namespace_mapping: [
                        ("shop".to_owned(), format!("shop-{restore_id}")),
                        ("blog".to_owned(), format!("blog-{restore_id}")),
                    ]
                    .into(),
                    // The sample app's cluster: its restore queue is the one this worker serves.
                    target_cluster: Some("sandbox".into()),
                    dry_run,
                    ..RestoreOptions::default()
                },
            }),
        );
        submit(bus.broker.as_ref(), &bus.names, &job).await.unwrap();
        let Message::RestoreCompleted(done) =
            wait_event(&bus, &probe, "restore.completed", |m| {
                matches!(m, Message::RestoreCompleted(RestoreCompleted { restore_id: r, .. }) if *r == restore_id)
            })
            .await
        else {
            unreachable!()
        };

        // Both disks are there with their bytes, and the restore says why it left them.
        assert_eq!(
            [
                disk_bytes(&disks, "shop-data").await,
                disk_bytes(&disks, "blog-data").await,
            ],
            before,
            "{restore_id}: a live disk was changed"
        );
        for disk in ["shop-data", "blog-data"] {
            assert!(
                done.warnings
                    .iter()
                    .any(|w| w.contains(&format!("disk {disk} "))
                        && w.contains("hydration record")
                        && w.contains("neither used nor deleted")),
                "{restore_id}: no warning about {disk}: {:#?}",
                done.warnings
            );
        }
        assert_eq!(
            done.volumes_restored, 0,
            "{restore_id}: a live disk was adopted as a restored volume"
        );
        assert_eq!(done.dry_run, dry_run);
    }
    // No PV of the restores points at a live disk.
    let pvs: kube::Api<k8s_openapi::api::core::v1::PersistentVolume> =
        kube::Api::all(cluster.client());
    for pv in pvs.list(&Default::default()).await.unwrap() {
        let annotations = pv.metadata.annotations.unwrap_or_default();
        assert!(
            !annotations.contains_key(stowage_stages::restore::RESTORE_ID_ANNOTATION)
                || pv
                    .spec
                    .and_then(|s| s.csi)
                    .is_none_or(|c| !["shop-data", "blog-data"].contains(&c.volume_handle.as_str())),
            "a restored PV adopted a live disk"
        );
    }

    fleet.stop(WAIT).await;
    cluster.shutdown().await;
    bus.teardown(&topology).await;
}
