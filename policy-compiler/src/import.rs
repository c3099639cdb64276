//! `claimgate import`: Istio `RequestAuthentication` and `AuthorizationPolicy` resources
//! (security.istio.io/v1 and v1beta1; YAML streams, JSON, `kind: List`) → one claimgate
//! policy, with a report of everything not translated exactly. Never wider: what claimgate
//! cannot say is dropped in the direction that narrows access (see [`translate`]), and
//! reported; the policy written is compiled before it is written, as `check` would.
//!
//! Exit codes: 0 every construct translated exactly (notes may be printed); 4 the policy was
//! written but something was not translated exactly (it is narrower than the input; the
//! report says where); 3 the input is not valid Istio resources (unknown field, wrong type,
//! unsupported apiVersion) or the emitted policy does not compile; 1 usage or I/O error.

pub mod emit;
pub mod istio;
pub mod translate;

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use crate::{CliError, Exit, output};
use translate::{Resource, Severity, Translation};

/// `import` arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Istio YAML (or JSON) files; `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write the policy here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The policy's `name`.
    #[arg(long, default_value = "istio-import")]
    pub name: String,
}

/// What an import produced.
#[derive(Debug)]
pub struct Imported {
    /// The policy text.
    pub toml: String,
    /// The translation (rules, issuers, findings).
    pub translation: Translation,
}

impl Imported {
    /// Whether anything was not translated exactly.
    pub fn exact(&self) -> bool {
        self.translation
            .findings
            .iter()
            .all(|f| f.severity == Severity::Note)
    }
}

/// Errors of the input itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Not YAML/JSON, or too large or nested.
    #[error("{file}: {message}")]
    Unreadable {
        /// File.
        file: String,
        /// Cause.
        message: String,
    },
    /// A resource that does not follow its CRD.
    #[error("{file}: {resource}: {message}")]
    Invalid {
        /// File.
        file: String,
        /// Which resource (kind and name, or document number).
        resource: String,
        /// Cause.
        message: String,
    },
}

/// Reads the resources of one input text.
pub fn resources(file: &str, text: &str) -> Result<(Vec<Resource>, Vec<String>), ImportError> {
    let documents = crate::show::documents(text).map_err(|message| ImportError::Unreadable {
        file: file.to_owned(),
        message,
    })?;
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    let mut items = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let place = format!("document {}", index + 1);
        if document.get("kind").and_then(Value::as_str) == Some("List") {
            let list = document
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, item) in list.into_iter().enumerate() {
                items.push((format!("{place} items[{i}]"), item));
            }
        } else {
            items.push((place, document));
        }
    }
    for (place, item) in items {
        let invalid = |message: String| ImportError::Invalid {
            file: file.to_owned(),
            resource: place.clone(),
            message,
        };
        let object = item
            .as_object()
            .ok_or_else(|| invalid("not a Kubernetes object".to_owned()))?;
        for key in object.keys() {
            if !matches!(
                key.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            ) {
                return Err(invalid(format!("unknown field `{key}`")));
            }
        }
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let api = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let metadata: istio::Metadata = match object.get("metadata") {
            Some(m) => {
                serde_json::from_value(m.clone()).map_err(|e| invalid(format!("metadata: {e}")))?
            }
            None => istio::Metadata::default(),
        };
        if !matches!(kind, "RequestAuthentication" | "AuthorizationPolicy") {
            ignored.push(format!(
                "{place}: {} `{}` ignored (only RequestAuthentication and AuthorizationPolicy are imported)",
                crate::terminal_safe(if kind.is_empty() { "(no kind)" } else { kind }),
                crate::terminal_safe(metadata.name.as_deref().unwrap_or("-"))
            ));
            continue;
        }
        if !matches!(api, "security.istio.io/v1" | "security.istio.io/v1beta1") {
            return Err(invalid(format!(
                "{kind} apiVersion `{}`: only security.istio.io/v1 and v1beta1 are read",
                crate::terminal_safe(api)
            )));
        }
        let name = metadata
            .name
            .clone()
            .ok_or_else(|| invalid(format!("{kind} without metadata.name")))?;
        let namespace = metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        for part in [&name, &namespace] {
            let dns = !part.is_empty()
                && part.len() <= 253
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !dns {
                return Err(invalid(format!(
                    "`{}` is not a Kubernetes object name",
                    crate::terminal_safe(part)
                )));
            }
        }
        let id = format!("{namespace}/{name}");
        let spec = object.get("spec").cloned().unwrap_or(Value::Null);
        let spec = if spec.is_null() {
            Value::Object(serde_json::Map::new())
        } else {
            spec
        };
        let wrong = |e: serde_json::Error| ImportError::Invalid {
            file: file.to_owned(),
            resource: format!("{kind} {id}"),
            message: format!("spec: {e}"),
        };
        if kind == "RequestAuthentication" {
            let spec = istio::RequestAuthenticationSpec::deserialize(spec).map_err(wrong)?;
            let target = target(
                &namespace,
                spec.selector.as_ref(),
                spec.target_ref.as_ref(),
                &spec.target_refs,
            );
            out.push(Resource::RequestAuthentication { id, target, spec });
        } else {
            let spec = istio::AuthorizationPolicySpec::deserialize(spec).map_err(wrong)?;
            let target = target(
                &namespace,
                spec.selector.as_ref(),
                spec.target_ref.as_ref(),
                &spec.target_refs,
            );
            out.push(Resource::AuthorizationPolicy { id, target, spec });
        }
    }
    Ok((out, ignored))
}

/// Which workloads a resource applies to, as text to compare.
fn target(
    namespace: &str,
    selector: Option<&istio::Selector>,
    target_ref: Option<&istio::TargetRef>,
    target_refs: &[istio::TargetRef],
) -> String {
    let mut refs: Vec<&istio::TargetRef> = target_refs.iter().chain(target_ref).collect();
    refs.sort();
    if !refs.is_empty() {
        let names: Vec<String> = refs
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r.kind.as_deref().unwrap_or("-"),
                    r.name.as_deref().unwrap_or("-")
                )
            })
            .collect();
        return format!("{namespace} targetRefs {}", names.join(","));
    }
    match selector {
        Some(s) if !s.match_labels.is_empty() => {
            let labels: Vec<String> = s
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{namespace} selector {}", labels.join(","))
        }
        _ => format!("{namespace}{}", translate::WHOLE_NAMESPACE),
    }
}

/// Imports input texts (file name, text) into a policy.
pub fn import(inputs: &[(String, String)], name: &str) -> Result<Imported, ImportError> {
    let mut all = Vec::new();
    let mut ignored = Vec::new();
    let mut sources = Vec::new();
    for (file, text) in inputs {
        let (resources, skipped) = resources(file, text)?;
        for r in &resources {
            sources.push(match r {
                Resource::RequestAuthentication { id, target, .. } => {
                    format!("{file}: RequestAuthentication {id} (applies to {target})")
                }
                Resource::AuthorizationPolicy { id, target, .. } => {
                    format!("{file}: AuthorizationPolicy {id} (applies to {target})")
                }
            });
        }
        all.extend(resources);
        ignored.extend(skipped.into_iter().map(|s| format!("{file}: {s}")));
    }
    let mut translation = translate::translate(&all);
    for skipped in ignored {
        translation.findings.insert(
            0,
            translate::Finding {
                severity: Severity::Note,
                place: "input".to_owned(),
                message: skipped,
            },
        );
    }
    let toml = emit::policy_toml(&translation, name, &sources);
    Ok(Imported { toml, translation })
}

fn read_input(path: &std::path::Path) -> Result<String, CliError> {
    if path == std::path::Path::new("-") {
        let mut text = String::new();
        let limit = u64::try_from(crate::show::MAX_INPUT_BYTES + 1).unwrap_or(u64::MAX);
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), limit), &mut text)
            .map_err(|source| CliError::Io {
                path: "standard input".to_owned(),
                source,
            })?;
        return Ok(text);
    }
    crate::read_file(path)
}

/// `import`.
pub fn cmd_import(args: &ImportArgs) -> Result<Exit, CliError> {
    let mut inputs = Vec::new();
    for path in &args.files {
        inputs.push((path.display().to_string(), read_input(path)?));
    }
    let imported = match import(&inputs, &args.name) {
        Ok(imported) => imported,
        Err(error) => {
            output::errln(&format!("claimgate import: {error}"));
            return Ok(Exit::InvalidPolicy);
        }
    };
    for finding in &imported.translation.findings {
        output::errln(&format!("import: {}", emit::report_line(finding)));
    }
    // The policy is checked as `claimgate check` would before anyone deploys it.
    let file = args
        .output
        .as_ref()
        .map_or_else(|| "imported.toml".to_owned(), |p| p.display().to_string());
    output::remember_source(&file, &imported.toml);
    let no_files = |name: &str| Err(format!("`{name}`: import writes key sets inline"));
    let compiled = claimgate_core::compile::compile(&imported.toml, &file, &no_files);
    match &args.output {
        Some(path) => std::fs::write(path, &imported.toml).map_err(|source| CliError::Io {
            path: path.display().to_string(),
            source,
        })?,
        None => output::out(&imported.toml)?,
    }
    match compiled {
        Ok(compiled) => {
            crate::print_diagnostics(&compiled.warnings);
        }
        Err(diagnostics) => {
            crate::print_diagnostics(&diagnostics);
            output::errln(
                "claimgate import: the emitted policy does not compile (a bug in import, or a construct this claimgate does not support): do not deploy it",
            );
            return Ok(Exit::InvalidPolicy);
        }
    }
    let losses = imported
        .translation
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Loss)
        .count();
    let wider = imported
        .translation
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Wider)
        .count();
    if wider > 0 {
        output::errln(&format!(
            "claimgate import: {wider} construct(s) match more requests than in Istio (see `WIDER than Istio` above; exit 4)"
        ));
    }
    if losses > 0 {
        output::errln(&format!(
            "claimgate import: {losses} construct(s) not translated exactly; the policy is narrower than the input there (exit 4)"
        ));
    }
    if wider + losses > 0 {
        return Ok(Exit::NotExact);
    }
    Ok(Exit::Ok)
}
