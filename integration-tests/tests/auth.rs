//! Token authentication on the driver's and executors' APIs: with `--auth-token-file` a
//! call without a token or with a wrong one is refused with UNAUTHENTICATED and changes
//! nothing; the right token (the CLI's `--token-file`) works, executors register with it,
//! and the driver's task calls and executors' shuffle fetches present it.

use std::time::Duration;

use sluice_integration_tests::{binary, TestCluster};
use sluice_proto::auth::BearerToken;
use sluice_proto::v1::executor_client::ExecutorClient;
use sluice_proto::v1::{
    GetJobStatusRequest, ListJobsRequest, ReleaseShuffleRequest, SubmitJobRequest, TaskDefinition,
};
use tonic::transport::Channel;
use tonic::Code;

const TOKEN_ENV: &str = "SLUICE_AUTH_TOKEN_FILE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_serves_only_callers_with_a_valid_token() {
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, "# cluster token\ns3cret-token\n").unwrap();
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let tokens_path = tokens.to_str().unwrap();
    let env = [(TOKEN_ENV, tokens_path)];
    let mut cluster = TestCluster::start_with_first_driver_env("orders", 2, 0, 1, &env)
        .await
        .unwrap();
    let executor_bind = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let flight_bind = format!("127.0.0.1:{}", sluice_testkit::free_port());
    cluster
        .start_executor(&[
            (TOKEN_ENV, tokens_path),
            ("SLUICE_EXECUTOR_BIND", &executor_bind),
            ("SLUICE_EXECUTOR_FLIGHT_BIND", &flight_bind),
        ])
        .unwrap();
    cluster.start_executor(&env).unwrap();
    cluster.produce_orders("orders", 2, 0, 200).unwrap();
    // A GROUP BY: its rows cross a shuffle, fetched over Flight with the token.
    let spec = TestCluster::per_batch(&cluster.spec(
        "authed",
        "orders",
        "SELECT order_id, count(*) AS n FROM source GROUP BY order_id",
        "{available_now: true}",
        "",
    ));

    // Without a token, and with a wrong one: refused, and nothing is created.
    let refused = cluster.submit(&spec).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let channel = Channel::from_shared(cluster.driver_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut impostor = BearerToken::from_file(Some(&wrong))
        .unwrap()
        .client(channel.clone());
    let refused = impostor
        .submit_job(SubmitJobRequest { spec: spec.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let refused = impostor.list_jobs(ListJobsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The token: the job runs on the executor that registered with it.
    let mut client = BearerToken::from_file(Some(&tokens))
        .unwrap()
        .client(channel);
    let jobs = client
        .list_jobs(ListJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty(), "the refused submissions left nothing");
    let job = client
        .submit_job(SubmitJobRequest { spec: spec.clone() })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .get_job_status(GetJobStatusRequest {
                job_id: job.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if status.state == "FINISHED" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job not finished: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.row_count(&spec).await.unwrap(), 200);

    // The executors' own APIs: nothing without the token, served with it.
    let executor_channel = Channel::from_shared(format!("http://{executor_bind}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut open = ExecutorClient::new(executor_channel.clone());
    let refused = open.run_task(TaskDefinition::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let mut authed = BearerToken::from_file(Some(&tokens))
        .unwrap()
        .executor_client(executor_channel);
    let served = authed
        .release_shuffle(ReleaseShuffleRequest::default())
        .await;
    assert!(served.is_ok(), "{served:?}");
    let flight_channel = Channel::from_shared(format!("http://{flight_bind}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = arrow_flight::FlightClient::new(flight_channel);
    let refused = flight
        .do_get(arrow_flight::Ticket::new(b"{}".to_vec()))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("bearer token is required"),
        "{refused}"
    );

    // The CLI: refused without --token-file, served with it.
    let cli = |token: Option<&str>| {
        let mut command = std::process::Command::new(binary("sluice"));
        command.args(["list", "--driver", &cluster.driver_url()]);
        command.env_remove("SLUICE_TOKEN_FILE");
        if let Some(path) = token {
            command.args(["--token-file", path]);
        }
        command.output().unwrap()
    };
    let without = cli(None);
    assert!(!without.status.success());
    let message = String::from_utf8_lossy(&without.stderr);
    assert!(message.contains("bearer token is required"), "{message}");
    let with = cli(Some(tokens_path));
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("authed"));
}
