//! Where resources come from: a directory of YAML manifests watched for changes, or a
//! Kubernetes cluster ([`kube`]: watchers, the status writer and leader election).
//!
//! Stage: *sources*, the first stage. The directory source walks a tree for `*.yaml` and
//! `*.yml`, decodes each changed file with `model::decode`, and records it in a
//! `model::Store`, which keeps the last good version of a file that stops decoding. The
//! caller takes a `Snapshot` from the store only after a complete scan, so a snapshot never
//! holds half of a directory. [`watch`] turns filesystem events into "rescan" ticks once
//! the files have settled.
//!
//! Must not depend on: `translate`, `dataplane`.

pub mod kube;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use model::Store;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A directory of manifests and the store of its decoded contents.
#[derive(Debug)]
pub struct Directory {
    root: PathBuf,
    /// `root` made absolute against the working directory, as the watcher reports paths
    /// under a relative root.
    absolute_root: PathBuf,
    store: Store,
    /// Modification time and size of each file at its last read, to skip unchanged files.
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
}

/// What a rescan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Files read again because they are new or changed.
    pub changed: usize,
    /// Files that disappeared.
    pub removed: usize,
}

/// A running watch; dropping it stops the watcher.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
    /// Receives one message per debounced burst of changes.
    pub ticks: mpsc::Receiver<()>,
    /// What the events since the last [`Watch::take_changes`] named.
    changes: Arc<Mutex<Changes>>,
}

/// The paths that filesystem events named, so that a rescan reads only those instead of
/// listing and `stat`ing the whole tree (which took tens of milliseconds with a file per
/// route and 5,000 routes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Files (or directories) created, written, renamed or removed.
    pub paths: BTreeSet<PathBuf>,
    /// Events were lost or could not be attributed to paths: rescan everything.
    pub everything: bool,
}

// === impl Directory ===

impl Directory {
    /// A source for `root` (nothing is read until [`Directory::rescan`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            absolute_root: std::path::absolute(&root).unwrap_or_else(|_| root.clone()),
            root,
            store: Store::default(),
            seen: BTreeMap::new(),
        }
    }

    /// The watched directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads new and changed files and forgets deleted ones. Fails only when the root
    /// itself cannot be read; unreadable files become decode errors of that file.
    pub fn rescan(&mut self) -> io::Result<ScanReport> {
        let mut files = Vec::new();
        walk(&self.root, &mut files)?;
        let mut report = ScanReport::default();
        for path in &files {
            self.read_if_changed(path, &mut report);
        }
        let root = self.root.clone();
        self.forget_under(&root, &files, &mut report);
        Ok(report)
    }

    /// Brings the named paths up to date: files are read again when their modification
    /// time or size changed, and forgotten when they are gone. A path that is now a
    /// directory, or that was one (known files under it), is scanned whole, since a
    /// directory moved into the tree brings files that no event named. Paths outside the
    /// tree and files that are not `*.yaml` or `*.yml` are ignored, as [`Directory::rescan`]
    /// ignores them, and so are hidden files (a component starting with `.`), such as the
    /// temporary file of a write-then-rename. A hidden directory or symbolic link that
    /// changed makes it a whole rescan: a Kubernetes ConfigMap volume updates its files by
    /// swapping the hidden link `..data` that they point through, and no event names them.
    pub fn rescan_paths<'p>(
        &mut self,
        paths: impl IntoIterator<Item = &'p PathBuf>,
    ) -> io::Result<ScanReport> {
        if !std::fs::metadata(&self.root).is_ok_and(|m| m.is_dir()) {
            // The root itself went away: fail as a whole rescan does, keeping what was read.
            return self.rescan();
        }
        let mut report = ScanReport::default();
        for path in paths {
            let relative = path
                .strip_prefix(&self.root)
                .or_else(|_| path.strip_prefix(&self.absolute_root));
            let Ok(relative) = relative else {
                continue;
            };
            // Spelled as a whole rescan spells it (the key of `seen`), whichever form the
            // event used.
            let path = &self.root.join(relative);
            let hidden = relative
                .components()
                .any(|c| c.as_os_str().to_str().is_some_and(|c| c.starts_with('.')));
            if hidden {
                let linked = std::fs::symlink_metadata(path)
                    .is_ok_and(|m| m.is_dir() || m.file_type().is_symlink());
                if linked {
                    let rest = self.rescan()?;
                    report.changed += rest.changed;
                    report.removed += rest.removed;
                    return Ok(report);
                }
                continue;
            }
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    let mut files = Vec::new();
                    walk(path, &mut files)?;
                    for file in &files {
                        self.read_if_changed(file, &mut report);
                    }
                    self.forget_under(path, &files, &mut report);
                }
                Ok(_) if is_manifest(path) => self.read_if_changed(path, &mut report),
                Ok(_) => {}
                Err(_) => self.forget_under(path, &[], &mut report),
            }
        }
        Ok(report)
    }

    /// Reads a file again if its modification time or size changed since the last read.
    fn read_if_changed(&mut self, path: &Path, report: &mut ScanReport) {
        let stamp = std::fs::metadata(path)
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let Ok(stamp) = stamp else {
            return;
        };
        if self.seen.get(path) == Some(&stamp) {
            return;
        }
        let decoded = match std::fs::read_to_string(path) {
            Ok(text) => model::decode::decode_file(path, &text),
            Err(error) => Err(vec![model::decode::DecodeError {
                file: path.to_path_buf(),
                line: 0,
                path: String::new(),
                message: format!("cannot read file: {error}"),
            }]),
        };
        self.store.set_file(path, decoded);
        self.seen.insert(path.to_path_buf(), stamp);
        report.changed += 1;
    }

    /// Forgets the known files at or under `path` that are not in `present`. A set, not a
    /// search of the list per known file: a directory of a file per route holds thousands.
    fn forget_under(&mut self, path: &Path, present: &[PathBuf], report: &mut ScanReport) {
        let present: HashSet<&PathBuf> = present.iter().collect();
        let gone: Vec<PathBuf> = self
            .seen
            .range::<Path, _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
            .map(|(known, _)| known)
            .take_while(|known| known.starts_with(path))
            .filter(|known| !present.contains(known))
            .cloned()
            .collect();
        for known in gone {
            self.store.remove_file(&known);
            self.seen.remove(&known);
            report.removed += 1;
        }
    }

    /// The decoded contents.
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }
}

/// Watches `root` recursively and sends a tick when the files have settled.
///
/// A change has settled when no file is half-written: every file that was modified has
/// since been closed after writing, renamed into place or removed. Then a tick follows
/// after [`SETTLE`] without further events (enough to gather a burst such as `cp -r`). A
/// file modified but not yet closed waits for its close, or for `quiet` without events,
/// whichever comes first, so that a half-written file is not read while its writer is
/// still busy (a truncated manifest can still decode). Reads (our own rescans) are not
/// changes. The paths that changed add up until [`Watch::take_changes`] takes them.
pub fn watch(root: &Path, quiet: Duration) -> notify::Result<Watch> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Change>();
    let changes = Arc::new(Mutex::new(Changes::default()));
    let recorded = Arc::clone(&changes);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Events were dropped (a full inotify queue), or the watcher failed: only a whole
        // rescan knows what changed.
        let rescan = event
            .as_ref()
            .map_or(true, |e| e.need_rescan() || e.paths.is_empty());
        let change = match &event {
            Ok(event) if !rescan => Change::of(event),
            _ => Some(Change::Settled(Vec::new())),
        };
        {
            let mut changes = recorded.lock().unwrap_or_else(PoisonError::into_inner);
            if rescan {
                changes.everything = true;
            } else if let (Ok(event), Some(_)) = (&event, &change) {
                changes.paths.extend(event.paths.iter().cloned());
            }
        }
        if let Some(change) = change {
            // A closed receiver only means the watch is being torn down.
            let _ = raw_tx.send(change);
        }
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    // Bounded: one pending tick is enough, since the changes add up until they are taken.
    let (tick_tx, ticks) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut writing: BTreeSet<PathBuf> = BTreeSet::new();
        while let Some(change) = raw_rx.recv().await {
            change.record(&mut writing);
            loop {
                let wait = if writing.is_empty() { SETTLE } else { quiet };
                match tokio::time::timeout(wait, raw_rx.recv()).await {
                    Ok(Some(change)) => change.record(&mut writing),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // Whatever was still open is read as it is now; its close will tick again.
            writing.clear();
            if tick_tx.try_send(()).is_err() && tick_tx.is_closed() {
                return;
            }
        }
    });
    Ok(Watch {
        _watcher: watcher,
        ticks,
        changes,
    })
}

impl Watch {
    /// The paths named since the last call, and whether a whole rescan is needed. Take them
    /// after a tick: events that arrive later are kept for the next one.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// How long settled files wait for more events before the tick. Tokio's timers tick in
/// milliseconds, so this waits 1-2 ms: long enough for `cp -r`, which creates each next
/// file within microseconds of closing the last, and a millisecond of every change's
/// latency less than the 2 ms it was. A burst that pauses longer reloads twice, each time
/// with whole files.
pub const SETTLE: Duration = Duration::from_millis(1);

/// A filesystem event, as far as reloading cares.
#[derive(Debug)]
enum Change {
    /// These files are being written (created or modified, not yet closed).
    Writing(Vec<PathBuf>),
    /// These files are complete: closed after writing, renamed, removed.
    Settled(Vec<PathBuf>),
}

impl Change {
    fn of(event: &notify::Event) -> Option<Self> {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        let paths = event.paths.clone();
        match event.kind {
            EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
                Some(Self::Writing(paths))
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
            | EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Any
            | EventKind::Other => Some(Self::Settled(paths)),
            EventKind::Access(_) => None,
        }
    }

    fn record(self, writing: &mut BTreeSet<PathBuf>) {
        match self {
            Self::Writing(paths) => writing.extend(paths),
            Self::Settled(paths) => {
                for path in paths {
                    writing.remove(&path);
                }
            }
        }
    }
}

/// Whether a file is read as manifests.
fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    // The entry's type comes with the directory listing, so only symbolic links cost a
    // `stat` of their own here.
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| (e.path(), e.file_type().ok()))
        .collect();
    entries.sort_by(|(a, _), (b, _)| a.cmp(b));
    for (path, kind) in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let is_dir = match kind {
            Some(kind) if !kind.is_symlink() => kind.is_dir(),
            _ => path.is_dir(),
        };
        if is_dir {
            walk(&path, out)?;
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80}]\n";

    #[test]
    fn broken_file_keeps_its_last_good_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, SERVICE).expect("write");
        let mut source = Directory::new(dir.path());
        assert_eq!(source.rescan().expect("scan").changed, 1);
        assert_eq!(source.store().snapshot().services.len(), 1);

        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {portz: []}\n# longer\n",
        )
        .expect("write");
        source.rescan().expect("scan");
        assert_eq!(source.store().errors().len(), 1);
        assert_eq!(
            source.store().snapshot().services.len(),
            1,
            "last good copy kept"
        );

        std::fs::remove_file(&file).expect("remove");
        assert_eq!(source.rescan().expect("scan").removed, 1);
        assert!(source.store().snapshot().services.is_empty());
        assert!(source.store().errors().is_empty());
    }

    #[tokio::test]
    async fn a_closed_file_ticks_at_once_and_an_open_one_waits_for_its_close() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        // A long quiet period: only a settled change can tick before it.
        let mut watch = watch(dir.path(), Duration::from_secs(5)).expect("watch");
        let started = std::time::Instant::now();
        std::fs::write(dir.path().join("a.yaml"), SERVICE).expect("write");
        let tick = tokio::time::timeout(Duration::from_secs(4), watch.ticks.recv()).await;
        assert_eq!(
            tick.ok().flatten(),
            Some(()),
            "no tick before the quiet period"
        );
        assert!(started.elapsed() < Duration::from_secs(4));

        // Half a file, still open: no tick until it is closed.
        let mut file = std::fs::File::create(dir.path().join("b.yaml")).expect("create");
        file.write_all(&SERVICE.as_bytes()[..20]).expect("write");
        file.flush().expect("flush");
        let early = tokio::time::timeout(Duration::from_millis(500), watch.ticks.recv()).await;
        assert!(early.is_err(), "ticked while a file was half-written");
        file.write_all(&SERVICE.as_bytes()[20..]).expect("write");
        drop(file);
        let tick = tokio::time::timeout(Duration::from_secs(4), watch.ticks.recv()).await;
        assert_eq!(tick.ok().flatten(), Some(()), "the close ticks");
    }

    fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: {port}}}]\n"
        )
    }

    /// Each Service and its first port, as the store holds them.
    fn services(directory: &mut Directory) -> Vec<String> {
        let snapshot = directory.store().snapshot();
        snapshot
            .services
            .iter()
            .map(|(name, service)| {
                let port = service
                    .spec
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .map(|p| p.port)
                    .next();
                format!("{name}:{port:?}")
            })
            .collect()
    }

    #[test]
    fn reading_the_named_paths_agrees_with_a_whole_rescan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("config");
        let at = |path: &str| root.join(path);
        std::fs::create_dir_all(at("routes")).expect("mkdir");
        std::fs::write(at("a.yaml"), service("a", 80)).expect("write");
        std::fs::write(at("routes/b.yaml"), service("b", 80)).expect("write");
        let mut named = Directory::new(&root);
        named.rescan().expect("scan");
        let check = |named: &mut Directory, paths: &[PathBuf], expected: &[&str]| {
            named.rescan_paths(paths).expect("rescan paths");
            let mut whole = Directory::new(&root);
            whole.rescan().expect("scan");
            assert_eq!(services(named), services(&mut whole), "after {paths:?}");
            assert_eq!(services(named), expected, "after {paths:?}");
        };

        // Changed, added and removed files.
        std::fs::write(at("a.yaml"), service("a", 8080)).expect("write");
        std::fs::write(at("routes/c.yaml"), service("c", 80)).expect("write");
        std::fs::remove_file(at("routes/b.yaml")).expect("remove");
        let paths = [at("a.yaml"), at("routes/c.yaml"), at("routes/b.yaml")];
        check(
            &mut named,
            &paths,
            &["default/a:Some(8080)", "default/c:Some(80)"],
        );

        // Written under a hidden name, then renamed into place: only the new name counts.
        std::fs::write(at(".d.tmp"), service("d", 80)).expect("write");
        std::fs::rename(at(".d.tmp"), at("d.yaml")).expect("rename");
        let expected = [
            "default/a:Some(8080)",
            "default/c:Some(80)",
            "default/d:Some(80)",
        ];
        check(&mut named, &[at(".d.tmp"), at("d.yaml")], &expected);

        // A directory prepared outside the tree and moved in: no event names its files.
        let staging = dir.path().join("staging");
        std::fs::create_dir_all(&staging).expect("mkdir");
        std::fs::write(staging.join("e.yaml"), service("e", 80)).expect("write");
        std::fs::rename(&staging, at("more")).expect("rename");
        let expected = [
            "default/a:Some(8080)",
            "default/c:Some(80)",
            "default/d:Some(80)",
            "default/e:Some(80)",
        ];
        check(&mut named, &[at("more")], &expected);

        // A directory removed: every file under it goes.
        std::fs::remove_dir_all(at("routes")).expect("remove");
        std::fs::remove_dir_all(at("more")).expect("remove");
        let expected = ["default/a:Some(8080)", "default/d:Some(80)"];
        check(&mut named, &[at("routes"), at("more")], &expected);
    }

    #[test]
    fn a_swapped_hidden_link_rereads_the_files_behind_it() {
        // How a Kubernetes ConfigMap volume updates: the visible files are links through
        // `..data`, and an update points `..data` at a new hidden directory.
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("..v1")).expect("mkdir");
        std::fs::write(root.join("..v1/a.yaml"), service("a", 80)).expect("write");
        std::os::unix::fs::symlink("..v1", root.join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/a.yaml", root.join("a.yaml")).expect("link");
        let mut directory = Directory::new(root);
        directory.rescan().expect("scan");
        assert_eq!(services(&mut directory), ["default/a:Some(80)"]);

        std::fs::create_dir(root.join("..v2")).expect("mkdir");
        std::fs::write(root.join("..v2/a.yaml"), service("a", 8080)).expect("write");
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).expect("link");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
        let paths = [
            root.join("..v2"),
            root.join("..data_tmp"),
            root.join("..data"),
        ];
        let report = directory.rescan_paths(&paths).expect("rescan paths");
        assert_eq!(report.changed, 1);
        assert_eq!(services(&mut directory), ["default/a:Some(8080)"]);
    }

    #[tokio::test]
    async fn a_tick_comes_with_the_paths_that_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut watch = watch(dir.path(), Duration::from_millis(50)).expect("watch");
        std::fs::write(dir.path().join("b.yaml"), SERVICE).expect("write");
        let tick = tokio::time::timeout(Duration::from_secs(10), watch.ticks.recv()).await;
        assert_eq!(tick.ok().flatten(), Some(()));
        let changes = watch.take_changes();
        assert!(!changes.everything);
        assert!(
            changes.paths.contains(&dir.path().join("b.yaml")),
            "{changes:?}"
        );
        assert_eq!(watch.take_changes(), Changes::default(), "taken once");
    }

    #[tokio::test]
    async fn a_relative_root_reads_the_paths_its_watch_names() {
        // `run --config examples/basic`: the watcher may name paths in absolute form.
        let dir = tempfile::tempdir().expect("tempdir");
        let here = std::env::current_dir().expect("cwd");
        let up: PathBuf = here.components().skip(1).map(|_| "..").collect();
        let root = up.join(dir.path().strip_prefix("/").expect("absolute tempdir"));
        assert!(root.is_relative());
        let mut directory = Directory::new(&root);
        directory.rescan().expect("scan");
        let mut watch = watch(&root, Duration::from_millis(50)).expect("watch");
        std::fs::write(root.join("a.yaml"), service("a", 80)).expect("write");
        let tick = tokio::time::timeout(Duration::from_secs(10), watch.ticks.recv()).await;
        assert_eq!(tick.ok().flatten(), Some(()));
        let changes = watch.take_changes();
        let report = directory
            .rescan_paths(&changes.paths)
            .expect("rescan paths");
        assert_eq!(report.changed, 1, "{changes:?}");
        assert_eq!(services(&mut directory), ["default/a:Some(80)"]);
        // Known by the name a whole rescan gives it, so that a rescan finds nothing new.
        assert_eq!(directory.rescan().expect("scan"), ScanReport::default());
    }
}
