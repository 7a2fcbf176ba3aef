//! The failover figure: two processors share the partitions of the backlog (no per-process settings);
//! a third of the way through, the one owning the first price partition is killed with SIGKILL and never
//! restarted. Measured: the time from the kill to the next commit of a price of its partitions (by the
//! survivor, once the group has forgotten the dead one and its pins have lapsed), the time from the kill
//! to the whole backlog stored, and whether the survivor then stores exactly what the unpartitioned
//! processor stored.

use super::harness::{Database, Processor, REPLICAS, checksum, committed, settled};
use super::{MetricsBacklog, until};
use sea_orm::sqlx::{self, PgPool};
use serde::Serialize;
use std::time::{Duration, Instant};
use tributary::config::Config;
use tributary_broker::group::Group;

/// What the failover run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// From the SIGKILL to the next commit of a price of the killed processor's partitions, seconds;
    /// `None` when the backlog was too small to still have work for them when the kill came.
    pub takeover_s: Option<f64>,
    /// The price partitions the killed processor owned.
    pub partitions: Vec<String>,
    /// From the SIGKILL to the whole backlog stored by the survivor, seconds: what the dead processor held
    /// unacknowledged included (it came back after `ack_wait_secs` before the consumer reset).
    pub settled_s: f64,
    /// `processor.takeover_secs` (how long a dead processor keeps its partitions).
    pub takeover_setting_s: u64,
    /// The survivor stored what the unpartitioned processor stored.
    pub equal: bool,
}

/// Runs the backlog of `n` prices (and `metrics`) through two processors, killing one; `single` is the
/// unpartitioned run's checksum.
pub async fn measure(
    config: &Config,
    js: &async_nats::jetstream::Context,
    n: u64,
    metrics: &MetricsBacklog,
    single: &str,
) -> anyhow::Result<Failover> {
    let name = "failover";
    let db = Database::create(&config.database.url, name).await?;
    let result = run(config, js, &db, name, n, metrics, single).await;
    db.drop().await;
    result
}

async fn run(
    config: &Config,
    js: &async_nats::jetstream::Context,
    db: &Database,
    name: &str,
    n: u64,
    metrics: &MetricsBacklog,
    single: &str,
) -> anyhow::Result<Failover> {
    let limit = Duration::from_secs(600);
    let mut processors: Vec<Processor> = (0..REPLICAS)
        .map(|_| Processor::spawn(config, &db.url, name, config.processor.partitions))
        .collect::<anyhow::Result<_>>()?;
    // Both in the group, the first price partition owned, a third of the backlog committed (or all of
    // it, when it was too small).
    let (victim, done) = until(limit, || async {
        let members = Group::open(js, name).await.ok()??.members().await.ok()?;
        let owner = members.iter().find(|m| m.owns.contains(&format!("{name}-price-p0")))?;
        let committed = committed(&db.pool).await;
        (members.len() == 2 && committed >= n / 3).then(|| (owner.clone(), committed >= n))
    })
    .await?;
    let at = processors.iter().position(|p| p.pid() == victim.pid).ok_or_else(|| anyhow::anyhow!("no victim"))?;
    let owned: Vec<String> = victim.owns.iter().filter(|c| c.contains("-price-")).cloned().collect();
    let instruments = instruments_of(js, &owned).await?;
    processors[at].kill9();
    let killed = Instant::now();
    // A commit already on its way to PostgreSQL when the process died may still land: count from a
    // moment later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = points(&db.pool, &instruments).await;
    let moved =
        until(Duration::from_secs(60), || async { (points(&db.pool, &instruments).await > before).then_some(()) });
    let takeover = match done {
        true => None,
        false => moved.await.ok().map(|()| killed.elapsed().as_secs_f64()),
    };
    settled(&db.pool, n, metrics, limit).await?;
    let settled_s = killed.elapsed().as_secs_f64();
    let equal = checksum(&db.pool).await? == single;
    drop(processors);
    Ok(Failover {
        takeover_s: takeover,
        partitions: owned,
        settled_s,
        takeover_setting_s: config.processor.takeover_secs,
        equal,
    })
}

/// The instruments whose prices the partitions (durable consumers `<prefix>-price-p<n>`) hold, read off
/// the stream's subjects (`price.p.<n>.<instrument>`).
async fn instruments_of(js: &async_nats::jetstream::Context, consumers: &[String]) -> anyhow::Result<Vec<String>> {
    use futures::TryStreamExt;
    let stream = js.get_stream(tributary_broker::Kind::Price.stream()).await?;
    let mut instruments = Vec::new();
    for c in consumers {
        let p = c.rsplit("-p").next().unwrap_or_default();
        let subjects: Vec<(String, usize)> =
            stream.info_with_subjects(format!("price.p.{p}.*")).await?.try_collect().await?;
        instruments.extend(subjects.into_iter().filter_map(|(s, _)| s.rsplit('.').next().map(str::to_owned)));
    }
    Ok(instruments)
}

/// Points stored of `instruments`.
async fn points(pool: &PgPool, instruments: &[String]) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT sum(points)::int8 FROM price_series WHERE instrument = ANY($1)")
        .bind(instruments)
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}
