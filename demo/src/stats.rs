//! Reads values out of Prometheus text exposition (`/stats/prometheus`, `/metrics`).

/// The value of the first sample of `name` whose labels include every `(label, value)` given.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, v) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let has = |k: &str, want: &str| label_text.split(',').any(|kv| kv == format!("{k}=\"{want}\""));
        if labels.iter().all(|(k, want)| has(k, want)) {
            v.parse().ok()
        } else {
            None
        }
    })
}

/// `value`, or 0 when the series does not exist yet.
pub fn value_or_zero(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(text, name, labels).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_series_by_labels() {
        let text = "# TYPE floodgate_rejected_total counter\n\
            floodgate_rejected_total{breaker=\"a\",kind=\"tcp\"} 2\n\
            floodgate_rejected_total{breaker=\"a\",kind=\"websocket\"} 7\n\
            floodgate_control_version 3\n";
        assert_eq!(value(text, "floodgate_rejected_total", &[("kind", "websocket")]), Some(7.0));
        assert_eq!(value(text, "floodgate_control_version", &[]), Some(3.0));
        assert_eq!(value(text, "floodgate_rejected_total", &[("kind", "http")]), None);
    }
}
