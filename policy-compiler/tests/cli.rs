#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! The `claimgate` binary as a shell runs it: output into a closed pipe, headers as given.

use std::io::Write;
use std::process::{Command, Stdio};

use policy_compiler::header_pairs;

// `when_required`: the broken token the tests send is not looked at on the public path, so
// one explain allows (exit 0) and one denies (exit 2).
const POLICY: &str = r#"
version = 1
[token]
verify = "when_required"
[[rules]]
name = "health"
paths = ["/health"]
allow = "anyone"
"#;

/// Runs the binary with its standard output on a pipe whose reading end is closed before
/// the binary can write (what `claimgate … | head` becomes once `head` has read its lines):
/// the binary first reads `stdin` to its end (a `-` token, or the policy as `/dev/stdin`),
/// and the pipe is closed before that end comes. Returns the status and stderr.
fn run_into_closed_pipe(args: &[&str], stdin: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut input = child.stdin.take().unwrap();
    // A binary that exited without reading its input makes this write fail: its status
    // and stderr tell why.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Issue 8, defect 11: `explain … | head` panicked on the broken pipe ("failed printing to
/// stdout"), exit 101 instead of the decision's exit code.
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let dir = std::env::temp_dir().join(format!("claimgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    let policy = path.to_str().unwrap();
    for json in [false, true] {
        for (request_path, decision) in [("/health", 0), ("/other", 2)] {
            let mut args = vec![
                "explain",
                "--policy",
                policy,
                "--path",
                request_path,
                "--now",
                "1800000000",
                "--token",
                "-",
            ];
            if json {
                args.push("--json");
            }
            let (status, stderr) = run_into_closed_pipe(&args, "not-a-token");
            assert_eq!(status, Some(decision), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        }
    }
    for args in [
        vec!["compile", "/dev/stdin"],
        vec!["check", "--json", "/dev/stdin"],
        vec!["test", "/dev/stdin", "/dev/null"],
    ] {
        let (status, stderr) = run_into_closed_pipe(&args, POLICY);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(status, Some(101), "{args:?}: {stderr}");
    }
}

/// Issue 8, defect 10: the engine must see every `--header` as a separate header line, in
/// order, so that two token headers are judged as the filter judges them.
#[test]
fn headers_pass_through_in_order_without_merging() {
    let pairs = header_pairs(&[
        "Authorization=Bearer a".to_owned(),
        "x-tenant= blue ".to_owned(),
        "authorization=Bearer b".to_owned(),
        "x-empty=".to_owned(),
    ])
    .unwrap();
    assert_eq!(
        pairs,
        [
            ("authorization".to_owned(), "Bearer a".to_owned()),
            ("x-tenant".to_owned(), "blue".to_owned()),
            ("authorization".to_owned(), "Bearer b".to_owned()),
            ("x-empty".to_owned(), String::new()),
        ]
    );
    for bad in ["novalue", "=x", "bad name=x", "é=x"] {
        assert!(header_pairs(&[bad.to_owned()]).is_err(), "{bad}");
    }
}

/// Issue 8, defect 10: `explain` took the first of two `Authorization` headers (200) where
/// Envoy hands the filter both (401). It now passes every `--header` to the engine.
#[test]
fn explain_gives_the_filters_answer_for_repeated_token_headers() {
    use jwt_simple::prelude::*;

    let secret = [7u8; 32];
    let policy = format!(
        "version = 1\n[issuers.hs]\nissuer = \"https://hs\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"{}\"\n[[rules]]\nname = \"r\"\npaths = [\"/score\"]\nallow = \"authenticated\"\n",
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"
    );
    let dir = std::env::temp_dir().join(format!("claimgate-cli-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let claims = Claims::create(Duration::from_secs(600))
        .with_issuer("https://hs")
        .with_audience("api")
        .with_subject("alice");
    let token = HS256Key::from_bytes(&secret).authenticate(claims).unwrap();
    let explain = |extra: &[String]| {
        let output = Command::new(env!("CARGO_BIN_EXE_claimgate"))
            .args(["explain", "--json", "--path", "/score", "--policy"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (
            output.status.code(),
            answer["status"].as_u64(),
            answer["code"].as_str().map(str::to_owned),
        )
    };
    let header = |value: &str| vec!["--header".to_owned(), format!("authorization={value}")];
    let bearer = format!("Bearer {token}");
    assert_eq!(explain(&header(&bearer)), (Some(0), Some(200), None));
    let malformed = (Some(2), Some(401), Some("malformed_token".to_owned()));
    let twice = [header(&bearer), header(&bearer)].concat();
    assert_eq!(explain(&twice), malformed);
    let junk_first = [header("Bearer junk"), header(&bearer)].concat();
    assert_eq!(explain(&junk_first), malformed);
    let with_token = [header(&bearer), vec!["--token".to_owned(), token.clone()]].concat();
    assert_eq!(explain(&with_token), malformed);
}

/// Review finding: the filter drops the client's copies of identity and claim headers before
/// it decides, but `explain` decided on every `--header`. A claim header named like a header
/// a check reads itself (here `origin`, read by the CORS preflight check) made explain pass
/// (200, a preflight) what the filter refuses (its `origin` is gone: no preflight, no token).
#[test]
fn explain_decides_without_the_clients_copies_of_claim_headers() {
    let policy = "version = 1\ncors_preflight = \"allow\"\n[issuers.hs]\nissuer = \"https://hs\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc\"\nclaims_to_headers = { \"origin\" = \"sub\" }\n[[rules]]\nname = \"r\"\npaths = [\"/private\"]\nallow = \"authenticated\"\n";
    let dir = std::env::temp_dir().join(format!("claimgate-cli-o-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args([
            "explain", "--json", "--method", "OPTIONS", "--path", "/private",
        ])
        .arg("--policy")
        .arg(&path)
        .args(["--header", "origin=https://app.example"])
        .args(["--header", "access-control-request-method=POST"])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(answer["status"], 401, "{answer:#}");
    assert_eq!(answer["removed_headers"], serde_json::json!([]));
}
