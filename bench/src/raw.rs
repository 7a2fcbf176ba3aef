//! The raw limits and the baseline pipeline: what a team would write by hand, with nothing of
//! Tributary's in the way (no derived values, no tracing, no metrics).

use super::event;
use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use sea_orm::sqlx::{self, PgPool};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tributary_broker::events::PricePoint;
use tributary_broker::ts::Ts;

const IN_FLIGHT: usize = 4096;

/// Publishes `m` events `event_of(0..m)` at `rate` events/s in ticks of 5 ms (`f64::INFINITY`: as fast as
/// JetStream acks them), keeping at most `IN_FLIGHT` acks outstanding; returns the rate achieved.
pub async fn publish(
    js: &jetstream::Context,
    m: u64,
    rate: f64,
    event_of: impl Fn(u64) -> (String, bytes::Bytes),
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(IN_FLIGHT);
    let mut interval = tokio::time::interval(Duration::from_millis(5));
    let per_tick = rate * 0.005;
    let (mut due, mut i) = (0.0, 0u64);
    while i < m {
        interval.tick().await;
        due += per_tick;
        while due >= 1.0 && i < m {
            due -= 1.0;
            if acks.len() >= IN_FLIGHT {
                let ack: jetstream::context::PublishAckFuture = acks.pop_front().expect("not empty");
                ack.await?;
            }
            let (subject, payload) = event_of(i);
            acks.push_back(js.publish(subject, payload).await?);
            i += 1;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(m as f64 / started.elapsed().as_secs_f64())
}

/// Raw JetStream publish rate into a fresh file-backed stream `name`.
pub async fn jetstream_publish(js: &jetstream::Context, name: &str, n: u64, instruments: usize) -> anyhow::Result<f64> {
    let prefix = name.to_lowercase();
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    publish(js, n, f64::INFINITY, |i| {
        let (subject, payload) = event(i, instruments);
        (format!("{prefix}.{subject}"), payload)
    })
    .await
}

/// The messages of a new durable pull consumer `durable` of `stream`, pulled in batches of 1000 with up
/// to 20,000 unacked: how the raw rate and the floors consume.
pub async fn pull(stream: &jetstream::stream::Stream, durable: &str) -> anyhow::Result<pull::Stream> {
    let config = pull::Config { durable_name: Some(durable.into()), max_ack_pending: 20_000, ..Default::default() };
    let consumer = stream.create_consumer(config).await?;
    Ok(consumer.stream().max_messages_per_batch(1000).messages().await?)
}

/// Raw pull-consume rate of stream `name`: batches of 1000, an ack per message.
pub async fn jetstream_consume(js: &jetstream::Context, name: &str, n: u64) -> anyhow::Result<f64> {
    let mut messages = pull(&js.get_stream(name).await?, "raw").await?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < n {
        let m = messages.next().await.context("consumer stream ended")?.map_err(|e| anyhow::anyhow!(e))?;
        m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        seen += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Raw PostgreSQL upsert rate into a table shaped like `price_points`: batches of 1000 rows, one
/// transaction each, `INSERT … SELECT FROM UNNEST … ON CONFLICT DO UPDATE`.
pub async fn pg_upsert(pool: &PgPool, table: &str, n: u64, instruments: usize) -> anyhow::Result<f64> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (LIKE price_points INCLUDING ALL)")))
        .execute(pool)
        .await?;
    let sql = format!(
        "INSERT INTO {table} (instrument, ts, price, volume, seq, ret, derived)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::int8[], $6::float8[], $7::jsonb[])
         ON CONFLICT (instrument, ts) DO UPDATE
           SET price = EXCLUDED.price, volume = EXCLUDED.volume, seq = EXCLUDED.seq, ret = EXCLUDED.ret, derived = EXCLUDED.derived
         WHERE {table}.seq <= EXCLUDED.seq"
    );
    let derived =
        serde_json::json!({"sma_20": 100.5, "sma_50": 100.25, "ema_12": 100.4, "ema_26": 100.3, "vol_20": 0.012});
    let started = Instant::now();
    let mut i = 0u64;
    while i < n {
        let m = 1000.min(n - i);
        let (mut cols, mut ret, mut derived_col) = (RawColumns::default(), Vec::new(), Vec::new());
        for k in i..i + m {
            let ts = Ts::from_millis(1_767_225_600_000 + (k / instruments as u64) as i64 * 1000).expect("in range");
            cols.push(format!("S{}", k % instruments as u64), ts.0, 100.0 + (k % 100) as f64, Some(10.0), k as i64);
            ret.push(Some(0.001));
            derived_col.push(derived.clone());
        }
        let mut tx = pool.begin().await?;
        cols.bind(sqlx::query(sqlx::AssertSqlSafe(sql.clone())))
            .bind(&ret)
            .bind(&derived_col)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        i += m;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Publishes the backlog the baseline and Tributary both process.
pub async fn publish_backlog(js: &jetstream::Context, n: u64, instruments: usize) -> anyhow::Result<f64> {
    publish(js, n, f64::INFINITY, |i| event(i, instruments)).await
}

/// Publishes the metric messages only Tributary processes (its rollups).
pub async fn publish_metrics(js: &jetstream::Context, metrics: &super::MetricsBacklog) -> anyhow::Result<f64> {
    publish(js, metrics.messages, f64::INFINITY, |i| metrics.event(i)).await
}

/// The baseline: fetch batches of 1000, decode, one UNNEST upsert of the raw rows per batch in one
/// transaction, ack each message after commit. Returns events/s over the backlog of `n`.
pub async fn baseline(js: &jetstream::Context, pool: &PgPool, durable: &str, n: u64) -> anyhow::Result<f64> {
    let stream = js.get_stream("PRICES").await?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            // No filter: the whole stream (it holds only prices), which JetStream reads fastest. `price.>`
            // is no longer the partitioned stream's own subjects (it takes `price.*`), and as a filter it
            // made the server match message after message: the baseline ran at a third of its rate.
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < n {
        let mut batch = consumer.batch().max_messages(1000).expires(Duration::from_secs(1)).messages().await?;
        let mut messages = Vec::with_capacity(1000);
        while let Some(m) = batch.next().await {
            messages.push(m.map_err(|e| anyhow::anyhow!(e))?);
        }
        store_raw(pool, &messages, |s| s).await?;
        for m in &messages {
            m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        done += messages.len() as u64;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The baseline's work on one batch: decode, keep the last write per point, one `UNNEST` upsert of the raw
/// rows in one transaction. `subject_of` maps a message's subject to the price subject it stands for.
pub async fn store_raw(
    pool: &PgPool,
    messages: &[jetstream::Message],
    subject_of: impl Fn(&str) -> &str,
) -> anyhow::Result<()> {
    let mut rows: HashMap<(String, chrono::DateTime<chrono::Utc>), (f64, Option<f64>, i64)> = HashMap::new();
    for m in messages {
        let info = m.info().map_err(|e| anyhow::anyhow!(e))?;
        let seq = info.stream_sequence as i64;
        let p =
            PricePoint::decode(subject_of(m.subject.as_str()), m.headers.as_ref(), &m.payload, Ts::new(info.published))
                .map_err(|r| anyhow::anyhow!(r.reason))?;
        let e = rows.entry((p.instrument, p.ts.0)).or_insert((p.price, p.volume, seq));
        if seq > e.2 {
            *e = (p.price, p.volume, seq);
        }
    }
    let mut cols = RawColumns::default();
    for ((i, ts), (p, v, s)) in rows {
        cols.push(i, ts, p, v, s);
    }
    let mut tx = pool.begin().await?;
    cols.bind(sqlx::query(
        "INSERT INTO price_points (instrument, ts, price, volume, seq)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::int8[])
         ON CONFLICT (instrument, ts) DO UPDATE SET price = EXCLUDED.price, volume = EXCLUDED.volume, seq = EXCLUDED.seq
         WHERE price_points.seq < EXCLUDED.seq",
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The raw columns of `price_points` rows (instrument, ts, price, volume, seq), one array each, as an
/// `UNNEST` upsert binds them.
#[derive(Default)]
struct RawColumns {
    instrument: Vec<String>,
    ts: Vec<chrono::DateTime<chrono::Utc>>,
    price: Vec<f64>,
    volume: Vec<Option<f64>>,
    seq: Vec<i64>,
}

impl RawColumns {
    fn push(
        &mut self,
        instrument: String,
        ts: chrono::DateTime<chrono::Utc>,
        price: f64,
        volume: Option<f64>,
        seq: i64,
    ) {
        self.instrument.push(instrument);
        self.ts.push(ts);
        self.price.push(price);
        self.volume.push(volume);
        self.seq.push(seq);
    }

    /// `query` with the five arrays bound as `$1`..`$5`.
    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query.bind(&self.instrument).bind(&self.ts).bind(&self.price).bind(&self.volume).bind(&self.seq)
    }
}
