//! `claimgate show`: what a deployed policy says, read back from what is deployed — a
//! pluginConfig (what `compile` prints) or a WasmPlugin YAML stream (what `manifest` prints,
//! or `kubectl get wasmplugin -o yaml`) — for reviews of GitOps changes, where the policy
//! itself is an opaque base64 blob.
//!
//! The blob is decoded and checked exactly as the filter does
//! ([`blob::engine_from_plugin_config`]): a blob the filter would refuse is refused here,
//! with the same reason, and never summarised.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use claimgate_core::blob;
use claimgate_core::compiled::{
    CompiledPolicy, CompiledRule, Effect, HostPattern, PathPattern, Principal, RoleRef, Segment,
    TemplatePart,
};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{CliError, Exit, output, terminal_safe};

/// Output formats of `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    /// For people.
    Text,
    /// A JSON array, one summary per WasmPlugin (one for a pluginConfig).
    Json,
}

/// `show` arguments.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A pluginConfig JSON file or a WasmPlugin YAML (stream); `-` reads standard input.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ShowFormat,
}

/// `show`.
pub fn cmd_show(args: &ShowArgs) -> Result<Exit, CliError> {
    let text = if args.file == Path::new("-") {
        let mut text = String::new();
        let limit = u64::try_from(MAX_INPUT_BYTES + 1).unwrap_or(u64::MAX);
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), limit), &mut text)
            .map_err(|source| CliError::Io {
                path: "standard input".to_owned(),
                source,
            })?;
        text
    } else {
        crate::read_file(&args.file)?
    };
    let summaries = summarise(&text)
        .map_err(|message| CliError::Usage(format!("{}: {message}", args.file.display())))?;
    match args.format {
        ShowFormat::Json => output::outln(&format!("{:#}", Value::Array(summaries)))?,
        ShowFormat::Text => {
            let blocks: Vec<String> = summaries.iter().map(render).collect();
            output::out(&blocks.join("\n"))?;
        }
    }
    Ok(Exit::Ok)
}

/// Summaries (JSON) of every policy in `text`: a pluginConfig object, or the WasmPlugins
/// of a YAML (or JSON) stream.
pub fn summarise(text: &str) -> Result<Vec<Value>, String> {
    let documents = documents(text)?;
    if let [single] = documents.as_slice()
        && single.get("policy").is_some()
        && single.get("kind").is_none()
    {
        return Ok(vec![json!({ "policy": policy_summary(single)? })]);
    }
    // `kubectl get wasmplugins -o yaml` wraps several in a `List`.
    let plugins: Vec<&Value> = documents
        .iter()
        .flat_map(|d| match d.get("kind").and_then(Value::as_str) {
            Some("List") => d
                .get("items")
                .and_then(Value::as_array)
                .map(|items| items.iter().collect())
                .unwrap_or_default(),
            _ => vec![d],
        })
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("WasmPlugin"))
        .collect();
    if plugins.is_empty() {
        return Err(
            "neither a pluginConfig (`{\"name\", \"digest\", \"policy\"}`) nor a YAML stream with a WasmPlugin"
                .into(),
        );
    }
    plugins.into_iter().map(plugin_summary).collect()
}

/// The documents of a JSON value or a YAML stream, empty documents left out.
/// The largest input `show` reads: a WasmPlugin with a 10,000-rule policy is well under it.
pub(crate) const MAX_INPUT_BYTES: usize = 16 << 20;

/// The deepest `{`/`[` nesting let through to the YAML parser, whose scanner slows down
/// quadratically on deep flow mappings before its own recursion limit applies. Counted
/// without regard to quotes: an over-count only refuses absurd inputs.
const MAX_FLOW_DEPTH: usize = 64;

fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in text.bytes() {
        match byte {
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether a document uses YAML merge keys (`<<`), which kubectl's parser applies and this
/// one does not: `show` would then describe another object than the cluster gets (e.g. hide a
/// `failStrategy` merged in).
fn has_merge_key(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == "<<" || has_merge_key(v)),
        Value::Array(items) => items.iter().any(has_merge_key),
        _ => false,
    }
}

pub(crate) fn documents(text: &str) -> Result<Vec<Value>, String> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "input is {} bytes, more than the {MAX_INPUT_BYTES} read",
            text.len()
        ));
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(vec![value]);
    }
    if flow_depth(text) > MAX_FLOW_DEPTH {
        return Err(format!(
            "YAML nested more than {MAX_FLOW_DEPTH} levels deep is not a WasmPlugin"
        ));
    }
    let mut documents = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| format!("YAML document {}: {e}", index + 1))?;
        if has_merge_key(&value) {
            return Err(format!(
                "YAML document {}: merge keys (`<<`) are refused: kubectl applies them and this reader does not, so what it shows could differ from what the cluster gets; expand them",
                index + 1
            ));
        }
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn plugin_summary(plugin: &Value) -> Result<Value, String> {
    let meta = &plugin["metadata"];
    let spec = &plugin["spec"];
    let name = format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or("-"),
        meta["name"].as_str().unwrap_or("-")
    );
    let config = spec
        .get("pluginConfig")
        .ok_or_else(|| format!("WasmPlugin {name} has no spec.pluginConfig"))?;
    let policy = policy_summary(config).map_err(|e| format!("WasmPlugin {name}: {e}"))?;
    let field = |key: &str| spec.get(key).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "wasm_plugin": {
            "name": name,
            "url": field("url"),
            "sha256": field("sha256"),
            "failStrategy": field("failStrategy"),
            "phase": field("phase"),
            "priority": field("priority"),
            "selector": field("selector"),
            "targetRefs": field("targetRefs"),
            "match": field("match"),
        },
        "policy": policy,
    }))
}

/// Decodes a pluginConfig as the filter does and summarises its policy.
fn policy_summary(config: &Value) -> Result<Value, String> {
    let bytes = serde_json::to_vec(config).map_err(|e| e.to_string())?;
    let engine = blob::engine_from_plugin_config(&bytes).map_err(|e| e.to_string())?;
    // Decoded once more for the blob's own bytes (the engine keeps only the policy).
    let blob = config["policy"]
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
        .unwrap_or_default();
    let format = blob
        .get(4..6)
        .and_then(|v| <[u8; 2]>::try_from(v).ok())
        .map_or(0, u16::from_le_bytes);
    let policy = engine.policy();
    let names = engine.header_names();
    Ok(json!({
        "name": policy.name,
        "version": engine.digest(),
        "blob": { "format": format, "bytes": blob.len(), "sha256": blob::sha256_hex(&blob) },
        "mode": policy.mode,
        "default": policy.default,
        "issuers": policy.issuers.iter().map(|issuer| json!({
            "name": issuer.name,
            "issuer": issuer.issuer,
            "audiences": issuer.audiences,
            "audience_claims": issuer.audience_claims.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "algorithms": issuer.algorithms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "clock_skew_secs": issuer.clock_skew_secs,
            "jwks": {
                "inline_keys": issuer.keys.len(),
                "hmac_secret": issuer.hmac_secret.is_some(),
                "uri": issuer.remote_jwks.as_ref().map(|r| r.uri.clone()),
                "cluster": issuer.remote_jwks.as_ref().map(|r| r.cluster.clone()),
                "refresh_secs": issuer.remote_jwks.as_ref().map(|r| r.refresh_secs),
                "timeout_ms": issuer.remote_jwks.as_ref().map(|r| r.timeout_ms),
                "before_first_fetch": issuer.remote_jwks.as_ref().map(|r| r.before_first_fetch),
            },
            "roles": issuer.role_claims.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "scopes": issuer.scope_claims.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "rules": policy.rules.iter().map(|rule| rule_summary(policy, rule)).collect::<Vec<_>>(),
        "revoked": { "subjects": policy.revoked.subjects.len(), "token_ids": policy.revoked.token_ids.len() },
        "token_headers": policy.token.locations.headers.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        "forward_token": policy.token.forward_token,
        "upstream_headers": policy.token.identity_headers.iter().map(|&header| names.name_of(header)).collect::<Vec<_>>(),
    }))
}

fn rule_summary(policy: &CompiledPolicy, rule: &CompiledRule) -> Value {
    let texts = |list: &[HostPattern]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    let paths: Vec<String> = rule.paths.iter().map(path_text).collect();
    let not_paths: Vec<String> = rule.not_paths.iter().map(path_text).collect();
    json!({
        "name": rule.name,
        "action": match rule.effect { Effect::Allow => "allow", Effect::Deny => "deny" },
        "audit": rule.audit,
        "hosts": texts(&rule.hosts),
        "not_hosts": texts(&rule.not_hosts),
        "methods": rule.methods,
        "not_methods": rule.not_methods,
        "paths": paths,
        "not_paths": not_paths,
        "headers": rule.headers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "not_headers": rule.not_headers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "principal": principal_text(policy, &rule.principal),
    })
}

fn path_text(path: &PathPattern) -> String {
    match path {
        PathPattern::Exact(path) => path.clone(),
        PathPattern::Prefix(prefix) | PathPattern::TextPrefix(prefix) => format!("{prefix}*"),
        PathPattern::Suffix(suffix) => format!("*{suffix}"),
        PathPattern::Any => "*".to_owned(),
        PathPattern::Template {
            segments,
            open_ended,
        } => {
            let mut text = String::new();
            for segment in segments {
                text.push('/');
                match segment {
                    Segment::Literal(literal) => text.push_str(literal),
                    Segment::Capture {
                        prefix,
                        var,
                        suffix,
                    } => text.push_str(&format!("{prefix}{{{var}}}{suffix}")),
                }
            }
            if *open_ended {
                text.push_str("/*");
            }
            text
        }
    }
}

fn principal_text(policy: &CompiledPolicy, principal: &Principal) -> String {
    let Principal::Authenticated(requirement) = principal else {
        return "anyone".to_owned();
    };
    let role = |role: &RoleRef| match role {
        RoleRef::Interned(index) => usize::try_from(*index)
            .ok()
            .and_then(|i| policy.roles.get(i))
            .cloned()
            .unwrap_or_else(|| format!("#{index}")),
        RoleRef::Template(parts) => parts
            .iter()
            .map(|part| match part {
                TemplatePart::Text(text) => text.clone(),
                TemplatePart::Var(var) => format!("{{{var}}}"),
            })
            .collect(),
    };
    let issuer = |index: u32| {
        usize::try_from(index)
            .ok()
            .and_then(|i| policy.issuers.get(i))
            .map_or_else(|| format!("#{index}"), |i| i.name.clone())
    };
    let mut parts = vec!["authenticated".to_owned()];
    let mut list = |label: &str, items: Vec<String>| {
        if !items.is_empty() {
            parts.push(format!("{label} {}", items.join(", ")));
        }
    };
    list(
        "issuers",
        requirement.issuers.iter().map(|i| issuer(*i)).collect(),
    );
    list(
        "subjects",
        requirement
            .subjects
            .iter()
            .map(|s| format!("{}:{}", issuer(s.issuer), s.subject))
            .collect(),
    );
    list(
        "roles_any",
        requirement.roles_any.iter().map(role).collect(),
    );
    list(
        "roles_all",
        requirement.roles_all.iter().map(role).collect(),
    );
    list("scopes_any", requirement.scopes_any.clone());
    list("scopes_all", requirement.scopes_all.clone());
    parts.join("; ")
}

/// One summary for people. Every value from the input goes through [`terminal_safe`]:
/// a WasmPlugin under review is input like any other.
fn render(summary: &Value) -> String {
    let mut out = Lines::default();
    let plugin = &summary["wasm_plugin"];
    if plugin.is_object() {
        out.line("wasmplugin", &text(&plugin["name"]));
        out.line("  url", &text(&plugin["url"]));
        out.line("  sha256", &text(&plugin["sha256"]));
        out.line(
            "  strategy",
            &format!(
                "failStrategy {}, phase {}, priority {}",
                text(&plugin["failStrategy"]),
                text(&plugin["phase"]),
                text(&plugin["priority"])
            ),
        );
        let scope = match (&plugin["selector"], &plugin["targetRefs"]) {
            (Value::Object(selector), _) => {
                format!("selector {}", compact(&Value::Object(selector.clone())))
            }
            (_, Value::Array(refs)) => {
                format!("targetRefs {}", compact(&Value::Array(refs.clone())))
            }
            _ => format!(
                "no selector: every workload of namespace {} (all namespaces in the root namespace)",
                text(&plugin["name"]).split('/').next().unwrap_or("-")
            ),
        };
        out.line("  applies to", &scope);
        if !plugin["match"].is_null() {
            out.line("  match", &compact(&plugin["match"]));
        }
    }
    let policy = &summary["policy"];
    out.line(
        "policy",
        &format!("{} {}", text(&policy["name"]), text(&policy["version"])),
    );
    out.line(
        "blob",
        &format!(
            "format {}, {} bytes, sha256 {}",
            text(at(policy, "/blob/format")),
            text(at(policy, "/blob/bytes")),
            text(at(policy, "/blob/sha256"))
        ),
    );
    out.line(
        "mode",
        &format!(
            "{}, default {}",
            text(&policy["mode"]),
            text(&policy["default"])
        ),
    );
    for issuer in policy["issuers"].as_array().into_iter().flatten() {
        out.line(
            "issuer",
            &format!("{} {}", text(&issuer["name"]), text(&issuer["issuer"])),
        );
        out.line("  audiences", &list(&issuer["audiences"]));
        out.line("  algorithms", &list(&issuer["algorithms"]));
        let jwks = &issuer["jwks"];
        let mut keys = format!("{} inline key(s)", text(&jwks["inline_keys"]));
        if jwks["uri"].is_string() {
            keys.push_str(&format!(
                "; remote {} via cluster {}, refresh {}s",
                text(&jwks["uri"]),
                text(&jwks["cluster"]),
                text(&jwks["refresh_secs"])
            ));
        }
        if jwks["hmac_secret"] == true {
            keys.push_str("; HMAC secret");
        }
        out.line("  keys", &keys);
    }
    for rule in policy["rules"].as_array().into_iter().flatten() {
        let audit = if rule["audit"] == true {
            " (audit)"
        } else {
            ""
        };
        out.line(
            "rule",
            &format!(
                "{} {}{audit}: {}",
                text(&rule["action"]),
                text(&rule["name"]),
                text(&rule["principal"])
            ),
        );
        for (label, key) in [
            ("  hosts", "hosts"),
            ("  methods", "methods"),
            ("  paths", "paths"),
            ("  headers", "headers"),
        ] {
            if rule[key].as_array().is_some_and(|items| !items.is_empty()) {
                out.line(label, &list(&rule[key]));
            }
        }
    }
    out.line(
        "revoked",
        &format!(
            "{} subject(s), {} token id(s)",
            text(at(policy, "/revoked/subjects")),
            text(at(policy, "/revoked/token_ids"))
        ),
    );
    out.line(
        "upstream",
        &format!(
            "{}; token {}",
            list(&policy["upstream_headers"]),
            if policy["forward_token"] == true {
                "forwarded"
            } else {
                "removed"
            }
        ),
    );
    out.0
}

#[derive(Default)]
struct Lines(String);

impl Lines {
    fn line(&mut self, label: &str, value: &str) {
        self.0
            .push_str(&format!("{label:<13}{}\n", terminal_safe(value)));
    }
}

/// The value at a JSON pointer, `null` when absent.
fn at<'v>(value: &'v Value, pointer: &str) -> &'v Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    let items: Vec<String> = value.as_array().into_iter().flatten().map(text).collect();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

fn compact(value: &Value) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_config(policy: &str) -> String {
        let compiled =
            claimgate_core::compile::compile(policy, "p.toml", &|_: &str| Err("no files".into()))
                .unwrap();
        serde_json::to_string(&blob::plugin_config(&compiled.policy).unwrap()).unwrap()
    }

    #[test]
    fn merge_keys_are_refused_rather_than_misread() {
        // kubectl applies `<<`; a reader that does not would show no failStrategy here.
        let yaml = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p, namespace: ml}\nspec:\n  <<: {failStrategy: FAIL_OPEN}\n  url: oci://r/c:1\n";
        let error = summarise(yaml).unwrap_err();
        assert!(error.contains("merge keys"), "{error}");
    }

    #[test]
    fn deep_flow_nesting_is_refused_at_once() {
        let yaml = "{a: ".repeat(64_000);
        let started = std::time::Instant::now();
        let error = summarise(&yaml).unwrap_err();
        assert!(error.contains("nested"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(summarise(&" ".repeat(MAX_INPUT_BYTES + 1)).is_err());
    }

    const POLICY: &str = r#"version = 1
name = "reviewed"
[issuers.kc]
issuer = "https://kc.example.com/realms/ml"
audiences = ["scoring"]
algorithms = ["RS256"]
[issuers.kc.jwks]
uri = "https://kc.example.com/realms/ml/certs"
[[rules]]
name = "per-model"
methods = ["POST"]
paths = ["/v2/models/{model}/infer", "/v1/models/{model}/*"]
allow = { issuers = ["kc"], roles_any = ["model.{model}.invoke", "ml-admin"] }
[revoked]
token_ids = ["a", "b"]
"#;

    #[test]
    fn a_plugin_config_reads_back_as_its_policy() {
        let summary = summarise(&plugin_config(POLICY)).unwrap();
        let policy = &summary[0]["policy"];
        assert_eq!(policy["name"], "reviewed");
        assert_eq!(at(policy, "/blob/format"), blob::FORMAT_VERSION);
        assert_eq!(
            policy["issuers"][0]["jwks"]["cluster"],
            "outbound|80||kc.example.com"
        );
        let rule = &policy["rules"][0];
        assert_eq!(
            rule["paths"],
            json!(["/v2/models/{model}/infer", "/v1/models/{model}/*"])
        );
        assert_eq!(
            rule["principal"],
            "authenticated; issuers kc; roles_any model.{model}.invoke, ml-admin"
        );
        assert_eq!(policy["revoked"], json!({ "subjects": 0, "token_ids": 2 }));
        let text = render(&summary[0]);
        assert!(
            text.contains("rule         allow per-model: authenticated"),
            "{text}"
        );
    }

    #[test]
    fn a_wasm_plugin_yaml_reads_back_with_its_deployment() {
        let config: Value = serde_json::from_str(&plugin_config(POLICY)).unwrap();
        let yaml = format!(
            "# comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: claimgate-reviewed\n  namespace: ml\nspec:\n  url: oci://r/c:1\n  sha256: {}\n  failStrategy: FAIL_RELOAD\n  selector:\n    matchLabels:\n      app: scorer\n  pluginConfig: {config}\n",
            "ab".repeat(32)
        );
        let summary = summarise(&yaml).unwrap();
        assert_eq!(summary.len(), 1);
        let listed = format!(
            "apiVersion: v1\nkind: List\nitems:\n  - kind: WasmPlugin\n    metadata: {{name: a, namespace: ml}}\n    spec: {{pluginConfig: {config}}}\n  - kind: WasmPlugin\n    metadata: {{name: b, namespace: ml}}\n    spec: {{pluginConfig: {config}}}\n"
        );
        let names: Vec<Value> = summarise(&listed)
            .unwrap()
            .iter()
            .map(|s| s["wasm_plugin"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("ml/a"), json!("ml/b")]);
        assert_eq!(summary[0]["wasm_plugin"]["name"], "ml/claimgate-reviewed");
        assert_eq!(summary[0]["wasm_plugin"]["failStrategy"], "FAIL_RELOAD");
        assert_eq!(summary[0]["policy"]["name"], "reviewed");
    }

    #[test]
    fn corrupt_or_foreign_input_is_an_error_not_a_panic() {
        let good: Value = serde_json::from_str(&plugin_config(POLICY)).unwrap();
        let mut flipped = good.clone();
        let mut blob = STANDARD.decode(good["policy"].as_str().unwrap()).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        flipped["policy"] = json!(STANDARD.encode(&blob));
        let mut short = good.clone();
        short["policy"] = json!("Q0dQQg==");
        let cases = [
            (flipped.to_string(), "digest mismatch"),
            (short.to_string(), "shorter than"),
            (
                r#"{"name":"x","digest":"d","policy":"%%"}"#.to_owned(),
                "not base64",
            ),
            (
                "kind: Service\nmetadata: {}\n".to_owned(),
                "neither a pluginConfig",
            ),
            (
                "kind: WasmPlugin\nspec: {}\n".to_owned(),
                "has no spec.pluginConfig",
            ),
            ("a: [\n".to_owned(), "YAML document 1"),
            (String::new(), "neither a pluginConfig"),
            ("\u{0}\u{1}garbage".to_owned(), ""),
        ];
        for (input, message) in cases {
            let error = summarise(&input).unwrap_err();
            assert!(error.contains(message), "{input:?}: {error}");
        }
    }
}
