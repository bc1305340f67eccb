//! `portcullis-conformance`: runs the Gateway API conformance suite, translated to data in
//! `shared/conformance` (see its README), against the built `portcullis` binary.
//!
//! This is the last stage of the pipeline's tests: it treats *sources → snapshot → translate →
//! data plane* as one black box and tests the binary from outside. For each case file it
//! writes the manifests (with the README's substitutions, generated certificates and
//! EndpointSlices) into a fresh directory, starts in-process echo backends on loopback
//! addresses, runs `portcullis run --config DIR --admin ADDR --address-pool 127.0.100.0/24`,
//! then performs the phases: edits the YAML files (portcullis hot-reloads), polls
//! `GET /status` for the status checks and sends the traffic cases to the Gateway addresses
//! that status reports.
//!
//! It must not depend on the library crates (`model`, `ir`, `translate`, `dataplane`,
//! `sources`): it sees only files, the admin API and sockets, like a user would.
//!
//! Output is one `PASS`/`FAIL`/`SKIP` line per test and a summary; `--report` writes the same
//! as JSON. With `--floor-file`, the run fails only when fewer tests pass than the floor.
//!
//! The work happens in the `conformance` library (a library only so that test targets can
//! drive the echo backend and client): modules, in the order a case file flows through them,
//! are `case` (format), `skip`, `manifests` (mesh files: ClusterIPs and names via `mesh`),
//! `certs`, `backends` (with `mounts`, `echo` and its `ws_echo`, `grpc_echo`, `tcp_echo` and
//! `mesh_echo`), `process`, `actions`, `status` and `checks`, `traffic`, `client`, `expect`,
//! `batches`, `grpc_cases` (on the wire via `grpc`), `stream_cases`, `websocket_cases` and
//! `mesh_cases`, then `report`; `runner` ties one case file together.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use regex::Regex;

use conformance::case::CaseFile;
use conformance::report::{self, Outcome, Summary, TestResult};
use conformance::runner::{self, RunnerConfig};
use conformance::{certs, process, skip};

/// Runs the Gateway API conformance cases against the portcullis binary.
#[derive(Debug, Parser)]
#[command(name = "portcullis-conformance", version)]
struct Cli {
    /// The `manifests/` folder of the shared conformance data.
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
    /// The `cases/` folder of the shared conformance data.
    #[arg(long, value_name = "DIR")]
    cases: PathBuf,
    /// Run only tests whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    filter: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The portcullis binary [default: `portcullis` next to this executable].
    #[arg(long, value_name = "PATH")]
    portcullis: Option<PathBuf>,
    /// Skip list to use instead of the built-in `crates/conformance/skip.yaml`.
    #[arg(long, value_name = "FILE")]
    skip_list: Option<PathBuf>,
    /// File holding the minimum number of passing tests; with it, failures alone do not fail
    /// the run.
    #[arg(long, value_name = "FILE")]
    floor_file: Option<PathBuf>,
    /// Multiplies the README's waiting times (status polls, eventual consistency). Values
    /// below 1 make failing runs faster but are not faithful to upstream.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    timeout_scale: f64,
    /// Keep each test's directory (written config and portcullis.log) and print its path.
    #[arg(long)]
    keep_dirs: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("portcullis-conformance: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let filter = cli
        .filter
        .as_deref()
        .map(Regex::new)
        .transpose()
        .context("--filter")?;
    let floor = cli
        .floor_file
        .as_deref()
        .map(report::read_floor)
        .transpose()?;
    let portcullis = match cli.portcullis {
        Some(path) => path,
        None => process::default_binary()?,
    };
    let config = RunnerConfig {
        manifests_dir: cli.manifests,
        portcullis,
        skip: skip::SkipList::load(cli.skip_list.as_deref())?,
        timeout_scale: cli.timeout_scale.max(0.01),
        keep_dirs: cli.keep_dirs,
        generated: certs::generated_objects().context("generating certificates")?,
    };

    let mut results = Vec::new();
    for path in case_files(&cli.cases)? {
        let case = match CaseFile::load(&path) {
            Ok(case) => case,
            Err(error) => {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if filter.as_ref().is_none_or(|f| f.is_match(&name)) {
                    results.push(report_line(TestResult {
                        name,
                        outcome: Outcome::Fail(format!("case file: {error:#}")),
                        duration: std::time::Duration::ZERO,
                    }));
                }
                continue;
            }
        };
        if filter.as_ref().is_some_and(|f| !f.is_match(&case.name)) {
            continue;
        }
        results.push(report_line(runner::run_file(&case, &config).await));
    }

    let summary = Summary::of(&results);
    println!("{}", summary.line());
    if let Some(path) = &cli.report {
        report::write_json(path, &results)?;
    }
    if let Some(floor) = floor {
        // With a floor, failures do not fail the run, so repeat them where they are seen.
        let failures: Vec<String> = results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .map(TestResult::line)
            .collect();
        if !failures.is_empty() {
            println!("failures:\n  {}", failures.join("\n  "));
        }
        if summary.passed < floor {
            println!(
                "below the floor: {} passed, the floor is {floor}",
                summary.passed
            );
        } else if summary.passed > floor {
            println!("above the floor ({floor}): raise it to {}", summary.passed);
        }
    }
    Ok(if summary.success(floor) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report_line(result: TestResult) -> TestResult {
    println!("{}", result.line());
    result
}

/// Every `*.yaml` in the cases folder, sorted by name.
fn case_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}
