//! The freshness floor: at an offered rate on this machine, the latency from JetStream's arrival of an
//! event to its delivery to a pull consumer (JetStream alone), and to the commit of its raw row by the
//! baseline pipeline taking whatever is ready (at most 1000 a batch). No pipeline on the same machine,
//! with the same publisher beside it, can be fresher than these; Tributary's freshness is read against them.

use super::cpu::{CpuUse, Watch};
use super::{event, raw};
use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use sea_orm::sqlx::PgPool;
use serde::Serialize;
use tributary_broker::ts::Ts;

/// Latency quantiles over every event of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl Quantiles {
    /// The quantiles `at` gives for 0.5, 0.99 and 0.999.
    pub fn at(at: impl Fn(f64) -> f64) -> Quantiles {
        Quantiles { p50_ms: at(0.5), p99_ms: at(0.99), p999_ms: at(0.999) }
    }

    /// Exact (nearest-rank) quantiles of `samples`.
    fn of(mut samples: Vec<f64>) -> Quantiles {
        samples.sort_unstable_by(f64::total_cmp);
        Quantiles::at(|q| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len().max(1));
            samples.get(rank - 1).copied().unwrap_or(f64::NAN)
        })
    }

    /// The quantiles of `samples` (ms) as Tributary's are read: counted into the processor's histogram
    /// buckets and interpolated within one, so that the two pipelines are compared by one method.
    fn bucketed(samples: &[f64]) -> Quantiles {
        let mut counts: Vec<(f64, f64)> =
            tributary_telemetry::FRESHNESS_BUCKETS.iter().map(|le| (*le, 0.0)).chain([(f64::INFINITY, 0.0)]).collect();
        for ms in samples {
            for (_, c) in counts.iter_mut().filter(|(le, _)| ms / 1e3 <= *le) {
                *c += 1.0;
            }
        }
        Quantiles::at(|q| super::scrape::bucket_quantile(&[], &counts, q) * 1e3)
    }

    /// `p50 / p99 / p99.9`, ms to a tenth.
    pub fn brief(&self) -> String {
        format!("{:.1} / {:.1} / {:.1}", self.p50_ms, self.p99_ms, self.p999_ms)
    }
}

/// The floor at one rate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    /// Arrival → delivery to a pull consumer that acks each message.
    pub jetstream: Quantiles,
    /// Arrival → commit of the raw row by the baseline pipeline.
    pub baseline: Quantiles,
    /// The same, read as Tributary's quantiles are (from the processor's histogram buckets): what the
    /// ratios compare.
    pub baseline_bucketed: Quantiles,
    /// Who used the CPU while the baseline ran, where measured ([`super::cpu`]).
    pub baseline_cpu: Option<CpuUse>,
}

/// Measures both floors at `rate` events/s for `secs` each, over `instruments`, in fresh streams named
/// after `name` (so nothing else consumes their events); the baseline writes into `pool`'s `price_points`.
/// `nats` is the nats-server's process, whose CPU is measured while the baseline runs.
pub async fn measure(
    js: &jetstream::Context,
    pool: &PgPool,
    name: &str,
    instruments: usize,
    rate: f64,
    secs: f64,
    nats: u32,
) -> anyhow::Result<Floor> {
    let jetstream = Quantiles::of(one(js, None, &format!("{name}_JS"), instruments, rate, secs).await?);
    let watch = Watch::start(nats, None);
    let baseline = one(js, Some(pool), &format!("{name}_PG"), instruments, rate, secs).await?;
    let baseline_cpu = watch.stop((rate * secs).round() as u64);
    Ok(Floor {
        jetstream,
        baseline_bucketed: Quantiles::bucketed(&baseline),
        baseline: Quantiles::of(baseline),
        baseline_cpu,
    })
}

async fn one(
    js: &jetstream::Context,
    pool: Option<&PgPool>,
    stream_name: &str,
    instruments: usize,
    rate: f64,
    secs: f64,
) -> anyhow::Result<Vec<f64>> {
    let prefix = stream_name.to_lowercase();
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let messages = raw::pull(&stream, "floor").await?;
    let m = (rate * secs).round() as u64;
    let consumed = tokio::spawn(consume(messages, pool.cloned(), m, format!("{prefix}.")));
    let published = raw::publish(js, m, rate, |i| {
        let (subject, payload) = event(i, instruments);
        (format!("{prefix}.{subject}"), payload)
    })
    .await;
    if published.is_err() {
        // Its messages will never all come: the consumer would wait for them forever.
        consumed.abort();
    }
    let latencies = consumed.await;
    js.delete_stream(stream_name).await.ok();
    published?;
    latencies.context("floor consumer panicked")?
}

/// Takes `m` messages in batches of whatever is ready (at most 1000); with a pool, stores each batch as the
/// baseline does before acking it. Returns each message's latency from its JetStream arrival, in ms.
async fn consume(messages: pull::Stream, pool: Option<PgPool>, m: u64, prefix: String) -> anyhow::Result<Vec<f64>> {
    let mut chunks = messages.ready_chunks(1000);
    let mut latencies = Vec::with_capacity(m as usize);
    while (latencies.len() as u64) < m {
        // Unconstrained, as the processor's loop: tokio's budget would cap a ready chunk near 128.
        let chunk = tokio::task::unconstrained(chunks.next()).await.context("consumer stream ended")?;
        let batch = chunk.into_iter().collect::<Result<Vec<_>, _>>().map_err(|e| anyhow::anyhow!(e))?;
        if let Some(pool) = &pool {
            raw::store_raw(pool, &batch, |s| s.strip_prefix(prefix.as_str()).unwrap_or(s)).await?;
        }
        let now = chrono::Utc::now();
        for msg in &batch {
            let info = msg.info().map_err(|e| anyhow::anyhow!(e))?;
            let waited = now - Ts::new(info.published).0;
            latencies.push(waited.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3);
            msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let q = Quantiles::of((1..=1000).rev().map(f64::from).collect());
        assert_eq!((q.p50_ms, q.p99_ms, q.p999_ms), (500.0, 990.0, 999.0));
        let one = Quantiles::of(vec![7.0]);
        assert_eq!((one.p50_ms, one.p99_ms, one.p999_ms), (7.0, 7.0, 7.0));
    }

    /// Read from the buckets, 100 samples of 1.1 ms and 100 of 1.9 ms have their p50 where the bucket
    /// (1, 1.5] ends, and their p99 interpolated within (1.5, 2]: as Tributary's quantiles are read.
    #[test]
    fn bucketed_quantiles_interpolate_within_the_processors_buckets() {
        let samples: Vec<f64> = [1.1; 100].into_iter().chain([1.9; 100]).collect();
        let q = Quantiles::bucketed(&samples);
        assert!((q.p50_ms - 1.5).abs() < 1e-9, "{q:?}");
        assert!((q.p99_ms - (1.5 + 0.5 * 98.0 / 100.0)).abs() < 1e-9, "{q:?}");
        let exact = Quantiles::of(samples);
        assert_eq!((exact.p50_ms, exact.p99_ms), (1.1, 1.9));
    }
}
