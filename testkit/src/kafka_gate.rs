//! A mock Kafka cluster that only lets in clients speaking the security it demands: TLS
//! (optionally with client certificates) and SASL (PLAIN or SCRAM-SHA-256) with one
//! username and password.
//!
//! librdkafka's mock broker speaks plaintext only, so a gate stands in front of it: a
//! proxy that terminates TLS, answers the SASL handshake and authentication itself
//! (advertising them in the broker's ApiVersions answer), closes any connection that does
//! anything else before authenticating, and then passes bytes through. Once
//! [`GatedKafka::close_plaintext`] is called the broker advertises the gate's address, so
//! every client that follows the cluster's metadata, wherever it bootstrapped, reaches
//! the broker only through the gate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::kafka_transactions::{
    relay, write_transaction, AbortedTransactions, Outcome, WrittenTransaction,
};
use crate::kafka_wire::{
    api_versions_entries, push_string, read_frame, write_frame, RequestHeader, API_VERSIONS,
};

/// Kafka API keys the gate handles.
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
/// Kafka error codes the gate answers with.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// What the gate demands of a client.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// TLS with this certificate and key (PEM files).
    pub tls: Option<GateTls>,
    /// SASL with this mechanism, username and password.
    pub sasl: Option<Sasl>,
    /// List the aborted transactions written by [`GatedKafka::write_transaction`] in
    /// fetch answers, as a broker does (the mock broker lists none).
    pub transactions: bool,
}

/// The SASL login the gate demands.
#[derive(Debug, Clone)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

/// The SASL mechanisms the gate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
}

impl SaslMechanism {
    /// The mechanism's name in Kafka's SASL handshake (`sasl.mechanism`).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

/// The gate's TLS: its certificate and key, and the CA client certificates must be signed
/// by (none: no client certificate asked for).
#[derive(Debug, Clone)]
pub struct GateTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

/// A one-broker mock cluster behind a [`Gate`].
pub struct GatedKafka {
    /// Owns the mock cluster (created with `test.mock.num.brokers`).
    producer: BaseProducer,
    /// The mock broker's own address.
    broker: SocketAddr,
    gate_address: SocketAddr,
    /// Transactions written through [`GatedKafka::write_transaction`] and aborted.
    aborted: Arc<AbortedTransactions>,
    /// The producer id of the next transaction.
    next_producer_id: AtomicI64,
    /// Dropped with the fixture: the gate stops.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl GatedKafka {
    /// A mock broker with `topic` of `partitions`, and a gate in front of it. Until
    /// [`GatedKafka::close_plaintext`], clients may still use [`GatedKafka::plain_bootstrap`]
    /// (to produce test data).
    pub fn start(topic: &str, partitions: i32, gate: Gate) -> GatedKafka {
        let producer: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("log_level", "3")
            .create()
            .expect("mock cluster");
        let broker: SocketAddr = {
            let mock = producer.client().mock_cluster().expect("mock cluster");
            mock.create_topic(topic, partitions, 1).expect("topic");
            mock.bootstrap_servers()
                .split(',')
                .next()
                .and_then(|a| a.parse().ok())
                .expect("mock broker address")
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("gate port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let gate_address = listener.local_addr().expect("gate address");
        let aborted = Arc::new(AbortedTransactions::default());
        let gate = Arc::new(GateState::new(gate, aborted.clone()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        // Its own thread and runtime: the fixture works in sync and async tests alike.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("gate runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("gate listener");
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { break };
                            let gate = gate.clone();
                            tokio::spawn(async move {
                                // A refused or broken connection is for the client to report.
                                let _ = gate.serve(client, broker).await;
                            });
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
        });
        GatedKafka {
            producer,
            broker,
            gate_address,
            aborted,
            next_producer_id: AtomicI64::new(1_000),
            _stop: stop,
        }
    }

    /// The broker's own plaintext address (before [`GatedKafka::close_plaintext`]).
    pub fn plain_bootstrap(&self) -> String {
        self.producer
            .client()
            .mock_cluster()
            .expect("mock cluster")
            .bootstrap_servers()
    }

    /// Writes a transaction of `values` to `topic`/`partition` and ends it with `outcome`
    /// (each transaction has a producer of its own).
    pub fn write_transaction(
        &self,
        topic: &str,
        partition: i32,
        values: &[Vec<u8>],
        outcome: Outcome,
    ) -> WrittenTransaction {
        let producer_id = self.next_producer_id.fetch_add(1, Ordering::Relaxed);
        let written =
            write_transaction(self.broker, topic, partition, producer_id, values, outcome)
                .expect("transaction written");
        if outcome == Outcome::Abort {
            self.aborted.add(topic, partition, written);
        }
        written
    }

    /// The gate's address: the bootstrap servers of a job.
    pub fn bootstrap(&self) -> String {
        self.gate_address.to_string()
    }

    /// From now on the broker advertises the gate's address: clients following the
    /// cluster's metadata reach the broker only through the gate.
    pub fn close_plaintext(&self) {
        let host = std::ffi::CString::new(self.gate_address.ip().to_string()).expect("host");
        // SAFETY: the mock cluster lives as long as `self.producer`, which owns it; the
        // call copies `host`.
        unsafe {
            let mock = rdkafka::bindings::rd_kafka_handle_mock_cluster(
                self.producer.client().native_ptr(),
            );
            assert!(!mock.is_null(), "the producer owns a mock cluster");
            rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                mock,
                1,
                host.as_ptr(),
                i32::from(self.gate_address.port()),
            );
        }
    }
}

/// The gate's configuration, loaded.
struct GateState {
    tls: Option<tokio_rustls::TlsAcceptor>,
    sasl: Option<Sasl>,
    /// The aborted transactions to list in fetch answers, when the gate does.
    transactions: Option<Arc<AbortedTransactions>>,
}

/// A client connection, with or without TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl GateState {
    fn new(gate: Gate, aborted: Arc<AbortedTransactions>) -> GateState {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = gate.tls.map(|tls| {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
                .expect("gate certificate")
                .collect::<Result<_, _>>()
                .expect("gate certificate");
            let key = PrivateKeyDer::from_pem_file(&tls.key).expect("gate key");
            let builder = rustls::ServerConfig::builder();
            let config = match &tls.client_ca {
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    for cert in CertificateDer::pem_file_iter(ca).expect("client CA") {
                        roots.add(cert.expect("client CA")).expect("client CA");
                    }
                    let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into())
                        .build()
                        .expect("client verifier");
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            }
            .with_single_cert(chain, key)
            .expect("gate TLS configuration");
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        GateState {
            tls,
            sasl: gate.sasl,
            transactions: gate.transactions.then_some(aborted),
        }
    }

    async fn serve(&self, client: TcpStream, broker: SocketAddr) -> std::io::Result<()> {
        client.set_nodelay(true)?;
        let mut client: Box<dyn Stream> = match &self.tls {
            Some(acceptor) => Box::new(acceptor.accept(client).await?),
            None => Box::new(client),
        };
        let mut broker = TcpStream::connect(broker).await?;
        broker.set_nodelay(true)?;
        if let Some(sasl) = &self.sasl {
            authenticate(&mut client, &mut broker, sasl).await?;
        }
        match &self.transactions {
            Some(aborted) => relay(client, broker, aborted.clone()).await,
            None => tokio::io::copy_bidirectional(&mut client, &mut broker)
                .await
                .map(|_| ()),
        }
    }
}

fn refused(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_string())
}

/// Runs the SASL exchange; any other request before it succeeds closes the connection,
/// as a broker requiring SASL does.
async fn authenticate(
    client: &mut Box<dyn Stream>,
    broker: &mut TcpStream,
    sasl: &Sasl,
) -> std::io::Result<()> {
    let mut scram: Option<Scram> = None;
    loop {
        let request = read_frame(client).await?;
        let header = RequestHeader::parse(&request).ok_or_else(|| refused("short request"))?;
        match header.api_key {
            API_VERSIONS => {
                write_frame(broker, &request).await?;
                let response = read_frame(broker).await?;
                let response = if header.api_version <= 2 {
                    advertise_sasl(response, header.api_version)
                } else {
                    // The mock broker answers newer versions with UNSUPPORTED_VERSION and
                    // the client asks again with an older one.
                    response
                };
                write_frame(client, &response).await?;
            }
            SASL_HANDSHAKE => {
                let mechanism = read_string(&request[header.body..]).unwrap_or_default();
                let mut response = header.correlation_id.to_be_bytes().to_vec();
                let error = if mechanism == sasl.mechanism.name() {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                response.extend(error.to_be_bytes());
                response.extend(1i32.to_be_bytes());
                push_string(&mut response, sasl.mechanism.name());
                write_frame(client, &response).await?;
                if error != 0 {
                    return Err(refused("unsupported SASL mechanism"));
                }
            }
            SASL_AUTHENTICATE => {
                let token = read_bytes(&request[header.body..]).unwrap_or_default();
                let step = match sasl.mechanism {
                    SaslMechanism::Plain => plain_step(&token, sasl),
                    SaslMechanism::ScramSha256 => match scram.take() {
                        None => Scram::first(&token, sasl).map(|(state, reply)| {
                            scram = Some(state);
                            Step::Continue(reply)
                        }),
                        Some(state) => state.last(&token),
                    },
                }
                .unwrap_or(Step::Refused);
                let mut response = header.correlation_id.to_be_bytes().to_vec();
                let reply = match &step {
                    Step::Refused => {
                        response.extend(SASL_AUTHENTICATION_FAILED.to_be_bytes());
                        push_string(&mut response, "Authentication failed: invalid credentials");
                        vec![]
                    }
                    Step::Continue(reply) | Step::Done(reply) => {
                        response.extend(0i16.to_be_bytes());
                        response.extend((-1i16).to_be_bytes());
                        reply.clone()
                    }
                };
                response.extend((reply.len() as i32).to_be_bytes());
                response.extend(reply);
                if header.api_version >= 1 {
                    response.extend(0i64.to_be_bytes());
                }
                write_frame(client, &response).await?;
                match step {
                    Step::Continue(_) => {}
                    Step::Done(_) => return Ok(()),
                    Step::Refused => return Err(refused("wrong SASL credentials")),
                }
            }
            _ => return Err(refused("a request before SASL authentication")),
        }
    }
}

/// Where a SASL exchange stands after a client message, with the gate's reply.
enum Step {
    Continue(Vec<u8>),
    Done(Vec<u8>),
    Refused,
}

/// PLAIN: authorization id, NUL, username, NUL, password.
fn plain_step(token: &[u8], sasl: &Sasl) -> Option<Step> {
    let mut parts = token.split(|b| *b == 0).skip(1);
    let accepted = parts.next() == Some(sasl.username.as_bytes())
        && parts.next() == Some(sasl.password.as_bytes());
    Some(if accepted {
        Step::Done(vec![])
    } else {
        Step::Refused
    })
}

/// SCRAM-SHA-256 (RFC 5802, 7677) after the client's first message.
struct Scram {
    auth_start: String,
    nonce: String,
    salted: [u8; 32],
}

const SCRAM_ITERATIONS: u32 = 4096;

impl Scram {
    /// The client's first message (`n,,n=user,r=nonce`): the server's challenge.
    fn first(token: &[u8], sasl: &Sasl) -> Option<(Scram, Vec<u8>)> {
        use base64::Engine;
        let text = std::str::from_utf8(token).ok()?;
        let bare = text.strip_prefix("n,,")?;
        let mut user = None;
        let mut client_nonce = None;
        for part in bare.split(',') {
            if let Some(u) = part.strip_prefix("n=") {
                user = Some(u);
            } else if let Some(r) = part.strip_prefix("r=") {
                client_nonce = Some(r);
            }
        }
        if user? != sasl.username {
            return None;
        }
        let nonce = format!("{}gate{}", client_nonce?, std::process::id());
        let salt = b"sluice-test-salt";
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(SCRAM_ITERATIONS).expect("iterations"),
            salt,
            sasl.password.as_bytes(),
            &mut salted,
        );
        let server_first = format!(
            "r={nonce},s={},i={SCRAM_ITERATIONS}",
            base64::engine::general_purpose::STANDARD.encode(salt)
        );
        let state = Scram {
            auth_start: format!("{bare},{server_first}"),
            nonce,
            salted,
        };
        Some((state, server_first.into_bytes()))
    }

    /// The client's final message (`c=…,r=nonce,p=proof`): accepted when the proof is the
    /// password's, answered with the server's signature.
    fn last(self, token: &[u8]) -> Option<Step> {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let text = std::str::from_utf8(token).ok()?;
        let (without_proof, proof) = text.rsplit_once(",p=")?;
        if !without_proof.contains(&format!("r={}", self.nonce)) {
            return Some(Step::Refused);
        }
        let proof = engine.decode(proof).ok()?;
        let hmac = |key: &[u8], data: &[u8]| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            ring::hmac::sign(&key, data).as_ref().to_vec()
        };
        let client_key = hmac(&self.salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let auth_message = format!("{},{without_proof}", self.auth_start);
        let signature = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let presented: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let presented_stored = ring::digest::digest(&ring::digest::SHA256, &presented);
        if proof.len() != signature.len() || presented_stored.as_ref() != stored_key.as_ref() {
            return Some(Step::Refused);
        }
        let server_key = hmac(&self.salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        Some(Step::Done(
            format!("v={}", engine.encode(server_signature)).into_bytes(),
        ))
    }
}

/// Adds SaslHandshake and SaslAuthenticate (versions 0 to 1) to an ApiVersions answer of
/// version 0 to 2: correlation id, error code, an i32 count, 6-byte entries, then (from
/// version 1) the throttle time.
fn advertise_sasl(response: Vec<u8>, version: i16) -> Vec<u8> {
    let Some(entries) = api_versions_entries(&response) else {
        return response;
    };
    let entries_end = entries.end;
    if response.len() < entries_end + if version >= 1 { 4 } else { 0 } {
        return response;
    }
    let count = (entries.len() / 6) as i32;
    let mut patched = response[..6].to_vec();
    patched.extend((count + 2).to_be_bytes());
    patched.extend(&response[entries]);
    for key in [SASL_HANDSHAKE, SASL_AUTHENTICATE] {
        patched.extend(key.to_be_bytes());
        patched.extend(0i16.to_be_bytes());
        patched.extend(1i16.to_be_bytes());
    }
    patched.extend(&response[entries_end..]);
    patched
}

fn read_string(body: &[u8]) -> Option<String> {
    let len = i16::from_be_bytes(body.get(0..2)?.try_into().ok()?);
    let bytes = body.get(2..2 + len.max(0) as usize)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn read_bytes(body: &[u8]) -> Option<Vec<u8>> {
    let len = i32::from_be_bytes(body.get(0..4)?.try_into().ok()?);
    Some(body.get(4..4 + len.max(0) as usize)?.to_vec())
}
