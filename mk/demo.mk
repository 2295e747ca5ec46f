# make demo: the whole loop on this machine (Envoy, floodgate-control on Redis, Prometheus,
# Alertmanager, a WebSocket backend and client load), printed as a timeline.
.PHONY: demo
demo: wasm
	scripts/deps.sh envoy redis prometheus
	cargo build -q -p floodgate-control -p floodgate-demo
	cargo run -q -p floodgate-demo
