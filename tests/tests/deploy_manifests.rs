//! The Kubernetes manifests under `deploy/kubernetes/`: every resource the
//! kustomization lists validates, strictly, against the Kubernetes API
//! schemas of the oldest and newest versions it supports (PyPI's
//! `kubernetes-validate`, which carries the schemas, so this runs offline);
//! every manifest in the directory is listed; the config the ConfigMap
//! carries is one the agent accepts; the ClusterRole asks for pods only.
//! A manifest with a misspelt field is refused, so the validator is live.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use selfops_tests::{python, scratch_dir, workspace_root};

/// The oldest Kubernetes still maintained and the newest the validator knows.
const VERSIONS: [&str; 2] = ["1.31.0", "1.37.0"];

fn base() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn yaml(path: &Path) -> serde_yaml_ng::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files `kustomization.yaml` lists under `resources`.
fn resources() -> Vec<PathBuf> {
    let kustomization = yaml(&base().join("kustomization.yaml"));
    kustomization["resources"]
        .as_sequence()
        .expect("kustomization.yaml: resources")
        .iter()
        .map(|r| base().join(r.as_str().expect("a file name")))
        .collect()
}

/// Runs the validator over `files`; its output and whether it passed.
fn validate(python: &Path, version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python)
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            version,
        ])
        .args(files)
        .output()
        .expect("run kubernetes_validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn manifests_validate_against_the_kubernetes_api_schema() {
    let Some(python) = python::with("manifests_validate", "kubernetes_validate") else {
        return;
    };
    let files = resources();
    for version in VERSIONS {
        let (ok, out) = validate(&python, version, &files);
        assert!(ok, "Kubernetes {version}:\n{out}");
    }

    // A misspelt field (`hostPid`) must fail: the check is strict and live.
    let broken = scratch_dir("manifests-broken").join("daemonset.yaml");
    let daemonset = std::fs::read_to_string(base().join("daemonset.yaml")).expect("daemonset");
    assert!(daemonset.contains("hostPID: true"));
    std::fs::write(&broken, daemonset.replace("hostPID: true", "hostPid: true")).expect("write");
    let (ok, out) = validate(&python, VERSIONS[1], &[broken]);
    assert!(!ok, "a misspelt field passed:\n{out}");
}

#[test]
fn every_manifest_is_in_the_kustomization() {
    let mut listed: Vec<String> = resources()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(base())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

#[test]
fn the_configmap_carries_a_config_the_agent_accepts() {
    let configmap = yaml(&base().join("configmap.yaml"));
    let text = configmap["data"]["selfops.yaml"]
        .as_str()
        .expect("configmap.yaml: data.selfops.yaml");
    if let Err(err) =
        selfops_agent::config::Config::parse(text, Path::new("configmap.yaml#selfops.yaml"))
    {
        panic!("{err}");
    }
}

#[test]
fn the_cluster_role_reads_pods_and_nothing_else() {
    let role = yaml(&base().join("clusterrole.yaml"));
    let rules = role["rules"].as_sequence().expect("rules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let strings = |v: &serde_yaml_ng::Value| -> Vec<String> {
        v.as_sequence()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
    assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
    assert_eq!(strings(&rules[0]["verbs"]), ["get", "list", "watch"]);
}
