//! API reads under load: `GET /v1/series/price/{i}?limit=100` over every instrument.
//!
//! Saturation is driven by `wrk` (Debian's package) when it is installed, a separate process as a real
//! client would be; otherwise by an in-process generator sharing the server's cores (a floor). The
//! fixed-rate latency run is open-loop and in-process (Debian's wrk has no fixed-rate mode): each
//! request's latency counts from when it was due.

use super::stats::{Stats, quantile};
use async_nats::jetstream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tributary::config::Config;
use tributary_store::DbConfig;

pub struct ApiMeasured {
    pub generator: &'static str,
    pub saturation: Stats,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub async fn measure(
    config: &Config,
    args: &super::BenchArgs,
    db_url: &str,
    js: &jetstream::Context,
) -> anyhow::Result<ApiMeasured> {
    let db = tributary_store::connect(&DbConfig { url: db_url.to_owned(), max_connections: 16, ..Default::default() })
        .await?;
    let nats = tributary::app::connect_nats(&config.nats).await?;
    let state = tributary_api::AppState {
        db,
        nats,
        js: js.clone(),
        streams: config.streams.clone(),
        metrics: tributary_telemetry::metrics(),
        // Measured over plain HTTP on loopback with open reads, whatever the deployment's TLS and tokens.
        config: tributary_api::ApiConfig {
            tls_cert_file: None,
            tls_key_file: None,
            require_read_token: false,
            ..config.api.clone()
        },
        rollups: config.metrics.clone(),
        live: tributary_api::Live::new(),
        uploads: tributary_api::Uploads::new(),
        durable_prefix: config.processor.durable_prefix.clone(),
        partitions: config.processor.partitions,
        progress: tributary_api::Progress::default(),
        series_cache: tributary_api::SeriesCache::new(config.api.series_cache_bytes),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server = tokio::spawn(tributary_api::serve(listener, state, stop.clone()));
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let instruments = args.instruments.max(1) as u64;
    let base_url = base.clone();
    let url = move |i: u64| format!("{base}/v1/series/price/S{}?limit=100", i % instruments);
    // One request first: the series must exist and answer 200.
    let first = client.get(url(0)).send().await?;
    anyhow::ensure!(first.status() == 200, "GET series answered {}", first.status());

    let mut saturation = Vec::new();
    let wrk = tributary::local::find_binary("wrk");
    for _ in 0..args.repeats.max(1) {
        if let Some(wrk) = &wrk {
            saturation.push(run_wrk(wrk, &base_url, instruments, args.api_secs).await?);
            continue;
        }
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(args.api_secs);
        let mut tasks = Vec::new();
        for w in 0..32u64 {
            let (client, done, url) = (client.clone(), done.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < deadline {
                    if let Ok(r) = client.get(url(i)).send().await
                        && r.status() == 200
                        && r.bytes().await.is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 32;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        saturation.push(done.load(Ordering::Relaxed) as f64 / args.api_secs);
    }

    let total = (args.api_rate * args.api_secs).round() as u64;
    // A client of its own: its connections live on the generator's runtime.
    let fresh_client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let mut latencies = fixed_rate(fresh_client, url, args.api_rate, total).await?;
    latencies.sort_by(f64::total_cmp);
    stop.cancel();
    let _ = server.await;
    Ok(ApiMeasured {
        generator: if wrk.is_some() { "wrk" } else { "in-process" },
        saturation: Stats::of(saturation),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
    })
}

/// Requests/s that `wrk` reaches over every instrument's series in `secs`.
async fn run_wrk(wrk: &std::path::Path, base: &str, instruments: u64, secs: f64) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("tributary-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, \"/v1/series/price/S\" .. (n % {instruments}) .. \"?limit=100\")\nend\n"
        ),
    )?;
    let out = tokio::process::Command::new(wrk)
        .args(["-t2", "-c32", &format!("-d{}s", secs.ceil().max(1.0)), "-s"])
        .arg(&script)
        .arg(format!("{base}/"))
        .output()
        .await?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk's output: {text}"))
}

/// Sends `total` requests open loop at `rate`/s and returns each one's latency in ms, counted from when
/// it was due (so a slow server cannot slow the offered rate down). The pacing thread sleeps with the
/// operating system's timer (tens of microseconds late, where tokio's millisecond timer would add up to a
/// millisecond to every latency), and the requests run on their own runtime, apart from the server's.
async fn fixed_rate(
    client: reqwest::Client,
    url: impl Fn(u64) -> String + Send + 'static,
    rate: f64,
    total: u64,
) -> anyhow::Result<Vec<f64>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = std::thread::spawn(move || runtime.block_on(async { stopped.await.ok() }));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pacer = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (client, tx, u) = (client.clone(), tx.clone(), url(i));
            handle.spawn(async move {
                let ok = match client.get(u).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let _ = tx.send((ok, due.elapsed().as_secs_f64() * 1e3));
            });
        }
    });
    let mut latencies = Vec::with_capacity(total as usize);
    while latencies.len() < total as usize {
        let Some((ok, ms)) = rx.recv().await else { break };
        anyhow::ensure!(ok, "a request failed during the fixed-rate run");
        latencies.push(ms);
    }
    pacer.await?;
    let _ = stop.send(());
    let _ = driver.join();
    anyhow::ensure!(latencies.len() as u64 == total, "only {} of {total} requests answered", latencies.len());
    Ok(latencies)
}
