//! The crate graph keeps its arrows pointing one way (ARCHITECTURE.md, "Crates and their
//! arrows"): read from `cargo metadata`, so a new dependency that points up, sideways or at
//! the sandbox fails here, naming the edge and the rule.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Each production crate's floor: a crate may depend only on crates on lower floors.
const FLOORS: &[(&str, u8)] = &[
    ("stowage-schemas", 0),
    ("stowage-runtime", 1),
    ("stowage-vault", 1),
    ("stowage-disk", 1),
    ("stowage-cluster", 1),
    ("stowage-stages", 2),
    // An implementation of the disk port (Azure managed disks): above the port, beside the
    // stages, which never name it; the CLI wires it in.
    ("stowage-azure", 2),
    ("stowage-control", 3),
    ("stowage-cli", 4),
];

/// Stand-ins and harnesses: never a normal dependency of a production crate.
const TEST_ONLY: &[&str] = &["stowage-sandbox", "stowage-tests"];

/// Crates that may use the test-only ones (as normal dependencies too): the CLI serves the
/// sandbox for `stowage sandbox` and `stowage demo`; the harness and benchmarks are tests.
const MAY_USE_TEST_ONLY: &[&str] = &["stowage-cli", "stowage-tests", "stowage-load-tests"];

/// What the sandbox itself may build on: the cluster crate's ports and the domain types.
const SANDBOX_MAY_USE: &[&str] = &["stowage-cluster", "stowage-disk", "stowage-schemas"];

/// The workspace's members, and `(crate, dependency, kind)` for every dependency between
/// them; kind is `normal`, `dev` or `build`.
fn workspace_graph() -> (Vec<String>, Vec<(String, String, String)>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let packages = metadata["packages"].as_array().expect("a package list");
    let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut edges = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap_or_default();
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            if members.contains(&dep_name) {
                let kind = dep["kind"].as_str().unwrap_or("normal").to_owned();
                edges.push((name.to_owned(), dep_name.to_owned(), kind));
            }
        }
    }
    (members.into_iter().map(str::to_owned).collect(), edges)
}

#[test]
fn crate_arrows_point_one_way() {
    let floors: BTreeMap<&str, u8> = FLOORS.iter().copied().collect();
    let (members, edges) = workspace_graph();
    let unplaced: Vec<&String> = members
        .iter()
        .filter(|m| {
            !floors.contains_key(m.as_str())
                && !TEST_ONLY.contains(&m.as_str())
                && !MAY_USE_TEST_ONLY.contains(&m.as_str())
        })
        .collect();
    assert!(
        unplaced.is_empty(),
        "give these crates a floor in FLOORS (and a place in ARCHITECTURE.md): {unplaced:?}"
    );
    assert!(
        edges
            .iter()
            .any(|(from, to, _)| from == "stowage-stages" && to == "stowage-vault"),
        "the metadata lists the workspace's own edges: {edges:?}"
    );
    let mut wrong = Vec::new();
    for (from, to, kind) in &edges {
        if kind == "dev" && !TEST_ONLY.contains(&from.as_str()) {
            // Tests of any crate may use anything (the sandbox, the harness, crates above).
            continue;
        }
        if TEST_ONLY.contains(&to.as_str()) && !MAY_USE_TEST_ONLY.contains(&from.as_str()) {
            wrong.push(format!(
                "{from} → {to} ({kind}): only the CLI and tests may depend on {to}"
            ));
            continue;
        }
        if from == "stowage-sandbox" {
            if !SANDBOX_MAY_USE.contains(&to.as_str()) {
                wrong.push(format!(
                    "{from} → {to} ({kind}): the sandbox builds on {SANDBOX_MAY_USE:?} only"
                ));
            }
            continue;
        }
        if let (Some(f), Some(t)) = (floors.get(from.as_str()), floors.get(to.as_str()))
            && f <= t
        {
            wrong.push(format!(
                "{from} (floor {f}) → {to} (floor {t}) ({kind}): arrows point down only \
                 (cli → control → stages → runtime / vault / disk / cluster → schemas)"
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong-way arrows:\n{}", wrong.join("\n"));
}
