//! The demo is the end-to-end test of the Cal-LLM story: it exits 0 only when ingress, the
//! canary split and egress all behave.

use std::path::Path;
use std::process::Command;

#[test]
fn the_three_patterns_behave() {
    let demo = Path::new(env!("CARGO_BIN_EXE_cal-llm"));
    let portcullis = demo
        .parent()
        .expect("the binaries' directory")
        .join("portcullis");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cal-llm");
    let output = Command::new(demo)
        .arg("demo")
        .arg("--portcullis")
        .arg(&portcullis)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run the demo (cargo test --workspace builds portcullis too)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
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
