//! The wasm floor: the cheapest HTTP filter a proxy-wasm module written with Floodgate's SDK can
//! be. `make bench` and the storm's cost stage run it beside Floodgate, so that what Envoy's wasm
//! runtime, the per-stream context and the SDK's dispatch cost is measured apart from what the
//! breaker costs.
//!
//! The plugin configuration is one word:
//! - `pass`: `on_http_request_headers` returns `Continue` and does nothing else;
//! - `refuse`: `on_http_request_headers` answers 503 with Floodgate's refusal headers and a body
//!   of the same size as Floodgate's refusal of the cost stage's route, and returns `Pause`;
//! - `calls <kind> <n>`: `on_http_request_headers` makes `n` host calls of one kind and returns
//!   `Continue` (`make bench-host-calls` measures what one call costs in Envoy): `shared_get`
//!   (a 64-byte shared value, as large as a breaker's state), `shared_get_empty` (an empty one:
//!   the host copies nothing back, so it calls no allocator in the module), `property`
//!   (`xds.cluster_name`), `header` (`:path`), `clock`;
//! - `spin <n>`: `on_http_request_headers` runs a loop of `n` rounds (about 5 wasm instructions
//!   each) and returns `Continue`: what wasm instructions cost in Envoy, apart from host calls.
//!
//! Nothing else: in `pass` and `refuse`, no header is read, no clock, no shared data, no metric.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

/// As long as Floodgate's refusal of the cost stage's refusing cluster (`forced_open` on
/// `cost_refuse_ws`); the bench checks the two lengths are equal through Envoy.
pub const REFUSAL_BODY: &str =
    r#"{"error":"circuit_open","breaker":"cost_refuse_ws","state":"forced_open","reason":"forced","retry_after_s":1}"#;

const REFUSAL_HEADERS: [(&str, &str); 3] =
    [("retry-after", "1"), ("x-floodgate", "open"), ("content-type", "application/json")];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { mode: Mode::Pass }) });
}}

/// The shared values `shared_get` and `shared_get_empty` read.
const SHARED_VALUE: &str = "floor.value";
const SHARED_EMPTY: &str = "floor.empty";

#[derive(Clone, Copy)]
enum Mode {
    Pass,
    Refuse,
    Calls(Call, u32),
    Spin(u32),
}

/// One kind of host call, as `calls <kind> <n>` names it.
#[derive(Clone, Copy)]
enum Call {
    SharedGet,
    SharedGetEmpty,
    Property,
    Header,
    Clock,
}

impl Call {
    fn parse(word: &str) -> Option<Call> {
        Some(match word {
            "shared_get" => Call::SharedGet,
            "shared_get_empty" => Call::SharedGetEmpty,
            "property" => Call::Property,
            "header" => Call::Header,
            "clock" => Call::Clock,
            _ => return None,
        })
    }

    /// One call; its answer is dropped (an error too: the bench counts calls, not answers).
    fn make(self) {
        match self {
            Call::SharedGet => drop(hostcalls::get_shared_data(SHARED_VALUE)),
            Call::SharedGetEmpty => drop(hostcalls::get_shared_data(SHARED_EMPTY)),
            Call::Property => drop(hostcalls::get_property(vec!["xds", "cluster_name"])),
            Call::Header => drop(hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path")),
            Call::Clock => drop(hostcalls::get_current_time()),
        }
    }
}

fn parse_mode(config: &str) -> Option<Mode> {
    let words: Vec<&str> = config.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["pass"] => Some(Mode::Pass),
        ["refuse"] => Some(Mode::Refuse),
        ["calls", kind, n] => Some(Mode::Calls(Call::parse(kind)?, n.parse().ok()?)),
        ["spin", n] => Some(Mode::Spin(n.parse().ok()?)),
        _ => None,
    }
}

struct Root {
    mode: Mode,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let Some(mode) = std::str::from_utf8(&config).ok().and_then(parse_mode) else { return false };
        self.mode = mode;
        if let Mode::Calls(..) = mode {
            let value = [b'x'; 64];
            let stored = hostcalls::set_shared_data(SHARED_VALUE, Some(&value), None)
                .and_then(|()| hostcalls::set_shared_data(SHARED_EMPTY, Some(&[]), None));
            return stored.is_ok();
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.mode {
            Mode::Pass => Some(Box::new(Pass)),
            Mode::Refuse => Some(Box::new(Refuse)),
            Mode::Calls(call, n) => Some(Box::new(Calls { call, n })),
            Mode::Spin(n) => Some(Box::new(Spin { n })),
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

struct Calls {
    call: Call,
    n: u32,
}

impl Context for Calls {}

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for _ in 0..self.n {
            self.call.make();
        }
        Action::Continue
    }
}

struct Spin {
    n: u32,
}

impl Context for Spin {}

impl HttpContext for Spin {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut x = 1u32;
        for i in 0..std::hint::black_box(self.n) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
        Action::Continue
    }
}
