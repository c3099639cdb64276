//! claimgate proxy-wasm filter: reads the pluginConfig, asks `claimgate-core` for a
//! decision on every request, and turns it into Envoy actions. Everything that decides lives
//! in the core; this crate only talks to the host (headers, local replies, JWKS callouts,
//! timers, metrics, logs).
//!
//! State lives per root context (one per plugin configuration, per worker VM): the engine,
//! the fetched key sets, the verified-token cache and the requests held until keys arrive.
//! A policy push gives a new root context, so caches never outlive the policy they came from.

mod state;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use state::{Shared, Verdict};

/// The exported entry points the host calls (`proxy_wasm::main!` generates them).
mod entry {
    #![allow(missing_docs)]
    use super::{LogLevel, Root, RootContext};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}
}

/// A JWKS callout answered; the root and the request that started a refetch both get these.
fn deliver_jwks(shared: Option<&Rc<RefCell<Shared>>>, token_id: u32, body_size: usize) {
    if let Some(shared) = shared {
        state::jwks_response(shared, token_id, body_size, now_secs());
    }
}

fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The root context: configuration, JWKS refresh, held requests.
#[derive(Default)]
struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        deliver_jwks(self.shared.as_ref(), token_id, body_size);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("claimgate filter {} starting", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        ) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                log::error!("claimgate: no pluginConfig: refusing to start (fail closed)");
                return false;
            }
            Err(status) => {
                log::error!("claimgate: cannot read pluginConfig ({status:?}): refusing to start");
                return false;
            }
        };
        match claimgate_core::blob::engine_from_plugin_config(&config) {
            Ok(engine) => {
                log::info!(
                    "claimgate: policy `{}` version {} active ({} rules, {} issuers)",
                    engine.policy().name,
                    engine.digest(),
                    engine.policy().rules.len(),
                    engine.policy().issuers.len()
                );
                let shared = Rc::new(RefCell::new(Shared::new(Rc::new(engine))));
                state::fetch_all_due(&shared, now_secs());
                // A one-second tick drives JWKS refresh and gives up on held requests.
                let _ = hostcalls::set_tick_period(Duration::from_secs(1));
                self.shared = Some(shared);
                true
            }
            Err(error) => {
                log::error!(
                    "claimgate: pluginConfig refused: {error}: refusing to start (fail closed)"
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            state::tick(shared, now_secs());
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            context_id,
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request.
struct Request {
    context_id: u32,
    shared: Option<Rc<RefCell<Shared>>>,
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        // A refetch this request triggered (unknown `kid`); held requests are re-decided.
        deliver_jwks(self.shared.as_ref(), token_id, body_size);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = &self.shared else {
            // No usable configuration: fail closed.
            let _ = hostcalls::send_http_response(
                500,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"policy_unavailable"}"#),
            );
            return Action::Pause;
        };
        match state::enforce(shared, self.context_id, now_secs()) {
            Verdict::Continue => Action::Continue,
            Verdict::Replied | Verdict::Held => Action::Pause,
        }
    }
}
