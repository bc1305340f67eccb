//! The demo is the end-to-end test of the Cal-LLM story: it exits 0 only when ingress, the
//! canary split and egress all behave.

use std::path::Path;
use std::process::Command;

/// Runs `cal-llm demo` with `extra` arguments; its stdout, once it exited 0.
fn run_demo(extra: &[&str]) -> String {
    let demo = Path::new(env!("CARGO_BIN_EXE_cal-llm"));
    let portcullis = demo
        .parent()
        .expect("the binaries' directory")
        .join("portcullis");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cal-llm");
    let output = Command::new(demo)
        .arg("demo")
        .args(extra)
        .arg("--portcullis")
        .arg(&portcullis)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run the demo (cargo test --workspace builds portcullis too)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

#[test]
fn the_three_patterns_behave() {
    let stdout = run_demo(&[]);
    for expected in [
        "[ok] Host www.cal-llm.com: 200, 3 sessions listed",
        "[ok] Host www.example.com: 404",
        "calls on one connection: calendar",
        "[ok] api.mistral.ai:8443 allowed",
        "[ok] example.com:8443 denied",
        "all three patterns behave",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
}

/// The same story in pods: one network namespace per workload, transparent sidecars, the
/// calendar split at a ClusterIP no interface has, egress by SNI to a pod outside the
/// cluster networks. Needs root (CI runs as root).
#[test]
fn the_three_patterns_behave_in_pods_with_sidecars() {
    let stdout = run_demo(&["--netns"]);
    for expected in [
        "[ok] Host www.cal-llm.com: 200, 3 sessions listed",
        "[ok] Host www.example.com: 404",
        "10.96.0.10:8080, from the web-app pod",
        "calls on one connection: calendar",
        "[ok] api.mistral.ai:443 allowed",
        "[ok] example.com:443 denied",
        "all three patterns behave",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
}
