//! Topics written by transactional producers: Sluice reads `read_committed`, so records of
//! aborted transactions never reach the table, and the offsets that transaction markers
//! (and dropped records) take are gaps that end a range like any record, even at the end
//! of a partition, instead of stalling it.
//!
//! librdkafka's mock broker writes no markers and lists no aborted transaction, so the
//! test writes both as a broker's log holds them and the gate lists the aborted ones in
//! fetch answers (`sluice_testkit::kafka_transactions`).

use std::collections::BTreeSet;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use sluice_datagen::synthetic::Order;
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_testkit::kafka_gate::{Gate, GatedKafka};
use sluice_testkit::kafka_transactions::Outcome;

const TOPIC: &str = "payments";

/// Order JSON values for sequence numbers `seqs`.
fn orders(seqs: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    seqs.map(|seq| Order::new(seq, 1_700_000_000_000).to_json().into_bytes())
        .collect()
}

fn ids(seqs: std::ops::Range<u64>) -> BTreeSet<String> {
    seqs.map(|seq| format!("o-{seq}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_never_reach_the_table_and_markers_do_not_stall_a_partition() {
    let kafka = GatedKafka::start(
        TOPIC,
        2,
        Gate {
            transactions: true,
            ..Gate::default()
        },
    );
    kafka.close_plaintext();
    // Partition 0 ends with an aborted transaction and its marker, partition 1 with a
    // committed one: each partition's last offsets are gaps.
    let mut committed = BTreeSet::new();
    let mut aborted = BTreeSet::new();
    let transactions = [
        (0, 0..10, Outcome::Commit),
        (0, 100..110, Outcome::Abort),
        (0, 10..20, Outcome::Commit),
        (0, 110..115, Outcome::Abort),
        (1, 120..130, Outcome::Abort),
        (1, 20..30, Outcome::Commit),
        (1, 130..131, Outcome::Abort),
        (1, 30..42, Outcome::Commit),
    ];
    for (partition, seqs, outcome) in transactions {
        kafka.write_transaction(TOPIC, partition, &orders(seqs.clone()), outcome);
        match outcome {
            Outcome::Commit => committed.extend(ids(seqs)),
            Outcome::Abort => aborted.extend(ids(seqs)),
        }
    }

    let cluster = TestCluster::start("unused", 1, 2).await.unwrap();
    // Batches of at most 8 offsets: some ranges hold only aborted records and markers.
    let spec = cluster
        .spec(
            "transactions",
            TOPIC,
            "SELECT order_id, _partition AS p, _offset AS o FROM source",
            "{available_now: true}",
            "    max_offsets_per_trigger: 8",
        )
        .patched(&cluster.bootstrap_servers(), &kafka.bootstrap());
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster
        .wait_for(&job, Duration::from_secs(90), |s| s.state != "RUNNING")
        .await
        .unwrap_or_else(|e| panic!("a partition stalled: {e}\n{}", cluster.logs_tail(40)));
    assert_eq!(status.state, "FINISHED", "{status:?}");

    let mut read = Vec::new();
    for batch in cluster.table_rows(&spec).await.unwrap() {
        let order_ids = batch.column_by_name("order_id").unwrap().as_string::<i32>();
        let offsets =
            arrow::compute::cast(batch.column_by_name("o").unwrap(), &DataType::Int64).unwrap();
        let partitions =
            arrow::compute::cast(batch.column_by_name("p").unwrap(), &DataType::Int64).unwrap();
        for row in 0..batch.num_rows() {
            read.push((
                order_ids.value(row).to_string(),
                partitions.as_primitive::<Int64Type>().value(row),
                offsets.as_primitive::<Int64Type>().value(row),
            ));
        }
    }
    let read_ids: BTreeSet<String> = read.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(
        read.len(),
        committed.len(),
        "each committed record once: {read:?}"
    );
    assert_eq!(read_ids, committed, "exactly the committed records");
    assert!(read_ids.is_disjoint(&aborted));
    let positions: BTreeSet<(i64, i64)> = read.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(positions.len(), read.len(), "no offset twice");
}
