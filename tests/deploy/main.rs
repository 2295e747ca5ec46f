//! The deployment files, checked by the real tools they are for: the Istio manifests against the
//! Istio API's fields and by loading their Envoy pieces into the real Envoy with the real module;
//! docker-compose by parsing (no Docker engine here); the OCI layout `make oci` writes; every
//! Grafana query against a real Prometheus scraping a real Envoy and floodgate-control.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use floodgate_tests::backend::{Backend, Mode};
use floodgate_tests::client::{self, Upgrade};
use floodgate_tests::envoy::{self, Envoy, Ports};
use floodgate_tests::procs::{ControlPlane, Prometheus};
use floodgate_tests::{eventually, require_wasm};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    floodgate_demo::repo_root()
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

// ---- Istio API fields ----

/// A field schema, from the Istio API reference (WasmPlugin v1alpha1, EnvoyFilter v1alpha3).
enum S {
    Str,
    Int,
    Bool,
    /// Free-form (pluginConfig, patch values: checked by Envoy instead).
    Any,
    Enum(&'static [&'static str]),
    Obj(Vec<(&'static str, S)>),
    MapOfStr,
    List(Box<S>),
}

fn obj(fields: Vec<(&'static str, S)>) -> S {
    S::Obj(fields)
}

fn list(s: S) -> S {
    S::List(Box::new(s))
}

fn selector() -> S {
    obj(vec![("matchLabels", S::MapOfStr)])
}

fn target_ref() -> S {
    obj(vec![("group", S::Str), ("kind", S::Str), ("name", S::Str), ("namespace", S::Str)])
}

fn wasm_plugin_spec() -> S {
    obj(vec![
        ("selector", selector()),
        ("targetRef", target_ref()),
        ("targetRefs", list(target_ref())),
        ("url", S::Str),
        ("sha256", S::Str),
        ("imagePullPolicy", S::Enum(&["UNSPECIFIED_POLICY", "IfNotPresent", "Always"])),
        ("imagePullSecret", S::Str),
        ("pluginConfig", S::Any),
        ("pluginName", S::Str),
        ("phase", S::Enum(&["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"])),
        ("priority", S::Int),
        ("failStrategy", S::Enum(&["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"])),
        (
            "vmConfig",
            obj(vec![(
                "env",
                list(obj(vec![("name", S::Str), ("value", S::Str), ("valueFrom", S::Enum(&["INLINE", "HOST"]))])),
            )]),
        ),
        (
            "match",
            list(obj(vec![
                ("mode", S::Enum(&["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"])),
                ("ports", list(obj(vec![("number", S::Int)]))),
            ])),
        ),
        ("type", S::Enum(&["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"])),
    ])
}

fn envoy_filter_spec() -> S {
    let sub_filter = obj(vec![("name", S::Str)]);
    let filter = obj(vec![("name", S::Str), ("subFilter", sub_filter)]);
    let filter_chain = obj(vec![
        ("name", S::Str),
        ("sni", S::Str),
        ("transportProtocol", S::Str),
        ("applicationProtocols", S::Str),
        ("filter", filter),
        ("destinationPort", S::Int),
    ]);
    let listener =
        obj(vec![("portNumber", S::Int), ("filterChain", filter_chain), ("listenerFilter", S::Str), ("name", S::Str)]);
    let route_configuration = obj(vec![
        ("portNumber", S::Int),
        ("portName", S::Str),
        ("gateway", S::Str),
        ("vhost", obj(vec![("name", S::Str), ("domainName", S::Str), ("route", obj(vec![("name", S::Str)]))])),
        ("name", S::Str),
    ]);
    let cluster = obj(vec![("portNumber", S::Int), ("service", S::Str), ("subset", S::Str), ("name", S::Str)]);
    let matcher = obj(vec![
        ("context", S::Enum(&["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"])),
        ("proxy", obj(vec![("proxyVersion", S::Str), ("metadata", S::MapOfStr)])),
        ("listener", listener),
        ("routeConfiguration", route_configuration),
        ("cluster", cluster),
    ]);
    let patch = obj(vec![
        (
            "operation",
            S::Enum(&["INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"]),
        ),
        ("value", S::Any),
        ("filterClass", S::Enum(&["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"])),
    ]);
    obj(vec![
        ("workloadSelector", obj(vec![("labels", S::MapOfStr)])),
        ("targetRefs", list(target_ref())),
        ("priority", S::Int),
        (
            "configPatches",
            list(obj(vec![
                (
                    "applyTo",
                    S::Enum(&[
                        "INVALID",
                        "LISTENER",
                        "FILTER_CHAIN",
                        "NETWORK_FILTER",
                        "HTTP_FILTER",
                        "ROUTE_CONFIGURATION",
                        "VIRTUAL_HOST",
                        "HTTP_ROUTE",
                        "CLUSTER",
                        "EXTENSION_CONFIG",
                        "BOOTSTRAP",
                        "LISTENER_FILTER",
                    ]),
                ),
                ("match", matcher),
                ("patch", patch),
            ])),
        ),
    ])
}

fn check(schema: &S, v: &Value, at: &str, errors: &mut Vec<String>) {
    match (schema, v) {
        (S::Any, _) => {}
        (S::Str, Value::String(_)) | (S::Int, Value::Number(_)) | (S::Bool, Value::Bool(_)) => {}
        (S::Enum(values), Value::String(s)) if values.contains(&s.as_str()) => {}
        (S::Enum(values), _) => errors.push(format!("{at}: {v} is not one of {values:?}")),
        (S::MapOfStr, Value::Object(m)) => {
            for (k, x) in m {
                if !x.is_string() {
                    errors.push(format!("{at}.{k}: must be a string"));
                }
            }
        }
        (S::List(item), Value::Array(xs)) => {
            for (i, x) in xs.iter().enumerate() {
                check(item, x, &format!("{at}[{i}]"), errors);
            }
        }
        (S::Obj(fields), Value::Object(m)) => {
            for (k, x) in m {
                match fields.iter().find(|(name, _)| name == k) {
                    Some((_, s)) => check(s, x, &format!("{at}.{k}"), errors),
                    None => errors.push(format!("{at}.{k}: not a field of the API")),
                }
            }
        }
        _ => errors.push(format!("{at}: wrong type: {v}")),
    }
}

fn istio_errors(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let spec_schema = match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
        (Some("extensions.istio.io/v1alpha1"), Some("WasmPlugin")) => wasm_plugin_spec(),
        (Some("networking.istio.io/v1alpha3"), Some("EnvoyFilter")) => envoy_filter_spec(),
        (api, kind) => panic!("unexpected resource {api:?} {kind:?}"),
    };
    for k in doc.as_object().unwrap().keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()) {
            errors.push(format!("{k}: not a resource field"));
        }
    }
    check(&spec_schema, &doc["spec"], "spec", &mut errors);
    errors
}

#[test]
fn istio_manifests_use_only_fields_and_values_of_the_istio_api() {
    let mut checked = 0;
    for file in ["wasmplugin.yaml", "wasmplugin-gateway.yaml", "envoyfilter.yaml"] {
        for doc in yaml_docs(&root().join("deploy/istio").join(file)) {
            let errors = istio_errors(&doc);
            assert!(errors.is_empty(), "{file}: {errors:#?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
    // The checker itself catches a misspelled field and a wrong enum value.
    let mut bad = yaml_docs(&root().join("deploy/istio/wasmplugin.yaml")).remove(0);
    bad["spec"]["failStrategy"] = "FAIL_SOMETIMES".into();
    bad["spec"]["pluginConfg"] = Value::Null;
    assert_eq!(istio_errors(&bad).len(), 2, "{:?}", istio_errors(&bad));
}

#[test]
fn the_kubernetes_manifests_for_floodgate_control_are_consistent() {
    let docs = yaml_docs(&root().join("deploy/istio/floodgate-control.yaml"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "Secret", "ConfigMap", "Deployment", "Service"]);
    let deployment = &docs[3];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let secret_keys: BTreeSet<&str> = docs[1]["stringData"].as_object().unwrap().keys().map(String::as_str).collect();
    for env in container["env"].as_array().unwrap() {
        let key = env["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
        assert!(secret_keys.contains(key), "env {} refers to a missing secret key {key}", env["name"]);
    }
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"],
        "the selector must match the pod labels"
    );
    assert_eq!(docs[4]["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
    // The ConfigMap's TOML is a config floodgate-control accepts.
    let toml = docs[2]["data"]["floodgate-control.toml"].as_str().unwrap();
    let file = std::env::temp_dir().join(format!("floodgate-control-{}.toml", std::process::id()));
    std::fs::write(&file, toml).unwrap();
    let env = |k: &str| (k == "FLOODGATE_TOKEN").then(|| "t".to_string());
    let settings = floodgate_control::settings::load(Some(&file), &env, false);
    assert!(settings.is_ok(), "{settings:?}");
}

/// Starts the real Envoy with the real module on `plugin_config` (its `on_configure` runs).
async fn envoy_accepts(plugin_config: &str) -> Result<String, String> {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let config = envoy::render("http-websocket.yaml", ports, &[plugin_config]).unwrap();
    match Envoy::start(&config, ports, 1).await {
        Ok(e) => Ok(e.log()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn the_wasmplugin_plugin_config_is_accepted_by_the_real_filter() {
    let doc = yaml_docs(&root().join("deploy/istio/wasmplugin.yaml")).remove(0);
    let config = doc["spec"]["pluginConfig"].to_string();
    let log = envoy_accepts(&config).await.unwrap_or_else(|e| panic!("refused:\n{e}"));
    assert!(log.contains("configured (Http"), "{log}");
    // And the same path does refuse a bad one, naming the field.
    let mut bad = doc["spec"]["pluginConfig"].clone();
    bad["defaults"]["failure_rate"] = 1.5.into();
    let err = envoy_accepts(&bad.to_string()).await.unwrap_err();
    assert!(err.contains("defaults.failure_rate"), "{err}");
}

#[tokio::test]
async fn the_ingress_gateway_wasmplugin_selects_the_gateway_in_client_mode_and_its_config_loads_into_the_real_filter() {
    let sidecar = yaml_docs(&root().join("deploy/istio/wasmplugin.yaml")).remove(0);
    let gateway = yaml_docs(&root().join("deploy/istio/wasmplugin-gateway.yaml")).remove(0);
    assert_eq!(gateway["spec"]["selector"]["matchLabels"]["istio"], "ingressgateway");
    // Istio applies CLIENT (not SERVER) to a gateway's listeners.
    let modes: Vec<&Value> = gateway["spec"]["match"].as_array().unwrap().iter().map(|m| &m["mode"]).collect();
    assert_eq!(modes, [&Value::from("CLIENT")]);
    for same in ["url", "sha256", "phase", "type", "failStrategy"] {
        assert_eq!(gateway["spec"][same], sidecar["spec"][same], "{same} differs from the sidecar plugin");
    }
    let config = &gateway["spec"]["pluginConfig"];
    assert!(config["breakers"].as_object().unwrap().keys().all(|k| k.starts_with("outbound|")), "{config}");
    let log = envoy_accepts(&config.to_string()).await.unwrap_or_else(|e| panic!("refused:\n{e}"));
    assert!(log.contains("configured (Http"), "{log}");
}

#[tokio::test]
async fn the_envoyfilter_patches_load_into_a_real_envoy() {
    require_wasm();
    let doc = yaml_docs(&root().join("deploy/istio/envoyfilter.yaml")).remove(0);
    let patches = doc["spec"]["configPatches"].as_array().unwrap();
    let by = |apply_to: &str| patches.iter().find(|p| p["applyTo"] == apply_to).unwrap()["patch"]["value"].clone();
    let (extension, insertion, bootstrap) = (by("EXTENSION_CONFIG"), by("HTTP_FILTER"), by("BOOTSTRAP"));
    // The filter the EXTENSION_CONFIG delivers, referenced by the name the HTTP_FILTER insertion uses.
    assert_eq!(extension["name"], insertion["name"]);
    assert_eq!(
        insertion["config_discovery"]["type_urls"][0], extension["typed_config"]["@type"],
        "the insertion must accept the extension's type"
    );
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let rendered = envoy::render("http-websocket.yaml", ports, &[]).unwrap();
    let mut bootstrap_doc: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&rendered).unwrap()).unwrap();
    let mut typed = extension["typed_config"].clone();
    // Served from a registry in the mesh; from the local build here.
    typed["config"]["vm_config"]["code"] =
        serde_json::json!({"local": {"filename": envoy::wasm_path().display().to_string()}});
    let hcm = &mut bootstrap_doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["http_filters"][0] = serde_json::json!({"name": extension["name"], "typed_config": typed});
    bootstrap_doc["stats_config"] = bootstrap["stats_config"].clone();
    let config = serde_json::to_string_pretty(&bootstrap_doc).unwrap();
    let (ok, log) = envoy::validate(&config).await.unwrap();
    assert!(ok, "envoy --mode validate:\n{log}");
    let envoy = Envoy::start(&config, ports, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(envoy.log().contains("configured (Http"), "{}", envoy.log());
}

// ---- Envoy Gateway ----

/// Fields of the Envoy Gateway API (gateway.envoyproxy.io/v1alpha1, from its Go types in
/// api/v1alpha1 as of v1.9): EnvoyExtensionPolicy, EnvoyProxy, BackendTrafficPolicy. Every field
/// of each spec is listed; the subtrees Floodgate's manifests use are spelled out, the others are
/// `Any`.
fn eg_target_ref() -> S {
    obj(vec![("group", S::Str), ("kind", S::Str), ("name", S::Str), ("sectionName", S::Str)])
}

fn eg_secret_ref() -> S {
    obj(vec![("group", S::Str), ("kind", S::Str), ("name", S::Str), ("namespace", S::Str)])
}

fn eg_policy_targets(mut rest: Vec<(&'static str, S)>) -> S {
    let mut fields =
        vec![("targetRef", eg_target_ref()), ("targetRefs", list(eg_target_ref())), ("targetSelectors", S::Any)];
    fields.append(&mut rest);
    obj(fields)
}

fn eg_merge_type() -> S {
    S::Enum(&["StrategicMerge", "JSONMerge", "Replace"])
}

fn envoy_extension_policy_spec() -> S {
    let tls = || obj(vec![("caCertificateRef", eg_secret_ref())]);
    let wasm = obj(vec![
        ("name", S::Str),
        ("rootID", S::Str),
        (
            "code",
            obj(vec![
                ("type", S::Enum(&["HTTP", "Image"])),
                ("http", obj(vec![("url", S::Str), ("sha256", S::Str), ("tls", tls())])),
                (
                    "image",
                    obj(vec![("url", S::Str), ("sha256", S::Str), ("pullSecretRef", eg_secret_ref()), ("tls", tls())]),
                ),
                ("pullPolicy", S::Enum(&["IfNotPresent", "Always"])),
            ]),
        ),
        ("config", S::Any),
        ("failOpen", S::Bool),
        ("env", obj(vec![("hostKeys", list(S::Str))])),
    ]);
    eg_policy_targets(vec![
        ("mergeType", eg_merge_type()),
        ("wasm", list(wasm)),
        ("extProc", S::Any),
        ("lua", S::Any),
        ("dynamicModule", S::Any),
    ])
}

fn envoy_proxy_spec() -> S {
    let mut fields: Vec<(&'static str, S)> = [
        "provider",
        "logging",
        "telemetry",
        "concurrency",
        "routingType",
        "extraArgs",
        "mergeGateways",
        "mergeBackends",
        "shutdown",
        "filterOrder",
        "backendTLS",
        "ipFamily",
        "preserveRouteOrder",
        "luaValidation",
        "lua",
        "dynamicModules",
        "geoIP",
        "mergeType",
    ]
    .into_iter()
    .map(|f| (f, S::Any))
    .collect();
    fields.push((
        "bootstrap",
        obj(vec![("type", S::Enum(&["Merge", "Replace", "JSONPatch"])), ("value", S::Str), ("jsonPatches", S::Any)]),
    ));
    obj(fields)
}

fn backend_traffic_policy_spec() -> S {
    let mut fields: Vec<(&'static str, S)> = [
        // ClusterSettings (inline)
        "loadBalancer",
        "retry",
        "proxyProtocol",
        "tcpKeepalive",
        "healthCheck",
        "timeout",
        "connection",
        "dns",
        "http2",
        // BackendTrafficPolicySpec
        "rateLimit",
        "bandwidthLimit",
        "faultInjection",
        "admissionControl",
        "useClientProtocol",
        "compression",
        "compressor",
        "responseOverride",
        "httpUpgrade",
        "requestBuffer",
        "telemetry",
        "routingType",
    ]
    .into_iter()
    .map(|f| (f, S::Any))
    .collect();
    fields.push(("mergeType", eg_merge_type()));
    fields.push((
        "circuitBreaker",
        obj(vec![
            ("maxConnections", S::Int),
            ("maxPendingRequests", S::Int),
            ("maxParallelRequests", S::Int),
            ("maxParallelRetries", S::Int),
            ("maxRequestsPerConnection", S::Int),
            ("perEndpoint", obj(vec![("maxConnections", S::Int)])),
            ("retryBudget", S::Any),
        ]),
    ));
    eg_policy_targets(fields)
}

fn envoy_gateway_errors(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let spec_schema = match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
        (Some("gateway.envoyproxy.io/v1alpha1"), Some("EnvoyExtensionPolicy")) => envoy_extension_policy_spec(),
        (Some("gateway.envoyproxy.io/v1alpha1"), Some("EnvoyProxy")) => envoy_proxy_spec(),
        (Some("gateway.envoyproxy.io/v1alpha1"), Some("BackendTrafficPolicy")) => backend_traffic_policy_spec(),
        (api, kind) => panic!("unexpected resource {api:?} {kind:?}"),
    };
    for k in doc.as_object().unwrap().keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()) {
            errors.push(format!("{k}: not a resource field"));
        }
    }
    check(&spec_schema, &doc["spec"], "spec", &mut errors);
    errors
}

fn envoy_gateway_doc(file: &str) -> Value {
    yaml_docs(&root().join("deploy/envoy-gateway").join(file)).remove(0)
}

#[test]
fn envoy_gateway_manifests_use_only_fields_and_values_of_the_envoy_gateway_api() {
    let mut checked = 0;
    for file in ["envoyextensionpolicy.yaml", "envoyproxy.yaml", "backendtrafficpolicy.yaml"] {
        for doc in yaml_docs(&root().join("deploy/envoy-gateway").join(file)) {
            let errors = envoy_gateway_errors(&doc);
            assert!(errors.is_empty(), "{file}: {errors:#?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
    // The wasm comes from an OCI image with its digest, and the checker catches mistakes.
    let policy = envoy_gateway_doc("envoyextensionpolicy.yaml");
    let code = &policy["spec"]["wasm"][0]["code"];
    assert_eq!(code["type"], "Image");
    assert_eq!(code["image"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(policy["spec"]["wasm"][0]["rootID"], "floodgate");
    let mut bad = policy.clone();
    bad["spec"]["wasm"][0]["code"]["type"] = "Oci".into();
    bad["spec"]["wasm"][0]["vmID"] = "x".into();
    assert_eq!(envoy_gateway_errors(&bad).len(), 2, "{:?}", envoy_gateway_errors(&bad));
    // Enough upstream connections and requests for 10,000 WebSockets.
    let capacity = envoy_gateway_doc("backendtrafficpolicy.yaml");
    for field in ["maxConnections", "maxPendingRequests", "maxParallelRequests"] {
        let v = capacity["spec"]["circuitBreaker"][field].as_u64().unwrap();
        assert!(v >= 10_000, "circuitBreaker.{field} is {v}");
    }
}

/// The bootstrap fragment of envoyproxy.yaml (`bootstrap.value`, merged by Envoy Gateway).
fn envoy_gateway_bootstrap_patch() -> Value {
    let proxy = envoy_gateway_doc("envoyproxy.yaml");
    assert_eq!(proxy["spec"]["bootstrap"]["type"], "Merge");
    let value = proxy["spec"]["bootstrap"]["value"].as_str().unwrap();
    serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(value).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoy_gateway_policy_and_bootstrap_patch_run_in_a_real_envoy_as_envoy_gateway_translates_them() {
    require_wasm();
    let policy = envoy_gateway_doc("envoyextensionpolicy.yaml");
    let wasm = &policy["spec"]["wasm"][0];
    let plugin = &wasm["config"];
    let patch = envoy_gateway_bootstrap_patch();
    let token = plugin["control"]["token"].as_str().unwrap();
    let control = ControlPlane::start(0, token, &[]).await.unwrap();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let rendered = envoy::render("http-websocket.yaml", ports, &[]).unwrap();
    let mut bootstrap: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&rendered).unwrap()).unwrap();
    // The filter as Envoy Gateway writes it (internal/xds/translator/wasm.go): its own vm_id, the
    // policy's rootID, `config` as a JSON string, failOpen; the code from its cache, a local file here.
    let filter = serde_json::json!({
        "name": "floodgate",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": wasm["name"],
                "root_id": wasm["rootID"],
                "fail_open": wasm["failOpen"],
                "vm_config": {
                    "vm_id": "envoyextensionpolicy/collab/floodgate/wasm/0",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": envoy::wasm_path().display().to_string()}}
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin.to_string()}
            }
        }
    });
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["http_filters"][0] = filter;
    // The bootstrap patch, merged (repeated fields append): stats tags only from the patch, and
    // its control-plane cluster, pointed at the control plane started here.
    bootstrap["stats_config"] = patch["stats_config"].clone();
    let mut clusters = patch["static_resources"]["clusters"].as_array().unwrap().clone();
    assert_eq!(clusters[0]["name"], plugin["control"]["cluster"], "the plugin polls the cluster the patch adds");
    clusters[0]["type"] = "STATIC".into();
    clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] =
        serde_json::json!({"address": "127.0.0.1", "port_value": control.addr.port()});
    bootstrap["static_resources"]["clusters"].as_array_mut().unwrap().extend(clusters);
    let config = serde_json::to_string_pretty(&bootstrap).unwrap();
    let (ok, log) = envoy::validate(&config).await.unwrap();
    assert!(ok, "envoy --mode validate:\n{log}");
    let e = Envoy::start(&config, ports, 2).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(e.log().contains("configured (Http"), "{}", e.log());
    // The poller reaches floodgate-control through the patch's cluster...
    eventually(Duration::from_secs(15), "the proxy in floodgate-control's fleet", || async {
        let fleet = control.json("GET", "/api/v1/fleet", "").await.ok()?;
        (!fleet["proxies"].as_array()?.is_empty()).then_some(())
    })
    .await;
    // ...and the patch's stats tags make the breaker a label.
    backend.control.set_mode(Mode::FailHandshakes(503));
    for _ in 0..plugin["defaults"]["consecutive_failures"].as_u64().unwrap() {
        let _ = client::upgrade(e.listen, "/ws").await.unwrap();
    }
    match client::upgrade(e.listen, "/ws").await.unwrap() {
        Upgrade::Refused(r) => assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"), "{}", r.body),
        Upgrade::Open(_) => panic!("the breaker did not open"),
    }
    let text = e.prometheus().await.unwrap();
    assert!(text.contains("floodgate_state{breaker=\"collab_ws\"} 2"), "{text}");
}

// ---- docker-compose ----

#[tokio::test]
async fn the_compose_file_builds_and_mounts_files_that_exist_on_distinct_ports() {
    let compose = yaml_docs(&root().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for expected in ["envoy", "floodgate-control", "redis", "backend", "prometheus", "alertmanager", "grafana"] {
        assert!(names.contains(expected), "service {expected} missing");
    }
    let mut host_ports = BTreeMap::new();
    for (name, s) in services {
        if let Some(build) = s.get("build") {
            let context = root().join(build["context"].as_str().unwrap());
            assert!(context.is_dir(), "{name}: build context {} missing", context.display());
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(dockerfile.is_file(), "{name}: {} missing", dockerfile.display());
            let text = std::fs::read_to_string(&dockerfile).unwrap();
            for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
                let src = line.split_whitespace().nth(1).unwrap();
                assert!(context.join(src).exists(), "{name}: {line}: {src} missing");
            }
        } else {
            let image = s["image"].as_str().unwrap_or_else(|| panic!("{name}: neither build nor image"));
            assert!(image.contains(':') && !image.ends_with(":latest"), "{name}: pin the image tag: {image}");
        }
        for v in s["volumes"].as_array().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            assert!(root().join(host).exists(), "{name}: mounts {host}, which does not exist");
        }
        for p in s["ports"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap();
            let parts: Vec<&str> = p.split(':').collect();
            assert_eq!(parts.len(), 3, "{name}: publish on an explicit address (127.0.0.1:host:container): {p}");
            assert_eq!(parts[0], "127.0.0.1", "{name}: {p}");
            if let Some(other) = host_ports.insert(parts[1].to_string(), name.clone()) {
                panic!("host port {} used by {other} and {name}", parts[1]);
            }
        }
        for d in s["depends_on"].as_array().into_iter().flatten() {
            assert!(names.contains(d.as_str().unwrap()), "{name} depends on unknown {d}");
        }
    }
    // Prometheus scrapes, and Alertmanager posts to, services that exist on the ports they serve.
    let prom = yaml_docs(&root().join("deploy/prometheus/prometheus.yml")).remove(0);
    let mut targets: Vec<String> = Vec::new();
    for job in prom["scrape_configs"].as_array().unwrap() {
        for sc in job["static_configs"].as_array().unwrap() {
            targets.extend(sc["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()));
        }
    }
    targets.extend(
        prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string()),
    );
    let am = std::fs::read_to_string(root().join("deploy/alertmanager/alertmanager.yml")).unwrap();
    let webhook = am.lines().find_map(|l| l.trim().strip_prefix("- url: http://")).unwrap();
    targets.push(webhook.split('/').next().unwrap().to_string());
    for t in &targets {
        let (host, port) = t.split_once(':').unwrap();
        assert!(names.contains(host), "{t}: no service {host}");
        let published = services[host]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().ends_with(&format!(":{port}")));
        assert!(published, "{t}: {host} does not serve port {port}");
    }
    // The Envoy config the compose file mounts validates, with the module where the image puts it.
    require_wasm();
    let text = std::fs::read_to_string(root().join("deploy/compose/envoy.yaml"))
        .unwrap()
        .replace("/etc/floodgate/floodgate.wasm", &envoy::wasm_path().display().to_string());
    let (ok, log) = envoy::validate(&text).await.unwrap();
    assert!(ok, "deploy/compose/envoy.yaml:\n{log}");
}

// ---- OCI ----

#[test]
fn make_oci_writes_a_layout_with_one_layer_holding_plugin_wasm() {
    require_wasm();
    let out = std::env::temp_dir().join(format!("floodgate-oci-{}", std::process::id()));
    let status = std::process::Command::new(root().join("scripts/oci.sh"))
        .arg(envoy::wasm_path())
        .arg(&out)
        .arg("test")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let printed = String::from_utf8_lossy(&status.stdout).to_string();
    let read = |p: &Path| std::fs::read(p).unwrap();
    let blob = |d: &Value| {
        let digest = d["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
        let bytes = read(&out.join("blobs/sha256").join(&digest));
        assert_eq!(hex(&Sha256::digest(&bytes)), digest, "blob content does not match its digest");
        assert_eq!(d["size"].as_u64().unwrap() as usize, bytes.len(), "descriptor size");
        bytes
    };
    let layout: Value = serde_json::from_slice(&read(&out.join("oci-layout"))).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_slice(&read(&out.join("index.json"))).unwrap();
    let desc = &index["manifests"][0];
    assert_eq!(desc["annotations"]["org.opencontainers.image.ref.name"], "test");
    let manifest: Value = serde_json::from_slice(&blob(desc)).unwrap();
    assert!(printed.contains(desc["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap()), "{printed}");
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&blob(&layers[0])[..]).read_to_end(&mut tar_bytes).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", hex(&Sha256::digest(&tar_bytes))));
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let entries: Vec<(String, Vec<u8>)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.path().unwrap().display().to_string(), data)
        })
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "plugin.wasm");
    assert!(entries[0].1 == read(&envoy::wasm_path()), "plugin.wasm differs from the module");
    let _ = std::fs::remove_dir_all(&out);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- Grafana ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_runs_against_a_real_prometheus_fed_by_envoy() {
    require_wasm();
    let token = "dashboard-token";
    let control = ControlPlane::start(0, token, &[]).await.unwrap();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports { control: control.addr.port(), ..Ports::free(backend.addr.port()).unwrap() };
    let plugin = serde_json::json!({"defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}},
        "control": {"cluster": "floodgate_control", "token": token, "wait_s": 5, "timeout_ms": 7000, "stale_after_s": 30}});
    let config = envoy::render("control.yaml", ports, &[&plugin.to_string()]).unwrap();
    let envoy = Envoy::start(&config, ports, 2).await.unwrap();
    let prom_config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n\
         - {{job_name: envoy, metrics_path: /stats/prometheus, static_configs: [{{targets: ['{}']}}]}}\n\
         - {{job_name: floodgate-control, static_configs: [{{targets: ['{}']}}]}}\n\
         - {{job_name: collab-backend, static_configs: [{{targets: ['{}'], labels: {{breaker: collab_ws}}}}]}}\n",
        envoy.admin, control.addr, backend.addr
    );
    let prometheus = Prometheus::start(&prom_config, &[]).await.unwrap();

    // Traffic that makes every series exist: admitted upgrades, failures, a trip, refusals, an
    // activation through the API, and a webhook.
    for _ in 0..3 {
        assert!(matches!(client::upgrade(envoy.listen, "/ws").await.unwrap(), Upgrade::Open(_)));
    }
    backend.control.set_mode(Mode::FailHandshakes(503));
    for _ in 0..5 {
        let _ = client::upgrade(envoy.listen, "/ws").await.unwrap();
    }
    control.json("POST", "/api/v1/breakers/chat_ws/activate", r#"{"reason":"dashboard"}"#).await.unwrap();
    let alert = r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"Unmapped"},"annotations":{}}]}"#;
    control.call("POST", "/webhook/alertmanager", alert).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..3 {
        let _ = client::upgrade(envoy.listen, "/chat").await.unwrap();
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/floodgate.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    // Series that need a dry_run breaker have nothing to show here; they must still parse.
    let may_be_empty = |e: &str| e.contains("would_reject");
    for expr in &exprs {
        let result = eventually(Duration::from_secs(20), &format!("data for {expr}"), || async {
            let r = prometheus.query(expr).await.unwrap_or_else(|e| panic!("{expr}: {e}"));
            (may_be_empty(expr) || !r.as_array()?.is_empty()).then_some(r)
        })
        .await;
        println!("{expr} -> {} series", result.as_array().map_or(0, Vec::len));
    }
}
