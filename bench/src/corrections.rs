//! `tributary bench --corrections 1000000,10000000`: what a correction deep in a long history costs, and
//! what it does to everyone else.
//!
//! Per size: a fresh database and processor; one instrument `DEEP` with that many points, ingested through
//! NATS as an import would; then the other instruments (`--instruments`) streaming at `--rate` for
//! `--freshness-secs`, first alone (their p99 without the correction), then again with a corrected price
//! for `DEEP`'s first point published a second in. Reported: the time from the correction's publication to
//! its commit, the processor's resident set growth meanwhile (sampled every 5 ms, against the resident set
//! just before), and the others' p99 publish→commit latency with and without it.

use super::harness::{Database, Processor};
use super::pipeline::freshness;
use super::{progress, until};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use sea_orm::sqlx;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tributary::config::Config;
use tributary_broker::events::PriceEvent;
use tributary_broker::ts::Ts;

/// One size's figures.
#[derive(Debug, Serialize)]
pub struct Correction {
    /// Points of the corrected series.
    pub points: u64,
    /// Seconds to ingest them (publish and commit), for scale.
    pub ingest_secs: f64,
    /// Publication of the correction of the first point → its commit.
    pub correction_ms: f64,
    /// The processor's resident set growth during the correction, MB.
    pub rss_growth_mb: f64,
    /// The other instruments' p99 publish→commit latency without and with the correction, ms.
    pub others_p99_ms_without: f64,
    pub others_p99_ms_with: f64,
    pub others_p50_ms_without: f64,
    pub others_p50_ms_with: f64,
}

/// The `i`th point of `DEEP`: one a second from 2020 on.
fn deep(i: u64, price: Option<f64>) -> (String, bytes::Bytes) {
    let ts = Ts::from_millis(1_577_836_800_000 + i as i64 * 1000).expect("in range");
    let price = price.unwrap_or(100.0 + ((i * 7919) % 1000) as f64 / 100.0);
    (String::from("price.DEEP"), tributary_broker::codec::to_msgpack(&PriceEvent { ts: Some(ts), price, volume: None }))
}

/// Runs the scenario for every size in `sizes`.
pub async fn measure(
    config: &Config,
    args: &super::BenchArgs,
    js: &jetstream::Context,
    sizes: &[u64],
) -> anyhow::Result<Vec<Correction>> {
    let mut out = Vec::new();
    for (k, &points) in sizes.iter().enumerate() {
        // Each size starts from an empty stream, so its processor reads only its own events.
        js.get_stream(config.streams.stream_name(tributary_broker::Kind::Price)).await?.purge().await?;
        let db = Database::create(&config.database.url, &format!("corr{k}")).await?;
        let result = one(config, args, js, &db, k, points).await;
        db.drop().await;
        out.push(result?);
    }
    Ok(out)
}

async fn one(
    config: &Config,
    args: &super::BenchArgs,
    js: &jetstream::Context,
    db: &Database,
    k: usize,
    points: u64,
) -> anyhow::Result<Correction> {
    let p = Processor::spawn(config, &db.url, &format!("corr{k}"), 1)?;
    progress(args.json, &format!("corrections: ingesting {points} points of one series"));
    let started = Instant::now();
    super::raw::publish(js, points, f64::INFINITY, |i| deep(i, None)).await?;
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT points FROM price_series WHERE instrument = 'DEEP'")
            .fetch_optional(&db.pool)
            .await
            .ok()
            .flatten()
    };
    until(Duration::from_secs(7200), || async { stored().await.filter(|n| *n as u64 >= points) }).await?;
    let ingest_secs = started.elapsed().as_secs_f64();
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    let (rate, secs, n) = (args.rate, args.freshness_secs, args.instruments);
    progress(args.json, &format!("corrections: the others at {rate}/s without, then with, the correction"));
    // Warm-up: every other series' first load, then the others alone.
    let warm_up = n as f64 * 3.0 / secs;
    freshness(&p, &db.pool, js, n, 0, warm_up, secs).await?;
    let mut from = (warm_up * secs).round() as u64;
    let without = freshness(&p, &db.pool, js, n, from, rate, secs).await?;
    from += (rate * secs).round() as u64;
    // With: the correction a second in, the resident set sampled meanwhile.
    let rss_before = p.rss_mb();
    let peak_kb = Arc::new(AtomicU64::new((rss_before * 1024.0) as u64));
    let corrected = 100.0 * 1.05;
    let correction = {
        let (js, pool, peak_kb, pid_rss) = (js.clone(), db.pool.clone(), peak_kb.clone(), p.rss_reader());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (subject, payload) = deep(0, Some(corrected));
            let published = Instant::now();
            js.publish(subject, payload).await?.await?;
            let first = DateTime::<Utc>::from_timestamp_millis(1_577_836_800_000).expect("in range");
            loop {
                peak_kb.fetch_max((pid_rss() * 1024.0) as u64, Ordering::Relaxed);
                let price: Option<f64> =
                    sqlx::query_scalar("SELECT price FROM price_points WHERE instrument = 'DEEP' AND ts = $1")
                        .bind(first)
                        .fetch_optional(&pool)
                        .await?;
                if price == Some(corrected) {
                    return anyhow::Ok(published.elapsed());
                }
                anyhow::ensure!(published.elapsed() < Duration::from_secs(3600), "the correction never committed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let with = freshness(&p, &db.pool, js, n, from, rate, secs).await?;
    let took = correction.await??;
    Ok(Correction {
        points,
        ingest_secs,
        correction_ms: took.as_secs_f64() * 1e3,
        rss_growth_mb: (peak_kb.load(Ordering::Relaxed) as f64 / 1024.0 - rss_before).max(0.0),
        others_p99_ms_without: without.latency.p99_ms,
        others_p99_ms_with: with.latency.p99_ms,
        others_p50_ms_without: without.latency.p50_ms,
        others_p50_ms_with: with.latency.p50_ms,
    })
}

/// Prints one line per size, then the JSON.
pub fn print(corrections: &[Correction]) -> anyhow::Result<()> {
    println!(
        "{:>12} {:>10} {:>14} {:>12} {:>26}",
        "points", "ingest s", "correction ms", "RSS +MB", "others p99 without/with ms"
    );
    for c in corrections {
        println!(
            "{:>12} {:>10.1} {:>14.1} {:>12.1} {:>26}",
            c.points,
            c.ingest_secs,
            c.correction_ms,
            c.rss_growth_mb,
            format!("{:.1} / {:.1}", c.others_p99_ms_without, c.others_p99_ms_with)
        );
    }
    println!("{}", serde_json::to_string(corrections)?);
    Ok(())
}
