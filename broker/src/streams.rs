//! Stream definitions: one stream per [`Kind`] plus the dead-letter stream, created or updated
//! idempotently at startup so every role can call [`ensure`] without coordinating.
//!
//! The streams carry the partitioning themselves: a partitioned kind's stream stores `price.ACME` as
//! `price.p.<n>.ACME` ([`crate::kind::partition_transform`]), so no server configuration is needed.

use crate::kind::Kind;
use async_nats::jetstream::{self, stream};
use serde::Deserialize;
use std::time::Duration;

/// The dead-letter stream: `dlq.<original subject>`.
pub const DLQ_STREAM: &str = "DLQ";
/// The subject prefix of dead letters.
pub const DLQ_PREFIX: &str = "dlq";

/// How streams are stored and kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Replicas per stream: 1 on a laptop, 3 in a cluster.
    pub replicas: usize,
    /// `file` (default) or `memory`.
    pub storage: Storage,
    /// How long events are kept, in seconds; 0 keeps them forever. Dead letters are kept for good whatever
    /// it says, until an operator deletes them: bad input must not vanish unread.
    pub max_age_secs: u64,
    /// The window within which a repeated `Nats-Msg-Id` is dropped as a duplicate, in seconds.
    pub duplicate_window_secs: u64,
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk: survives a server restart.
    File,
    /// In memory.
    Memory,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig { replicas: 1, storage: Storage::File, max_age_secs: 0, duplicate_window_secs: 120 }
    }
}

impl StreamsConfig {
    /// The configured name of a kind's stream.
    pub fn stream_name(&self, kind: Kind) -> String {
        kind.stream().to_owned()
    }

    /// The configured name of the dead-letter stream.
    pub fn dlq_name(&self) -> String {
        DLQ_STREAM.to_owned()
    }

    fn config(&self, name: String, subjects: Vec<String>) -> stream::Config {
        stream::Config {
            name,
            subjects,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.replicas.max(1),
            max_age: Duration::from_secs(self.max_age_secs),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            retention: stream::RetentionPolicy::Limits,
            allow_direct: true,
            ..Default::default()
        }
    }
}

/// Creates or updates every stream so that it matches `cfg`, the partitioned kinds split into `partitions`
/// partitions (`processor.partitions`; 1 for none). Safe to call from every role at startup, as long as
/// every role is given the same partition count.
///
/// Changing the count changes where new messages go; messages already stored stay on their partition's
/// subjects, so change it once the processors have caught up (docs/DEPLOY.md).
pub async fn ensure(js: &jetstream::Context, cfg: &StreamsConfig, partitions: u32) -> Result<(), EnsureError> {
    let mut all: Vec<_> = Kind::ALL
        .iter()
        .map(|k| stream::Config {
            subject_transform: crate::kind::partition_transform(*k, partitions),
            ..cfg.config(cfg.stream_name(*k), k.stream_subjects(partitions))
        })
        .collect();
    // Dead letters outlive the events' `max_age` (with a day's, Friday's bad input was gone by Monday,
    // with nothing to say so).
    all.push(stream::Config { max_age: Duration::ZERO, ..cfg.config(cfg.dlq_name(), vec![format!("{DLQ_PREFIX}.>")]) });
    for c in all {
        let name = c.name.clone();
        js.create_or_update_stream(c).await.map_err(|source| EnsureError { stream: name, source })?;
    }
    Ok(())
}

/// Whether JetStream said the stream does not exist (as opposed to not answering).
pub fn missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A stream could not be created or updated.
#[derive(Debug, thiserror::Error)]
#[error("cannot create or update stream {stream}")]
pub struct EnsureError {
    /// The stream's name.
    pub stream: String,
    /// What JetStream said.
    #[source]
    pub source: jetstream::context::CreateStreamError,
}
