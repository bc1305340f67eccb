//! `portcullis run`: the control loop that keeps the data plane in step with the directory
//! (or, with `--kube`, the cluster: see [`kube`]).
//!
//! Each round: read the files that the watcher named (or, after lost events, rescan the
//! directory for changed files), take a snapshot, translate (or, when only HTTPRoutes
//! changed, patch the previous config and compute status once changes pause), hand the
//! config to the data plane. Addresses the data plane cannot bind are fed back into the
//! next translation (so the Gateway reports `Programmed=False AddressNotUsable`). A file
//! that stops decoding keeps its last good version, so a typo never takes routes away.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use sources::Directory;
use tokio::sync::watch;

mod kube;

use crate::RunArgs;
use crate::admin::{self, AdminState};
use crate::status::{self, Stamper};

/// How long a file that is being written (modified, not yet closed) may go without events
/// before it is read anyway; complete changes reload after `sources::SETTLE`.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Two runtimes: the data plane's, which serves traffic on `--workers` threads (one thread:
/// tokio's single-threaded scheduler, which measured 25% more requests per second than its
/// work-stealing one with one worker, in bench/compare.py), and the control loop's on the
/// main thread (file watch or Kubernetes watchers, translation, status, the admin server),
/// so that translating a large config never holds up a request.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get);
    let mut data = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let data = data
        .enable_all()
        .thread_name("portcullis-data")
        .build()
        .context("cannot start the data plane's runtime")?;
    let serving = data.handle().clone();
    // A single-threaded runtime runs only while a thread blocks on it: this one, until the
    // control loop ends.
    let (done, until_done) = tokio::sync::oneshot::channel::<()>();
    let data_thread = std::thread::Builder::new()
        .name("portcullis-data".into())
        .spawn(move || {
            data.block_on(async {
                let _ = until_done.await;
            });
        })
        .context("cannot start the data plane's thread")?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let outcome = control.block_on(serve(args, serving));
    drop(control);
    let _ = done.send(());
    if data_thread.join().is_err() {
        tracing::error!("the data plane's thread panicked");
    }
    outcome
}

/// Binds a listener that the data plane serves: its socket belongs to the serving runtime.
fn bind_serving(
    serving: &tokio::runtime::Handle,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    let _serving = serving.enter();
    tokio::net::TcpListener::from_std(socket)
}

async fn serve(args: RunArgs, serving: tokio::runtime::Handle) -> anyhow::Result<ExitCode> {
    let mut directory = match &args.config {
        Some(root) => {
            let mut directory = Directory::new(root);
            directory
                .rescan()
                .with_context(|| format!("cannot read config directory {}", root.display()))?;
            Some(directory)
        }
        None => None,
    };

    let dataplane = dataplane::Dataplane::new(dataplane::Options {
        rate_limit_redis: args.rate_limit_redis.clone(),
        external_auth_timeout: args.external_auth_timeout,
        load_balancer: args.load_balancer.into(),
        header_read_timeout: args.header_read_timeout,
        max_connections: args.max_connections,
        http2_max_concurrent_streams: args.http2_max_concurrent_streams,
        drain_timeout: args.drain_timeout,
        tracing: args
            .otlp_endpoint
            .clone()
            .map(|endpoint| dataplane::TracingOptions {
                endpoint,
                sample_ratio: args.otlp_sample_ratio,
                service_name: args.otlp_service_name.clone(),
            }),
        runtime: Some(serving.clone()),
        ..dataplane::Options::default()
    });
    let (state_tx, state_rx) = watch::channel(Arc::new(AdminState::default()));
    let admin = admin::serve(args.admin, state_rx.clone(), dataplane.clone())
        .await
        .with_context(|| format!("cannot listen on admin address {}", args.admin))?;
    let outbound = dataplane::OutboundSettings {
        namespace: args.workload_namespace.clone(),
        resolve: args.resolve.iter().cloned().collect(),
    };
    if let Some(addr) = args.outbound {
        let socket = bind_serving(&serving, addr)
            .with_context(|| format!("cannot listen on outbound address {addr}"))?;
        tracing::info!(%addr, namespace = %outbound.namespace, "transparent outbound listener");
        dataplane.serve_outbound(socket, outbound.clone());
    }
    if let Some(addr) = args.egress_proxy {
        let socket = bind_serving(&serving, addr)
            .with_context(|| format!("cannot listen on egress proxy address {addr}"))?;
        tracing::info!(%addr, namespace = %outbound.namespace, "egress proxy listener");
        dataplane.serve_egress_proxy(socket, outbound);
    }

    let mut control = Control {
        options: args.translate.translate_options(),
        dataplane: dataplane.clone(),
        stamper: Arc::default(),
        state: state_tx,
        reloads: 0,
        rejected_reloads: 0,
        status_writer: None,
        provisioning: None,
        last: None,
        patched_reloads: 0,
        verify_patches: args.verify_patches,
        pending: None,
        settling: None,
        generation: 0,
        finished: 0,
    };
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    match (&mut directory, &args.config) {
        (Some(directory), Some(root)) => {
            tracing::info!(admin = %admin, config = %root.display(), "portcullis started");
            serve_directory(directory, &mut control, stop).await?;
        }
        _ => {
            tracing::info!(admin = %admin, "portcullis started in Kubernetes mode");
            kube::serve(&args.kube, &mut control, stop).await?;
        }
    }
    tracing::info!("shutting down; draining in-flight requests");
    control.state.send_modify(|state| {
        let mut draining = AdminState::clone(state);
        draining.ready = false;
        *state = Arc::new(draining);
    });
    dataplane.shutdown(args.drain_timeout).await;
    Ok(ExitCode::SUCCESS)
}

/// Reloads whenever the directory changes, until `stop` completes.
async fn serve_directory(
    directory: &mut Directory,
    control: &mut Control,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let root = directory.root().to_path_buf();
    let mut watch = sources::watch(&root, DEBOUNCE)
        .with_context(|| format!("cannot watch {}", root.display()))?;
    control.reconcile_directory(directory).await?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            tick = watch.ticks.recv() => {
                if tick.is_none() {
                    break;
                }
                let changes = watch.take_changes();
                let scanned = if changes.everything {
                    directory.rescan()
                } else {
                    directory.rescan_paths(&changes.paths)
                };
                match scanned {
                    Ok(report) if report.changed == 0 && report.removed == 0 => continue,
                    Ok(_) => control.reconcile_directory(directory).await?,
                    Err(error) => tracing::warn!(%error, "cannot rescan the config directory"),
                }
            }
            () = settle_timer(control.settle_at()) => control.settle(),
            translation = settled(&mut control.settling) => control.settled(translation),
            () = &mut stop => break,
        }
    }
    Ok(())
}

/// Completes at `at`, never without one.
async fn settle_timer(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Completes when the status translation in `settling` does, never without one.
async fn settled(
    settling: &mut Option<Settling>,
) -> Result<translate::Translation, tokio::task::JoinError> {
    match settling {
        Some(settling) => (&mut settling.task).await,
        None => std::future::pending().await,
    }
}

/// Frees a large value (a previous config, a status of thousands of resources) on a
/// blocking thread: tens of thousands of frees would otherwise delay the next reload.
fn drop_elsewhere<T: Send + 'static>(value: T) {
    tokio::task::spawn_blocking(move || drop(value));
}

fn signal(kind: tokio::signal::unix::SignalKind) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("cannot install signal handler")
}

/// The state carried between reloads.
struct Control {
    options: translate::Options,
    dataplane: dataplane::Dataplane,
    /// When each condition last changed; `/status` reads it too.
    stamper: Arc<Mutex<Stamper>>,
    state: watch::Sender<Arc<AdminState>>,
    reloads: u64,
    rejected_reloads: u64,
    /// Kubernetes mode: where status goes besides `/status`.
    status_writer: Option<sources::kube::StatusWriter>,
    /// Kubernetes mode with provisioning: what each Gateway's pods run.
    provisioning: Option<translate::provision::ProvisionOptions>,
    /// The snapshot and config last applied, which the next change may patch.
    last: Option<(Arc<model::Snapshot>, Arc<ir::Config>)>,
    /// Reloads served by a patch of the previous config.
    patched_reloads: u64,
    /// `--verify-patches`.
    verify_patches: bool,
    /// Patched reloads whose status is not computed yet: the latest one's inputs.
    pending: Option<Pending>,
    /// The status translation of earlier patched reloads, running on a blocking thread.
    settling: Option<Settling>,
    /// Reloads so far, counting rejected ones: what a status belongs to.
    generation: u64,
    /// The reload whose status `/status` and the status writer show.
    finished: u64,
}

/// The inputs of a status computation deferred after patched reloads.
struct Pending {
    snapshot: Arc<model::Snapshot>,
    errors: Vec<model::decode::DecodeError>,
    warnings: Vec<model::decode::Warning>,
    /// The first patched reload since status was last computed.
    since: Instant,
    /// The latest.
    changed: Instant,
    /// `Control::generation` of the latest.
    generation: u64,
}

/// A deferred status translation in progress. The control loop goes on meanwhile: a route
/// changed during it is patched and served at once, not after it (26 ms at 5,000 routes on
/// the CI machine).
struct Settling {
    inputs: Pending,
    /// What it translates with.
    options: translate::Options,
    started: Instant,
    task: tokio::task::JoinHandle<translate::Translation>,
}

/// How long changes must pause before the status of patched reloads is computed.
const STATUS_QUIET: Duration = Duration::from_millis(100);

/// The longest the status of a patched reload waits, however often routes change.
const STATUS_LAG: Duration = Duration::from_secs(1);

impl Control {
    /// Translates the directory's current contents and applies the result.
    async fn reconcile_directory(&mut self, directory: &mut Directory) -> anyhow::Result<()> {
        let store = directory.store();
        let snapshot = store.snapshot();
        let errors = store.errors();
        let warnings = store.warnings();
        self.reconcile(&snapshot, &errors, &warnings).await
    }

    /// Translates a snapshot and applies the result: data plane, admin state and, in
    /// Kubernetes mode, the status writer. Fails only with `--verify-patches`, when a
    /// patched config turns out different from the full translation.
    ///
    /// A change of HTTPRoutes only is served from the previous config, patched: at 5,000
    /// routes the full translation is most of a change's time to be served (13-20 ms against
    /// 2-3 ms for a patch on the CI machine). Status (condition times, the Kubernetes status
    /// writer, `/status`) needs the full translation; it is deferred until the changes pause
    /// ([`STATUS_QUIET`], at most [`STATUS_LAG`]; see [`Control::settle`]), so that a burst
    /// of changes is not held up by translations whose status the next change replaces.
    async fn reconcile(
        &mut self,
        snapshot: &Arc<model::Snapshot>,
        errors: &[model::decode::DecodeError],
        warnings: &[model::decode::Warning],
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        for error in errors {
            tracing::warn!(%error, "manifest rejected; its last good version stays in use");
        }
        self.reloads += 1;
        self.generation += 1;
        if !errors.is_empty() {
            self.rejected_reloads += 1;
        }
        if let Some(config) = self.patch(snapshot).await {
            let served = started.elapsed();
            self.last = Some((Arc::clone(snapshot), Arc::clone(&config)));
            let now = Instant::now();
            let pending = Pending {
                snapshot: Arc::clone(snapshot),
                errors: errors.to_vec(),
                warnings: warnings.to_vec(),
                since: self.pending.as_ref().map_or(now, |p| p.since),
                changed: now,
                generation: self.generation,
            };
            if self.verify_patches {
                // The full translation that status needs is the one to compare with.
                let translation = translate::translate(snapshot, &self.options);
                if let Some(difference) = translate::difference(&config, &translation.config) {
                    anyhow::bail!(
                        "a patched config differs from the full translation: {difference}"
                    );
                }
                self.pending = None;
                let options = self.options.clone();
                self.finish(pending, translation, options, config, started, served);
                return Ok(());
            }
            self.pending = Some(pending);
            // The status shown stays the last settled one until the deferred translation.
            self.state.send_modify(|state| {
                let mut next = AdminState::clone(state);
                next.config = config;
                next.reloads = self.reloads;
                next.rejected_reloads = self.rejected_reloads;
                next.last_served_seconds = served.as_secs_f64();
                next.patched_reloads = self.patched_reloads;
                *state = Arc::new(next);
            });
            tracing::info!(
                errors = errors.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "config patched"
            );
            return Ok(());
        }
        // Unusable addresses are rediscovered every round, so an address that becomes
        // bindable later (or leaves the spec) is picked up.
        self.options.unusable_addresses.clear();
        let mut translation = translate::translate(snapshot, &self.options);
        let config = self.apply(snapshot, &mut translation).await;
        let served = started.elapsed();
        self.last = Some((Arc::clone(snapshot), Arc::clone(&config)));
        let now = Instant::now();
        self.pending = None;
        let inputs = Pending {
            snapshot: Arc::clone(snapshot),
            errors: errors.to_vec(),
            warnings: warnings.to_vec(),
            since: now,
            changed: now,
            generation: self.generation,
        };
        let options = self.options.clone();
        self.finish(inputs, translation, options, config, started, served);
        Ok(())
    }

    /// The config for a change of HTTPRoutes only, patched from the last one and applied;
    /// `None` when the change needs a full translation. Not while addresses are unusable,
    /// whose rediscovery needs a full round.
    async fn patch(&mut self, snapshot: &model::Snapshot) -> Option<Arc<ir::Config>> {
        let (before, previous) = self.last.as_ref()?;
        if !self.options.unusable_addresses.is_empty() {
            return None;
        }
        let config = Arc::new(translate::patch(before, previous, snapshot, &self.options)?);
        // The same addresses as the previous config, all bound: nothing new to bind.
        let failures = self.dataplane.apply(config.clone()).await;
        if !failures.is_empty() {
            return None;
        }
        self.patched_reloads += 1;
        Some(config)
    }

    /// When the deferred status of patched reloads is due: once changes have paused for
    /// [`STATUS_QUIET`], or [`STATUS_LAG`] after the first of them; not while an earlier
    /// one is being computed.
    fn settle_at(&self) -> Option<Instant> {
        if self.settling.is_some() {
            return None;
        }
        self.pending
            .as_ref()
            .map(|p| (p.changed + STATUS_QUIET).min(p.since + STATUS_LAG))
    }

    /// Starts computing the deferred status of the patched reloads, the full translation of
    /// the latest snapshot, on a blocking thread; [`Control::settled`] takes the result.
    fn settle(&mut self) {
        let Some(inputs) = self.pending.take() else {
            return;
        };
        let options = self.options.clone();
        let snapshot = Arc::clone(&inputs.snapshot);
        let with = options.clone();
        let task = tokio::task::spawn_blocking(move || translate::translate(&snapshot, &with));
        self.settling = Some(Settling {
            inputs,
            options,
            started: Instant::now(),
            task,
        });
    }

    /// Publishes a deferred status, unless a full reload since has published a newer one.
    /// Routes may have changed again meanwhile (patched and served): the status is then the
    /// one of a snapshot just before the config served, until the next one settles.
    fn settled(&mut self, translation: Result<translate::Translation, tokio::task::JoinError>) {
        let Some(settling) = self.settling.take() else {
            return;
        };
        let translation = match translation {
            Ok(translation) => translation,
            Err(error) => {
                tracing::error!(%error, "the status translation failed; status stays as it was");
                return;
            }
        };
        let Some((_, config)) = &self.last else {
            return;
        };
        if settling.inputs.generation <= self.finished {
            drop_elsewhere(translation);
            return;
        }
        let config = Arc::clone(config);
        let served = Duration::from_secs_f64(self.state.borrow().last_served_seconds);
        self.finish(
            settling.inputs,
            translation,
            settling.options,
            config,
            settling.started,
            served,
        );
    }

    /// Everything after the config is served: stamps condition times, hands status to the
    /// Kubernetes status writer, and publishes the admin state. `translated_with` is what
    /// `translation` came from.
    fn finish(
        &mut self,
        inputs: Pending,
        translation: translate::Translation,
        translated_with: translate::Options,
        config: Arc<ir::Config>,
        started: Instant,
        served: Duration,
    ) {
        let translated = started.elapsed();
        let Pending {
            snapshot,
            errors,
            warnings,
            generation,
            ..
        } = inputs;
        self.finished = generation;
        let translate::Translation {
            config: translated_config,
            status,
            allocations,
        } = translation;
        // Applied already, or the same as the patched config that was.
        drop_elsewhere(translated_config);
        self.options.allocations = allocations;
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or(jiff::Timestamp::now());
        let mut status = status;
        self.stamper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stamp(&mut status, &now.to_string());
        if let Some(writer) = &self.status_writer {
            writer.submit(status::document(&snapshot, &status, &errors, &warnings).objects);
            if let Some(provisioning) = &self.provisioning {
                let objects = translate::provision::provision(&snapshot, &status, provisioning)
                    .into_iter()
                    .flat_map(|p| [p.deployment, p.service])
                    .collect();
                writer.provision(objects);
            }
        }
        // `/config` and `/status` are rendered when asked for: building their JSON on every
        // reload cost more than translating (measured at 5,000 routes), and keeping the
        // status of every resource cost 3 MB at 5,000 routes; `/status` translates again.
        drop_elsewhere(status);
        let error_count = errors.len();
        let status = status::StatusInputs {
            snapshot,
            options: translated_with,
            times: Arc::clone(&self.stamper),
            errors,
            warnings,
        };
        let binds = config.binds.len();
        let state = AdminState {
            ready: true,
            config,
            status: Arc::new(status),
            reloads: self.reloads,
            rejected_reloads: self.rejected_reloads,
            last_reload_seconds: started.elapsed().as_secs_f64(),
            last_translate_seconds: translated.as_secs_f64(),
            last_served_seconds: served.as_secs_f64(),
            patched_reloads: self.patched_reloads,
            status_writer: self.status_writer.as_ref().map(|w| w.metrics().clone()),
        };
        drop_elsewhere(self.state.send_replace(Arc::new(state)));
        tracing::info!(
            binds,
            errors = error_count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config applied"
        );
    }

    /// Applies a full translation: binds, and retranslates while new addresses turn out
    /// unusable (each round adds at least one address to the unusable set, so this ends).
    async fn apply(
        &mut self,
        snapshot: &model::Snapshot,
        translation: &mut translate::Translation,
    ) -> Arc<ir::Config> {
        loop {
            let config = Arc::new(std::mem::take(&mut translation.config));
            let failures = self.dataplane.apply(config.clone()).await;
            let mut unusable: BTreeSet<IpAddr> = BTreeSet::new();
            for failure in &failures {
                tracing::warn!(addr = %failure.addr, error = %failure.error, "cannot bind");
                unusable.insert(failure.addr.ip());
            }
            let new: Vec<_> = unusable
                .difference(&self.options.unusable_addresses)
                .copied()
                .collect();
            if new.is_empty() {
                return config;
            }
            self.options.unusable_addresses.extend(new);
            *translation = translate::translate(snapshot, &self.options);
        }
    }
}
