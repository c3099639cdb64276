//! claimgate core: the policy model, its compiler and blob codec, JWT verification and the
//! decision engine. No I/O and no proxy-wasm: the filter and the CLI both call into this
//! crate, so `claimgate explain` gives exactly the filter's answer.
//!
//! - [`compile`] (feature `compiler`): TOML policy → [`compiled::CompiledPolicy`], with
//!   diagnostics that carry file, line and column.
//! - [`blob`]: the versioned, digest-checked binary form carried in the pluginConfig.
//! - [`engine`]: request + token + clock → [`engine::Decision`].
//! - [`reason`]: deny reasons and the single table mapping them to HTTP answers.
#![forbid(unsafe_code)]

pub mod algorithm;
pub mod blob;
pub mod canonical;
pub mod claims;
#[cfg(feature = "compiler")]
pub mod compile;
pub mod compiled;
pub mod der;
pub mod engine;
pub mod keys;
pub mod locate;
pub mod matcher;
pub mod mesh;
pub mod reason;
pub mod rsa_verify;
pub mod signature;
#[cfg(feature = "compiler")]
pub mod source;
pub mod token;
pub mod upstream;

pub use engine::{Decision, Engine, Identity, RemoteKeys, Request};
pub use reason::DenyReason;
