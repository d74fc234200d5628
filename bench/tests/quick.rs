//! Smoke test: the harness runs every section with tiny counts against the
//! server binary built in the same workspace and prints its table. It checks
//! that the harness works, never how fast anything is.

use std::path::Path;
use std::process::Command;

#[test]
fn quick_run_prints_full_table() {
    let harness = env!("CARGO_BIN_EXE_kubefaas-bench");
    let server = Path::new(harness).with_file_name("kubefaas");
    assert!(
        server.is_file(),
        "{} is missing: build the whole workspace first (cargo build --workspace)",
        server.display()
    );

    let output = Command::new(harness).arg("--quick").arg("--server").arg(&server).output().expect("running the harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the harness failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);

    assert!(
        stdout.starts_with("| Section | Figure | Measured | Baseline | Ratio | Target | Result | Runs |\n"),
        "the output does not start with the table header:\n{stdout}"
    );
    for section in ["1 warm call", "2 cold start", "3 builds", "4 scale", "5 upload", "6 burst"] {
        assert!(stdout.contains(&format!("\n| {section} |")), "no row for section {section}:\n{stdout}");
    }
    assert!(!stdout.contains("| every figure | failed:"), "a section failed:\n{stdout}");
}
