//! The Envoy configurations under test, each known by its name: the filter chains, and the
//! bench Envoy config (bench/envoy/base.yaml) they are rendered into.

use std::path::{Path, PathBuf};

use floodgate_demo::envoy::{self, Ports};
use floodgate_demo::repo_root;

/// The configurations' names, as the report and the measuring code refer to them.
pub mod name {
    pub const NONE: &str = "none";
    pub const FLOODGATE: &str = "floodgate";
    pub const ADMISSION_CONTROL: &str = "admission_control";
    pub const LUA: &str = "lua";
    pub const FLOODGATE_WS: &str = "floodgate_ws";
    pub const FLOODGATE_OPEN: &str = "floodgate_open";
    pub const LUA_OPEN: &str = "lua_open";
    pub const FLOODGATE_MATCHER: &str = "floodgate_matcher";
    /// The wasm floor (bench/wasm-floor) passing every request: what any proxy-wasm filter
    /// written with Floodgate's SDK costs in this Envoy.
    pub const WASM_FLOOR: &str = "wasm_floor";
}

/// Measured under plain HTTP requests; the first is the baseline. `floodgate_ws` on plain requests
/// is the filter's fixed cost (a wasm context per stream) without the breaker, which
/// `shed: websocket` only consults for upgrades.
/// `wasm_floor` is the cheapest proxy-wasm filter with the same SDK (the platform's part).
pub const HTTP_SET: [&str; 7] = [
    name::NONE,
    name::FLOODGATE,
    name::ADMISSION_CONTROL,
    name::LUA,
    name::FLOODGATE_WS,
    name::FLOODGATE_MATCHER,
    name::WASM_FLOOR,
];

/// Measured under WebSocket upgrades; the first is the baseline.
pub const UPGRADE_SET: [&str; 4] = [name::NONE, name::FLOODGATE_WS, name::FLOODGATE_OPEN, name::LUA_OPEN];

/// One Envoy configuration under test.
pub struct Setup {
    pub name: &'static str,
    pub what: &'static str,
    pub filters: String,
    pub lua_open: bool,
}

/// The Floodgate HTTP filter with `config`, as an entry of `http_filters` (also used by the storm).
pub(crate) fn wasm_filter(config: &str) -> String {
    module_filter("floodgate", &envoy::wasm_path(), config)
}

/// The Floodgate HTTP filter with `config` from another build of the module (a baseline to
/// compare with in the same run).
pub(crate) fn wasm_filter_from(module: &Path, config: &str) -> String {
    module_filter("floodgate", module, config)
}

/// The wasm floor module (`make wasm-floor` builds it from bench/wasm-floor).
pub fn floor_path() -> PathBuf {
    repo_root().join("target/wasm32-wasip1/release/floodgate_wasm_floor.wasm")
}

/// The wasm floor as an entry of `http_filters` named `name`, `mode` `pass` or `refuse` (also
/// used by the storm).
pub(crate) fn floor_filter(name: &str, mode: &str) -> String {
    module_filter(name, &floor_path(), mode)
}

/// A proxy-wasm HTTP filter: the module at `path` with plugin configuration `config`, in a VM of
/// its own named after the filter.
fn module_filter(name: &str, path: &Path, config: &str) -> String {
    format!(
        r#"- name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {}}}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{}'
          "#,
        path.display(),
        config
    )
}

/// The wasm filter behind a matcher on the `upgrade` header (envoy/http-websocket-matcher.yaml):
/// other requests skip it.
fn matcher_filter(config: &str) -> String {
    let inner = wasm_filter(config);
    let inner = inner.trim_start_matches("- name: floodgate\n            typed_config:\n");
    let indented: Vec<String> =
        inner.lines().map(|l| if l.trim().is_empty() { String::new() } else { format!("      {l}") }).collect();
    format!(
        r#"- name: floodgate
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              extension_config:
                name: floodgate
                typed_config:
{}
              xds_matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      not_matcher:
                        single_predicate:
                          input:
                            name: upgrade
                            typed_config:
                              "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput
                              header_name: upgrade
                          value_match:
                            safe_regex: {{google_re2: {{}}, regex: "(?i).*websocket.*"}}
                    on_match:
                      action:
                        name: skip
                        typed_config:
                          "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter
"#,
        indented.join("\n").trim_end()
    )
}

const ADMISSION_CONTROL: &str = r#"- name: envoy.filters.http.admission_control
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl
              enabled: {default_value: true, runtime_key: ac.enabled}
              sampling_window: 30s
              aggression: {default_value: 1.0, runtime_key: ac.aggression}
              sr_threshold: {default_value: {value: 95.0}, runtime_key: ac.sr_threshold}
              rps_threshold: {default_value: 5, runtime_key: ac.rps_threshold}
              max_rejection_probability: {default_value: {value: 80.0}, runtime_key: ac.max_rejection_probability}
              success_criteria:
                http_criteria:
                  http_success_status: [{start: 100, end: 500}]
          "#;

/// The same check in Lua: a shared flag (route metadata) refuses with Floodgate's answer.
const LUA: &str = r#"- name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h)
                    if h:metadata():get("open") then
                      h:respond({[":status"] = "503", ["retry-after"] = "30", ["x-floodgate"] = "open",
                                 ["content-type"] = "application/json"},
                                '{"error":"circuit_open","breaker":"collab_ws","state":"open"}')
                    end
                  end
          "#;

pub fn setups() -> Vec<Setup> {
    let closed_all = r#"{"shed": "all", "defaults": {"consecutive_failures": 5}}"#;
    let closed_ws = r#"{"shed": "websocket", "defaults": {"consecutive_failures": 5}}"#;
    let open_ws = r#"{"shed": "websocket", "defaults": {"mode": "forced_open"}}"#;
    vec![
        Setup { name: name::NONE, what: "no filter", filters: String::new(), lua_open: false },
        Setup {
            name: name::FLOODGATE,
            what: "Floodgate, closed, `shed: all` (every request asks the breaker)",
            filters: wasm_filter(closed_all),
            lua_open: false,
        },
        Setup {
            name: name::ADMISSION_CONTROL,
            what: "Envoy `admission_control` (30 s window)",
            filters: ADMISSION_CONTROL.to_string(),
            lua_open: false,
        },
        Setup {
            name: name::LUA,
            what: "Lua filter reading a shared flag (admitting)",
            filters: LUA.to_string(),
            lua_open: false,
        },
        Setup {
            name: name::FLOODGATE_WS,
            what: "Floodgate, closed, `shed: websocket`",
            filters: wasm_filter(closed_ws),
            lua_open: false,
        },
        Setup {
            name: name::FLOODGATE_OPEN,
            what: "Floodgate, forced open (refusing upgrades)",
            filters: wasm_filter(open_ws),
            lua_open: false,
        },
        Setup {
            name: name::LUA_OPEN,
            what: "Lua filter, flag set (refusing)",
            filters: LUA.to_string(),
            lua_open: true,
        },
        Setup {
            name: name::FLOODGATE_MATCHER,
            what: "Floodgate, `shed: websocket`, behind a matcher on the `upgrade` header (plain requests skip it)",
            filters: matcher_filter(closed_ws),
            lua_open: false,
        },
        Setup {
            name: name::WASM_FLOOR,
            what: "the wasm floor: a proxy-wasm filter with Floodgate's SDK whose request-headers callback returns Continue and does nothing else (bench/wasm-floor)",
            filters: floor_filter("wasm_floor", "pass"),
            lua_open: false,
        },
    ]
}

pub fn render(setup: &Setup, ports: Ports) -> anyhow::Result<String> {
    let base = std::fs::read_to_string(repo_root().join("bench/envoy/base.yaml"))?;
    let filters =
        if setup.filters.is_empty() { String::new() } else { format!("          {}\n", setup.filters.trim_end()) };
    Ok(base
        .replace("          # FILTERS\n", &filters)
        .replace("LUA_OPEN", if setup.lua_open { "true" } else { "false" })
        .replace("port_value: 9901}", &format!("port_value: {}}}", ports.admin))
        .replace("port_value: 10000}", &format!("port_value: {}}}", ports.listen))
        .replace("port_value: 8081}", &format!("port_value: {}}}", ports.backend)))
}

/// Floodgate tracking one breaker per `x-breaker` header value (up to 2,000), for its memory.
pub fn thousand_breakers() -> Setup {
    Setup {
        name: "floodgate_1000",
        what: "",
        filters: wasm_filter(r#"{"shed": "all", "key": "header:x-breaker", "max_breakers": 2000}"#),
        lua_open: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_bench_configuration_validates_in_envoy() {
        for setup in setups() {
            let ports = Ports { admin: 9901, listen: 10000, backend: 8081, control: 9000 };
            let config = render(&setup, ports).unwrap_or_else(|e| panic!("{e}"));
            assert!(!config.contains("# FILTERS"));
            let (ok, log) = envoy::validate(&config).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(ok, "{}:\n{log}", setup.name);
        }
    }

    #[test]
    fn every_measured_name_is_a_configuration() {
        let names: Vec<&str> = setups().iter().map(|s| s.name).collect();
        for n in HTTP_SET.iter().chain(UPGRADE_SET.iter()) {
            assert!(names.contains(n), "{n} is not a configuration");
        }
    }
}
