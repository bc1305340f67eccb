//! Results: one line per test, the summary line, the JSON report and the exit decision.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every status entry and case passed.
    Pass,
    /// The first failing assertion.
    Fail(String),
    /// Why the test did not run.
    Skip(String),
}

/// One test's result.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// Upstream ShortName.
    pub name: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Wall-clock time the test took.
    pub duration: Duration,
}

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that were skipped.
    pub skipped: usize,
}

/// The `--report` file.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    results: Vec<JsonResult<'a>>,
    #[serde(flatten)]
    summary: Summary,
}

#[derive(Debug, Serialize)]
struct JsonResult<'a> {
    name: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    duration_ms: u128,
}

impl TestResult {
    /// `PASS name`, `FAIL name: why` or `SKIP name: why`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Pass => format!("PASS {}", self.name),
            Outcome::Fail(why) => format!("FAIL {}: {why}", self.name),
            Outcome::Skip(why) => format!("SKIP {}: {why}", self.name),
        }
    }
}

impl Summary {
    /// Counts the outcomes.
    pub fn of(results: &[TestResult]) -> Self {
        let mut summary = Self::default();
        for result in results {
            match result.outcome {
                Outcome::Pass => summary.passed += 1,
                Outcome::Fail(_) => summary.failed += 1,
                Outcome::Skip(_) => summary.skipped += 1,
            }
        }
        summary
    }

    /// `N passed, N failed, N skipped`.
    pub fn line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }

    /// With a floor, only `passed < floor` fails the run; without one, any failure does.
    pub fn success(&self, floor: Option<usize>) -> bool {
        match floor {
            Some(floor) => self.passed >= floor,
            None => self.failed == 0,
        }
    }
}

/// Writes the JSON report.
pub fn write_json(path: &Path, results: &[TestResult]) -> anyhow::Result<()> {
    let report = JsonReport {
        results: results
            .iter()
            .map(|r| {
                let (outcome, message) = match &r.outcome {
                    Outcome::Pass => ("pass", None),
                    Outcome::Fail(why) => ("fail", Some(why.as_str())),
                    Outcome::Skip(why) => ("skip", Some(why.as_str())),
                };
                JsonResult {
                    name: &r.name,
                    outcome,
                    message,
                    duration_ms: r.duration.as_millis(),
                }
            })
            .collect(),
        summary: Summary::of(results),
    };
    let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Reads the floor: a file holding one integer.
pub fn read_floor(path: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} must hold one integer", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, outcome: Outcome) -> TestResult {
        TestResult {
            name: name.into(),
            outcome,
            duration: Duration::from_millis(5),
        }
    }

    #[test]
    fn lines_and_summary() {
        let results = vec![
            result("A", Outcome::Pass),
            result("B", Outcome::Fail("status 404, want [200]".into())),
            result("C", Outcome::Skip("TLS: issue 4".into())),
        ];
        let lines: Vec<String> = results.iter().map(TestResult::line).collect();
        assert_eq!(
            lines,
            [
                "PASS A",
                "FAIL B: status 404, want [200]",
                "SKIP C: TLS: issue 4"
            ]
        );
        let summary = Summary::of(&results);
        assert_eq!(summary.line(), "1 passed, 1 failed, 1 skipped");
        assert!(!summary.success(None));
        assert!(summary.success(Some(1)));
        assert!(!summary.success(Some(2)));
    }

    #[test]
    fn the_json_report_lists_every_test() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("report.json");
        write_json(
            &path,
            &[
                result("A", Outcome::Pass),
                result("B", Outcome::Skip("x".into())),
            ],
        )
        .expect("written");
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(value["passed"], 1);
        assert_eq!(value["skipped"], 1);
        assert_eq!(value["results"][1]["message"], "x");
    }
}
