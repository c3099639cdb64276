//! The only door to the host. Every call the filter makes to Envoy goes through [`Host`];
//! nothing here can panic, whatever the host answers: statuses come back as [`HostError`],
//! header maps as bytes (names and values may be any bytes), memory the host hands over is
//! parsed with checked bounds.
//!
//! [`WasmHost`] talks to the proxy-wasm ABI directly (see `wasm.rs` for why the SDK's
//! `hostcalls` are not used); `mock::MockHost` scripts a host for native tests.

#[cfg(test)]
pub mod mock;
pub mod pairs;
pub mod verify_signature;
mod wasm;

use std::fmt;

pub use wasm::{WasmHost, install_logger};

/// A host call that did not succeed: the raw status the host returned (proxy-wasm `Status`
/// codes, or any other number a host may invent), or an answer the filter could not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The host returned this status instead of `Ok`.
    Status(u32),
    /// The host answered `Ok` with data that does not parse (e.g. a broken header map).
    Garbled,
    /// This build has no host (native builds outside tests).
    NoHost,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Status(1) => f.write_str("not found"),
            HostError::Status(2) => f.write_str("bad argument"),
            HostError::Status(code) => write!(f, "host status {code}"),
            HostError::Garbled => f.write_str("unreadable host answer"),
            HostError::NoHost => f.write_str("no host"),
        }
    }
}

/// The proxy-wasm status of a shared-data write whose compare-and-swap version is stale.
pub const CAS_MISMATCH: HostError = HostError::Status(8);

/// Metric kinds the filter defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
}

/// Request header pairs as the host gives them: any bytes.
pub type RawHeaders = Vec<(Vec<u8>, Vec<u8>)>;

/// Everything the filter asks of Envoy. Calls act on the host's current (effective) context.
pub trait Host {
    /// The host clock in milliseconds since the Unix epoch.
    fn now_ms(&self) -> Result<u64, HostError>;
    /// The plugin configuration bytes (`None` when there is none).
    fn plugin_config(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// The VM configuration bytes (Envoy's `vm_config.configuration`; `None` when there is
    /// none). Read at VM start.
    fn vm_configuration(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// The request headers of the current context.
    fn request_headers(&self) -> Result<RawHeaders, HostError>;
    /// Sets (replaces) a request header.
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// Removes every value of a request header.
    fn remove_request_header(&self, name: &[u8]) -> Result<(), HostError>;
    /// A value of the VM's shared data (kept across root contexts and workers).
    fn shared_data(&self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Sets a value of the VM's shared data.
    fn set_shared_data(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    /// A value of the VM's shared data with its compare-and-swap version (`0` when absent).
    fn shared_data_cas(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError>;
    /// Sets a value of the VM's shared data only if its version is still `cas` (`0`: in any
    /// case); [`CAS_MISMATCH`] when another writer came first. A key that does not exist yet
    /// is always written (the host has no create-if-absent).
    fn set_shared_data_cas(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError>;
    /// The request trailers of the current context.
    fn request_trailers(&self) -> Result<RawHeaders, HostError>;
    /// Removes every value of a request trailer.
    fn remove_request_trailer(&self, name: &[u8]) -> Result<(), HostError>;
    /// Sends a local reply instead of forwarding the request.
    fn send_reply(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError>;
    /// Resets the current request's stream (used when even a local reply fails).
    fn reset_request(&self) -> Result<(), HostError>;
    /// Resumes a paused request.
    fn resume_request(&self) -> Result<(), HostError>;
    /// Makes `context_id` the context later calls act on (fails when it is gone).
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError>;
    /// Sets a filter-state property of the current request (`wasm.<key>` in Envoy).
    fn set_property(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    /// Sets the root context's tick period (whichever context calls it).
    fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError>;
    /// Starts an HTTP callout; its answer is delivered to the context the SDK sees as active
    /// (so the filter dispatches only from the root context). Returns the call's token.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, HostError>;
    /// The `:status` of the callout being answered (`None` when the call failed).
    fn call_response_status(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// At most `max` bytes of the callout's response body.
    fn call_response_body(&self, max: usize) -> Result<Option<Vec<u8>>, HostError>;
    /// Defines a metric and returns its id.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Adds to a counter.
    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError>;
    /// Sets a gauge.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    /// The level Envoy logs this plugin's lines at (its `wasm` logger): lines below it are
    /// dropped by the host, so the filter need not format them.
    fn log_level(&self) -> Result<log::LevelFilter, HostError>;
}

/// What a helper shared across the VM (`Send + Sync`, called from inside the core's signature
/// check, outside any context of its own) may ask of the host: Envoy's foreign functions and
/// its counters. Apart from [`Host`] because the mock of that one is single-threaded.
pub trait ForeignHost: Send + Sync {
    /// Calls the host's foreign function `name` (an Envoy extension of the ABI, e.g.
    /// `verify_signature`) with its serialized arguments and returns its answer bytes
    /// (`None` when the host answered nothing). A host without that function answers
    /// NotFound (`HostError::Status(1)`).
    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, HostError>;
    /// Adds one to the counter `id` (defined with [`Host::define_metric`]). Best effort: a
    /// failing stat never changes a decision.
    fn bump_counter(&self, id: u32);
}

/// A proxy-wasm log level number as a filter: trace 0 … error 4; critical (5) and Envoy's
/// `off` (6) and anything larger let no filter line through (the filter never logs critical
/// but for a panic, which bypasses this).
pub fn level_filter(level: u32) -> log::LevelFilter {
    match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}
