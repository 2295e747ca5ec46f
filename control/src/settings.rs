//! Configuration: an optional TOML file, then the environment (which wins).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::engine::Rules;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<String>,
    pub token: Option<String>,
    /// May only poll `GET /v1/snapshot` (the token proxy configs carry).
    pub poll_token: Option<String>,
    /// May only post the webhook (the token Alertmanager carries).
    pub webhook_token: Option<String>,
    /// `false` disables auth explicitly (never in production).
    pub auth: Option<bool>,
    pub redis_url: Option<String>,
    pub cooldown_s: Option<u64>,
    pub deactivation_delay_s: Option<u64>,
    pub max_activations_per_hour: Option<u32>,
    pub max_active_s: Option<u64>,
    pub activate_level: Option<f64>,
    pub deactivate_level: Option<f64>,
    pub key_label: Option<String>,
    /// Alert name -> reason; replaces the defaults when given.
    pub alerts: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub poll_token: Option<String>,
    pub webhook_token: Option<String>,
    pub redis_url: Option<String>,
    pub rules: Rules,
    pub key_label: String,
    pub alerts: BTreeMap<String, String>,
}

pub fn default_alerts() -> BTreeMap<String, String> {
    [
        ("CollaborationBackpressureCritical", "backpressure_critical"),
        ("WebSocketConnectionsCritical", "websocket_exhaustion"),
        ("RedisPubSubCritical", "redis_saturation"),
        ("OTQueueOverflowCritical", "ot_queue_overflow"),
        ("CollaborationMemoryCritical", "memory_critical"),
    ]
    .into_iter()
    .map(|(a, r)| (a.to_string(), r.to_string()))
    .collect()
}

fn env_num<T: std::str::FromStr>(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<T>, String> {
    match env(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| format!("{name}: not a valid number: {v:?}")),
    }
}

/// The longest `max_active_s` (30 days).
pub const MAX_ACTIVE_S: u64 = 30 * 24 * 3600;

/// `env` is the environment lookup (a parameter so tests need not touch the process environment).
/// A variable set to the empty string counts as unset: it never overrides the config file.
pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>, no_auth: bool) -> Result<Settings, String> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let env: &dyn Fn(&str) -> Option<String> = &env;
    let f: FileSettings = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => FileSettings::default(),
    };
    let d = Rules::default();
    let listen_text = env("FLOODGATE_LISTEN").or(f.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = listen_text.parse().map_err(|_| format!("listen: not an address: {listen_text:?}"))?;
    let auth = !no_auth && f.auth.unwrap_or(true);
    // Trimmed as presented tokens are (`Bearer  x ` is checked as `x`): a token configured with
    // a stray space or newline would otherwise match nothing.
    let tok =
        |name: &str, file: Option<String>| env(name).or(file).map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    let token = tok("FLOODGATE_TOKEN", f.token);
    let poll_token = tok("FLOODGATE_POLL_TOKEN", f.poll_token);
    let webhook_token = tok("FLOODGATE_WEBHOOK_TOKEN", f.webhook_token);
    if auth && token.is_none() {
        return Err("FLOODGATE_TOKEN (or `token` in the config file) is required; \
                    disable auth explicitly with --no-auth or `auth = false`"
            .into());
    }
    for (name, t) in [("FLOODGATE_POLL_TOKEN", &poll_token), ("FLOODGATE_WEBHOOK_TOKEN", &webhook_token)] {
        if t.is_some() && *t == token {
            return Err(format!(
                "{name}: must differ from FLOODGATE_TOKEN (a scoped token that equals the admin token has no scope)"
            ));
        }
    }
    if poll_token.is_some() && poll_token == webhook_token {
        return Err("FLOODGATE_POLL_TOKEN: must differ from FLOODGATE_WEBHOOK_TOKEN (every proxy config \
                    carries the poll token: it must not post alerts)"
            .into());
    }
    let secs = |env_name: &str, file: Option<u64>, default_ms: u64| -> Result<u64, String> {
        Ok(env_num::<u64>(env, env_name)?.or(file).map(|s| s.saturating_mul(1000)).unwrap_or(default_ms))
    };
    let rules = Rules {
        cooldown_ms: secs("FLOODGATE_COOLDOWN_S", f.cooldown_s, d.cooldown_ms)?,
        deactivation_delay_ms: secs("FLOODGATE_DEACTIVATION_DELAY_S", f.deactivation_delay_s, d.deactivation_delay_ms)?,
        max_activations_per_hour: env_num(env, "FLOODGATE_MAX_ACTIVATIONS_PER_HOUR")?
            .or(f.max_activations_per_hour)
            .unwrap_or(d.max_activations_per_hour),
        max_active_ms: secs("FLOODGATE_MAX_ACTIVE_S", f.max_active_s, d.max_active_ms)?,
        activate_level: f.activate_level.unwrap_or(d.activate_level),
        deactivate_level: f.deactivate_level.unwrap_or(d.deactivate_level),
    };
    if rules.max_active_ms == 0 || rules.max_active_ms > MAX_ACTIVE_S * 1000 {
        return Err(format!("max_active_s: from 1 to {MAX_ACTIVE_S} (30 days)"));
    }
    for (name, ms) in [("cooldown_s", rules.cooldown_ms), ("deactivation_delay_s", rules.deactivation_delay_ms)] {
        if ms > MAX_ACTIVE_S * 1000 {
            return Err(format!("{name}: at most {MAX_ACTIVE_S} (30 days)"));
        }
    }
    if !(rules.deactivate_level <= rules.activate_level && rules.activate_level <= 1.0 && rules.deactivate_level >= 0.0)
    {
        return Err("activate_level/deactivate_level: need 0 <= deactivate_level <= activate_level <= 1".into());
    }
    let alerts = f.alerts.unwrap_or_else(default_alerts);
    for (name, reason) in &alerts {
        if reason.is_empty() || reason.len() > 128 {
            return Err(format!("alerts.{name}: the reason must be 1 to 128 bytes"));
        }
    }
    Ok(Settings {
        listen,
        token: if auth { token } else { None },
        poll_token: if auth { poll_token } else { None },
        webhook_token: if auth { webhook_token } else { None },
        redis_url: env("FLOODGATE_REDIS_URL").or(f.redis_url).filter(|u| !u.is_empty()),
        rules,
        key_label: f.key_label.unwrap_or_else(|| "breaker".into()),
        alerts,
    })
}
