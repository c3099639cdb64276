//! The policy blob and the pluginConfig JSON that carries it.
//!
//! Layout: `CGPB` magic, format version (u16 LE), SHA-256 of the payload as stored (32 bytes),
//! then the payload, deflated (raw DEFLATE, RFC 1951): the [`CompiledPolicy`] in postcard
//! encoding. Deflating keeps large policies well inside what istiod pushes comfortably (a
//! 10,000-rule multi-tenant policy: about 1.6 MiB of pluginConfig as postcard, a seventh of
//! that deflated). The digest covers the deflated bytes, not the inflated ones: an inflater
//! ignores the padding bits after the last block, so only a digest of the stored bytes sees
//! every altered bit. The decoder refuses a wrong magic, an unknown version, a digest
//! mismatch, a payload that does not inflate or inflates past [`MAX_PAYLOAD_BYTES`], trailing
//! bytes and broken cross references, each with its own [`DecodeError`]. The digest,
//! `sha256:<hex>`, is the policy version the filter reports.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compiled::{CompiledPolicy, StructureError};
use crate::engine::Engine;

/// Blob magic bytes.
pub const MAGIC: &[u8; 4] = b"CGPB";
/// Current blob format version.
pub const FORMAT_VERSION: u16 = 5;
const HEADER_LEN: usize = 4 + 2 + 32;
/// Largest inflated payload accepted: far above any real policy (100,000 rules are about
/// 15 MB), low enough that a crafted blob cannot make the filter allocate without bound.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;
/// miniz's level 6: on policies of 10,000 and 100,000 rules it deflates to the byte what
/// level 9 does (within 0.01%) in half the time (100,000 rules: 0.33 s instead of 0.62 s).
const DEFLATE_LEVEL: u8 = 6;

/// Why a blob or pluginConfig was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the fixed header.
    #[error("blob is {0} bytes, shorter than its {HEADER_LEN}-byte header")]
    TooShort(usize),
    /// Does not start with the magic.
    #[error("blob does not start with `CGPB`: not a claimgate policy")]
    BadMagic,
    /// A format this build does not read.
    #[error("blob format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version in the blob.
        found: u16,
    },
    /// The payload does not inflate, or inflates past [`MAX_PAYLOAD_BYTES`].
    #[error("blob payload does not inflate: {0}")]
    Inflate(String),
    /// Payload digest differs from the header.
    #[error("blob digest mismatch: the payload is corrupt or was altered")]
    DigestMismatch,
    /// The payload does not decode.
    #[error("blob payload does not decode: {0}")]
    Payload(String),
    /// Bytes after the payload.
    #[error("blob has {0} trailing bytes after the policy")]
    TrailingBytes(usize),
    /// The decoded policy's references do not hold.
    #[error("blob is inconsistent: {0}")]
    Structure(#[from] StructureError),
    /// The pluginConfig is not the expected JSON.
    #[error("pluginConfig is not valid: {0}")]
    PluginConfig(String),
    /// The pluginConfig's `digest` differs from the blob's.
    #[error("pluginConfig digest `{declared}` does not match the blob's `{actual}`")]
    ConfigDigestMismatch {
        /// Declared in the pluginConfig.
        declared: String,
        /// Computed from the blob.
        actual: String,
    },
}

/// The JSON object that goes verbatim into a WasmPlugin's `spec.pluginConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Policy name, for logs.
    pub name: String,
    /// `sha256:<hex>` of the blob payload: the policy version.
    pub digest: String,
    /// The blob, standard base64.
    pub policy: String,
}

fn digest_of(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes` as 64 lower-case hex digits (the form Istio's `sha256` fields take).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&digest_of(bytes))
}

/// Encodes a compiled policy; returns the blob and its digest string.
pub fn encode(policy: &CompiledPolicy) -> Result<(Vec<u8>, String), DecodeError> {
    let payload = postcard::to_allocvec(policy).map_err(|e| DecodeError::Payload(e.to_string()))?;
    let deflated = miniz_oxide::deflate::compress_to_vec(&payload, DEFLATE_LEVEL);
    let digest = digest_of(&deflated);
    let mut blob = Vec::with_capacity(HEADER_LEN + deflated.len());
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    blob.extend_from_slice(&digest);
    blob.extend_from_slice(&deflated);
    Ok((blob, format!("sha256:{}", hex(&digest))))
}

/// Decodes and checks a blob; returns the policy and its digest string.
pub fn decode(blob: &[u8]) -> Result<(CompiledPolicy, String), DecodeError> {
    let (header, deflated) = blob
        .split_at_checked(HEADER_LEN)
        .ok_or(DecodeError::TooShort(blob.len()))?;
    let (magic, rest) = header.split_at(4);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let (version, digest) = rest.split_at(2);
    let found = u16::from_le_bytes([
        version.first().copied().unwrap_or(0),
        version.get(1).copied().unwrap_or(0),
    ]);
    if found != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { found });
    }
    if digest != digest_of(deflated) {
        return Err(DecodeError::DigestMismatch);
    }
    let payload = inflate(deflated)?;
    let (policy, trailing) = postcard::take_from_bytes::<CompiledPolicy>(&payload)
        .map_err(|e| DecodeError::Payload(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(DecodeError::TrailingBytes(trailing.len()));
    }
    policy.validate()?;
    Ok((policy, format!("sha256:{}", hex(digest))))
}

/// Inflates a whole raw DEFLATE stream of at most [`MAX_PAYLOAD_BYTES`], refusing bytes after
/// its final block (an inflater ignores them: the same policy would pass under any number of
/// digests). miniz_oxide's one-call helpers do not say how much input they used; its core
/// decompressor does.
fn inflate(deflated: &[u8]) -> Result<Vec<u8>, DecodeError> {
    use miniz_oxide::inflate::TINFLStatus;
    use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};
    let refused = |why: String| DecodeError::Inflate(why);
    let mut state = Box::<DecompressorOxide>::default();
    let mut out = vec![
        0u8;
        deflated
            .len()
            .saturating_mul(4)
            .clamp(1024, MAX_PAYLOAD_BYTES)
    ];
    let (mut read, mut written) = (0usize, 0usize);
    loop {
        let rest = deflated.get(read..).unwrap_or_default();
        let (status, used, produced) = decompress(
            &mut state,
            rest,
            &mut out,
            written,
            inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        read = read.saturating_add(used);
        written = written.saturating_add(produced);
        match status {
            TINFLStatus::Done if read == deflated.len() => {
                out.truncate(written);
                return Ok(out);
            }
            TINFLStatus::Done => {
                return Err(refused(format!(
                    "{} bytes after the final block",
                    deflated.len() - read
                )));
            }
            TINFLStatus::HasMoreOutput if out.len() < MAX_PAYLOAD_BYTES => {
                let grown = out.len().saturating_mul(2).min(MAX_PAYLOAD_BYTES);
                out.resize(grown, 0);
            }
            TINFLStatus::HasMoreOutput => {
                return Err(refused(format!("more than {MAX_PAYLOAD_BYTES} bytes")));
            }
            TINFLStatus::FailedCannotMakeProgress | TINFLStatus::NeedsMoreInput => {
                return Err(refused("truncated".to_owned()));
            }
            _ => return Err(refused("not a DEFLATE stream".to_owned())),
        }
    }
}

/// Builds the pluginConfig JSON text for a compiled policy.
pub fn plugin_config(policy: &CompiledPolicy) -> Result<PluginConfig, DecodeError> {
    let (blob, digest) = encode(policy)?;
    Ok(PluginConfig {
        name: policy.name.clone(),
        digest,
        policy: STANDARD.encode(blob),
    })
}

/// Reads pluginConfig JSON (as Envoy hands it to the filter) into a ready engine.
pub fn engine_from_plugin_config(json: &[u8]) -> Result<Engine, DecodeError> {
    let config: PluginConfig =
        serde_json::from_slice(json).map_err(|e| DecodeError::PluginConfig(e.to_string()))?;
    let blob = STANDARD
        .decode(config.policy.as_bytes())
        .map_err(|e| DecodeError::PluginConfig(format!("`policy` is not base64: {e}")))?;
    let (policy, digest) = decode(&blob)?;
    if config.digest != digest {
        return Err(DecodeError::ConfigDigestMismatch {
            declared: config.digest,
            actual: digest,
        });
    }
    Ok(Engine::new(policy, digest)?)
}
