//! Lakehouse services started for real on free loopback ports: an S3-compatible object
//! store (moto's server) and an Iceberg REST catalog (pyiceberg's SQL catalog behind the
//! REST protocol, `fixtures/iceberg_rest_catalog.py`). Both are Python programs from PyPI
//! (`make test` installs them); each is killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_testkit::free_port;

const PIP_HINT: &str = "install the test services with `python3 -m pip install \"moto[server]\" \"pyiceberg[sql-sqlite]\"` (make test does)";

/// A Python program serving on a loopback port.
struct PythonService {
    child: Child,
    port: u16,
}

impl PythonService {
    /// Starts `python3 args…` (which must listen on `port`) with its output in `log`, and
    /// waits until the port accepts connections.
    fn start(args: &[String], port: u16, log: &Path) -> Result<PythonService> {
        let out = std::fs::File::create(log)?;
        let child = Command::new("python3")
            .args(args)
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .context("starting python3")?;
        let mut service = PythonService { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = service.child.try_wait()? {
                let output = std::fs::read_to_string(log).unwrap_or_default();
                bail!("python3 {args:?} exited ({status}) before listening:\n{output}\n{PIP_HINT}");
            }
            if Instant::now() > deadline {
                bail!("python3 {args:?} did not listen on port {port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(service)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PythonService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible object store (moto) with one bucket.
pub struct S3Server {
    service: PythonService,
    pub bucket: String,
}

impl S3Server {
    /// Starts the store and creates `bucket`; `dir` receives its log.
    pub fn start(dir: &Path, bucket: &str) -> Result<S3Server> {
        let port = free_port();
        let args = [
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]
        .map(String::from);
        let service = PythonService::start(&args, port, &dir.join("s3.log"))?;
        let server = S3Server {
            service,
            bucket: bucket.to_string(),
        };
        server.create_bucket()?;
        Ok(server)
    }

    fn create_bucket(&self) -> Result<()> {
        self.request("PUT", &format!("/{}", self.bucket))?;
        Ok(())
    }

    /// Keys of the bucket's objects under `prefix`, asked of the store directly (not
    /// through Sluice's own listing).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let reply = self.request(
            "GET",
            &format!(
                "/{}?list-type=2&max-keys=100000&prefix={prefix}",
                self.bucket
            ),
        )?;
        Ok(reply
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_string)
            .collect())
    }

    /// One unsigned HTTP/1.1 request; the reply's body when the status is 200.
    fn request(&self, method: &str, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.service.port))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.service.port
        )?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        if !reply.starts_with("HTTP/1.1 200") {
            bail!("{method} {path}: {reply}");
        }
        Ok(reply)
    }

    /// The catalog `properties:` block (YAML flow map) that reaches this store.
    pub fn catalog_properties(&self) -> String {
        format!(
            r#"{{s3.endpoint: "{}", s3.region: us-east-1, s3.access-key-id: sluice, s3.secret-access-key: sluice, s3.path-style-access: "true", s3.disable-config-load: "true"}}"#,
            self.service.url()
        )
    }
}

/// An Iceberg REST catalog whose tables live in a local warehouse.
pub struct RestCatalogServer {
    service: PythonService,
}

impl RestCatalogServer {
    /// Starts the catalog with its database and warehouse under `dir`.
    pub fn start(dir: &Path) -> Result<RestCatalogServer> {
        let port = free_port();
        let script: PathBuf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/iceberg_rest_catalog.py");
        let args = [
            script.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--db".into(),
            dir.join("rest-catalog.db").display().to_string(),
            "--warehouse".into(),
            format!("file://{}", dir.join("rest-warehouse").display()),
        ];
        let service = PythonService::start(&args, port, &dir.join("rest-catalog.log"))?;
        Ok(RestCatalogServer { service })
    }

    pub fn url(&self) -> String {
        self.service.url()
    }
}
