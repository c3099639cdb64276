//! claimgate proxy-wasm filter: reads the pluginConfig, asks `claimgate-core` for a
//! decision on every request, and turns it into Envoy actions. Everything that decides lives
//! in the core; this crate only talks to the host, through one door that cannot trap
//! ([`host`]).
//!
//! - `root`: configuration, the tick, callout answers (the root owns every JWKS fetch)
//! - `request`: the request path (decide, hold, reply, continue)
//! - `jwks`: fetch schedule (deadlines, backoff, refetch requests) and key set answers
//! - `cache`: verified and failed tokens; `hold`: requests waiting for keys
//! - `audit`: the audit line; `metrics`: stats
//!
//! The contexts below are glue: each callback is a line or two.

mod audit;
mod cache;
mod crypto;
mod hold;
pub mod host;
mod jwks;
mod metrics;
mod request;
mod root;
mod state;
#[cfg(test)]
mod testing;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use host::{Host, WasmHost};
use request::Verdict;
use state::Shared;

/// The exported entry points the host calls (`proxy_wasm::main!` generates them).
mod entry {
    #![allow(missing_docs)]
    use super::{Root, RootContext};

    proxy_wasm::main! {{
        crate::host::install_logger(log::LevelFilter::Info);
        proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
            Box::new(Root { context_id, shared: None })
        });
    }}
}

/// The root context: configuration, JWKS refresh, held requests.
struct Root {
    context_id: u32,
    shared: Option<Rc<RefCell<Shared>>>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            root::done(&WasmHost, shared);
        }
        true
    }

    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            root::on_answer(&WasmHost, shared, token, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("claimgate filter {} starting", env!("CARGO_PKG_VERSION"));
        // Once per VM: may Envoy's verify_signature check signatures (knob, self-test)?
        crypto::start_vm(&WasmHost, WasmHost);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match root::configure(&WasmHost, self.context_id) {
            Ok(shared) => {
                self.shared = Some(shared);
                true
            }
            Err(error) => {
                log::error!("claimgate: {error}: refusing to start (fail closed)");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            root::tick(&WasmHost, shared);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            context_id,
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request.
struct Http {
    context_id: u32,
    shared: Option<Rc<RefCell<Shared>>>,
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            request::forget(shared, self.context_id);
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        test_trap::maybe_trap(&WasmHost);
        let Some(shared) = &self.shared else {
            // No usable configuration: fail closed.
            let body = br#"{"error":"policy_unavailable"}"#;
            if WasmHost
                .send_reply(500, &[("content-type", "application/json")], body)
                .is_err()
            {
                let _ = WasmHost.reset_request();
            }
            return Action::Pause;
        };
        match request::on_request_headers(&WasmHost, shared, self.context_id) {
            Verdict::Continue => Action::Continue,
            Verdict::Replied | Verdict::Held => Action::Pause,
        }
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        match &self.shared {
            Some(shared) if request::on_request_trailers(&WasmHost, shared) => Action::Continue,
            // The spoofed trailers could not be removed: never forward them.
            _ => {
                let _ = WasmHost.reset_request();
                Action::Pause
            }
        }
    }
}

/// TEST ONLY (cargo feature `test-trap`, never in a release manifest): a request carrying
/// `x-claimgate-test-trap: 1` traps the VM, to test what Envoy's `failure_policy` does after
/// a crash.
#[cfg(feature = "test-trap")]
mod test_trap {
    use crate::host::Host;

    pub fn maybe_trap(host: &dyn Host) {
        let trap = host.request_headers().is_ok_and(|headers| {
            headers
                .iter()
                .any(|(n, v)| n == b"x-claimgate-test-trap" && v == b"1")
        });
        if trap {
            std::process::abort();
        }
    }
}
