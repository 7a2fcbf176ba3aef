//! NDJSON of any event kind, one `{"subject": "<kind>.<key>", "event": {...}}` per line, streamed with
//! bounded memory (a line over [`MAX_LINE`] is refused). A line that is not such an object, or names an
//! unknown subject, is reported with its line number and the import goes on; an event that is well-formed
//! JSON but not a valid event of its kind is published and dead-lettered by the processor with its reason.

use crate::{Destination, LineError, Progress, given_up, import_headers, keep_error, next_line};
use serde::Deserialize;
use tokio::io::AsyncRead;
use tributary_broker::hash::fnv1a;
use tributary_broker::{PublishReport, codec, kind};

/// The longest line accepted: a bound on memory.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    subject: String,
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
}

/// What an NDJSON import did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NdjsonReport {
    /// Bytes and lines read, events published, lines refused.
    pub progress: Progress,
    /// What became of the publishes.
    pub publish: PublishReport,
    /// The first refused lines, with their line numbers and byte offsets.
    pub errors: Vec<LineError>,
    /// The longest line read, in bytes.
    pub longest_line: usize,
    /// Why the import ended before the input's end, if it did.
    pub stopped: Option<String>,
}

/// Streams `input` to `to`, telling its progress every 1000 lines and at the end.
pub async fn import_with(input: impl AsyncRead + Unpin, to: Destination<'_>) -> NdjsonReport {
    let Destination { js, upload, progress } = to;
    let (mut reader, mut publisher) = crate::line_import(input, js);
    let mut r = NdjsonReport::default();
    let mut line = Vec::new();
    loop {
        if let Some(why) = given_up(&publisher, &r.progress) {
            r.stopped = Some(why);
            break;
        }
        // The acks in flight are collected while the next line is awaited (see `Publisher::settling`).
        let next =
            publisher.settling(next_line(&mut reader, &mut line, MAX_LINE, &mut r.progress, &mut r.longest_line));
        let Some((start, too_long)) = crate::until_stopped(next.await, &mut r.stopped) else { break };
        r.progress.entries += 1;
        let number = r.progress.entries;
        let refuse = |r: &mut NdjsonReport, why: String| {
            r.progress.invalid += 1;
            keep_error(&mut r.errors, number, start, why);
        };
        if too_long {
            refuse(&mut r, format!("line longer than {MAX_LINE} bytes"));
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: Line = match serde_json::from_slice(&line) {
            Ok(l) => l,
            Err(e) => {
                refuse(&mut r, format!("expected {{\"subject\": ..., \"event\": {{...}}}}: {e}"));
                continue;
            }
        };
        if let Err(why) = kind::parse_subject(&parsed.subject) {
            refuse(&mut r, why);
            continue;
        }
        let body = parsed.event.get().as_bytes().to_vec();
        let id = format!("ndjson:{}:{:016x}", parsed.subject, fnv1a(&[&body]));
        publisher.publish_raw(parsed.subject, import_headers(&id, codec::JSON, upload), body.into()).await;
        r.progress.published += 1;
        if r.progress.entries % 1000 == 0 {
            progress(&r.progress);
        }
    }
    r.publish = publisher.finish().await;
    progress(&r.progress);
    r
}
