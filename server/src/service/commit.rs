//! Group commit: concurrent writes share one database transaction and one
//! commit (one fsync), each inside its own savepoint, and each is
//! acknowledged only after that commit.
//!
//! A write takes its turn on the open batch (beginning one when there is
//! none), runs between `SAVEPOINT` and `RELEASE` (or `ROLLBACK TO`, when it
//! fails: its writes vanish, the batch goes on), and then either commits
//! the batch — when nobody else is queued for a turn, or the batch is full
//! — or leaves it open for the writes queued behind it and waits for the
//! commit. The next batch opens while the previous one commits. If the
//! commit fails, every write of the batch fails with a retryable error and
//! runs again in a new batch; a write whose caller went away mid-turn
//! poisons its batch (rolled back, members retried), so a half-run write is
//! never committed.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, watch};

use crate::domain::{Error, Result};
use crate::store::{Store, Tx};

/// Writes per batch at most.
const MAX_BATCH: usize = 128;

/// How a batch ended.
#[derive(Debug, Clone)]
enum Outcome {
    Committed,
    /// Failed or rolled back; its members run again.
    Failed(String),
}

type Done = Arc<watch::Sender<Option<Outcome>>>;

struct Batch {
    tx: Box<dyn Tx>,
    members: usize,
    done: Done,
    /// When it began (for the debug line on commit).
    opened: std::time::Instant,
}

/// See the module documentation.
pub struct Committer {
    store: Arc<dyn Store>,
    slot: Mutex<Option<Batch>>,
    queued: Arc<AtomicUsize>,
}

/// Counts a write queued for its turn until dropped.
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One write's turn on the open batch.
pub struct Turn<'a> {
    committer: &'a Committer,
    slot: Option<MutexGuard<'a, Option<Batch>>>,
}

impl Committer {
    /// Group commit over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            slot: Mutex::new(None),
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for a turn on the open batch (beginning one when there is
    /// none) and marks a savepoint.
    pub async fn turn(&self) -> Result<Turn<'_>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(self.queued.clone());
        let mut slot = self.slot.lock().await;
        drop(queued);
        if slot.is_none() {
            *slot = Some(Batch {
                tx: self.store.begin().await?,
                members: 0,
                done: Arc::new(watch::Sender::new(None)),
                opened: std::time::Instant::now(),
            });
        }
        let mut turn = Turn {
            committer: self,
            slot: Some(slot),
        };
        if let Err(e) = turn.batch().tx.savepoint().await {
            turn.poison(&e);
            return Err(e);
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
    fn poison(&mut self, why: &Error) {
        if let Some(batch) = self.slot.as_mut().and_then(|s| s.take()) {
            batch.done.send_replace(Some(Outcome::Failed(format!(
                "the batch this write was part of was rolled back ({why}); retry"
            ))));
            // Dropping the transaction rolls it back.
        }
        self.slot = None;
    }

    /// Ends this write's turn with its result: keeps or undoes its writes,
    /// commits the batch or leaves it to the writes queued behind, and
    /// returns the result once it is durable (or the error at once).
    pub async fn finish<T>(mut self, result: Result<T>) -> Result<T> {
        let kept = match &result {
            Ok(_) => self.batch().tx.release_savepoint().await,
            Err(_) => self.batch().tx.rollback_to_savepoint().await,
        };
        if let Err(e) = kept {
            self.poison(&e);
            return Err(e);
        }
        let batch = self.batch();
        if result.is_ok() {
            batch.members += 1;
        }
        let done = batch.done.clone();
        let mut outcome = done.subscribe();
        let full = batch.members >= MAX_BATCH;
        let mut slot = self.slot.take().expect("a turn holds the slot");
        if full || self.committer.queued.load(Ordering::Acquire) == 0 {
            commit(&mut slot);
        }
        drop(slot);
        let value = result?;
        // Wait for the batch's outcome. Should the writes queued behind
        // have gone away without committing it, take it over.
        loop {
            if let Some(o) = outcome.borrow_and_update().clone() {
                return match o {
                    Outcome::Committed => Ok(value),
                    Outcome::Failed(m) => Err(Error::Aborted(m)),
                };
            }
            tokio::select! {
                r = outcome.changed() => {
                    if r.is_err() {
                        return Err(Error::Aborted("the batch was dropped; retry".into()));
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(2)) => {
                    let mut slot = self.committer.slot.lock().await;
                    if slot.as_ref().is_some_and(|b| Arc::ptr_eq(&b.done, &done))
                        && self.committer.queued.load(Ordering::Acquire) == 0
                    {
                        commit(&mut slot);
                    }
                }
            }
        }
    }
}

/// Takes the open batch out of the slot (the next write begins a new one)
/// and commits it in a task of its own, so a caller that goes away cannot
/// stop a commit halfway; its members learn the outcome.
fn commit(slot: &mut MutexGuard<'_, Option<Batch>>) {
    let Some(batch) = slot.take() else { return };
    if batch.members == 0 {
        batch.done.send_replace(Some(Outcome::Committed));
        return;
    }
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let outcome = match batch.tx.commit().await {
            Ok(()) => {
                // For benchmarks: batch sizes and commit (fsync) times.
                tracing::debug!(
                    writes = batch.members,
                    open_us = started.duration_since(batch.opened).as_micros() as u64,
                    commit_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
                Outcome::Committed
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = batch.members, "committing a batch failed; its writes are retried");
                Outcome::Failed(format!("committing failed ({e}); retry"))
            }
        };
        batch.done.send_replace(Some(outcome));
    });
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Still holding the slot: the write stopped mid-turn (its caller
        // went away), so the batch may hold half of it.
        if self.slot.is_some() {
            self.poison(&Error::Aborted("a write was cancelled mid-way".into()));
        }
    }
}
