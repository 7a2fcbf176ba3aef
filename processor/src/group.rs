//! Elastic processor groups: the partitions of the partitioned kinds shared evenly by however many
//! processor processes run, each partition consumed by one process at a time, with no per-process
//! configuration.
//!
//! Every heartbeat this process writes its record in the group (`tributary_broker::group`), reads the
//! members and computes the assignment every member computes: it starts the consume loop of each
//! partition that is now its own and stops the others. A process standing aside from a kind (its derived
//! windows are not in force: [`crate::prices::in_force`]) says so in its record, and every member deals
//! that kind's partitions among the others. A stopped loop commits and acks what it has in
//! hand, naks what waits and releases its pin, so the next owner starts at once. A process that dies
//! stops writing its record: once the bucket forgets it (`takeover` later) the others deal its
//! partitions among themselves, and the server moves its pins once it has not pulled for `takeover`; the
//! next owner of each has what the dead one held unacknowledged delivered again at once (a consumer reset
//! on nats-server 2.14 and later, within bounds: see `tributary_broker::consume`), not after `ack_wait`.
//! Ownership moves keep every guarantee: acks follow commits, and the per-series locks and versions fence
//! a former owner still finishing a unit.

use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tributary_broker::consume::{ConsumeError, ConsumerSpec};
use tributary_broker::group::{self, Group, Member};
use tributary_broker::metric_names as names;

/// Starts the consume loop of one partition: its spec and its own stop token.
pub type Start =
    Arc<dyn Fn(ConsumerSpec, CancellationToken) -> BoxFuture<'static, Result<(), ConsumeError>> + Send + Sync>;

/// The kinds (`price`) this process takes no partition of now, asked every heartbeat (at once: it must
/// not wait): see [`crate::prices::in_force`].
pub type Aside = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// One partition this process may consume: its consumer and how to run it.
pub struct Partition {
    /// The partition's consumer (pinned).
    pub spec: ConsumerSpec,
    /// The kind's name for metrics, e.g. `price`.
    pub kind: &'static str,
    /// The partition's number.
    pub number: u32,
    /// Runs its consume loop.
    pub start: Start,
}

/// Runs this process's share of `partitions` until `shutdown`, following the members of the group `name`
/// (the durable prefix: processors sharing consumers share their partitions), taking none of the kinds
/// `aside` names at each heartbeat. Returns the first consume loop that fails.
pub async fn run(
    js: async_nats::jetstream::Context,
    name: String,
    partitions: Vec<Partition>,
    aside: Aside,
    takeover: Duration,
    replicas: usize,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let mut me = Member::this_process();
    let mut group = loop {
        match Group::join(&js, &name, takeover, replicas).await {
            Ok(g) => break g,
            Err(e) => {
                tracing::warn!(error = %e, "cannot join the processor group; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(member = me.id, partitions = partitions.len(), ?takeover, "joined the processor group");
    let units: Vec<(String, &str)> = partitions.iter().map(|p| (p.spec.durable.clone(), p.kind)).collect();
    let by_name: HashMap<String, &Partition> = partitions.iter().map(|p| (p.spec.durable.clone(), p)).collect();
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    let mut tasks: JoinSet<(String, Result<(), ConsumeError>)> = JoinSet::new();
    let mut beat = tokio::time::interval((takeover / 4).max(Duration::from_millis(250)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut members = vec![me.clone()];
    // Announce this process and let one heartbeat pass before claiming anything: processes that start
    // together then see each other and deal the partitions once, instead of all claiming all of them.
    if let Err(e) = group.beat(&me).await {
        tracing::warn!(error = %e, "processor group heartbeat failed");
    }
    beat.tick().await;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = beat.tick() => {}
    }
    let lag =
        tokio::spawn(report_lag(js.clone(), partitions.iter().map(|p| (p.spec.clone(), p.kind, p.number)).collect()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => {
                    tracing::error!(consumer = name, error = %e, "partition consumer stopped");
                    shutdown.cancel();
                    return Err(e);
                }
                Err(e) => {
                    shutdown.cancel();
                    match e.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(e) => tracing::error!(error = %e, "a partition consumer was cancelled"),
                    }
                }
            },
            _ = beat.tick() => {
                match group.members().await {
                    Ok(m) => members = m,
                    Err(e) => tracing::warn!(error = %e, "cannot read the processor group; keeping the last members"),
                }
                let aside = aside();
                if aside != me.aside {
                    match aside.is_empty() {
                        true => tracing::info!(member = me.id, "taking every kind's partitions again"),
                        false => tracing::info!(member = me.id, ?aside, "standing aside from these kinds' partitions"),
                    }
                    me.aside = aside;
                }
                members.retain(|m| m.id != me.id);
                members.push(me.clone());
                metrics::gauge!(names::PROCESSOR_MEMBERS).set(members.len() as f64);
                let mine: Vec<String> =
                    group::assign(&members, &units).into_iter().filter(|(_, m)| m.id == me.id).map(|(u, _)| u).collect();
                running.retain(|name, stop| {
                    let keep = mine.contains(name);
                    if !keep {
                        tracing::info!(consumer = name, "handing over");
                        stop.cancel();
                    }
                    keep
                });
                for name in mine {
                    if running.contains_key(&name) {
                        continue;
                    }
                    let p = by_name[&name];
                    tracing::info!(consumer = name, "taking over");
                    let stop = shutdown.child_token();
                    running.insert(name.clone(), stop.clone());
                    let run = (p.start)(p.spec.clone(), stop);
                    tasks.spawn(async move { (name, run.await) });
                }
                me.owns = running.keys().cloned().collect();
                me.owns.sort();
                if let Err(e) = group.beat(&me).await {
                    // A single server forgets a memory bucket when it restarts: every later beat and read
                    // failed, each process kept the members it last read, and the partitions of one that
                    // stopped after were dealt to it for good. Joining makes the bucket again.
                    tracing::warn!(error = %e, "processor group heartbeat failed; joining again");
                    match Group::join(&js, &name, takeover, replicas).await {
                        Ok(g) => group = g,
                        Err(e) => tracing::warn!(error = %e, "cannot join the processor group; retrying"),
                    }
                }
                for p in &partitions {
                    let owned = running.contains_key(&p.spec.durable);
                    metrics::gauge!(names::PARTITION_OWNED, "kind" => p.kind, "partition" => p.number.to_string())
                        .set(if owned { 1.0 } else { 0.0 });
                }
            }
        }
    }
    lag.abort();
    // Stopping: this process leaves first, so the others deal its partitions among themselves at their
    // next heartbeat and open them; each loop finishes what it holds and releases its pin, and its next
    // owner reads on at once. (Leaving after the loops kept every partition dealt to this process until
    // the slowest had finished, or `takeover` passed.)
    if let Err(e) = group.leave(&me).await {
        tracing::warn!(error = %e, "could not leave the processor group; it forgets this process by itself");
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, Err(e))) = done {
            tracing::warn!(consumer = name, error = %e, "partition consumer failed while stopping");
        }
    }
    Ok(())
}

/// Sets every partition's lag gauges every 5 s (each process reports every partition, owned or not, so a
/// partition whose owner died still shows its lag).
async fn report_lag(js: async_nats::jetstream::Context, partitions: Vec<(ConsumerSpec, &'static str, u32)>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        for (spec, kind, number) in &partitions {
            let Ok(stream) = js.get_stream(&spec.stream).await else { continue };
            let Ok(Some(lag)) = group::lag(&stream, &spec.durable, &spec.filter_subject).await else { continue };
            let labels = [("kind", kind.to_string()), ("partition", number.to_string())];
            metrics::gauge!(names::PARTITION_PENDING, &labels).set(lag.pending() as f64);
            metrics::gauge!(names::PARTITION_OLDEST_UNACKED, &labels).set(lag.oldest_unacked.as_secs_f64());
        }
    }
}
