//! Bad requests get a clear status, never a panic; the processes keep serving.

use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_proto::v1::executor_client::ExecutorClient;
use sluice_proto::v1::{
    task_result, FailureKind, GetJobStatusRequest, HeartbeatRequest, OffsetRange,
    PrepareJobRequest, RegisterExecutorRequest, StopJobRequest, SubmitJobRequest, TaskDefinition,
    WatchJobRequest,
};
use sluice_proto::PROTOCOL_VERSION;
use sluice_testkit::free_port;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_with_a_clear_status() {
    let mut cluster = TestCluster::start("orders", 1, 0).await.unwrap();
    let mut driver = cluster.client().await.unwrap();

    let other_version = RegisterExecutorRequest {
        executor_id: "old".into(),
        address: "http://127.0.0.1:1".into(),
        flight_address: "http://127.0.0.1:2".into(),
        task_slots: 1,
        protocol_version: PROTOCOL_VERSION + 1,
    };
    let status = driver.register_executor(other_version).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("protocol version"),
        "{}",
        status.message()
    );

    let anonymous = RegisterExecutorRequest {
        protocol_version: PROTOCOL_VERSION,
        ..Default::default()
    };
    let status = driver.register_executor(anonymous).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("executor_id"),
        "{}",
        status.message()
    );

    let status = driver
        .heartbeat(HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    for spec in ["", "::: not yaml", "name: x"] {
        let status = driver
            .submit_job(SubmitJobRequest { spec: spec.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{spec:?}: {status:?}");
    }
    let status = driver
        .get_job_status(GetJobStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = driver
        .get_job_status(GetJobStatusRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"), "{}", status.message());
    let status = driver
        .stop_job(StopJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = driver
        .watch_job(WatchJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // An executor on a known port, spoken to directly.
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    cluster
        .start_executor(&[("SLUICE_EXECUTOR_BIND", &bind)])
        .unwrap();
    let mut executor = loop {
        match ExecutorClient::connect(format!("http://{bind}")).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    let backwards = TaskDefinition {
        job_id: "j".into(),
        ranges: vec![OffsetRange {
            topic: "orders".into(),
            partition: 0,
            start: 10,
            end: 5,
        }],
        ..Default::default()
    };
    let status = executor.run_task(backwards).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let unknown = executor
        .run_task(TaskDefinition::default())
        .await
        .unwrap()
        .into_inner();
    match unknown.outcome {
        Some(task_result::Outcome::Failure(failure)) => {
            assert_eq!(failure.kind(), FailureKind::UnknownJob);
            assert!(failure.retryable);
        }
        other => panic!("expected an unknown-job failure, got {other:?}"),
    }
    let status = executor
        .prepare_job(PrepareJobRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = executor
        .prepare_job(PrepareJobRequest {
            job_id: "j".into(),
            spec_json: "{".into(),
            stages: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("invalid job spec"),
        "{}",
        status.message()
    );

    // Both still serve.
    assert!(cluster
        .client()
        .await
        .unwrap()
        .list_jobs(sluice_proto::v1::ListJobsRequest {})
        .await
        .is_ok());
    assert!(!cluster.executor_exited(0));
}

/// An aggregate over the stream without a window could never be final: refused at
/// submit saying what to write instead, unless the spec asks for one result per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_without_a_window_is_refused_unless_asked_per_batch() {
    let cluster = TestCluster::start("orders", 1, 0).await.unwrap();
    for sql in [
        "SELECT country, count(*) AS n FROM source GROUP BY country",
        "SELECT DISTINCT country FROM source",
        "SELECT order_id FROM source WHERE amount > (SELECT avg(amount) FROM source)",
    ] {
        let spec = cluster.spec("totals", "orders", sql, "{processing_time: 1s}", "");
        let status = cluster.submit(&spec).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{sql}");
        for hint in [
            "without a window",
            "GROUP BY tumble(ts",
            "aggregation: per_batch",
        ] {
            assert!(
                status.message().contains(hint),
                "{sql}: {}",
                status.message()
            );
        }
    }
    let spec = TestCluster::per_batch(&cluster.spec(
        "totals",
        "orders",
        "SELECT country, count(*) AS n FROM source GROUP BY country",
        "{processing_time: 1s}",
        "",
    ));
    let job = cluster.submit(&spec).await.unwrap();
    cluster.stop_and_wait(&job).await.unwrap();
    // Without aggregates, nothing to ask.
    let plain = cluster.spec(
        "rows",
        "orders",
        "SELECT * FROM source",
        "{processing_time: 1s}",
        "",
    );
    let job = cluster.submit(&plain).await.unwrap();
    cluster.stop_and_wait(&job).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_job_on_a_table_another_job_writes_is_refused_naming_it() {
    let cluster = TestCluster::start("orders", 1, 1).await.unwrap();
    let sql = "SELECT order_id FROM source";
    let first = cluster.spec("writer-a", "orders", sql, "{processing_time: 1s}", "");
    cluster.submit(&first).await.unwrap();
    // Another job name, the same sink table.
    let second = first.patched("name: writer-a", "name: writer-b");
    let status = cluster.submit(&second).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("writer-a") && status.message().contains("writer_a"),
        "{}",
        status.message()
    );
    // Once the writer is stopped, the table is free.
    cluster.stop_and_wait("writer-a").await.unwrap();
    cluster.submit(&second).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_beyond_the_job_limit_are_refused_until_a_job_stops() {
    let cluster =
        TestCluster::start_with_first_driver_env("orders", 1, 1, 1, &[("SLUICE_MAX_JOBS", "1")])
            .await
            .unwrap();
    let sql = "SELECT order_id FROM source";
    let first = cluster.spec("limit-a", "orders", sql, "{processing_time: 1s}", "");
    cluster.submit(&first).await.unwrap();
    let second = cluster.spec("limit-b", "orders", sql, "{processing_time: 1s}", "");
    let status = cluster.submit(&second).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-jobs"),
        "{}",
        status.message()
    );
    // A name too long for a key, a file name or a metric label is refused at parse.
    let long = second.patched("name: limit-b", &format!("name: {}", "n".repeat(10_000)));
    let status = cluster.submit(&long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("at most 128"),
        "{}",
        status.message()
    );
    // So is a spec over the size cap, and a request over gRPC's.
    let padded = format!("{second}\n# {}\n", "x".repeat(300 * 1024));
    let status = cluster.submit(&padded).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 262144"), "{status:?}");
    let huge = format!("{second}\n# {}\n", "x".repeat(5 << 20));
    let status = cluster.submit(&huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    cluster.stop_and_wait("limit-a").await.unwrap();
    cluster.submit(&second).await.unwrap();
}

/// gRPC server reflection lists the driver's service, so generic clients (grpcurl) can
/// discover the API without the .proto file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_describes_its_api_by_reflection() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = TestCluster::start("orders", 1, 0).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(cluster.driver_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"sluice.v1.Driver".to_string()), "{names:?}");
}
