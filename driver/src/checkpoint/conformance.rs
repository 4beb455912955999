//! One conformance suite, run against every checkpoint store implementation.

use std::sync::Arc;

use super::*;
use sluice_kafka::offsets::{OffsetRange, PartitionOffsets};
use sluice_testkit::EtcdServer;

async fn key_value_semantics(store: Arc<dyn CheckpointStore>) {
    assert_eq!(store.get("/a/missing").await.unwrap(), None);
    assert_eq!(store.last("/a/").await.unwrap(), None);
    store
        .put_all(vec![
            ("/a/2".into(), "two".into()),
            ("/a/1".into(), "one".into()),
            ("/b/1".into(), "other".into()),
        ])
        .await
        .unwrap();
    assert_eq!(store.get("/a/1").await.unwrap().as_deref(), Some("one"));
    let listed = store.list("/a/").await.unwrap();
    assert_eq!(
        listed,
        vec![("/a/1".into(), "one".into()), ("/a/2".into(), "two".into())]
    );
    assert_eq!(
        store.last("/a/").await.unwrap(),
        Some(("/a/2".into(), "two".into()))
    );
    store
        .put_all(vec![("/a/1".into(), "uno".into())])
        .await
        .unwrap();
    assert_eq!(store.get("/a/1").await.unwrap().as_deref(), Some("uno"));
    store.delete_range("/a/", "/a/2").await.unwrap();
    assert_eq!(store.get("/a/1").await.unwrap(), None);
    assert_eq!(store.get("/a/2").await.unwrap().as_deref(), Some("two"));
    assert_eq!(store.get("/b/1").await.unwrap().as_deref(), Some("other"));
    // A create-only write writes an absent key and leaves an existing one as it is.
    assert!(store.put_new("/c/1", "first".into()).await.unwrap());
    assert!(!store.put_new("/c/1", "second".into()).await.unwrap());
    assert_eq!(store.get("/c/1").await.unwrap().as_deref(), Some("first"));
}

fn plan(batch_id: i64, start: i64, end: i64) -> BatchPlan {
    let ranges = vec![OffsetRange {
        topic: "t".into(),
        partition: 0,
        start,
        end,
    }];
    BatchPlan::kafka(BatchId::new(batch_id), "source", ranges, 1)
}

async fn batch_protocol(store: Arc<dyn CheckpointStore>) {
    let log = JobLog::new(store.clone(), "job-a");
    let other = JobLog::new(store.clone(), "job-b");
    assert_eq!(log.checkpoint().await.unwrap(), None);
    assert_eq!(log.last_plan().await.unwrap(), None);

    let initial = Checkpoint::initial_kafka(
        "source",
        PartitionOffsets::from([("t".to_string(), [(0, 0)].into())]),
    );
    log.put_initial_checkpoint(&initial).await.unwrap();
    // Batches 0..=11 so that zero-padding matters for ordering (10 after 9).
    let mut checkpoint = initial;
    for batch in 0..12 {
        let p = plan(batch, batch * 10, batch * 10 + 10);
        log.log_plan(&p).await.unwrap();
        assert_eq!(log.last_plan().await.unwrap(), Some(p.clone()));
        assert!(!log.is_committed(BatchId::new(batch)).await.unwrap());
        checkpoint = checkpoint.after(&p);
        log.commit(&checkpoint, 1000 + batch).await.unwrap();
        assert!(log.is_committed(BatchId::new(batch)).await.unwrap());
    }
    assert_eq!(log.checkpoint().await.unwrap(), Some(checkpoint.clone()));
    assert_eq!(checkpoint.get("t", 0), Some(120));
    // A planned batch without a commit is what recovery sees.
    log.log_plan(&plan(12, 120, 125)).await.unwrap();
    // Its ranges are logged once: planning it again is refused, the log keeps the first.
    let again = log.log_plan(&plan(12, 120, 130)).await.unwrap_err();
    assert!(
        matches!(again, Error::BatchAlreadyLogged { batch, .. } if batch == BatchId::new(12)),
        "{again}"
    );
    assert_eq!(
        log.plan(BatchId::new(12)).await.unwrap(),
        Some(plan(12, 120, 125))
    );
    assert_eq!(
        log.last_plan().await.unwrap().unwrap().batch_id,
        BatchId::new(12)
    );
    assert_eq!(
        log.checkpoint().await.unwrap().unwrap().batch_id,
        BatchId::new(11)
    );
    // Jobs do not see each other's logs.
    assert_eq!(other.last_plan().await.unwrap(), None);

    let record = JobRecord {
        job_id: "job-a".into(),
        spec_json: "{}".into(),
        active: true,
        state: "RUNNING".into(),
        message: String::new(),
    };
    log.put_job(&record).await.unwrap();
    assert_eq!(log.job().await.unwrap(), Some(record.clone()));
    assert_eq!(
        JobLog::all_jobs(store.as_ref()).await.unwrap(),
        vec![record]
    );
}

async fn old_batches_are_trimmed(store: Arc<dyn CheckpointStore>) {
    let log = JobLog::new(store.clone(), "long");
    let mut checkpoint = Checkpoint::initial_kafka("source", PartitionOffsets::new());
    let batches = RETAINED_BATCHES + 5;
    for batch in 0..batches {
        let p = plan(batch, batch, batch + 1);
        log.log_plan(&p).await.unwrap();
        checkpoint = checkpoint.after(&p);
        log.commit(&checkpoint, batch).await.unwrap();
    }
    assert!(!log.is_committed(BatchId::new(0)).await.unwrap());
    assert!(log.is_committed(BatchId::new(batches - 1)).await.unwrap());
    let kept = store.list("/sluice/jobs/long/offsets/").await.unwrap();
    assert!(
        kept.len() as i64 <= RETAINED_BATCHES + 1,
        "kept {}",
        kept.len()
    );
}

#[tokio::test]
async fn embedded_store_conforms_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    key_value_semantics(Arc::new(EmbeddedStore::open(&path).unwrap())).await;
    batch_protocol(Arc::new(
        EmbeddedStore::open(&dir.path().join("b.json")).unwrap(),
    ))
    .await;
    old_batches_are_trimmed(Arc::new(
        EmbeddedStore::open(&dir.path().join("c.json")).unwrap(),
    ))
    .await;
    let reopened = EmbeddedStore::open(&path).unwrap();
    assert_eq!(reopened.get("/a/2").await.unwrap().as_deref(), Some("two"));
}

#[tokio::test]
async fn etcd_store_conforms() {
    let etcd = EtcdServer::start().expect("etcd must be installed (apt-get install etcd-server)");
    let connect = || async { Arc::new(EtcdStore::connect(&[etcd.endpoint()]).await.unwrap()) };
    key_value_semantics(connect().await).await;
    batch_protocol(connect().await).await;
    old_batches_are_trimmed(connect().await).await;
}

#[tokio::test]
async fn unreachable_etcd_is_a_clear_error() {
    let port = sluice_testkit::free_port();
    let err = EtcdStore::connect(&[format!("http://127.0.0.1:{port}")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn a_deposed_leaders_checkpoint_write_is_refused() {
    let etcd = EtcdServer::start().expect("etcd must be installed (apt-get install etcd-server)");
    let endpoints = [etcd.endpoint()];
    let ttl = std::time::Duration::from_secs(2);
    let old = EtcdStore::connect(&endpoints).await.unwrap();
    let old_leadership = campaign(&endpoints, "old", ttl).await.unwrap();
    old.set_fence(old_leadership.fence.clone());
    old.put_all(vec![("/k".into(), "old-1".into())])
        .await
        .unwrap();
    old.check_fence().await.unwrap();
    assert_eq!(old.term(), old_leadership.fence.revision);

    // The old leader's lease ends (as when it stalls past its TTL); another driver wins.
    old_leadership.resign().await.unwrap();
    let new = EtcdStore::connect(&endpoints).await.unwrap();
    let new_leadership = campaign(&endpoints, "new", ttl).await.unwrap();
    new.set_fence(new_leadership.fence.clone());
    new.put_all(vec![("/k".into(), "new-1".into())])
        .await
        .unwrap();

    let late = old
        .put_all(vec![("/k".into(), "old-2".into())])
        .await
        .unwrap_err();
    assert!(matches!(late, Error::Fenced { .. }), "{late}");
    let late = old.delete_range("/", "/z").await.unwrap_err();
    assert!(matches!(late, Error::Fenced { .. }), "{late}");
    let late = old.put_new("/fresh", "old".into()).await.unwrap_err();
    assert!(matches!(late, Error::Fenced { .. }), "{late}");
    assert_eq!(new.get("/fresh").await.unwrap(), None);
    // The check made before every Iceberg commit says so too, and terms only grow.
    let late = old.check_fence().await.unwrap_err();
    assert!(matches!(late, Error::Fenced { .. }), "{late}");
    new.check_fence().await.unwrap();
    assert!(new.term() > old.term());
    assert_eq!(new.get("/k").await.unwrap().as_deref(), Some("new-1"));
}
