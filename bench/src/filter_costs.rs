//! Reads `bench/results/filter.md`, which `make bench-filter` writes (harness/src/bin/bench-filter.rs):
//! the filter's exact cost per request on each path, in wasm instructions and host calls.

use std::path::Path;

/// The row of a `shed: all` request the breaker admits.
pub const SHED_ALL_ADMITTED: &str = "plain request, `shed: all`, closed, admitted";
/// The row of an upgrade the open breaker refuses.
pub const UPGRADE_REFUSED: &str = "upgrade, open, refused (503 local reply)";

/// One path's cost per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathCost {
    pub path: String,
    pub instructions: u64,
    pub host_calls: u32,
}

/// What filter.md says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterCosts {
    /// The file without its title line, as the report quotes it.
    pub body: String,
    pub paths: Vec<PathCost>,
    /// "Linear memory after these requests", if given.
    pub memory_kib: Option<u64>,
}

impl FilterCosts {
    pub fn read(file: &Path) -> std::io::Result<FilterCosts> {
        Ok(FilterCosts::parse(&std::fs::read_to_string(file)?))
    }

    pub fn parse(text: &str) -> FilterCosts {
        let body: Vec<&str> = text.lines().skip(1).collect();
        let paths = text.lines().filter_map(path_cost).collect();
        let memory_kib = text
            .lines()
            .find_map(|l| l.strip_prefix("Linear memory after these requests: ")?.strip_suffix(" KiB.")?.parse().ok());
        FilterCosts { body: body.join("\n"), paths, memory_kib }
    }

    pub fn path(&self, path: &str) -> Option<&PathCost> {
        self.paths.iter().find(|p| p.path == path)
    }
}

/// A table row `| path | instructions | host calls | ... |` (then the target and the calls by
/// kind); None for any other line.
fn path_cost(line: &str) -> Option<PathCost> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    let cells: Vec<&str> = inner.split('|').map(str::trim).collect();
    let [path, instructions, host_calls, _, ..] = cells.as_slice() else { return None };
    Some(PathCost {
        path: path.to_string(),
        instructions: instructions.parse().ok()?,
        host_calls: host_calls.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Filter cost per request (harness, deterministic)

Counted by `make bench-filter` in the wasmtime harness.

| path | wasm instructions | host calls | by call |
|---|---:|---:|---|
| plain request, `shed: websocket` (not guarded) | 1390 | 2 | get_header_map_value×2 |
| plain request, `shed: all`, closed, admitted | 11908 | 10 | get_current_time_nanoseconds×2, get_header_map_value×3 |
| upgrade, open, refused (503 local reply) | 14309 | 7 | send_local_response×1 |

Linear memory after these requests: 1088 KiB.
";

    #[test]
    fn reads_each_path_s_counts() {
        let f = FilterCosts::parse(SAMPLE);
        assert_eq!(f.paths.len(), 3);
        let admitted = f.path(SHED_ALL_ADMITTED).unwrap_or_else(|| panic!("no row in {:?}", f.paths));
        assert_eq!((admitted.instructions, admitted.host_calls), (11908, 10));
        let refused = f.path(UPGRADE_REFUSED).unwrap_or_else(|| panic!("no row in {:?}", f.paths));
        assert_eq!((refused.instructions, refused.host_calls), (14309, 7));
        assert_eq!(f.memory_kib, Some(1088));
    }

    #[test]
    fn the_body_is_the_file_without_its_title() {
        let f = FilterCosts::parse(SAMPLE);
        assert!(f.body.starts_with("\nCounted by"));
        assert!(!f.body.contains("# Filter cost"));
        assert!(f.body.ends_with("Linear memory after these requests: 1088 KiB."));
    }

    #[test]
    fn reads_the_committed_file() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/filter.md");
        let f = FilterCosts::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for path in [SHED_ALL_ADMITTED, UPGRADE_REFUSED] {
            let p = f.path(path).unwrap_or_else(|| panic!("{path} missing from {}", file.display()));
            assert!(p.instructions > 0 && p.host_calls > 0);
        }
    }

    #[test]
    fn rows_with_a_target_column_are_read_too() {
        let row = "| upgrade, open, refused (503 local reply) | 5021 | 6 | ≤ 6000, ≤ 6 | send_local_response×1 |";
        assert_eq!(path_cost(row).map(|p| (p.instructions, p.host_calls)), Some((5021, 6)));
    }

    #[test]
    fn other_lines_are_not_rows() {
        assert_eq!(path_cost("| path | wasm instructions | host calls | by call |"), None);
        assert_eq!(path_cost("|---|---:|---:|---|"), None);
        assert_eq!(path_cost("Counted by `make bench-filter`"), None);
    }
}
