//! `instance create` for instances that share a cluster (issue 12 §5, §6): every instance names
//! its cluster — by flag or file, refused without one and nothing written — and two instances
//! of one cluster with overlapping scopes and different policies, one of them every 6 hours,
//! are both accepted.

use crate::catalog::stowage_fed as stowage;
use crate::helpers::{TempDir, text};

#[test]
fn every_instance_names_its_cluster_and_instances_may_share_one() {
    let dir = TempDir::new("cli-instances");
    let v = dir.path();
    for line in [
        "vault init --name main --region westeurope",
        "policy create six-hourly --frequency-hours 6 --start 01:00 --operational-days 5 --vault-rule week=14",
        "policy create twice-daily --frequency-hours 12 --start 02:00 --operational-days 2 --vault-rule day=4",
    ] {
        let out = stowage(v, line, None);
        assert!(out.status.success(), "{line}: {}", text(&out.stderr));
    }

    // Without a cluster, by flags or by file (no field, or an empty one): refused, naming it.
    let refusals = [
        (
            "instance create a --policy six-hourly --snapshot-location rg",
            None,
            "--cluster is missing",
        ),
        (
            "instance create -f -",
            Some("name: a\nvault: main\npolicy: six-hourly\nsnapshot_location: rg\n"),
            "missing field `cluster`",
        ),
        (
            "instance create -f -",
            Some(
                "name: a\ncluster: \"\"\nvault: main\npolicy: six-hourly\nsnapshot_location: rg\n",
            ),
            "instance \"a\": cluster is empty",
        ),
    ];
    for (line, stdin, expected) in refusals {
        let out = stowage(v, line, stdin);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}: {stderr}");
        assert!(stderr.contains(expected), "{line}: {stderr}");
    }
    let listed = stowage(v, "instance list -o json", None);
    assert_eq!(text(&listed.stdout).trim(), "[]", "nothing was written");

    // Two instances of one cluster, overlapping in `shop`, under different policies.
    for line in [
        "instance create shop-a --cluster aks-prod --policy twice-daily --snapshot-location rg --namespaces shop,blog",
        "instance create shop-b --cluster aks-prod --policy six-hourly --snapshot-location rg --namespaces shop",
    ] {
        let out = stowage(v, line, None);
        assert!(out.status.success(), "{line}: {}", text(&out.stderr));
    }
    let listed = stowage(v, "instance list -o json", None);
    let instances: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows: Vec<(&str, &str, &str)> = instances
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap(),
                i["cluster"].as_str().unwrap(),
                i["policy"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("shop-a", "aks-prod", "twice-daily"),
            ("shop-b", "aks-prod", "six-hourly")
        ]
    );
    let shown = stowage(v, "policy show six-hourly -o json", None);
    let policy: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(policy["schedule"]["frequency_hours"], 6);
}
