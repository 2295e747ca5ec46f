# Deployment files checked by the real tools: promtool (config, rules, rule unit tests), amtool.
TEST_TARGETS += test-deploy
.PHONY: test-deploy
test-deploy:
	scripts/deps.sh prometheus
	cd deploy/prometheus && promtool check config prometheus.yml && promtool test rules tests/*.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
