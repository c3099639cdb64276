#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! The path index and the matcher agree: for random policies built from every path pattern
//! (Istio's `/prefix*`, `*suffix`, `*` among them, with exclusions) and random request paths,
//! the rules `Engine::decide` matches through its index are exactly the rules a brute-force
//! scan of every rule matches.

use std::collections::BTreeSet;

use claimgate_core::blob;
use claimgate_core::canonical;
use claimgate_core::compile::compile;
use claimgate_core::compiled::PathParameters;
use claimgate_core::engine::{RemoteKeys, Request};
use claimgate_core::matcher;
use claimgate_core::upstream::IdentityHeaderNames;
use proptest::prelude::*;

const PATTERNS: [&str; 14] = [
    "/a", "/a/*", "/ab*", "/a/b*", "/A*", "*/b", "*.json", "*b", "*", "/{x}/b", "/b/{y}", "/b/*",
    "/", "/a/b",
];

const SEGMENTS: [&str; 7] = ["a", "A", "b", "ab", "b.json", "abc", "B"];

fn rule_text(i: usize, paths: &[usize], not_path: Option<usize>, deny: bool) -> String {
    let list = |ids: &[usize]| {
        ids.iter()
            .map(|&p| format!("\"{}\"", PATTERNS[p]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!("[[rules]]\nname = \"r{i}\"\npaths = [{}]\n", list(paths));
    if let Some(p) = not_path {
        text.push_str(&format!("not_paths = [{}]\n", list(&[p])));
    }
    text.push_str(if deny {
        "deny = \"anyone\"\n"
    } else {
        "allow = \"anyone\"\n"
    });
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn the_index_finds_every_rule_the_matcher_matches(
        rules in proptest::collection::vec(
            (proptest::collection::vec(0..PATTERNS.len(), 1..3),
             proptest::option::of(0..PATTERNS.len()),
             any::<bool>()),
            1..8),
        paths in proptest::collection::vec(
            (proptest::collection::vec(0..SEGMENTS.len(), 0..4), any::<bool>()),
            1..12),
    ) {
        let mut text = String::from("version = 1\n");
        for (i, (ids, not_path, deny)) in rules.iter().enumerate() {
            text.push_str(&rule_text(i, ids, *not_path, *deny));
        }
        // Exclusions that exclude every path are refused: such policies are skipped.
        let compiled = compile(&text, "p.toml", &|_| Err("none".to_owned()));
        prop_assume!(compiled.is_ok());
        let compiled = compiled.unwrap();
        let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
        let engine = blob::engine_from_plugin_config(&config).unwrap();
        let names = IdentityHeaderNames::new(&compiled.policy.token.identity_header_prefix);
        for (segments, trailing) in &paths {
            let mut path: String = segments.iter().map(|&s| format!("/{}", SEGMENTS[s])).collect();
            if path.is_empty() || *trailing {
                path.push('/');
            }
            let request = Request { method: "GET", host: "h", path: &path, headers: &[] };
            let mut trace = Vec::new();
            let decision = engine.decide(&request, 0, &RemoteKeys::default(), Some(&mut trace));
            let indexed: BTreeSet<String> = decision.matched_rules.into_iter().collect();
            let canonical = canonical::canonical_path(&path, PathParameters::Reject).unwrap();
            let brute: BTreeSet<String> = compiled
                .policy
                .rules
                .iter()
                .filter(|rule| {
                    matcher::rule_matches(rule, "GET", "h", &canonical, &request, &names).is_some()
                })
                .map(|rule| rule.name.clone())
                .collect();
            prop_assert_eq!(&indexed, &brute, "path {} in\n{}", path, text);
        }
    }
}

/// One rule per new pattern is found for a request it matches (the index files it where the
/// request looks), in both spellings a rule can have.
#[test]
fn each_new_pattern_is_found_through_the_index() {
    for (pattern, path) in [
        ("/mod*", "/models/x"),
        ("/v2/mod*", "/v2/models"),
        ("*/score", "/a/b/score"),
        ("*.json", "/x.json"),
        ("*", "/anything/at/all"),
    ] {
        for (effect, request_path) in [("allow", path.to_owned()), ("deny", path.to_uppercase())] {
            let text = format!(
                "version = 1\n[[rules]]\nname = \"other\"\npaths = [\"/zzz\"]\nallow = \"anyone\"\n[[rules]]\nname = \"r\"\npaths = [\"{pattern}\"]\n{effect} = \"anyone\"\n"
            );
            let compiled = compile(&text, "p.toml", &|_| Err("none".to_owned())).unwrap();
            let config =
                serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
            let engine = blob::engine_from_plugin_config(&config).unwrap();
            let request = Request {
                method: "GET",
                host: "h",
                path: &request_path,
                headers: &[],
            };
            let mut trace = Vec::new();
            let decision = engine.decide(&request, 0, &RemoteKeys::default(), Some(&mut trace));
            assert_eq!(
                decision.matched_rules,
                ["r"],
                "{pattern} {effect} {request_path}"
            );
        }
    }
}
