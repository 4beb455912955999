//! Executor errors.

/// What can stop an executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the shuffle spill directory {path}: {source}")]
    SpillDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid driver URL {url:?}: {message}")]
    DriverUrl { url: String, message: String },
    #[error("the driver refused registration: {0}")]
    Refused(tonic::Status),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Result with the executor's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
