//! Test fixtures shared by unit and integration tests: a real etcd on free loopback ports,
//! mock Kafka topics, hostile record values, a small Parquet file, a schema registry, TLS
//! certificates, a Kafka broker behind TLS and SASL or with transactions. A dev-dependency
//! only.

pub mod kafka_gate;
pub mod kafka_transactions;
mod kafka_wire;
pub mod schema_registry;
pub mod tls;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports handed out below the kernel's ephemeral range (32768 and up on Linux), so an
/// outgoing connection's source port cannot take one between the pick and the bind.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on 127.0.0.1 (bound and released), never the same one twice in a
/// process, from outside the ephemeral range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each process starts at its own offset so concurrent test binaries rarely probe the
    // same ports; every probe moves the cursor on, so no port is handed out twice.
    static CURSOR: AtomicU16 = AtomicU16::new(0);
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let offset = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let step = CURSOR.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORT_RANGE.start + (offset + step) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORT_RANGE:?}")
}

/// A single-member etcd on loopback, killed and removed on drop.
pub struct EtcdServer {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data_dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers; fails with how to install it when missing.
    /// An etcd that exits at once (another process took a port after it was picked) is
    /// started again on fresh ports.
    pub fn start() -> Result<EtcdServer, String> {
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut server = EtcdServer {
                child: None,
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            };
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(StartError::Exited(message)) => last_error = message,
                Err(StartError::Fatal(message)) => return Err(message),
            }
        }
        Err(last_error)
    }

    /// Kills etcd (an outage); [`EtcdServer::restart`] brings it back with its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: a SIGTERM'd etcd can take seconds to exit.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd on the same ports and data directory and waits until it answers.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.stop();
        let binary = std::env::var("SLUICE_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let dir = self.data_dir.path();
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))
            .map_err(|e| StartError::Fatal(e.to_string()))?;
        let child = Command::new(&binary)
            .args(["--name", "n1", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                StartError::Fatal(format!(
                    "cannot start {binary:?}: {e}; install it with `apt-get install -y etcd-server`"
                ))
            })?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(30))
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(StartError::Exited(format!(
                    "etcd on port {} exited ({status}): {}",
                    self.client_port,
                    self.log_tail()
                )));
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) {
                use std::io::{Read, Write};
                let request = "GET /health HTTP/1.0\r\n\r\n";
                let mut body = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut body).is_ok()
                    && body.contains("\"health\":\"true\"")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(StartError::Fatal(format!(
            "etcd on port {} did not become healthy within {timeout:?}: {}",
            self.client_port,
            self.log_tail()
        )))
    }

    /// The last lines etcd logged, for start-up errors.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.data_dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// The client URL, e.g. `http://127.0.0.1:23790`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Where the server keeps its data and log.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }
}

/// Why etcd did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process exited at once, typically because a port was taken; worth a retry on
    /// other ports.
    #[error("{0}")]
    Exited(String),
    /// Not started, or started and never healthy.
    #[error("{0}")]
    Fatal(String),
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Rows of `batches` as sorted strings, for comparing results whatever their order and
/// batching: floats keep 9 significant digits (sums in another order may differ in the
/// last bits), other values print as Arrow displays them.
pub fn normalized_rows(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float32Type, Float64Type};
    use arrow::util::display::{ArrayFormatter, FormatOptions};

    let mut rows = vec![];
    for batch in batches {
        let columns: Vec<Box<dyn Fn(usize) -> String>> = batch
            .columns()
            .iter()
            .map(|column| -> Box<dyn Fn(usize) -> String> {
                let column = column.clone();
                match column.data_type() {
                    DataType::Float64 | DataType::Float32 => Box::new(move |i| {
                        if column.is_null(i) {
                            return "NULL".into();
                        }
                        let v = match column.data_type() {
                            DataType::Float64 => column.as_primitive::<Float64Type>().value(i),
                            _ => column.as_primitive::<Float32Type>().value(i) as f64,
                        };
                        format!("{v:.8e}")
                    }),
                    _ => Box::new(move |i| {
                        let options = FormatOptions::default().with_null("NULL");
                        ArrayFormatter::try_new(column.as_ref(), &options)
                            .map(|f| f.value(i).to_string())
                            .unwrap_or_else(|e| format!("<{e}>"))
                    }),
                }
            })
            .collect();
        for i in 0..batch.num_rows() {
            let row: Vec<String> = columns.iter().map(|c| c(i)).collect();
            rows.push(row.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// Writes the `regions` dimension used by tests, (country, region) with no region for JP,
/// as a Parquet file at `path`.
pub fn write_regions_parquet(path: &std::path::Path) -> sluice_core::Result<()> {
    use std::sync::Arc;

    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let schema = Arc::new(Schema::new(vec![
        Field::new("country", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["DE", "FR", "NL", "US"])),
            Arc::new(StringArray::from(vec!["EU", "EU", "EU", "NA"])),
        ],
    )?;
    let io = |source: std::io::Error| sluice_core::Error::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let parquet = |e: parquet::errors::ParquetError| io(std::io::Error::other(e));
    let file = std::fs::File::create(path).map_err(io)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(parquet)?;
    writer.write(&batch).map_err(parquet)?;
    writer.close().map_err(parquet)?;
    Ok(())
}

/// A mock Kafka cluster whose single-partition topic `topic` holds order events at
/// offsets `0..records`.
pub fn mock_topic(
    topic: &str,
    records: u64,
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let kafka = rdkafka::mocking::MockCluster::new(1).expect("mock Kafka cluster");
    kafka.create_topic(topic, 1, 1).expect("mock topic");
    let producer =
        sluice_datagen::synthetic::producer(&kafka.bootstrap_servers()).expect("producer");
    sluice_datagen::synthetic::produce_orders(&producer, topic, 1, 0, records, None, |_| {})
        .expect("producing to the mock topic");
    kafka
}

/// Offsets `start..end` of partition 0 of `topic`.
pub fn partition_range(topic: &str, start: i64, end: i64) -> sluice_kafka::offsets::OffsetRange {
    sluice_kafka::offsets::OffsetRange {
        topic: topic.into(),
        partition: 0,
        start,
        end,
    }
}

/// Record values a hostile or broken producer may send, each named: deep nesting that
/// crashes recursive decoders, invalid text, numbers out of range, wrong shapes and sizes.
/// `None` is a tombstone (a record without a value).
pub fn hostile_values() -> Vec<(&'static str, Option<Vec<u8>>)> {
    let nested = |open: &str, close: &str, depth: usize| {
        let mut value = open.repeat(depth);
        value.push_str(&close.repeat(depth));
        Some(value.into_bytes())
    };
    vec![
        ("a 200,000-deep array", nested("[", "]", 200_000)),
        ("a 100,000-deep object", nested("{\"a\":", "}", 100_000)),
        ("a 5,000-deep object", nested("{\"a\":", "}", 5_000)),
        (
            "a deep value in a typed field",
            Some(
                format!(
                    "{{\"order_id\": {}1{}}}",
                    "[".repeat(50_000),
                    "]".repeat(50_000)
                )
                .into_bytes(),
            ),
        ),
        (
            "invalid UTF-8",
            Some(b"{\"order_id\": \"\xff\xfe\"}".to_vec()),
        ),
        ("1e400", Some(b"{\"product_id\": 1e400}".to_vec())),
        (
            "a 23-digit integer",
            Some(b"{\"product_id\": 12345678901234567890123}".to_vec()),
        ),
        (
            "wrong types",
            Some(b"{\"order_id\": 5, \"product_id\": \"x\", \"amount\": [1]}".to_vec()),
        ),
        ("a bare array", Some(b"[1, 2, 3]".to_vec())),
        ("empty", Some(Vec::new())),
        ("null", Some(b"null".to_vec())),
        ("NUL bytes", Some(b"{\"order_id\": \"a\0b\"}\0".to_vec())),
        ("NaN", Some(b"{\"amount\": NaN}".to_vec())),
        (
            "a 900 KB string",
            Some(format!("{{\"amount\": \"{}\"}}", "x".repeat(900_000)).into_bytes()),
        ),
        ("a tombstone", None),
    ]
}
