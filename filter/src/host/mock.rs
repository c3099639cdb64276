//! A scripted host for native tests: requests with any header bytes, a clock that can fail,
//! host calls that fail on demand, callouts whose answers come (or never come) when the test
//! says. It records what the filter did (replies, resumes, header changes, dispatches, metrics).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use super::{ForeignHost, Host, HostError, MetricKind, RawHeaders};

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The context it was sent on.
    pub context: u32,
    /// Status code.
    pub status: u32,
    /// Reply headers.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

/// An HTTP callout the filter started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// Token returned to the filter.
    pub token: u32,
    /// Context that was effective when it was dispatched.
    pub context: u32,
    /// Cluster.
    pub cluster: String,
    /// `:path` header.
    pub path: String,
    /// Timeout.
    pub timeout_ms: u64,
}

/// Everything the mock knows and has seen.
#[derive(Debug, Default)]
pub struct State {
    /// The clock; `None` makes `now_ms` fail.
    pub now_ms: Option<u64>,
    /// pluginConfig bytes.
    pub config: Option<Vec<u8>>,
    /// VM configuration bytes.
    pub vm_config: Option<Vec<u8>>,
    /// Live request contexts and their headers.
    pub requests: HashMap<u32, RawHeaders>,
    /// Request trailers by context.
    pub trailers: HashMap<u32, RawHeaders>,
    /// The VM's shared data (share one `State` between two roots to model a push).
    pub shared_data: HashMap<String, Vec<u8>>,
    /// The compare-and-swap version of each shared data key (bumped by every write).
    pub shared_cas: HashMap<String, u32>,
    /// The last version handed out.
    pub last_cas: u32,
    /// The context calls act on.
    pub effective: u32,
    /// Local replies sent.
    pub replies: Vec<Reply>,
    /// Contexts resumed.
    pub resumed: Vec<u32>,
    /// Contexts reset.
    pub resets: Vec<u32>,
    /// Properties set: (context, key, value).
    pub properties: Vec<(u32, String, Vec<u8>)>,
    /// Last tick period set.
    pub tick_period_ms: Option<u32>,
    /// Callouts dispatched.
    pub callouts: Vec<Callout>,
    /// The answer being delivered: `:status` and body.
    pub response: Option<(Option<Vec<u8>>, Vec<u8>)>,
    /// Largest `max` the filter asked for when reading a response body.
    pub body_reads: Vec<usize>,
    /// Defined metrics by id (index): name, kind, value.
    pub metrics: Vec<(String, MetricKind, u64)>,
    /// The host's log level (proxy-wasm number); `None`: the call fails, as on a host
    /// without it.
    pub log_level: Option<u32>,
    /// Names of host calls that fail (`"send_reply"`, `"dispatch_http_call"`…).
    pub failing: HashSet<&'static str>,
    /// Every host call made, by name, in order (each one crosses the Wasm boundary in Envoy).
    pub calls: Vec<&'static str>,
}

/// The scripted host.
#[derive(Debug, Default)]
pub struct MockHost {
    /// Its state, open to the test.
    pub state: RefCell<State>,
}

impl MockHost {
    /// A host whose clock reads `now_ms`.
    pub fn new(now_ms: u64) -> MockHost {
        let host = MockHost::default();
        host.state.borrow_mut().now_ms = Some(now_ms);
        host
    }

    /// Adds a live request context with these headers (any bytes) and makes it effective.
    pub fn with_request(self, context: u32, headers: &[(&[u8], &[u8])]) -> MockHost {
        self.add_request(context, headers);
        self
    }

    /// Makes a host call fail with BadArgument.
    pub fn failing(self, call: &'static str) -> MockHost {
        self.state.borrow_mut().failing.insert(call);
        self
    }

    /// Adds a request context and makes it effective.
    pub fn add_request(&self, context: u32, headers: &[(&[u8], &[u8])]) {
        let mut state = self.state.borrow_mut();
        state.requests.insert(
            context,
            headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
        );
        state.effective = context;
    }

    /// The client hangs up: the context is gone.
    pub fn hang_up(&self, context: u32) {
        self.state.borrow_mut().requests.remove(&context);
    }

    /// Moves the clock.
    pub fn set_now(&self, now_ms: Option<u64>) {
        self.state.borrow_mut().now_ms = now_ms;
    }

    /// Makes `context` the effective one (as the host does when it calls into a context).
    pub fn enter(&self, context: u32) {
        self.state.borrow_mut().effective = context;
    }

    /// Scripts the answer to the callout about to be delivered.
    pub fn answer(&self, status: Option<&str>, body: &[u8]) {
        self.state.borrow_mut().response =
            Some((status.map(|s| s.as_bytes().to_vec()), body.to_vec()));
    }

    /// A header of a live request, as the upstream would get it.
    pub fn header(&self, context: u32, name: &str) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        state
            .requests
            .get(&context)?
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.clone())
    }

    /// The value of a metric by name.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let state = self.state.borrow();
        state
            .metrics
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    }

    /// The last value a request set for a property (its filter state), as text.
    pub fn property(&self, context: u32, key: &str) -> Option<String> {
        self.state
            .borrow()
            .properties
            .iter()
            .rev()
            .find(|(c, k, _)| *c == context && k == key)
            .map(|(_, _, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Replies sent so far.
    pub fn replies(&self) -> Vec<Reply> {
        self.state.borrow().replies.clone()
    }

    /// Callouts dispatched so far.
    pub fn callouts(&self) -> Vec<Callout> {
        self.state.borrow().callouts.clone()
    }

    fn check(&self, call: &'static str) -> Result<(), HostError> {
        self.state.borrow_mut().calls.push(call);
        if self.state.borrow().failing.contains(call) {
            return Err(HostError::Status(2));
        }
        Ok(())
    }

    fn live_request(&self) -> Result<u32, HostError> {
        let state = self.state.borrow();
        if state.requests.contains_key(&state.effective) {
            Ok(state.effective)
        } else {
            Err(HostError::Status(1))
        }
    }
}

impl Host for MockHost {
    fn now_ms(&self) -> Result<u64, HostError> {
        self.check("now_ms")?;
        self.state.borrow().now_ms.ok_or(HostError::Status(2))
    }

    fn plugin_config(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.check("plugin_config")?;
        Ok(self.state.borrow().config.clone())
    }

    fn vm_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.check("vm_configuration")?;
        Ok(self.state.borrow().vm_config.clone())
    }

    fn request_headers(&self) -> Result<RawHeaders, HostError> {
        self.check("request_headers")?;
        let context = self.live_request()?;
        Ok(self
            .state
            .borrow()
            .requests
            .get(&context)
            .cloned()
            .unwrap_or_default())
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_request_header")?;
        let context = self.live_request()?;
        let mut state = self.state.borrow_mut();
        let headers = state.requests.entry(context).or_default();
        headers.retain(|(n, _)| n != name.as_bytes());
        headers.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        Ok(())
    }

    fn shared_data(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.check("shared_data")?;
        Ok(self.state.borrow().shared_data.get(key).cloned())
    }

    fn set_shared_data(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.set_shared_data_cas(key, value, 0)
    }

    fn shared_data_cas(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        self.check("shared_data")?;
        let state = self.state.borrow();
        Ok((
            state.shared_data.get(key).cloned(),
            state.shared_cas.get(key).copied().unwrap_or(0),
        ))
    }

    /// As Envoy: a write to an existing key with a stale non-zero version is refused.
    fn set_shared_data_cas(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        self.check("set_shared_data")?;
        let mut state = self.state.borrow_mut();
        let current = state.shared_cas.get(key).copied();
        if cas != 0 && current.is_some_and(|current| current != cas) {
            return Err(super::CAS_MISMATCH);
        }
        state.last_cas = state.last_cas.wrapping_add(1).max(1);
        let next = state.last_cas;
        state.shared_cas.insert(key.to_owned(), next);
        state.shared_data.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn request_trailers(&self) -> Result<RawHeaders, HostError> {
        self.check("request_trailers")?;
        let context = self.live_request()?;
        Ok(self
            .state
            .borrow()
            .trailers
            .get(&context)
            .cloned()
            .unwrap_or_default())
    }

    fn remove_request_trailer(&self, name: &[u8]) -> Result<(), HostError> {
        self.check("remove_request_trailer")?;
        let context = self.live_request()?;
        let mut state = self.state.borrow_mut();
        if let Some(trailers) = state.trailers.get_mut(&context) {
            trailers.retain(|(n, _)| n != name);
        }
        Ok(())
    }

    fn remove_request_header(&self, name: &[u8]) -> Result<(), HostError> {
        self.check("remove_request_header")?;
        let context = self.live_request()?;
        let mut state = self.state.borrow_mut();
        state
            .requests
            .entry(context)
            .or_default()
            .retain(|(n, _)| n != name);
        Ok(())
    }

    fn send_reply(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        self.check("send_reply")?;
        let context = self.live_request()?;
        self.state.borrow_mut().replies.push(Reply {
            context,
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
        Ok(())
    }

    fn reset_request(&self) -> Result<(), HostError> {
        self.check("reset_request")?;
        let context = self.live_request()?;
        self.state.borrow_mut().resets.push(context);
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.check("resume_request")?;
        let context = self.live_request()?;
        self.state.borrow_mut().resumed.push(context);
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.check("set_effective_context")?;
        let mut state = self.state.borrow_mut();
        if context_id != 1 && !state.requests.contains_key(&context_id) {
            return Err(HostError::Status(2));
        }
        state.effective = context_id;
        Ok(())
    }

    fn set_property(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.check("set_property")?;
        let context = self.live_request()?;
        self.state
            .borrow_mut()
            .properties
            .push((context, key.to_owned(), value.to_vec()));
        Ok(())
    }

    fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError> {
        self.check("set_tick_period_ms")?;
        self.state.borrow_mut().tick_period_ms = Some(period_ms);
        Ok(())
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        self.check("dispatch_http_call")?;
        let mut state = self.state.borrow_mut();
        let token = 100 + u32::try_from(state.callouts.len()).unwrap_or(0) * 2;
        let context = state.effective;
        state.callouts.push(Callout {
            token,
            context,
            cluster: cluster.to_owned(),
            path: headers
                .iter()
                .find(|(n, _)| *n == ":path")
                .map(|(_, v)| (*v).to_owned())
                .unwrap_or_default(),
            timeout_ms,
        });
        Ok(token)
    }

    fn call_response_status(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.check("call_response_status")?;
        Ok(self
            .state
            .borrow()
            .response
            .as_ref()
            .and_then(|(s, _)| s.clone()))
    }

    fn call_response_body(&self, max: usize) -> Result<Option<Vec<u8>>, HostError> {
        self.check("call_response_body")?;
        let mut state = self.state.borrow_mut();
        state.body_reads.push(max);
        Ok(state
            .response
            .as_ref()
            .map(|(_, body)| body.iter().take(max).copied().collect()))
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.check("define_metric")?;
        let mut state = self.state.borrow_mut();
        state.metrics.push((name.to_owned(), kind, 0));
        Ok(u32::try_from(state.metrics.len() - 1).unwrap_or(u32::MAX))
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        self.check("increment_metric")?;
        let mut state = self.state.borrow_mut();
        let metric = state
            .metrics
            .get_mut(id as usize)
            .ok_or(HostError::Status(1))?;
        metric.2 = metric.2.saturating_add_signed(delta);
        Ok(())
    }

    fn log_level(&self) -> Result<log::LevelFilter, HostError> {
        self.check("log_level")?;
        let level = self.state.borrow().log_level.ok_or(HostError::Status(2))?;
        Ok(super::level_filter(level))
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.check("record_metric")?;
        let mut state = self.state.borrow_mut();
        let metric = state
            .metrics
            .get_mut(id as usize)
            .ok_or(HostError::Status(1))?;
        metric.2 = value;
        Ok(())
    }
}

// === Log capture ===

thread_local! {
    static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

static CAPTURE: Capture = Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES.with(|lines| {
            lines
                .borrow_mut()
                .push((record.level(), record.args().to_string()));
        });
    }
    fn flush(&self) {}
}

/// Starts capturing this thread's log lines (and forgets earlier ones).
pub fn capture_logs() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
    LINES.with(|lines| lines.borrow_mut().clear());
}

/// This thread's log lines since `capture_logs`.
pub fn logged() -> Vec<(log::Level, String)> {
    LINES.with(|lines| lines.borrow().clone())
}

// === Foreign functions ===

/// Answers a foreign-function call: `(name, arguments)` to the host's status or answer bytes.
pub type ForeignAnswer =
    Box<dyn Fn(&str, &[u8]) -> Result<Option<Vec<u8>>, HostError> + Send + Sync>;

/// A scripted [`ForeignHost`]: every call goes to `answer`; calls and counter bumps are
/// recorded. Thread-safe, as the signature host it backs must be.
pub struct MockForeign {
    answer: ForeignAnswer,
    /// The calls made, in order: function name and argument bytes.
    pub calls: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    /// Counter bumps by id.
    pub counters: std::sync::Mutex<HashMap<u32, u64>>,
}

impl MockForeign {
    /// A host whose foreign functions answer with `answer`.
    pub fn new(
        answer: impl Fn(&str, &[u8]) -> Result<Option<Vec<u8>>, HostError> + Send + Sync + 'static,
    ) -> MockForeign {
        MockForeign {
            answer: Box::new(answer),
            calls: std::sync::Mutex::default(),
            counters: std::sync::Mutex::default(),
        }
    }

    /// How many foreign calls were made.
    pub fn call_count(&self) -> usize {
        self.calls.lock().map_or(0, |calls| calls.len())
    }

    /// The value of counter `id`.
    pub fn counter(&self, id: u32) -> u64 {
        self.counters
            .lock()
            .map_or(0, |counters| counters.get(&id).copied().unwrap_or(0))
    }
}

impl std::fmt::Debug for MockForeign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockForeign")
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl ForeignHost for MockForeign {
    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, HostError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((name.to_owned(), arguments.to_vec()));
        }
        (self.answer)(name, arguments)
    }

    fn bump_counter(&self, id: u32) {
        if let Ok(mut counters) = self.counters.lock() {
            *counters.entry(id).or_default() += 1;
        }
    }
}
