//! Certificates for TLS tests: a throwaway CA that issues certificates for loopback
//! (`localhost` and `127.0.0.1`), valid or already expired, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
};

/// The names of a certificate for this machine.
pub const LOOPBACK: [&str; 2] = ["localhost", "127.0.0.1"];

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority of its own, its certificate in `<dir>/<name>-ca.pem`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A new CA named `name`, writing its files into `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        std::fs::write(dir.join(format!("{name}-ca.pem")), issuer.pem()).expect("write CA");
        TestCa {
            issuer,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The CA certificate's file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for loopback, valid from 2020 to 2100.
    pub fn issue(&self, name: &str) -> CertFiles {
        self.issue_for(name, &LOOPBACK)
    }

    /// A certificate for the given DNS names and IP addresses, valid from 2020 to 2100.
    pub fn issue_for(&self, name: &str, subject_alt_names: &[&str]) -> CertFiles {
        self.issue_valid(name, subject_alt_names, (2020, 1, 1), (2100, 1, 1))
    }

    /// A certificate for loopback that expired in 2021.
    pub fn issue_expired(&self, name: &str) -> CertFiles {
        self.issue_valid(name, &LOOPBACK, (2020, 1, 1), (2021, 1, 1))
    }

    fn issue_valid(
        &self,
        name: &str,
        subject_alt_names: &[&str],
        from: (i32, u8, u8),
        until: (i32, u8, u8),
    ) -> CertFiles {
        let names: Vec<String> = subject_alt_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}
