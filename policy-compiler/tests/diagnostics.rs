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

error[bad_principal]: `anyon` is not a value of `allow`: write one of `anyone`, `authenticated`, `unauthenticated`, or a table
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

/// Runs the binary in `dir` and returns its exit code, stdout and stderr.
fn run(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Names the policy does not have, where the CLI takes them: the deciding rule a test case
/// expects, the issuer of `explain --jwks`.
#[test]
fn names_the_policy_does_not_have_get_did_you_mean() {
    let dir = std::env::temp_dir().join(format!("claimgate-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        "version = 1\n[issuers.keycloak]\nissuer = \"https://idp\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n[issuers.keycloak.jwks]\nuri = \"https://idp/certs\"\n[[rules]]\nname = \"health\"\npaths = [\"/health\"]\nallow = \"anyone\"\n[[rules]]\nname = \"score\"\npaths = [\"/score\"]\nallow = { issuers = [\"keycloak\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cases.toml"),
        "[[case]]\nname = \"health\"\npath = \"/health\"\nexpect = { decision = \"allow\", rule = \"helth\" }\n[[case]]\nname = \"other\"\npath = \"/health\"\nexpect = { decision = \"allow\", rule = \"score\" }\n",
    )
    .unwrap();
    let (code, stdout, _) = run(&dir, &["test", "policy.toml", "cases.toml"]);
    assert_eq!(code, Some(2));
    assert!(
        stdout.contains(
            "rule: expected helth, got health (the policy has no rule `helth`; did you mean `health`?)"
        ),
        "{stdout}"
    );
    // A rule the policy has, that simply did not decide: no suggestion.
    assert!(
        stdout.contains("rule: expected score, got health\n"),
        "{stdout}"
    );
    let (code, _, stderr) = run(
        &dir,
        &[
            "explain",
            "--policy",
            "policy.toml",
            "--path",
            "/health",
            "--jwks",
            "keycloack=keys.json",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no issuer `keycloack` in the policy; did you mean `keycloak`?"),
        "{stderr}"
    );
}

/// Keycloak serves an RSA-OAEP `use: enc` key beside its signing key. Skipping it is expected:
/// a note that `--deny-warnings` lets pass (the filter logs it at info), while any other
/// skipped key stays a warning that fails it.
#[test]
fn an_encryption_key_is_a_note_and_other_skipped_keys_are_warnings() {
    let sig = r#"{"kty":"EC","crv":"P-256","kid":"sig-1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    let enc = r#"{"kty":"RSA","kid":"enc-1","use":"enc","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}"#;
    let policy = |keys: &str| {
        format!(
            "version = 1\n[issuers.kc]\nissuer = \"https://kc.example/realms/ml\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n[issuers.kc.jwks]\ninline = '{{\"keys\":[{keys}]}}'\n[[rules]]\nname = \"r\"\nallow = \"authenticated\"\n"
        )
    };
    let dir = std::env::temp_dir().join(format!("claimgate-enc-note-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_claimgate"))
            .args(["check", "--deny-warnings", name])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let keycloak = check("keycloak.toml", policy(&format!("{enc},{sig}")));
    let stderr = String::from_utf8_lossy(&keycloak.stderr);
    assert_eq!(keycloak.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("note[skipped_keys]"), "{stderr}");
    assert!(stderr.contains("0 warning(s)"), "{stderr}");
    let odd = check(
        "odd.toml",
        policy(&format!(r#"{enc},{{"kty":"oct","k":"AAAA"}},{sig}"#)),
    );
    let stderr = String::from_utf8_lossy(&odd.stderr);
    assert_eq!(odd.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("warning[skipped_keys]"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Thousands of errors (a generated policy gone wrong) are all counted, the first 100 shown
/// with snippets, and the rest named in one line.
#[test]
fn a_flood_of_errors_is_capped_when_rendered() {
    let dir = std::env::temp_dir().join(format!("claimgate-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut policy = String::from("version = 1\n");
    for i in 0..2_000 {
        policy.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\nallow = \"anyone\"\nnmae = 1\n"
        ));
    }
    std::fs::write(dir.join("flood.toml"), policy).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(["check", "flood.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        stderr.matches("error[unknown_field]").count(),
        100,
        "{stderr}"
    );
    assert!(stderr.contains("... and 1900 more not shown"), "{stderr}");
    assert!(stderr.contains("2000 error(s)"), "{stderr}");
}
