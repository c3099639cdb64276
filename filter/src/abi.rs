//! The proxy-wasm ABI entry points: the module's exports, and the contexts they act on.
//!
//! Written here instead of taking the SDK's dispatcher because Envoy calls into the VM only
//! for the callbacks a module exports, and each call into V8 costs a few microseconds per
//! request. The SDK exports every callback of the ABI (response headers, body and trailers,
//! access log, connection data…): for an HTTP filter that never uses them, Envoy still called
//! the response headers, response body and log callbacks of every request — ≈ 14 µs of Envoy
//! CPU per request (one worker, Envoy 1.40, the same module with those exports removed). So
//! this module exports only what the filter uses: VM start, configure, context creation,
//! request headers and trailers, tick, callout answers, done and delete, the allocator the
//! host writes answers into, and the ABI version marker.
//!
//! Contexts: roots by id (their shared state once configured) and HTTP contexts by id (their
//! root). A VM runs on one worker thread; the maps are borrowed only to look a context up,
//! never while the filter calls the host (which may call back into the VM).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::host::Host;
use crate::request::{self, Verdict};
use crate::root;
use crate::state::Shared;

/// proxy-wasm `Action`: go on with the stream.
pub const CONTINUE: u32 = 0;
/// proxy-wasm `Action`: stop the stream until the filter resumes or answers it.
pub const PAUSE: u32 = 1;

/// The live contexts of this VM.
#[derive(Default)]
pub struct Contexts {
    /// Root contexts and their state (`None` until configured, or when refused).
    roots: HashMap<u32, Option<Rc<RefCell<Shared>>>>,
    /// HTTP contexts and the root each belongs to.
    http: HashMap<u32, u32>,
}

impl Contexts {
    /// The state of a root context, if configured.
    fn root(&self, root_id: u32) -> Option<Rc<RefCell<Shared>>> {
        self.roots.get(&root_id).cloned().flatten()
    }

    /// The state of the root an HTTP context belongs to, if configured.
    fn of_request(&self, context_id: u32) -> Option<Rc<RefCell<Shared>>> {
        self.root(*self.http.get(&context_id)?)
    }
}

/// A context was created: a root (no parent) or an HTTP context of root `parent_id`.
pub fn context_create(contexts: &RefCell<Contexts>, context_id: u32, parent_id: u32) {
    let mut contexts = contexts.borrow_mut();
    if parent_id == 0 {
        contexts.roots.insert(context_id, None);
    } else {
        contexts.http.insert(context_id, parent_id);
    }
}

/// A root context is given its configuration: `false` refuses it (Envoy fails closed).
pub fn configure(host: &dyn Host, contexts: &RefCell<Contexts>, root_id: u32) -> bool {
    match root::configure(host, root_id) {
        Ok(shared) => {
            contexts.borrow_mut().roots.insert(root_id, Some(shared));
            true
        }
        Err(error) => {
            log::error!("claimgate: {error}: refusing to start (fail closed)");
            false
        }
    }
}

/// A root's tick.
pub fn tick(host: &dyn Host, contexts: &RefCell<Contexts>, root_id: u32) {
    let shared = contexts.borrow().root(root_id);
    if let Some(shared) = shared {
        root::tick(host, &shared);
    }
}

/// The answer to a root's callout.
pub fn http_call_response(
    host: &dyn Host,
    contexts: &RefCell<Contexts>,
    root_id: u32,
    token: u32,
    body_size: usize,
) {
    let shared = contexts.borrow().root(root_id);
    if let Some(shared) = shared {
        root::on_answer(host, &shared, token, body_size);
    }
}

/// A request's headers: decide. A context without a configured root fails closed (500).
pub fn request_headers(host: &dyn Host, contexts: &RefCell<Contexts>, context_id: u32) -> u32 {
    let shared = contexts.borrow().of_request(context_id);
    let Some(shared) = shared else {
        let body = br#"{"error":"policy_unavailable"}"#;
        if host
            .send_reply(500, &[("content-type", "application/json")], body)
            .is_err()
        {
            let _ = host.reset_request();
        }
        return PAUSE;
    };
    match request::on_request_headers(host, &shared, context_id) {
        Verdict::Continue => CONTINUE,
        Verdict::Replied | Verdict::Held => PAUSE,
    }
}

/// A request's trailers: identity headers sent there are removed, or the request is reset.
pub fn request_trailers(host: &dyn Host, contexts: &RefCell<Contexts>, context_id: u32) -> u32 {
    let shared = contexts.borrow().of_request(context_id);
    match shared {
        Some(shared) if request::on_request_trailers(host, &shared) => CONTINUE,
        // The spoofed trailers could not be removed: never forward them.
        _ => {
            let _ = host.reset_request();
            PAUSE
        }
    }
}

/// A context is done: a request is no longer held; a root releases what it holds.
pub fn done(host: &dyn Host, contexts: &RefCell<Contexts>, context_id: u32) -> bool {
    let (request_of, root_state) = {
        let contexts = contexts.borrow();
        match contexts.http.get(&context_id) {
            Some(_) => (contexts.of_request(context_id), None),
            None => (None, contexts.root(context_id)),
        }
    };
    if let Some(shared) = request_of {
        request::forget(&shared, context_id);
    }
    if let Some(shared) = root_state {
        root::done(host, &shared);
    }
    true
}

/// A context is deleted: forgotten.
pub fn delete(contexts: &RefCell<Contexts>, context_id: u32) {
    let mut contexts = contexts.borrow_mut();
    if contexts.http.remove(&context_id).is_none() {
        contexts.roots.remove(&context_id);
    }
}

/// The exports Envoy calls, on the VM's one thread.
#[cfg(target_arch = "wasm32")]
#[expect(
    unsafe_code,
    reason = "the proxy-wasm ABI: exported entry points (no_mangle) and the allocator the host writes into"
)]
mod exports {
    use std::cell::RefCell;

    use super::Contexts;
    use crate::host::WasmHost;

    thread_local! {
        static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
    }

    unsafe extern "C" {
        fn __wasm_call_ctors();
    }

    /// The WASI reactor's start: static constructors, then the logger.
    #[unsafe(no_mangle)]
    pub extern "C" fn _initialize() {
        // SAFETY: called once by the host before any other export, as WASI reactors require.
        unsafe { __wasm_call_ctors() };
        crate::host::install_logger(log::LevelFilter::Info);
    }

    /// The ABI version this module speaks.
    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    /// Memory for an answer the host hands over: a boxed slice of exactly `size` bytes, taken
    /// back by `host::wasm` (`Vec::from_raw_parts(data, size, size)`).
    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        Box::into_raw(vec![0u8; size].into_boxed_slice()).cast::<u8>()
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
        CONTEXTS.with(|c| super::context_create(c, context_id, parent_id));
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> bool {
        log::info!("claimgate filter {} starting", env!("CARGO_PKG_VERSION"));
        // Once per VM: may Envoy's verify_signature check signatures (knob, self-test)?
        crate::crypto::start_vm(&WasmHost, WasmHost);
        true
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_configure(root_id: u32, _plugin_configuration_size: usize) -> bool {
        CONTEXTS.with(|c| super::configure(&WasmHost, c, root_id))
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_tick(root_id: u32) {
        CONTEXTS.with(|c| super::tick(&WasmHost, c, root_id));
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_http_call_response(
        root_id: u32,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        CONTEXTS.with(|c| super::http_call_response(&WasmHost, c, root_id, token, body_size));
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_request_headers(
        context_id: u32,
        _headers: usize,
        _end_of_stream: bool,
    ) -> u32 {
        #[cfg(feature = "test-trap")]
        crate::test_trap::maybe_trap(&WasmHost);
        CONTEXTS.with(|c| super::request_headers(&WasmHost, c, context_id))
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_request_trailers(context_id: u32, _trailers: usize) -> u32 {
        CONTEXTS.with(|c| super::request_trailers(&WasmHost, c, context_id))
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_done(context_id: u32) -> bool {
        CONTEXTS.with(|c| super::done(&WasmHost, c, context_id))
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_delete(context_id: u32) {
        CONTEXTS.with(|c| super::delete(c, context_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;
    use crate::testing::{self, NOW_MS, POLICY, ROOT};

    fn add_request(host: &MockHost, context: u32, path: &str) {
        let headers = testing::request(path, None);
        let pairs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        host.add_request(context, &pairs);
    }

    fn configured(host: &MockHost) -> RefCell<Contexts> {
        let contexts = RefCell::new(Contexts::default());
        host.state.borrow_mut().config = Some(testing::plugin_config(POLICY));
        host.enter(ROOT);
        context_create(&contexts, ROOT, 0);
        assert!(configure(host, &contexts, ROOT));
        contexts
    }

    #[test]
    fn a_request_is_decided_by_its_root_and_forgotten_when_deleted() {
        let host = MockHost::new(NOW_MS);
        let contexts = configured(&host);
        context_create(&contexts, 2, ROOT);
        add_request(&host, 2, "/health");
        assert_eq!(request_headers(&host, &contexts, 2), CONTINUE);
        context_create(&contexts, 3, ROOT);
        add_request(&host, 3, "/score");
        assert_eq!(request_headers(&host, &contexts, 3), PAUSE);
        assert_eq!(host.replies().len(), 1);
        for id in [2, 3] {
            assert!(done(&host, &contexts, id));
            delete(&contexts, id);
        }
        let contexts = contexts.borrow();
        assert!(contexts.http.is_empty());
        assert!(contexts.root(ROOT).is_some());
    }

    #[test]
    fn a_request_without_a_configured_root_fails_closed() {
        let host = MockHost::new(NOW_MS);
        let contexts = RefCell::new(Contexts::default());
        context_create(&contexts, ROOT, 0);
        host.state.borrow_mut().config = Some(b"not json".to_vec());
        host.enter(ROOT);
        assert!(!configure(&host, &contexts, ROOT));
        context_create(&contexts, 2, ROOT);
        add_request(&host, 2, "/health");
        assert_eq!(request_headers(&host, &contexts, 2), PAUSE);
        assert_eq!(host.replies()[0].status, 500);
        // A context the host never announced is refused too.
        add_request(&host, 9, "/health");
        assert_eq!(request_headers(&host, &contexts, 9), PAUSE);
        assert_eq!(host.replies()[1].status, 500);
    }

    #[test]
    fn a_deleted_root_is_forgotten() {
        let host = MockHost::new(NOW_MS);
        let contexts = configured(&host);
        assert!(done(&host, &contexts, ROOT));
        delete(&contexts, ROOT);
        assert!(contexts.borrow().roots.is_empty());
    }
}
