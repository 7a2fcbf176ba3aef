//! The CSV importer: `instrument,ts,price[,volume]` lines from a file or stdin, streamed with bounded
//! memory (one line of at most [`MAX_LINE`] bytes at a time, a bounded number of acks in flight) and a
//! progress bar.
//!
//! A header line (`instrument,ts,price...`) is skipped. A bad line (too long, not UTF-8, not a valid
//! price) is reported with its number and reason and the import goes on. The idempotency key is the
//! line in this run ([`crate::Run`]): importing the same file again stores it again and changes no value.

use crate::{Destination, ImportReport, LineEvent, Progress};
use async_nats::jetstream;
use tokio::io::AsyncRead;
use tributary_broker::events::PriceEvent;
use tributary_broker::kind::valid_key;
use tributary_broker::ts::Ts;
use tributary_broker::{Kind, codec};

/// The longest line accepted: a bound on memory.
pub const MAX_LINE: usize = 64 * 1024;

/// Parses one line into (instrument, event).
pub fn parse_line(line: &str) -> Result<(String, PriceEvent), String> {
    let fields: Vec<&str> = line.split(',').map(|f| f.trim().trim_matches('"')).collect();
    if !(3..=4).contains(&fields.len()) {
        return Err(format!("expected instrument,ts,price[,volume], got {} fields", fields.len()));
    }
    let instrument = fields[0];
    if !valid_key(instrument) {
        return Err(format!("bad instrument {instrument:?}: one subject token without spaces, '.', '*' or '>'"));
    }
    let ts = match fields[1].parse::<i64>() {
        Ok(ms) => Ts::from_millis(ms)?,
        Err(_) => Ts::parse(fields[1])?,
    };
    let price: f64 = fields[2].parse().map_err(|_| format!("bad price {:?}", fields[2]))?;
    let volume = match fields.get(3).filter(|v| !v.is_empty()) {
        Some(v) => Some(v.parse::<f64>().map_err(|_| format!("bad volume {v:?}"))?),
        None => None,
    };
    let e = PriceEvent { ts: Some(ts), price, volume };
    e.clone().validate(instrument.to_owned(), ts)?;
    Ok((instrument.to_owned(), e))
}

/// Streams `input` to `price.<instrument>`. `size` (if known) sizes the progress bar; `progress` false
/// hides it.
pub async fn import_csv(
    js: jetstream::Context,
    input: impl AsyncRead + Unpin,
    size: Option<u64>,
    progress: bool,
) -> ImportReport {
    let bar = crate::byte_progress_bar(size, progress);
    let mut show = |p: &Progress| {
        bar.set_position(p.bytes);
        bar.set_message(format!("{} lines, {} published", p.entries, p.published));
    };
    let report = import_csv_with(input, Destination { js, upload: None, progress: &mut show }).await;
    bar.finish_and_clear();
    report
}

/// Streams `input` to `price.<instrument>` through `to`, telling its progress every 1000 lines and at the
/// end.
pub async fn import_csv_with(input: impl AsyncRead + Unpin, to: Destination<'_>) -> ImportReport {
    crate::import_lines("csv", input, to, MAX_LINE, event_of).await
}

/// The event line `number` holds; `None` for a blank line or the header.
fn event_of(number: u64, line: &[u8]) -> Result<Option<LineEvent>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_owned())?.trim();
    if text.is_empty() || (number == 1 && text.to_ascii_lowercase().starts_with("instrument,")) {
        return Ok(None);
    }
    let (instrument, e) = parse_line(text)?;
    Ok(Some(LineEvent {
        subject: Kind::Price.subject(&instrument),
        content_type: codec::MSGPACK,
        body: codec::to_msgpack(&e),
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn lines() {
        let (i, e) = parse_line("ACME,2026-01-02,10.5,300").unwrap();
        assert_eq!(i, "ACME");
        assert_eq!(e.price, 10.5);
        assert_eq!(e.volume, Some(300.0));
        assert!(parse_line("ACME,1767312000000,10").is_ok());
        assert!(parse_line("ACME,2026-01-02").unwrap_err().contains("fields"));
        assert!(parse_line("ACME,nope,1").unwrap_err().contains("bad ts"));
        assert!(parse_line("ACME,2026-01-02,-1").unwrap_err().contains("positive"));
        assert!(parse_line("A B,2026-01-02,1").unwrap_err().contains("instrument"));
    }
}
