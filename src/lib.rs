//! Floodgate: a proxy-wasm circuit breaker for Envoy. (Skeleton; the filter lands with issue 2.)
