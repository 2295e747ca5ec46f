//! Which upstream answers count as failures.

/// A status pattern from the config: a class (`"5xx"`) or one code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusPattern {
    Class(u8),
    Code(u16),
}

impl StatusPattern {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusPattern::Class(c) => status / 100 == u16::from(c),
            StatusPattern::Code(code) => status == code,
        }
    }

    /// `"5xx"`, `"4xx"` (any `Nxx` with N in 1..=5) or a code 100..=599 as a string.
    pub fn parse(text: &str) -> Option<StatusPattern> {
        let b = text.as_bytes();
        if b.len() == 3 && (b[1] == b'x' || b[1] == b'X') && (b[2] == b'x' || b[2] == b'X') {
            return match b[0] {
                c @ b'1'..=b'5' => Some(StatusPattern::Class(c - b'0')),
                _ => None,
            };
        }
        text.parse::<u16>().ok().and_then(StatusPattern::code)
    }

    pub fn code(code: u16) -> Option<StatusPattern> {
        (100..=599).contains(&code).then_some(StatusPattern::Code(code))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailurePolicy {
    pub statuses: Vec<StatusPattern>,
    pub ignore_statuses: Vec<StatusPattern>,
    /// Resets, connect failures and timeouts (no upstream answer) are failures.
    pub resets: bool,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy { statuses: vec![StatusPattern::Class(5)], ignore_statuses: vec![], resets: true }
    }
}

impl FailurePolicy {
    /// Whether an upstream answer with `status` is a failure. 101 and 2xx never are.
    pub fn is_failure(&self, status: u16) -> bool {
        if status == 101 || (200..300).contains(&status) {
            return false;
        }
        self.statuses.iter().any(|p| p.matches(status)) && !self.ignore_statuses.iter().any(|p| p.matches(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_5xx_only() {
        let f = FailurePolicy::default();
        assert!(f.is_failure(503) && f.is_failure(500));
        assert!(!f.is_failure(101) && !f.is_failure(200) && !f.is_failure(404) && !f.is_failure(302));
    }

    #[test]
    fn ignore_statuses_win_over_statuses() {
        let f = FailurePolicy {
            statuses: vec![StatusPattern::Class(5), StatusPattern::Code(429)],
            ignore_statuses: vec![StatusPattern::Code(501)],
            resets: false,
        };
        assert!(f.is_failure(429) && f.is_failure(502) && !f.is_failure(501));
    }

    #[test]
    fn patterns_parse_classes_and_codes() {
        assert_eq!(StatusPattern::parse("5xx"), Some(StatusPattern::Class(5)));
        assert_eq!(StatusPattern::parse("4XX"), Some(StatusPattern::Class(4)));
        assert_eq!(StatusPattern::parse("503"), Some(StatusPattern::Code(503)));
        for bad in ["6xx", "x", "", "99", "600", "5x"] {
            assert_eq!(StatusPattern::parse(bad), None, "{bad}");
        }
    }
}
