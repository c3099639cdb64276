//! `claimgate manifest`: the Istio resources that deploy a compiled policy.
//!
//! - a `WasmPlugin` (extensions.istio.io/v1alpha1) whose `pluginConfig` is exactly what
//!   `compile` prints, with the module's URL and SHA-256, `failStrategy: FAIL_RELOAD` (or
//!   `FAIL_CLOSE`; never fail open), phase,
//!   priority, and a workload selector or target references;
//! - per remote key set outside the cluster, a `ServiceEntry` (networking.istio.io/v1) that
//!   makes istiod build the Envoy cluster the filter calls, and for `https` key sets a
//!   `DestinationRule` that originates TLS (see [`HttpEndpoint::istio_cluster`]).
//!
//! The output is a YAML stream for `kubectl apply -f -`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use claimgate_core::blob;
use claimgate_core::mesh::HttpEndpoint;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value, json};

use crate::{CliError, Exit, compile_file, print_diagnostics};

/// Where in the HTTP filter chain istiod puts the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Before Istio's authentication filters (the default: claimgate authenticates).
    Authn,
    /// Before Istio's authorization filters.
    Authz,
    /// Before Istio's stats filters.
    Stats,
    /// At the end of the chain, before the router.
    UnspecifiedPhase,
}

/// Which traffic of a sidecar the plugin sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// Inbound requests to the workload (the default for a model server).
    Server,
    /// Outbound requests from the workload.
    Client,
    /// Both.
    ClientAndServer,
}

fn screaming<T: ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// `manifest` arguments.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The policy file.
    pub policy: PathBuf,
    /// Where istio-agent fetches the module: `oci://…`, `https://…` or `http://…`.
    #[arg(long)]
    pub wasm_url: String,
    /// The built module, to compute its SHA-256 (or give `--sha256`).
    #[arg(long, conflicts_with = "sha256", required_unless_present = "sha256")]
    pub wasm: Option<PathBuf>,
    /// SHA-256 of the module, 64 hex digits.
    #[arg(long)]
    pub sha256: Option<String>,
    /// WasmPlugin name (default: `claimgate-` + the policy's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of the resources. The root namespace (`istio-system`) with no selector
    /// applies the plugin to every workload.
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// Workload label `KEY=VALUE` the plugin applies to (repeatable).
    #[arg(
        long = "selector",
        value_name = "KEY=VALUE",
        conflicts_with = "target_refs"
    )]
    pub selectors: Vec<String>,
    /// Target `KIND/NAME`: `Gateway/NAME` (Gateway API) or `Service/NAME` (repeatable).
    #[arg(long = "target-ref", value_name = "KIND/NAME")]
    pub target_refs: Vec<String>,
    /// Filter chain phase.
    #[arg(long, value_enum, default_value = "AUTHN")]
    pub phase: Phase,
    /// Order among plugins of the same phase (higher runs first).
    #[arg(long, default_value_t = 10)]
    pub priority: i32,
    /// Traffic the plugin sees on a sidecar.
    #[arg(long, value_enum, default_value = "SERVER")]
    pub mode: Mode,
    /// Only these ports (repeatable; default: all).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// What Envoy does if the module cannot run: `reload` (Istio ≥ 1.27: a crashed VM is
    /// replaced on the next request; fail closed meanwhile) or `close` (older Istio: every
    /// request 503 until the next push or restart). There is deliberately no fail-open
    /// choice: a crash must never switch authentication off.
    #[arg(long, value_enum, default_value = "reload")]
    pub fail_strategy: FailStrategy,
    /// Write the manifests here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Istio `failStrategy` values `manifest` emits; both fail closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailStrategy {
    /// `FAIL_RELOAD`: a VM that trapped is replaced on the next request (measured in Envoy
    /// 1.36 and 1.40: enforcing again ≈ 1.3 s after a trap), requests fail closed meanwhile.
    Reload,
    /// `FAIL_CLOSE`: every request on the worker answers 503 until a push or restart.
    Close,
}

/// `manifest`.
pub fn cmd_manifest(args: &ManifestArgs) -> Result<Exit, CliError> {
    let compiled = compile_file(&args.policy)?;
    print_diagnostics(&compiled.warnings);
    let config =
        blob::plugin_config(&compiled.policy).map_err(|e| CliError::Usage(e.to_string()))?;
    let plugin_config =
        serde_json::to_value(&config).map_err(|e| CliError::Usage(e.to_string()))?;
    let sha256 = module_sha256(args)?;
    check_url(&args.wasm_url)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("claimgate-{}", config.name));
    check_dns_label(&name, "--name")?;
    check_dns_label(&args.namespace, "--namespace")?;

    let mut documents = vec![wasm_plugin(args, &name, &sha256, plugin_config)?];
    for issuer in &compiled.policy.issuers {
        let Some(remote) = &issuer.remote_jwks else {
            continue;
        };
        let endpoint = HttpEndpoint::parse(&remote.uri).map_err(CliError::Usage)?;
        if endpoint.in_cluster() {
            continue;
        }
        if remote.cluster != endpoint.istio_cluster() {
            crate::output::errln(&format!(
                "warning: the policy reaches {} through cluster `{}`; the ServiceEntry below creates `{}`",
                remote.uri,
                remote.cluster,
                endpoint.istio_cluster()
            ));
        }
        for doc in jwks_egress(&endpoint, &args.namespace) {
            if !documents.contains(&doc) {
                documents.push(doc);
            }
        }
    }

    let mut out = format!(
        "# Generated by `claimgate manifest` from {} (policy {}, version {}).\n# Apply with: kubectl apply -f <this file>\n",
        args.policy.display(),
        config.name,
        config.digest
    );
    for doc in &documents {
        out.push_str("---\n");
        write_yaml(&mut out, doc, 0);
    }
    match &args.output {
        Some(path) => std::fs::write(path, out).map_err(|source| CliError::Io {
            path: path.display().to_string(),
            source,
        })?,
        None => crate::output::out(&out)?,
    }
    Ok(Exit::Ok)
}

fn module_sha256(args: &ManifestArgs) -> Result<String, CliError> {
    if let Some(hex) = &args.sha256 {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CliError::Usage(format!(
                "--sha256: `{hex}` is not 64 hex digits"
            )));
        }
        return Ok(hex.to_ascii_lowercase());
    }
    let path = args
        .wasm
        .as_ref()
        .ok_or_else(|| CliError::Usage("give --wasm FILE or --sha256 HEX".into()))?;
    let bytes = std::fs::read(path).map_err(|source| CliError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if !bytes.starts_with(b"\0asm") {
        return Err(CliError::Usage(format!(
            "{}: not a WebAssembly module",
            path.display()
        )));
    }
    Ok(blob::sha256_hex(&bytes))
}

fn check_url(url: &str) -> Result<(), CliError> {
    let scheme_ok = ["oci://", "https://", "http://", "file://"]
        .iter()
        .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
    if scheme_ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--wasm-url: `{url}` must start with oci://, https://, http:// or file://"
        )))
    }
}

/// Kubernetes object names: RFC 1123 labels (lower-case alphanumerics and `-`, ≤ 63).
fn check_dns_label(value: &str, flag: &str) -> Result<(), CliError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{flag}: `{value}` is not a Kubernetes name (lower-case letters, digits, `-`, at most 63)"
        )))
    }
}

fn labels() -> Value {
    json!({ "app.kubernetes.io/managed-by": "claimgate" })
}

fn wasm_plugin(
    args: &ManifestArgs,
    name: &str,
    sha256: &str,
    plugin_config: Value,
) -> Result<Value, CliError> {
    let mut spec = Map::new();
    if !args.selectors.is_empty() {
        let mut match_labels = BTreeMap::new();
        for pair in &args.selectors {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--selector: `{pair}` is not KEY=VALUE")))?;
            match_labels.insert(key.to_owned(), Value::String(value.to_owned()));
        }
        spec.insert(
            "selector".into(),
            json!({ "matchLabels": Map::from_iter(match_labels) }),
        );
    }
    if !args.target_refs.is_empty() {
        let mut refs = Vec::new();
        for target in &args.target_refs {
            let (kind, target_name) = target.split_once('/').ok_or_else(|| {
                CliError::Usage(format!("--target-ref: `{target}` is not KIND/NAME"))
            })?;
            let group = match kind {
                "Gateway" | "GatewayClass" => "gateway.networking.k8s.io",
                "Service" => "",
                other => {
                    return Err(CliError::Usage(format!(
                        "--target-ref: kind `{other}` is not Gateway, GatewayClass or Service"
                    )));
                }
            };
            refs.push(json!({ "group": group, "kind": kind, "name": target_name }));
        }
        spec.insert("targetRefs".into(), Value::Array(refs));
    }
    spec.insert("url".into(), json!(args.wasm_url));
    spec.insert("sha256".into(), json!(sha256));
    spec.insert("imagePullPolicy".into(), json!("IfNotPresent"));
    spec.insert("pluginName".into(), json!("claimgate"));
    spec.insert("phase".into(), json!(screaming(args.phase)));
    spec.insert("priority".into(), json!(args.priority));
    // A plugin that cannot load must stop traffic, not wave it through.
    spec.insert(
        "failStrategy".into(),
        json!(match args.fail_strategy {
            FailStrategy::Reload => "FAIL_RELOAD",
            FailStrategy::Close => "FAIL_CLOSE",
        }),
    );
    spec.insert("type".into(), json!("HTTP"));
    // Gateways have no inbound/outbound split; a sidecar's is chosen by `--mode`.
    let targets_gateway = args.target_refs.iter().any(|t| t.starts_with("Gateway"));
    if !targets_gateway {
        let mut selector = Map::new();
        selector.insert("mode".into(), json!(screaming(args.mode)));
        if !args.ports.is_empty() {
            let ports: Vec<Value> = args.ports.iter().map(|p| json!({ "number": p })).collect();
            selector.insert("ports".into(), Value::Array(ports));
        }
        spec.insert("match".into(), json!([Value::Object(selector)]));
    }
    spec.insert("pluginConfig".into(), plugin_config);
    Ok(json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": { "name": name, "namespace": args.namespace, "labels": labels() },
        "spec": Value::Object(spec),
    }))
}

/// ServiceEntry (and DestinationRule for TLS) that give Envoy a cluster for a key set host.
fn jwks_egress(endpoint: &HttpEndpoint, namespace: &str) -> Vec<Value> {
    let object_name = format!("claimgate-jwks-{}", endpoint.host.replace('.', "-"));
    let object_name: String = object_name.chars().take(63).collect();
    let object_name = object_name.trim_end_matches('-').to_owned();
    let port = if endpoint.originates_tls() {
        json!({
            "number": endpoint.mesh_port(),
            "name": "http-tls-origination",
            "protocol": "HTTP",
            "targetPort": endpoint.port,
        })
    } else {
        json!({ "number": endpoint.port, "name": "http", "protocol": "HTTP" })
    };
    let service_entry = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": { "name": object_name, "namespace": namespace, "labels": labels() },
        "spec": {
            "hosts": [endpoint.host],
            "location": "MESH_EXTERNAL",
            "ports": [port],
            "resolution": "DNS",
        },
    });
    if !endpoint.originates_tls() {
        return vec![service_entry];
    }
    let destination_rule = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": { "name": object_name, "namespace": namespace, "labels": labels() },
        "spec": {
            "host": endpoint.host,
            "trafficPolicy": {
                "portLevelSettings": [{
                    "port": { "number": endpoint.mesh_port() },
                    "tls": { "mode": "SIMPLE", "sni": endpoint.host },
                }],
            },
        },
    });
    vec![service_entry, destination_rule]
}

/// Writes a JSON value as block-style YAML. A string is written plain only when it is a
/// word YAML cannot misread (letters first; letters, digits, `.`, `_`, `/`, `-`; not a
/// YAML 1.1 boolean or null); every other string is double-quoted with JSON escapes, which
/// YAML reads the same way.
fn write_yaml(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&" ".repeat(indent));
                out.push_str(&yaml_key(key));
                out.push(':');
                write_nested(out, item, indent + 2);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        // First key on the dash line, the rest aligned under it.
                        let mut nested = String::new();
                        write_yaml(&mut nested, item, indent + 2);
                        out.push(' ');
                        out.push_str(nested.trim_start());
                    }
                    _ => write_nested(out, item, indent + 2),
                }
            }
        }
        scalar => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn write_nested(out: &mut String, item: &Value, indent: usize) {
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_yaml(out, item, indent);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_yaml(out, item, indent);
        }
        scalar => {
            out.push(' ');
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn plain_word(text: &str) -> bool {
    const SPECIAL: [&str; 11] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
    ];
    text.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && !SPECIAL.contains(&text.to_ascii_lowercase().as_str())
}

fn yaml_key(key: &str) -> String {
    yaml_scalar(&Value::String(key.to_owned()))
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::String(text) if plain_word(text) => text.clone(),
        // serde_json's escapes are a subset of YAML's double-quoted escapes.
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_quotes_every_string_and_nests_blocks() {
        let value = json!({
            "a": "yes",
            "b": [1, {"c": "on", "d": [true]}, []],
            "e": {},
            "key with space": "x\"y\n",
            "f": "outbound|80||host",
            "g": "plain-word/v1",
            "h": "1.5",
        });
        let mut out = String::new();
        write_yaml(&mut out, &value, 0);
        assert_eq!(
            out,
            "a: \"yes\"\nb:\n  - 1\n  - c: \"on\"\n    d:\n      - true\n  - []\ne: {}\nf: \"outbound|80||host\"\ng: plain-word/v1\nh: \"1.5\"\n\"key with space\": \"x\\\"y\\n\"\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_dns_label("claimgate-ml", "--name").is_ok());
        for bad in ["", "Upper", "-x", "x-", "a_b", &"a".repeat(64)] {
            assert!(check_dns_label(bad, "--name").is_err(), "{bad}");
        }
    }

    #[test]
    fn external_https_key_sets_get_tls_origination() {
        let endpoint = HttpEndpoint::parse("https://login.example.com/keys").unwrap();
        let docs = jwks_egress(&endpoint, "istio-system");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["spec"]["ports"][0]["number"], 80);
        assert_eq!(docs[0]["spec"]["ports"][0]["targetPort"], 443);
        assert_eq!(
            docs[1]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"],
            "SIMPLE"
        );
        let plain = HttpEndpoint::parse("http://idp.example.com:8080/keys").unwrap();
        let docs = jwks_egress(&plain, "istio-system");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["spec"]["ports"][0]["number"], 8080);
    }
}
