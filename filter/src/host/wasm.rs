//! [`WasmHost`]: the proxy-wasm ABI, called directly.
//!
//! proxy-wasm 0.2.5's `hostcalls` `panic!` on any status they do not expect (`set_property`,
//! `send_http_response`, `get_current_time`, `log`, every header-map call…) and `get_map`
//! unwraps `String::from_utf8` on header values: with `panic = "abort"` each of those traps
//! the VM. Here every import returns its status as a plain `u32` (never an enum the host could
//! overflow), every status is an error value, and memory the host hands back is read as bytes.
//!
//! The SDK is not linked at all: its dispatcher exports every callback of the ABI, and Envoy
//! calls each one a module exports (see `abi`). The ABI's enumerations are the numbers below.

use super::{ForeignHost, Host, HostError, MetricKind, RawHeaders, pairs};

/// proxy-wasm `MapType` numbers.
mod map {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const REQUEST_TRAILERS: u32 = 1;
    pub const CALL_RESPONSE_HEADERS: u32 = 6;
}

/// proxy-wasm `BufferType` numbers.
mod buffer {
    pub const CALL_RESPONSE_BODY: u32 = 4;
    pub const VM_CONFIGURATION: u32 = 6;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

/// proxy-wasm `MetricType` numbers.
mod metric {
    pub const COUNTER: u32 = 0;
    pub const GAUGE: u32 = 1;
}

/// proxy-wasm `StreamType`: the request stream.
const REQUEST_STREAM: u32 = 0;

/// The real host (Envoy), reached through the ABI imports.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

#[cfg(target_arch = "wasm32")]
#[expect(
    unsafe_code,
    reason = "the proxy-wasm ABI imports; each is called with valid pointers to live slices"
)]
mod raw {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_log_level(out: *mut u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            kind: u32,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            kind: u32,
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            kind: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(kind: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        pub fn proxy_close_stream(stream: u32) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, size: usize, out: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            out_token: *mut u32,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
            out_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_call_foreign_function(
            name: *const u8,
            name_size: usize,
            arguments: *const u8,
            arguments_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
    }

    /// Takes ownership of bytes the host allocated through the SDK's
    /// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
    pub fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
        if data.is_null() {
            return None;
        }
        // SAFETY: the host wrote `data`/`size` from one `proxy_on_memory_allocate(size)` call,
        // which leaks a `Box<[u8]>` of length `size`: the layout of a Vec with capacity `size`.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    pub fn log(level: u32, message: &str) -> u32 {
        // SAFETY: pointer and length of a live `str`.
        unsafe { proxy_log(level, message.as_ptr(), message.len()) }
    }

    pub fn log_level() -> (u32, u32) {
        let mut out = 0u32;
        // SAFETY: `out` is a live u32 the host writes.
        let status = unsafe { proxy_get_log_level(&mut out) };
        (status, out)
    }

    pub fn now_ns() -> (u32, u64) {
        let mut out = 0u64;
        // SAFETY: `out` is a live u64 the host writes.
        let status = unsafe { proxy_get_current_time_nanoseconds(&mut out) };
        (status, out)
    }

    pub fn set_tick(period: u32) -> u32 {
        // SAFETY: no pointers.
        unsafe { proxy_set_tick_period_milliseconds(period) }
    }

    pub fn buffer(kind: u32, max: usize) -> (u32, Option<Vec<u8>>) {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: out-pointers to live locals.
        let status = unsafe { proxy_get_buffer_bytes(kind, 0, max, &mut data, &mut size) };
        (status, owned(data, size))
    }

    pub fn map_pairs(kind: u32) -> (u32, Option<Vec<u8>>) {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: out-pointers to live locals.
        let status = unsafe { proxy_get_header_map_pairs(kind, &mut data, &mut size) };
        (status, owned(data, size))
    }

    pub fn map_value(kind: u32, key: &str) -> (u32, Option<Vec<u8>>) {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: a live `str` and out-pointers to live locals.
        let status = unsafe {
            proxy_get_header_map_value(kind, key.as_ptr(), key.len(), &mut data, &mut size)
        };
        (status, owned(data, size))
    }

    pub fn replace_map_value(kind: u32, key: &str, value: &str) -> u32 {
        // SAFETY: live `str`s.
        unsafe {
            proxy_replace_header_map_value(
                kind,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        }
    }

    pub fn remove_map_value(kind: u32, key: &[u8]) -> u32 {
        // SAFETY: a live slice.
        unsafe { proxy_remove_header_map_value(kind, key.as_ptr(), key.len()) }
    }

    pub fn set_property(path: &[u8], value: &[u8]) -> u32 {
        // SAFETY: live slices.
        unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) }
    }

    pub fn send_local_response(status: u32, body: &[u8], headers: &[u8]) -> u32 {
        // SAFETY: live slices; an empty details string.
        unsafe {
            proxy_send_local_response(
                status,
                "".as_ptr(),
                0,
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        }
    }

    pub fn continue_stream(stream: u32) -> u32 {
        // SAFETY: no pointers.
        unsafe { proxy_continue_stream(stream) }
    }

    pub fn close_stream(stream: u32) -> u32 {
        // SAFETY: no pointers.
        unsafe { proxy_close_stream(stream) }
    }

    pub fn set_effective_context(context_id: u32) -> u32 {
        // SAFETY: no pointers.
        unsafe { proxy_set_effective_context(context_id) }
    }

    pub fn define_metric(kind: u32, name: &str) -> (u32, u32) {
        let mut id = 0u32;
        // SAFETY: a live `str` and an out-pointer to a live local.
        let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
        (status, id)
    }

    pub fn increment_metric(id: u32, delta: i64) -> u32 {
        // SAFETY: no pointers.
        unsafe { proxy_increment_metric(id, delta) }
    }

    pub fn record_metric(id: u32, value: u64) -> u32 {
        // SAFETY: no pointers.
        unsafe { proxy_record_metric(id, value) }
    }

    pub fn http_call(
        cluster: &str,
        headers: &[u8],
        trailers: &[u8],
        timeout_ms: u32,
    ) -> (u32, u32) {
        let mut token = 0u32;
        // SAFETY: live slices (no body: a null pointer with size 0) and an out-pointer to a
        // live local.
        let status = unsafe {
            proxy_http_call(
                cluster.as_ptr(),
                cluster.len(),
                headers.as_ptr(),
                headers.len(),
                std::ptr::null(),
                0,
                trailers.as_ptr(),
                trailers.len(),
                timeout_ms,
                &mut token,
            )
        };
        (status, token)
    }

    pub fn get_shared(key: &str) -> (u32, Option<Vec<u8>>, u32) {
        let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
        // SAFETY: a live `str` and out-pointers to live locals.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        (status, owned(data, size), cas)
    }

    pub fn set_shared(key: &str, value: &[u8], cas: u32) -> u32 {
        // SAFETY: live slices; cas 0 = unconditional.
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
    }

    pub fn call_foreign(name: &str, arguments: &[u8]) -> (u32, Option<Vec<u8>>) {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: live slices and out-pointers to live locals; the answer, if any, was
        // allocated through `proxy_on_memory_allocate` (see `owned`).
        let status = unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut data,
                &mut size,
            )
        };
        (status, owned(data, size))
    }
}

/// Native builds have no proxy-wasm host: every call reports [`NO_HOST`] (tests use the mock).
#[cfg(not(target_arch = "wasm32"))]
mod raw {
    pub const NO_HOST: u32 = u32::MAX;
    pub fn log(_: u32, _: &str) -> u32 {
        NO_HOST
    }
    pub fn log_level() -> (u32, u32) {
        (NO_HOST, 0)
    }
    pub fn now_ns() -> (u32, u64) {
        (NO_HOST, 0)
    }
    pub fn set_tick(_: u32) -> u32 {
        NO_HOST
    }
    pub fn buffer(_: u32, _: usize) -> (u32, Option<Vec<u8>>) {
        (NO_HOST, None)
    }
    pub fn map_pairs(_: u32) -> (u32, Option<Vec<u8>>) {
        (NO_HOST, None)
    }
    pub fn map_value(_: u32, _: &str) -> (u32, Option<Vec<u8>>) {
        (NO_HOST, None)
    }
    pub fn replace_map_value(_: u32, _: &str, _: &str) -> u32 {
        NO_HOST
    }
    pub fn remove_map_value(_: u32, _: &[u8]) -> u32 {
        NO_HOST
    }
    pub fn set_property(_: &[u8], _: &[u8]) -> u32 {
        NO_HOST
    }
    pub fn send_local_response(_: u32, _: &[u8], _: &[u8]) -> u32 {
        NO_HOST
    }
    pub fn continue_stream(_: u32) -> u32 {
        NO_HOST
    }
    pub fn close_stream(_: u32) -> u32 {
        NO_HOST
    }
    pub fn set_effective_context(_: u32) -> u32 {
        NO_HOST
    }
    pub fn define_metric(_: u32, _: &str) -> (u32, u32) {
        (NO_HOST, 0)
    }
    pub fn increment_metric(_: u32, _: i64) -> u32 {
        NO_HOST
    }
    pub fn record_metric(_: u32, _: u64) -> u32 {
        NO_HOST
    }
    pub fn http_call(_: &str, _: &[u8], _: &[u8], _: u32) -> (u32, u32) {
        (NO_HOST, 0)
    }
    pub fn get_shared(_: &str) -> (u32, Option<Vec<u8>>, u32) {
        (NO_HOST, None, 0)
    }
    pub fn set_shared(_: &str, _: &[u8], _: u32) -> u32 {
        NO_HOST
    }
    pub fn call_foreign(_: &str, _: &[u8]) -> (u32, Option<Vec<u8>>) {
        (NO_HOST, None)
    }
}

fn status(code: u32) -> Result<(), HostError> {
    match code {
        OK => Ok(()),
        #[cfg(not(target_arch = "wasm32"))]
        raw::NO_HOST => Err(HostError::NoHost),
        other => Err(HostError::Status(other)),
    }
}

/// A read that may find nothing: NotFound and an absent buffer are `None`.
fn optional(code: u32, data: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, HostError> {
    match code {
        NOT_FOUND => Ok(None),
        other => status(other).map(|()| data),
    }
}

impl Host for WasmHost {
    fn now_ms(&self) -> Result<u64, HostError> {
        let (code, nanos) = raw::now_ns();
        status(code).map(|()| nanos / 1_000_000)
    }

    fn plugin_config(&self) -> Result<Option<Vec<u8>>, HostError> {
        let (code, data) = raw::buffer(buffer::PLUGIN_CONFIGURATION, usize::MAX);
        optional(code, data)
    }

    fn vm_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
        let (code, data) = raw::buffer(buffer::VM_CONFIGURATION, usize::MAX);
        optional(code, data)
    }

    fn request_headers(&self) -> Result<RawHeaders, HostError> {
        let (code, data) = raw::map_pairs(map::REQUEST_HEADERS);
        status(code)?;
        pairs::parse(&data.unwrap_or_default()).ok_or(HostError::Garbled)
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        status(raw::replace_map_value(map::REQUEST_HEADERS, name, value))
    }

    fn remove_request_header(&self, name: &[u8]) -> Result<(), HostError> {
        status(raw::remove_map_value(map::REQUEST_HEADERS, name))
    }

    fn shared_data(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        let (code, data, _) = raw::get_shared(key);
        optional(code, data)
    }

    fn set_shared_data(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        status(raw::set_shared(key, value, 0))
    }

    fn shared_data_cas(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        let (code, data, cas) = raw::get_shared(key);
        Ok((optional(code, data)?, cas))
    }

    fn set_shared_data_cas(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        status(raw::set_shared(key, value, cas))
    }

    fn request_trailers(&self) -> Result<RawHeaders, HostError> {
        let (code, data) = raw::map_pairs(map::REQUEST_TRAILERS);
        status(code)?;
        pairs::parse(&data.unwrap_or_default()).ok_or(HostError::Garbled)
    }

    fn remove_request_trailer(&self, name: &[u8]) -> Result<(), HostError> {
        status(raw::remove_map_value(map::REQUEST_TRAILERS, name))
    }

    fn send_reply(
        &self,
        code: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        status(raw::send_local_response(
            code,
            body,
            &pairs::serialize(headers),
        ))
    }

    fn reset_request(&self) -> Result<(), HostError> {
        status(raw::close_stream(REQUEST_STREAM))
    }

    fn resume_request(&self) -> Result<(), HostError> {
        status(raw::continue_stream(REQUEST_STREAM))
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        status(raw::set_effective_context(context_id))
    }

    fn set_property(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        // A property path of one element (elements are NUL-separated): the key itself.
        status(raw::set_property(key.as_bytes(), value))
    }

    fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError> {
        status(raw::set_tick(period_ms))
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        // The answer comes to the root's `proxy_on_http_call_response` with this token (see
        // `abi`): nothing to register.
        let timeout_ms = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
        let (code, token) = raw::http_call(
            cluster,
            &pairs::serialize(headers),
            &pairs::serialize(&[]),
            timeout_ms,
        );
        status(code).map(|()| token)
    }

    fn call_response_status(&self) -> Result<Option<Vec<u8>>, HostError> {
        let (code, data) = raw::map_value(map::CALL_RESPONSE_HEADERS, ":status");
        optional(code, data)
    }

    fn call_response_body(&self, max: usize) -> Result<Option<Vec<u8>>, HostError> {
        let (code, data) = raw::buffer(buffer::CALL_RESPONSE_BODY, max);
        optional(code, data)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => metric::COUNTER,
            MetricKind::Gauge => metric::GAUGE,
        };
        let (code, id) = raw::define_metric(kind, name);
        status(code).map(|()| id)
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        status(raw::increment_metric(id, delta))
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        status(raw::record_metric(id, value))
    }

    fn log_level(&self) -> Result<log::LevelFilter, HostError> {
        let (code, level) = raw::log_level();
        status(code)?;
        let filter = super::level_filter(level);
        // The `log` macros follow the host too: a line Envoy would drop is not even formatted.
        log::set_max_level(filter);
        Ok(filter)
    }
}

impl ForeignHost for WasmHost {
    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, HostError> {
        let (code, data) = raw::call_foreign(name, arguments);
        status(code).map(|()| data)
    }

    fn bump_counter(&self, id: u32) {
        let _ = raw::increment_metric(id, 1);
    }
}

// === Logging ===

/// Sends `log` records to the host; a failing log call is dropped, never a trap.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // proxy-wasm levels: trace 0, debug 1, info 2, warn 3, error 4.
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        let _ = raw::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Routes the `log` macros to the host and reports a panic (should one ever happen) before
/// the VM aborts. Replaces the SDK's logger, which unwraps the host's status.
pub fn install_logger(level: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        std::panic::set_hook(Box::new(|info| {
            // Critical (5): the message says where, never what data.
            let _ = raw::log(5, &format!("claimgate: panic: {info}"));
        }));
    }
    log::set_max_level(level);
}
