//! Group commit: concurrent writes share one database transaction and one
//! commit (one fsync), each inside its own savepoint, and each is
//! acknowledged only after that commit.
//!
//! A write takes its turn on the open batch (beginning one when there is
//! none), runs after a `SAVEPOINT` and ends with `RELEASE` plus a new
//! `SAVEPOINT` for the next write, in one round trip (or with `ROLLBACK TO`,
//! when it fails: its writes vanish, the mark stays, the batch goes on), and
//! then either commits
//! the batch — when nobody else is queued for a turn, the batch has had
//! [`MAX_TURNS`] turns, or it has been open for [`MAX_AGE`] — or leaves it
//! open for the writes queued behind it and waits for the commit. The next
//! batch opens while the previous one commits.
//!
//! A batch never depends on a caller to be closed: a background task (the
//! closer) commits a batch left open when the writes queued behind it went
//! away, or when it grows old. Commits run in tasks of their own, so a
//! caller that goes away cannot stop one halfway. A write whose caller went
//! away mid-turn poisons its batch: rolled back, its other writes retried,
//! so a half-run write is never committed.
//!
//! Lock order: a batch first takes the event log's append lock
//! ([`crate::store::Tx::lock_log`]); its writes then lock networks and rows.
//! Every write transaction takes locks in that order, so batches of
//! different replicas cannot deadlock: on PostgreSQL, batches are
//! serialised cluster-wide, each one amortising its commit over its writes.
//!
//! A transaction body must not itself take a turn or use the store's small
//! writes outside the transaction: it would wait for its own batch.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard, Notify, watch};

use crate::domain::{Error, Result};
use crate::store::{Store, Tx};

/// Turns (successful or not) per batch at most.
pub const MAX_TURNS: usize = 128;

/// How long a batch stays open for writes queued behind it, at most. A
/// write alone on its replica never waits for it (a batch commits as soon
/// as nobody is queued), though on PostgreSQL a write of another replica
/// may wait for a batch that is open (the log lock is cluster-wide); under
/// load, a longer batch spreads its fixed cost (begin, the
/// log lock's wait for the previous commit, writing the events, the
/// commit) over more writes: PostgreSQL Register at 64 callers ran
/// 1,310–1,330/s with 20 ms against 1,020–1,140/s with 10 ms (BENCHMARKS).
pub const MAX_AGE: Duration = Duration::from_millis(20);

/// How a batch ended.
#[derive(Debug, Clone)]
enum Outcome {
    Committed,
    /// Rolled back or refused: its writes may run again.
    Retry,
    /// The commit was sent but its answer was lost: the writes may or may
    /// not be durable, so they must not run again blindly.
    Unknown,
}

struct Batch {
    tx: Box<dyn Tx>,
    /// Turns taken, failed ones included.
    turns: usize,
    /// A savepoint is marked for the next write.
    marked: bool,
    /// Writes to acknowledge after the commit.
    members: usize,
    opened: Instant,
    done: watch::Sender<Option<Outcome>>,
}

struct Inner {
    store: Arc<dyn Store>,
    slot: Mutex<Option<Batch>>,
    queued: AtomicUsize,
    /// Wakes the closer.
    kick: Notify,
    commits: AtomicU64,
    writes: AtomicU64,
    /// The highest revision a committed batch appended.
    committed: Arc<AtomicU64>,
    max_age: Duration,
}

/// See the module documentation.
pub struct Committer {
    inner: Arc<Inner>,
}

/// Counts a write queued for its turn until dropped; a write that gives up
/// waiting wakes the closer, which commits a batch nobody else will.
struct Queued<'a>(&'a Inner);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.0.queued.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.kick.notify_one();
        }
    }
}

/// One write's turn on the open batch.
pub struct Turn<'a> {
    inner: &'a Inner,
    slot: Option<MutexGuard<'a, Option<Batch>>>,
}

impl Committer {
    /// Group commit over `store`; starts the closer task (it ends when the
    /// committer is dropped).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_max_age(store, MAX_AGE)
    }

    /// [`Committer::new`] with batches kept open at most `max_age`.
    pub fn with_max_age(store: Arc<dyn Store>, max_age: Duration) -> Self {
        let inner = Arc::new(Inner {
            store,
            slot: Mutex::new(None),
            queued: AtomicUsize::new(0),
            kick: Notify::new(),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            committed: Arc::new(AtomicU64::new(0)),
            max_age,
        });
        tokio::spawn(closer(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Commits so far and writes they acknowledged (for tests and
    /// benchmarks: writes / commits is the mean batch size).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.commits.load(Ordering::Relaxed),
            self.inner.writes.load(Ordering::Relaxed),
        )
    }

    /// The highest revision appended by a batch committed so far: after a
    /// write was acknowledged, it is at least that write's own revision. It
    /// may name an append a rollback to a savepoint undid (a revision not
    /// yet in the log), so use it only to skip a read, never to wait for one.
    pub fn committed(&self) -> u64 {
        self.inner.committed.load(Ordering::Acquire)
    }

    /// Waits for a turn on the open batch (beginning one when there is
    /// none) and marks a savepoint.
    pub async fn turn(&self) -> Result<Turn<'_>> {
        let inner = &*self.inner;
        inner.queued.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(inner);
        let mut slot = inner.slot.lock().await;
        drop(queued);
        if slot.is_none() {
            let mut tx = inner.store.begin().await?;
            tx.lock_log().await?;
            *slot = Some(Batch {
                tx,
                turns: 0,
                marked: false,
                members: 0,
                opened: Instant::now(),
                done: watch::Sender::new(None),
            });
        }
        let mut turn = Turn {
            inner,
            slot: Some(slot),
        };
        // A batch's first write marks the savepoint; each write's end leaves
        // one for the next (see `finish`).
        if !turn.batch().marked {
            if let Err(e) = turn.batch().tx.savepoint().await {
                turn.poison();
                return Err(e);
            }
            turn.batch().marked = true;
        }
        Ok(turn)
    }
}

impl Turn<'_> {
    fn batch(&mut self) -> &mut Batch {
        self.slot
            .as_mut()
            .and_then(|s| s.as_mut())
            .expect("a turn holds an open batch")
    }

    /// The batch's transaction, for this write's loads and writes.
    pub fn tx(&mut self) -> &mut dyn Tx {
        &mut *self.batch().tx
    }

    /// Ends the batch without committing: its members run again.
    fn poison(&mut self) {
        if let Some(batch) = self.slot.as_mut().and_then(|s| s.take()) {
            tracing::debug!(
                writes = batch.members,
                "batch rolled back; its writes are retried"
            );
            batch.done.send_replace(Some(Outcome::Retry));
            // Dropping the transaction rolls it back.
        }
        self.slot = None;
    }

    /// Ends this write's turn with its result: keeps or undoes its writes,
    /// commits the batch or leaves it to the writes queued behind, and
    /// returns the result once it is durable (or the error at once).
    pub async fn finish<T>(mut self, result: Result<T>) -> Result<T> {
        let kept = match &result {
            Ok(_) => self.batch().tx.keep_and_mark().await,
            Err(_) => self.batch().tx.rollback_to_savepoint().await,
        };
        if let Err(e) = kept {
            self.poison();
            return Err(e);
        }
        let inner = self.inner;
        let batch = self.batch();
        batch.turns += 1;
        if result.is_ok() {
            batch.members += 1;
        }
        let mut outcome = batch.done.subscribe();
        let mut slot = self.slot.take().expect("a turn holds the slot");
        if due(inner, &slot) {
            commit(inner, &mut slot);
        } else {
            // Left open for the writes queued behind: the closer commits it
            // should they all go away, or when it is old.
            inner.kick.notify_one();
        }
        drop(slot);
        let value = result?;
        let ended = match outcome.wait_for(Option::is_some).await {
            Ok(o) => o.clone(),
            // The batch was dropped without an outcome (a commit task
            // panicked): nothing was committed.
            Err(_) => Some(Outcome::Retry),
        };
        match ended {
            Some(Outcome::Committed) => Ok(value),
            Some(Outcome::Unknown) => Err(Error::Unavailable(
                "the database connection was lost while committing; the write may or may not \
                 have been saved: read it back before retrying"
                    .into(),
            )),
            _ => Err(Error::Aborted(
                "the batch this write was part of was rolled back; retry".into(),
            )),
        }
    }
}

/// Whether the open batch should be committed now.
fn due(inner: &Inner, slot: &Option<Batch>) -> bool {
    slot.as_ref().is_some_and(|b| {
        inner.queued.load(Ordering::Acquire) == 0
            || b.turns >= MAX_TURNS
            || b.opened.elapsed() >= inner.max_age
    })
}

/// Takes the open batch out of the slot (the next write begins a new one)
/// and commits it in a task of its own; its members learn the outcome.
fn commit(inner: &Inner, slot: &mut MutexGuard<'_, Option<Batch>>) {
    let Some(batch) = slot.take() else { return };
    if batch.members == 0 {
        // Nothing to keep: dropping the transaction rolls it back.
        batch.done.send_replace(Some(Outcome::Committed));
        return;
    }
    inner.commits.fetch_add(1, Ordering::Relaxed);
    inner
        .writes
        .fetch_add(batch.members as u64, Ordering::Relaxed);
    let inner_committed = inner.committed.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let appended = batch.tx.appended();
        let outcome = match batch.tx.commit().await {
            Ok(()) => {
                inner_committed.fetch_max(appended, Ordering::AcqRel);
                // For benchmarks (unary_bench reads it): batch sizes and
                // commit (fsync) times.
                tracing::debug!(
                    writes = batch.members,
                    open_us = started.duration_since(batch.opened).as_micros() as u64,
                    commit_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
                Outcome::Committed
            }
            Err(Error::Unavailable(_)) => {
                tracing::error!(
                    writes = batch.members,
                    "the database connection was lost while committing a batch; its outcome is \
                     unknown"
                );
                Outcome::Unknown
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = batch.members, "committing a batch failed; its writes are retried");
                Outcome::Retry
            }
        };
        batch.done.send_replace(Some(outcome));
    });
}

/// Commits batches nobody else will: left open for writes that then gave
/// up waiting, or open longer than [`MAX_AGE`].
async fn closer(inner: Weak<Inner>) {
    while let Some(inner) = inner.upgrade() {
        let open = inner.slot.try_lock().map(|s| s.is_some()).unwrap_or(true);
        // With a batch open, look again soon: it may be waiting for writes
        // that went away, or growing old.
        let wait = if open {
            inner.max_age
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = inner.kick.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        let mut slot = inner.slot.lock().await;
        if due(&inner, &slot) {
            commit(&inner, &mut slot);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Still holding the slot: the write stopped mid-turn (its caller
        // went away), so the batch may hold half of it.
        if self.slot.is_some() {
            self.poison();
        }
    }
}

#[cfg(test)]
mod tests;
