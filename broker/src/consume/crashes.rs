//! Crash records: how a message that kills the process (an abort, an OOM kill, a hang past the shutdown
//! grace) is told from one redelivered for an ordinary reason, and isolated.
//!
//! A redelivered message the process did not nak itself may have been in flight when a process died.
//! Such a *suspect* is stored in a unit of suspects only, half a batch after its first stop, a quarter
//! after its second, and so on down to one message: before the unit starts, each of its messages' record
//! in the KV bucket [`BUCKET`] (key `<consumer>.<stream created>.<seq>`) counts one more stop, and one
//! more stop alone when the unit holds that message only; when the unit finishes, however it ends, the
//! records are deleted. A record that survives is therefore a unit that never finished. A message whose
//! record shows `max_failures` stops alone is dead-lettered as `processing_failed` without being tried
//! again. Nak'ed messages (a database outage) are remembered by this process and never become suspects,
//! so an outage, however long, costs nothing here; after a restart their redeliveries are suspects once
//! and go through the small units, which costs time, not messages.

use async_nats::jetstream::{self, kv};
use std::time::Duration;
use tracing::warn;

/// The KV bucket holding the stops of suspects.
pub const BUCKET: &str = "TRIBUTARY_ATTEMPTS";

/// What the records say of a message: units that held it and never finished, and of those the ones that
/// held it alone.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stops {
    /// Units that held it and did not finish.
    pub all: u32,
    /// Of those, units that held it alone.
    pub alone: u32,
}

impl Stops {
    fn parse(value: &[u8]) -> Stops {
        let text = std::str::from_utf8(value).unwrap_or_default();
        let mut it = text.split(',').map(|n| n.trim().parse::<u32>().unwrap_or(0));
        Stops { all: it.next().unwrap_or(0), alone: it.next().unwrap_or(0) }
    }

    /// The size of a unit for a suspect with these stops: half a batch, halved again at every stop.
    pub fn unit_size(&self, batch: usize) -> usize {
        batch.checked_shr(self.all + 1).unwrap_or(0).max(1)
    }
}

/// The records of one consumer.
#[derive(Clone)]
pub struct CrashLog {
    store: kv::Store,
    prefix: String,
}

/// How many records are read or written at once.
const CONCURRENCY: usize = 64;

impl CrashLog {
    /// The records of consumer `durable` on `stream` (the bucket created if missing); `None`, logged,
    /// when the bucket cannot be had (then suspects are still stored in small units, but a message that
    /// kills the process is not dead-lettered).
    pub async fn open(js: &jetstream::Context, stream: &str, durable: &str) -> Option<CrashLog> {
        match Self::try_open(js, stream, durable).await {
            Ok(log) => Some(log),
            Err(e) => {
                warn!(consumer = durable, error = %e, "no crash records: a message that kills the process will not be dead-lettered");
                None
            }
        }
    }

    async fn try_open(js: &jetstream::Context, stream: &str, durable: &str) -> anyhow::Result<CrashLog> {
        let info = js.get_stream(stream).await?.info().await?.clone();
        let (created, replicas) = (info.created.timestamp(), info.config.num_replicas);
        let week = Duration::from_secs(7 * 24 * 3600);
        let store = crate::kv::bucket(js, BUCKET, week, replicas).await.map_err(|e| anyhow::anyhow!(e))?;
        Ok(CrashLog { store, prefix: format!("{durable}.{created}") })
    }

    fn key(&self, seq: u64) -> String {
        format!("{}.{seq}", self.prefix)
    }

    /// The stops recorded for each of `seqs` (none where unreadable).
    pub async fn read(&self, seqs: &[u64]) -> Vec<Stops> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(CONCURRENCY) {
            out.extend(futures::future::join_all(chunk.iter().map(|seq| self.get(*seq))).await);
        }
        out
    }

    async fn get(&self, seq: u64) -> Stops {
        match self.store.get(self.key(seq)).await {
            Ok(v) => v.map(|v| Stops::parse(&v)).unwrap_or_default(),
            Err(e) => {
                warn!(error = %e, seq, "cannot read a crash record");
                Stops::default()
            }
        }
    }

    /// Records that a unit holding `suspects` (alone when there is one) starts.
    pub async fn starting(&self, suspects: &[(u64, Stops)]) {
        let alone = u32::from(suspects.len() == 1);
        for chunk in suspects.chunks(CONCURRENCY) {
            futures::future::join_all(
                chunk.iter().map(|(seq, s)| self.put(*seq, format!("{},{}", s.all + 1, s.alone + alone))),
            )
            .await;
        }
    }

    async fn put(&self, seq: u64, value: String) {
        if let Err(e) = self.store.put(self.key(seq), value.into()).await {
            warn!(error = %e, seq, "cannot write a crash record");
        }
    }

    /// Deletes the records of `seqs`: their unit finished.
    pub async fn finished(&self, seqs: &[u64]) {
        for chunk in seqs.chunks(CONCURRENCY) {
            futures::future::join_all(chunk.iter().map(|seq| self.purge(*seq))).await;
        }
    }

    async fn purge(&self, seq: u64) {
        if let Err(e) = self.store.purge(self.key(seq)).await {
            warn!(error = %e, seq, "cannot delete a crash record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stops;

    #[test]
    fn a_suspects_unit_halves_at_every_stop_down_to_one() {
        assert_eq!(Stops::parse(b"3,1"), Stops { all: 3, alone: 1 });
        assert_eq!(Stops::parse(b"garbage"), Stops::default());
        assert_eq!(Stops::default().unit_size(8000), 4000);
        assert_eq!(Stops { all: 1, alone: 0 }.unit_size(8000), 2000);
        assert_eq!(Stops { all: 12, alone: 0 }.unit_size(8000), 1);
        assert_eq!(Stops { all: 70, alone: 0 }.unit_size(8000), 1);
    }
}
