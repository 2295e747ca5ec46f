# Deployment files checked by the real tools: promtool (config, rules, rule unit tests), amtool,
# Envoy (Istio pieces, compose config), a real Prometheus for the Grafana queries.
TEST_TARGETS += test-deploy
.PHONY: test-deploy oci
test-deploy: wasm
	scripts/deps.sh envoy prometheus
	cd deploy/prometheus && promtool check config prometheus.yml && promtool test rules tests/*.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	cargo build -p floodgate-control
	cargo test -p floodgate-tests --test deploy

# An OCI image layout of floodgate.wasm for Istio's oci:// URLs (prints the digest for sha256).
oci: wasm
	scripts/oci.sh
