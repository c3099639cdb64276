#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Issue 11, item 4: `claimgate check` as a person sees it. Every problem in one run,
//! rendered as rustc renders its errors (a snippet of the policy, the place underlined, the
//! hint as `help:`), colour off when standard error is not a terminal.

use std::process::Command;

const POLICY: &str = r#"version = 1
[token]
default = "allow"

[[rules]]
nmae = "health"
paths = ["/health"]
allow = "anyon"
"#;

const EXPECTED: &str = r#"error[unknown_field]: unknown field `default` in `[token]`
 --> policy.toml:3:1
  |
3 | default = "allow"
  | ^^^^^^^
  |
  = help: `default` is a top-level key: keys after `[token]` belong to that table; move `default = …` above the first table header

error[unknown_field]: unknown field `nmae` in `[[rules]]` #1
 --> policy.toml:6:1
  |
6 | nmae = "health"
  | ^^^^
  |
  = help: did you mean `name`?

error[bad_principal]: `anyon` is not a value of `allow`: write one of `anyone`, `authenticated`
 --> policy.toml:8:9
  |
8 | allow = "anyon"
  |         ^^^^^^^
  |
  = help: did you mean `anyone`?

policy.toml: 3 error(s), 0 warning(s)
"#;

#[test]
fn check_reports_every_problem_with_a_snippet() {
    let dir = std::env::temp_dir().join(format!("claimgate-diagnostics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(["check", "policy.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&output.stderr), EXPECTED);
}
