//! The wasm floor: the cheapest HTTP filter a proxy-wasm module written with Floodgate's SDK can
//! be. `make bench` and the storm's cost stage run it beside Floodgate, so that what Envoy's wasm
//! runtime, the per-stream context and the SDK's dispatch cost is measured apart from what the
//! breaker costs.
//!
//! The plugin configuration is one word:
//! - `pass`: `on_http_request_headers` returns `Continue` and does nothing else;
//! - `refuse`: `on_http_request_headers` answers 503 with Floodgate's refusal headers and a body
//!   of the same size as Floodgate's refusal of the cost stage's route, and returns `Pause`.
//!
//! Nothing else: no header is read, no clock, no shared data, no metric.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// As long as Floodgate's refusal of the cost stage's refusing cluster (`forced_open` on
/// `cost_refuse_ws`); the bench checks the two lengths are equal through Envoy.
pub const REFUSAL_BODY: &str =
    r#"{"error":"circuit_open","breaker":"cost_refuse_ws","state":"forced_open","reason":"forced","retry_after_s":1}"#;

const REFUSAL_HEADERS: [(&str, &str); 3] =
    [("retry-after", "1"), ("x-floodgate", "open"), ("content-type", "application/json")];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { refuse: false }) });
}}

struct Root {
    refuse: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match config.trim_ascii() {
            b"pass" => self.refuse = false,
            b"refuse" => self.refuse = true,
            _ => return false,
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.refuse {
            Some(Box::new(Refuse))
        } else {
            Some(Box::new(Pass))
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}

struct Refuse;

impl Context for Refuse {}

impl HttpContext for Refuse {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.send_http_response(503, REFUSAL_HEADERS.to_vec(), Some(REFUSAL_BODY.as_bytes()));
        Action::Pause
    }
}
