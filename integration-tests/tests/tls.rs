//! TLS on every gRPC and Flight server: a driver and two executors serving TLS with
//! mutual authentication run a job whose rows cross the Flight shuffle (the executors'
//! certificates name only the cluster, which every peer verifies them against, as with
//! pod IPs on Kubernetes); the CLI verifies
//! the driver's certificate (`--ca-cert`) and presents its own; a caller with no
//! certificate, one from another CA, a plaintext caller, a CLI that does not trust the
//! driver's CA and a driver certificate that has expired are all refused.

use std::process::Output;

use sluice_integration_tests::{binary, TestCluster};
use sluice_proto::tls::Tls;
use sluice_proto::v1::executor_client::ExecutorClient;
use sluice_proto::v1::ReleaseShuffleRequest;
use sluice_testkit::tls::{CertFiles, TestCa};

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The DNS name every certificate of the cluster carries.
const CLUSTER_NAME: &str = "sluice-cluster";

/// The environment that gives a driver or executor `own` certificate and mutual TLS
/// with the cluster's CA, verifying its peers against the cluster's name.
fn tls_env<'a>(own: &'a CertFiles, ca: &'a std::path::Path) -> Vec<(&'static str, &'a str)> {
    vec![
        ("SLUICE_TLS_CERT", path(&own.cert)),
        ("SLUICE_TLS_KEY", path(&own.key)),
        ("SLUICE_TLS_CA", path(ca)),
        ("SLUICE_TLS_REQUIRE_CLIENT_CERT", "true"),
        ("SLUICE_TLS_SERVER_NAME", CLUSTER_NAME),
    ]
}

/// `sluice list` against `driver` with the given extra arguments.
fn cli_list(driver: &str, args: &[&str]) -> Output {
    std::process::Command::new(binary("sluice"))
        .args(["list", "--driver", driver])
        .args(args)
        .env_remove("SLUICE_CA_CERT")
        .env_remove("SLUICE_CLIENT_CERT")
        .env_remove("SLUICE_CLIENT_KEY")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether a task-API call to `url` with `tls` gets through the TLS layer.
async fn executor_serves(url: &str, tls: &Tls) -> Result<(), String> {
    let channel = tls
        .endpoint(url)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    ExecutorClient::new(channel)
        .release_shuffle(ReleaseShuffleRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_mutual_tls_and_refuses_who_it_cannot_verify() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "cluster");
    let ca_path = ca.ca_path();
    // The driver is also reached by address (the CLI, the tests); executors only by name.
    let driver_cert = ca.issue_for("driver", &["localhost", "127.0.0.1", CLUSTER_NAME]);
    let executor_certs = [
        ca.issue_for("executor-0", &[CLUSTER_NAME]),
        ca.issue_for("executor-1", &[CLUSTER_NAME]),
    ];
    let client = ca.issue("cli");
    let other_ca = TestCa::new(certs.path(), "other");
    let impostor = other_ca.issue("impostor");

    let client_tls =
        Tls::from_files(Some(&client.cert), Some(&client.key), Some(&ca_path), false).unwrap();
    let mut cluster =
        TestCluster::start_with_tls("orders", 2, &tls_env(&driver_cert, &ca_path), client_tls)
            .await
            .unwrap();
    let executor_bind = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let mut first_env = tls_env(&executor_certs[0], &ca_path);
    first_env.push(("SLUICE_EXECUTOR_BIND", &executor_bind));
    cluster.start_executor(&first_env).unwrap();
    cluster
        .start_executor(&tls_env(&executor_certs[1], &ca_path))
        .unwrap();
    cluster.produce_orders("orders", 2, 0, 300).unwrap();

    // A GROUP BY: its rows cross the shuffle, fetched over Flight with mutual TLS, after
    // the executors registered with the driver and took their tasks over TLS.
    let spec = TestCluster::per_batch(&cluster.spec(
        "secured",
        "orders",
        "SELECT order_id, count(*) AS n FROM source GROUP BY order_id",
        "{available_now: true}",
        "",
    ));
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    assert_eq!(
        cluster.row_count(&spec).await.unwrap(),
        300,
        "one row per order"
    );

    // The CLI verifies the driver against --ca-cert and presents its certificate.
    let driver = cluster.driver_url();
    let plain_address = driver.trim_start_matches("https://").to_string();
    let client_args = [
        "--ca-cert",
        path(&ca_path),
        "--client-cert",
        path(&client.cert),
        "--client-key",
        path(&client.key),
    ];
    let listed = cli_list(&plain_address, &client_args);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("secured"));

    // Refused: a CLI with no CA for an https URL, one trusting another CA, one without a
    // client certificate, and a plaintext one.
    let no_ca = cli_list(&driver, &[]);
    assert!(!no_ca.status.success());
    assert!(
        stderr(&no_ca).contains("no CA certificate"),
        "{}",
        stderr(&no_ca)
    );
    let other_ca_path = other_ca.ca_path();
    let untrusted = cli_list(&driver, &["--ca-cert", path(&other_ca_path)]);
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).contains("UnknownIssuer"),
        "{}",
        stderr(&untrusted)
    );
    let without_client_cert = cli_list(&driver, &["--ca-cert", path(&ca_path)]);
    assert!(
        !without_client_cert.status.success(),
        "the driver requires a client certificate"
    );
    let plaintext = cli_list(&format!("http://{plain_address}"), &[]);
    assert!(
        !plaintext.status.success(),
        "a TLS server refuses plaintext"
    );

    // The executors' task API: only callers with a certificate from the cluster's CA.
    let executor_url = format!("https://{executor_bind}");
    let by_name = Some(CLUSTER_NAME.to_string());
    let with_cert =
        Tls::from_files(Some(&client.cert), Some(&client.key), Some(&ca_path), false).unwrap();
    let by_address = executor_serves(&executor_url, &with_cert).await;
    assert!(
        by_address.unwrap_err().contains("NotValidForName"),
        "the executor's certificate names the cluster, not its address"
    );
    let with_cert = with_cert.verifying_name(by_name.clone());
    executor_serves(&executor_url, &with_cert).await.unwrap();
    let without_cert = Tls::from_files(None, None, Some(&ca_path), false)
        .unwrap()
        .verifying_name(by_name.clone());
    assert!(executor_serves(&executor_url, &without_cert).await.is_err());
    let foreign = Tls::from_files(
        Some(&impostor.cert),
        Some(&impostor.key),
        Some(&ca_path),
        false,
    )
    .unwrap()
    .verifying_name(by_name);
    assert!(executor_serves(&executor_url, &foreign).await.is_err());
    assert!(
        executor_serves(&format!("http://{executor_bind}"), &Tls::none())
            .await
            .is_err(),
        "a TLS executor refuses plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_driver_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let expired = ca.issue_expired("driver");
    let port = sluice_testkit::free_port();
    let http_port = sluice_testkit::free_port();
    // A driver on the embedded store: no etcd needed to serve a handshake.
    let mut driver = std::process::Command::new(binary("sluice-driver"))
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--http-bind", &format!("127.0.0.1:{http_port}")])
        .args(["--data-dir", path(&dir.path().join("data"))])
        .args(["--tls-cert", path(&expired.cert)])
        .args(["--tls-key", path(&expired.key)])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "driver did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ca_path = ca.ca_path();
    let refused = cli_list(&format!("127.0.0.1:{port}"), &["--ca-cert", path(&ca_path)]);
    let _ = driver.kill();
    let _ = driver.wait();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("certificate expired"),
        "{}",
        stderr(&refused)
    );
}
