//! Kafka that demands security: the job's `source.kafka.properties` carry SASL/PLAIN over
//! TLS with a client certificate (the password a `${env:…}` reference resolved by the
//! driver and each executor) to a broker that lets nothing else in. The job reads every
//! record; specs with a wrong password, without TLS or without a client certificate are
//! refused at submit, naming the cause.

use sluice_integration_tests::TestCluster;
use sluice_testkit::kafka_gate::{Gate, GateTls, GatedKafka};
use sluice_testkit::tls::TestCa;

const PASSWORD_ENV: &str = "KAFKA_PASSWORD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_through_sasl_over_mutual_tls_and_bad_credentials_are_refused() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "kafka");
    let broker_cert = ca.issue("broker");
    let client = ca.issue("sluice");
    let kafka = GatedKafka::start(
        "orders",
        2,
        Gate {
            tls: Some(GateTls {
                cert: broker_cert.cert.clone(),
                key: broker_cert.key.clone(),
                client_ca: Some(ca.ca_path()),
            }),
            sasl_plain: Some(("sluice".into(), "kafka-s3cret".into())),
        },
    );
    let producer = sluice_kafka::synthetic::producer(&kafka.plain_bootstrap()).unwrap();
    sluice_kafka::synthetic::produce_orders(&producer, "orders", 2, 0, 200, None, |_| {}).unwrap();
    drop(producer);
    kafka.close_plaintext();

    let env = [(PASSWORD_ENV, "kafka-s3cret")];
    let mut cluster = TestCluster::start_with_first_driver_env("unused", 1, 0, 1, &env)
        .await
        .unwrap();
    cluster.start_executor(&env).unwrap();
    cluster.start_executor(&env).unwrap();
    let ca_path = ca.ca_path();
    let spec_with = |name: &str, properties: &str| {
        cluster
            .spec(
                name,
                "orders",
                "SELECT order_id, _partition AS p, _offset AS o FROM source",
                "{available_now: true}",
                &format!("    properties: {{{properties}}}"),
            )
            .replace(&cluster.bootstrap_servers(), &kafka.bootstrap())
    };
    let tls = format!(
        "ssl.ca.location: '{}', ssl.certificate.location: '{}', ssl.key.location: '{}'",
        ca_path.display(),
        client.cert.display(),
        client.key.display()
    );
    let sasl = "sasl.mechanism: PLAIN, sasl.username: sluice";

    // Everything right: every record, once.
    let spec = spec_with(
        "secured",
        &format!(
            "security.protocol: SASL_SSL, {sasl}, sasl.password: '${{env:{PASSWORD_ENV}}}', {tls}"
        ),
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    assert_eq!(cluster.row_count(&spec).await.unwrap(), 200);

    // A wrong password, plaintext, and TLS without the client certificate: refused.
    let wrong_password = spec_with(
        "wrong-password",
        &format!("security.protocol: SASL_SSL, {sasl}, sasl.password: '${{env:HOME}}', {tls}"),
    );
    let plaintext = spec_with("plaintext", "client.id: sluice");
    let no_client_cert = spec_with(
        "no-client-cert",
        &format!(
            "security.protocol: SASL_SSL, {sasl}, sasl.password: '${{env:{PASSWORD_ENV}}}', ssl.ca.location: '{}'",
            ca_path.display()
        ),
    );
    // Each waits out the metadata timeout: submitted together.
    let (wrong_password, plaintext, no_client_cert) = futures::join!(
        cluster.submit(&wrong_password),
        cluster.submit(&plaintext),
        cluster.submit(&no_client_cert)
    );
    let message =
        |refused: Result<String, tonic::Status>| refused.unwrap_err().message().to_string();
    let (wrong_password, plaintext, no_client_cert) = (
        message(wrong_password),
        message(plaintext),
        message(no_client_cert),
    );
    assert!(
        wrong_password.contains("SASL authentication error: Authentication failed"),
        "{wrong_password}"
    );
    assert!(
        no_client_cert.contains("certificate required"),
        "{no_client_cert}"
    );
    // A plaintext client's bytes are no TLS handshake: the gate hangs up.
    assert!(plaintext.contains("BrokerTransportFailure"), "{plaintext}");
}
