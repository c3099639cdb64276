//! TOML policy → [`CompiledPolicy`], with every problem reported at its place in the file.
//!
//! The compiler gathers all errors it can find in one run (a TOML syntax error stops it
//! early, since nothing after it can be trusted), each with file, line, column and a hint.
//! Warnings (an issuer no rule uses, a rule another rule shadows, keys left out of a key
//! set, a key set fetched over plain HTTP) do not stop compilation.
//!
//! Reading a policy goes TOML syntax → [`structure`] (every unknown key and wrong type,
//! checked against the JSON Schema of [`schema`], the one editors read) → serde types →
//! semantic passes, so one run reports every problem.
//!
//! One concern per module: [`diagnostics`] (what is reported), [`suggest`] ("did you
//! mean"), [`durations`], [`issuers`]
//! and [`jwks`] (`[issuers.*]`), [`rules`] and [`principals`] (`[[rules]]`), [`revoked`],
//! [`index`] (the path index) and [`lints`] (warnings). The serde model of the language is
//! [`crate::source`].

mod diagnostics;
mod durations;
mod index;
mod issuers;
mod jwks;
mod lints;
mod locations;
mod principals;
mod revoked;
mod rules;
mod schema;
mod schema_facts;
mod structure;
mod suggest;

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::compiled::{CompiledPolicy, IdentityHeader, TokenSettings};
use crate::source::{PolicySource, TokenSource};
use diagnostics::Context;
pub use diagnostics::{Diagnostic, Severity};
pub use durations::parse_duration;
pub use rules::{PathError, parse_path};
pub use schema::{policy_schema, policy_schema_json};
pub use suggest::closest as closest_name;

/// A successful compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The policy.
    pub policy: CompiledPolicy,
    /// Warnings found on the way.
    pub warnings: Vec<Diagnostic>,
}

/// Reads a file named in the policy (a JWKS), relative to the policy file. The core does no
/// I/O itself: the CLI passes a reader, tests pass a map.
pub type FileReader<'a> = dyn Fn(&str) -> Result<String, String> + 'a;

/// Reads the policy: TOML syntax (every syntax error, then stop: nothing after one can be
/// trusted), then its structure against the schema (every unknown key and wrong type), then
/// the serde types from what the structural pass left.
fn parse(cx: &mut Context<'_>, text: &str) -> Option<PolicySource> {
    let (mut document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in syntax_errors {
            let span = error.span().unwrap_or(0..0);
            cx.error(
                "syntax",
                &span,
                error.message().trim_end().to_owned(),
                "fix the TOML here; nothing else was checked",
            );
        }
        return None;
    }
    let issuer_names = |document: &Spanned<DeTable<'_>>| -> Vec<String> {
        match document.get_ref().get("issuers").map(Spanned::get_ref) {
            Some(DeValue::Table(issuers)) => {
                issuers.keys().map(|k| k.get_ref().to_string()).collect()
            }
            _ => Vec::new(),
        }
    };
    let before = issuer_names(&document);
    let readable = structure::check(cx, text, &schema::policy_schema(), &mut document);
    let after = issuer_names(&document);
    cx.malformed_issuers = before.into_iter().filter(|n| !after.contains(n)).collect();
    if !readable {
        return None;
    }
    match PolicySource::deserialize(toml::de::Deserializer::from(document)) {
        Ok(source) => Some(source),
        Err(error) => {
            // The structural pass missed this (or reported it and left the rest unreadable).
            if !cx.has_errors() {
                let span = error.span().unwrap_or(0..0);
                cx.error(
                    "syntax",
                    &span,
                    error.message().trim_end().to_owned(),
                    "check this against the policy language in README.md",
                );
            }
            None
        }
    }
}

/// The identity header prefix, lower case, if it is usable.
fn identity_prefix(source: &TokenSource) -> Option<String> {
    let prefix = source.identity_header_prefix.get_ref().to_ascii_lowercase();
    (prefix.len() >= 3
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    .then_some(prefix)
}

/// `[token]`: where tokens are read and the prefix of the identity headers.
fn token_settings(cx: &mut Context<'_>, source: &TokenSource) -> Option<TokenSettings> {
    let mark = cx.mark();
    let prefix = source.identity_header_prefix.get_ref().to_ascii_lowercase();
    if identity_prefix(source).is_none() {
        cx.error(
            "identity_header_prefix",
            &source.identity_header_prefix.span(),
            format!("`{prefix}` is not a usable header prefix"),
            "use letters, digits and dashes, e.g. `x-claimgate-`",
        );
    }
    let locations =
        locations::policy_locations(cx, source, &source.identity_header_prefix.span(), &prefix);
    let identity_headers = identity_headers(cx, source);
    (!cx.errors_since(mark)).then_some(TokenSettings {
        locations,
        forward_token: source.forward,
        identity_header_prefix: prefix,
        verify: source.verify,
        identity_headers,
    })
}

/// `[token] identity_headers`, each named once (all six when the key is absent).
fn identity_headers(cx: &mut Context<'_>, source: &TokenSource) -> Vec<IdentityHeader> {
    let Some(named) = &source.identity_headers else {
        return IdentityHeader::ALL.to_vec();
    };
    let mut headers = Vec::with_capacity(named.len());
    for header in named {
        if headers.contains(header.get_ref()) {
            cx.error(
                "duplicate",
                &header.span(),
                "this identity header is named twice in `identity_headers`".to_owned(),
                "name each identity header once",
            );
        } else {
            headers.push(*header.get_ref());
        }
    }
    headers
}

/// Compiles a policy file's text. `file` names it in diagnostics; `read` loads JWKS files.
pub fn compile(text: &str, file: &str, read: &FileReader<'_>) -> Result<Compiled, Vec<Diagnostic>> {
    let mut cx = Context::new(file, text);
    let Some(source) = parse(&mut cx, text) else {
        return Err(cx.diagnostics);
    };
    if *source.version.get_ref() != 1 {
        cx.error(
            "version",
            &source.version.span(),
            format!(
                "policy language version {} is not supported",
                source.version.get_ref()
            ),
            "write `version = 1`",
        );
    }
    let issuers = issuers::compile_issuers(&mut cx, &source.issuers, read);
    // Issuers are referred to by their index in name order (`source.issuers` is sorted).
    let issuer_index: HashMap<&str, u32> = source
        .issuers
        .keys()
        .zip(0u32..)
        .map(|(name, i)| (name.as_str(), i))
        .collect();
    let token = token_settings(&mut cx, &source.token);
    let revoked = revoked::compile_revoked(&mut cx, &source.revoked, &issuer_index);
    let prefix = identity_prefix(&source.token);
    if let Some(name) = &source.name
        && name.chars().any(char::is_control)
    {
        // The name reaches logs, `explain`, `show` and the comment heading `manifest`'s YAML.
        let at = text.find("name").unwrap_or(0);
        cx.error(
            "control_character",
            &(at..at + 4),
            format!(
                "policy name `{}` holds a control character",
                name.escape_default()
            ),
            "a policy name is printable text; remove the control character",
        );
    }
    let rules = rules::compile_rules(&mut cx, &source.rules, &issuer_index, prefix.as_deref());
    let (Some(issuers), Some(token)) = (issuers, token) else {
        return Err(cx.diagnostics);
    };
    locations::check_names(
        &mut cx,
        &source,
        &issuers,
        &token.locations,
        prefix.as_deref(),
    );
    if cx.has_errors() {
        return Err(cx.diagnostics);
    }
    lints::unused_issuers(&mut cx, &source.issuers, &rules.rules);
    lints::shadowed_rules(&mut cx, &rules.rules, &rules.spans);
    lints::unscoped_roles(&mut cx, source.issuers.len(), &rules.rules, &rules.spans);
    let path_index = index::build_index(&rules.rules);
    let name = source.name.clone().unwrap_or_else(|| {
        std::path::Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy".to_owned())
    });
    let policy = CompiledPolicy {
        name,
        mode: source.mode,
        default: source.default,
        issuers,
        rules: rules.rules,
        roles: rules.roles,
        path_index,
        path_parameters: source.path_parameters,
        cors_preflight: source.cors_preflight,
        revoked,
        token,
        statuses: source.statuses,
        claims: std::mem::take(&mut cx.claim_paths),
        filter_state: source.filter_state,
    };
    Ok(Compiled {
        policy,
        warnings: cx.diagnostics,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every diagnostic of `text` (errors, or the warnings of a successful compilation).
    pub(crate) fn diagnostics_of(text: &str) -> Vec<Diagnostic> {
        match compile(text, "p.toml", &|name: &str| {
            Err(format!("no file `{name}`"))
        }) {
            Ok(compiled) => compiled.warnings,
            Err(diagnostics) => diagnostics,
        }
    }

    /// The errors of `text`.
    pub(crate) fn errors_of(text: &str) -> Vec<Diagnostic> {
        diagnostics_of(text)
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect()
    }

    /// `text` compiled; panics with the diagnostics otherwise.
    pub(crate) fn compiled(text: &str) -> Compiled {
        compile(text, "p.toml", &|name: &str| {
            Err(format!("no file `{name}`"))
        })
        .unwrap_or_else(|d| panic!("{d:#?}"))
    }

    pub(crate) fn kinds_of(diagnostics: &[Diagnostic]) -> Vec<&'static str> {
        diagnostics.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn identity_headers_are_named_once_from_the_six() {
        let errors = errors_of(
            "version = 1\n[token]\nidentity_headers = [\"subject\", \"roles\", \"subject\"]\n",
        );
        assert_eq!(kinds_of(&errors), ["duplicate"]);
        assert_eq!((errors[0].line, errors[0].column), (3, 41));
        let errors = errors_of("version = 1\n[token]\nidentity_headers = [\"subjet\"]\n");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!((errors[0].line, errors[0].column), (3, 21));
        assert!(
            errors[0].hint.as_deref().unwrap_or("").contains("subject"),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_key_after_a_table_header_gets_a_hint() {
        let errors = errors_of("version = 1\n[token]\nforward = false\nmode = \"audit\"\n");
        assert_eq!(kinds_of(&errors), ["unknown_field"]);
        assert_eq!((errors[0].line, errors[0].column), (4, 1));
        assert_eq!(
            errors[0].hint.as_deref().unwrap(),
            "`mode` is a top-level key: keys after `[token]` belong to that table; move `mode = …` above the first table header"
        );
    }

    #[test]
    fn errors_from_every_section_come_in_one_run() {
        let text = r#"version = 2
[token]
identity_header_prefix = "x-auth-"
headers = ["x-auth-token"]
[issuers.a]
issuer = "https://a"
audiences = ["api"]
algorithms = ["none"]
[[rules]]
name = "r"
headers = { "x-auth-user" = "admin" }
allow = { subjects = [""] }
[revoked]
token_ids = [""]
"#;
        let errors = errors_of(text);
        assert_eq!(
            kinds_of(&errors),
            [
                "version",
                "algorithm_none",
                "bad_token_header",
                "empty_name",
                "identity_header_rule",
                "empty_name"
            ],
            "{errors:#?}"
        );
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 8, 4, 14, 11, 12]);
        assert!(errors.iter().all(|e| e.hint.is_some()));
    }

    #[test]
    fn token_headers_and_prefix() {
        let ok = compiled(
            "version = 1\n[token]\nheaders = [\"Authorization\", \"X-Token\", \"authorization\"]\n",
        );
        let names: Vec<&str> = ok
            .policy
            .token
            .locations
            .headers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["authorization", "x-token"]);
        assert_eq!(
            kinds_of(&errors_of(
                "version = 1\n[token]\nidentity_header_prefix = \"x_\"\n"
            )),
            ["identity_header_prefix"]
        );
        assert_eq!(
            kinds_of(&errors_of("version = 1\n[token]\nheaders = []\n")),
            ["bad_token_header"]
        );
    }
}
