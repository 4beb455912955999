//! Fixtures for end-to-end tests: real etcd, a mock Kafka cluster hosted by the test, and
//! the real `sluice-driver` / `sluice-executor` binaries, each with its own log file.
//! Every child is killed when the fixture drops.

pub mod check;
pub mod differential;
pub mod readers;
pub mod services;
pub mod text;

pub use text::{seeded, Patched};

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use sluice_core::spec::JobSpec;
use sluice_datagen::synthetic::{produce_orders, producer};
use sluice_iceberg::catalog::open_catalog;
use sluice_iceberg::data_files::file_name;
use sluice_iceberg::sink::{dead_letter_ident, table_ident};
use sluice_iceberg::storage::list_with_prefix;
use sluice_proto::v1::driver_client::DriverClient;
use sluice_proto::v1::{BatchProgress, GetJobStatusRequest, JobStatus, SubmitJobRequest};
use sluice_testkit::{free_port, EtcdServer};
use tonic::transport::Channel;

/// Where cargo put the binaries (`target/debug` or `target/release`), found from this
/// executable: a test lives in `deps/` below them, a bench binary beside them.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let beside = exe.parent().expect("executable directory");
    let dir = if beside.ends_with("deps") {
        beside.parent().expect("target directory")
    } else {
        beside
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// A cluster of real processes for one test.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub etcd: EtcdServer,
    pub kafka: MockCluster<'static, DefaultProducerContext>,
    /// One port per driver; several drivers campaign for leadership.
    pub driver_ports: Vec<u16>,
    /// Each driver's HTTP port (probes, metrics, status page).
    pub driver_http_ports: Vec<u16>,
    drivers: Vec<Option<Child>>,
    executors: Vec<Child>,
    /// Each executor's HTTP port (probes, metrics), kept across restarts.
    executor_http_ports: Vec<u16>,
    starts: HashMap<String, u32>,
    /// Extra environment of the next driver start (e.g. armed failpoints).
    pub driver_env: Vec<(String, String)>,
    /// With TLS on the drivers: how the tests (and executors, by URL) reach them.
    tls: Option<sluice_proto::tls::Tls>,
}

impl TestCluster {
    /// Starts etcd, a mock Kafka cluster with `topic` of `partitions`, a driver and
    /// `executors` executors.
    pub async fn start(topic: &str, partitions: i32, executors: usize) -> Result<TestCluster> {
        Self::start_with_drivers(topic, partitions, executors, 1).await
    }

    /// Like [`TestCluster::start`] with `drivers` drivers (one leader, the rest standby).
    pub async fn start_with_drivers(
        topic: &str,
        partitions: i32,
        executors: usize,
        drivers: usize,
    ) -> Result<TestCluster> {
        Self::start_with_first_driver_env(topic, partitions, executors, drivers, &[]).await
    }

    /// Like [`TestCluster::start_with_drivers`]; driver 0 starts alone with `env` (e.g.
    /// armed failpoints) and leads, then the others start as standbys.
    pub async fn start_with_first_driver_env(
        topic: &str,
        partitions: i32,
        executors: usize,
        drivers: usize,
        env: &[(&str, &str)],
    ) -> Result<TestCluster> {
        Self::start_configured(topic, partitions, executors, drivers, env, None).await
    }

    /// A cluster whose driver serves TLS (its certificate in `env`); the tests reach it
    /// with `client_tls` and executors are given its `https://` URL (their own TLS files
    /// go in [`TestCluster::start_executor`]'s environment). No executors start here.
    pub async fn start_with_tls(
        topic: &str,
        partitions: i32,
        env: &[(&str, &str)],
        client_tls: sluice_proto::tls::Tls,
    ) -> Result<TestCluster> {
        Self::start_configured(topic, partitions, 0, 1, env, Some(client_tls)).await
    }

    async fn start_configured(
        topic: &str,
        partitions: i32,
        executors: usize,
        drivers: usize,
        env: &[(&str, &str)],
        tls: Option<sluice_proto::tls::Tls>,
    ) -> Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("sluice-it-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        let etcd = EtcdServer::start().map_err(anyhow::Error::msg)?;
        let kafka = MockCluster::new(1).context("mock Kafka cluster")?;
        kafka.create_topic(topic, partitions, 1)?;
        let mut cluster = TestCluster {
            dir,
            etcd,
            kafka,
            driver_ports: (0..drivers).map(|_| free_port()).collect(),
            driver_http_ports: (0..drivers).map(|_| free_port()).collect(),
            drivers: (0..drivers).map(|_| None).collect(),
            executors: Vec::new(),
            executor_http_ports: Vec::new(),
            starts: HashMap::new(),
            driver_env: Vec::new(),
            tls,
        };
        cluster.driver_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster.start_first_driver()?;
        cluster.driver_env.clear();
        if drivers > 1 {
            cluster.wait_for_driver().await?;
        }
        for i in 1..drivers {
            cluster.start_driver_at(i)?;
        }
        for _ in 0..executors {
            cluster.start_executor(&[])?;
        }
        cluster.wait_for_driver().await?;
        Ok(cluster)
    }

    pub fn bootstrap_servers(&self) -> String {
        self.kafka.bootstrap_servers()
    }

    /// Every driver's URL, comma-separated (as executors and the CLI take them).
    pub fn driver_url(&self) -> String {
        self.driver_ports
            .iter()
            .map(|port| format!("{}://127.0.0.1:{port}", self.scheme()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A driver client on `port` whose connect and calls give up after a few seconds.
    async fn connect(&self, port: u16) -> Result<DriverClient<Channel>> {
        let url = format!("{}://127.0.0.1:{port}", self.scheme());
        let channel = match &self.tls {
            Some(tls) => tls.endpoint(&url)?,
            None => Channel::from_shared(url)?,
        }
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .connect()
        .await?;
        Ok(DriverClient::new(channel))
    }

    fn log(&mut self, name: &str) -> Result<std::fs::File> {
        let n = self.starts.entry(name.to_string()).or_insert(0);
        *n += 1;
        let path = self.dir.path().join("logs").join(format!("{name}-{n}.log"));
        Ok(std::fs::File::create(path)?)
    }

    /// Starts driver 0, the first leader, and waits until it serves or exits. A free port
    /// chosen for it may be taken by another process before the driver binds it; then the
    /// driver exits and is started again on other ports.
    fn start_first_driver(&mut self) -> Result<()> {
        for _ in 0..3 {
            self.start_driver_at(0)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", self.driver_ports[0])).is_ok() {
                    return Ok(());
                }
                let driver = self.drivers[0].as_mut().expect("driver 0 started");
                if driver.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    // Slow, not gone: `wait_for_driver` reports it.
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.driver_ports[0] = free_port();
            self.driver_http_ports[0] = free_port();
        }
        bail!(
            "driver 0 exited at start three times; logs in {}",
            self.dir.path().display()
        )
    }

    /// Starts (or restarts) the first driver on the same port, with the same etcd.
    pub fn start_driver(&mut self) -> Result<()> {
        self.start_driver_at(0)
    }

    /// Starts (or restarts) driver `i`.
    pub fn start_driver_at(&mut self, i: usize) -> Result<()> {
        let log = self.log(&format!("driver{i}"))?;
        let child = Command::new(binary("sluice-driver"))
            .args(["--bind", &format!("127.0.0.1:{}", self.driver_ports[i])])
            .args(["--leader-lease-secs", "2"])
            .args([
                "--http-bind",
                &format!("127.0.0.1:{}", self.driver_http_ports[i]),
            ])
            .args(["--etcd", &self.etcd.endpoint()])
            .args(["--executor-timeout-secs", "5"])
            .env("RUST_LOG", "info")
            .envs(self.driver_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.drivers[i] = Some(child);
        Ok(())
    }

    /// Starts one more executor with extra environment variables.
    pub fn start_executor(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let child = self.spawn_executor(self.executors.len(), env)?;
        self.executors.push(child);
        Ok(())
    }

    fn spawn_executor(&mut self, i: usize, env: &[(&str, &str)]) -> Result<Child> {
        let id = format!("executor-{i}");
        let log = self.log(&id)?;
        if self.executor_http_ports.len() <= i {
            self.executor_http_ports.push(free_port());
        }
        let http = format!("127.0.0.1:{}", self.executor_http_ports[i]);
        Ok(Command::new(binary("sluice-executor"))
            .args(["--driver", &self.driver_url(), "--id", &id])
            .args(["--http-bind", &http])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    /// SIGKILLs executor `i`.
    pub fn kill_executor(&mut self, i: usize) {
        let _ = self.executors[i].kill();
        let _ = self.executors[i].wait();
    }

    /// Starts executor `i` again (after it was killed or died), with the same id.
    pub fn restart_executor(&mut self, i: usize) -> Result<()> {
        self.restart_executor_with(i, &[])
    }

    /// Like [`TestCluster::restart_executor`] with extra environment variables.
    pub fn restart_executor_with(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        self.kill_executor(i);
        self.executors[i] = self.spawn_executor(i, env)?;
        Ok(())
    }

    /// SIGTERMs executor `i` and waits for it to exit.
    pub async fn terminate_executor(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let child = &mut self.executors[i];
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("executor {i} did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some process log contains `text`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) -> Result<()> {
        let found = || async { self.logs_tail(usize::MAX).contains(text) };
        self.wait_until(timeout, &format!("a log line with {text:?}"), found)
            .await
    }

    /// Polls `holds` every 50 ms until it is true; fails after `timeout` naming `what`,
    /// with the processes' last log lines.
    pub async fn wait_until<F, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        mut holds: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if holds().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no {what} within {timeout:?}\n{}", self.logs_tail(40))
    }

    /// Whether driver `i` is running.
    pub fn driver_running(&mut self, i: usize) -> bool {
        match &mut self.drivers[i] {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Waits for the driver to exit by itself (e.g. at a failpoint).
    pub async fn wait_driver_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let driver = self.drivers[0].as_mut().context("no driver running")?;
        loop {
            if let Some(status) = driver.try_wait()? {
                self.drivers[0] = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "the driver did not exit within {timeout:?}\n{}",
                    self.logs_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether executor `i` has exited.
    /// Waits until executor `i` exited (e.g. at an armed failpoint); fails after `timeout`
    /// naming `what` it should have died at.
    pub async fn wait_executor_exit(&mut self, i: usize, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while !self.executor_exited(i) {
            assert!(Instant::now() < deadline, "executor {i} did not die {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a Python script (pyiceberg and the like, which `make test` installs) and
    /// returns what it printed; fails with its error output.
    pub fn python(script: &str) -> String {
        let output = Command::new("python3")
            .args(["-c", script])
            .output()
            .expect("python3 (make test installs pyiceberg)");
        assert!(
            output.status.success(),
            "python: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn executor_exited(&mut self, i: usize) -> bool {
        self.executors[i].try_wait().ok().flatten().is_some()
    }

    /// Sends `signal` to driver `i` (SIGSTOP pauses it as a long GC pause or a frozen VM
    /// would; SIGCONT wakes it).
    pub fn signal_driver(&self, i: usize, signal: Signal) -> Result<()> {
        let driver = self.drivers[i].as_ref().context("driver not running")?;
        kill(Pid::from_raw(driver.id() as i32), signal)?;
        Ok(())
    }

    /// The value of a metric line `name{labels}` in the serving driver's /metrics.
    pub async fn driver_metric(&self, series: &str) -> Result<f64> {
        let leader = self.leader().await.context("no driver serves")?;
        let (_, body) = self.http_get(leader, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no metric {series} in {body}"))
    }

    /// The job's offset log and checkpoint in etcd.
    pub async fn job_log(&self, job: &str) -> Result<sluice_driver::checkpoint::JobLog> {
        let store = sluice_driver::checkpoint::EtcdStore::connect(&[self.etcd.endpoint()]).await?;
        Ok(sluice_driver::checkpoint::JobLog::new(
            std::sync::Arc::new(store),
            job,
        ))
    }

    /// The job's offset log and checkpoint in etcd: (last logged batch, checkpointed batch).
    pub async fn logged_and_checkpointed(&self, job: &str) -> Result<(i64, i64)> {
        let log = self.job_log(job).await?;
        let logged = log.last_plan().await?.map_or(-1, |p| p.batch_id.get());
        let checkpointed = log.checkpoint().await?.map_or(-1, |c| c.batch_id.get());
        Ok((logged, checkpointed))
    }

    /// SIGKILLs the driver: no chance to finish anything.
    pub fn kill_driver(&mut self) {
        self.kill_driver_at(0)
    }

    /// SIGKILLs driver `i`.
    pub fn kill_driver_at(&mut self, i: usize) {
        if let Some(mut driver) = self.drivers[i].take() {
            let _ = driver.kill();
            let _ = driver.wait();
        }
    }

    /// SIGTERMs the driver and waits for it to exit.
    pub fn terminate_driver(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut driver = self.drivers[0].take().context("no driver running")?;
        kill(Pid::from_raw(driver.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = driver.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = driver.kill();
                bail!("the driver did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn wait_for_driver(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = self.client().await {
                // A driver that wants a token serves too.
                match client.list_jobs(sluice_proto::v1::ListJobsRequest {}).await {
                    Ok(_) => return Ok(()),
                    Err(status) if status.code() == tonic::Code::Unauthenticated => return Ok(()),
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "driver did not come up within 30 s; logs in {}:\n{}",
                    self.dir.path().display(),
                    self.logs_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GETs `path` from driver `i`'s HTTP server: (status code, body).
    pub fn http_get(&self, i: usize, path: &str) -> Result<(u16, String)> {
        http_get(self.driver_http_ports[i], path)
    }

    /// GETs `path` from executor `i`'s HTTP server: (status code, body).
    pub fn executor_http_get(&self, i: usize, path: &str) -> Result<(u16, String)> {
        http_get(self.executor_http_ports[i], path)
    }

    /// The value of an unlabelled gauge or counter in executor `i`'s /metrics.
    pub fn executor_metric(&self, i: usize, name: &str) -> Result<f64> {
        let (_, body) = self.executor_http_get(i, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no metric {name} in {body}"))
    }
}

/// Whether the driver serves: a paused or standby driver does not answer within 3 s. A
/// driver that wants a token answers too, with `UNAUTHENTICATED`.
async fn answers(client: &mut DriverClient<Channel>) -> Result<()> {
    let call = client.list_jobs(sluice_proto::v1::ListJobsRequest {});
    match tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .context("the driver did not answer within 3 s")?
    {
        Err(status) if status.code() != tonic::Code::Unauthenticated => Err(status.into()),
        _ => Ok(()),
    }
}

/// GETs `path` from 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        // A paused process accepts the connection but never answers.
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status line")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }
}

impl TestCluster {
    /// A client of the serving driver (standby drivers do not listen; a paused one is
    /// skipped after a short deadline).
    pub async fn client(&self) -> Result<DriverClient<Channel>> {
        let mut last = None;
        for port in &self.driver_ports {
            let answered = async {
                let mut client = self.connect(*port).await?;
                answers(&mut client).await?;
                Ok::<_, anyhow::Error>(client)
            };
            match answered.await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no driver")))
    }

    /// The index of the driver that serves (the leader).
    pub async fn leader(&self) -> Option<usize> {
        for (i, port) in self.driver_ports.iter().enumerate() {
            if let Ok(mut client) = self.connect(*port).await {
                if answers(&mut client).await.is_ok() {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Produces order events `first..first+count` round-robin over `partitions`.
    pub fn produce_orders(
        &self,
        topic: &str,
        partitions: i32,
        first: u64,
        count: u64,
    ) -> Result<()> {
        let producer = producer(&self.bootstrap_servers())?;
        produce_orders(&producer, topic, partitions, first, count, None, |_| {})?;
        Ok(())
    }

    /// Produces `count` valid order events of about `pad_bytes` each to one partition,
    /// uncompressed: enough of them push older offsets out of the mock broker's log.
    pub fn produce_padded(
        &self,
        topic: &str,
        partition: i32,
        count: u64,
        pad_bytes: usize,
    ) -> Result<()> {
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("message.max.bytes", "2000000")
            .create()?;
        let pad = "x".repeat(pad_bytes);
        for i in 0..count {
            let value =
                format!(r#"{{"order_id":"pad-{i}","product_id":1,"amount":1.0,"pad":"{pad}"}}"#);
            producer
                .send(
                    BaseRecord::<str, str>::to(topic)
                        .payload(&value)
                        .partition(partition),
                )
                .map_err(|(e, _)| e)?;
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// The partition's earliest offset still in Kafka.
    pub fn low_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        let reader = sluice_kafka::read::OffsetReader::new(&self.bootstrap_servers())?;
        Ok(reader.watermarks(&[topic.to_string()])?[&(topic.to_string(), partition)].low)
    }

    /// Produces raw values to one partition.
    pub fn produce_raw(&self, topic: &str, partition: i32, values: &[&str]) -> Result<()> {
        let values: Vec<Option<Vec<u8>>> =
            values.iter().map(|v| Some(v.as_bytes().to_vec())).collect();
        self.produce_values(topic, partition, &values)
    }

    /// Produces one order per customer in `customers`, all at event time `ts_ms`,
    /// customer `c` to partition `c % partitions` of `topic`.
    pub fn produce_customer_orders(
        &self,
        topic: &str,
        partitions: i32,
        customers: std::ops::Range<i64>,
        ts_ms: i64,
    ) -> Result<()> {
        for partition in 0..partitions {
            let values: Vec<String> = customers
                .clone()
                .filter(|c| c % partitions as i64 == partition as i64)
                .map(|c| {
                    format!(
                        r#"{{"order_id":"o{c}-{ts_ms}","customer_id":{c},"product_id":1,"amount":1.0,"country":"DE","ts":{ts_ms}}}"#
                    )
                })
                .collect();
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            self.produce_raw(topic, partition, &values)?;
        }
        Ok(())
    }

    /// Produces records to one partition, any bytes; `None` is a tombstone.
    pub fn produce_values(
        &self,
        topic: &str,
        partition: i32,
        values: &[Option<Vec<u8>>],
    ) -> Result<()> {
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("message.max.bytes", "2000000")
            .create()?;
        for value in values {
            let mut record = BaseRecord::<(), [u8]>::to(topic).partition(partition);
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            producer.send(record).map_err(|(e, _)| e)?;
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// A spec over `topic` writing to `table`, with `sql` and `extra` YAML lines for the
    /// source, in a SQL catalog with a local warehouse under the cluster's directory.
    pub fn spec(
        &self,
        name: &str,
        topic: &str,
        sql: &str,
        trigger: &str,
        source_extra: &str,
    ) -> String {
        let dir = self.dir.path().display();
        let catalog = format!(
            r#"{{type: sql, uri: "sqlite://{dir}/catalog.db", warehouse: "file://{dir}/warehouse"}}"#
        );
        self.spec_in_catalog(name, topic, sql, trigger, source_extra, &catalog)
    }

    /// `spec` with `aggregation: per_batch`: its query's aggregates cover each batch on
    /// its own (no window).
    pub fn per_batch(spec: &str) -> String {
        format!("{spec}aggregation: per_batch\n")
    }

    /// `spec` with compaction off, for tests that look at which batch wrote each file.
    pub fn without_compaction(spec: &str) -> String {
        let table = spec
            .lines()
            .find(|l| l.starts_with("    table: "))
            .expect("a spec names its table")
            .to_string();
        spec.replacen(
            &format!("{table}\n"),
            &format!("{table}\n    compaction: {{enabled: false}}\n"),
            1,
        )
    }

    /// Like [`TestCluster::spec`] with the sink in `catalog` (a YAML flow map).
    pub fn spec_in_catalog(
        &self,
        name: &str,
        topic: &str,
        sql: &str,
        trigger: &str,
        source_extra: &str,
        catalog: &str,
    ) -> String {
        format!(
            r#"name: {name}
source:
  kafka:
    bootstrap_servers: "{bootstrap}"
    topics: [{topic}]
    format: json
    schema: {schema}
{source_extra}
trigger: {trigger}
sql: "{sql}"
sink:
  iceberg:
    catalog: {catalog}
    namespace: test
    table: {name_table}
parallelism: {{max_records_per_task: 20000, min_records_per_task: 1}}
"#,
            bootstrap = self.bootstrap_servers(),
            schema = sluice_datagen::synthetic::ORDER_SCHEMA_YAML,
            name_table = name.replace('-', "_"),
        )
    }

    pub async fn submit(&self, spec: &str) -> Result<String, tonic::Status> {
        let mut client = self
            .client()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(client
            .submit_job(SubmitJobRequest {
                spec: spec.to_string(),
            })
            .await?
            .into_inner()
            .job_id)
    }

    /// The job's status as driver `i` reports it.
    pub async fn status_at(&self, i: usize, job: &str) -> Result<JobStatus> {
        let mut client = self.connect(self.driver_ports[i]).await?;
        Ok(client
            .get_job_status(GetJobStatusRequest {
                job_id: job.to_string(),
            })
            .await?
            .into_inner())
    }

    pub async fn status(&self, job: &str) -> Result<JobStatus> {
        let mut client = self.client().await?;
        Ok(client
            .get_job_status(GetJobStatusRequest {
                job_id: job.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Stops `job` and waits until it no longer runs. A stop that fails on the way (it
    /// reached a driver as that one stopped serving: deposed, or shutting down) is sent
    /// again to whichever driver serves; a driver's answer that the request is wrong is not.
    pub async fn stop_and_wait(&self, job: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stopped = async {
                self.client()
                    .await?
                    .stop_job(sluice_proto::v1::StopJobRequest {
                        job_id: job.to_string(),
                    })
                    .await?;
                Ok::<_, anyhow::Error>(())
            };
            let error = match stopped.await {
                Ok(()) => break,
                Err(error) => error,
            };
            let refused = error.downcast_ref::<tonic::Status>().is_some_and(|s| {
                matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                )
            });
            if refused || Instant::now() > deadline {
                let logs = self.dir.path().display();
                return Err(error.context(format!("stopping {job}; logs in {logs}")));
            }
            eprintln!("stopping {job} failed, sending it again: {error:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.wait_for(job, Duration::from_secs(30), |s| s.state != "RUNNING")
            .await?;
        Ok(())
    }

    /// Polls the job's status until `done` holds; fails after `timeout`.
    pub async fn wait_for(
        &self,
        job: &str,
        timeout: Duration,
        done: impl Fn(&JobStatus) -> bool,
    ) -> Result<JobStatus> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(status) = self.status(job).await {
                if done(&status) {
                    return Ok(status);
                }
                last = Some(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "job {job} did not reach the expected state within {timeout:?}; last status {last:?}; logs in {}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the job is no longer RUNNING; returns its final status.
    pub async fn wait_until_ended(&self, job: &str) -> Result<JobStatus> {
        self.wait_for(job, Duration::from_secs(240), |s| s.state != "RUNNING")
            .await
    }

    /// Waits until the job ended and checks that it FINISHED (the status and the processes'
    /// last log lines otherwise); returns its final status.
    pub async fn wait_until_finished(&self, job: &str) -> JobStatus {
        let status = self.wait_until_ended(job).await.unwrap();
        assert_eq!(
            status.state,
            "FINISHED",
            "{status:?}\n{}",
            self.logs_tail(40)
        );
        status
    }

    /// Submits `spec`, waits until the job finished and returns its last batch that read
    /// records (an `available_now` job's flush batch after it reads none).
    pub async fn run_to_last_batch_with_records(&self, spec: &str) -> BatchProgress {
        let job = self.submit(spec).await.unwrap();
        let status = self.wait_until_finished(&job).await;
        status
            .recent_batches
            .iter()
            .rev()
            .find(|b| b.input_rows > 0)
            .cloned()
            .unwrap_or_else(|| panic!("no batch of {job} read records: {status:?}"))
    }

    /// Waits for the [`check::FILTER_SQL`] job to finish, then checks that its table holds
    /// events `0..events` exactly once, each batch committed once, no stray file.
    pub async fn assert_finished_exactly_once(
        &self,
        job: &str,
        spec: &str,
        events: u64,
        partitions: i32,
    ) {
        self.wait_until_finished(job).await;
        self.assert_exactly_once(spec, events, partitions).await;
    }

    /// Every order of `events` over `partitions` is in the job's table exactly once, each
    /// batch committed once, and no uncommitted file is left behind.
    pub async fn assert_exactly_once(&self, spec: &str, events: u64, partitions: i32) {
        check::assert_unique_batches(&self.committed_batches(spec).await.unwrap());
        let table = self.table_rows(spec).await.unwrap();
        check::assert_exactly_once(
            check::rows(&table),
            check::expected_rows(events, partitions),
            || self.logs_tail(40),
        );
        let stray = self.uncommitted_files(spec).await.unwrap();
        assert!(stray.is_empty(), "uncommitted files left behind: {stray:?}");
    }

    /// Rows in the job's table.
    pub async fn row_count(&self, spec: &str) -> Result<usize> {
        Ok(self
            .table_rows(spec)
            .await?
            .iter()
            .map(RecordBatch::num_rows)
            .sum())
    }

    /// Every row of the job's table, read back with the `iceberg` crate.
    pub async fn table_rows(&self, spec: &str) -> Result<Vec<RecordBatch>> {
        let spec = JobSpec::parse(spec)?;
        read_table(&spec, &table_ident(&spec.sink.iceberg)).await
    }

    /// A scan of the job's table filtered by `predicate`: how many of the table's data
    /// files it reads, of how many, and the rows they hold (rows of a read file that do
    /// not match are not filtered out, so pruning shows in the file count).
    pub async fn pruned_scan(
        &self,
        spec: &str,
        predicate: iceberg::expr::Predicate,
    ) -> Result<(usize, usize, Vec<RecordBatch>)> {
        let (_, table) = sink_table(spec).await?;
        let all = table.scan().select_all().build()?.plan_files().await?;
        let all: Vec<_> = all.try_collect().await?;
        let scan = table.scan().select_all().with_filter(predicate).build()?;
        let read: Vec<_> = scan.plan_files().await?.try_collect().await?;
        let rows = scan.to_arrow().await?.try_collect().await?;
        Ok((read.len(), all.len(), rows))
    }

    /// The job's sink table as its catalog has it now.
    pub async fn sink_table(&self, spec: &str) -> Result<iceberg::table::Table> {
        Ok(sink_table(spec).await?.1)
    }

    /// Every row of the job's dead-letter table.
    pub async fn dead_letter_rows(&self, spec: &str) -> Result<Vec<RecordBatch>> {
        let spec = JobSpec::parse(spec)?;
        read_table(&spec, &dead_letter_ident(&spec.sink.iceberg)).await
    }

    /// The table's snapshots' `sluice.batch-id` values, in commit order.
    pub async fn committed_batches(&self, spec: &str) -> Result<Vec<String>> {
        let (_, table) = sink_table(spec).await?;
        // Commit order: from the current snapshot back through its parents, reversed.
        let mut snapshots: Vec<_> = sluice_iceberg::commit::ancestry(&table).collect();
        snapshots.reverse();
        Ok(snapshots
            .iter()
            .filter_map(|s| {
                s.summary()
                    .additional_properties
                    .get("sluice.batch-id")
                    .cloned()
            })
            .collect())
    }

    /// (batch, leader term, attempt) of every data file the table's current snapshot
    /// references, read from the file names.
    pub async fn committed_file_origins(&self, spec: &str) -> Result<Vec<(i64, i64, u32)>> {
        let names = self.committed_file_names(spec).await?;
        names
            .iter()
            .map(|name| {
                let parts: Vec<&str> = name.split('.').collect();
                let field = |i: usize, tag: char| -> Result<i64> {
                    parts
                        .get(i)
                        .and_then(|p| p.strip_prefix(tag))
                        .and_then(|p| p.parse().ok())
                        .with_context(|| format!("data file name {name} lacks its {tag} field"))
                };
                Ok((field(1, 'b')?, field(2, 'e')?, field(4, 'a')? as u32))
            })
            .collect()
    }

    /// Names of the data files the table's current snapshot references, sorted.
    pub async fn committed_file_names(&self, spec: &str) -> Result<Vec<String>> {
        committed_names(&sink_table(spec).await?.1).await
    }

    /// Names of the data files some snapshot of the table holds (the current one's, and
    /// files compaction replaced while an older snapshot holds them), sorted.
    pub async fn held_file_names(&self, spec: &str) -> Result<Vec<String>> {
        let (_, table) = sink_table(spec).await?;
        let mut held = vec![];
        for snapshot in table.metadata().snapshots() {
            let files =
                sluice_iceberg::rewrite::snapshot_files(&table, snapshot.snapshot_id()).await?;
            held.extend(
                files
                    .iter()
                    .map(|f| file_name(f.data_file.file_path()).to_string()),
            );
        }
        held.sort();
        held.dedup();
        Ok(held)
    }

    /// Files in the table's data directory that no snapshot of the table holds.
    pub async fn uncommitted_files(&self, spec_text: &str) -> Result<Vec<String>> {
        let committed = self.held_file_names(spec_text).await?;
        let (spec, table) = sink_table(spec_text).await?;
        let data_dir = format!("{}/data", table.metadata().location());
        let properties = &spec.sink.iceberg.catalog.properties;
        let stray = list_with_prefix(&data_dir, "", properties)
            .await?
            .iter()
            .map(|path| file_name(path).to_string())
            .filter(|name| committed.binary_search(name).is_err())
            .collect();
        Ok(stray)
    }

    /// The last lines of every process log, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path().join("logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("==> {} <==\n", path.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

async fn read_table(spec: &JobSpec, ident: &iceberg::TableIdent) -> Result<Vec<RecordBatch>> {
    let catalog = open_catalog(&spec.sink.iceberg.catalog).await?;
    let table = catalog.load_table(ident).await?;
    if table.metadata().current_snapshot().is_none() {
        return Ok(vec![]);
    }
    let stream = table.scan().select_all().build()?.to_arrow().await?;
    Ok(stream.try_collect().await?)
}

/// The parsed spec and its sink table, loaded through the spec's catalog.
async fn sink_table(spec: &str) -> Result<(JobSpec, iceberg::table::Table)> {
    let spec = JobSpec::parse(spec)?;
    let sink = &spec.sink.iceberg;
    let table = open_catalog(&sink.catalog)
        .await?
        .load_table(&table_ident(sink))
        .await?;
    Ok((spec, table))
}

/// Names of the data files `table`'s current snapshot references, sorted.
async fn committed_names(table: &iceberg::table::Table) -> Result<Vec<String>> {
    if table.metadata().current_snapshot().is_none() {
        return Ok(vec![]);
    }
    let tasks: Vec<_> = table
        .scan()
        .build()?
        .plan_files()
        .await?
        .try_collect()
        .await?;
    let mut names: Vec<String> = tasks
        .iter()
        .map(|task| file_name(&task.data_file_path).to_string())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self
            .drivers
            .iter_mut()
            .flatten()
            .chain(self.executors.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
