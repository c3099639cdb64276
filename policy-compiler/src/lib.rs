//! The `claimgate` CLI as a library: one function per subcommand, a thin `main`.
//!
//! Exit codes (stable, for scripts and CI):
//! - `0`: success; for `explain`, the request is allowed; for `test`, every case passed
//! - `1`: usage or I/O error (unreadable file, bad argument)
//! - `2`: `explain`: the request is denied; `test`: a case failed
//! - `3`: the policy is invalid (or has warnings, with `--deny-warnings`); `import`: the
//!   Istio input is invalid, or the policy it wrote does not compile
//! - `4`: `import`: the policy was written, but something was not translated exactly (the
//!   policy is narrower there; the report on standard error says what)
#![forbid(unsafe_code)]

pub mod cases;
pub mod import;
pub mod manifest;
pub mod output;
pub mod package;
pub mod show;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use claimgate_core::blob::{self, PluginConfig};
use claimgate_core::compile::{self, Compiled, Diagnostic, Severity};
use claimgate_core::engine::{Decision, Engine, RemoteKeys, Request};
use claimgate_core::keys::{KeySet, parse_jwks};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Exit statuses of the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success / allowed / all tests passed.
    Ok = 0,
    /// Usage or I/O error.
    Usage = 1,
    /// Denied / a test failed.
    Denied = 2,
    /// Invalid policy.
    InvalidPolicy = 3,
    /// `import`: written, but not every construct was translated exactly.
    NotExact = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// claimgate: compile, check, explain and test claimgate policies; emit Istio manifests.
#[derive(Debug, Parser)]
#[command(name = "claimgate", about, long_about = None, after_help = "Exit codes: 0 ok/allowed, 1 usage or I/O error, 2 denied or test failed, 3 invalid policy (import: invalid input), 4 import: not translated exactly.")]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile a TOML policy into the pluginConfig JSON a WasmPlugin carries.
    Compile(CompileArgs),
    /// Check a policy and report every problem with file, line and column.
    Check(CheckArgs),
    /// Show the decision the filter takes for a request and token, with every check.
    Explain(ExplainArgs),
    /// Run policy unit tests (requests + claims or tokens → expected decisions).
    Test(TestArgs),
    /// Emit the Istio manifests that deploy a policy (WasmPlugin, ServiceEntry, DestinationRule).
    Manifest(manifest::ManifestArgs),
    /// Summarise a deployed policy from its pluginConfig or WasmPlugin YAML (for reviews).
    Show(show::ShowArgs),
    /// Print the JSON Schema of the policy language (for editors: Taplo's `#:schema`).
    Schema,
    /// Build the Wasm OCI image (Istio's compat variant) from the module as an OCI image
    /// layout, optionally push it; prints the image digest a WasmPlugin's `sha256` must be.
    Package(package::PackageArgs),
    /// Translate Istio RequestAuthentication and AuthorizationPolicy resources into a policy
    /// (never wider; a report of what was not translated exactly on standard error).
    Import(import::ImportArgs),
}

/// `compile` arguments.
#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The policy file.
    pub policy: PathBuf,
    /// Write the pluginConfig JSON here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Fail on warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// `check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file.
    pub policy: PathBuf,
    /// Print diagnostics as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 3 on warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// `explain` arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The policy file (TOML) or compiled pluginConfig JSON (`.json`).
    #[arg(long)]
    pub policy: PathBuf,
    /// The bearer token, `@FILE` to read it from a file or `-` from standard input. Leave
    /// out for a request without one.
    #[arg(long)]
    pub token: Option<String>,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path (with query, as sent).
    #[arg(long)]
    pub path: String,
    /// Host / authority.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Request header, `NAME=VALUE` (repeatable; repeated names are kept, in order, as
    /// separate header lines).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Clock, UNIX seconds (default: now).
    #[arg(long)]
    pub now: Option<u64>,
    /// Key set for an issuer with a remote `jwks_uri`, `ISSUER=FILE` (repeatable).
    #[arg(long = "jwks", value_name = "ISSUER=FILE")]
    pub jwks: Vec<String>,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `test` arguments.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The policy file.
    pub policy: PathBuf,
    /// The test cases file (TOML).
    pub cases: PathBuf,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Errors that end a command before it answers.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The policy did not compile; diagnostics were printed.
    #[error("policy is invalid")]
    InvalidPolicy(Vec<Diagnostic>),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// Warnings were printed and `--deny-warnings` was given.
    #[error("{0} warning(s), and --deny-warnings")]
    DeniedWarnings(usize),
    /// Standard output could not be written (other than a reader that went away).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    fn exit(&self) -> Exit {
        match self {
            CliError::InvalidPolicy(_) | CliError::DeniedWarnings(_) => Exit::InvalidPolicy,
            CliError::Io { .. } | CliError::Usage(_) | CliError::Output(_) => Exit::Usage,
        }
    }
}

/// Reads a file with its name in the error.
pub fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Compiles a policy file, reading JWKS files relative to it.
pub fn compile_file(path: &Path) -> Result<Compiled, CliError> {
    let text = read_file(path)?;
    output::remember_source(&path.display().to_string(), &text);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let reader =
        move |name: &str| std::fs::read_to_string(base.join(name)).map_err(|e| e.to_string());
    compile::compile(&text, &path.display().to_string(), &reader).map_err(CliError::InvalidPolicy)
}

/// Loads an engine from a TOML policy or a compiled pluginConfig JSON file.
pub fn load_engine(path: &Path) -> Result<Engine, CliError> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = read_file(path)?;
        return blob::engine_from_plugin_config(text.as_bytes())
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())));
    }
    let compiled = compile_file(path)?;
    engine_from(&compiled)
}

/// Builds the engine exactly as the filter does: encode, then decode the pluginConfig.
pub fn engine_from(compiled: &Compiled) -> Result<Engine, CliError> {
    let config =
        blob::plugin_config(&compiled.policy).map_err(|e| CliError::Usage(e.to_string()))?;
    let json = serde_json::to_vec(&config).map_err(|e| CliError::Usage(e.to_string()))?;
    blob::engine_from_plugin_config(&json).map_err(|e| CliError::Usage(e.to_string()))
}

/// How many of `diagnostics` are of `severity` (notes never count as warnings).
pub(crate) fn count(diagnostics: &[Diagnostic], severity: Severity) -> usize {
    diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .count()
}

pub(crate) fn print_diagnostics(diagnostics: &[Diagnostic]) {
    output::print_diagnostics(diagnostics);
}

/// Leaves a compiled policy to the end of the process instead of freeing it: the commands
/// that compile end right after, and freeing a policy of 100,000 rules piece by piece takes
/// a tenth of a second or more that nobody waits for usefully.
fn leave_for_exit(compiled: Compiled) {
    std::mem::forget(compiled);
}

/// `compile`.
pub fn cmd_compile(args: &CompileArgs) -> Result<Exit, CliError> {
    let compiled = compile_file(&args.policy)?;
    print_diagnostics(&compiled.warnings);
    if args.deny_warnings && count(&compiled.warnings, Severity::Warning) > 0 {
        return Err(CliError::InvalidPolicy(Vec::new()));
    }
    let config: PluginConfig =
        blob::plugin_config(&compiled.policy).map_err(|e| CliError::Usage(e.to_string()))?;
    let json = serde_json::to_string_pretty(&config).map_err(|e| CliError::Usage(e.to_string()))?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, format!("{json}\n")).map_err(|source| CliError::Io {
                path: path.display().to_string(),
                source,
            })?;
            output::errln(&format!(
                "wrote {} ({} rules, {} issuers, version {})",
                path.display(),
                compiled.policy.rules.len(),
                compiled.policy.issuers.len(),
                config.digest
            ));
        }
        None => output::outln(&json)?,
    }
    leave_for_exit(compiled);
    Ok(Exit::Ok)
}

/// `check`.
pub fn cmd_check(args: &CheckArgs) -> Result<Exit, CliError> {
    let mut diagnostics = match compile_file(&args.policy) {
        Ok(mut compiled) => {
            let warnings = std::mem::take(&mut compiled.warnings);
            leave_for_exit(compiled);
            warnings
        }
        Err(CliError::InvalidPolicy(diagnostics)) => diagnostics,
        Err(other) => return Err(other),
    };
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let errors = count(&diagnostics, Severity::Error);
    let warnings = count(&diagnostics, Severity::Warning);
    if args.json {
        let out = serde_json::json!({ "errors": errors, "warnings": warnings, "diagnostics": diagnostics });
        output::outln(&format!("{out:#}"))?;
    } else {
        print_diagnostics(&diagnostics);
        output::errln(&format!(
            "{}: {errors} error(s), {warnings} warning(s)",
            args.policy.display()
        ));
    }
    Ok(if errors > 0 || (args.deny_warnings && warnings > 0) {
        Exit::InvalidPolicy
    } else {
        Exit::Ok
    })
}

/// The system clock, UNIX seconds. A clock before 1970 is an error, never `0` (at 0 every
/// `exp` would pass).
fn now_secs() -> Result<u64, CliError> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| CliError::Usage("the system clock reads before 1970: pass --now".to_owned()))
}

/// Reads `@file`, `-` (standard input) or returns the text itself, trimmed.
pub fn token_argument(text: &str) -> Result<String, CliError> {
    if text == "-" {
        let mut token = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut token).map_err(|source| {
            CliError::Io {
                path: "standard input".to_owned(),
                source,
            }
        })?;
        return Ok(token.trim().to_owned());
    }
    match text.strip_prefix('@') {
        Some(path) => Ok(read_file(Path::new(path))?.trim().to_owned()),
        None => Ok(text.trim().to_owned()),
    }
}

/// Parses `NAME=VALUE` pairs into lower-case header names, in the order given. A name given
/// twice stays twice (as two header lines reach Envoy): the engine, not the CLI, decides
/// what a repeated header means (two token headers are a malformed request).
pub fn header_pairs(list: &[String]) -> Result<Vec<(String, String)>, CliError> {
    list.iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("`{pair}` is not NAME=VALUE")))?;
            let name = name.trim().to_ascii_lowercase();
            let bare = name.strip_prefix(':').unwrap_or(&name);
            if bare.is_empty()
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(CliError::Usage(format!(
                    "`{name}` (in `{pair}`) is not a header name"
                )));
            }
            // Envoy trims optional whitespace around a value; so does the CLI.
            Ok((name, value.trim().to_owned()))
        })
        .collect()
}

/// Loads `ISSUER=FILE` key sets for remote-JWKS issuers.
pub fn remote_keys(engine: &Engine, list: &[String]) -> Result<RemoteKeys, CliError> {
    let mut remote = RemoteKeys::default();
    for pair in list {
        let (name, file) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("`{pair}` is not ISSUER=FILE")))?;
        let (index, issuer) = engine
            .policy()
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == name)
            .ok_or_else(|| {
                let names = engine.policy().issuers.iter().map(|i| i.name.as_str());
                let suggestion = compile::closest_name(name, names)
                    .map(|best| format!("; did you mean `{best}`?"))
                    .unwrap_or_default();
                CliError::Usage(format!("no issuer `{name}` in the policy{suggestion}"))
            })?;
        let parsed = parse_jwks(&read_file(Path::new(file))?)
            .map_err(|e| CliError::Usage(format!("{file}: {e}")))?;
        // As the filter installs a fetched set: the issuer's HMAC secret stays beside it.
        remote.set(index, KeySet::for_issuer(issuer, &parsed.keys));
    }
    Ok(remote)
}

/// Untrusted text (claims, policy names, paths) for one line of a terminal or a YAML comment:
/// control characters (line breaks, ANSI escapes), the Unicode line and paragraph separators
/// YAML also breaks lines at, and bidi controls that reorder a line on screen are shown
/// escaped, so no value can fake a line such as `decision: ALLOW` or end a comment.
pub(crate) fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    }
    if text.chars().any(unsafe_char) {
        std::borrow::Cow::Owned(
            text.chars()
                .map(|c| {
                    if unsafe_char(c) {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// A list of names for people: separated by `, `, `-` when empty. A name that could be
/// misread (empty, with a comma, a space, a quote or a control character) is quoted and
/// escaped, so a role `a,b` does not pass for two.
fn names(list: &[String]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    list.iter()
        .map(|name| {
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, ',' | '"'));
            if plain {
                name.clone()
            } else {
                serde_json::Value::String(name.clone()).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a decision for people; `removed` are the request headers the filter removes
/// before the request goes upstream ([`Engine::removed_upstream`]).
pub fn render_decision(decision: &Decision, engine: &Engine, removed: &[&[u8]]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
    let response = decision.response();
    let status = response.as_ref().map_or(200, |r| r.status);
    let _ = write!(out, "decision: {verdict}");
    if let Some(reason) = &decision.reason {
        let _ = write!(out, " {status} {}", reason.code());
    }
    if !decision.enforced {
        let _ = write!(out, " (audit mode: the request passes)");
    }
    let _ = writeln!(out);
    if let Some(reason) = &decision.reason {
        let _ = writeln!(out, "reason:   {}", terminal_safe(&reason.to_string()));
        if let Some(header) = response.and_then(|r| r.www_authenticate) {
            let _ = writeln!(
                out,
                "header:   WWW-Authenticate: {}",
                terminal_safe(&header)
            );
        }
    }
    let _ = writeln!(
        out,
        "rule:     {}",
        terminal_safe(decision.rule.as_deref().unwrap_or("-"))
    );
    let _ = writeln!(out, "matched:  {}", names(&decision.matched_rules));
    if !decision.captures.is_empty() {
        let captures: Vec<String> = decision
            .captures
            .iter()
            .map(|(name, value)| format!("{name}={}", terminal_safe(value)))
            .collect();
        let _ = writeln!(out, "captures: {}", captures.join(" "));
    }
    if let Some(id) = &decision.identity {
        let _ = writeln!(
            out,
            "identity: issuer={} subject={} client={} roles={} scopes={}",
            terminal_safe(&id.issuer),
            terminal_safe(&id.subject),
            terminal_safe(id.client.as_deref().unwrap_or("-")),
            names(&id.roles),
            names(&id.scopes)
        );
    }
    for (name, value) in engine.upstream_headers(decision) {
        let _ = writeln!(out, "upstream: {name}: {value}");
    }
    for name in removed {
        let _ = writeln!(
            out,
            "removed:  {}",
            terminal_safe(&String::from_utf8_lossy(name))
        );
    }
    if let Some(shadow) = &decision.shadow {
        let _ = writeln!(
            out,
            "shadow:   {} (audit rules enforcing too; logged, not enforced){}{}",
            if shadow.allowed { "ALLOW" } else { "DENY" },
            shadow
                .reason
                .as_ref()
                .map(|r| format!(" {} {}", r.response_in(decision.statuses).status, r.code()))
                .unwrap_or_default(),
            shadow
                .rule
                .as_deref()
                .map(|r| format!(" by rule `{r}`"))
                .unwrap_or_default(),
        );
    }
    let _ = writeln!(
        out,
        "policy:   {} {}",
        terminal_safe(&engine.policy().name),
        engine.digest()
    );
    let _ = writeln!(out, "checks:");
    for check in &decision.checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(
            out,
            "  {mark} {:<11} {}",
            check.check,
            terminal_safe(&check.detail)
        );
    }
    out
}

/// `explain`.
pub fn cmd_explain(args: &ExplainArgs) -> Result<Exit, CliError> {
    let engine = load_engine(&args.policy)?;
    let remote = remote_keys(&engine, &args.jwks)?;
    let mut headers = header_pairs(&args.headers)?;
    if let Some(token) = &args.token {
        let token = token_argument(token)?;
        // The token goes in the first header location, with its prefix, as a client sends it.
        headers.push(claimgate_core::locate::example_header(
            engine.policy(),
            &token,
        ));
    }
    let seen = engine.headers_seen(&headers);
    let request = Request {
        method: &args.method,
        host: &args.host,
        path: &args.path,
        headers: &seen,
    };
    let now = match args.now {
        Some(now) => now,
        None => now_secs()?,
    };
    let mut checks = Vec::new();
    let decision = engine.decide(&request, now, &remote, Some(&mut checks));
    let removed = if decision.passes() {
        engine.removed_upstream(headers.iter().map(|(name, _)| name.as_bytes()))
    } else {
        Vec::new()
    };
    if args.json {
        let out = serde_json::json!({
            "status": decision.status(),
            "code": decision.reason.as_ref().map(|r| r.code()),
            "message": decision.reason.as_ref().map(|r| r.to_string()),
            "www_authenticate": decision.response().and_then(|r| r.www_authenticate),
            "policy_version": engine.digest(),
            "upstream_headers": engine
                .upstream_headers(&decision)
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.into_owned()))
                .collect::<Vec<_>>(),
            "removed_headers": removed
                .iter()
                .map(|name| String::from_utf8_lossy(name))
                .collect::<Vec<_>>(),
            "decision": decision,
        });
        output::outln(&format!("{out:#}"))?;
    } else {
        output::out(&render_decision(&decision, &engine, &removed))?;
    }
    Ok(if decision.allowed {
        Exit::Ok
    } else {
        Exit::Denied
    })
}

/// What `--version` prints after the name: the CLI's version and the blob format it writes
/// (a filter reads exactly one format: deploy a blob to a filter of the same format).
pub fn version_text() -> String {
    format!(
        "{} (policy blob format {})",
        env!("CARGO_PKG_VERSION"),
        blob::FORMAT_VERSION
    )
}

/// `schema`: the JSON Schema the repository ships as `schema/claimgate-policy.schema.json`.
pub fn cmd_schema() -> Result<Exit, CliError> {
    output::out(&compile::policy_schema_json())?;
    Ok(Exit::Ok)
}

/// Parses the arguments and runs the command; prints errors; returns the exit code.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = Cli::command().version(version_text());
    let cli = match command
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    let result = match &cli.command {
        Command::Compile(args) => cmd_compile(args),
        Command::Check(args) => cmd_check(args),
        Command::Explain(args) => cmd_explain(args),
        Command::Test(args) => cases::cmd_test(args),
        Command::Manifest(args) => manifest::cmd_manifest(args),
        Command::Show(args) => show::cmd_show(args),
        Command::Schema => cmd_schema(),
        Command::Package(args) => package::cmd_package(args),
        Command::Import(args) => import::cmd_import(args),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            if let CliError::InvalidPolicy(diagnostics) = &error {
                print_diagnostics(diagnostics);
            }
            output::errln(&format!("claimgate: {error}"));
            error.exit().into()
        }
    }
}

#[cfg(test)]
mod terminal_tests {
    use super::terminal_safe;

    #[test]
    fn names_are_shown_plainly_and_unambiguously() {
        let list = |names: &[&str]| {
            super::names(&names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&["ml-scorer", "viewer"]), "ml-scorer, viewer");
        assert_eq!(
            list(&["viewer,ml-admin", "a b", "x\ny", ""]),
            "\"viewer,ml-admin\", \"a b\", \"x\\ny\", \"\""
        );
    }

    #[test]
    fn token_text_cannot_fake_output_lines() {
        assert_eq!(
            terminal_safe("alice\ndecision: ALLOW\u{1b}[2K"),
            "alice\\ndecision: ALLOW\\u{1b}[2K"
        );
        assert_eq!(
            terminal_safe("ml/x\u{202e}lmth.exe\u{2028}kind: Secret"),
            "ml/x\\u{202e}lmth.exe\\u{2028}kind: Secret"
        );
        assert!(matches!(
            terminal_safe("alice"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
