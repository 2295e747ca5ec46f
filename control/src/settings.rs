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

/// `env` is the environment lookup (a parameter so tests need not touch the process environment).
pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>, no_auth: bool) -> Result<Settings, String> {
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
    let token = env("FLOODGATE_TOKEN").or(f.token).filter(|t| !t.is_empty());
    if auth && token.is_none() {
        return Err("FLOODGATE_TOKEN (or `token` in the config file) is required; \
                    disable auth explicitly with --no-auth or `auth = false`"
            .into());
    }
    let secs = |env_name: &str, file: Option<u64>, default_ms: u64| -> Result<u64, String> {
        Ok(env_num::<u64>(env, env_name)?.or(file).map(|s| s * 1000).unwrap_or(default_ms))
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
    if rules.max_active_ms == 0 {
        return Err("max_active_s: must be at least 1".into());
    }
    if !(rules.deactivate_level <= rules.activate_level && rules.activate_level <= 1.0 && rules.deactivate_level >= 0.0)
    {
        return Err("activate_level/deactivate_level: need 0 <= deactivate_level <= activate_level <= 1".into());
    }
    Ok(Settings {
        listen,
        token: if auth { token } else { None },
        redis_url: env("FLOODGATE_REDIS_URL").or(f.redis_url).filter(|u| !u.is_empty()),
        rules,
        key_label: f.key_label.unwrap_or_else(|| "breaker".into()),
        alerts: f.alerts.unwrap_or_else(default_alerts),
    })
}
