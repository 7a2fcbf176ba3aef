//! Every Prometheus metric the pipeline records, declared once: its name (used by the recorders), its kind
//! and its help text (the `# HELP` line, [`ALL`], described by telemetry when the recorder is installed),
//! which is also the constant's doc.

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

/// Declares each metric's constant, documented by its help text, and lists them all in [`ALL`].
macro_rules! metrics {
    ($($name:ident: $kind:ident = $metric:literal, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $name: &str = $metric;
        )*
        /// (name, kind, help) of every metric above.
        pub const ALL: &[(&str, MetricKind, &str)] = &[$(($name, MetricKind::$kind, $help)),*];
    };
}

metrics! {
    EVENTS: Counter = "tributary_events_total", "Events handled by a consumer, by outcome (processed).";
    DEAD_LETTERS: Counter = "tributary_dead_letters_total",
        "Events sent to the dead-letter stream, by consumer and class (bad_subject, undecodable, invalid, expired, processing_failed).";
    BATCH_FAILURES: Counter = "tributary_batch_failures_total",
        "Units of work with messages nak'ed for a later retry (a transient or systemic failure).";
    CONSUMER_PENDING: Gauge = "tributary_consumer_pending", "Messages in the stream not yet delivered to the consumer.";
    CONSUMER_FAILING: Gauge = "tributary_consumer_failing",
        "1 while every message of a consumer fails (a systemic fault: kept, nak'ed, not dead-lettered), else 0.";
    CONSUMER_RECLAIMED: Counter = "tributary_consumer_reclaimed_total",
        "Messages of a partition left unacknowledged by a loop before (a processor that died or handed it over), delivered again at once (a consumer reset) when this processor opened the partition, instead of after ack_wait.";
    BATCH_SIZE: Histogram = "tributary_batch_size", "Messages per fetched chunk.";
    BATCH_SECONDS: Histogram = "tributary_batch_seconds",
        "Time to store one unit of work (isolating its failures included).";
    COMMIT_LATENCY: Histogram = "tributary_commit_latency_seconds",
        "From an event's arrival in JetStream to the commit of its derived values.";
    AGGREGATOR_ROUNDS: Counter = "tributary_aggregator_rounds_total", "Pull rounds over the survey providers.";
    AGGREGATOR_ROUND_SECONDS: Histogram = "tributary_aggregator_round_seconds",
        "Time of one pull round, every provider included.";
    AGGREGATOR_PULLS: Counter = "tributary_aggregator_pulls_total",
        "Pulls of one provider, by provider and status (ok, timeout, unreachable, error).";
    AGGREGATOR_ITEMS: Counter = "tributary_aggregator_items_total", "Items pulled from a provider and published.";
    PARTITION_PENDING: Gauge = "tributary_partition_pending",
        "Messages of a partition not yet acked (waiting or in hand), by kind and partition; every processor reports every partition.";
    PARTITION_OLDEST_UNACKED: Gauge = "tributary_partition_oldest_unacked_seconds",
        "Seconds since the oldest message of a partition not yet acked was stored (0 when none), by kind and partition.";
    PARTITION_OWNED: Gauge = "tributary_partition_owned",
        "1 while this processor consumes the partition, else 0, by kind and partition.";
    PHASE_SECONDS: Histogram = "tributary_phase_seconds",
        "Where a unit of work's time goes, by consumer and phase: wait (its oldest message's JetStream arrival to the unit's start), lock, load, derive, write, index and commit (the steps of a price transaction), ack (acking after the commit).";
    PROCESSOR_MEMBERS: Gauge = "tributary_processor_members", "Processor processes in the group, as this one sees them.";
    WINDOWS_IN_FORCE: Gauge = "tributary_windows_in_force",
        "1 while this processor's derived windows are the ones the stored values are computed with, 0 while it stands aside from prices because they are not.";
}
