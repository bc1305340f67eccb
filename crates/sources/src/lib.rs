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

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use model::Store;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A directory of manifests and the store of its decoded contents.
#[derive(Debug)]
pub struct Directory {
    root: PathBuf,
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
}

// === impl Directory ===

impl Directory {
    /// A source for `root` (nothing is read until [`Directory::rescan`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
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
            let stamp = std::fs::metadata(path)
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            let stamp = match stamp {
                Ok(stamp) => stamp,
                Err(_) => continue,
            };
            if self.seen.get(path) == Some(&stamp) {
                continue;
            }
            let decoded = match std::fs::read_to_string(path) {
                Ok(text) => model::decode::decode_file(path, &text),
                Err(error) => Err(vec![model::decode::DecodeError {
                    file: path.clone(),
                    line: 0,
                    path: String::new(),
                    message: format!("cannot read file: {error}"),
                }]),
            };
            self.store.set_file(path, decoded);
            self.seen.insert(path.clone(), stamp);
            report.changed += 1;
        }
        let gone: Vec<_> = self
            .seen
            .keys()
            .filter(|p| !files.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.store.remove_file(&path);
            self.seen.remove(&path);
            report.removed += 1;
        }
        Ok(report)
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
/// changes.
pub fn watch(root: &Path, quiet: Duration) -> notify::Result<Watch> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Change>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if let Some(change) = Change::of(&event) {
            // A closed receiver only means the watch is being torn down.
            let _ = raw_tx.send(change);
        }
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    // Bounded: one pending tick is enough, since a tick means "rescan everything".
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
    })
}

/// How long settled files wait for more events before the tick.
pub const SETTLE: Duration = Duration::from_millis(2);

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

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
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

    #[tokio::test]
    async fn watch_ticks_after_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut watch = watch(dir.path(), Duration::from_millis(50)).expect("watch");
        std::fs::write(dir.path().join("b.yaml"), SERVICE).expect("write");
        let tick = tokio::time::timeout(Duration::from_secs(10), watch.ticks.recv()).await;
        assert_eq!(tick.ok().flatten(), Some(()));
    }
}
