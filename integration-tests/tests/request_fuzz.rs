//! Every gRPC request of the driver's and the executor's APIs, filled with random and
//! hostile values (path tricks, control characters, 10,000-character names, negative and
//! huge numbers, random bytes as plans, mutated job specs): each gets an answer, a named
//! error or a result, never a panic or a dropped connection, and both processes keep
//! serving. The seed is fixed, so that a failure replays; `SLUICE_FUZZ_SEED` runs another.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use sluice_integration_tests::TestCluster;
use sluice_proto::v1::driver_client::DriverClient;
use sluice_proto::v1::executor_client::ExecutorClient;
use sluice_proto::v1::{
    task_result, DescribeTableRequest, FailureKind, GetJobStatusRequest, HeartbeatRequest,
    MapOutput, OffsetRange, PrepareJobRequest, RegisterExecutorRequest, ReleaseShuffleRequest,
    RewriteFiles, ShuffleInput, StagePlan, StopJobRequest, SubmitJobRequest, TaskDefinition,
    WatchJobRequest,
};
use sluice_proto::PROTOCOL_VERSION;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The seed of a run without `SLUICE_FUZZ_SEED`: fixed, so that CI and a developer's
/// machine send the same requests and a failure replays.
const DEFAULT_SEED: u64 = 0x51_1CE0;

/// Requests sent per run.
const ROUNDS: usize = 300;
/// How long one call may take: more than the driver's own deadlines (a spec naming an
/// unreachable broker is refused after the 10 s metadata timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Strings that have broken services before: names that escape directories or keys,
/// control characters, very long and empty values, format strings, non-ASCII.
fn hostile_string(rng: &mut StdRng) -> String {
    let fixed = [
        "",
        "/",
        "..",
        "../../etc/passwd",
        "a/b",
        "job\0id",
        "\u{1b}[31mred",
        "line\nbreak",
        "%s%n%x",
        "' OR 1=1 --",
        "{{.Values}}",
        "💥🦀",
        "orders",
        "http://",
        "http://127.0.0.1:1",
        "https://[::1",
        "file:///etc/passwd",
    ];
    match rng.gen_range(0..4) {
        0 => "x".repeat(rng.gen_range(1000..12_000)),
        1 => (0..rng.gen_range(0..40))
            .map(|_| char::from_u32(rng.gen_range(0..0x3000)).unwrap_or('?'))
            .collect(),
        _ => fixed[rng.gen_range(0..fixed.len())].to_string(),
    }
}

fn any_i64(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..4) {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => -rng.gen_range(1..1000),
        _ => rng.gen_range(0..1_000_000),
    }
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect()
}

/// A valid spec with a few bytes replaced, removed or repeated.
fn mutated_spec(rng: &mut StdRng, spec: &str) -> String {
    let mut bytes = spec.as_bytes().to_vec();
    for _ in 0..rng.gen_range(1..6) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..3) {
            0 => bytes[at] = rng.gen(),
            1 => {
                bytes.remove(at);
            }
            _ => {
                let end = (at + rng.gen_range(1..40)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The outcome of one call: an answer, or what was wrong with it.
fn judge(what: &str, seed: u64, result: Result<Result<(), Status>, tokio::time::error::Elapsed>) {
    match result {
        Err(_) => panic!("{what}: no answer within {CALL_TIMEOUT:?} (seed {seed})"),
        Ok(Ok(())) => {}
        Ok(Err(status)) => {
            // A panicking handler or a dropped connection shows as Unknown or Internal
            // without a message of ours, or as a transport error.
            let named = !status.message().is_empty()
                && !matches!(
                    status.code(),
                    Code::Unknown | Code::Internal | Code::Cancelled
                )
                && !status.message().contains("transport error")
                && !status.message().contains("panic");
            assert!(named, "{what}: not a named error: {status:?} (seed {seed})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_hostile_requests_get_named_errors_and_break_nothing() {
    let (seed, mut rng) = sluice_integration_tests::seeded("SLUICE_FUZZ_SEED", DEFAULT_SEED);

    let mut cluster = TestCluster::start("orders", 2, 0).await.unwrap();
    let executor_bind = format!("127.0.0.1:{}", sluice_testkit::free_port());
    cluster
        .start_executor(&[("SLUICE_EXECUTOR_BIND", &executor_bind)])
        .unwrap();
    let mut driver: DriverClient<Channel> = cluster.client().await.unwrap();
    let executor_channel = Channel::from_shared(format!("http://{executor_bind}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    let mut executor = loop {
        if let Ok(channel) = executor_channel.clone().connect().await {
            break ExecutorClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let valid_spec = cluster.spec(
        "fuzzed",
        "orders",
        "SELECT order_id, amount FROM source WHERE amount > 1",
        "{processing_time: 1s}",
        "",
    );
    let valid_json = format!(
        r#"{{"name": "fuzzed", "source": {{"kafka": {{"bootstrap_servers": "{}", "topics": ["orders"], "format": "json", "schema": [{{"name": "order_id", "type": "utf8"}}]}}}}, "sql": "SELECT order_id FROM source", "sink": {{"iceberg": {{"namespace": "n", "table": "t"}}}}}}"#,
        cluster.bootstrap_servers()
    );

    let mut served = 0;
    for round in 0..ROUNDS {
        let call = rng.gen_range(0..12);
        let what = format!("round {round}, call {call}");
        let result = match call {
            0 => {
                let request = RegisterExecutorRequest {
                    executor_id: hostile_string(&mut rng),
                    address: hostile_string(&mut rng),
                    flight_address: hostile_string(&mut rng),
                    task_slots: rng.gen(),
                    protocol_version: if rng.gen() {
                        PROTOCOL_VERSION
                    } else {
                        rng.gen()
                    },
                };
                tokio::time::timeout(CALL_TIMEOUT, driver.register_executor(request))
                    .await
                    .map(|r| r.map(drop))
            }
            1 => {
                let request = HeartbeatRequest {
                    executor_id: hostile_string(&mut rng),
                    protocol_version: rng.gen(),
                    running_tasks: rng.gen(),
                };
                tokio::time::timeout(CALL_TIMEOUT, driver.heartbeat(request))
                    .await
                    .map(|r| r.map(drop))
            }
            2 => {
                let spec = if rng.gen() {
                    mutated_spec(&mut rng, &valid_spec)
                } else {
                    hostile_string(&mut rng)
                };
                tokio::time::timeout(CALL_TIMEOUT, driver.submit_job(SubmitJobRequest { spec }))
                    .await
                    .map(|r| r.map(drop))
            }
            3 => {
                let job_id = hostile_string(&mut rng);
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    driver.get_job_status(GetJobStatusRequest { job_id }),
                )
                .await
                .map(|r| r.map(drop))
            }
            4 => {
                let job_id = hostile_string(&mut rng);
                tokio::time::timeout(CALL_TIMEOUT, driver.stop_job(StopJobRequest { job_id }))
                    .await
                    .map(|r| r.map(drop))
            }
            5 => {
                let job_id = hostile_string(&mut rng);
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    driver.describe_table(DescribeTableRequest { job_id }),
                )
                .await
                .map(|r| r.map(drop))
            }
            6 => {
                let job_id = hostile_string(&mut rng);
                // A stream: its opening (or refusal) is the answer.
                tokio::time::timeout(CALL_TIMEOUT, driver.watch_job(WatchJobRequest { job_id }))
                    .await
                    .map(|r| r.map(drop))
            }
            7 => {
                let spec_json = match rng.gen_range(0..3) {
                    0 => mutated_spec(&mut rng, &valid_json),
                    1 => valid_json.clone(),
                    _ => hostile_string(&mut rng),
                };
                let stages = (0..rng.gen_range(0..3))
                    .map(|_| StagePlan {
                        stage_id: rng.gen(),
                        plan: random_bytes(&mut rng),
                        output: rng.gen_range(-1..6),
                    })
                    .collect();
                let request = PrepareJobRequest {
                    job_id: if rng.gen() {
                        "fuzzed".into()
                    } else {
                        hostile_string(&mut rng)
                    },
                    spec_json,
                    stages,
                };
                tokio::time::timeout(CALL_TIMEOUT, executor.prepare_job(request))
                    .await
                    .map(|r| r.map(drop))
            }
            8..=10 => {
                let task = random_task(&mut rng);
                let answer = tokio::time::timeout(CALL_TIMEOUT, executor.run_task(task)).await;
                answer.map(|reply| {
                    reply.map(|result| {
                        if let Some(task_result::Outcome::Failure(failure)) =
                            result.into_inner().outcome
                        {
                            assert_ne!(
                                failure.kind(),
                                FailureKind::Panic,
                                "{what}: the task panicked: {} (seed {seed})",
                                failure.message
                            );
                            assert!(!failure.message.is_empty(), "{what}: unnamed failure");
                        }
                    })
                })
            }
            _ => {
                let request = ReleaseShuffleRequest {
                    job_id: hostile_string(&mut rng),
                    batch_id: any_i64(&mut rng),
                };
                tokio::time::timeout(CALL_TIMEOUT, executor.release_shuffle(request))
                    .await
                    .map(|r| r.map(drop))
            }
        };
        if matches!(result, Ok(Ok(()))) {
            served += 1;
        }
        judge(&what, seed, result);
    }
    println!("{served} of {ROUNDS} requests served, the rest refused with a named error");
    // Both outcomes occur: the requests reach the handlers (some are answered) and the
    // hostile ones among them are refused, not all dropped on the way in.
    assert!(
        served > 0 && served < ROUNDS,
        "{served} of {ROUNDS} requests served: the fuzz did not exercise both answers and refusals (seed {seed})"
    );

    // Both processes are alive and serve well-formed requests.
    assert!(cluster.driver_running(0), "the driver exited (seed {seed})");
    assert!(
        !cluster.executor_exited(0),
        "the executor exited (seed {seed})"
    );
    cluster.wait_for_driver().await.unwrap();
    executor
        .release_shuffle(ReleaseShuffleRequest::default())
        .await
        .unwrap_or_else(|e| panic!("the executor stopped serving: {e} (seed {seed})"));
}

/// A task definition with random ranges, stages, shuffle inputs, state files and
/// rewrites, for a prepared job or an unknown one. Ranges on the real topic are kept
/// within what exists, so no valid read waits for records that never come.
fn random_task(rng: &mut StdRng) -> TaskDefinition {
    let ranges = (0..rng.gen_range(0..4))
        .map(|_| OffsetRange {
            topic: if rng.gen() {
                "orders".into()
            } else {
                hostile_string(rng)
            },
            partition: rng.gen_range(-2..3),
            start: if rng.gen() { any_i64(rng) } else { 0 },
            end: if rng.gen() { any_i64(rng) } else { 0 },
        })
        // A range reaching past the topic's end on a real partition would wait for
        // records (the read's stall timeout); the driver never asks for one.
        .filter(|r| !(r.topic == "orders" && (0..2).contains(&r.partition) && r.end > 0))
        .collect();
    TaskDefinition {
        job_id: if rng.gen() {
            "fuzzed".into()
        } else {
            hostile_string(rng)
        },
        batch_id: any_i64(rng),
        task_id: rng.gen(),
        attempt: rng.gen(),
        ranges,
        stage_id: rng.gen_range(0..4),
        partitions: (0..rng.gen_range(0..3)).map(|_| rng.gen()).collect(),
        inputs: (0..rng.gen_range(0..2))
            .map(|_| ShuffleInput {
                stage_id: rng.gen_range(0..4),
                outputs: vec![MapOutput {
                    map_task: rng.gen(),
                    flight_address: hostile_string(rng),
                }],
            })
            .collect(),
        report_input: rng.gen(),
        term: any_i64(rng),
        watermark_ms: rng.gen::<bool>().then(|| any_i64(rng)),
        state_files: (0..rng.gen_range(0..2))
            .map(|_| hostile_string(rng))
            .collect(),
        rewrite: rng.gen_bool(0.2).then(|| RewriteFiles {
            compaction_id: any_i64(rng),
            files_json: (0..rng.gen_range(0..2))
                .map(|_| hostile_string(rng))
                .collect(),
        }),
    }
}
