//! What every run of Tributary stands on: a database of its own ([`Database`]), processors as separate
//! processes ([`Processor`]), and what they have committed ([`committed`], [`settled`], [`checksum`]).
//! The pipeline, scale-out, failover and corrections phases share it.

use super::{MetricsBacklog, until};
use anyhow::Context;
use sea_orm::sqlx::{self, Connection, PgConnection, PgPool};
use sea_orm_migration::MigratorTrait;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tributary::config::Config;
use tributary_store::{DbConfig, Migrator};

/// A fresh, migrated database for one run.
pub struct Database {
    pub pool: PgPool,
    pub url: String,
    admin: String,
    name: String,
}

impl Database {
    pub async fn create(configured: &str, suffix: &str) -> anyhow::Result<Database> {
        let (admin, _) = tributary_store::db::maintenance_url(configured)?;
        let name = format!("tributary_bench_{}_{suffix}", std::process::id());
        let url = tributary_store::db::database_url(configured, &name)?;
        let mut c = PgConnection::connect(&admin).await.context("connecting to PostgreSQL")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut c)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await?;
        let ready = async {
            let db = tributary_store::connect(&DbConfig { url: url.clone(), max_connections: 4, ..Default::default() })
                .await?;
            Migrator::up(&db, None).await?;
            anyhow::Ok(db)
        };
        match ready.await {
            Ok(db) => Ok(Database { pool: db.get_postgres_connection_pool().clone(), url, admin, name }),
            Err(e) => {
                // Leave nothing behind.
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut c)
                    .await;
                Err(e.context(format!("preparing database {name}")))
            }
        }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        if let Ok(mut c) = PgConnection::connect(&self.admin).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut c)
                .await;
        }
    }
}

/// Drops every database this run created (those left by a failed phase included).
pub async fn drop_run_databases(configured: &str) {
    let Ok((admin, _)) = tributary_store::db::maintenance_url(configured) else { return };
    let Ok(mut c) = PgConnection::connect(&admin).await else { return };
    let prefix = format!("tributary_bench_{}_", std::process::id());
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(&prefix)
        .fetch_all(&mut c)
        .await
        .unwrap_or_default();
    for name in names {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
            .execute(&mut c)
            .await;
    }
}

pub async fn server_version(url: &str) -> anyhow::Result<String> {
    let (admin, _) = tributary_store::db::maintenance_url(url)?;
    let mut c = PgConnection::connect(&admin).await?;
    Ok(sqlx::query_scalar("SHOW server_version").fetch_one(&mut c).await?)
}

pub(super) struct Processor {
    child: Child,
    metrics: String,
}

impl Processor {
    /// A processor with `processor.partitions = partitions`: 1 consumes every price on one consumer;
    /// more, it takes its share of the partitions among the processors with the same `durable` prefix.
    pub(super) fn spawn(config: &Config, db_url: &str, durable: &str, partitions: u32) -> anyhow::Result<Processor> {
        let port = tributary::local::free_port();
        let child = Command::new(crate::tributary_exe()?)
            .env("TRIBUTARY_PROCESSOR__PARTITIONS", partitions.to_string())
            .args(["processor", "--metrics-listen", &format!("127.0.0.1:{port}")])
            .env("NATS_URL", &config.nats.url)
            .env("DATABASE_URL", db_url)
            .env("TRIBUTARY_PROCESSOR__DURABLE_PREFIX", durable)
            // Traces exported as deployed, to the benchmark's collector ([`super::traces`]).
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", config.telemetry.otlp_endpoint.as_deref().unwrap_or_default())
            .env("TRIBUTARY_TELEMETRY__SAMPLING_RATIO", config.telemetry.sampling_ratio.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the processor")?;
        Ok(Processor { child, metrics: format!("http://127.0.0.1:{port}/metrics") })
    }

    /// Where it serves its Prometheus metrics.
    pub(super) fn metrics_url(&self) -> &str {
        &self.metrics
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub(super) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Peak resident set (VmHWM) in MB.
    pub(super) fn peak_rss_mb(&self) -> f64 {
        self.status_mb("VmHWM:")
    }

    /// Resident set now (VmRSS) in MB.
    pub(super) fn rss_mb(&self) -> f64 {
        self.status_mb("VmRSS:")
    }

    /// A reader of the resident set (VmRSS, MB) that outlives this borrow, for sampling from a task.
    pub(super) fn rss_reader(&self) -> impl Fn() -> f64 + Send + 'static {
        let pid = self.child.id();
        move || status_mb(pid, "VmRSS:")
    }

    fn status_mb(&self, field: &str) -> f64 {
        status_mb(self.child.id(), field)
    }
}

/// A field of `/proc/<pid>/status` given in kB, in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

impl Drop for Processor {
    /// Stops the processor as an orchestrator would, with SIGTERM (it finishes the batch in hand and
    /// flushes its traces), and kills it if it is not gone within 10 s.
    fn drop(&mut self) {
        let termed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while termed && Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processors that share the partitions in the scale-out and failover phases.
pub const REPLICAS: usize = 2;

/// A digest of every stored price point (price, volume, return and derived values) and index level, to
/// compare what two runs stored.
pub(super) async fn checksum(pool: &PgPool) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar(
        "SELECT md5(coalesce(string_agg(concat_ws('|', instrument, ts, price, volume, ret, derived::text), ','
                                        ORDER BY instrument, ts), ''))
             || md5(coalesce((SELECT string_agg(concat_ws('|', name, ts, level, ret), ',' ORDER BY name, ts)
                                FROM index_points), ''))
             || md5(coalesce((SELECT string_agg(concat_ws('|', host, field, width, start, count, sum, min, max,
                                                          mean, first, last, p50, p95, p99), ','
                                                ORDER BY host, field, width, start)
                                FROM metric_rollups), ''))
           FROM price_points",
    )
    .fetch_one(pool)
    .await?)
}

/// Waits until all `n` backlog price events are committed, the index definition is stored and every
/// host's last metric sample is in: from then on nothing changes (an index defined after its prices is
/// computed from all of them; a host's samples are committed in stream order).
pub(super) async fn settled(pool: &PgPool, n: u64, metrics: &MetricsBacklog, limit: Duration) -> anyhow::Result<()> {
    until(limit, || async {
        let (indices, hosts): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM indices), (SELECT count(*) FROM metric_latest WHERE ts >= $1)",
        )
        .bind(metrics.last_ts().0)
        .fetch_one(pool)
        .await
        .unwrap_or((0, 0));
        (indices > 0 && hosts as u64 >= metrics.hosts && committed(pool).await >= n).then_some(())
    })
    .await
}

pub(super) async fn committed(pool: &PgPool) -> u64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT sum(points)::int8 FROM price_series")
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0) as u64
}
