//! Group commit on a real (SQLite) store: batching, a failed write undone
//! without its batch, cancellation at a turn, and batches closed by the
//! closer when nobody else would.

use std::sync::{Arc, atomic::Ordering};
use std::time::Duration;

use super::{Committer, Queued};
use crate::domain::{Error, Result, names::DnsLabel, network::Network};
use crate::store::{Store, sqlite::SqliteStore};

async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    (dir, store)
}

fn network(name: &str, i: u32) -> Network {
    let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    Network {
        name: DnsLabel::parse("name", name, DnsLabel::LABEL_MAX).unwrap(),
        range4: Some(format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap()),
        range6: None,
        keepalive: 25,
        mtu: 1420,
        listen_port: 51821,
        ext_client_dns: vec![],
        nameservers: vec![],
        create_time: t,
        update_time: t,
    }
}

/// One write through the committer: inserts network `name`, then fails
/// when `fail`.
async fn write(c: &Committer, name: &str, i: u32, fail: bool) -> Result<()> {
    let mut turn = c.turn().await?;
    let r = async {
        turn.tx().insert_network(&network(name, i)).await?;
        if fail {
            return Err(Error::FailedPrecondition("refused".into()));
        }
        Ok(())
    }
    .await;
    turn.finish(r).await
}

async fn exists(s: &Arc<dyn Store>, name: &str) -> bool {
    s.get_network(name).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_every_one_lands() {
    let (_d, s) = store().await;
    let c = Arc::new(Committer::new(s.clone()));
    let tasks: Vec<_> = (0..64u32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { write(&c, &format!("n{i}"), i, false).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for i in 0..64 {
        assert!(
            exists(&s, &format!("n{i}")).await,
            "n{i} acknowledged but missing"
        );
    }
    let (commits, writes) = c.stats();
    assert_eq!(writes, 64);
    assert!(
        commits < 64,
        "{commits} commits for 64 concurrent writes: no batching"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_undone_and_its_batch_goes_on() {
    let (_d, s) = store().await;
    let c = Arc::new(Committer::new(s.clone()));
    let tasks: Vec<_> = (0..20u32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { (i, write(&c, &format!("n{i}"), i, i % 2 == 1).await) })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i % 2 == 1 {
            assert!(matches!(r, Err(Error::FailedPrecondition(_))), "{i}: {r:?}");
            assert!(
                !exists(&s, &format!("n{i}")).await,
                "n{i} failed but was kept"
            );
        } else {
            r.unwrap();
            assert!(exists(&s, &format!("n{i}")).await);
        }
    }
}

/// Waits until `n` writes are queued for a turn.
async fn until_queued(c: &Committer, n: usize) {
    while c.inner.queued.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cancelled_mid_turn_is_never_committed_and_its_batch_is_retried() {
    let (_d, s) = store().await;
    // Batches never age out here: the order below decides.
    let c = Arc::new(Committer::with_max_age(s.clone(), Duration::from_secs(60)));
    // A finishes while B is queued, so it waits for the batch B joins.
    let mut a_turn = c.turn().await.unwrap();
    a_turn.tx().insert_network(&network("a", 1)).await.unwrap();
    let b = {
        let c = c.clone();
        tokio::spawn(async move {
            // B inserts, then never finishes: its caller gives up.
            tokio::time::timeout(Duration::from_millis(200), async {
                let mut t = c.turn().await.unwrap();
                t.tx().insert_network(&network("half", 2)).await.unwrap();
                std::future::pending::<()>().await;
            })
            .await
        })
    };
    until_queued(&c, 1).await;
    let a = a_turn.finish(Ok(())).await;
    assert!(b.await.unwrap().is_err(), "B timed out");
    // B poisoned the batch A waited on: A is told to retry, and neither
    // write is there.
    assert!(matches!(a, Err(Error::Aborted(_))), "{a:?}");
    assert!(!exists(&s, "a").await);
    assert!(!exists(&s, "half").await);
    // The next write gets a fresh batch.
    write(&c, "after", 3, false).await.unwrap();
    assert!(exists(&s, "after").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_left_for_writes_that_gave_up_is_committed_by_the_closer() {
    let (_d, s) = store().await;
    let c = Committer::with_max_age(s.clone(), Duration::from_secs(60));
    let mut turn = c.turn().await.unwrap();
    turn.tx().insert_network(&network("a", 1)).await.unwrap();
    // Someone is queued when A finishes, so A leaves the batch open …
    c.inner.queued.fetch_add(1, Ordering::AcqRel);
    let gave_up = Queued(&c.inner);
    let finished = turn.finish(Ok(()));
    let giving_up = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        // … and then gives up without taking a turn.
        drop(gave_up);
    };
    let (r, ()) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(finished, giving_up)
    })
    .await
    .expect("the closer commits the batch");
    r.unwrap();
    assert!(exists(&s, "a").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_batch_is_committed_even_while_writes_stay_queued() {
    let (_d, s) = store().await;
    let c = Committer::with_max_age(s.clone(), Duration::from_millis(50));
    let mut turn = c.turn().await.unwrap();
    turn.tx().insert_network(&network("a", 1)).await.unwrap();
    // A write that stays queued for ever (in a real server: a stream of
    // writes that never lets the queue empty).
    c.inner.queued.fetch_add(1, Ordering::AcqRel);
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), turn.finish(Ok(())))
        .await
        .expect("committed by age")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert!(exists(&s, "a").await);
}
