//! `POST /v1/uploads?kind=ports|prices-csv|ndjson|numbers` (a streamed body, answered 202 as soon as streaming starts),
//! `GET /v1/uploads/{id}` and `GET /v1/uploads/{id}/events` (Server-Sent Events: `progress` on every
//! change, then one `summary`).

use crate::error::ErrorBody;
use crate::params::Params;
use crate::uploads::Status;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;
use std::convert::Infallible;
use tokio::sync::watch;
use tokio_util::io::StreamReader;
use tributary_broker::PublishReport;
use tributary_gatherer::{Destination, ImportKind};
use utoipa::ToSchema;

/// An upload started.
#[derive(Serialize, ToSchema)]
pub struct Started {
    /// Where its progress streams (Server-Sent Events).
    pub events: String,
    /// The upload's id.
    pub id: String,
    /// Where its status is.
    pub status: String,
}

/// Starts an upload: the body is streamed through the importer of `kind` on its own task.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads", operation_id = "startUpload",
    summary = "Stream a file through an importer; answered 202 as soon as streaming starts",
    description = "kind=ports: a JSON object keyed by UN/LOCODE (the ports file), published to port.<unlocode>. \
        kind=prices-csv: instrument,ts,price[,volume] lines. kind=ndjson: one {\"subject\": \"<kind>.<key>\", \
        \"event\": {...}} per line, any event kind. kind=numbers: one number per line; running count, mean, sample \
        variance, min, max (Welford). The body is streamed (chunked is fine), never held whole; \
        api.max_upload_bytes bounds it. Bad entries are reported with their position in the upload's status; \
        invalid events are dead-lettered by the processor.",
    params(("kind" = crate::uploads::UploadKind, Query, description = "What the body is (else 400 invalid_kind).")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file"),
    responses(
        (status = 202, description = "Streaming", body = Started),
        (status = 413, description = "Content-Length over api.max_upload_bytes", body = ErrorBody),
        (status = 429, description = "As many uploads are streaming as api.max_uploads allows (`too_many_uploads`)", body = ErrorBody),
    ))]
pub async fn start(
    State(s): State<AppState>,
    Query(p): Query<Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    let kind: ImportKind = p
        .get("kind")
        .map(String::as_str)
        .unwrap_or("")
        .parse()
        .map_err(|e: String| ApiError::field("invalid_kind", "kind", e))?;
    let max = s.config.max_upload_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::TooLarge(max as usize));
    }
    let slot = s.uploads.slot().ok_or(ApiError::TooManyUploads(s.config.max_uploads))?;
    let (id, tx) = s.uploads.start(kind.as_str());
    // The body as a reader, cut off (with an error the importer reports) past the size limit, or when
    // the client sends too little (`api.upload_min_bytes_per_sec`) or nothing (`api.upload_idle_secs`)
    // while the importer waits for more.
    let pace = Pace::new(&s.config);
    let data = Box::pin(futures::stream::unfold(Some((body.into_data_stream(), pace)), |state| async move {
        let (mut body, mut pace) = state?;
        loop {
            let asked = tokio::time::Instant::now();
            let next = tokio::time::timeout(pace.left(), body.next()).await;
            pace.waited += asked.elapsed();
            match next {
                Ok(Some(Ok(chunk))) => {
                    pace.got += chunk.len() as u64;
                    return match pace.roll_if_due() {
                        Ok(()) => Some((Ok(chunk), Some((body, pace)))),
                        Err(e) => Some((Err(e), None)),
                    };
                }
                Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e)), Some((body, pace)))),
                Ok(None) => return None,
                Err(_) => {
                    if let Err(e) = pace.roll_if_due() {
                        return Some((Err(e), None));
                    }
                }
            }
        }
    }));
    let mut seen = 0u64;
    let chunks = data.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > max {
            return Err(std::io::Error::other(format!("upload larger than {max} bytes")));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let reader = StreamReader::new(chunks);
    tokio::spawn(run(s.clone(), id.clone(), kind, reader, tx, slot));
    Ok((
        StatusCode::ACCEPTED,
        Json(Started { events: format!("/v1/uploads/{id}/events"), status: format!("/v1/uploads/{id}"), id }),
    ))
}

async fn run(
    s: AppState,
    id: String,
    kind: ImportKind,
    reader: impl tokio::io::AsyncRead + Unpin + Send,
    tx: watch::Sender<Status>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let progress = |tx: &watch::Sender<Status>, p: &tributary_gatherer::Progress| {
        tx.send_modify(|st| {
            st.bytes = p.bytes;
            st.entries = p.entries;
            st.published = p.published;
            st.invalid = p.invalid;
        })
    };
    if kind == ImportKind::Numbers {
        let r = tributary_gatherer::numbers::stats(reader, &mut |p, stats| {
            progress(&tx, p);
            tx.send_modify(|st| st.stats = Some(*stats));
        })
        .await;
        tx.send_modify(|st| {
            st.buffer_peak = r.read.buffer_peak();
            st.state = if r.read.stopped.is_some() { "failed" } else { "done" };
            st.set_problems(r.read.errors.iter().map(ToString::to_string), r.read.stopped);
        });
        return;
    }
    // What the importer left: problems with positions, the error that stopped it, its publishes, and its
    // buffer peak.
    let to = Destination { js: s.js.clone(), upload: Some(&id), progress: &mut |p| progress(&tx, p) };
    let (errors, stopped, publish, peak): (Vec<String>, Option<String>, PublishReport, usize) = match kind {
        ImportKind::Ports => {
            let r = tributary_gatherer::ports::import_with(reader, to).await;
            let errors = r.invalid.iter().chain(&r.skipped).map(|(at, key, why)| format!("{at}: {key}: {why}"));
            let stopped = r
                .syntax_error
                .as_ref()
                .map(|e| format!("stopped: {e} (everything before it was published)"))
                .or(r.stopped);
            (errors.collect(), stopped, r.publish, r.max_buffer)
        }
        _ => {
            let r = match kind {
                ImportKind::PricesCsv => tributary_gatherer::prices::import_csv_with(reader, to).await,
                _ => tributary_gatherer::ndjson::import_with(reader, to).await,
            };
            let peak = r.read.buffer_peak();
            (r.read.errors.iter().map(ToString::to_string).collect(), r.read.stopped, r.publish, peak)
        }
    };
    // The body is read: another upload may stream (this one only waits for the processors from here).
    drop(slot);
    let (stored, duplicates, failed) = (publish.stored, publish.duplicates, publish.failed.len());
    tx.send_modify(|st| {
        st.set_problems(
            errors,
            stopped.or_else(|| (failed > 0).then(|| format!("{failed} entries could not be published"))),
        );
        st.published = stored + duplicates;
        st.buffer_peak = peak;
        st.state = "settling";
    });
    // Settled once the processors have acked every stored entry (duplicates were stored before), as
    // JetStream says: their progress reports are counts on core NATS, which a lost report leaves short
    // and a commit done again after a lost ack counts twice. Then a moment for the last reports.
    let deadline = std::time::Instant::now() + s.uploads.settle_timeout;
    let processed = crate::sync::processed(&s, &publish.last, deadline).await;
    if processed.is_ok() {
        let mut rx = tx.subscribe();
        let reported = rx.wait_for(|st| st.committed + st.dead_letters >= stored);
        let grace = REPORTS_GRACE.min(deadline.saturating_duration_since(std::time::Instant::now()));
        let _ = tokio::time::timeout(grace, reported).await;
    }
    tx.send_modify(|st| {
        if let Err(e) = processed {
            st.errors.push(format!("not settled: {e}"));
        }
        // An upload that lost entries is not done, whatever it published: a client checking the state
        // alone would take a file cut off midway for a whole one.
        st.state = if st.error.is_some() { "failed" } else { "done" };
    });
}

/// How long a settled upload waits for the processors' last progress reports before it is done (within
/// its settle timeout): they are sent just after the acks that settled it, so this is spent only when
/// one is lost.
const REPORTS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// An upload's status.
#[utoipa::path(get, path = "/v1/uploads/{id}", tag = "uploads", operation_id = "getUpload",
    summary = "An upload's status: streaming, settling, done or failed, with bytes, entries, published, invalid, \
        committed, dead_letters, stats, errors with positions, buffer_peak",
    params(("id" = String, Path, description = "The upload id")),
    responses(
        (status = 200, description = "Its status", body = Status),
        (status = 404, description = "No such upload (this process keeps the newest 1000)", body = ErrorBody),
    ))]
pub async fn status(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Status>, ApiError> {
    let rx = s.uploads.watch(&id).ok_or_else(|| ApiError::NotFound(format!("no upload {id:?}")))?;
    Ok(Json(rx.borrow().clone()))
}

/// An upload's progress as Server-Sent Events: `progress` on each change, a final `summary`, then the end.
#[utoipa::path(get, path = "/v1/uploads/{id}/events", tag = "uploads", operation_id = "uploadEvents",
    summary = "An upload's progress as Server-Sent Events: `progress` on each change, then one `summary` (after \
        every published entry is committed or dead-lettered), then the end",
    description = "Each event's data is an UploadStatus (see components).",
    params(("id" = String, Path, description = "The upload id")),
    responses(
        (status = 200, description = "An event stream of UploadStatus", body = String,
            content_type = "text/event-stream"),
        (status = 404, description = "No such upload", body = ErrorBody),
    ))]
pub async fn events(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rx = s.uploads.watch(&id).ok_or_else(|| ApiError::NotFound(format!("no upload {id:?}")))?;
    let closed = s.uploads.closed();
    let events = futures::stream::unfold((rx, closed, true, false), |(mut rx, closed, first, ended)| async move {
        if ended {
            return None;
        }
        if !first {
            tokio::select! {
                _ = closed.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
            }
        }
        let status = rx.borrow_and_update().clone();
        let finished = status.finished();
        let data = serde_json::to_string(&status).unwrap_or_default();
        let event = Event::default().event(if finished { "summary" } else { "progress" }).data(data);
        Some((Ok(event), (rx, closed, false, finished)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// How fast an upload's client sends, window by window of `api.upload_idle_secs` spent waiting for it
/// (time the importer is busy elsewhere, publishing, does not count): it must send at least
/// `api.upload_min_bytes_per_sec` on average over each window, and something in each.
struct Pace {
    window: std::time::Duration,
    /// The least bytes a window must bring (at least 1).
    least: u64,
    /// Time spent waiting for the client in the current window.
    waited: std::time::Duration,
    /// Bytes received in it.
    got: u64,
}

impl Pace {
    fn new(config: &crate::ApiConfig) -> Pace {
        let window = std::time::Duration::from_secs(config.upload_idle_secs.max(1));
        let least = config.upload_min_bytes_per_sec.saturating_mul(window.as_secs()).max(1);
        Pace { window, least, waited: std::time::Duration::ZERO, got: 0 }
    }

    /// How long to wait for the client before the current window is over.
    fn left(&self) -> std::time::Duration {
        self.window.saturating_sub(self.waited)
    }

    /// Once the current window is over: an error if it brought too little, else the next window starts.
    fn roll_if_due(&mut self) -> std::io::Result<()> {
        if self.waited < self.window {
            return Ok(());
        }
        let window = self.window;
        match self.got {
            0 => return Err(std::io::Error::other(format!("the client sent nothing for {window:?}"))),
            got if got < self.least => {
                let rate = self.least / window.as_secs().max(1);
                return Err(std::io::Error::other(format!(
                    "the client sent {got} bytes in {window:?}, under the least of {rate} bytes a second \
                     (api.upload_min_bytes_per_sec)"
                )));
            }
            _ => {}
        }
        self.waited = std::time::Duration::ZERO;
        self.got = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;
    use std::time::Duration;

    fn pace(idle: u64, rate: u64) -> Pace {
        let config = crate::ApiConfig { upload_idle_secs: idle, upload_min_bytes_per_sec: rate, ..Default::default() };
        Pace::new(&config)
    }

    #[test]
    fn a_window_is_judged_once_it_has_been_waited_out() {
        let mut p = pace(2, 100);
        p.waited = Duration::from_millis(1999);
        assert!(p.roll_if_due().is_ok(), "not over yet, whatever came");
        assert_eq!(p.left(), Duration::from_millis(1));
        p.waited = Duration::from_secs(2);
        p.got = 200;
        assert!(p.roll_if_due().is_ok(), "200 bytes in 2 s is 100 a second");
        assert_eq!((p.waited, p.got, p.left()), (Duration::ZERO, 0, Duration::from_secs(2)), "the next window");
        p.waited = Duration::from_secs(2);
        p.got = 199;
        let e = p.roll_if_due().unwrap_err().to_string();
        assert!(e.contains("sent 199 bytes in 2s") && e.contains("100 bytes a second"), "{e}");
        let mut quiet = pace(2, 0);
        quiet.waited = Duration::from_secs(2);
        assert!(quiet.roll_if_due().unwrap_err().to_string().contains("sent nothing for 2s"));
        quiet.got = 1;
        assert!(quiet.roll_if_due().is_ok(), "no least rate: a byte a window will do");
    }
}
