//! One case file from start to finish (README "How a runner uses a case file"): a fresh
//! directory, manifests with substitutions and generated objects, backends and their
//! EndpointSlices, portcullis, then setup actions and phases (actions, status entries in
//! order, cases concurrently, `after` actions). Everything started here is stopped here.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::actions;
use crate::backends::{AddressAllocator, Backends, Pod, endpoint_slices};
use crate::case::{Action, BaseManifests, CaseFile};
use crate::checks::{self, CheckContext};
use crate::manifests::{AddressPools, Manifests, ObjectKey};
use crate::mesh::MeshDirectory;
use crate::process::Portcullis;
use crate::report::{Outcome, TestResult};
use crate::skip::SkipList;
use crate::status::StatusDocument;
use crate::tls::Keyring;
use crate::traffic::{self, TrafficContext};

/// How long portcullis may take to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings shared by every case file of a run.
pub struct RunnerConfig {
    /// The `manifests/` folder of the shared conformance data.
    pub manifests_dir: PathBuf,
    /// The portcullis binary.
    pub portcullis: PathBuf,
    /// Unsupported features and tests.
    pub skip: SkipList,
    /// Multiplies the README's waiting times.
    pub timeout_scale: f64,
    /// Keep each case file's directory (config and portcullis log) and print its path.
    pub keep_dirs: bool,
    /// The generated Secrets and ConfigMaps, made once per run.
    pub generated: Vec<Value>,
}

/// Runs one case file and reports its outcome.
pub async fn run_file(case: &CaseFile, config: &RunnerConfig) -> TestResult {
    let started = Instant::now();
    let outcome = match config.skip.reason(case) {
        Some(reason) => Outcome::Skip(reason),
        None => match run_unskipped(case, config).await {
            Ok(()) => Outcome::Pass,
            Err(why) => Outcome::Fail(why),
        },
    };
    TestResult {
        name: case.name.clone(),
        outcome,
        duration: started.elapsed(),
    }
}

async fn run_unskipped(case: &CaseFile, config: &RunnerConfig) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("portcullis-conformance-{}-", case.name))
        .tempdir()
        .map_err(|e| format!("runner: temp dir: {e}"))?;
    let result = run_in(case, config, dir.path()).await;
    if config.keep_dirs {
        let kept = dir.keep();
        eprintln!("kept {} for {}", kept.display(), case.name);
    }
    result
}

async fn run_in(case: &CaseFile, config: &RunnerConfig, dir: &Path) -> Result<(), String> {
    let pools = AddressPools::standard();
    let config_dir = dir.join("config");
    let (mut manifests, backends, mesh) = prepare(case, config, &pools, &config_dir)
        .await
        .map_err(|e| format!("runner: {e:#}"))?;
    let outbound = consumer_namespace(case, &mesh)
        .map(|namespace| {
            crate::process::free_port()
                .map(|port| (SocketAddr::from((Ipv4Addr::LOCALHOST, port)), namespace))
        })
        .transpose()
        .map_err(|e| format!("runner: {e:#}"))?;
    let mut portcullis = Portcullis::start(
        &config.portcullis,
        &config_dir,
        &dir.join("portcullis.log"),
        outbound.as_ref(),
    )
    .map_err(|e| format!("runner: {e:#}"))?;
    let outcome = match portcullis.wait_ready(READY_TIMEOUT).await {
        Ok(()) => {
            let traffic = Arc::new(TrafficContext {
                admin: portcullis.admin,
                backends: backends.clone(),
                timeout_scale: config.timeout_scale,
                keyring: Arc::new(Keyring::from_objects(&config.generated)),
                mesh: Arc::new(mesh),
                outbound,
            });
            let scenario = Scenario {
                case,
                config_dir: &config_dir,
                pools: &pools,
                traffic,
            };
            // A crash explains every failure after it; say so.
            scenario
                .run(&mut manifests)
                .await
                .map_err(|why| match portcullis.exited() {
                    Some(exit) => format!("{why} [{exit}]"),
                    None => why,
                })
        }
        Err(error) => Err(format!("{error:#}")),
    };
    portcullis.stop().await;
    // Every case task has finished, so this is the last reference.
    if let Ok(backends) = Arc::try_unwrap(backends) {
        backends.shutdown().await;
    }
    outcome
}

/// A mesh case file's client namespace that owns no Service: a consumer, whose requests go
/// through an outbound proxy that knows the namespace (portcullis's explicit proxy with
/// `--workload-namespace`), so that its consumer routes apply. Clients of the Services' own
/// namespace reach ClusterIPs directly. One such namespace per case file is supported.
fn consumer_namespace(case: &CaseFile, mesh: &MeshDirectory) -> Option<String> {
    case.cases
        .iter()
        .filter_map(|c| c.client.get("namespace").and_then(|n| n.as_str()))
        .find(|namespace| !mesh.services().iter().any(|s| s.namespace == *namespace))
        .map(str::to_string)
}

/// Loads and prepares the manifests (mesh: with ClusterIPs), starts the backends and writes
/// the config directory.
async fn prepare(
    case: &CaseFile,
    config: &RunnerConfig,
    pools: &AddressPools,
    config_dir: &Path,
) -> anyhow::Result<(Manifests, Arc<Backends>, MeshDirectory)> {
    let mut manifests =
        Manifests::load(&config.manifests_dir, case.base_manifests, &case.manifests)?;
    manifests.prepare(pools);
    let mut mesh = MeshDirectory::default();
    match case.base_manifests {
        BaseManifests::Gateway => {
            for object in &config.generated {
                manifests.upsert(object.clone())?;
            }
        }
        BaseManifests::Mesh => mesh = MeshDirectory::assign(&mut manifests)?,
    }
    let pods = Pod::plan_all(&manifests, &mut AddressAllocator::new(), &mut rand::rng())?;
    // Backends read what their volumes mount: generated Secrets and ConfigMaps, or the test's.
    let mountable: Vec<Value> = ["Secret", "ConfigMap"]
        .into_iter()
        .flat_map(|kind| manifests.of_kind(kind))
        .cloned()
        .collect();
    let keyring = Keyring::from_objects(&mountable);
    let backends = Arc::new(Backends::start(pods, &keyring).await?);
    for slice in endpoint_slices(&manifests, backends.pods()) {
        manifests.upsert(slice)?;
    }
    std::fs::create_dir_all(config_dir)
        .with_context(|| format!("creating {}", config_dir.display()))?;
    manifests.write_all(config_dir)?;
    Ok((manifests, backends, mesh))
}

struct Scenario<'a> {
    case: &'a CaseFile,
    config_dir: &'a Path,
    pools: &'a AddressPools,
    traffic: Arc<TrafficContext>,
}

impl Scenario<'_> {
    async fn run(&self, manifests: &mut Manifests) -> Result<(), String> {
        self.apply_all(&self.case.setup_actions, manifests)
            .map_err(|e| format!("setup: {e}"))?;
        let phases = self.case.phase_numbers();
        let first = phases.first().copied().unwrap_or(1);
        let in_phase = |entry: Option<u32>, phase: u32| entry.unwrap_or(first) == phase;
        let mut first_soft_failure: Option<String> = None;
        for phase in phases {
            let definition = self.case.phases.iter().find(|p| p.phase == phase);
            let label = match definition {
                Some(d) => format!("phase {phase} ({}): ", d.title),
                None => String::new(),
            };
            let entries: Vec<_> = self
                .case
                .status
                .iter()
                .filter(|s| in_phase(s.phase, phase))
                .collect();

            let watched: Vec<ObjectKey> = entries
                .iter()
                .filter_map(|e| checks::generation_key(&e.check))
                .collect();
            let generations_before = self.generations(&watched).await;
            if let Some(definition) = definition {
                self.apply_all(&definition.actions, manifests)
                    .map_err(|e| format!("{label}actions: {e}"))?;
            }

            for entry in entries {
                let ctx = CheckContext {
                    manifests,
                    pools: self.pools,
                    generations_before: &generations_before,
                };
                if let Err(why) = checks::wait_for(
                    &entry.check,
                    self.traffic.admin,
                    &ctx,
                    self.traffic.timeout_scale,
                )
                .await
                {
                    let why = format!("{label}{why}{}", self.status_errors().await);
                    if checks::is_fatal(&entry.check) {
                        return Err(why);
                    }
                    first_soft_failure.get_or_insert(why);
                }
            }

            self.run_cases(phase, first, &label).await?;
            if let Some(definition) = definition {
                self.apply_all(&definition.after, manifests)
                    .map_err(|e| format!("{label}after: {e}"))?;
            }
        }
        first_soft_failure.map_or(Ok(()), Err)
    }

    /// Runs the phase's cases concurrently; the failure of the lowest id is reported.
    async fn run_cases(&self, phase: u32, first: u32, label: &str) -> Result<(), String> {
        let mut running = JoinSet::new();
        for case in self
            .case
            .cases
            .iter()
            .filter(|c| c.phase.unwrap_or(first) == phase)
        {
            let (case, traffic) = (case.clone(), self.traffic.clone());
            running.spawn(async move {
                let result = traffic::run_case(&case, &traffic).await;
                (case.id, case.name, result)
            });
        }
        let mut failures = Vec::new();
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok((id, name, Err(why))) => {
                    failures.push((id, format!("{label}case {id} ({name}): {why}")))
                }
                Ok(_) => {}
                Err(error) => failures.push((0, format!("{label}a case panicked: {error}"))),
            }
        }
        failures.sort();
        match failures.into_iter().next() {
            Some((_, why)) => Err(why),
            None => Ok(()),
        }
    }

    fn apply_all(&self, list: &[Action], manifests: &mut Manifests) -> Result<(), String> {
        for action in list {
            let touched =
                actions::apply(action, manifests, self.pools, self.traffic.backends.pods())
                    .map_err(|e| {
                        format!("{} {} {}: {e:#}", action.action, action.kind, action.name)
                    })?;
            for key in touched {
                manifests
                    .sync_file(self.config_dir, &key)
                    .map_err(|e| format!("{e:#}"))?;
            }
        }
        Ok(())
    }

    async fn generations(&self, keys: &[ObjectKey]) -> HashMap<ObjectKey, Option<i64>> {
        if keys.is_empty() {
            return HashMap::new();
        }
        let doc = StatusDocument::fetch(self.traffic.admin)
            .await
            .unwrap_or_default();
        keys.iter()
            .map(|key| {
                let full = if key.namespace.is_empty() {
                    key.name.clone()
                } else {
                    format!("{}/{}", key.namespace, key.name)
                };
                (
                    key.clone(),
                    doc.find(&key.kind, &full)
                        .and_then(|o| o.metadata.generation),
                )
            })
            .collect()
    }

    /// Config errors portcullis reports, appended to a failure: often the real cause.
    async fn status_errors(&self) -> String {
        let Ok(doc) = StatusDocument::fetch(self.traffic.admin).await else {
            return String::new();
        };
        match doc.errors.first() {
            Some(first) => format!(
                " [portcullis reports {} config error(s); first: {first}]",
                doc.errors.len()
            ),
            None => String::new(),
        }
    }
}
