//! Kafka that demands security: the job's `source.kafka.properties` carry SASL (PLAIN or
//! SCRAM-SHA-256) over TLS with a client certificate (the password a `${env:…}` reference
//! resolved by the driver and each executor) to a broker that lets nothing else in. The
//! job reads every record; specs with a wrong password, without TLS or without a client
//! certificate are refused at submit, naming the cause.

use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_testkit::kafka_gate::{Gate, GateTls, GatedKafka, Sasl, SaslMechanism};
use sluice_testkit::tls::{CertFiles, TestCa};

const PASSWORD_ENV: &str = "KAFKA_PASSWORD";
const PASSWORD: &str = "kafka-s3cret";

/// A cluster whose Kafka (200 orders over 2 partitions) requires `mechanism` over mutual
/// TLS, and whose driver and executors hold the password in their environment.
struct Secured {
    _certs: tempfile::TempDir,
    ca: TestCa,
    client: CertFiles,
    kafka: GatedKafka,
    cluster: TestCluster,
    mechanism: SaslMechanism,
}

impl Secured {
    async fn start(mechanism: SaslMechanism) -> Secured {
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
                sasl: Some(Sasl {
                    mechanism,
                    username: "sluice".into(),
                    password: PASSWORD.into(),
                }),
                transactions: false,
            },
        );
        let producer = sluice_datagen::synthetic::producer(&kafka.plain_bootstrap()).unwrap();
        sluice_datagen::synthetic::produce_orders(&producer, "orders", 2, 0, 200, None, |_| {})
            .unwrap();
        drop(producer);
        kafka.close_plaintext();

        let env = [(PASSWORD_ENV, PASSWORD)];
        let mut cluster = TestCluster::start_with_first_driver_env("unused", 1, 0, 1, &env)
            .await
            .unwrap();
        cluster.start_executor(&env).unwrap();
        cluster.start_executor(&env).unwrap();
        Secured {
            _certs: certs,
            ca,
            client,
            kafka,
            cluster,
            mechanism,
        }
    }

    /// A job reading the gated topic with `properties`.
    fn spec(&self, name: &str, properties: &str) -> String {
        self.cluster
            .spec(
                name,
                "orders",
                "SELECT order_id, _partition AS p, _offset AS o FROM source",
                "{available_now: true}",
                &format!("    properties: {{{properties}}}"),
            )
            .patched(&self.cluster.bootstrap_servers(), &self.kafka.bootstrap())
    }

    /// SASL_SSL with the client certificate and the password from `password_env`.
    fn secure_properties(&self, password_env: &str) -> String {
        format!(
            "security.protocol: SASL_SSL, sasl.mechanism: {}, sasl.username: sluice, \
             sasl.password: '${{env:{password_env}}}', ssl.ca.location: '{}', \
             ssl.certificate.location: '{}', ssl.key.location: '{}'",
            self.mechanism.name(),
            self.ca.ca_path().display(),
            self.client.cert.display(),
            self.client.key.display()
        )
    }

    /// Every record, once.
    async fn reads_every_record(&self) {
        let spec = self.spec("secured", &self.secure_properties(PASSWORD_ENV));
        let job = self.cluster.submit(&spec).await.unwrap();
        self.cluster.wait_until_finished(&job).await;
        let rows = self.cluster.table_rows(&spec).await.unwrap();
        sluice_integration_tests::check::assert_every_order_once(&rows, 200, 2, Some(("p", "o")));
    }
}

fn refusal(refused: Result<String, tonic::Status>) -> String {
    refused.unwrap_err().message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_through_sasl_plain_over_mutual_tls_and_bad_credentials_are_refused() {
    let secured = Secured::start(SaslMechanism::Plain).await;
    secured.reads_every_record().await;

    // A wrong password, plaintext, and TLS without the client certificate: refused.
    let wrong_password = secured.spec("wrong-password", &secured.secure_properties("HOME"));
    let plaintext = secured.spec("plaintext", "client.id: sluice");
    let no_client_cert = secured.spec(
        "no-client-cert",
        &format!(
            "security.protocol: SASL_SSL, sasl.mechanism: PLAIN, sasl.username: sluice, \
             sasl.password: '${{env:{PASSWORD_ENV}}}', ssl.ca.location: '{}'",
            secured.ca.ca_path().display()
        ),
    );
    let cluster = &secured.cluster;
    let (wrong_password, plaintext, no_client_cert) = futures::join!(
        cluster.submit(&wrong_password),
        cluster.submit(&plaintext),
        cluster.submit(&no_client_cert)
    );
    let (wrong_password, plaintext, no_client_cert) = (
        refusal(wrong_password),
        refusal(plaintext),
        refusal(no_client_cert),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_through_sasl_scram_and_a_wrong_password_is_refused() {
    let secured = Secured::start(SaslMechanism::ScramSha256).await;
    secured.reads_every_record().await;
    let wrong_password = secured.spec("wrong-password", &secured.secure_properties("HOME"));
    let refused = refusal(secured.cluster.submit(&wrong_password).await);
    assert!(
        refused.contains("SASL authentication error: Authentication failed"),
        "{refused}"
    );
}
