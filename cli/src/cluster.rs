//! A whole Sluice cluster on one machine, as separate processes: a driver and N executors,
//! plus (unless a real broker is given) librdkafka's mock Kafka cluster hosted in this
//! process. Children are SIGTERM'd on shutdown and die with this process if it is killed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::client;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub executors: u32,
    /// A real broker; the embedded mock cluster when absent.
    pub kafka: Option<String>,
    /// etcd endpoints; the embedded checkpoint store when absent.
    pub etcd: Option<String>,
    pub data_dir: PathBuf,
    /// Topics to create in the mock cluster: (name, partitions).
    pub topics: Vec<(String, i32)>,
    /// The driver's port; a free one when 0.
    pub driver_port: u16,
}

/// A running local cluster.
pub struct LocalCluster {
    pub driver_url: String,
    pub bootstrap_servers: String,
    pub data_dir: PathBuf,
    /// The driver's status page (metrics at `/metrics`).
    pub status_url: String,
    children: Vec<(String, Child)>,
    /// The embedded broker; it serves as long as this value lives.
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

/// The directory holding this executable, where the sibling binaries live.
fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the sluice executable")?;
    let path = exe
        .parent()
        .context("the sluice executable has no directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} not found next to {}; build all binaries with `cargo build --release --bins`",
            name,
            exe.display()
        );
    }
    Ok(path)
}

fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Result<Child> {
    let log_path = log_dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalCluster {
    /// Starts the cluster and waits until the driver answers.
    /// Call from the main thread: children die with the thread that spawned them.
    pub async fn start(options: &ClusterOptions) -> Result<LocalCluster> {
        let data_dir = &options.data_dir;
        let log_dir = data_dir.join("logs");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        let (bootstrap_servers, mock) = match &options.kafka {
            Some(kafka) => (kafka.clone(), None),
            None => {
                let mock = MockCluster::new(1).context("starting the mock Kafka cluster")?;
                for (topic, partitions) in &options.topics {
                    mock.create_topic(topic, *partitions, 1)
                        .with_context(|| format!("creating topic {topic}"))?;
                }
                (mock.bootstrap_servers(), Some(mock))
            }
        };
        let port = if options.driver_port == 0 {
            free_port()?
        } else {
            options.driver_port
        };
        let driver_url = format!("http://127.0.0.1:{port}");
        let mut cluster = LocalCluster {
            driver_url: driver_url.clone(),
            bootstrap_servers,
            data_dir: data_dir.clone(),
            status_url: String::new(),
            children: Vec::new(),
            _mock: mock,
        };
        let http_port = free_port()?;
        cluster.status_url = format!("http://127.0.0.1:{http_port}/");
        let mut driver_args = vec![
            "--bind".to_string(),
            format!("127.0.0.1:{port}"),
            "--http-bind".to_string(),
            format!("127.0.0.1:{http_port}"),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ];
        if let Some(etcd) = &options.etcd {
            driver_args.extend(["--etcd".to_string(), etcd.clone()]);
        }
        let driver = spawn("driver", &binary("sluice-driver")?, &driver_args, &log_dir)?;
        cluster.children.push(("driver".into(), driver));
        let executor_bin = binary("sluice-executor")?;
        for i in 0..options.executors {
            let name = format!("executor-{i}");
            let args = vec![
                "--driver".to_string(),
                driver_url.clone(),
                "--id".to_string(),
                name.clone(),
            ];
            let child = spawn(&name, &executor_bin, &args, &log_dir)?;
            cluster.children.push((name, child));
        }
        cluster.wait_for_driver(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    async fn wait_for_driver(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut c) = client::DriverAccess::local(&self.driver_url)
                .connect()
                .await
            {
                if client::list(&mut c).await.is_ok() {
                    return Ok(());
                }
            }
            if let Some((name, status)) = self.exited() {
                bail!(
                    "{name} exited ({status}); see {}",
                    self.data_dir
                        .join("logs")
                        .join(format!("{name}.log"))
                        .display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the driver did not answer at {} within {timeout:?}",
                    self.driver_url
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first child that has exited, with its status.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children.iter_mut().find_map(|(name, child)| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (name.clone(), status))
        })
    }

    /// SIGTERMs every process (executors last, so the driver can finish its batch),
    /// waits for them, and SIGKILLs what is left after `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        // The driver first: it finishes its running batch while executors are still up.
        if let Some((_, driver)) = self.children.first_mut() {
            let _ = kill(Pid::from_raw(driver.id() as i32), Signal::SIGTERM);
            while Instant::now() < deadline && driver.try_wait().ok().flatten().is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for (_, child) in self.children.iter().skip(1) {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        for (_, child) in &mut self.children {
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
