//! `claimgate package`: the filter as a Wasm OCI image Istio can pull from `oci://` URLs.
//!
//! The image follows the *compat* variant of the Wasm image specification (solo-io/wasm
//! `spec-compat.md`), the one istio-agent reads with standard media types: an OCI image
//! manifest (annotated `module.wasm.image/variant: compat`) with one
//! `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`.
//!
//! istio-agent checks a WasmPlugin's `sha256` against the digest of this **image manifest**
//! (not the `.wasm` file's hash), so the build is deterministic — fixed tar owners, modes
//! and times, a fixed gzip header and level — and the same module always gives the same
//! digest, which `package` prints and `manifest --oci-layout` reads back.
//!
//! The image is written as an OCI image layout on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/…`, readable by skopeo, umoci, crane, oras) and, given `--push`, pushed to
//! a registry with `oci-client`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use claimgate_core::blob::sha256_hex;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{CliError, Exit, output};

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index (the layout's `index.json`).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of the image configuration.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the one layer (compat variant).
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation the compat variant requires with an OCI layer media type.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// The file istio-agent looks for in the layer.
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// The OCI annotation naming a manifest of a layout's index (its tag).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Environment variable with the registry user name (or `--username`).
pub const USERNAME_ENV: &str = "CLAIMGATE_REGISTRY_USERNAME";
/// Environment variable with the registry password or token (or `--password-stdin`).
pub const PASSWORD_ENV: &str = "CLAIMGATE_REGISTRY_PASSWORD";

/// The longest a push may take before it is given up.
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// `package` arguments.
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The built module (`target/wasm32-wasip1/release/claimgate_filter.wasm`).
    pub wasm: PathBuf,
    /// Write the image as an OCI image layout in this directory (created if missing; an
    /// existing layout's index is replaced by this image).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Tag of the image in the layout (`org.opencontainers.image.ref.name`; default: the
    /// `--push` reference's tag, else `latest`).
    #[arg(long)]
    pub tag: Option<String>,
    /// Also push the image to this registry reference, `REGISTRY/REPOSITORY:TAG`.
    #[arg(long, value_name = "REGISTRY/REPO:TAG")]
    pub push: Option<String>,
    /// Talk plain HTTP to the registry (a local test registry; never for real credentials).
    #[arg(long, requires = "push")]
    pub plain_http: bool,
    /// Registry user name (default: $CLAIMGATE_REGISTRY_USERNAME; none: anonymous push).
    #[arg(long, requires = "push")]
    pub username: Option<String>,
    /// Read the registry password or token from standard input (default:
    /// $CLAIMGATE_REGISTRY_PASSWORD). There is deliberately no flag with the secret itself.
    #[arg(long, requires = "push")]
    pub password_stdin: bool,
}

/// A content descriptor (OCI image spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:` + hex digest of the content.
    pub digest: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// Annotations (a tag in a layout's index).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{}", sha256_hex(bytes)),
            size: bytes.len() as u64,
            annotations: Default::default(),
        }
    }

    /// The hex part of the digest, if it is a SHA-256 digest.
    pub fn sha256_hex(&self) -> Option<&str> {
        self.digest
            .strip_prefix("sha256:")
            .filter(|hex| is_sha256_hex(hex))
    }
}

/// An image manifest or an image index: the fields this module writes and reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The image, every blob in memory (a module is a few MiB at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmImage {
    /// The image configuration JSON.
    pub config: Vec<u8>,
    /// The layer: `plugin.wasm` in a tar, gzip-compressed.
    pub layer: Vec<u8>,
    /// The image manifest JSON; its SHA-256 is what a WasmPlugin's `sha256` must be.
    pub manifest: Vec<u8>,
}

impl WasmImage {
    /// Builds the compat-variant image of a module. Deterministic: the same module gives
    /// the same bytes (and so the same digest) every time.
    pub fn build(module: &[u8]) -> Result<WasmImage, String> {
        if !module.starts_with(b"\0asm") {
            return Err("not a WebAssembly module".to_owned());
        }
        let tar = plugin_tar(module).map_err(|e| format!("cannot build the layer: {e}"))?;
        let layer = gzip(&tar).map_err(|e| format!("cannot compress the layer: {e}"))?;
        let config = image_config(&tar)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            config: Some(Descriptor::of(CONFIG_MEDIA_TYPE, &config)),
            layers: vec![Descriptor::of(LAYER_MEDIA_TYPE, &layer)],
            manifests: Vec::new(),
            annotations: [(VARIANT_ANNOTATION.to_owned(), "compat".to_owned())].into(),
        };
        let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        Ok(WasmImage {
            config,
            layer,
            manifest,
        })
    }

    /// The image manifest digest as hex (what goes into a WasmPlugin's `sha256`).
    pub fn manifest_hex(&self) -> String {
        sha256_hex(&self.manifest)
    }

    /// The image manifest digest, `sha256:HEX`.
    pub fn manifest_digest(&self) -> String {
        format!("sha256:{}", self.manifest_hex())
    }

    /// Writes the image as an OCI image layout whose index names it `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<(), CliError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CliError::Io { path, source }
        };
        let marker = dir.join("oci-layout");
        if dir.exists() && !marker.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
            if entries.next().is_some() {
                return Err(CliError::Usage(format!(
                    "{}: not empty and not an OCI image layout; give a new directory",
                    dir.display()
                )));
            }
        }
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        for blob in [&self.config, &self.layer, &self.manifest] {
            let path = blobs.join(sha256_hex(blob));
            std::fs::write(&path, blob).map_err(io(&path))?;
        }
        let mut entry = Descriptor::of(MANIFEST_MEDIA_TYPE, &self.manifest);
        entry
            .annotations
            .insert(REF_NAME_ANNOTATION.to_owned(), tag.to_owned());
        let index = Manifest {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE.to_owned(),
            config: None,
            layers: Vec::new(),
            manifests: vec![entry],
            annotations: Default::default(),
        };
        let index = serde_json::to_vec(&index).map_err(|e| CliError::Usage(e.to_string()))?;
        let index_path = dir.join("index.json");
        std::fs::write(&index_path, index).map_err(io(&index_path))?;
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&marker))?;
        Ok(())
    }
}

/// `plugin.wasm` alone in a tar, with fixed metadata: owner root (0/0, no names), mode
/// 0444, time 0 (the Unix epoch).
fn plugin_tar(module: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE)?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(module.len() as u64);
    header.set_mode(0o444);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, module)?;
    builder.into_inner()
}

/// gzip with a fixed header (no name, time 0, OS "unknown") and a fixed level.
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The OCI image configuration: platform `wasip1/wasm` (Go's names for the target), the
/// layer's uncompressed digest, no creation time (it would change the digest).
fn image_config(tar: &[u8]) -> Result<Vec<u8>, String> {
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(tar))] },
    });
    serde_json::to_vec(&config).map_err(|e| e.to_string())
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads the image manifest digest (hex) from an OCI image layout: the index's one manifest,
/// or the one tagged `tag` when there are several. The manifest blob must be present and
/// hash to its digest.
pub fn layout_manifest_hex(dir: &Path, tag: Option<&str>) -> Result<String, CliError> {
    let index_path = dir.join("index.json");
    let text = crate::read_file(&index_path)?;
    let index: Manifest = serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{}: not an OCI image index: {e}",
            index_path.display()
        ))
    })?;
    let tagged = |d: &&Descriptor| {
        tag.is_some_and(|tag| {
            d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) == Some(tag)
        })
    };
    let entry = match index.manifests.as_slice() {
        [only] => only,
        many => many.iter().find(tagged).ok_or_else(|| {
            CliError::Usage(format!(
                "{}: {} images and none tagged `{}`; give --sha256",
                index_path.display(),
                many.len(),
                tag.unwrap_or("")
            ))
        })?,
    };
    let hex = entry
        .sha256_hex()
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{}: `{}` is not a sha256 digest",
                index_path.display(),
                entry.digest
            ))
        })?
        .to_owned();
    let blob_path = dir.join("blobs").join("sha256").join(&hex);
    let blob = std::fs::read(&blob_path).map_err(|source| CliError::Io {
        path: blob_path.display().to_string(),
        source,
    })?;
    if sha256_hex(&blob) != hex {
        return Err(CliError::Usage(format!(
            "{}: the blob does not hash to its name (a damaged layout)",
            blob_path.display()
        )));
    }
    Ok(hex)
}

/// `package`.
pub fn cmd_package(args: &PackageArgs) -> Result<Exit, CliError> {
    let module = std::fs::read(&args.wasm).map_err(|source| CliError::Io {
        path: args.wasm.display().to_string(),
        source,
    })?;
    let image = WasmImage::build(&module)
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.wasm.display())))?;
    let reference = args.push.as_deref().map(push_reference).transpose()?;
    let tag = match (&args.tag, &reference) {
        (Some(tag), _) => tag.clone(),
        (None, Some(reference)) => reference.tag().unwrap_or("latest").to_owned(),
        (None, None) => "latest".to_owned(),
    };
    image.write_layout(&args.output, &tag)?;
    output::errln(&format!(
        "wrote {} (tag {tag}): image {} ({PLUGIN_FILE} {} bytes, sha256 {})",
        args.output.display(),
        image.manifest_digest(),
        module.len(),
        sha256_hex(&module)
    ));
    if let Some(reference) = reference {
        let auth = registry_auth(args)?;
        push(&image, &reference, &auth, args.plain_http)?;
        output::errln(&format!("pushed {reference}@{}", image.manifest_digest()));
    }
    // The one line on standard output: what a WasmPlugin's `sha256` must be.
    output::outln(&image.manifest_digest())?;
    Ok(Exit::Ok)
}

fn push_reference(text: &str) -> Result<oci_client::Reference, CliError> {
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    let reference: oci_client::Reference = bare
        .parse()
        .map_err(|e| CliError::Usage(format!("--push: `{text}`: {e}")))?;
    if reference.digest().is_some() {
        return Err(CliError::Usage(format!(
            "--push: `{text}` names a digest; push to a tag (the digest is the image's own)"
        )));
    }
    Ok(reference)
}

fn registry_auth(args: &PackageArgs) -> Result<oci_client::secrets::RegistryAuth, CliError> {
    use oci_client::secrets::RegistryAuth;
    let username = args
        .username
        .clone()
        .or_else(|| std::env::var(USERNAME_ENV).ok())
        .filter(|name| !name.is_empty());
    let password = if args.password_stdin {
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .map_err(|source| CliError::Io {
                path: "standard input".to_owned(),
                source,
            })?;
        Some(password.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        std::env::var(PASSWORD_ENV).ok()
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(RegistryAuth::Basic(username, password)),
        (None, None) => Ok(RegistryAuth::Anonymous),
        (None, Some(_)) => Err(CliError::Usage(format!(
            "a registry password without a user name: give --username or ${USERNAME_ENV}"
        ))),
        (Some(_), None) => Err(CliError::Usage(format!(
            "a registry user name without a password: give --password-stdin or ${PASSWORD_ENV}"
        ))),
    }
}

/// Pushes the blobs and the manifest (its exact bytes, so the registry's digest is the
/// layout's), then asks the registry for the digest it serves under the tag.
fn push(
    image: &WasmImage,
    reference: &oci_client::Reference,
    auth: &oci_client::secrets::RegistryAuth,
    plain_http: bool,
) -> Result<(), CliError> {
    use oci_client::client::{ClientConfig, ClientProtocol};
    // reqwest is built without a default TLS provider; ring is the one linked in. A
    // provider installed before (never, in this process) would be as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    });
    let failed = |what: &str, e: &dyn std::error::Error| {
        CliError::Usage(format!("push to {reference}: {what}: {}", with_causes(e)))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    let expected = image.manifest_digest();
    let served = runtime.block_on(async {
        let work = async {
            client
                .auth(reference, auth, oci_client::RegistryOperation::Push)
                .await
                .map_err(|e| failed("authentication", &e))?;
            for blob in [&image.config, &image.layer] {
                let digest = format!("sha256:{}", sha256_hex(blob));
                client
                    .push_blob(reference, blob.clone(), &digest)
                    .await
                    .map_err(|e| failed("blob upload", &e))?;
            }
            client
                .push_manifest_raw(
                    reference,
                    image.manifest.clone(),
                    http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
                )
                .await
                .map_err(|e| failed("manifest upload", &e))?;
            client
                .fetch_manifest_digest(reference, auth)
                .await
                .map_err(|e| failed("digest check", &e))
        };
        tokio::time::timeout(PUSH_TIMEOUT, work)
            .await
            .map_err(|elapsed| failed("no answer in time", &elapsed))?
    })?;
    if served != expected {
        return Err(CliError::Usage(format!(
            "push to {reference}: the registry serves {served}, not the pushed {expected}"
        )));
    }
    Ok(())
}

/// An error with its causes (`error sending request: … : connection refused`), which say
/// what went wrong where the top error does not. Registry errors carry URLs and registry
/// messages, never the credentials sent.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(body: &[u8]) -> Vec<u8> {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.extend_from_slice(body);
        module
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_same_module_gives_the_same_digest_and_another_module_another() {
        let a = WasmImage::build(&module(b"one")).unwrap();
        let again = WasmImage::build(&module(b"one")).unwrap();
        let b = WasmImage::build(&module(b"two")).unwrap();
        assert_eq!(a, again);
        assert_eq!(a.manifest_digest(), again.manifest_digest());
        assert_ne!(a.manifest_digest(), b.manifest_digest());
        assert_eq!(a.manifest_digest(), format!("sha256:{}", a.manifest_hex()));
    }

    #[test]
    fn the_manifest_is_the_compat_variant() {
        let image = WasmImage::build(&module(b"x")).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(manifest["annotations"][VARIANT_ANNOTATION], "compat");
        assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(
            manifest["config"]["digest"],
            format!("sha256:{}", sha256_hex(&image.config))
        );
        assert_eq!(manifest["config"]["size"], image.config.len());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
        assert_eq!(
            layers[0]["digest"],
            format!("sha256:{}", sha256_hex(&image.layer))
        );
        assert_eq!(layers[0]["size"], image.layer.len());
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&gunzip(&image.layer)))
        );
    }

    #[test]
    fn the_layer_holds_plugin_wasm_alone_with_fixed_metadata() {
        let input = module(b"payload");
        let image = WasmImage::build(&input).unwrap();
        let tar = gunzip(&image.layer);
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(PLUGIN_FILE));
        assert_eq!(entry.header().mtime().unwrap(), 0);
        assert_eq!(entry.header().uid().unwrap(), 0);
        assert_eq!(entry.header().mode().unwrap(), 0o444);
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, input);
        drop(entry);
        assert!(entries.next().is_none());
        // gzip header: no file name flag, time 0, OS 255.
        assert_eq!(&image.layer[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&image.layer[4..8], &[0, 0, 0, 0]);
        assert_eq!(image.layer[9], 255);
    }

    #[test]
    fn a_non_module_is_refused() {
        assert!(WasmImage::build(b"PK\x03\x04").is_err());
    }

    #[test]
    fn the_layout_gives_back_the_manifest_digest() {
        let dir = std::env::temp_dir().join(format!("claimgate-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = WasmImage::build(&module(b"layout")).unwrap();
        image.write_layout(&dir, "0.1.0").unwrap();
        assert_eq!(
            layout_manifest_hex(&dir, None).unwrap(),
            image.manifest_hex()
        );
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap())
                .unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
            "0.1.0"
        );
        // A damaged manifest blob is noticed.
        let blob = dir.join("blobs/sha256").join(image.manifest_hex());
        std::fs::write(&blob, b"{}").unwrap();
        assert!(layout_manifest_hex(&dir, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_with_other_files_is_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("claimgate-notlayout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("README"), "mine").unwrap();
        let image = WasmImage::build(&module(b"x")).unwrap();
        assert!(image.write_layout(&dir, "latest").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn push_references_name_a_tag() {
        assert!(push_reference("localhost:5000/claimgate:0.1.0").is_ok());
        assert!(push_reference("oci://localhost:5000/claimgate:0.1.0").is_ok());
        let digest = format!("localhost:5000/claimgate@sha256:{}", "a".repeat(64));
        assert!(push_reference(&digest).is_err());
    }
}
