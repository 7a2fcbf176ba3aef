//! NDJSON of any event kind, one `{"subject": "<kind>.<key>", "event": {...}}` per line, streamed with
//! bounded memory (a line over [`MAX_LINE`] is refused). A line that is not such an object, or names an
//! unknown subject, is reported with its line number and the import goes on; an event that is well-formed
//! JSON but not a valid event of its kind is published and dead-lettered by the processor with its reason.
//! The idempotency key is the line in this run ([`crate::Run`]).

use crate::{Destination, ImportReport, LineEvent};
use serde::Deserialize;
use tokio::io::AsyncRead;
use tributary_broker::{codec, kind};

/// The longest line accepted: a bound on memory.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    subject: String,
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
}

/// Streams `input` to `to`, telling its progress every 1000 lines and at the end.
pub async fn import_with(input: impl AsyncRead + Unpin, to: Destination<'_>) -> ImportReport {
    crate::import_lines("ndjson", input, to, MAX_LINE, |_, line| event_of(line)).await
}

/// The event a line holds; `None` for a blank line.
fn event_of(line: &[u8]) -> Result<Option<LineEvent>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let parsed: Line =
        serde_json::from_slice(line).map_err(|e| format!("expected {{\"subject\": ..., \"event\": {{...}}}}: {e}"))?;
    kind::parse_subject(&parsed.subject)?;
    let body = parsed.event.get().as_bytes().to_vec();
    Ok(Some(LineEvent { subject: parsed.subject, content_type: codec::JSON, body: body.into() }))
}
