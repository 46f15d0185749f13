//! The variable tables in README.md and docs/configuration.md are the ones
//! `liftoff config --variables` prints: no variable undocumented, no stale row.

use std::process::Command;

fn table() -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_liftoff"))
        .args(["config", "--variables"])
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn readme_and_configuration_guide_carry_the_current_table() {
    let table = table();
    assert!(table.lines().count() > 30, "{table}");
    for doc in ["README.md", "docs/configuration.md"] {
        let text = std::fs::read_to_string(doc).unwrap();
        assert!(
            text.contains(&table),
            "{doc} is out of date: paste the output of `liftoff config --variables` into it"
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    assert!(readme.contains("scripts/test.sh") && ci.contains("scripts/test.sh"));
}
