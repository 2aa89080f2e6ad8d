//! The outbox cannot strand work: `stowage backup now` while RabbitMQ is stopped leaves a
//! queued, unpublished job record and says who republishes it and when; once the broker is
//! back, the schedulers' sweep republishes it and the job runs exactly once.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use stowage_control::scheduler::{REPUBLISH_BOUND_SECS, Scheduler};
use stowage_runtime::{Broker, RabbitBroker, Shutdown, StageConfig, Worker, WorkerConfig};
use stowage_schemas::domain::JobStatus;
use stowage_tests::{BrokerKind, Bus, ScriptedHandler, amqp_url, exclusive_broker, rabbitmqctl};
use stowage_vault::catalog::jobs::list_jobs;
use stowage_vault::store::{BlobStore, LocalDurability};

use crate::helpers::{TempDir, stdout_and_stderr, stowage_command, stowage_on};

const WAIT: Duration = Duration::from_secs(60);

/// Starts RabbitMQ again if the test ends while it is stopped.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl").arg("await_startup").output();
    }
}

/// A vault at `vault` with one instance whose only daily slot is twelve hours away (so the
/// schedulers trigger no slot of their own during the test), made with the catalog commands.
pub(crate) fn catalog(vault: &Path) {
    let later = Timestamp::now()
        .checked_add(SignedDuration::from_hours(12))
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC);
    let start = format!("{:02}:{:02}", later.hour(), later.minute());
    for line in [
        "vault init --name main --region westeurope",
        &format!("policy create daily --start {start} --time-zone UTC --operational-days 7"),
        "instance create shop --cluster c --policy daily --snapshot-location local",
    ] {
        let out = stowage_command()
            .args(line.split(' '))
            .env("STOWAGE_VAULT", vault)
            .env("STOWAGE_VAULT_KEY", crate::catalog::TEST_VAULT_KEY)
            .env_remove("STOWAGE_SECONDARY")
            .output()
            .expect("run stowage");
        let (_, stderr) = stdout_and_stderr(&out);
        assert!(out.status.success(), "stowage {line}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_submitted_while_the_broker_is_down_runs_once_when_it_is_back() {
    let _gate = exclusive_broker().await;
    let bus = Bus::new(BrokerKind::Rabbit).await;
    let dir = TempDir::new("outbox");
    let vault_dir = dir.path().join("vault");
    catalog(&vault_dir);
    let store = BlobStore::local_folder(&vault_dir, LocalDurability::OsBuffered).unwrap();
    let topology = bus.declare_topology().await;

    // The broker goes away; `backup now` fails and says what happens next.
    let _restart = RestartOnDrop;
    rabbitmqctl(&["stop_app"]);
    let out = stowage_on(bus.names.prefix())
        .args(["backup", "now", "shop", "--vault"])
        .arg(&vault_dir)
        .env("STOWAGE_LOG", "error")
        .output()
        .expect("run stowage");
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("stays queued")
            && stderr.contains(&format!(
                "`stowage scheduler` for this vault republishes it within {REPUBLISH_BOUND_SECS} s"
            )),
        "{stderr}"
    );
    let records: Vec<_> = list_jobs(&store)
        .map(|r| r.unwrap())
        .filter(|r| std::future::ready(r.id.starts_with("backup-shop-")))
        .collect()
        .await;
    assert_eq!(records.len(), 1, "{records:?}");
    let job_id = records[0].id.clone();
    assert_eq!(records[0].status(), JobStatus::Queued);
    assert_eq!(records[0].submitted_at, None);
    assert!(stderr.contains(&job_id), "{stderr}");

    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    // A worker, and two schedulers sweeping every second for records unpublished for 2 s.
    let broker: Arc<dyn Broker> = Arc::new(RabbitBroker::new(amqp_url()));
    let handler = ScriptedHandler::default();
    let worker = Worker::new(
        broker.clone(),
        WorkerConfig {
            names: bus.names.clone(),
            // The instance's cluster (`catalog`): its snapshot jobs wait in that cluster's queue.
            cluster: Some("c".into()),
            ..WorkerConfig::default()
        },
    )
    .stage(handler.clone(), StageConfig::default());
    let (trigger, shutdown) = Shutdown::new();
    let fleet = tokio::spawn(worker.run(shutdown.clone()));
    let schedulers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|id| {
            let scheduler = Scheduler::new(store.clone(), broker.clone(), bus.names.clone())
                .with_republish_after(SignedDuration::from_secs(2))
                .with_identity(id);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                scheduler
                    .run(Timestamp::now, Duration::from_millis(250), shutdown)
                    .await
            })
        })
        .collect();

    handler.wait_calls(&job_id, 1, WAIT).await;
    // Several more sweep periods: nothing publishes it again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(handler.calls_for(&job_id).len(), 1, "{:?}", handler.calls());
    let record = stowage_vault::catalog::jobs::read_job(&store, &job_id)
        .await
        .unwrap()
        .0;
    assert!(record.submitted_at.is_some(), "{record:?}");

    trigger.trigger();
    for s in schedulers {
        s.await.unwrap();
    }
    fleet.await.unwrap().unwrap();
    bus.teardown(&topology).await;
}
