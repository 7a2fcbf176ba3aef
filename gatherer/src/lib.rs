//! Sources: simulators and importers that publish events to JetStream.
//!
//! # Layout
//! - [`prices`]: the price simulator (random walks with late and corrected prices) and the CSV importer
//!   (`instrument,ts,price[,volume]`, streamed with bounded memory and a progress bar).
//! - [`ports`]: the ports importer (a JSON object keyed by UN/LOCODE, streamed with bounded memory).
//! - [`ndjson`]: NDJSON of any event kind (`{"subject": ..., "event": ...}` per line).
//! - [`numbers`]: online statistics (Welford) over a stream of numbers, one per line.
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
pub mod ndjson;
pub mod numbers;
pub mod ports;
pub mod prices;
pub mod samples;
mod simulator;
pub mod surveys;

pub use kind::ImportKind;

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

/// The headers of an imported event: its idempotency key and content type, and the upload it belongs to
/// (so processors can report its progress back).
pub fn import_headers(msg_id: &str, content_type: &str, upload: Option<&str>) -> async_nats::HeaderMap {
    let mut h = tributary_broker::publish::headers(Some(msg_id), content_type);
    if let Some(id) = upload {
        h.insert(tributary_broker::uploads::HEADER, id);
    }
    h
}

/// A refused line of a line-oriented import: where it starts and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// Offset of the line's first byte in the input, from 0.
    pub byte: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} (byte {}): {}", self.line, self.byte, self.reason)
    }
}

/// Checks that each `(field, value)` is at least 1, naming the first that is not.
pub(crate) fn at_least_one(fields: &[(&str, u64)]) -> Result<(), String> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((field, _)) => Err(format!("{field} must be at least 1")),
        None => Ok(()),
    }
}

/// The most refused lines an import keeps (the rest are counted, not kept).
pub const MAX_ERRORS: usize = 20;

/// Keeps a refused line if fewer than [`MAX_ERRORS`] are kept.
pub(crate) fn keep_error(errors: &mut Vec<LineError>, line: u64, byte: u64, reason: String) {
    if errors.len() < MAX_ERRORS {
        errors.push(LineError { line, byte, reason });
    }
}

/// The read buffer of a line-oriented import (NDJSON, CSV, numbers), in bytes: what it holds at most
/// besides its longest line.
pub const READ_BUFFER: usize = 64 * 1024;

/// The reader and the publisher of a line-oriented import that publishes (NDJSON, CSV): reads of
/// [`READ_BUFFER`], and 4096 acks in flight.
pub(crate) fn line_import<R: tokio::io::AsyncRead>(
    input: R,
    js: async_nats::jetstream::Context,
) -> (tokio::io::BufReader<R>, tributary_broker::Publisher) {
    (tokio::io::BufReader::with_capacity(READ_BUFFER, input), tributary_broker::Publisher::new(js, 4096))
}

/// Reads one line into `line` (cleared first), holding at most `max` bytes of it: a longer line is read
/// to its end and dropped. Returns the bytes read (0 at the end) and whether the line was too long.
pub(crate) async fn read_line_bounded(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    line.clear();
    let mut n = (&mut *reader).take(max as u64 + 1).read_until(b'\n', line).await?;
    if line.len() <= max || line.ends_with(b"\n") {
        return Ok((n, false));
    }
    let mut rest = Vec::new();
    loop {
        rest.clear();
        let m = (&mut *reader).take(max as u64).read_until(b'\n', &mut rest).await?;
        n += m;
        if m == 0 || rest.ends_with(b"\n") {
            return Ok((n, true));
        }
    }
}

/// Reads the next line of an import into `line` (at most `max` bytes of it kept, see
/// [`read_line_bounded`]), adding its bytes to `progress` and its length to `longest`: the line's first
/// byte and whether it was too long; `None` at the end of the input; the reason when the input cannot be
/// read on (a body cut off or over its size limit), which ends the import.
pub(crate) async fn next_line(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max: usize,
    progress: &mut Progress,
    longest: &mut usize,
) -> Result<Option<(u64, bool)>, String> {
    let (n, too_long) = match read_line_bounded(reader, line, max).await {
        Ok((0, _)) => return Ok(None),
        Ok(read) => read,
        Err(e) => {
            return Err(format!("stopped at line {} (byte {}): read error: {e}", progress.entries + 1, progress.bytes));
        }
    };
    let start = progress.bytes;
    progress.bytes += n as u64;
    *longest = (*longest).max(line.len());
    Ok(Some((start, too_long)))
}

/// The line [`next_line`] read, or `None` at the end of the input or when it could not be read on (the
/// reason then in `stopped`).
pub(crate) fn until_stopped<T>(next: Result<Option<T>, String>, stopped: &mut Option<String>) -> Option<T> {
    next.unwrap_or_else(|why| {
        *stopped = Some(why);
        None
    })
}

/// Why an import that publishes must stop before its input's end, if it must: NATS has not acknowledged
/// a publish for the publisher's whole retry window, so what follows would not be delivered either.
pub(crate) fn given_up(publisher: &tributary_broker::Publisher, progress: &Progress) -> Option<String> {
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
