//! A playbook whose condition is an ONNX model: `anomaly: { kind: onnx, … }`
//! on one executable's CPU. The model (made at test time with Python's
//! `onnx`) scores a jump between the start and the end of its 8-point
//! window; a process of the test's that idles, then spins, is the jump. In dry-run the
//! decision is audited like any other, and nothing is enforced.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use selfops_tests::{
    Agent,
    audit::{log_records, number, wait_for_record},
    one_agent_at_a_time, onnx, privileged, scratch_dir,
};
use serde_json::Value;

const PLAYBOOK: &str = "onnx-cpu-jump";
const HOG: &str = "selfops-onnxhog";

fn config(model: &std::path::Path) -> String {
    format!(
        r#"
trace:
  enabled: false
export:
  batch_timeout: 100ms
actuation:
  interval: 100ms
  mode: dry-run
  playbooks:
    - name: {PLAYBOOK}
      when:
        signal: process.cpu.utilization
        executable: {HOG}
        anomaly: {{ kind: onnx, model: "{}", window: 8, input: x, output: score }}
        score_above: 0.5
      do: {{ throttle: {{ port: 9, per_second: 100 }} }}
      ttl: 30s
      cooldown: 120s
"#,
        model.display()
    )
}

/// Kills the busy process on drop.
struct Hog(std::process::Child);

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_onnx_anomaly_condition_fires_on_a_cpu_jump_and_is_audited() {
    let test = "an_onnx_anomaly_condition_fires_on_a_cpu_jump_and_is_audited";
    if !privileged(test) {
        return;
    }
    let Some(python) = onnx::python(test) else {
        return;
    };
    let _one = one_agent_at_a_time();
    let dir = scratch_dir("onnx-anomaly-model");
    let model = dir.join("jump.onnx");
    onnx::make_model(&python, "jump", 8, &model);
    // A process with a name of its own (a copy of the shell) that idles
    // for a few seconds, so the series exists and is flat, then spins.
    let hog_bin = dir.join(HOG);
    std::fs::copy("/bin/sh", &hog_bin).unwrap_or_else(|e| panic!("copying sh: {e}"));

    let agent = Agent::start("onnx-anomaly", &config(&model));
    let hog = Hog(Command::new(&hog_bin)
        .args(["-c", "sleep 4; while :; do :; done"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {HOG}: {e}")));
    // Idle first: full windows of flat readings fire nothing.
    std::thread::sleep(Duration::from_secs(3));
    let early: Vec<_> = log_records(&agent)
        .into_iter()
        .filter(|(name, _)| name == "selfops.action.applied")
        .collect();
    assert!(early.is_empty(), "fired before the jump: {early:?}");
    let applied = wait_for_record(
        &agent,
        "selfops.action.applied",
        Duration::from_secs(15),
        |a| a["selfops.playbook"] == PLAYBOOK,
    );
    drop(hog);
    eprintln!("applied: {applied:?}");
    assert_eq!(applied["selfops.dry_run"], Value::Bool(true), "{applied:?}");
    let score = number(&applied, "selfops.signal.compared");
    assert!((0.5..=1.0).contains(&score), "score {score}: {applied:?}");
    assert!(
        number(&applied, "selfops.signal.value") > 0.05,
        "{applied:?}"
    );
    assert!(agent.metric("selfops_playbook_decisions_total", &["outcome=\"applied\""]) >= 1.0);
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "agent exit {status}");
}

#[test]
fn an_onnx_model_that_does_not_fit_the_window_is_a_config_error() {
    let test = "an_onnx_model_that_does_not_fit_the_window_is_a_config_error";
    let Some(python) = onnx::python(test) else {
        return;
    };
    let dir = scratch_dir("onnx-config");
    let model = dir.join("jump.onnx");
    onnx::make_model(&python, "jump", 8, &model);
    let config_path = dir.join("selfops.yaml");
    let text = config(&model).replace("window: 8", "window: 12");
    std::fs::write(&config_path, text).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(selfops_tests::selfops_bin())
        .args(["run", "--config"])
        .arg(&config_path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a mismatched model: {stderr}"
    );
    assert!(stderr.contains("onnx.window"), "{stderr}");
}
