//! Instances never collide (issue 12 §5): two backup instances of one cluster with overlapping
//! scopes and different policies, backed up by the snapshot stage at their own slots over three
//! simulated weeks, vaulted and retained by their own policies, garbage-collected daily. Neither
//! touches the other's recovery points, snapshots or vault data, and every restore is
//! byte-exact. And an instance must name a cluster its worker serves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use jiff::civil::{Date, date};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan as _};
use rand::{RngExt as _, SeedableRng as _};
use stowage_control::scheduler::{Slots, scheduled_rp_id};
use stowage_control::verify;
use stowage_disk::{DiskId, DiskProvider, SnapshotId};
use stowage_runtime::{ErrorKind, JobContext};
use stowage_schemas::Stage;
use stowage_schemas::domain::{BackupInstance, CalendarPeriod, Policy, Tier};
use stowage_schemas::jobs::{RestoreHydrationJob, RestoreOptions, SnapshotJob, Trigger};
use stowage_schemas::samples;
use stowage_stages::restore::{RestoreRequest, RestoreSource, restore};
use stowage_stages::retention::{self, Eligibility};
use stowage_stages::snapshot::{snapshot_name, take_snapshot};
use stowage_stages::{ClusterContext, VaultContext, restore_hydration, vault_transfer};
use stowage_vault::catalog::settings::{self, WriteMode};
use stowage_vault::crypto::VaultKey;
use stowage_vault::{catalog, layout};

use crate::cluster_fixture::{DISK_SIZE, Fixture, namespaces, restored_disk};

/// One backup instance of the simulation, and what its policy keeps.
struct Protected {
    name: &'static str,
    policy: Policy,
    namespaces: &'static [&'static str],
    /// The disks its scope holds (the sample app's `shop` and `blog` namespaces hold one each).
    disks: &'static [&'static str],
}

impl Protected {
    fn operational(&self) -> SignedDuration {
        SignedDuration::from_hours(24 * i64::from(self.policy.retention.operational_days))
    }

    fn vault_keep(&self) -> SignedDuration {
        let days = self.policy.retention.vault[0].keep_days;
        SignedDuration::from_hours(24 * i64::from(days))
    }
}

/// A policy backing up every `hours` from 02:00 UTC, keeping recovery points
/// `operational_days` operationally and the first of each `rule.0` `rule.1` days in the vault.
fn policy(name: &str, hours: u8, operational_days: u16, rule: (CalendarPeriod, u32)) -> Policy {
    let two = jiff::civil::Time::constant(2, 0, 0, 0);
    samples::policy_every(name, hours, two, "UTC", operational_days, &[rule])
}

fn instance(name: &str, cluster: &str, policy: &str, scope: &[&str]) -> BackupInstance {
    BackupInstance {
        name: name.into(),
        cluster: cluster.into(),
        vault: "vault".into(),
        policy: policy.into(),
        scope: namespaces(scope),
        snapshot_location: "local".into(),
        hooks: Vec::new(),
    }
}

/// Initialises the fixture's vault as `vault` with `policies`, validated like the CLI does.
async fn catalog_with(f: &Fixture, policies: &[&Policy]) {
    let vault = samples::vault("vault", &f.dir.join("vault").display().to_string());
    settings::write_vault(&f.vault, &vault, WriteMode::Create)
        .await
        .unwrap();
    for policy in policies {
        settings::write_policy(&f.vault, policy, WriteMode::Create)
            .await
            .unwrap();
    }
}

fn at(day: Date, hour: i8) -> Timestamp {
    day.at(hour, 0, 0, 0)
        .to_zoned(TimeZone::UTC)
        .unwrap()
        .timestamp()
}

async fn disk_hash(f: &Fixture, disk: &str) -> blake3::Hash {
    blake3::hash(&f.disk_bytes(disk).await)
}

async fn snapshot_hash(f: &Fixture, snapshot: &str) -> blake3::Hash {
    let mut image = vec![0u8; DISK_SIZE as usize];
    f.disks
        .read_snapshot(&SnapshotId(snapshot.into()), 0, &mut image)
        .await
        .unwrap_or_else(|e| panic!("snapshot {snapshot}: {e}"));
    blake3::hash(&image)
}

/// Writes `len` random bytes somewhere in `disk`, as the application does between backups.
async fn write_random(f: &Fixture, disk: &str, len: usize, rng: &mut rand::rngs::StdRng) {
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    let offset = rng.random_range(0..(DISK_SIZE - len as u64) / 4096) * 4096;
    f.disks
        .write(&DiskId(disk.into()), offset, &data)
        .await
        .unwrap();
}

/// The snapshots the disk provider holds, by name.
fn snapshots_on_disk(f: &Fixture) -> BTreeSet<String> {
    std::fs::read_dir(f.disks.root().join("snapshots"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json")
                .filter(|n| !n.starts_with('.'))
                .map(str::to_owned)
        })
        .collect()
}

/// Per volume of a recovery point: its snapshot, and the disk's hash when it was taken.
type Volumes = BTreeMap<String, (String, blake3::Hash)>;

/// What the simulation took: per (instance, RP), when, and its volumes.
#[derive(Default)]
struct Taken {
    rps: BTreeMap<(&'static str, String), (Timestamp, Volumes)>,
    vaulted: BTreeSet<(&'static str, String)>,
}

impl Taken {
    /// RPs of `p` still operational after retention at `as_of`.
    fn operational(&self, p: &Protected, as_of: Timestamp) -> BTreeSet<String> {
        self.rps
            .iter()
            .filter(|((name, _), (created, _))| {
                *name == p.name && *created + p.operational() > as_of
            })
            .map(|((_, rp), _)| rp.clone())
            .collect()
    }

    /// RPs of `p` still in the vault tier after retention at `as_of`: those its rule keeps,
    /// and the newest vaulted one whatever its age.
    fn in_vault(&self, p: &Protected, as_of: Timestamp) -> BTreeSet<String> {
        let vaulted: Vec<(&String, Timestamp)> = self
            .vaulted
            .iter()
            .filter(|(name, _)| *name == p.name)
            .map(|key| (&key.1, self.rps[key].0))
            .collect();
        let newest = vaulted.iter().map(|(_, created)| *created).max();
        vaulted
            .iter()
            .filter(|(_, created)| *created + p.vault_keep() > as_of || Some(*created) == newest)
            .map(|(rp, _)| (*rp).clone())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_cluster_never_touch_each_others_data() {
    let f = Fixture::new().await;
    // "shop-a" protects both namespaces twice a day, keeps 2 days operationally and each day's
    // first backup 4 days in the vault; "shop-b" protects `shop` (so the disk `shop-data` is
    // in both scopes) every 6 hours, keeps 5 days operationally and each week's first backup
    // 14 days in the vault. At 02:00 and 14:00 both back up at the same slot.
    let a = Protected {
        name: "shop-a",
        policy: policy("twice-daily", 12, 2, (CalendarPeriod::Day, 4)),
        namespaces: &["shop", "blog"],
        disks: &["blog-data", "shop-data"],
    };
    let b = Protected {
        name: "shop-b",
        policy: policy("six-hourly", 6, 5, (CalendarPeriod::Week, 14)),
        namespaces: &["shop"],
        disks: &["shop-data"],
    };
    let protected = [&a, &b];
    catalog_with(&f, &[&a.policy, &b.policy]).await;
    for p in protected {
        let i = instance(p.name, "source", &p.policy.name, p.namespaces);
        settings::write_instance(&f.vault, &i, WriteMode::Create)
            .await
            .unwrap();
    }
    let slots: Vec<Slots> = protected
        .iter()
        .map(|p| Slots::new(&p.policy.schedule).unwrap())
        .collect();

    // The snapshot stage dates recovery points by the simulation's clock.
    let now = Arc::new(Mutex::new(Timestamp::UNIX_EPOCH));
    let cluster: ClusterContext = f.ctx.clone().with_clock({
        let now = now.clone();
        Arc::new(move || *now.lock().unwrap())
    });
    let key = VaultKey::from_hex(&f.key.expose_secret_hex()).unwrap();
    let mut vault = VaultContext::new(f.vault.clone(), key, f.disks.clone());
    vault.pack_target = 1 << 20; // small packs, so packs die independently
    let grace = SignedDuration::from_hours(24);
    let transfer_job = JobContext::detached(Stage::VaultTransfer);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut taken = Taken::default();
    let mut packs_seen = BTreeSet::new();

    // Three weeks from Sunday 1 March 2026 (weeks start on Sundays).
    let start = date(2026, 3, 1);
    let mut as_of = Timestamp::UNIX_EPOCH;
    for day in 0..21i64 {
        let d = start.checked_add(day.days()).unwrap();
        for hour in [2, 8, 14, 20] {
            let slot = at(d, hour);
            *now.lock().unwrap() = slot;
            for disk in ["shop-data", "blog-data"] {
                write_random(&f, disk, 64 << 10, &mut rng).await;
            }
            for (p, slots) in protected.iter().zip(&slots) {
                if !slots.on(d).contains(&slot) {
                    continue;
                }
                // Between the two instances' backups of one slot `shop-data` changes, so a
                // snapshot the two shared would restore the wrong bytes for one of them.
                write_random(&f, "shop-data", 4096, &mut rng).await;
                let mut hashes = BTreeMap::new();
                for disk in p.disks {
                    hashes.insert(disk.to_string(), disk_hash(&f, disk).await);
                }
                let rp_id = scheduled_rp_id(p.name, slot);
                let job = SnapshotJob {
                    instance: p.name.into(),
                    recovery_point_id: rp_id.clone(),
                    trigger: Trigger::Scheduled { slot },
                };
                take_snapshot(&cluster, &job, &JobContext::detached(Stage::Snapshot))
                    .await
                    .unwrap();
                let rp = catalog::read_recovery_point(&f.vault, p.name, &rp_id)
                    .await
                    .unwrap();
                assert_eq!(rp.created_at, slot);
                let mut volumes = BTreeMap::new();
                for v in &rp.volumes {
                    assert_eq!(v.snapshot_id, snapshot_name(p.name, &rp_id, &v.volume_id));
                    assert!(v.snapshot_id.len() <= 80, "{}", v.snapshot_id);
                    volumes.insert(
                        v.volume_id.clone(),
                        (v.snapshot_id.clone(), hashes[&v.volume_id]),
                    );
                }
                assert_eq!(
                    volumes.keys().collect::<Vec<_>>(),
                    p.disks.to_vec(),
                    "{rp_id}: the volumes of its scope"
                );
                // The pipeline's rp.created → vault-transfer: only what the policy selects.
                if let Eligibility::Selected(_) =
                    retention::vault_eligibility(&f.vault, &rp).await.unwrap()
                {
                    vault_transfer::transfer(&vault, p.name, &rp_id, &transfer_job)
                        .await
                        .unwrap();
                    taken.vaulted.insert((p.name, rp_id.clone()));
                }
                taken.rps.insert((p.name, rp_id), (slot, volumes));
            }
        }
        // Daily retention of each instance at 23:00, and garbage collection with it.
        as_of = at(d, 23);
        *now.lock().unwrap() = as_of;
        for p in protected {
            retention::run(&vault, p.name, as_of).await.unwrap();
        }
        retention::collect(&vault, as_of, grace).await.unwrap();
        packs_seen.extend(pack_keys(&f).await);

        // The provider holds exactly the snapshots of the RPs each policy keeps operational:
        // none of an instance's retention took another's (nor left its own behind).
        let mut expected = BTreeSet::new();
        for p in protected {
            for rp in taken.operational(p, as_of) {
                expected.extend(taken.rps[&(p.name, rp)].1.values().map(|(s, _)| s.clone()));
            }
        }
        assert_eq!(snapshots_on_disk(&f), expected, "after retention on {d}");
    }

    // No two RPs ever shared a snapshot, though both instances snapshot `shop-data` at 02:00
    // and 14:00 with RP ids of the same slot.
    let all: Vec<&String> = taken
        .rps
        .values()
        .flat_map(|(_, volumes)| volumes.values().map(|(s, _)| s))
        .collect();
    assert_eq!(all.len(), all.iter().collect::<BTreeSet<_>>().len());
    assert_eq!(taken.rps.len(), 21 * (2 + 4));

    for p in protected {
        // Operational: every snapshot it keeps holds its RP's bytes, and every RP it keeps
        // has its manifest and resources.
        let operational = taken.operational(p, as_of);
        assert_eq!(
            operational.len(),
            usize::from(24 / p.policy.schedule.frequency_hours)
                * usize::from(p.policy.retention.operational_days),
            "{}: {operational:?}",
            p.name
        );
        for rp in &operational {
            for (volume, (snapshot, hash)) in &taken.rps[&(p.name, rp.clone())].1 {
                assert_eq!(snapshot_hash(&f, snapshot).await, *hash, "{rp} {volume}");
            }
        }
        // Vault: exactly what its rule keeps, intact, hydrating byte for byte.
        let in_vault = taken.in_vault(p, as_of);
        let mut found = BTreeSet::new();
        for (name, rp) in &taken.vaulted {
            if *name == p.name
                && catalog::read_tier_manifest(&f.vault, p.name, rp, Tier::Vault)
                    .await
                    .unwrap()
                    .is_some()
            {
                found.insert(rp.clone());
            }
        }
        assert_eq!(found, in_vault, "{}", p.name);
        for (n, rp) in in_vault.iter().enumerate() {
            let report = verify::verify(&f.vault, &vault.key, p.name, rp, Tier::Vault, 2)
                .await
                .unwrap();
            assert!(report.is_intact(), "{rp}: {:?}", report.damage);
            let restore_id = format!("hydrate-{}-{n}", p.name);
            let job = RestoreHydrationJob {
                restore_id: restore_id.clone(),
                instance: p.name.into(),
                recovery_point_id: rp.clone(),
                tier: Tier::Vault,
                staging_location: None,
                options: RestoreOptions::default(),
            };
            let staging = restore_hydration::hydrate(
                &vault,
                &job,
                &JobContext::detached(Stage::RestoreHydration),
            )
            .await
            .unwrap();
            let expected = &taken.rps[&(p.name, rp.clone())].1;
            assert_eq!(staging.disks.len(), expected.len(), "{rp}");
            for disk in &staging.disks {
                assert_eq!(
                    disk_hash(&f, &disk.disk_id).await,
                    expected[&disk.volume_id].1,
                    "{rp} {} from the vault",
                    disk.volume_id
                );
                f.disks
                    .delete_disk(&DiskId(disk.disk_id.clone()))
                    .await
                    .unwrap();
            }
        }
        // RPs in no tier are gone with their resources; the others keep theirs.
        for ((name, rp), _) in taken.rps.iter().filter(|((name, _), _)| *name == p.name) {
            let kept = operational.contains(rp) || in_vault.contains(rp);
            let manifest = catalog::read_recovery_point(&f.vault, name, rp).await;
            assert_eq!(manifest.is_ok(), kept, "{name} {rp}");
            if !kept {
                assert!(manifest.unwrap_err().is_not_found(), "{name} {rp}");
            }
            let resources = f
                .vault
                .list(&layout::resources(name, rp).unwrap())
                .count()
                .await;
            assert_eq!(resources > 0, kept, "{name} {rp}: resources");
        }
    }
    // Vault data of expired RPs was collected along the way, all the same.
    assert!(
        packs_seen.difference(&pack_keys(&f).await).count() > 0,
        "no pack was ever collected"
    );

    // Operational restores through the restore stage, into the second cluster: the newest RP
    // of each, and shop-b's of the last slot it shared with shop-a.
    let last_day = start.checked_add(20.days()).unwrap();
    let restores = [
        (&a, scheduled_rp_id(a.name, at(last_day, 14))),
        (&b, scheduled_rp_id(b.name, at(last_day, 14))),
        (&b, scheduled_rp_id(b.name, at(last_day, 20))),
    ];
    for (n, (p, rp)) in restores.iter().enumerate() {
        let mapping = p
            .namespaces
            .iter()
            .map(|ns| (ns.to_string(), format!("r{n}-{ns}")))
            .collect();
        let request = RestoreRequest {
            restore_id: format!("restore-{n}"),
            instance: p.name.into(),
            recovery_point_id: rp.clone(),
            source: RestoreSource::Operational,
            options: RestoreOptions {
                target_cluster: Some("dr".into()),
                namespace_mapping: mapping,
                ..RestoreOptions::default()
            },
        };
        restore(&f.ctx, &request, &JobContext::detached(Stage::Restore))
            .await
            .unwrap();
        let rp_manifest = catalog::read_recovery_point(&f.vault, p.name, rp)
            .await
            .unwrap();
        for v in &rp_manifest.volumes {
            let disk =
                restored_disk(&f.dr.client(), &format!("r{n}-{}", v.namespace), &v.pvc).await;
            assert_eq!(
                disk_hash(&f, &disk).await,
                taken.rps[&(p.name, rp.clone())].1[&v.volume_id].1,
                "{rp} {}: restored from its own snapshot",
                v.volume_id
            );
        }
    }
}

async fn pack_keys(f: &Fixture) -> BTreeSet<String> {
    f.vault
        .list(&layout::packs())
        .map(|i| i.unwrap().key.to_string())
        .collect()
        .await
}

#[tokio::test]
async fn an_instance_must_name_a_cluster_its_worker_serves() {
    let f = Fixture::new().await;
    let daily = samples::policy();
    catalog_with(&f, &[&daily]).await;

    // The catalog refuses an instance without a cluster.
    let nameless = instance("nameless", "", &daily.name, &["shop"]);
    let err = settings::write_instance(&f.vault, &nameless, WriteMode::Create)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("instance \"nameless\": cluster is empty"),
        "{err}"
    );

    // One stored without a cluster all the same (by hand, or by an earlier version) is refused
    // at snapshot time, before anything is written; never backed up from the worker's cluster.
    let raw = |i: &BackupInstance| {
        let (store, key) = (f.vault.clone(), layout::instance(&i.name).unwrap());
        let bytes = serde_json::to_vec(i).unwrap();
        async move { store.put_create_only(&key, bytes).await.unwrap() }
    };
    raw(&nameless).await;
    let job = |instance: &str, rp: &str| SnapshotJob {
        instance: instance.into(),
        recovery_point_id: rp.into(),
        trigger: Trigger::OnDemand { requested_by: None },
    };
    let run = JobContext::detached(Stage::Snapshot);
    // The snapshot stage's refusal of `instance`: permanent, as text.
    let refusal = |instance: &'static str| {
        let (ctx, job, run) = (f.ctx.clone(), job(instance, "rp-1"), run.clone());
        async move {
            let err = take_snapshot(&ctx, &job, &run).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Permanent, "{instance}");
            err.to_string()
        }
    };
    let text = refusal("nameless").await;
    assert!(
        text.contains("\"nameless\" names no cluster") && text.contains("--cluster"),
        "{text}"
    );

    // An instance of a cluster this worker does not serve: refused, naming the cluster and the
    // ones it serves.
    let elsewhere = instance("elsewhere", "aks-west", &daily.name, &["shop"]);
    settings::write_instance(&f.vault, &elsewhere, WriteMode::Create)
        .await
        .unwrap();
    let text = refusal("elsewhere").await;
    assert!(
        text.contains("cluster \"aks-west\"")
            && text.contains("serves: dr, source")
            && text.contains("--cluster-name aks-west"),
        "{text}"
    );
    for name in ["nameless", "elsewhere"] {
        assert_eq!(
            f.vault
                .list(&layout::resources(name, "rp-1").unwrap())
                .count()
                .await,
            0,
            "{name}: nothing collected"
        );
    }
    assert!(snapshots_on_disk(&f).is_empty(), "nothing snapshotted");

    // A worker that serves `aks-west` backs it up; one that does not refuses to restore it
    // without a target rather than guess.
    let west = f.ctx.clone().with_cluster("aks-west", f.source.target());
    let created = take_snapshot(&west, &job("elsewhere", "rp-1"), &run)
        .await
        .unwrap();
    assert_eq!(created.volume_count, 1);
    assert_eq!(
        snapshots_on_disk(&f),
        BTreeSet::from([snapshot_name("elsewhere", "rp-1", "shop-data")])
    );
    let request = RestoreRequest {
        restore_id: "restore-elsewhere".into(),
        instance: "elsewhere".into(),
        recovery_point_id: "rp-1".into(),
        source: RestoreSource::Operational,
        options: RestoreOptions::default(),
    };
    let err = restore(&f.ctx, &request, &JobContext::detached(Stage::Restore))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster \"aks-west\""), "{err}");
}
