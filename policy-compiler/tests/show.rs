#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! `claimgate show` and `--version`, through the built binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use claimgate_core::blob;
use serde_json::Value;

fn claimgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(args)
        .output()
        .unwrap()
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// show(compile(x)) gives back x's policy, for every example.
#[test]
fn show_reads_back_what_compile_wrote_for_every_example() {
    let scratch = std::env::temp_dir().join(format!("claimgate-show-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for example in examples() {
        let compiled = policy_compiler::compile_file(&example).unwrap().policy;
        let config = blob::plugin_config(&compiled).unwrap();
        let file = scratch.join("plugin.json");
        std::fs::write(&file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let out = claimgate(&["show", "--format", "json", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{example:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        let policy = &summary[0]["policy"];
        assert_eq!(policy["name"], compiled.name.as_str(), "{example:?}");
        assert_eq!(policy["version"], config.digest.as_str());
        assert_eq!(policy["blob"]["format"], blob::FORMAT_VERSION);
        let issuers: Vec<(&str, Option<&str>)> = policy["issuers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].as_str().unwrap(), i["jwks"]["cluster"].as_str()))
            .collect();
        let expected: Vec<(&str, Option<&str>)> = compiled
            .issuers
            .iter()
            .map(|i| {
                (
                    i.name.as_str(),
                    i.remote_jwks.as_ref().map(|r| r.cluster.as_str()),
                )
            })
            .collect();
        assert_eq!(issuers, expected, "{example:?}");
        let rules: Vec<&str> = policy["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        let expected: Vec<&str> = compiled.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(rules, expected, "{example:?}");
        assert_eq!(
            policy["revoked"]["subjects"],
            compiled.revoked.subjects.len()
        );
        assert_eq!(
            policy["revoked"]["token_ids"],
            compiled.revoked.token_ids.len()
        );
        let text = claimgate(&["show", file.to_str().unwrap()]);
        assert!(text.status.success());
        let text = String::from_utf8(text.stdout).unwrap();
        assert!(
            text.contains(&config.digest)
                && text.contains(&format!("format {}", blob::FORMAT_VERSION)),
            "{text}"
        );
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn show_refuses_a_corrupt_file_with_exit_1_and_a_reason() {
    let file = std::env::temp_dir().join(format!("claimgate-corrupt-{}.json", std::process::id()));
    std::fs::write(
        &file,
        r#"{"name":"x","digest":"sha256:00","policy":"Q0dQQgIA"}"#,
    )
    .unwrap();
    let out = claimgate(&["show", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("shorter than its 38-byte header"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn version_names_the_blob_format_it_writes() {
    let out = claimgate(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "claimgate {} (policy blob format {})\n",
            env!("CARGO_PKG_VERSION"),
            blob::FORMAT_VERSION
        )
    );
}
