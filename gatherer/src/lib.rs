//! Sources: simulators and importers that publish events to JetStream.
//!
//! # Layout
//! - [`prices`]: the price simulator (random walks with late and corrected prices) and the CSV importer
//!   (`instrument,ts,price[,volume]`, streamed with bounded memory and a progress bar).
//! - [`ports`]: the ports importer (a JSON object keyed by UN/LOCODE, streamed with bounded memory).
//! - [`ndjson`]: NDJSON of any event kind (`{"subject": ..., "event": ...}` per line).
//! - [`numbers`]: online statistics (Welford) over a stream of numbers, one per line.
//! - `lines`: what the line-oriented importers share: bounded lines, counted, the first refused ones kept
//!   by position ([`LinesRead`]).
//! - [`samples`]: the server-sample simulator (N servers, one sample each per interval).
//! - `simulator`: the publishing settings every simulator's configuration shares (`seed`,
//!   `max_in_flight`, `retry_secs`).
//! - [`fleet`]: drivers and shipments from the exercise's two list files, or simulated over time.
//! - [`surveys`]: a survey provider (the original reporter API) for the aggregator to pull from.
//!
//! Every source publishes through [`tributary_broker::Publisher`]: idempotency keys, pipelined acks, and a
//! report of what was stored, deduplicated or not delivered.

pub mod fleet;
mod kind;
mod lines;
pub mod ndjson;
pub mod numbers;
pub mod ports;
pub mod prices;
pub mod samples;
mod simulator;
pub mod surveys;

pub use kind::ImportKind;
pub use lines::{LineError, LinesRead, MAX_ERRORS, READ_BUFFER};

use lines::Lines;
use tributary_broker::PublishReport;

/// How far an import has got, reported as it streams (for progress bars and upload progress events).
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Progress {
    /// Bytes read.
    pub bytes: u64,
    /// Entries (members, lines) read.
    pub entries: u64,
    /// Entries handed to the publisher.
    pub published: u64,
    /// Entries refused before publishing, or published knowing the processor will dead-letter them.
    pub invalid: u64,
}

/// Where an import goes: the JetStream context it publishes with, the upload its messages belong to (if
/// any), and whom it tells how far it has got. Every importer takes one, so a caller (the CLI, the API's
/// uploads) hands the same destination to whichever importer the input needs.
pub struct Destination<'a> {
    /// Publishes the events.
    pub js: async_nats::jetstream::Context,
    /// Tags every message (see [`import_headers`]), so processors can report the upload's progress back.
    pub upload: Option<&'a str>,
    /// Called as the import streams (each importer says how often) and once at its end.
    pub progress: &'a mut (dyn FnMut(&Progress) + Send),
}

/// One run of an importer, naming the idempotency keys of its publishes: the run's own random id and the
/// entry's place in the input. A publish sent again (an ack lost, NATS restarting) repeats its key and is
/// stored once; nothing else is taken for a repeat, so an import run again is stored again (changing no
/// value). Keys were the entries' content: within JetStream's duplicate window a value set back to an
/// earlier one (a file importing A, then one with B, then the first again; or A, B, A in one file) was
/// dropped as a repeat of the first A, and B stayed.
#[derive(Debug, Clone)]
pub struct Run(String);

impl Run {
    /// A new run of importer `kind`.
    pub fn new(kind: &str) -> Run {
        Run(format!("{kind}:{:016x}", rand::random::<u64>()))
    }

    /// The idempotency key of the entry at `place` (a line number, a byte offset: unique in the input).
    pub fn key(&self, place: impl std::fmt::Display) -> String {
        format!("{}:{place}", self.0)
    }
}

/// The headers of an imported event: its idempotency key and content type, and the upload it belongs to
/// (so processors can report its progress back).
pub fn import_headers(msg_id: &str, content_type: &str, upload: Option<&str>) -> async_nats::HeaderMap {
    let mut h = tributary_broker::publish::headers(Some(msg_id), content_type);
    if let Some(id) = upload {
        h.insert(tributary_broker::uploads::HEADER, id);
    }
    h
}

/// Checks that each `(field, value)` is at least 1, naming the first that is not.
pub(crate) fn at_least_one(fields: &[(&str, u64)]) -> Result<(), String> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((field, _)) => Err(format!("{field} must be at least 1")),
        None => Ok(()),
    }
}

/// What a line import that publishes (NDJSON, CSV) did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ImportReport {
    /// What it read and refused, and why it stopped early if it did.
    pub read: LinesRead,
    /// What became of the publishes.
    pub publish: PublishReport,
}

/// One event of a line import: its subject, content type and body.
pub(crate) struct LineEvent {
    pub(crate) subject: String,
    pub(crate) content_type: &'static str,
    pub(crate) body: bytes::Bytes,
}

/// Streams the lines of `input` (at most `max` bytes of one held) to `to`, with 4096 acks in flight:
/// `event_of` says what a line (its number and bytes) is: the event to publish, nothing (a line to skip),
/// or why it is refused. An event's idempotency key is its line in this run of importer `kind` ([`Run`]).
/// Tells its progress every 1000 lines and at the end.
pub(crate) async fn import_lines(
    kind: &str,
    input: impl tokio::io::AsyncRead + Unpin,
    to: Destination<'_>,
    max: usize,
    mut event_of: impl FnMut(u64, &[u8]) -> Result<Option<LineEvent>, String>,
) -> ImportReport {
    let Destination { js, upload, progress } = to;
    let mut lines = Lines::new(input, max);
    let mut publisher = tributary_broker::Publisher::new(js, 4096);
    let run = Run::new(kind);
    loop {
        if let Some(why) = given_up(&publisher, &lines.read.progress) {
            lines.read.stopped = Some(why);
            break;
        }
        // The acks in flight are collected while the next line is awaited (see `Publisher::settling`).
        let Some((number, line)) = publisher.settling(lines.next()).await else { break };
        match event_of(number, line) {
            Ok(Some(e)) => {
                let headers = import_headers(&run.key(number), e.content_type, upload);
                publisher.publish_raw(e.subject, headers, e.body).await;
                lines.read.progress.published += 1;
            }
            Ok(None) => {}
            Err(why) => lines.refuse(why),
        }
        if number % 1000 == 0 {
            progress(&lines.read.progress);
        }
    }
    let publish = publisher.finish().await;
    progress(&lines.read.progress);
    ImportReport { read: lines.read, publish }
}

/// Why an import that publishes must stop before its input's end, if it must: NATS has not acknowledged
/// a publish for the publisher's whole retry window, so what follows would not be delivered either.
fn given_up(publisher: &tributary_broker::Publisher, progress: &Progress) -> Option<String> {
    publisher.gave_up().then(|| {
        format!(
            "stopped after line {} (byte {}): NATS did not acknowledge publishes within the retry window",
            progress.entries, progress.bytes
        )
    })
}

/// A progress bar over bytes read (a spinner when the size is unknown; hidden when `show` is false).
pub fn byte_progress_bar(size: Option<u64>, show: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = if show { size.map_or_else(ProgressBar::new_spinner, ProgressBar::new) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
