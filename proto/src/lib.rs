//! Sluice's gRPC protocol: generated tonic/prost code, and the bearer tokens that
//! authenticate calls (`auth`), TLS on every connection (`tls`), and the bound on error
//! messages every server keeps (`status`).

pub mod auth;
pub mod status;
pub mod tls;

/// Version of the driver/executor protocol; a mismatch is refused at registration.
pub const PROTOCOL_VERSION: u32 = 4;

/// The encoded descriptors of `sluice.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");

/// Generated messages and services of `sluice.v1`.
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

impl v1::FailureKind {
    /// The kind in lower case without its prefix, e.g. `malformed_record`, for messages.
    pub fn label(self) -> String {
        self.as_str_name()
            .trim_start_matches("FAILURE_KIND_")
            .to_ascii_lowercase()
    }
}
