//! TLS on Sluice's gRPC and Arrow Flight connections: a process serves TLS with its own
//! certificate and key, verifies the servers it calls against a CA bundle, and, with
//! mutual TLS, presents its certificate to them and requires one from its callers.
//!
//! Everything is PEM files (a Kubernetes `kubernetes.io/tls` Secret mounted as files
//! works). Which connections use TLS follows the URL: `https://` is verified against the
//! CA, `http://` stays plaintext, so a cluster turns TLS on by giving its processes
//! certificates and its executors and CLI `https://` driver URLs.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a TLS handshake may take before the server drops the connection.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The TLS flags every server process takes (driver and executor).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) this process serves its gRPC (and Flight) API with; needs
    /// --tls-key. With it every server of the process speaks TLS only.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that signs the certificates of the servers this process calls
    /// (`https://` URLs) and, with --tls-require-client-cert, of its callers.
    #[arg(long, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: callers must present a certificate signed by --tls-ca (and this process
    /// presents --tls-cert to the servers it calls).
    #[arg(long, env = "SLUICE_TLS_REQUIRE_CLIENT_CERT", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_require_client_cert: bool,
    /// The name the certificates of the driver and executors are verified against,
    /// instead of the host of the URL called (executors are called at their pod IPs):
    /// give every certificate of the cluster this DNS name.
    #[arg(long, env = "SLUICE_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

/// What went wrong setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{0}")]
    Incomplete(&'static str),
    #[error("{url} is an https:// URL but no CA certificate was given to verify it (--tls-ca, or --ca-cert for the CLI)")]
    NoCa { url: String },
    #[error("invalid URL {url}: {message}")]
    Url { url: String, message: String },
}

/// A process's TLS material, loaded and checked: what its servers serve and what its
/// clients trust and present.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    identity: Option<Identity>,
    ca: Option<Certificate>,
    require_client_cert: bool,
    /// Verify servers against this name rather than the URL's host.
    server_name: Option<String>,
}

impl Tls {
    /// No TLS: plaintext servers, and `https://` URLs refused for want of a CA.
    pub fn none() -> Tls {
        Tls::default()
    }

    /// Loads a server process's files (see [`TlsArgs`]).
    pub fn load(args: &TlsArgs) -> Result<Tls, TlsError> {
        Ok(Tls::from_files(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
            args.tls_ca.as_deref(),
            args.tls_require_client_cert,
        )?
        .verifying_name(args.tls_server_name.clone()))
    }

    /// Verifies the servers this process calls against `name` (when given) instead of
    /// the host of their URL.
    pub fn verifying_name(mut self, name: Option<String>) -> Tls {
        self.server_name = name;
        self
    }

    /// Loads `cert` and `key` (this process's identity, both or neither), `ca` (whom to
    /// trust) and whether callers must present certificates.
    pub fn from_files(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        require_client_cert: bool,
    ) -> Result<Tls, TlsError> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read_pem(cert, "certificate", "CERTIFICATE")?,
                read_pem(key, "private key", "PRIVATE KEY")?,
            )),
            (None, None) => None,
            _ => {
                return Err(TlsError::Incomplete(
                    "a TLS certificate needs its private key and a key its certificate",
                ))
            }
        };
        let ca = ca
            .map(|path| read_pem(path, "CA certificate", "CERTIFICATE"))
            .transpose()?
            .map(Certificate::from_pem);
        if require_client_cert && (identity.is_none() || ca.is_none()) {
            return Err(TlsError::Incomplete(
                "mutual TLS needs this process's certificate and key and the CA that signs its callers'",
            ));
        }
        install_crypto_provider();
        Ok(Tls {
            identity,
            ca,
            require_client_cert,
            server_name: None,
        })
    }

    /// Whether a CA was given to verify the servers this process calls.
    pub fn verifies_servers(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether this process's servers speak TLS.
    pub fn serves_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// The scheme of this process's own URLs, as it advertises them.
    pub fn scheme(&self) -> &'static str {
        if self.serves_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// The server side: `None` for plaintext.
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        let identity = self.identity.clone()?;
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        if self.require_client_cert {
            config = config.client_ca_root(self.ca.clone().expect("checked at load"));
        }
        Some(config)
    }

    /// An endpoint for `url`: an `https://` URL is verified against the CA (and is given
    /// this process's certificate, for servers that require one); `http://` is plaintext.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| TlsError::Url {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let ca = self.ca.clone().ok_or_else(|| TlsError::NoCa {
            url: url.to_string(),
        })?;
        let mut config = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(name) = &self.server_name {
            config = config.domain_name(name);
        }
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        endpoint.tls_config(config).map_err(|e| TlsError::Url {
            url: url.to_string(),
            message: e.to_string(),
        })
    }
}

fn read_pem(path: &Path, what: &'static str, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY".
    let marker = format!("{expected}-----");
    if !String::from_utf8_lossy(&pem).contains(&marker) {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(pem)
}

/// rustls needs one process-wide crypto provider; the dependency tree enables two, so
/// none is chosen implicitly. The first call picks ring; later calls change nothing.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = write(&dir, "cert.txt", "hello");
        let cert = write(
            &dir,
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        );
        let missing = dir.join("absent.pem");

        let error = Tls::from_files(Some(&missing), Some(&cert), None, false).unwrap_err();
        assert!(
            error.to_string().contains("cannot read the certificate")
                && error.to_string().contains("absent.pem"),
            "{error}"
        );
        let error = Tls::from_files(Some(&cert), Some(&not_pem), None, false).unwrap_err();
        assert!(error.to_string().contains("no PEM PRIVATE KEY"), "{error}");
        let error = Tls::from_files(Some(&cert), None, None, false).unwrap_err();
        assert!(matches!(error, TlsError::Incomplete(_)), "{error}");
        let error = Tls::from_files(None, None, Some(&cert), true).unwrap_err();
        assert!(error.to_string().contains("mutual TLS"), "{error}");

        // A client with only a CA: https verified, http plaintext, no server side.
        let client = Tls::from_files(None, None, Some(&cert), false).unwrap();
        assert!(!client.serves_tls());
        assert_eq!(client.scheme(), "http");
        assert!(client.server_config().is_none());
        assert!(client.endpoint("https://127.0.0.1:1").is_ok());
        assert!(client.endpoint("http://127.0.0.1:1").is_ok());
        // Without a CA an https URL cannot be verified.
        let error = Tls::none().endpoint("https://driver:50051").unwrap_err();
        assert!(error.to_string().contains("no CA certificate"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
