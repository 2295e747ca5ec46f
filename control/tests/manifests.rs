//! The shipped manifests, compose file and demo use the scoped tokens: proxies carry the
//! poll-only token, Alertmanager the webhook-only one, and floodgate-control is given both.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

fn repo(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value after `name:` on its line.
fn yaml_value(text: &str, name: &str) -> String {
    let line =
        text.lines().find(|l| l.trim_start().starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("{name}"));
    line.split_once(':').unwrap().1.trim().trim_matches('"').to_string()
}

#[test]
fn compose_gives_envoy_the_poll_token_and_alertmanager_the_webhook_token() {
    let compose = repo("docker-compose.yml");
    let poll = yaml_value(&compose, "FLOODGATE_POLL_TOKEN");
    let webhook = yaml_value(&compose, "FLOODGATE_WEBHOOK_TOKEN");
    let admin = yaml_value(&compose, "FLOODGATE_TOKEN");
    assert!(poll != admin && webhook != admin && poll != webhook);
    assert!(repo("deploy/compose/envoy.yaml").contains(&format!(r#""token": "{poll}""#)));
    assert_eq!(repo("deploy/compose/floodgate-token").trim(), webhook);
    assert!(compose.contains("./deploy/compose/floodgate-token:/etc/alertmanager/floodgate-token"));
}

#[test]
fn kubernetes_manifests_use_the_scoped_tokens() {
    let control = repo("deploy/istio/floodgate-control.yaml");
    for env in ["FLOODGATE_TOKEN", "FLOODGATE_POLL_TOKEN", "FLOODGATE_WEBHOOK_TOKEN"] {
        assert!(control.contains(&format!("- name: {env}\n")), "{env}");
    }
    for proxy in [
        "deploy/istio/wasmplugin.yaml",
        "deploy/istio/wasmplugin-gateway.yaml",
        "deploy/istio/envoyfilter.yaml",
        "deploy/envoy-gateway/envoyextensionpolicy.yaml",
    ] {
        let text = repo(proxy);
        assert!(text.contains("replace-with-the-floodgate-control-poll-token"), "{proxy} carries the poll token");
        assert!(!text.contains("replace-with-the-floodgate-control-token"), "{proxy} must not carry the admin token");
    }
    assert!(repo("deploy/alertmanager/alertmanager.yml").contains("webhook-only token"));
}

#[test]
fn the_demo_gives_envoy_the_poll_token_and_alertmanager_the_webhook_token() {
    let demo = repo("demo/src/main.rs");
    assert!(demo.contains(r#""token": POLL_TOKEN"#));
    assert!(demo.contains("Alertmanager::start(&control.webhook_url(), WEBHOOK_TOKEN)"));
    assert!(demo.contains(r#"("FLOODGATE_POLL_TOKEN", POLL_TOKEN)"#));
}
