//! Uploads: a request body streamed through an importer (never buffered whole), with progress kept per
//! upload and pushed to watchers.
//!
//! Progress comes from two places: the importer (bytes read, entries read and published, invalid
//! entries, running statistics for `numbers`) and the processors, which report after each commit how many
//! of the upload's messages it covered (`tributary.upload.<id>` on core NATS, see
//! `tributary_broker::uploads::PROGRESS_PREFIX`). An upload is `streaming`, then `settling` until
//! every published entry is committed or dead-lettered (or `settle_timeout` passes), then `done`
//! (or `failed`). Settled means the processors' consumers have acked every stream up to the upload's
//! last publish there (JetStream says so, as for fresh reads); the reports are progress, not an audit (a
//! lost one leaves `committed` short, a commit done again after a lost ack counts twice).

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_broker::uploads::PROGRESS_PREFIX as UPLOAD_PROGRESS_PREFIX;
use tributary_gatherer::numbers::Stats;
use utoipa::ToSchema;

/// What an upload has done so far.
#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
#[schema(as = UploadStatus)]
pub struct Status {
    /// The upload's id.
    pub id: String,
    /// `ports`, `prices-csv`, `ndjson` or `numbers`.
    #[schema(value_type = UploadKind)]
    pub kind: String,
    /// `streaming`, `settling`, `done` (read to its end, every entry published or listed as invalid) or
    /// `failed` (stopped early, or entries could not be published: `error` says which).
    #[schema(value_type = UploadState)]
    pub state: &'static str,
    /// Bytes read from the request body.
    pub bytes: u64,
    /// Entries read.
    pub entries: u64,
    /// Entries published to NATS (for `numbers`: numbers counted).
    pub published: u64,
    /// Entries refused, or published to be dead-lettered by the processor.
    pub invalid: u64,
    /// Entries committed by the processors, as they reported (progress: see the module doc).
    pub committed: u64,
    /// Entries dead-lettered by the processors, as they reported.
    pub dead_letters: u64,
    /// Running statistics (`numbers` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<NumberStats>)]
    pub stats: Option<Stats>,
    /// The importer's buffer high-water mark, in bytes: what memory the upload cost, whatever its size.
    pub buffer_peak: usize,
    /// Problems with positions, at most 20, each at most [`MAX_PROBLEM_BYTES`] (marked where cut).
    pub errors: Vec<String>,
    /// Why the upload stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The most bytes of one problem an upload's status keeps: a problem can quote its entry (a subject of up
/// to a mebibyte), and the last 1,000 statuses are kept and sent with every progress event.
pub const MAX_PROBLEM_BYTES: usize = 512;

impl Status {
    /// Keeps the first 20 of `errors` and `stopped`, each cut to [`MAX_PROBLEM_BYTES`].
    pub fn set_problems(&mut self, errors: impl IntoIterator<Item = String>, stopped: Option<String>) {
        self.errors = errors.into_iter().take(20).map(cut).collect();
        self.error = stopped.map(cut);
    }
}

/// `s` up to [`MAX_PROBLEM_BYTES`] (at a character boundary), marked with its size where cut.
fn cut(s: String) -> String {
    if s.len() <= MAX_PROBLEM_BYTES {
        return s;
    }
    let mut end = MAX_PROBLEM_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …(cut: {} bytes in all)", &s[..end], s.len())
}

/// What an upload imports.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum UploadKind {
    /// A JSON object keyed by UN/LOCODE (the ports file).
    Ports,
    /// `instrument,ts,price[,volume]` lines.
    PricesCsv,
    /// One `{"subject", "event"}` per line.
    Ndjson,
    /// One number per line.
    Numbers,
}

/// Where an upload is.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum UploadState {
    /// The body is being read.
    Streaming,
    /// The body is read; waiting for the processors.
    Settling,
    /// Finished: read to its end, every entry published or listed as invalid.
    Done,
    /// Finished short: stopped early, or entries could not be published (`error` says which). What was
    /// published is processed as in a finished upload.
    Failed,
}

/// Running statistics of a `numbers` upload (Welford).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NumberStats {
    /// How many numbers.
    count: u64,
    /// Their mean.
    mean: f64,
    /// Sample variance (n − 1); null below two values, or beyond f64's range.
    variance: Option<f64>,
    /// The smallest.
    min: Option<f64>,
    /// The largest.
    max: Option<f64>,
}

impl Status {
    /// Whether nothing more will change.
    pub fn finished(&self) -> bool {
        matches!(self.state, "done" | "failed")
    }
}

/// Every upload this API process has seen (the newest 1000), by id.
#[derive(Clone)]
pub struct Uploads {
    inner: Arc<Mutex<Inner>>,
    closed: CancellationToken,
    /// One permit per upload whose body is being read (`api.max_uploads`).
    slots: Arc<tokio::sync::Semaphore>,
    /// How long an upload waits for the processors after the body ends.
    pub settle_timeout: Duration,
    /// This process's part of every upload id, random: the processors report progress on
    /// `tributary.upload.<id>`, so two API replicas must never make the same id. (The id was the time and
    /// a count from 1 in each process, so two replicas starting together made the same ones, and each
    /// upload's status counted the other's commits.)
    instance: String,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, watch::Sender<Status>>,
    order: VecDeque<String>,
    next: u64,
}

impl Default for Uploads {
    fn default() -> Self {
        Self::new()
    }
}

impl Uploads {
    /// No uploads yet; at most 16 streaming at once.
    pub fn new() -> Self {
        Self::with_limit(16)
    }

    /// No uploads yet; at most `max` (at least 1) streaming at once.
    pub fn with_limit(max: usize) -> Self {
        Uploads {
            inner: Arc::default(),
            closed: CancellationToken::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            settle_timeout: Duration::from_secs(60),
            instance: format!("{:08x}", rand::random::<u32>()),
        }
    }

    /// A slot for one more upload to stream, held until its body has been read; `None` while every slot
    /// is taken.
    pub fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Registers a new upload and returns its id and progress sender.
    pub fn start(&self, kind: &str) -> (String, watch::Sender<Status>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next += 1;
        let id = format!("u{}-{}-{}", chrono::Utc::now().timestamp_millis(), self.instance, inner.next);
        let status = Status { id: id.clone(), kind: kind.to_owned(), state: "streaming", ..Default::default() };
        let (tx, _) = watch::channel(status);
        inner.by_id.insert(id.clone(), tx.clone());
        inner.order.push_back(id.clone());
        while inner.order.len() > 1000 {
            if let Some(old) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
        (id, tx)
    }

    /// A watcher of one upload.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Status>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).by_id.get(id).map(|tx| tx.subscribe())
    }

    /// Fires when the API shuts down (progress streams end).
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Ends every progress stream.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Subscribes to the processors' progress reports and applies them until closed.
    pub async fn relay(&self, nats: &async_nats::Client) -> Result<(), async_nats::SubscribeError> {
        let uploads = self.clone();
        crate::live::relay(nats, UPLOAD_PROGRESS_PREFIX, "*", self.closed(), move |id, msg| {
            let Ok(counts) = serde_json::from_slice::<HashMap<String, u64>>(&msg.payload) else { return };
            let tx = uploads.inner.lock().unwrap_or_else(|e| e.into_inner()).by_id.get(id).cloned();
            if let Some(tx) = tx {
                tx.send_modify(|s| {
                    s.committed += counts.get("committed").copied().unwrap_or(0);
                    s.dead_letters += counts.get("dead_letters").copied().unwrap_or(0);
                });
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::Uploads;

    /// Two API replicas' first uploads get different ids, whenever they come: progress is reported by
    /// id on a subject every replica hears.
    #[test]
    fn two_processes_never_make_the_same_upload_id() {
        let (a, b) = (Uploads::with_limit(1), Uploads::with_limit(1));
        for _ in 0..3 {
            let (x, y) = (a.start("prices-csv").0, b.start("prices-csv").0);
            assert_ne!(x, y);
            assert!(x.starts_with('u') && y.starts_with('u'), "{x} {y}");
        }
    }
}
