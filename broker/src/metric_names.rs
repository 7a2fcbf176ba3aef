//! Every Prometheus metric the pipeline records, declared once: its name (used by the recorders) and its
//! help text (the `# HELP` line, [`ALL`], described by telemetry when the recorder is installed).

/// Events handled by a consumer, by outcome.
pub const EVENTS: &str = "tributary_events_total";
/// Events dead-lettered, by consumer and class.
pub const DEAD_LETTERS: &str = "tributary_dead_letters_total";
/// Units of work with messages nak'ed for a later retry.
pub const BATCH_FAILURES: &str = "tributary_batch_failures_total";
/// Messages in the stream not yet delivered to the consumer.
pub const CONSUMER_PENDING: &str = "tributary_consumer_pending";
/// 1 while every message of a consumer fails.
pub const CONSUMER_FAILING: &str = "tributary_consumer_failing";
/// Messages per fetched chunk.
pub const BATCH_SIZE: &str = "tributary_batch_size";
/// Time to store and isolate one unit of work.
pub const BATCH_SECONDS: &str = "tributary_batch_seconds";
/// JetStream arrival to commit.
pub const COMMIT_LATENCY: &str = "tributary_commit_latency_seconds";
/// Pull rounds over the survey providers.
pub const AGGREGATOR_ROUNDS: &str = "tributary_aggregator_rounds_total";
/// Time of one pull round.
pub const AGGREGATOR_ROUND_SECONDS: &str = "tributary_aggregator_round_seconds";
/// Pulls of one provider, by provider and outcome.
pub const AGGREGATOR_PULLS: &str = "tributary_aggregator_pulls_total";
/// Items pulled, by provider.
pub const AGGREGATOR_ITEMS: &str = "tributary_aggregator_items_total";
/// Messages of a partition not yet acked.
pub const PARTITION_PENDING: &str = "tributary_partition_pending";
/// Age of a partition's oldest message not yet acked.
pub const PARTITION_OLDEST_UNACKED: &str = "tributary_partition_oldest_unacked_seconds";
/// 1 while this process owns a partition.
pub const PARTITION_OWNED: &str = "tributary_partition_owned";
/// Processes in the processor group.
pub const PROCESSOR_MEMBERS: &str = "tributary_processor_members";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Set to a value.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// (name, kind, help) of every metric above.
pub const ALL: &[(&str, MetricKind, &str)] = &[
    (EVENTS, MetricKind::Counter, "Events handled by a consumer, by outcome (processed)."),
    (
        DEAD_LETTERS,
        MetricKind::Counter,
        "Events sent to the dead-letter stream, by consumer and class (bad_subject, undecodable, invalid, expired, processing_failed).",
    ),
    (
        BATCH_FAILURES,
        MetricKind::Counter,
        "Units of work with messages nak'ed for a later retry (a transient or systemic failure).",
    ),
    (CONSUMER_PENDING, MetricKind::Gauge, "Messages in the stream not yet delivered to the consumer."),
    (
        CONSUMER_FAILING,
        MetricKind::Gauge,
        "1 while every message of a consumer fails (a systemic fault: kept, nak'ed, not dead-lettered), else 0.",
    ),
    (BATCH_SIZE, MetricKind::Histogram, "Messages per fetched chunk."),
    (BATCH_SECONDS, MetricKind::Histogram, "Time to store one unit of work (isolating its failures included)."),
    (
        COMMIT_LATENCY,
        MetricKind::Histogram,
        "From an event's arrival in JetStream to the commit of its derived values.",
    ),
    (AGGREGATOR_ROUNDS, MetricKind::Counter, "Pull rounds over the survey providers."),
    (AGGREGATOR_ROUND_SECONDS, MetricKind::Histogram, "Time of one pull round, every provider included."),
    (
        AGGREGATOR_PULLS,
        MetricKind::Counter,
        "Pulls of one provider, by provider and status (ok, timeout, unreachable, error).",
    ),
    (AGGREGATOR_ITEMS, MetricKind::Counter, "Items pulled from a provider and published."),
    (
        PARTITION_PENDING,
        MetricKind::Gauge,
        "Messages of a partition not yet acked (waiting or in hand), by kind and partition; every processor reports every partition.",
    ),
    (
        PARTITION_OLDEST_UNACKED,
        MetricKind::Gauge,
        "Seconds since the oldest message of a partition not yet acked was stored (0 when none), by kind and partition.",
    ),
    (
        PARTITION_OWNED,
        MetricKind::Gauge,
        "1 while this processor consumes the partition, else 0, by kind and partition.",
    ),
    (PROCESSOR_MEMBERS, MetricKind::Gauge, "Processor processes in the group, as this one sees them."),
];
