//! Limits that protect the process from its clients: how many connections it serves at once,
//! and HTTP/2 clients that open streams only to cancel them ("rapid reset", CVE-2023-44487).
//!
//! The connection limit is a semaphore that every accept loop takes a slot from before it
//! accepts. At the limit the loops stop accepting: new connections wait in the kernel's
//! listen backlog (and are refused by it when that is full) until a served connection ends,
//! so the process never holds more sockets than the limit, whatever clients do.
//!
//! hyper's HTTP/2 server already bounds streams that are reset before the server accepted
//! them. A stream that was accepted and then cancelled by its client costs us the work the
//! request started (a route lookup, an upstream request); a client that does only that can
//! keep a worker busy for free. Like Envoy's premature-reset check, a connection is closed
//! once it has opened at least [`PREMATURE_RESET_MIN_STREAMS`] streams and at least half of
//! them were cancelled within [`PREMATURE_RESET_WINDOW`] of being opened.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Streams a connection must have opened before its cancellations are judged, so that a
/// client that cancels a few calls is never cut off.
pub(crate) const PREMATURE_RESET_MIN_STREAMS: u32 = 500;

/// A stream cancelled by its client sooner than this after it was opened counts as a
/// premature reset.
pub(crate) const PREMATURE_RESET_WINDOW: Duration = Duration::from_secs(1);

/// The process-wide connection limit, shared by every accept loop.
pub(crate) struct ConnectionSlots {
    semaphore: Arc<Semaphore>,
    open: Gauge,
}

/// One served connection's slot; dropping it frees the slot.
pub(crate) struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    open: Gauge,
}

impl ConnectionSlots {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit.clamp(1, Semaphore::MAX_PERMITS))),
            open: Gauge::default(),
        }
    }

    /// The gauge of connections being served, for the metrics registry.
    pub(crate) fn open_gauge(&self) -> Gauge {
        self.open.clone()
    }

    /// Waits for a free slot. Cancel-safe: a dropped wait takes nothing.
    pub(crate) async fn acquire(&self) -> Slot {
        // Only a closed semaphore fails, and this one is never closed.
        let permit = Arc::clone(&self.semaphore).acquire_owned().await.ok();
        self.open.inc();
        Slot {
            _permit: permit,
            open: self.open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Watches one HTTP connection's streams for premature resets.
#[derive(Default)]
pub(crate) struct ResetWatch {
    opened: AtomicU32,
    premature: AtomicU32,
    tripped: Notify,
}

/// One stream (request) of a watched connection. Call [`Stream::finished`] when its response
/// is produced; dropped before that, the client cancelled it.
pub(crate) struct Stream {
    watch: Arc<ResetWatch>,
    opened: Instant,
    finished: bool,
}

impl ResetWatch {
    /// A stream was opened.
    pub(crate) fn open(self: &Arc<Self>) -> Stream {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Stream {
            watch: Arc::clone(self),
            opened: Instant::now(),
            finished: false,
        }
    }

    /// Resolves once the connection has reset too many streams too early.
    pub(crate) async fn tripped(&self) {
        self.tripped.notified().await;
    }

    fn cancelled_early(&self) {
        let premature = self.premature.fetch_add(1, Ordering::Relaxed) + 1;
        let opened = self.opened.load(Ordering::Relaxed);
        if opened >= PREMATURE_RESET_MIN_STREAMS && premature.saturating_mul(2) >= opened {
            // `notify_one` keeps the wake-up if the connection is not waiting yet.
            self.tripped.notify_one();
        }
    }
}

impl Stream {
    /// The stream's response was produced.
    pub(crate) fn finished(mut self) {
        self.finished = true;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.finished && self.opened.elapsed() < PREMATURE_RESET_WINDOW {
            self.watch.cancelled_early();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trips_only_when_half_of_enough_streams_were_cancelled_early() {
        let watch = Arc::new(ResetWatch::default());
        // Many finished streams and a few cancelled ones: never trips.
        for _ in 0..600 {
            watch.open().finished();
        }
        for _ in 0..100 {
            drop(watch.open());
        }
        let quiet = tokio::time::timeout(Duration::from_millis(20), watch.tripped()).await;
        assert!(quiet.is_err(), "tripped with 100 of 700 streams cancelled");
        // Cancel until half are: trips.
        for _ in 0..600 {
            drop(watch.open());
        }
        let tripped = tokio::time::timeout(Duration::from_millis(20), watch.tripped()).await;
        assert!(tripped.is_ok(), "700 of 1300 cancelled did not trip");
    }

    #[tokio::test]
    async fn a_full_limit_holds_the_next_connection_until_one_ends() {
        let slots = ConnectionSlots::new(2);
        let first = slots.acquire().await;
        let _second = slots.acquire().await;
        assert_eq!(slots.open.get(), 2);
        let waiting = tokio::time::timeout(Duration::from_millis(20), slots.acquire()).await;
        assert!(waiting.is_err(), "a third slot was handed out");
        drop(first);
        let third = tokio::time::timeout(Duration::from_millis(20), slots.acquire()).await;
        assert!(third.is_ok(), "a freed slot was not handed out");
        assert_eq!(slots.open.get(), 2);
    }
}
