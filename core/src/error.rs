//! Errors shared by every Sluice crate.

/// Everything that can go wrong in shared code, classified so callers know whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job spec is invalid; `field` names where.
    #[error("invalid job spec: {field}: {message}")]
    InvalidSpec { field: String, message: String },

    /// The job's SQL does not plan against the source schema.
    #[error("invalid SQL: {message}")]
    InvalidSql { message: String },

    /// A record could not be decoded with the source schema.
    #[error("malformed record at {topic}/{partition}@{offset}: {message}")]
    MalformedRecord {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },

    /// Kafka could not be reached or answered with an error.
    #[error("kafka ({bootstrap_servers}): {message}")]
    Kafka {
        bootstrap_servers: String,
        message: String,
    },

    /// A planned offset range is no longer (or not yet) readable in Kafka.
    #[error("offsets {start}..{end} of {topic}/{partition} are not readable: {message}")]
    OffsetRange {
        topic: String,
        partition: i32,
        start: i64,
        end: i64,
        message: String,
    },

    /// Offsets a job still had to process were deleted from Kafka.
    #[error("data loss: offsets {start}..{end} of {topic}/{partition} are gone from Kafka (deleted by retention, or the partition was truncated or re-created) before they were processed; set source.kafka.fail_on_data_loss: false to skip them")]
    DataLoss {
        topic: String,
        partition: i32,
        start: i64,
        end: i64,
    },

    /// The Iceberg catalog or table failed.
    #[error("iceberg ({context}): {source}")]
    Iceberg {
        context: String,
        #[source]
        source: BoxedError,
    },

    /// The sink table exists with a schema the query cannot write.
    #[error("table {table} has schema incompatible with the query: {message}")]
    SchemaMismatch { table: String, message: String },

    /// A DataFusion error while running the job's SQL.
    #[error("query execution: {0}")]
    Query(BoxedError),

    /// An Arrow error while building or converting record batches.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),

    /// A request between driver and executor that cannot be carried out as sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A table location could not be listed (object storage unreachable, refused, …).
    #[error("storage ({location}): {message}")]
    Storage { location: String, message: String },

    /// A local file system error.
    #[error("io ({context}): {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The source of an error from a library this crate does not link (Iceberg, DataFusion).
pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

impl Error {
    /// Wraps an Iceberg error with what was being done.
    pub fn iceberg<E: std::error::Error + Send + Sync + 'static>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> Error {
        let context = context.into();
        move |source| Error::Iceberg {
            context,
            source: Box::new(source),
        }
    }

    /// Wraps an error of the query engine (DataFusion).
    pub fn query(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Query(Box::new(source))
    }

    /// Whether the failure comes from the user's spec, SQL or data (retrying cannot help).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec { .. }
                | Error::InvalidSql { .. }
                | Error::MalformedRecord { .. }
                | Error::SchemaMismatch { .. }
                | Error::DataLoss { .. }
        )
    }

    /// An invalid spec: `field` names where.
    pub fn spec(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result with Sluice's shared error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
