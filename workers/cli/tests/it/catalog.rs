//! The catalog commands end to end: `vault init|show`, `policy create|list|show`,
//! `instance create|list|show` against a local-folder vault, and `backup now` and
//! `scheduler` against the real RabbitMQ (`scripts/test.sh` starts it).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use stowage_schemas::{ContentType, Message, Stage, decode};
use stowage_tests::shared_rabbit_bus;

use crate::helpers::{TempDir, poll, run, stowage_on, terminate, text};

/// The vault key the catalog commands run with (recovery points are sealed under it).
pub(crate) const TEST_VAULT_KEY: &str =
    "5757575757575757575757575757575757575757575757575757575757575757";

fn command(vault: &Path, prefix: &str, args: &[&str]) -> Command {
    let mut cmd = stowage_on(prefix);
    cmd.args(args)
        .env("STOWAGE_VAULT", vault)
        .env("STOWAGE_VAULT_KEY", TEST_VAULT_KEY)
        .env_remove("STOWAGE_SECONDARY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `stowage <line>` (split at white space) on `vault`.
pub(crate) fn stowage(vault: &Path, line: &str) -> Output {
    stowage_fed(vault, line, None)
}

/// [`stowage`], with `stdin` as its input.
pub(crate) fn stowage_fed(vault: &Path, line: &str, stdin: Option<&str>) -> Output {
    let args: Vec<&str> = line.split_whitespace().collect();
    run(command(vault, "stowage-test-unused", &args), stdin)
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

pub(crate) fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    text(&out.stderr)
}

fn init(vault: &Path) {
    ok(&stowage(
        vault,
        "vault init --name main --region westeurope",
    ));
    ok(&stowage(
        vault,
        "policy create every-4h --frequency-hours 4 --start 02:00 --time-zone Europe/Amsterdam --operational-days 7 --vault-rule day=30 --vault-rule year=3650",
    ));
    ok(&stowage(
        vault,
        "instance create shop --cluster aks-prod --policy every-4h --snapshot-location rg-snaps --namespaces shop,blog --selector app=web",
    ));
}

/// The names `instance list -o json` lists on `vault`.
fn instance_names(vault: &Path) -> Vec<String> {
    let list = ok(&stowage(vault, "instance list -o json"));
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    list.as_array()
        .expect("array")
        .iter()
        .map(|i| i["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// Issue 13, item 3: `instance create` refuses a 300-character label-selector key (a key is an
/// optional DNS-subdomain prefix of at most 253 and `/`, then a name of at most 63) and an
/// instance name that breaks the id rule, naming the field.
#[test]
fn instance_create_refuses_oversized_label_keys_and_bad_names() {
    let vault = TempDir::new("cli-edges");
    let v = vault.path();
    init(v);
    let create = |name: &str, selector: &str| {
        refused(&stowage(
            v,
            &format!(
                "instance create {name} --cluster aks-prod --policy every-4h \
                 --snapshot-location rg-snaps --selector {selector}"
            ),
        ))
    };
    let err = create("blog", &format!("{}=web", "k".repeat(300)));
    assert!(
        err.contains("scope.label_selectors[0]") && err.contains("is not a valid label key"),
        "{err}"
    );
    assert!(err.contains("at most 63"), "{err}");
    let err = create("blog", &format!("{}/app=web", "p".repeat(254)));
    assert!(err.contains("DNS subdomain"), "{err}");
    let err = create("../blog", "app=web");
    assert!(
        err.contains("name") && err.contains("path separator"),
        "{err}"
    );
    assert_eq!(instance_names(v), ["shop"], "nothing was created");
}

#[test]
fn the_catalog_is_created_listed_and_shown_with_validation() {
    let vault = TempDir::new("cli-catalog");
    let v = vault.0.as_path();

    // Before `vault init`, writes say to run it.
    let err = refused(&stowage(v, "policy create p --frequency-hours 4"));
    assert!(err.contains("stowage vault init"), "{err}");

    // A geo vault must name its secondary location.
    let err = refused(&stowage(v, "vault init --name main --redundancy geo"));
    assert!(
        err.contains("redundancy.secondary_location is empty"),
        "{err}"
    );

    init(v);
    let shown = ok(&stowage(v, "vault show -o json"));
    let json: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(json["name"], "main");
    assert_eq!(json["location"], v.display().to_string());

    // Validation names the field and the fix, and nothing is written.
    let err = refused(&stowage(
        v,
        "policy create bad --frequency-hours 5 --operational-days 400",
    ));
    assert!(
        err.contains("policy \"bad\": schedule.frequency_hours is 5; it must be 4, 6, 8, 12 or 24"),
        "{err}"
    );
    assert!(err.contains("retention.operational_days is 400"), "{err}");
    let err = refused(&stowage(v, "policy show bad"));
    assert!(err.contains("policy \"bad\" does not exist"), "{err}");

    // Creating again with other settings is refused unless --update.
    let err = refused(&stowage(v, "policy create every-4h --frequency-hours 8"));
    assert!(
        err.contains("already exists") && err.contains("--update"),
        "{err}"
    );
    let out = ok(&stowage(
        v,
        "policy create every-4h --frequency-hours 8 --update",
    ));
    assert_eq!(out.trim(), "policy every-4h updated");

    let table = ok(&stowage(v, "policy list"));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("every-4h") && table.contains("8h"),
        "{table}"
    );

    // Instances: policy must exist, snapshot location is fixed, files work.
    let err = refused(&stowage(
        v,
        "instance create blog --cluster c --policy nope --snapshot-location x",
    ));
    assert!(
        err.contains("instance \"blog\": policy is \"nope\", which does not exist"),
        "{err}"
    );
    let yaml = ok(&stowage(v, "instance show shop"));
    let moved = yaml.replace(
        "snapshot_location: rg-snaps",
        "snapshot_location: rg-elsewhere",
    );
    assert_ne!(moved, yaml, "{yaml}");
    let err = refused(&stowage_fed(
        v,
        "instance create -f - --update",
        Some(&moved),
    ));
    assert!(
        err.contains("snapshot location cannot change once set"),
        "{err}"
    );
    let blog = yaml
        .replace("name: shop", "name: blog")
        .replace("app=web", "tier in (front");
    let err = refused(&stowage_fed(v, "instance create -f -", Some(&blog)));
    assert!(err.contains("scope.label_selectors[0]"), "{err}");
    let blog = yaml.replace("name: shop", "name: blog");
    assert_eq!(
        ok(&stowage_fed(v, "instance create -f -", Some(&blog))).trim(),
        "instance blog created"
    );

    assert_eq!(instance_names(v), ["blog", "shop"]);
    let table = ok(&stowage(v, "instance list"));
    assert!(
        table.contains("shop,blog") && table.contains("rg-snaps"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_now_and_the_scheduler_publish_snapshot_jobs() {
    let (_gate, bus) = shared_rabbit_bus().await;
    let prefix = bus.names.prefix().to_owned();
    let vault = TempDir::new("cli-catalog");
    let v = vault.0.as_path();
    init(v);
    let topology = bus.declare_topology().await;
    // `shop` is an instance of cluster aks-prod: its snapshots wait in that cluster's queue.
    let queue = bus.names.cluster_queue(Stage::Snapshot, "aks-prod");

    let out = command(v, &prefix, &["backup", "now", "nope"])
        .output()
        .expect("run");
    let err = refused(&out);
    assert!(
        err.contains("backup instance \"nope\" does not exist"),
        "{err}"
    );

    let out = command(v, &prefix, &["backup", "now", "shop"])
        .output()
        .expect("run");
    let job_id = ok(&out).trim().to_owned();
    assert!(job_id.starts_with("backup-shop-"), "{job_id}");
    assert!(text(&out.stderr).contains(&format!("stowage jobs watch {job_id}")));
    let got = bus.drain(&queue).await;
    assert_eq!(got.len(), 1);
    let envelope = decode(&got[0].body, ContentType::MessagePack).expect("envelope");
    assert_eq!(envelope.job_id, job_id);
    let Message::Snapshot(job) = envelope.message else {
        panic!("not a snapshot job")
    };
    assert_eq!(job.instance, "shop");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(v.join("jobs").join(format!("{job_id}.json"))).expect("job record"),
    )
    .expect("json");
    assert_eq!(record["recovery_point_id"], job.recovery_point_id.as_str());

    // The scheduler with a day-long window triggers the latest 4-hourly slot once, even with
    // two of them running, and stops on SIGTERM.
    let start = |id: &str| {
        command(
            v,
            &prefix,
            &[
                "scheduler",
                "--window-minutes",
                "1440",
                "--tick-seconds",
                "1",
                "--identity",
                id,
                "--health-addr",
                "127.0.0.1:0",
            ],
        )
        .spawn()
        .expect("start the scheduler")
    };
    let a = start("a");
    let b = start("b");
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || (bus.depth(&queue).await > 0).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for child in [&a, &b] {
        terminate(child);
    }
    for child in [a, b] {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "scheduler exit: {}",
            text(&out.stderr)
        );
    }
    let got = bus.drain(&queue).await;
    assert_eq!(
        got.len(),
        1,
        "one job for the slot, from one of two schedulers"
    );
    let envelope = decode(&got[0].body, ContentType::MessagePack).expect("envelope");
    assert!(
        envelope.job_id.starts_with("sched-shop-"),
        "{}",
        envelope.job_id
    );
    bus.teardown(&topology).await;
}

#[test]
fn vault_init_infers_geo_from_a_secondary_and_refuses_foreign_storage() {
    let vault = TempDir::new("cli-catalog");
    let secondary = TempDir::new("cli-catalog");
    let secondary_path = secondary.0.to_string_lossy().into_owned();

    let conflicting = refused(&stowage(
        &vault.0,
        &format!("vault init --name main --redundancy local --secondary {secondary_path}"),
    ));
    assert!(
        conflicting.contains("--redundancy local with --secondary"),
        "{conflicting}"
    );

    ok(&stowage(
        &vault.0,
        &format!(
            "vault init --name main --secondary {secondary_path} --secondary-region northeurope"
        ),
    ));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&stowage(&vault.0, "vault show -o json"))).expect("JSON");
    assert_eq!(shown["redundancy"]["kind"], "geo", "{shown}");
    assert_eq!(
        shown["redundancy"]["secondary_location"],
        secondary_path.as_str()
    );

    let foreign = TempDir::new("cli-catalog");
    std::fs::write(foreign.0.join("notes.txt"), b"not a vault").unwrap();
    let err = refused(&stowage(&foreign.0, "vault init --name other"));
    assert!(
        err.contains("holds data that is not Stowage's (notes.txt)"),
        "{err}"
    );
    assert!(!foreign.0.join("vault.json").exists(), "nothing written");
}
