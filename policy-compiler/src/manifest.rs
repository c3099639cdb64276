//! `claimgate manifest`: the Istio resources that deploy a compiled policy.
//!
//! - a `WasmPlugin` (extensions.istio.io/v1alpha1) whose `pluginConfig` is exactly what
//!   `compile` prints, with the module's URL and SHA-256, `failStrategy: FAIL_RELOAD` (or
//!   `FAIL_CLOSE`; never fail open), phase,
//!   priority, and a workload selector or target references — or, only when asked for by
//!   name (`--mesh-wide`, `--namespace-wide`), none;
//! - per remote key set outside the cluster, a `ServiceEntry` (networking.istio.io/v1) that
//!   makes istiod build the Envoy cluster the filter calls, and for every `https` key set
//!   (in the cluster or not) a `DestinationRule` that originates TLS (see
//!   [`HttpEndpoint::istio_cluster_in`]); both exported only to the namespaces the plugin
//!   runs in.
//!
//! Where the flags and the policy disagree, it warns on standard error (an error with
//! `--deny-warnings`). The output is a YAML stream for `kubectl apply -f -`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use claimgate_core::blob;
use claimgate_core::compiled::{CompiledPolicy, HostPattern};
use claimgate_core::mesh::{DEFAULT_CLUSTER_DOMAIN, HttpEndpoint};
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
    /// The built module, for `http(s)://` URLs: its SHA-256 is what istio-agent checks.
    #[arg(long)]
    pub wasm: Option<PathBuf>,
    /// The checksum istio-agent checks, 64 hex digits: the module's SHA-256 for
    /// `http(s)://`, the image manifest digest (as `claimgate package` prints it) for `oci://`.
    #[arg(long)]
    pub sha256: Option<String>,
    /// For `oci://` URLs: the OCI image layout `claimgate package` wrote; its image
    /// manifest digest is what istio-agent checks.
    #[arg(long, value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
    /// WasmPlugin name (default: `claimgate-` + the policy's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of the resources. A plugin in the root namespace (`istio-system`) applies
    /// to matching workloads of every namespace.
    #[arg(long, default_value = ROOT_NAMESPACE)]
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
    /// Istio's root namespace (`meshConfig.rootNamespace`): a plugin there applies to
    /// matching workloads of every namespace.
    #[arg(long, default_value = ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// No selector, in the root namespace: the plugin applies to every workload of the mesh.
    #[arg(long, conflicts_with_all = ["selectors", "target_refs", "namespace_wide"])]
    pub mesh_wide: bool,
    /// No selector, outside the root namespace: the plugin applies to every workload of
    /// `--namespace`.
    #[arg(long, conflicts_with_all = ["selectors", "target_refs"])]
    pub namespace_wide: bool,
    /// Namespaces that see the ServiceEntry/DestinationRule for key sets (repeatable;
    /// default: the plugin's own namespace, or every namespace for a plugin in the root
    /// namespace that selects workloads by label).
    #[arg(long = "export-to", value_name = "NAMESPACE")]
    pub export_to: Vec<String>,
    /// The cluster's DNS domain, which istiod's cluster names of Services end with.
    #[arg(long, default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// Filter chain phase.
    #[arg(long, value_enum, default_value = "AUTHN")]
    pub phase: Phase,
    /// Order among plugins of the same phase (higher runs first).
    #[arg(long, default_value_t = 10)]
    pub priority: i32,
    /// Traffic the plugin sees on a sidecar (default: SERVER).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
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
    /// Fail (exit 3, nothing written) on warnings too: the policy's and the manifest's.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// Istio's default root namespace: a plugin there applies to every namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Istio `failStrategy` values `manifest` emits; both fail closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailStrategy {
    /// `FAIL_RELOAD`: a VM that trapped is replaced on the next request (measured in Envoy
    /// 1.36 and 1.40: enforcing again ≈ 1.3 s after a trap), requests fail closed meanwhile.
    Reload,
    /// `FAIL_CLOSE`: every request on the worker answers 503 until a push or restart.
    Close,
}

/// The name of a key set host's ServiceEntry and DestinationRule: `claimgate-jwks-` and the
/// host's labels, cut to Kubernetes' 63 characters with a hash of the whole host kept at the
/// end when cut, so two long hosts never share a name.
fn object_name_for(host: &str) -> String {
    let name = format!("claimgate-jwks-{}", host.replace('.', "-"));
    if name.len() <= 63 {
        return name.trim_end_matches('-').to_owned();
    }
    // FNV-1a: a stable name tag, not a security property.
    let hash = host.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let head: String = name.chars().take(54).collect();
    format!("{}-{hash:08x}", head.trim_end_matches('-'))
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
    let scope = Scope::of(args)?;
    let mut warnings = scope.warnings(args);
    warnings.extend(host_warnings(&compiled.policy, args, &scope));

    let mut documents = vec![wasm_plugin(args, &name, &sha256, plugin_config)?];
    let egress = Egress {
        namespace: &args.namespace,
        export_to: &scope.export_to,
        cluster_domain: &args.cluster_domain,
    };
    for issuer in &compiled.policy.issuers {
        let Some(remote) = &issuer.remote_jwks else {
            continue;
        };
        let endpoint = HttpEndpoint::parse(&remote.uri).map_err(CliError::Usage)?;
        warnings.extend(jwks_host_problems(&issuer.name, &endpoint, args)?);
        let cluster = endpoint.istio_cluster_in(&args.cluster_domain);
        if remote.cluster != cluster {
            warnings.push(format!(
                "issuer `{}`: the policy reaches {} through cluster `{}`, but istiod names it `{cluster}`: set `cluster = \"{cluster}\"` in [issuers.{}.jwks] (or leave it out when --cluster-domain is {DEFAULT_CLUSTER_DOMAIN})",
                issuer.name, remote.uri, remote.cluster, issuer.name
            ));
        }
        if endpoint.in_cluster() && endpoint.originates_tls() {
            warnings.push(format!(
                "issuer `{}`: the DestinationRule below makes every sidecar in {} originate TLS to {} port {}: a workload there that speaks TLS to that port itself would encrypt twice, and a Keycloak behind a STRICT mTLS sidecar refuses it; plain `http://` to the Service (mTLS in the mesh) avoids both",
                issuer.name,
                scope.export_description(&args.namespace),
                endpoint.mesh_host(&args.cluster_domain),
                endpoint.port
            ));
        }
        for doc in egress.documents(&endpoint) {
            if documents.contains(&doc) {
                continue;
            }
            // Two different resources under one name: the later would replace the earlier on
            // apply, and one issuer's keys would become unreachable without a word.
            if let Some(clash) = documents.iter().find(|d| {
                d.get("kind") == doc.get("kind")
                    && d.pointer("/metadata/name") == doc.pointer("/metadata/name")
            }) {
                return Err(CliError::Usage(format!(
                    "issuer `{}`: its key set at {} needs a {} `{}` that differs from one another key set needs (the same host by http and by https?): serve both from one scheme and port",
                    issuer.name,
                    remote.uri,
                    clash
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("resource"),
                    clash
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )));
            }
            documents.push(doc);
        }
    }
    for warning in &warnings {
        crate::output::errln(&format!("warning: {warning}"));
    }
    let warning_count = warnings.len()
        + crate::count(
            &compiled.warnings,
            claimgate_core::compile::Severity::Warning,
        );
    if args.deny_warnings && warning_count > 0 {
        return Err(CliError::DeniedWarnings(warning_count));
    }

    let mut out = format!(
        "# Generated by `claimgate manifest` from {} (policy {}, version {}).\n# Apply with: kubectl apply -f <this file>\n",
        // One line each, so no policy name or path can end the comment and start a resource.
        crate::terminal_safe(&args.policy.display().to_string()),
        crate::terminal_safe(&config.name),
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

/// Which workloads the plugin applies to, as the flags say, and where the key set
/// resources must be visible for it.
struct Scope {
    /// The plugin targets a Gateway (no sidecar `match`).
    gateway: bool,
    /// Label selector in the root namespace: matching workloads of every namespace.
    cross_namespace: bool,
    /// `exportTo` of the ServiceEntry/DestinationRule.
    export_to: Vec<String>,
}

// === impl Scope ===

impl Scope {
    /// Refuses a plugin that would apply to a whole namespace or mesh without saying so.
    fn of(args: &ManifestArgs) -> Result<Scope, CliError> {
        let root = args.namespace == args.root_namespace;
        let selected = !args.selectors.is_empty() || !args.target_refs.is_empty();
        if root && args.namespace_wide {
            return Err(CliError::Usage(format!(
                "--namespace-wide: in the root namespace `{}` that is the whole mesh; say --mesh-wide",
                args.root_namespace
            )));
        }
        if !selected {
            match (root, args.mesh_wide, args.namespace_wide) {
                (true, true, _) | (false, _, true) => {}
                (true, false, _) => {
                    return Err(CliError::Usage(format!(
                        "no --selector or --target-ref: in the root namespace `{}` the plugin would apply to every workload of the mesh; give --selector KEY=VALUE or --target-ref KIND/NAME (and --namespace of the workloads), or --mesh-wide if every workload is meant",
                        args.root_namespace
                    )));
                }
                (false, true, _) => {
                    return Err(CliError::Usage(format!(
                        "--mesh-wide: a plugin in `{}` applies only to its own namespace; use --namespace-wide there, or --namespace {} (the root namespace) for the whole mesh",
                        args.namespace, args.root_namespace
                    )));
                }
                (false, false, _) => {
                    return Err(CliError::Usage(format!(
                        "no --selector or --target-ref: the plugin would apply to every workload in namespace `{}`; give --selector KEY=VALUE or --target-ref KIND/NAME, or --namespace-wide if every workload there is meant",
                        args.namespace
                    )));
                }
            }
        }
        if args
            .target_refs
            .iter()
            .any(|t| t.starts_with("GatewayClass/"))
        {
            return Err(CliError::Usage(
                "--target-ref: GatewayClass targets every Gateway of the class in every namespace; target each Gateway (`Gateway/NAME`, in its namespace)".into(),
            ));
        }
        let gateway = args.target_refs.iter().any(|t| t.starts_with("Gateway"));
        if gateway && args.target_refs.iter().any(|t| t.starts_with("Service/")) {
            return Err(CliError::Usage(
                "--target-ref: Gateway and Service targets need different `match` settings (sidecar traffic modes do not apply to a Gateway): emit one manifest for each".into(),
            ));
        }
        // Target references and namespace-wide plugins stay in their namespace; a label
        // selector or a mesh-wide plugin in the root namespace reaches every namespace.
        let cross_namespace = root && (!args.selectors.is_empty() || args.mesh_wide);
        let export_to = if !args.export_to.is_empty() {
            for namespace in &args.export_to {
                if namespace != "." && namespace != "*" {
                    check_dns_label(namespace, "--export-to")?;
                }
            }
            args.export_to.clone()
        } else if cross_namespace {
            vec!["*".to_owned()]
        } else {
            vec![".".to_owned()]
        };
        Ok(Scope {
            gateway,
            cross_namespace,
            export_to,
        })
    }

    /// The flags that do nothing or more than they seem to.
    fn warnings(&self, args: &ManifestArgs) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.gateway && (args.mode.is_some() || !args.ports.is_empty()) {
            warnings.push(
                "--mode and --port select sidecar traffic; a Gateway target has no such `match`, so they are ignored and the plugin sees every request through the Gateway".into(),
            );
        }
        if !self.gateway && matches!(args.mode, Some(Mode::Client | Mode::ClientAndServer)) {
            warnings.push(
                "--mode CLIENT/CLIENT_AND_SERVER: the policy also decides the workload's own outbound requests (each needs a token the policy allows, and an unmatched one gets the policy's default); SERVER guards the model server".into(),
            );
        }
        if self.cross_namespace && !args.selectors.is_empty() {
            warnings.push(format!(
                "the plugin is in the root namespace `{}`: --selector {} matches workloads in every namespace; give --namespace of the workloads to keep it to one",
                args.root_namespace,
                args.selectors.join(",")
            ));
        }
        if self.cross_namespace && args.export_to.is_empty() {
            warnings.push(
                "the key set ServiceEntry/DestinationRule are exported to every namespace (the plugin may run in any); narrow them with --export-to NAMESPACE".into(),
            );
        }
        if args.namespace_wide {
            warnings.push(format!(
                "--namespace-wide: every workload in `{}` (not only the model server) answers 401/403 by this policy on every inbound port",
                args.namespace
            ));
        }
        warnings
    }

    fn export_description(&self, namespace: &str) -> String {
        if self.export_to.iter().any(|n| n == "*") {
            "every namespace".to_owned()
        } else {
            let names: Vec<&str> = self
                .export_to
                .iter()
                .map(|n| if n == "." { namespace } else { n.as_str() })
                .collect();
            format!("namespace(s) {}", names.join(", "))
        }
    }
}

/// A key set host the mesh cannot name, or names differently than it seems.
fn jwks_host_problems(
    issuer: &str,
    endpoint: &HttpEndpoint,
    args: &ManifestArgs,
) -> Result<Vec<String>, CliError> {
    if endpoint.is_short_name() {
        let namespace = if args.namespace == args.root_namespace {
            "NAMESPACE"
        } else {
            args.namespace.as_str()
        };
        return Err(CliError::Usage(format!(
            "issuer `{issuer}`: the key set host `{host}` is a short name: it resolves differently in every namespace and istiod builds no cluster for it; write the Service as `{host}.{namespace}.svc` (its namespace) in the policy's `uri`",
            host = endpoint.host
        )));
    }
    let mut warnings = Vec::new();
    let host = endpoint.host.trim_end_matches('.');
    if host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        warnings.push(format!(
            "issuer `{issuer}`: the key set is at `{}`: inside a pod that is the workload itself, not the IdP (a local-test policy?); name the IdP's Service or host",
            endpoint.host
        ));
    }
    if endpoint.is_two_labels() {
        warnings.push(format!(
            "issuer `{issuer}`: `{host}` is taken for a host outside the cluster (ServiceEntry, MESH_EXTERNAL); if it is the Service `{}` of namespace `{}`, write `{host}.svc`",
            endpoint.host.split('.').next().unwrap_or_default(),
            endpoint.host.split('.').nth(1).unwrap_or_default(),
            host = endpoint.host
        ));
    }
    if let Some(domain) = endpoint.cluster_domain()
        && domain != args.cluster_domain
    {
        warnings.push(format!(
            "issuer `{issuer}`: `{}` ends in `{domain}`, but the cluster domain is `{}` (--cluster-domain)",
            endpoint.host, args.cluster_domain
        ));
    }
    Ok(warnings)
}

/// Rules whose hosts the plugin's workloads never see.
fn host_warnings(policy: &CompiledPolicy, args: &ManifestArgs, scope: &Scope) -> Vec<String> {
    let mut warnings = Vec::new();
    for rule in &policy.rules {
        let namespaces: Option<Vec<&str>> = rule
            .hosts
            .iter()
            .map(|host| match host {
                HostPattern::Exact(name) => service_namespace(name),
                HostPattern::Suffix(suffix) => service_namespace(suffix.trim_start_matches('.')),
                HostPattern::Prefix(_) | HostPattern::Any => None,
            })
            .collect();
        let Some(namespaces) = namespaces.filter(|n| !n.is_empty()) else {
            continue;
        };
        if scope.gateway {
            warnings.push(format!(
                "rule `{}` names only in-cluster Service hosts; requests through a Gateway carry the external host name, so it never matches there",
                rule.name
            ));
        } else if args.namespace != args.root_namespace
            && namespaces.iter().all(|n| *n != args.namespace)
        {
            warnings.push(format!(
                "rule `{}` names only Services of namespace(s) {}, but the plugin runs on workloads in `{}`: it never matches there",
                rule.name,
                namespaces.join(", "),
                args.namespace
            ));
        }
    }
    warnings
}

/// The namespace of an in-cluster Service host name (`NAME.NAMESPACE.svc[.DOMAIN]`).
fn service_namespace(host: &str) -> Option<&str> {
    let mut labels = host.split('.');
    let (_, namespace, svc) = (labels.next()?, labels.next()?, labels.next()?);
    (svc == "svc" && !namespace.is_empty()).then_some(namespace)
}

/// The `sha256` of the WasmPlugin: what istio-agent compares it with depends on the URL.
/// For `oci://` it is the digest of the image manifest (Istio `pkg/wasm`: the fetched
/// image's digest), never the `.wasm` file's hash — a WasmPlugin with the file's hash never
/// loads and, failing closed, stops all traffic. For `http(s)://` it is the file's SHA-256.
/// Every source given (flag, layout, file, `@sha256:` in the URL) must agree.
fn module_sha256(args: &ManifestArgs) -> Result<String, CliError> {
    let flag = args.sha256.as_deref().map(sha256_flag).transpose()?;
    match args.wasm_url.strip_prefix("oci://") {
        Some(reference) => oci_image_digest(reference, args, flag),
        None => module_file_digest(args, flag),
    }
}

fn sha256_flag(text: &str) -> Result<String, CliError> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CliError::Usage(format!(
            "--sha256: `{text}` is not 64 hex digits"
        )));
    }
    Ok(hex.to_ascii_lowercase())
}

fn oci_image_digest(
    reference: &str,
    args: &ManifestArgs,
    flag: Option<String>,
) -> Result<String, CliError> {
    if let Some(path) = &args.wasm {
        return Err(CliError::Usage(format!(
            "--wasm {}: istio-agent checks an oci:// module against the image manifest digest, \
             not the .wasm file's SHA-256 (such a WasmPlugin never loads); build the image with \
             `claimgate package {} -o DIR [--push REGISTRY/REPO:TAG]` and give --oci-layout DIR, \
             or --sha256 with the digest it printed",
            path.display(),
            path.display()
        )));
    }
    let (name, pinned) = match reference.rsplit_once('@') {
        Some((name, digest)) => {
            let hex = digest
                .strip_prefix("sha256:")
                .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "--wasm-url: `@{digest}` is not a sha256 digest (sha256: and 64 lower-case hex digits)"
                    ))
                })?;
            (name, Some(hex.to_owned()))
        }
        None => (reference, None),
    };
    // The tag picks the image in a layout that holds several.
    let tag = name
        .rsplit_once('/')
        .and_then(|(_, last)| last.split_once(':'))
        .map(|(_, tag)| tag);
    let layout = args
        .oci_layout
        .as_deref()
        .map(|dir| crate::package::layout_manifest_hex(dir, tag))
        .transpose()?;
    let sources = [
        ("--sha256", flag),
        ("--oci-layout", layout),
        ("the URL's @sha256:", pinned),
    ];
    let mut given = sources
        .iter()
        .filter_map(|(source, hex)| hex.as_ref().map(|hex| (*source, hex)));
    let Some((first_source, digest)) = given.next() else {
        return Err(CliError::Usage(
            "an oci:// module needs its image manifest digest: give --oci-layout DIR (written by \
             `claimgate package`), --sha256 with the digest `package` printed, or pin the URL \
             with @sha256:DIGEST"
                .to_owned(),
        ));
    };
    for (source, other) in given {
        if other != digest {
            return Err(CliError::Usage(format!(
                "{first_source} gives image digest {digest} but {source} gives {other}"
            )));
        }
    }
    Ok(digest.clone())
}

fn module_file_digest(args: &ManifestArgs, flag: Option<String>) -> Result<String, CliError> {
    if let Some(dir) = &args.oci_layout {
        return Err(CliError::Usage(format!(
            "--oci-layout {}: only for oci:// URLs; istio-agent checks a module fetched from \
             `{}` against the file's own SHA-256: give --wasm FILE or --sha256",
            dir.display(),
            args.wasm_url
        )));
    }
    let Some(path) = &args.wasm else {
        return flag.ok_or_else(|| CliError::Usage("give --wasm FILE or --sha256 HEX".into()));
    };
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
    let hex = blob::sha256_hex(&bytes);
    match flag {
        Some(other) if other != hex => Err(CliError::Usage(format!(
            "--sha256 {other} is not the SHA-256 of {} ({hex})",
            path.display()
        ))),
        _ => Ok(hex),
    }
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
                "Gateway" => "gateway.networking.k8s.io",
                "Service" => "",
                // In the root namespace a GatewayClass target reaches every Gateway of the
                // class in every namespace (and elsewhere Istio ignores it): a mesh-wide
                // plugin under another name, with key set resources exported to one namespace.
                "GatewayClass" => {
                    return Err(CliError::Usage(
                        "--target-ref: GatewayClass targets every Gateway of the class in every namespace; target each Gateway (`Gateway/NAME`, in its namespace)".into(),
                    ));
                }
                other => {
                    return Err(CliError::Usage(format!(
                        "--target-ref: kind `{other}` is not Gateway or Service"
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
        selector.insert(
            "mode".into(),
            json!(screaming(args.mode.unwrap_or(Mode::Server))),
        );
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

/// Where the key set resources go and whom they are visible to.
struct Egress<'a> {
    namespace: &'a str,
    export_to: &'a [String],
    cluster_domain: &'a str,
}

// === impl Egress ===

impl Egress<'_> {
    /// The resources that give Envoy a TLS-originating (for `https`) cluster for a key set
    /// host: a ServiceEntry for a host outside the cluster (istiod already knows Services),
    /// and a DestinationRule for every `https` key set.
    fn documents(&self, endpoint: &HttpEndpoint) -> Vec<Value> {
        let host = endpoint.mesh_host(self.cluster_domain);
        // Two key sets on one host and different ports need two resources (local set-ups).
        let object_name = match endpoint.port {
            80 | 443 => object_name_for(&host),
            port => object_name_for(&format!("{host}.{port}")),
        };
        let metadata =
            json!({ "name": object_name, "namespace": self.namespace, "labels": labels() });
        let mut documents = Vec::new();
        if !endpoint.in_cluster() {
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
            documents.push(json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": metadata,
                "spec": {
                    "hosts": [host],
                    "location": "MESH_EXTERNAL",
                    "ports": [port],
                    "resolution": "DNS",
                    "exportTo": self.export_to,
                },
            }));
        }
        if endpoint.originates_tls() {
            documents.push(json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": metadata,
                "spec": {
                    "host": host,
                    "trafficPolicy": {
                        "portLevelSettings": [{
                            "port": { "number": endpoint.mesh_port() },
                            // The name the URL gives, as a direct client would send it.
                            "tls": { "mode": "SIMPLE", "sni": endpoint.host },
                        }],
                    },
                    "exportTo": self.export_to,
                },
            }));
        }
        documents
    }
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
    fn a_name_cannot_end_the_generated_comment() {
        let name = "x\n---\nkind: AuthorizationPolicy\u{2028}\u{85}\r#";
        let line = crate::terminal_safe(name);
        assert_eq!(
            line,
            "x\\n---\\nkind: AuthorizationPolicy\\u{2028}\\u{85}\\r#"
        );
    }

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

    fn egress(uri: &str) -> Vec<Value> {
        let export_to = [".".to_owned()];
        let egress = Egress {
            namespace: "ml-serving",
            export_to: &export_to,
            cluster_domain: "cluster.local",
        };
        egress.documents(&HttpEndpoint::parse(uri).unwrap())
    }

    #[test]
    fn external_https_key_sets_get_tls_origination() {
        let docs = egress("https://login.example.com/keys");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["spec"]["ports"][0]["number"], 80);
        assert_eq!(docs[0]["spec"]["ports"][0]["targetPort"], 443);
        assert_eq!(docs[0]["spec"]["exportTo"], json!(["."]));
        assert_eq!(
            docs[1]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"],
            "SIMPLE"
        );
        assert_eq!(docs[1]["spec"]["exportTo"], json!(["."]));
        let docs = egress("http://idp.example.com:8080/keys");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["spec"]["ports"][0]["number"], 8080);
    }

    /// Issue 11: an in-cluster `https` key set got no resource at all, and the filter's
    /// plain-HTTP callout went to the Service's TLS port.
    #[test]
    fn in_cluster_https_key_sets_get_a_tls_destination_rule_only() {
        let docs = egress("https://keycloak.auth.svc:8443/realms/ml/certs");
        assert_eq!(docs.len(), 1);
        let rule = &docs[0];
        assert_eq!(rule["kind"], "DestinationRule");
        assert_eq!(rule["spec"]["host"], "keycloak.auth.svc.cluster.local");
        let port = &rule["spec"]["trafficPolicy"]["portLevelSettings"][0];
        assert_eq!(port["port"]["number"], 8443);
        assert_eq!(
            port["tls"],
            json!({ "mode": "SIMPLE", "sni": "keycloak.auth.svc" })
        );
        assert!(egress("http://keycloak.auth.svc:8080/certs").is_empty());
    }

    fn scope(flags: &[&str]) -> Result<Scope, String> {
        let argv = [
            &[
                "claimgate",
                "manifest",
                "p.toml",
                "--wasm-url",
                "oci://x/y:1",
            ],
            &["--sha256", "00"][..],
            flags,
        ]
        .concat();
        let cli = <crate::Cli as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
        let crate::Command::Manifest(args) = cli.command else {
            unreachable!()
        };
        Scope::of(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn long_key_set_hosts_keep_distinct_names() {
        let a = object_name_for("login.identityprovider.example.com.eu-west.example.org");
        let b = object_name_for("login.identityprovider.example.com.eu-west.example.net");
        assert_ne!(a, b);
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_eq!(
            object_name_for("idp.example.com"),
            "claimgate-jwks-idp-example-com"
        );
    }

    /// A GatewayClass target in the root namespace reaches every Gateway of the class.
    #[test]
    fn a_gateway_class_target_is_refused() {
        let refusal = scope(&["--target-ref", "GatewayClass/istio"])
            .err()
            .unwrap();
        assert!(refusal.contains("target each Gateway"), "{refusal}");
        assert!(scope(&["--target-ref", "Gateway/ingress"]).is_ok());
    }

    /// Issue 11: no selector in the root namespace silently applied the plugin mesh-wide.
    #[test]
    fn a_scope_without_selector_must_be_named() {
        for (flags, refusal) in [
            (&[][..], "every workload of the mesh"),
            (&["--namespace", "ml"], "every workload in namespace `ml`"),
            (
                &["--namespace", "ml", "--mesh-wide"],
                "use --namespace-wide",
            ),
            (&["--namespace-wide"], "say --mesh-wide"),
        ] {
            let error = scope(flags).err().unwrap_or_default();
            assert!(error.contains(refusal), "{flags:?}: {error}");
        }
        let export = |flags: &[&str]| scope(flags).map(|s| s.export_to).unwrap();
        assert_eq!(export(&["--mesh-wide"]), ["*"]);
        assert_eq!(export(&["--selector", "app=x"]), ["*"]);
        assert_eq!(export(&["--target-ref", "Gateway/gw"]), ["."]);
        assert_eq!(export(&["--namespace", "ml", "--namespace-wide"]), ["."]);
        assert_eq!(export(&["--namespace", "ml", "--selector", "app=x"]), ["."]);
        assert_eq!(
            export(&[
                "--selector",
                "app=x",
                "--export-to",
                "a",
                "--export-to",
                "b"
            ]),
            ["a", "b"]
        );
        assert!(scope(&["--mesh-wide", "--selector", "app=x"]).is_err());
    }

    #[test]
    fn service_hosts_name_their_namespace() {
        assert_eq!(service_namespace("scorer.ml.svc.cluster.local"), Some("ml"));
        assert_eq!(service_namespace("scorer.ml.svc"), Some("ml"));
        assert_eq!(
            service_namespace("fraud.westeurope.inference.ml.azure.com"),
            None
        );
        assert_eq!(service_namespace("a.b"), None);
    }
}
